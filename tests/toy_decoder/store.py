"""The toy device's memory: each request's received KV, and its decode step.

The object kv_receiver.receive writes into (reserve, write_kv, layer_landed, seal, release, geometry):
a request reserves prompt + max_new_tokens tokens of its fixed capacity (RESOURCE_EXHAUSTED beyond it),
its chunks land in per-layer K and V tensors [1, kv_heads, reserve_tokens, head_dim] float32, and seal()
turns the prompt's part into a transformers DynamicCache that step() extends by one token.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from glitches.kv_plane.kv_types import KvGeometry
from glitches.services.generation import models
from glitches.services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted


@dataclass
class _Held:
    reserve_tokens: int
    keys: torch.Tensor  # [layers, 1, H_kv, reserve_tokens, D] float32
    values: torch.Tensor
    arrived: torch.Tensor  # bool [layers, reserve_tokens]
    cache: DynamicCache | None = None  # from seal() on
    lock: threading.Lock = field(default_factory=threading.Lock)


class ToyStore:
    def __init__(self, model, capacity_tokens: int, slots: int):
        self.model = model
        config = model.config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self._geometry = KvGeometry(config.num_hidden_layers, config.num_key_value_heads, head_dim, torch.float32)
        self.capacity_tokens = capacity_tokens  # KV tokens the toy holds across all requests
        self.slots = slots  # requests holding KV at once
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()

    def geometry(self) -> KvGeometry:
        return self._geometry

    def free_tokens(self) -> int:
        with self._lock:
            return self.capacity_tokens - sum(h.reserve_tokens for h in self._held.values())

    def active_requests(self) -> list[str]:
        with self._lock:
            return list(self._held)

    def reserve(self, request_id: str, max_tokens: int) -> None:
        g = self._geometry
        with self._lock:
            if request_id in self._held:
                raise AlreadyExists(f"request {request_id} already holds KV on this toy device")
            if len(self._held) >= self.slots:
                raise ResourceExhausted(f"all {self.slots} slots of this toy device hold a request")
            free = self.capacity_tokens - sum(h.reserve_tokens for h in self._held.values())
            if max_tokens > free:
                raise ResourceExhausted(f"{max_tokens} tokens of KV asked, {free} free on this toy device")
            shape = (g.num_layers, 1, g.kv_heads, max_tokens, g.head_dim)
            self._held[request_id] = _Held(max_tokens, torch.zeros(shape), torch.zeros(shape),
                                           torch.zeros(g.num_layers, max_tokens, dtype=torch.bool))

    def _get(self, request_id: str) -> _Held:
        with self._lock:
            held = self._held.get(request_id)
        if held is None:
            raise NotFound(f"request {request_id} holds no KV on this toy device")
        return held

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        held = self._get(request_id)
        n = key.shape[2]
        if not 0 <= layer < self._geometry.num_layers or seq_start < 0 or seq_start + n > held.reserve_tokens:
            raise InvalidArgument(f"KV chunk of layer {layer}, tokens [{seq_start}, {seq_start + n}) lies outside "
                                  f"the {held.reserve_tokens} tokens reserved")
        if held.arrived[layer, seq_start:seq_start + n].any():
            raise InvalidArgument(f"layer {layer}: tokens [{seq_start}, {seq_start + n}) arrived twice")
        held.keys[layer, :, :, seq_start:seq_start + n] = key.float()
        held.values[layer, :, :, seq_start:seq_start + n] = value.float()
        held.arrived[layer, seq_start:seq_start + n] = True

    def layer_landed(self, request_id: str, layer: int, tokens: int) -> None:
        """Nothing to do early: seal() builds the cache."""

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        held = self._get(request_id)
        if not held.arrived[:, :prompt_tokens].all():
            raise InvalidArgument("KV end marker before every layer's prompt tokens arrived")
        cache = DynamicCache(config=self.model.config)
        for layer in range(self._geometry.num_layers):
            cache.update(held.keys[layer, :, :, :prompt_tokens].clone(),
                         held.values[layer, :, :, :prompt_tokens].clone(), layer)
        held.cache = cache

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        """Feed token_id at position; logits [vocab] float32 of the next token."""
        held = self._get(request_id)
        if held.cache is None:
            raise FailedPrecondition(f"request {request_id}: its KV transfer has not finished")
        if position >= held.reserve_tokens:
            raise ResourceExhausted(f"position {position} is beyond the {held.reserve_tokens} tokens reserved")
        with held.lock, torch.inference_mode():
            out = self.model(input_ids=torch.tensor([[token_id]]), position_ids=torch.tensor([[position]]),
                             use_cache=True, logits_to_keep=1, **models.cache_kwargs(self.model, held.cache))
        return out.logits[0, -1].float()

    def release(self, request_id: str) -> bool:
        with self._lock:
            return self._held.pop(request_id, None) is not None
