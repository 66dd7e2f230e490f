"""benchmarks/validate_sim_causes.py: the per-kind breakdown and the replay at a run's own device speeds."""

from __future__ import annotations

from dataclasses import replace

import pytest

from benchmarks.validate_sim_causes import live_breakdown, run_speed_profile, sim_breakdown
from glitches.bench.profile_doc import DeviceSamples, profile_document, write_profile
from glitches.bench.records import RequestResult
from glitches.sim.metrics import summarise
from glitches.sim.run import build_config, simulate_node
from glitches.sim.step_model import StepModel, StepPoint
from glitches.types import Timings


def _profile() -> dict:
    gpu = DeviceSamples("gpu", "cpu", "host CPU", 24_000_000_000, None, None, "unknown: host CPU")
    gpu.prefill = {32: [0.2], 64: [0.4], 128: [0.8]}
    gpu.decode = {64: [0.05], 80: [0.06]}
    gpu.step_points = [StepPoint(0, rows, rows * 70, 0.04 + 0.01 * rows) for rows in (1, 2, 4, 8)]
    gpu.request_overhead_s = [0.02]
    return profile_document("smollm2-135m-instruct", 30, {"gpu-cpu": gpu}, ["test"])


def _result(index: int, start_s: float, step_s: float, prefill_s: float, tokens: int = 8) -> RequestResult:
    """A GPU-decoded request whose worker spent step_s per token (forward passes only)."""
    first = start_s + prefill_s + 0.01
    times = [first + step_s * 1.2 * j for j in range(tokens)]  # the client sees the loop's cycle, a bit longer
    timings = Timings(ttft_s=first - start_s, prefill_s=prefill_s, kv_bytes=0, kv_exposed_s=0.0,
                      decode_s=times[-1] - first, tokens_per_s=0.0, device_decode_s=step_s * (tokens - 1),
                      modeled_decode_s=0.0, layers_received_before_prefill_end=0, num_layers=30, total_s=0.0)
    return RequestResult(index, tokens, start_s, times, 64, "length", "gpu-0", "gpu-0", "gpu", timings)


def test_the_replay_runs_the_simulator_at_the_runs_own_device_speed(tmp_path):
    doc = _profile()
    # the run went 3x slower than the profile said (a loaded machine): 0.15 s steps, 1.2 s prefills
    results = [_result(i, 5.0 * i, 0.15, 1.2) for i in range(4)]
    replayed = run_speed_profile(doc, results, "gpu-cpu", None)
    fit = replayed["devices"]["gpu-cpu"]["batched_steps"]["fit"]
    assert fit["overhead_s"] == pytest.approx(0.15) and fit["per_decode_row_s"] == 0.0
    assert replayed["devices"]["gpu-cpu"]["prefill"] == {"prompt_tokens": [64], "seconds": [pytest.approx(1.2)]}
    assert doc["devices"]["gpu-cpu"]["batched_steps"]["fit"]["overhead_s"] != pytest.approx(0.15)  # a copy

    def tpot(profile: dict) -> float:
        path = tmp_path / "p.json"
        write_profile(profile, path)
        config = replace(build_config(1, "gpu-cpu", 0, "u280", "llama-2-7b", str(path), gpu_decode_slots=8),
                         gpu_batching=True)
        node = simulate_node(config, [(64, 8)] * 4, arrivals_s=[5.0 * i for i in range(4)])
        return summarise(node)["tpot_s"]["p50"], node

    profiled, _ = tpot(doc)
    at_run_speed, node = tpot(replayed)
    assert at_run_speed == pytest.approx(0.15)  # requests 5 s apart never share a step
    assert profiled < 0.1
    live = live_breakdown(results)
    assert live["n_gpu"] == 4 and live["n_fpga"] == 0 and live["path_s"] == pytest.approx(0.01)
    assert live["tpot_gpu_s"] == pytest.approx(0.18)
    assert sim_breakdown(node)["tpot_gpu_s"] == pytest.approx(0.15)


def test_the_replay_times_the_gpu_by_the_steps_it_logged_not_by_prefill_s(tmp_path):
    """The worker's prefill_s holds the wait behind other steps (here 3 s); the logged steps do not: the replay's
    prefill is the fit of the steps that computed it, and each decode step the logged one-row step."""
    doc = _profile()
    run_model = StepModel(0.10, 0.002, 0.05, 0.0)  # the run's real steps, seconds
    logged = [StepPoint(64, 0, 0, run_model.seconds(64, 0, 0)), StepPoint(32, 0, 0, run_model.seconds(32, 0, 0))]
    logged += [StepPoint(0, 1, ctx, run_model.seconds(0, 1, ctx)) for ctx in range(64, 72)]
    logged += [StepPoint(16, 1, 70, run_model.seconds(16, 1, 70))]
    results = [_result(i, 5.0 * i, 0.15, 3.0) for i in range(4)]
    replayed = run_speed_profile(doc, results, "gpu-cpu", None, logged)
    gpu = replayed["devices"]["gpu-cpu"]
    assert gpu["batched_steps"]["source"] == "run-step-log" and len(gpu["batched_steps"]["points"]) == len(logged)
    fit = gpu["batched_steps"]["fit"]
    assert fit["overhead_s"] == pytest.approx(0.10) and fit["per_decode_row_s"] == pytest.approx(0.05)
    assert dict(zip(gpu["prefill"]["prompt_tokens"], gpu["prefill"]["seconds"]))[64] == pytest.approx(0.228)
    path = tmp_path / "p.json"
    write_profile(replayed, path)
    config = replace(build_config(1, "gpu-cpu", 0, "u280", "llama-2-7b", str(path), gpu_decode_slots=8),
                     gpu_batching=True)
    summary = summarise(simulate_node(config, [(64, 8)] * 4, arrivals_s=[5.0 * i for i in range(4)]))
    assert summary["tpot_s"]["p50"] == pytest.approx(0.15, rel=0.01)  # one row at ~68 tokens of context
    assert summary["ttft_s"]["p50"] < 1.0  # the 3 s prefill_s (mostly wait) is not charged as compute
