"""Device profiles: how long a prefill or a decode step takes, what it draws, what it costs.

Two timing models:
- `RooflineTiming`: time = max(work / effective compute, bytes / effective
  bandwidth). Prefill work grows linearly in the prompt (weights) plus a
  quadratic attention term (the paper: "prefill grows quadratically"); a
  decode step reads every weight plus the whole KV cache, so it grows
  linearly in the context. Effective = peak x efficiency, where efficiency is
  derived from one measured point (`calibration` in devices.json: the paper's
  figures reproduce exactly there) or, for unmeasured devices, a stated default.
  An FPGA's decode step is not the roofline's: it is the kernel's instruction-stream timing model
  (`sim.fpga_kernel_timing`, the same as `glitches fpga-timing`), calibrated on the same paper figure.
- `ConstantTiming`: fixed seconds, for closed-form tests and what-ifs.
- `ScaledTiming`: another timing times a factor, for what-ifs.
Profiles measured on live workers load through `sim.measured`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from glitches.scheduler.placement import DeviceKind
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.fpga_kernel_timing import kernel_decode_timing
from glitches.sim.model_shape import ModelShape, load_model_shape

DEVICES_FILE = Path(__file__).with_name("profiles") / "devices.json"


class Timing(Protocol):
    def prefill_s(self, prompt_tokens: int) -> float: ...

    def decode_step_s(self, context_tokens: int) -> float: ...


@dataclass(frozen=True)
class ConstantTiming:
    prefill_seconds: float
    decode_seconds: float

    def prefill_s(self, prompt_tokens: int) -> float:
        return self.prefill_seconds

    def decode_step_s(self, context_tokens: int) -> float:
        return self.decode_seconds


@dataclass(frozen=True)
class ScaledTiming:
    """Another timing slowed (factor > 1) or sped up: for what-ifs and for saying what it takes to match."""

    base: Timing
    prefill_factor: float = 1.0
    decode_factor: float = 1.0

    def prefill_s(self, prompt_tokens: int) -> float:
        return self.base.prefill_s(prompt_tokens) * self.prefill_factor

    def decode_step_s(self, context_tokens: int) -> float:
        return self.base.decode_step_s(context_tokens) * self.decode_factor


@dataclass(frozen=True)
class RooflineTiming:
    model: ModelShape
    flops_per_s: float  # achieved, not peak
    bytes_per_s: float  # achieved, not peak
    weight_bits: float
    kv_bits: float

    def prefill_s(self, prompt_tokens: int) -> float:
        compute = self.model.prefill_flops(prompt_tokens) / self.flops_per_s
        weights = self.model.weight_bytes(self.weight_bits) / self.bytes_per_s  # short prompts: weight-bound
        return max(compute, weights)

    def decode_step_s(self, context_tokens: int) -> float:
        memory = self.model.decode_bytes(context_tokens, self.weight_bits, self.kv_bits) / self.bytes_per_s
        compute = self.model.decode_flops(context_tokens) / self.flops_per_s
        return max(memory, compute)

    def step_s(self, chunks: Sequence[tuple[int, int]], decode_contexts: Sequence[int], streamed_chunks: int = 0
               ) -> float:
        """One batched forward pass: prefill chunks (new tokens, tokens already in KV) + one token per decode row.
        streamed_chunks is not priced here: a GPU's KV leaves by DMA beside the pass (sim.kv_transfer's link).

        FLOPs: each chunk's share of its prompt's prefill FLOPs, plus each row's decode FLOPs. Bytes: the
        weights once (shared by every row) plus the KV every row and chunk attends over. Time: the larger
        of the two at the calibrated efficiencies (one chunk alone = prefill_s; one row alone = decode_step_s).
        """
        flops = sum(self.model.prefill_flops(past + new) - self.model.prefill_flops(past) for new, past in chunks)
        flops += sum(self.model.decode_flops(c) for c in decode_contexts)
        kv_tokens = sum(decode_contexts) + sum(past for _, past in chunks)
        memory = self.model.weight_bytes(self.weight_bits) + self.model.kv_bytes_per_token(self.kv_bits) * kv_tokens
        return max(flops / self.flops_per_s, memory / self.bytes_per_s)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    kind: DeviceKind
    timing: Timing
    price_usd: float
    prefill_w: float  # power while running a prefill, W
    decode_w: float  # power while decoding, W
    idle_w: float  # power while idle, W (an assumption for every paper device)
    kv_bytes_per_token: float  # KV as stored on this device, bytes per token
    kv_capacity_bytes: float  # device memory left for KV after the weights, bytes
    layers: int  # transformer layers (KV is streamed one layer at a time)
    host_threads: int = 0  # host CPU threads its compute runs on (sim.host_cpu); 0 = its own silicon, not shared


def load_device_profile(device: str, model: str, path: Path = DEVICES_FILE,
                        fpga_prefetch_ratio: int | None = None) -> DeviceProfile:
    """The profile of `device` running `model`, from devices.json: a roofline, except an FPGA's decode step,
    which is the kernel's instruction-stream model at `fpga_prefetch_ratio` (sim.fpga_kernel_timing)."""
    table = json.loads(path.read_text())
    if device not in table or device.startswith("_"):
        known = ", ".join(k for k in table if not k.startswith("_"))
        raise InvalidArgument(f"unknown device {device!r}; known: {known} (or pass a measured profile file)")
    spec = table[device]
    shape = load_model_shape(model)
    compute_eff, bandwidth_eff = _efficiencies(device, spec)
    peak_flops = spec["peak_tflops"] * 1e12
    peak_bytes = spec["bandwidth_gb_per_s"] * 1e9
    weight_bits, kv_bits = spec["weight_bits"], spec["kv_bits"]
    timing = RooflineTiming(shape, peak_flops * compute_eff, peak_bytes * bandwidth_eff, weight_bits, kv_bits)
    if spec["kind"] == DeviceKind.FPGA.value:
        timing = kernel_decode_timing(timing, shape, spec, fpga_prefetch_ratio)
    power = spec["power_w"]
    return DeviceProfile(
        name=device,
        kind=DeviceKind(spec["kind"]),
        timing=timing,
        price_usd=spec["price_usd"],
        prefill_w=power["prefill"],
        decode_w=power["decode"],
        idle_w=power["idle"],
        kv_bytes_per_token=shape.kv_bytes_per_token(kv_bits),
        kv_capacity_bytes=max(0.0, spec["memory_gb"] * 1e9 - shape.weight_bytes(weight_bits)),
        layers=shape.layers,
    )


