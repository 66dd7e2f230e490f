"""Profiles measured on live workers (written by `glitches profile`), for the simulator.

File format "glitches.profile.v1" (JSON; documented in docs/sim_profile_format.md):

    {
      "format": "glitches.profile.v1",
      "model": "llama-2-7b",               # informational
      "layers": 32,                          # transformer layers (KV streams per layer)
      "host_cores": 2,                       # optional: cores of the host the host_threads devices share
      "devices": {
        "a100": {                            # the name `simulate(gpu=..., fpga=...)` asks for
          "kind": "gpu",                     # "gpu" or "fpga"
          "price_usd": 17000,
          "power_w": {"prefill": 256.6, "decode": 167.3, "idle": 55},
          "kv_bytes_per_token": 524288,      # KV as this device stores it, bytes
          "kv_capacity_bytes": 50000000000,  # free for KV after weights, bytes
          "prefill": {"prompt_tokens": [128, 512, 1536], "seconds": [0.03, 0.06, 0.176]},
          "decode": {"context_tokens": [128, 1024, 2048], "seconds_per_token": [0.0231, 0.0239, 0.0248]},
          "kv_transfer_gb_per_s": 12.0,      # GPU -> FPGA, measured; optional, GPUs only
          "batched_steps": {                 # optional, GPUs: the step loop's time by composition
            "points": [{"prefill_tokens": 0, "decode_rows": 4, "context_tokens": 320, "seconds": 0.09}],
            "fit": {"overhead_s": 0.03, "per_prefill_token_s": 0.001, "per_decode_row_s": 0.01,
                    "per_context_token_s": 1e-05, "fit_max_rel_error": 0.08}   # glitches/sim/step_model.py
          },
          "request_overhead_s": 0.05,        # optional: client TTFT - worker prefill_s, one request alone
          "host_threads": 2                  # optional: host CPU threads it computes on (0/absent: own silicon)
        }
      }
    }

Between samples times are interpolated linearly. Outside the sampled range they
follow a least-squares fit: quadratic in prompt tokens for prefill (needs 3
samples, else linear), linear in context for decode. Samples must increase.
With "batched_steps" a batching GPU's step (glitches/sim/gpu_batching.py) costs the fitted StepModel's
time instead of the one-request curves; "request_overhead_s" delays each prefill's entry into a batching
GPU's loop (the request path outside the forward pass: gRPC, scheduler, tokenizer).
"host_cores" (a number > 0) and each device's "host_threads" (an integer >= 0) say which devices compute
on the host's CPU and share its cores: with them the node's steps of those devices go through one
processor-sharing host CPU (glitches/sim/host_cpu.py, NodeConfig.host_cores); every time in the file is
still the device measured alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glitches.scheduler.placement import DeviceKind
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.profiles import DeviceProfile
from glitches.sim.step_model import StepModel

FORMAT = "glitches.profile.v1"


@dataclass(frozen=True)
class SampledCurve:
    """seconds(x) from samples: linear interpolation inside, a polynomial fit outside."""

    xs: tuple[float, ...]
    ys: tuple[float, ...]
    fit: tuple[float, ...]  # numpy.polyfit coefficients, highest power first

    @classmethod
    def from_samples(cls, xs: list[float], ys: list[float], degree: int, what: str) -> SampledCurve:
        if len(xs) != len(ys) or not xs:
            raise InvalidArgument(f"{what}: needs as many times as token counts, at least one")
        if any(b <= a for a, b in zip(xs, xs[1:])):
            raise InvalidArgument(f"{what}: token counts must strictly increase, got {xs}")
        if any(y <= 0 for y in ys):
            raise InvalidArgument(f"{what}: times must be positive seconds, got {ys}")
        degree = min(degree, len(xs) - 1)
        fit = np.polyfit(xs, ys, degree) if degree > 0 else np.array([ys[0]])
        return cls(tuple(map(float, xs)), tuple(map(float, ys)), tuple(map(float, fit)))

    def __call__(self, x: float) -> float:
        if self.xs[0] <= x <= self.xs[-1]:
            return float(np.interp(x, self.xs, self.ys))
        # never below the nearest sample's fraction: a fit must not go to zero or negative
        edge = self.ys[0] if x < self.xs[0] else self.ys[-1]
        return max(float(np.polyval(self.fit, x)), 0.1 * edge)


@dataclass(frozen=True)
class SampledTiming:
    prefill: SampledCurve
    decode: SampledCurve
    step_model: StepModel | None = None  # a batched step's seconds, when the profile measured batched steps
    request_overhead_s: float = 0.0  # seconds between a request's arrival and its prefill reaching the GPU loop

    @property
    def step_s(self):
        """StepModel.step_s, or None (gpu_batching.step_time_s then composes the one-request curves)."""
        return self.step_model.step_s if self.step_model is not None else None

    def prefill_s(self, prompt_tokens: int) -> float:
        return self.prefill(prompt_tokens)

    def decode_step_s(self, context_tokens: int) -> float:
        return self.decode(context_tokens)


@dataclass(frozen=True)
class MeasuredDevice:
    profile: DeviceProfile
    kv_transfer_gb_per_s: float | None
    host_cores: float | None = None  # the file's "host_cores": cores of the host its devices were measured on


def load_measured(path: str | Path) -> dict[str, MeasuredDevice]:
    """Read a glitches.profile.v1 file: device name -> profile (+ measured KV link speed)."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidArgument(f"cannot read profile {path}: {exc}") from exc
    if doc.get("format") != FORMAT:
        raise InvalidArgument(f"{path}: 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    layers = doc.get("layers")
    if not isinstance(layers, int) or layers < 1:
        raise InvalidArgument(f"{path}: 'layers' must be a positive integer")
    host_cores = doc.get("host_cores")
    if host_cores is not None and (not _is_number(host_cores) or not host_cores > 0):
        raise InvalidArgument(f"{path}: 'host_cores' must be a positive number of cores, got {host_cores!r}")
    return {name: _device(path, name, spec, layers, host_cores) for name, spec in doc.get("devices", {}).items()}


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _device(path: Path, name: str, spec: dict, layers: int, host_cores: float | None) -> MeasuredDevice:
    where = f"{path}: device {name!r}"
    try:
        prefill = SampledCurve.from_samples(
            spec["prefill"]["prompt_tokens"], spec["prefill"]["seconds"], 2, f"{where} prefill"
        )
        decode = SampledCurve.from_samples(
            spec["decode"]["context_tokens"], spec["decode"]["seconds_per_token"], 1, f"{where} decode"
        )
        power = spec["power_w"]
        batched = spec.get("batched_steps")
        step_model = StepModel.from_json(batched["fit"], f"{where} batched_steps") if batched else None
        overhead = float(spec.get("request_overhead_s", 0.0))
        if overhead < 0:
            raise InvalidArgument(f"{where}: request_overhead_s must be >= 0 s, got {overhead}")
        host_threads = spec.get("host_threads", 0)
        if not isinstance(host_threads, int) or isinstance(host_threads, bool) or host_threads < 0:
            raise InvalidArgument(f"{where}: host_threads must be an integer >= 0 (0: not on the host CPU), "
                                  f"got {host_threads!r}")
        profile = DeviceProfile(
            name=name,
            kind=DeviceKind(spec["kind"]),
            timing=SampledTiming(prefill, decode, step_model, overhead),
            price_usd=float(spec["price_usd"]),
            prefill_w=float(power["prefill"]),
            decode_w=float(power["decode"]),
            idle_w=float(power["idle"]),
            kv_bytes_per_token=float(spec["kv_bytes_per_token"]),
            kv_capacity_bytes=float(spec["kv_capacity_bytes"]),
            layers=layers,
            host_threads=host_threads,
        )
    except KeyError as exc:
        raise InvalidArgument(f"{where}: missing field {exc}") from exc
    except ValueError as exc:  # e.g. kind not gpu/fpga
        raise InvalidArgument(f"{where}: {exc}") from exc
    link = spec.get("kv_transfer_gb_per_s")
    return MeasuredDevice(profile, float(link) if link is not None else None,
                          float(host_cores) if host_cores is not None else None)
