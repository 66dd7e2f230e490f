"""The interface every decode backend implements.

`emu` is the software kernel emulator; `xrt` (a later issue) drives a real Alveo
card through pyxrt. The worker's servicer talks only to this interface, so the
two are interchangeable, and every output carries `DeviceFacts.backend` and
`DeviceFacts.emulated` so an emulated card is never mistaken for a real one.

Shapes: K and V chunks are transformers' layout [1, kv_heads, seq, head_dim]
for one layer; logits are [vocab] float32.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from kv_plane.kv_types import KvGeometry, KvMemory, KvPlacement
from services.errors import FailedPrecondition


@dataclass(frozen=True)
class DeviceFacts:
    backend: str  # "emu" or "xrt"
    emulated: bool  # True for every software backend
    device_name: str  # e.g. "software emulator of xilinx_u280 (no card)"
    hbm_bytes: int  # total device memory for weights + KV, bytes
    kv_capacity_bytes: int  # what is left for KV after the weight image, bytes
    extra: dict[str, str] = field(default_factory=dict)  # BDF, numerics, memory... where known (static)


@dataclass(frozen=True)
class SensorReading:
    """What the card's sensors say now (fpga_worker/sensors.py reads it live, cached about a second)."""

    power_w: float | None = None  # board power, watts; None: not known
    temperature_c: float | None = None  # the hottest sensor, degrees Celsius; None: not known
    modeled: bool = False  # True: an emulated card's power model, not a measurement


NO_READING = SensorReading()


class DecodeBackend(ABC):
    """A decode device holding several requests' KV, stepping one token at a time."""

    @abstractmethod
    def facts(self) -> DeviceFacts: ...

    @abstractmethod
    def geometry(self) -> KvGeometry: ...

    def sensors(self) -> SensorReading:
        """Power and temperature now (a real card's sensors, or an emulator's model); may take milliseconds,
        so callers cache it (sensors.CachedSensors)."""
        return NO_READING

    @abstractmethod
    def kv_free_bytes(self) -> int: ...

    def kv_granularity_tokens(self) -> int:
        """A reservation of n tokens takes the KV of n rounded up to a multiple of this (1: exact)."""
        return 1

    @abstractmethod
    def reserve(self, request_id: str, max_tokens: int) -> None:
        """Set aside KV room for `max_tokens` (prompt + new tokens).

        Raises ResourceExhausted when it does not fit, AlreadyExists for a known id.
        """

    @abstractmethod
    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store one chunk of one layer's prefill KV ([1, kv_heads, seq, head_dim]) at token `seq_start`."""

    @abstractmethod
    def seal(self, request_id: str, prompt_tokens: int) -> None:
        """Every layer's KV for `prompt_tokens` tokens has arrived; the request can decode."""

    @abstractmethod
    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        """Feed `token_id` at `position`; append its KV; return next-token logits [vocab] float32."""

    @abstractmethod
    def release(self, request_id: str) -> bool:
        """Free the request's KV. Returns False when the id was unknown (already released)."""

    @abstractmethod
    def active_requests(self) -> list[str]: ...

    # --- the KV data plane (TransferKVPlaced); a backend without shareable memory keeps these defaults ---
    def kv_memory(self) -> KvMemory | None:
        """The memory senders write KV into directly, or None: this card takes KV only through write_kv."""
        return None

    def placement(self, request_id: str) -> KvPlacement:
        """Where the reserved request's region lies in kv_memory()."""
        raise FailedPrecondition("this card takes KV only through TransferKV (transport grpc)")

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        """A sender wrote tokens [seq_start, seq_start + tokens) of `layer` into the region itself.

        Raises InvalidArgument outside the reservation or over tokens already written.
        """
        raise FailedPrecondition("this card takes KV only through TransferKV (transport grpc)")

    def layer_landed(self, request_id: str, layer: int, tokens: int) -> None:
        """Tokens [0, tokens) of `layer` are all in place (before seal); a backend may start using them."""

    def modeled_step_s(self, context_tokens: int) -> float:
        """Modeled card time of one step attending to `context_tokens`, seconds; 0 where nothing is modeled.

        Emulated cards return the U280 timing model's figure (labelled modeled in every output);
        a real card's own time is its measured step time.
        """
        return 0.0
