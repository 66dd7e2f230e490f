"""The simulator's continuously batching GPU (glitches/sim/gpu_batching.py) and its step-time model (RooflineTiming.step_s)."""

from __future__ import annotations

import numpy as np
import pytest

from glitches.sim.node import NodeConfig
from glitches.sim.profiles import load_device_profile
from glitches.sim.run import run_simulation, simulate_node
from tests.sim_helpers import fixed


@pytest.fixture(scope="module")
def a100():
    return load_device_profile("a100", "llama-2-7b")


def test_step_time_composes_prefill_chunks_and_decode_rows(a100):
    timing = a100.timing
    assert timing.step_s([(1536, 0)], []) == pytest.approx(timing.prefill_s(1536))  # one chunk alone = a prefill
    assert timing.step_s([], [1792]) == pytest.approx(timing.decode_step_s(1792))  # one row alone = a decode step
    sixteen = timing.step_s([], [1792] * 16)
    assert timing.decode_step_s(1792) < sixteen < 3 * timing.decode_step_s(1792)  # the weights are read once
    # chunks of one prompt cost at least the whole prompt (attention over the earlier chunks' KV)
    chunked = sum(timing.step_s([(256, past)], []) for past in (0, 256, 512, 768))
    assert chunked >= timing.prefill_s(1024) * 0.999


def test_concurrent_requests_start_together_on_a_batching_gpu():
    """8 requests at once on one GPU: batch-1 staggers their first tokens 1..8 s; batching prefills them in one
    pass (fallback step time: each chunk's prefill, summed), so every TTFT is the same."""
    gpu = fixed("gpu", 1.0, 0.1)
    shapes = [(16, 11)] * 8
    batch1 = run_simulation(NodeConfig(gpu, 1, None, 0, 1e9, gpu_decode_slots=8), shapes)
    batching = run_simulation(NodeConfig(gpu, 1, None, 0, 1e9, gpu_decode_slots=8, gpu_batching=True), shapes)
    assert batch1["ttft_s"]["p99"] / batch1["ttft_s"]["p50"] > 1.5
    assert batching["ttft_s"]["p99"] / batching["ttft_s"]["p50"] == pytest.approx(1.0)
    assert batching["tpot_s"]["p50"] == pytest.approx(0.1)  # one pass per token for all 8 rows


def test_batching_multiplies_gpu_only_throughput_when_decode_is_weight_bound(a100):
    shapes = [(128, 64)] * 16
    batch1 = run_simulation(NodeConfig(a100, 1, None, 0, 12.0, gpu_decode_slots=16), shapes)
    batching = run_simulation(NodeConfig(a100, 1, None, 0, 12.0, gpu_decode_slots=16, gpu_batching=True), shapes)
    assert batching["throughput_tokens_per_s"] > 8 * batch1["throughput_tokens_per_s"]


def test_long_prompts_are_chunked_at_max_batch_tokens(a100):
    node = simulate_node(NodeConfig(a100, 1, None, 0, 12.0, gpu_decode_slots=1, gpu_batching=True,
                                    gpu_max_batch_tokens=256), [(1000, 1)])
    expected = sum(a100.timing.step_s([(n, past)], []) for n, past in ((256, 0), (256, 256), (256, 512), (232, 768)))
    assert node.records[0].first_token_s == pytest.approx(expected)
    assert node.gpus[0].loop.steps == 4


def test_batching_gpu_still_places_by_scheduler_placement_and_streams_to_fpgas(a100):
    u280 = load_device_profile("u280", "llama-2-7b")
    node = simulate_node(NodeConfig(a100, 1, u280, 2, 12.0, gpu_decode_slots=4, gpu_batching=True), [(512, 32)] * 6)
    devices = [r.decode_device for r in node.records]
    assert devices.count("fpga0") + devices.count("fpga1") >= 2 and "gpu0" in devices
    assert all(np.all(np.diff(r.token_times_s) > 0) for r in node.records)
