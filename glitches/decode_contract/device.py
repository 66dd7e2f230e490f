"""A decode device: a KV sink (sink.py) that also steps, one token at a time per request.

`emu` is the software kernel emulator; `xrt` drives a real Alveo card through XRT's C API; the toy
decoder (tests/toy_decoder/) is another. The worker's servicer talks only to this interface, so
they are interchangeable, and every output carries `DeviceFacts.backend` and
`DeviceFacts.emulated` so an emulated card is never mistaken for a real one.

Shapes: K and V chunks are transformers' layout [1, kv_heads, seq, head_dim]
for one layer; logits are [vocab] float32.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field

import torch

from glitches.decode_contract.sink import KvSink


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
    """What the card's sensors say now (glitches/fpga_worker/sensors.py reads it live, cached about a second)."""

    power_w: float | None = None  # board power, watts; None: not known
    temperature_c: float | None = None  # the hottest sensor, degrees Celsius; None: not known
    modeled: bool = False  # True: an emulated card's power model, not a measurement


NO_READING = SensorReading()


class DecodeBackend(KvSink):
    """A decode device holding several requests' KV, stepping one token at a time."""

    @abstractmethod
    def facts(self) -> DeviceFacts: ...

    def sensors(self) -> SensorReading:
        """Power and temperature now (a real card's sensors, or an emulator's model); may take milliseconds,
        so callers cache it (fpga_worker.sensors.CachedSensors)."""
        return NO_READING

    @abstractmethod
    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        """Feed `token_id` at `position`; append its KV; return next-token logits [vocab] float32."""

    def modeled_step_s(self, context_tokens: int) -> float:
        """Modeled card time of one step attending to `context_tokens`, seconds; 0 where nothing is modeled.

        Emulated cards return the U280 timing model's figure (labelled modeled in every output);
        a real card's own time is its measured step time.
        """
        return 0.0
