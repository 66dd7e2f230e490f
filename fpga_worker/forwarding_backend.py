"""A DecodeBackend that forwards every call to another one: the base of the worker's wrappers
(NotifyingBackend, HeldBackend), each of which overrides only what it adds to."""

from __future__ import annotations

import torch

from fpga_worker.backend import DecodeBackend, DeviceFacts, KvGeometry, KvMemory, KvPlacement, SensorReading


class ForwardingBackend(DecodeBackend):
    def __init__(self, inner: DecodeBackend):
        self.inner = inner

    def reserve(self, request_id: str, max_tokens: int) -> None:
        self.inner.reserve(request_id, max_tokens)

    def release(self, request_id: str) -> bool:
        return self.inner.release(request_id)

    def facts(self) -> DeviceFacts:
        return self.inner.facts()

    def sensors(self) -> SensorReading:
        return self.inner.sensors()

    def geometry(self) -> KvGeometry:
        return self.inner.geometry()

    def kv_free_bytes(self) -> int:
        return self.inner.kv_free_bytes()

    def kv_granularity_tokens(self) -> int:
        return self.inner.kv_granularity_tokens()

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        self.inner.write_kv(request_id, layer, seq_start, key, value)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        self.inner.seal(request_id, prompt_tokens)

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        return self.inner.step(request_id, token_id, position)

    def active_requests(self) -> list[str]:
        return self.inner.active_requests()

    def modeled_step_s(self, context_tokens: int) -> float:
        return self.inner.modeled_step_s(context_tokens)

    def kv_memory(self) -> KvMemory | None:
        return self.inner.kv_memory()

    def placement(self, request_id: str) -> KvPlacement:
        return self.inner.placement(request_id)

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        self.inner.mark_written(request_id, layer, seq_start, tokens)

    def layer_landed(self, request_id: str, layer: int, tokens: int) -> None:
        self.inner.layer_landed(request_id, layer, tokens)
