"""The one place that decides how KV travels: which transport a GPU worker uses for a decode target
(`TransportChooser`), which sender and layer writer run it (`open_sender`), and the callable the
engine is handed (`kv_target`: it opens a sender for one request; the engine sees no stub or token).

The target's Info says what it accepts (InfoResponse.kv_transports, host_identity); answers are
kept for CACHE_S per target. `auto`: shm when the target is on this host (equal host identity and
it offers shm), else nixl when both sides have it, else grpc, which every FPGA worker accepts.
A forced transport the target does not offer is FAILED_PRECONDITION, naming what it offers.
Under TLS, `auto` skips nixl: UCX moves the bytes unencrypted between hosts (shm stays on one host,
in a 0600 segment); `--kv-transport nixl` still forces it.

Partial transfers (issue #27, DecodeTarget.held_prefix_tokens = h > 0): the header names h, the prompt's
ids and the salt, and the sender sends only tokens [h, prompt) of each layer, on any transport: grpc
chunks from token h, shm scatters them at their slots, nixl WRITEs exactly their bytes (one run per PC and
lane, nixl_writer.span_runs), never a byte of the tokens the card holds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from glitches.kv_plane.grpc_sender import KvSender
from glitches.kv_plane.host_identity import host_identity
from glitches.kv_plane.placed_sender import PlacedKvSender
from glitches.kv_plane.sender import LayerSender
from glitches.kv_plane.shm_writer import ShmLayerWriter
from glitches.services.runtime.errors import FailedPrecondition, from_rpc_error
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

CACHE_S = 5.0  # how long a target's Info answer is trusted, seconds


def sender_transports() -> tuple[str, ...]:
    """What this GPU worker can send with: shm and grpc always, nixl where NIXL imports."""
    from glitches.kv_plane import nixl_loader

    return ("shm", "nixl", "grpc") if nixl_loader.available() else ("shm", "grpc")


class TransportChooser:
    def __init__(self, wanted: str = "auto", info_timeout_s: float = 5.0, tls: bool = False):
        self.wanted, self.info_timeout_s, self.tls = wanted, info_timeout_s, tls
        self._seen: dict[int, tuple[float, worker_pb2.InfoResponse]] = {}  # id(stub) -> (when, Info)
        self._lock = threading.Lock()

    def _info(self, stub: worker_pb2_grpc.WorkerStub) -> worker_pb2.InfoResponse:
        now = time.monotonic()
        with self._lock:
            hit = self._seen.get(id(stub))
        if hit is not None and now - hit[0] < CACHE_S:
            return hit[1]
        try:
            info = stub.Info(worker_pb2.InfoRequest(), timeout=self.info_timeout_s)
        except grpc.RpcError as error:
            raise from_rpc_error(error, "asking the decode worker which KV transports it takes") from error
        with self._lock:
            self._seen[id(stub)] = (now, info)
        return info

    def choose(self, stub: worker_pb2_grpc.WorkerStub) -> str:
        if self.wanted == "grpc":
            return "grpc"
        info = self._info(stub)
        offered = list(info.kv_transports) or ["grpc"]  # a worker from before data planes takes grpc only
        usable = [t for t in offered if t in sender_transports()
                  and (t != "shm" or (info.host_identity == host_identity() and info.shm_segment))]
        if self.wanted == "auto":
            for transport in ("shm", "grpc") if self.tls else ("shm", "nixl", "grpc"):
                if transport in usable:
                    return transport
            return "grpc"
        if self.wanted not in usable:
            why = " (it is on another host or /dev/shm)" if self.wanted == "shm" and "shm" in offered else ""
            raise FailedPrecondition(f"--kv-transport {self.wanted}: decode worker {info.worker_id} takes "
                                     f"{', '.join(offered)}{why}; this GPU worker can send "
                                     f"{', '.join(sender_transports())}")
        return self.wanted


def layer_writer(placement: worker_pb2.KvPlacement, request_id: str):
    """The layer writer of the placement's transport: write(layer, K, V, ready) returns the layers whose bytes are there."""
    if placement.kv_transport == "nixl":
        from glitches.kv_plane.nixl_writer import NixlLayerWriter  # NIXL imports only where it is installed

        return NixlLayerWriter(placement, request_id)
    return ShmLayerWriter(placement)


def open_sender(stub: worker_pb2_grpc.WorkerStub, header: worker_pb2.KvHeader, timeout_s: float,
                transport: str = "grpc") -> LayerSender:
    """A sender for `transport` ("grpc", "shm", "nixl"): put_layer(i, K, V) per layer, then finish(), or abort()."""
    if transport == "grpc":
        return KvSender(stub, header, timeout_s)
    return PlacedKvSender(stub, header, timeout_s, transport, layer_writer)


def kv_target(stub: worker_pb2_grpc.WorkerStub, request_id: str, num_layers: int, kv_token: str, transport: str,
              timeout_s: float, held_tokens: int = 0, token_ids: list[int] = (),
              cache_salt: bytes = b"") -> Callable[[int, int], LayerSender]:
    """What the engine is handed for a prefill whose KV goes to a decode target: open(prompt_tokens,
    reserve_tokens) starts the transfer (the receiver checks `kv_token`, then reserves reserve_tokens).

    held_tokens > 0: a partial transfer (module docstring); token_ids are prompt + generated, cache_salt the
    tenant's, as the target kept them."""
    def open_kv(prompt_tokens: int, reserve_tokens: int) -> LayerSender:
        header = worker_pb2.KvHeader(request_id=request_id, prompt_tokens=prompt_tokens,
                                     reserve_tokens=reserve_tokens, num_layers=num_layers, kv_token=kv_token)
        if held_tokens:
            header.held_tokens, header.cache_salt = held_tokens, cache_salt
            header.prompt_token_ids.extend(token_ids)
        return open_sender(stub, header, timeout_s, transport)

    return open_kv
