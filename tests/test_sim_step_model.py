"""The batched step model (glitches/sim/step_model.py): its fit, its file entry, and the simulator using it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from glitches.bench.profile_batched import TimedStream, combine, steady_step
from glitches.bench.profile_doc import DeviceSamples, profile_document, write_profile
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.cli import simulate
from glitches.sim.measured import load_measured
from glitches.bench.profile_doc import batched_steps_entry
from glitches.bench.profile_steplog import step_point
from glitches.sim.step_model import TERMS, StepModel, StepPoint, context_read, fit_step_model

TRUE = StepModel(0.030, 0.0012, 0.008, 2e-5)  # seconds: per step, per prefill token, per row, per context token


def grid(model: StepModel, noise: float = 0.0, seed: int = 0) -> list[StepPoint]:
    rng = np.random.default_rng(seed)
    points = [StepPoint(n, 0, 0, model.seconds(n, 0, 0)) for n in (32, 64, 128)]
    points += [StepPoint(0, rows, rows * ctx, model.seconds(0, rows, rows * ctx))
               for rows in (1, 2, 4, 8) for ctx in (64, 400)]
    return [StepPoint(p.prefill_tokens, p.decode_rows, p.context_tokens,
                      p.seconds * (1 + noise * rng.standard_normal())) for p in points]


def test_the_fit_recovers_the_coefficients_of_exact_steps():
    fit = fit_step_model(grid(TRUE))
    for name in ("overhead_s", "per_prefill_token_s", "per_decode_row_s", "per_context_token_s"):
        assert getattr(fit, name) == pytest.approx(getattr(TRUE, name), rel=1e-6)
    assert fit.fit_max_rel_error < 1e-9


def test_the_fit_keeps_coefficients_non_negative_and_reports_its_error():
    # steps whose time falls with context: least squares would give a negative per-context term
    points = [StepPoint(0, rows, rows * ctx, 0.05 + 0.01 * rows - 1e-6 * rows * ctx)
              for rows in (1, 2, 4) for ctx in (10, 1000)]
    fit = fit_step_model(points)
    assert fit.per_context_token_s == 0.0 and fit.overhead_s > 0 and fit.per_decode_row_s > 0
    assert 0 < fit.fit_max_rel_error < 0.2
    noisy = fit_step_model(grid(TRUE, noise=0.03, seed=1))
    assert noisy.per_decode_row_s == pytest.approx(TRUE.per_decode_row_s, rel=0.3)
    assert noisy.fit_max_rel_error < 0.15


def test_step_s_counts_decode_contexts_and_the_kv_a_chunk_reads():
    # 2+ decode rows run batched, padded to the longest: 2 x 300 read, plus the chunk's 50 tokens in KV
    assert TRUE.step_s([(100, 50)], [200, 300]) == pytest.approx(TRUE.seconds(100, 2, 650))
    assert TRUE.step_s([], [200]) == pytest.approx(TRUE.seconds(0, 1, 200))  # a lone row reads its own
    assert TRUE.step_s([], []) == pytest.approx(TRUE.overhead_s)
    with pytest.raises(InvalidArgument):
        fit_step_model(grid(TRUE)[:1])
    with pytest.raises(InvalidArgument):
        StepModel.from_json({"overhead_s": -1, "per_prefill_token_s": 0, "per_decode_row_s": 0,
                             "per_context_token_s": 0}, "test")


def test_the_steady_window_is_where_every_stream_decodes():
    # three streams, first tokens at 0.0/0.1/0.2 s, then one token every 0.05 s (one row each per step)
    streams = []
    for k in range(3):
        s = TimedStream(sent_s=0.0)
        s.token_times_s = [0.1 * k + 0.05 * j for j in range(10)]
        streams.append(s)
    point = steady_step(streams, prompt_tokens=64)
    assert point.decode_rows == 3 and point.prefill_tokens == 0
    assert point.seconds == pytest.approx(0.05)
    assert 3 * 64 < point.context_tokens < 3 * 74
    lone = TimedStream(sent_s=0.0)
    lone.token_times_s = [0.0, 0.05]
    assert steady_step([lone], 64) is None  # one gap is not enough
    # the there-and-back windows of one row count: median seconds, mean context
    both = combine([point, StepPoint(0, 3, point.context_tokens + 10, 0.07)])
    assert both.seconds == pytest.approx(0.06) and both.context_tokens == point.context_tokens + 5


def _samples() -> dict[str, DeviceSamples]:
    gpu = DeviceSamples("gpu", "cpu", "host CPU", 24_000_000_000, None, None, "unknown: host CPU")
    gpu.prefill = {n: [TRUE.seconds(n, 0, 0)] for n in (32, 64, 128)}
    gpu.decode = {64: [TRUE.seconds(0, 1, 64)], 400: [TRUE.seconds(0, 1, 400)]}
    gpu.kv_bytes_per_token = [46080.0]
    gpu.step_points = [p for p in grid(TRUE) if p.decode_rows]
    gpu.request_overhead_s = [0.04, 0.05, 0.06]
    return {"gpu-cpu": gpu}


def test_a_profile_with_batched_steps_drives_the_batching_gpu(tmp_path):
    path = tmp_path / "profile.json"
    write_profile(profile_document("smollm2-135m-instruct", 30, _samples(), ["test"]), path)
    entry = json.loads(path.read_text())["devices"]["gpu-cpu"]
    assert len(entry["batched_steps"]["points"]) == 8 + 3  # the batched steps and the prefill medians
    assert entry["request_overhead_s"] == pytest.approx(0.05)
    timing = load_measured(path)["gpu-cpu"].profile.timing
    assert timing.step_s([], [64] * 8) == pytest.approx(TRUE.seconds(0, 8, 512), rel=1e-6)
    assert timing.request_overhead_s == pytest.approx(0.05)
    # 8 requests at once on the GPU alone: they decode together, each token one 8-row step
    result = simulate(1, "gpu-cpu", 0, "u280", "llama-2-7b", 64, 10, 8, None, None, str(path),
                      gpu_decode_slots=8, gpu_batching=True)
    assert result["tpot_s"]["p50"] == pytest.approx(TRUE.seconds(0, 8, 8 * 69), rel=0.05)
    # the first token: the request path's overhead, then one step of the 8 prompts (512 tokens, the budget)
    assert result["ttft_s"]["p50"] == pytest.approx(0.05 + TRUE.seconds(512, 0, 0), rel=1e-6)


BATCHED = StepModel(0.040, 0.0010, 0.002, 3e-5, batched_decode_s=0.030)  # seconds, as TRUE plus a batched path


def test_the_fit_recovers_the_batched_decode_term_from_logged_steps():
    """Steps as a worker logs them (prefills, lone decodes, batched decodes, mixed), their seconds from a known
    model: the fit finds every coefficient, and a model without the batched term misses them by far more."""
    rng = np.random.default_rng(3)
    points = []
    for _ in range(60):
        rows = int(rng.choice([0, 1, 2, 4, 8]))
        contexts = [int(c) for c in rng.integers(16, 600, size=rows)]
        chunks = [(int(rng.integers(8, 128)), int(rng.integers(0, 64)))] if rows == 0 or rng.random() < 0.2 else []
        new = sum(n for n, _ in chunks)
        context = context_read(chunks, contexts)
        points.append(StepPoint(new, rows, context, BATCHED.seconds(new, rows, context)))
    fit = fit_step_model(points)
    for name in TERMS:
        assert getattr(fit, name) == pytest.approx(getattr(BATCHED, name), rel=1e-6, abs=1e-12)
    assert fit.fit_max_rel_error < 1e-9 and fit.fit_points == 60
    assert StepModel.from_json(fit.to_json(), "test") == fit
    old = fit.to_json()
    del old["batched_decode_s"]  # a profile written before the term: loads with it at 0
    assert StepModel.from_json(old, "test").batched_decode_s == 0.0
    no_batched = fit_step_model([StepPoint(p.prefill_tokens, min(p.decode_rows, 1), p.context_tokens, p.seconds)
                                 for p in points])
    assert no_batched.fit_max_rel_error > 0.05


def test_logged_steps_become_points_and_the_profile_fits_them_beside_the_client_clock():
    logged = {"chunks": [[16, 48]], "decode_contexts": [70, 90, 80], "step_s": 0.2}
    point = step_point(logged)
    assert (point.prefill_tokens, point.decode_rows, point.context_tokens) == (16, 3, 3 * 90 + 48)
    steps = [StepPoint(0, rows, rows * ctx, BATCHED.seconds(0, rows, rows * ctx)) for rows in (1, 2, 4, 8)
             for ctx in (64, 400)]
    steps += [StepPoint(n, 0, 0, BATCHED.seconds(n, 0, 0)) for n in (32, 64, 128)]
    entry = batched_steps_entry(steps[:4], [32, 64], [BATCHED.seconds(32, 0, 0), BATCHED.seconds(64, 0, 0)], steps)
    assert entry["source"] == "worker-step-log" and len(entry["points"]) == len(steps)
    assert entry["fit"]["batched_decode_s"] == pytest.approx(0.030, rel=1e-6)
    assert entry["client_fit_on_logged"]["max_rel_error"] >= 0
    alone = batched_steps_entry(steps[:4], [32, 64], [0.07, 0.1])
    assert alone["source"] == "client-token-clock" and "client_fit" not in alone


def test_the_fit_recovers_the_streamed_chunk_term_and_the_sim_charges_it_to_card_bound_prefills():
    """A prefill whose KV streams to a card costs per_streamed_chunk_s more in its step (the per-layer sends run
    inside the pass); the fit finds it from logged steps, and a batching GPU in the simulator charges it only
    to the final chunk of a prefill that decodes elsewhere."""
    true = StepModel(0.030, 0.0012, 0.008, 2e-5, 0.01, 0.09)
    points = [StepPoint(n, rows, rows * 80, true.seconds(n, rows, rows * 80, streamed), streamed)
              for n in (32, 64, 128) for rows in (0, 1, 3) for streamed in (0, 1)]
    points += [StepPoint(0, rows, rows * 80, true.seconds(0, rows, rows * 80)) for rows in (1, 2, 4, 8)]
    fit = fit_step_model(points)
    assert fit.per_streamed_chunk_s == pytest.approx(0.09, rel=1e-6)
    assert fit.fit_max_rel_error < 1e-9
    logged = {"chunks": [[64, 0]], "decode_contexts": [70], "step_s": 0.3, "streamed_chunks": 1}
    assert step_point(logged).streamed_chunks == 1
    assert step_point(logged | {"streamed_chunks": 0}).streamed_chunks == 0
    del logged["streamed_chunks"]  # a worker from before the field
    assert step_point(logged).streamed_chunks == 0


def test_a_batching_gpu_charges_the_stream_only_to_prefills_that_decode_elsewhere():
    from glitches.sim.node import NodeConfig
    from glitches.sim.run import simulate_node
    from tests.sim_helpers import fixed

    model = StepModel(0.1, 0.0, 0.0, 0.0, 0.0, 0.5)  # 0.1 s a step, + 0.5 s per streamed chunk

    class Timed:
        step_s = staticmethod(model.step_s)
        request_overhead_s = 0.0

        def prefill_s(self, n):
            return 0.1

        def decode_step_s(self, c):
            return 0.1

    gpu = fixed("gpu", 0.1, 0.1)
    gpu = type(gpu)(**{**gpu.__dict__, "timing": Timed()})
    card = fixed("fpga", 10.0, 0.05)
    # 1 GPU + 1 card, batching: the first request decodes on the card (its prefill streams: 0.6 s), the second,
    # arriving while the card is busy, on the GPU (GPU assist: 0.1 s, no stream)
    config = NodeConfig(gpu, 1, card, 1, 1e9, gpu_decode_slots=4, gpu_batching=True)
    node = simulate_node(config, [(8, 2), (8, 2)], arrivals_s=[0.0, 0.05])
    first, second = node.records
    assert first.decode_device == "fpga0" and second.decode_device == "gpu0"
    assert first.first_token_s == pytest.approx(0.6, abs=1e-3)
    assert second.first_token_s - 0.6 == pytest.approx(0.1, abs=1e-3)  # its own step after the first's