def _efficiencies(device: str, spec: dict) -> tuple[float, float]:
    """(compute, bandwidth) efficiency: from the measured point if there is one, else the stated default."""
    if "efficiency_from" in spec:  # roofline-derived: another (measured) device's achieved / peak ratios
        table = json.loads(DEVICES_FILE.read_text())
        source = spec["efficiency_from"]
        if source not in table or "efficiency_from" in table[source]:
            raise InvalidArgument(f"device {device!r}: efficiency_from must name a device with its own figures")
        return _efficiencies(source, table[source])
    cal = spec.get("calibration")
    if cal is None:
        if "efficiency" not in spec:
            raise InvalidArgument(f"device {device!r} in devices.json needs 'calibration' or 'efficiency'")
        return spec["efficiency"]["compute"], spec["efficiency"]["bandwidth"]
    shape = load_model_shape(cal["model"])
    achieved_flops = shape.prefill_flops(cal["prefill_tokens"]) / cal["prefill_s"]
    ctx = cal["decode_context_tokens"]
    achieved_bytes = shape.decode_bytes(ctx, spec["weight_bits"], spec["kv_bits"]) / cal["decode_s_per_token"]
    return achieved_flops / (spec["peak_tflops"] * 1e12), achieved_bytes / (spec["bandwidth_gb_per_s"] * 1e9)
