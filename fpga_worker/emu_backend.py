"""The `emu` backend: a software emulator of an FPGA decode card (no card involved).

HBM is modelled as a byte budget of the card's size: the weight image takes its
share, and each request reserves KV for prompt + max_new_tokens at the card's
KV precision (float16, as the kernel stores it). A reservation that does not fit
is refused with RESOURCE_EXHAUSTED.

Numerics: "reference" runs the model's own float32 forward pass with
transformers on the host CPU, so its tokens equal transformers' generate.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from fpga_worker.backend import DecodeBackend, DeviceFacts, KvGeometry
from fpga_worker.request_checks import check_steppable, forget, lookup, request_ids
from services import models
from services.errors import AlreadyExists, InvalidArgument, ResourceExhausted

KV_DTYPE_ON_CARD = torch.float16
# INT4 weights with a float16 scale and min per group of 32: 4 + 32/32 = 5 bits per weight
WEIGHT_IMAGE_BITS_PER_WEIGHT = 5


@dataclass
class _Request:
    reserved_bytes: int
    reserve_tokens: int
    # per layer, K and V [1, H_kv, reserve_tokens, D] float32, allocated at the layer's first chunk
    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    # per layer, the received token ranges [(start, stop)], checked at seal()
    ranges: list[list[tuple[int, int]]]
    prompt_tokens: int = 0
    cache: DynamicCache | None = None  # built at seal() over the first prompt_tokens of keys/values


class EmulatedCard(DecodeBackend):
    def __init__(self, source: models.ModelSource, hbm_bytes: int, threads: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.model = models.load_causal_lm(source, "cpu", "float32")
        config = self.model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._geometry = KvGeometry(config.num_hidden_layers, config.num_key_value_heads, head_dim, KV_DTYPE_ON_CARD)
        n_weights = sum(p.numel() for p in self.model.parameters())
        self.weight_image_bytes = n_weights * WEIGHT_IMAGE_BITS_PER_WEIGHT // 8
        if self.weight_image_bytes >= hbm_bytes:
            raise InvalidArgument(f"--hbm-bytes {hbm_bytes} cannot even hold the weight image "
                                  f"({self.weight_image_bytes} bytes); give a larger HBM size")
        self.hbm_bytes = hbm_bytes
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()  # guards _requests and the byte budget
        self._compute_lock = threading.Lock()  # one kernel step at a time, like one card

    def facts(self) -> DeviceFacts:
        return DeviceFacts(backend="emu", emulated=True,
                           device_name="software emulator of an Alveo U280 decode card (no card)",
                           hbm_bytes=self.hbm_bytes, kv_capacity_bytes=self.hbm_bytes - self.weight_image_bytes,
                           extra={"numerics": "reference"})

    def geometry(self) -> KvGeometry:
        return self._geometry

    def kv_free_bytes(self) -> int:
        with self._lock:
            used = sum(r.reserved_bytes for r in self._requests.values())
        return self.hbm_bytes - self.weight_image_bytes - used

    def reserve(self, request_id: str, max_tokens: int) -> None:
        need = max_tokens * self._geometry.bytes_per_token
        with self._lock:
            if request_id in self._requests:
                raise AlreadyExists(f"request {request_id} already holds KV on this card")
            free = self.hbm_bytes - self.weight_image_bytes - sum(r.reserved_bytes for r in self._requests.values())
            if need > free:
                raise ResourceExhausted(f"KV for {max_tokens} tokens needs {need} bytes of HBM but only {free} "
                                        "are free on this card; use fewer tokens or another worker")
            layers = self._geometry.num_layers
            self._requests[request_id] = _Request(need, max_tokens, [None] * layers, [None] * layers,
                                                  [[] for _ in range(layers)])

    def _get(self, request_id: str) -> _Request:
        return lookup(self._requests, self._lock, request_id)

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        request = self._get(request_id)
        g = self._geometry
        if not 0 <= layer < g.num_layers:
            raise InvalidArgument(f"layer {layer} is out of range: the model has {g.num_layers} layers")
        expected = (1, g.kv_heads, key.shape[2], g.head_dim)
        if tuple(key.shape) != expected or tuple(value.shape) != expected:
            raise InvalidArgument(f"layer {layer}: K/V shape {tuple(key.shape)} does not match the model's "
                                  f"[1, {g.kv_heads}, seq, {g.head_dim}]")
        if seq_start + key.shape[2] > request.reserve_tokens:
            raise InvalidArgument(f"layer {layer}: tokens {seq_start}..{seq_start + key.shape[2]} lie beyond the "
                                  f"{request.reserve_tokens} tokens reserved")
        if request.keys[layer] is None:
            shape = (1, g.kv_heads, request.reserve_tokens, g.head_dim)
            request.keys[layer] = torch.empty(shape, dtype=torch.float32)
            request.values[layer] = torch.empty(shape, dtype=torch.float32)
        stop = seq_start + key.shape[2]
        request.keys[layer][:, :, seq_start:stop].copy_(key)  # the one copy, like a DMA into HBM
        request.values[layer][:, :, seq_start:stop].copy_(value)
        request.ranges[layer].append((seq_start, stop))

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        request = self._get(request_id)
        cache = DynamicCache(config=self.model.config)
        for layer, ranges in enumerate(request.ranges):
            covered = 0
            for start, stop in sorted(ranges):
                if start != covered:
                    raise InvalidArgument(f"layer {layer}: KV chunks leave a gap or overlap at token {covered}")
                covered = stop
            if covered != prompt_tokens:
                raise InvalidArgument(f"layer {layer}: received {covered} tokens of KV, expected {prompt_tokens}")
            # hand transformers views on the stored KV instead of copying it through update()
            key = request.keys[layer][:, :, :prompt_tokens]
            value = request.values[layer][:, :, :prompt_tokens]
            cache.layers[layer].lazy_initialization(key, value)
            cache.layers[layer].keys, cache.layers[layer].values = key, value
        request.prompt_tokens = prompt_tokens
        request.cache = cache
        request.keys = request.values = []  # the cache's views keep what is needed alive

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        request = self._get(request_id)
        check_steppable(request_id, request.cache is not None, position, request.reserve_tokens)
        ids = torch.tensor([[token_id]], dtype=torch.long)
        with self._compute_lock, torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=torch.tensor([[position]]), cache=request.cache,
                             use_cache=True, logits_to_keep=1)
        return out.logits[0, -1].float()

    def release(self, request_id: str) -> bool:
        return forget(self._requests, self._lock, request_id)

    def active_requests(self) -> list[str]:
        return request_ids(self._requests, self._lock)
