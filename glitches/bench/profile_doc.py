"""Measured samples -> a `glitches.profile.v1` document (docs/sim_profile_format.md) and back to disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from glitches.sim.measured import FORMAT
from glitches.sim.step_model import StepPoint, fit_step_model

ASSUMED_U280_IDLE_W = 35.0  # not in the paper: the assumption of glitches/sim/profiles/devices.json


@dataclass
class DeviceSamples:
    """What was measured on one kind of worker. Every time in seconds."""

    kind: str  # "gpu" or "fpga"
    backend: str  # "cpu", "cuda", "emu", "xrt"
    device_name: str
    kv_capacity_bytes: int  # from the worker's status (0: none reported)
    power_w: float | None  # None: unknown (written as 0 W with power_known false)
    price_usd: float | None
    power_source: str
    prefill: dict[int, list[float]] = field(default_factory=dict)  # prompt tokens -> prefill_s samples
    decode: dict[int, list[float]] = field(default_factory=dict)  # context tokens -> s/token samples
    kv_bytes_per_token: list[float] = field(default_factory=list)  # kv_bytes / prompt tokens, per request
    kv_gb_per_s: list[float] = field(default_factory=list)  # per request, see kv_link_gb_per_s
    step_points: list[StepPoint] = field(default_factory=list)  # batched steps (glitches.bench.profile_batched)
    logged_steps: list[StepPoint] = field(default_factory=list)  # the worker's own step log (profile_steplog)
    request_overhead_s: list[float] = field(default_factory=list)  # client TTFT - prefill_s, per prefill sample


def kv_link_gb_per_s(kv_bytes: int, num_layers: int, kv_exposed_s: float) -> float | None:
    """The link speed under which the simulator's layer-by-layer model gives the measured exposed time.

    When the sends keep up with the layers, only the last layer's send is exposed:
    exposed = (kv_bytes / layers) / link, so link = kv_bytes / (layers x exposed). The
    measured exposed time also holds the end marker's round trip, so this under-states the raw link.
    """
    if kv_bytes <= 0 or num_layers < 1 or kv_exposed_s <= 0:
        return None
    return kv_bytes / (num_layers * kv_exposed_s) / 1e9


def _curve(samples: dict[int, list[float]]) -> tuple[list[int], list[float]]:
    xs = sorted(x for x, ys in samples.items() if ys)
    return xs, [float(np.median(samples[x])) for x in xs]


def device_entry(d: DeviceSamples, fallback_prefill: dict[int, list[float]] | None = None) -> dict:
    prefill = d.prefill or fallback_prefill or {}
    px, py = _curve(prefill)
    dx, dy = _curve(d.decode)
    if not px or not dx:
        raise ValueError(f"{d.kind} worker ({d.backend}): no {'prefill' if not px else 'decode'} samples measured")
    idle_w = d.power_w
    if d.power_w is not None and d.kind == "fpga" and d.backend == "emu":
        idle_w = ASSUMED_U280_IDLE_W
    entry = {
        "kind": d.kind,
        "price_usd": d.price_usd or 0.0,
        "power_w": {"prefill": d.power_w or 0.0, "decode": d.power_w or 0.0, "idle": idle_w or 0.0},
        "power_known": d.power_w is not None,
        "power_source": d.power_source,
        "backend": d.backend,
        "device_name": d.device_name,
        "kv_bytes_per_token": float(np.median(d.kv_bytes_per_token)) if d.kv_bytes_per_token else 0.0,
        "kv_capacity_bytes": int(d.kv_capacity_bytes),
        "prefill": {"prompt_tokens": px, "seconds": py},
        "decode": {"context_tokens": dx, "seconds_per_token": dy},
    }
    if not d.prefill:
        entry["prefill_note"] = ("not measured: this worker never prefills behind a scheduler; filled with "
                                 "prompt tokens x its decode step (token-by-token, an upper bound), used by the "
                                 "simulator only for a node without GPUs")
    if d.kv_gb_per_s:
        entry["kv_transfer_gb_per_s"] = float(np.median(d.kv_gb_per_s))
    if d.request_overhead_s:
        entry["request_overhead_s"] = float(np.median(d.request_overhead_s))
    if d.step_points or len(d.logged_steps) >= 2:
        entry["batched_steps"] = batched_steps_entry(d.step_points, px, py, d.logged_steps)
    return entry


def batched_steps_entry(steps: list[StepPoint], prompt_tokens: list[int], prefill_s: list[float],
                        logged: list[StepPoint] | None = None) -> dict:
    """The step model's points and fit.

    With the worker's step log (`logged`, 2 steps at least) the fit is of every step the worker ran during
    the profile, each with its exact composition and its own whole-step time ("source": "worker-step-log").
    The client-timed points (the batched windows' median token gaps, plus the prefill medians as steps of one
    whole prompt) are fitted too and kept beside it ("client_points", "client_fit"), with that fit's error on
    the logged steps ("client_fit_on_logged": worst and median relative error), so the two are compared on
    the same steps. Without a log the client-timed fit is the one used ("source": "client-token-clock").
    """
    client = list(steps) + [StepPoint(n, 0, 0, s) for n, s in zip(prompt_tokens, prefill_s)]
    client_fit = fit_step_model(client) if len(client) >= 2 else None
    if not logged or len(logged) < 2:
        return {"source": "client-token-clock", "points": [vars(p) for p in client], "fit": client_fit.to_json()}
    fit = fit_step_model(logged)
    out = {"source": "worker-step-log", "points": [vars(p) for p in logged], "fit": fit.to_json()}
    if client_fit is not None:
        relative = relative_errors(client_fit, logged)
        out |= {"client_points": [vars(p) for p in client], "client_fit": client_fit.to_json(),
                "client_fit_on_logged": {"max_rel_error": float(np.max(relative)),
                                         "median_rel_error": float(np.median(relative))}}
    return out


def relative_errors(model, points: list[StepPoint]) -> np.ndarray:
    """|model - measured| / measured per point."""
    return np.array([abs(model.seconds(p.prefill_tokens, p.decode_rows, p.context_tokens) - p.seconds) / p.seconds
                     for p in points])


def token_by_token_prefill(decode: dict[int, list[float]], lengths: list[int]) -> dict[int, list[float]]:
    """Prefill as `n` decode steps at the nearest measured context (seconds)."""
    xs, ys = _curve(decode)
    return {n: [n * float(np.interp(n, xs, ys))] for n in lengths} if xs else {}


def profile_document(model: str, layers: int, devices: dict[str, DeviceSamples], notes: list[str]) -> dict:
    """name -> samples, into the file format. FPGAs without prefill samples get token_by_token_prefill."""
    gpu_lengths = sorted({n for d in devices.values() for n in d.prefill})
    out = {}
    for name, d in devices.items():
        fallback = token_by_token_prefill(d.decode, gpu_lengths) if not d.prefill else None
        out[name] = device_entry(d, fallback)
    return {"format": FORMAT, "model": model, "layers": layers, "devices": out, "notes": notes}


def with_host(doc: dict, host_cores: float, host_threads: dict[str, int]) -> dict:
    """The document with the shared host stated (docs/sim_profile_format.md): `host_cores` at the top and each
    named device's `host_threads`. host_cores 0 leaves it as it is (devices on their own silicon)."""
    if host_cores <= 0:
        return doc
    unknown = sorted(set(host_threads) - set(doc["devices"]))
    if unknown:
        raise ValueError(f"--host-threads names devices the profile does not have: {unknown} "
                         f"(it has {sorted(doc['devices'])})")
    doc["host_cores"] = host_cores
    for name, threads in host_threads.items():
        doc["devices"][name]["host_threads"] = threads
    return doc


def write_profile(doc: dict, path: str | Path) -> None:
    Path(path).write_text(json.dumps(doc, indent=2) + "\n")
