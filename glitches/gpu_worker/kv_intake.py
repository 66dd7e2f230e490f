"""The decode role's KV intake: KV another GPU worker's prefill sends this one, landed in its own KV blocks.

A GPU worker started with the decode role serves TransferKV / TransferKVPlaced through the same
mixin as an FPGA worker (glitches/decode_contract/kv_intake_rpcs.py), with this object as the backend the
KV lands in. Per request:

    reserve(id, prompt + max_new_tokens)  admits it in the worker's RequestTable as a request that
                                          decodes here (counts against --slots; KV blocks for every
                                          token it may hold, or RESOURCE_EXHAUSTED), and reserves a
                                          region of that many tokens in the staging segment
    write_kv / mark_written               the bytes arrive in the staging region (grpc: copied in by
                                          the receiver; shm: the sender wrote them into the mapped
                                          segment; nixl: a NIXL WRITE), laid out as
                                          docs/fpga-kernel-abi.md "KV region"; overlaps refused
    layer_landed(id, layer, prompt)       that layer is complete: copied out of staging into the
                                          request's RequestKv (host -> device on CUDA), while the
                                          sender still computes the next layers
    seal(id, prompt)                      every layer complete: the request's KV length is the
                                          prompt, its staging region is freed; Decode runs it in
                                          the step loop, batched with every other decode
    release(id)                           frees both, whichever exist (idempotent)

Staging is host memory (an decode_contract.emu_kv.EmulatedKvStore: a 0600 shared-memory segment,
sparse, of --kv-staging-gib) so shm senders on this host and NIXL can write it; only transfers in
flight hold staging. The one copy staging -> KV blocks is the price of a GPU's KV living in its own
paged layout rather than the ABI's.
"""

from __future__ import annotations

import threading

import torch

from glitches.decode_contract.emu_kv import EmulatedKvStore
from glitches.decode_contract.request_checks import check_sealable
from glitches.decode_contract.sink import KvSink
from glitches.kv_plane.kv_abi import HBM_CHANNELS
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.kv_plane.kv_types import KvGeometry, KvMemory, KvPlacement
from glitches.services.runtime.errors import NotFound, ResourceExhausted


class GpuKvIntake(KvSink):
    """The decode role's KV sink (a sink only: the step loop decodes, not a step() here)."""

    def __init__(self, engine, staging_bytes: int, tag: str = "gpu"):
        """engine: gpu_worker.engine.GpuEngine; staging_bytes: size of the staging segment, bytes."""
        self.engine = engine
        dtype = getattr(torch, engine.dtype)
        config = engine.config
        self._geometry = KvGeometry(engine.num_layers, config.num_key_value_heads, engine.head_dim, dtype)
        staging_bytes -= staging_bytes % HBM_CHANNELS
        self.staging = EmulatedKvStore(staging_bytes, 0, engine.num_layers, config.num_key_value_heads,
                                       engine.head_dim, dtype, tag)
        self._landed: dict[str, set[int]] = {}  # request id -> layers already copied into its KV blocks
        self._lock = threading.Lock()

    # --- what one token costs here ---------------------------------------------------------
    def geometry(self) -> KvGeometry:
        return self._geometry

    def kv_free_bytes(self) -> int:
        pool = self.engine.pool
        return pool.free_blocks * pool.block_bytes

    def kv_granularity_tokens(self) -> int:
        return KV_BLOCK_TOKENS

    def active_requests(self) -> list[str]:
        return [r.request_id for r in self.engine.requests.snapshot() if r.gpu_assist]

    # --- one request's KV arriving ------------------------------------------------------------
    def reserve(self, request_id: str, max_tokens: int) -> None:
        self.engine.requests.admit(request_id, max_tokens, gpu_assist=True)  # RESOURCE_EXHAUSTED / ALREADY_EXISTS
        try:
            self.staging.reserve(request_id, max_tokens)
        except ResourceExhausted as full:
            self.engine.requests.release(request_id)
            raise ResourceExhausted(f"the staging segment for KV arriving (--kv-staging-gib) has no room for "
                                    f"{max_tokens} tokens now ({full}); it frees as transfers finish",
                                    retry_after_s=1.0) from None
        except BaseException:
            self.engine.requests.release(request_id)
            raise
        with self._lock:
            self._landed[request_id] = set()

    def _kv(self, request_id: str):
        held = self.engine.requests.get(request_id)
        if held is None:
            raise NotFound(f"request {request_id} holds no KV on this worker (released while its KV arrived?)")
        return held.kv

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self._kv(request_id)
        self.staging.write(request_id, layer, seq_start, key, value)

    def kv_memory(self) -> KvMemory | None:
        return self.staging.memory()

    def placement(self, request_id: str) -> KvPlacement:
        return self.staging.placement(request_id)

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        self._kv(request_id)
        self.staging.mark_written(request_id, layer, seq_start, tokens)

    def layer_landed(self, request_id: str, layer: int, tokens: int) -> None:
        held = self.staging.get(request_id)
        if not held.written[layer, :tokens].all():
            return  # seal() reports what is missing
        key, value = held.region.read(layer, tokens)  # [H_kv, tokens, D] in the staging dtype
        device = self.engine.device
        self._kv(request_id).write(layer, 0, key.unsqueeze(0).to(device), value.unsqueeze(0).to(device))
        with self._lock:
            self._landed.setdefault(request_id, set()).add(layer)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        held = self.staging.get(request_id)
        check_sealable(held.written, prompt_tokens, held.region.plan.capacity_tokens)
        with self._lock:
            landed = set(self._landed.get(request_id, ()))
        for layer in range(self._geometry.num_layers):
            if layer not in landed:
                self.layer_landed(request_id, layer, prompt_tokens)
        self._kv(request_id).length = prompt_tokens
        self.staging.release(request_id)  # the KV lives in its blocks now
        with self._lock:
            self._landed.pop(request_id, None)

    def release(self, request_id: str) -> bool:
        with self._lock:
            self._landed.pop(request_id, None)
        staged = self.staging.release(request_id)
        held = self.engine.requests.release(request_id)
        return staged or held

    def close(self) -> None:
        self.staging.close()
