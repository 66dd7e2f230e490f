"""Where a simulated Poisson run departs from the live one (benchmarks/validate_sim_poisson.py), split by cause.

For one live run (glitches bench's per-request results) and its simulation (the finished sim Node of the
same trace), per decode kind ("fpga": an emulated card, "gpu": GPU assist), medians in seconds:
- TPOT of the requests that decoded there, live and simulated: a card's or the GPU loop's step time
  as modelled vs as it ran (contention between processes on shared host cores shows here);
- live: the request path before the prefill (client TTFT - the worker's prefill_s), i.e. scheduling,
  gRPC, tokenizing and queueing, against the profile's request_overhead_s (measured alone);

And a replay: the same simulation with a copy of the profile set to the speed the devices ran at during
this run (`run_speed_profile`). The GPU: its step model fitted to the steps its step loop logged during
the run (glitches/gpu_worker/step_log.py, GET /steps: every step's composition and whole-step seconds), and
its prefill curve from that fit; so a prefill costs the steps that computed it and nothing of its wait
behind other steps. Without the log (an older worker) the earlier, biased replay: the GPU's median
prefill_s (which runs from the prefill's submission to the end of the step that finishes it, so it holds
the wait behind other steps) and every step at the median per-step forward time device_decode_s /
(tokens - 1). The cards: their per-step forward time device_decode_s / (tokens - 1) from the scheduler's
per-request timings. Not a prediction (it reads the run it is compared with); it separates the error of
the system model (queueing, batching, placement) from the error of the device speeds in the profile.
"""

from __future__ import annotations

import copy

import numpy as np

from glitches.bench.records import RequestResult
from glitches.sim.step_model import StepPoint, fit_step_model


def _median(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def _kind(worker_or_device: str) -> str:
    return "fpga" if worker_or_device.startswith("fpga") else "gpu"


def live_breakdown(results: list[RequestResult]) -> dict:
    ok = [r for r in results if r.ok and r.timings is not None]
    out = {"path_s": _median([r.ttft_s - r.timings.prefill_s for r in ok]),
           "prefill_s": _median([r.timings.prefill_s for r in ok])}
    for kind in ("fpga", "gpu"):
        mine = [r for r in ok if r.decode_device == kind and r.tpot_s is not None]
        out[f"tpot_{kind}_s"] = _median([r.tpot_s for r in mine])
        out[f"n_{kind}"] = len(mine)
    return out


def sim_breakdown(node) -> dict:
    out = {}
    for kind in ("fpga", "gpu"):
        mine = [r for r in node.records if not r.rejected and _kind(r.decode_device) == kind and r.output_tokens > 1]
        out[f"tpot_{kind}_s"] = _median([(r.token_times_s[-1] - r.first_token_s) / (r.output_tokens - 1)
                                          for r in mine])
        out[f"n_{kind}"] = len(mine)
    return out


def render(live: dict, sim: dict, profile_entry_gpu: dict) -> list[str]:
    lines = [f"    request path before prefill (live TTFT - prefill_s) p50 {live['path_s']:.4f} s, profile's "
             f"request_overhead_s {profile_entry_gpu.get('request_overhead_s', 0.0):.4f} s; live prefill_s p50 "
             f"{live['prefill_s']:.4f} s"]
    for kind, name in (("fpga", "emulated card"), ("gpu", "GPU assist")):
        s, m = sim[f"tpot_{kind}_s"], live[f"tpot_{kind}_s"]
        if live[f"n_{kind}"] or sim[f"n_{kind}"]:
            err = (s - m) / m if m == m and m else float("nan")
            lines.append(f"    TPOT p50 on {name}: sim {s:.4f} s ({sim[f'n_{kind}']} req) vs live {m:.4f} s "
                         f"({live[f'n_{kind}']} req), {err:+.1%}")
    return lines


def _per_step(results: list[RequestResult], kind: str) -> list[float]:
    return [r.timings.device_decode_s / (r.output_tokens - 1) for r in results
            if r.ok and r.timings is not None and r.decode_device == kind and r.output_tokens > 1
            and r.timings.device_decode_s > 0]


def _median_gpu_speeds(gpu: dict, results: list[RequestResult], ok: list[RequestResult]) -> None:
    """The replay without a step log: the median prefill_s (wait included) and the median GPU step."""
    if ok:
        gpu["prefill"] = {"prompt_tokens": [int(np.median([r.prompt_tokens for r in ok]))],
                          "seconds": [_median([r.timings.prefill_s for r in ok])]}
    gpu_steps = _per_step(results, "gpu")
    if gpu_steps and "batched_steps" in gpu:  # every step of the run costs the run's median GPU step
        fit = gpu["batched_steps"]["fit"]
        fit.update(overhead_s=_median(gpu_steps), per_decode_row_s=0.0, per_context_token_s=0.0, batched_decode_s=0.0)
        if ok:
            fit["per_prefill_token_s"] = gpu["prefill"]["seconds"][0] / gpu["prefill"]["prompt_tokens"][0]


def run_speed_profile(doc: dict, results: list[RequestResult], gpu_name: str, fpga_name: str | None,
                      logged_steps: list[StepPoint] | None = None) -> dict:
    """The profile with each device's times replaced by its worker-side times during `results`: the GPU's
    step model fitted to `logged_steps` (its step log during the run, profile_steplog.step_point each) when
    there are 2 or more, else the medians described in the module docstring."""
    out = copy.deepcopy(doc)
    ok = [r for r in results if r.ok and r.timings is not None and r.timings.prefill_s > 0]
    gpu = out["devices"][gpu_name]
    if logged_steps is not None and len(logged_steps) >= 2:
        fit = fit_step_model(logged_steps)
        lengths = gpu.get("prefill", {}).get("prompt_tokens") or sorted({r.prompt_tokens for r in ok}) or [64]
        if fit.per_prefill_token_s <= 0:  # a flat curve: the profile format wants increasing samples
            lengths = lengths[:1]
        gpu["prefill"] = {"prompt_tokens": list(lengths), "seconds": [fit.seconds(n, 0, 0) for n in lengths]}
        gpu["batched_steps"] = {"source": "run-step-log", "points": [vars(p) for p in logged_steps],
                                "fit": fit.to_json()}
    else:
        _median_gpu_speeds(gpu, results, ok)
    fpga_steps = _per_step(results, "fpga")
    if fpga_name and fpga_steps:
        out["devices"][fpga_name]["decode"] = {"context_tokens": [1], "seconds_per_token": [_median(fpga_steps)]}
    return out
