"""The node model on cases with closed-form answers (fixed service times)."""

import numpy as np
import pytest
import simpy

from glitches.scheduler import placement
from glitches.sim import node as sim_node
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.node import Node
from glitches.sim.run import run_simulation
from glitches.sim.workload import all_at_once
from tests.sim_helpers import fixed, node_config

P, G = 1.0, 0.1  # GPU prefill s, GPU decode step s
PF, F = 10.0, 0.05  # FPGA prefill s, FPGA decode step s


def test_one_gpu_one_fpga_without_assist_runs_requests_back_to_back():
    # The FPGA is claimed at admission (KV streams to it during prefill), so with
    # one FPGA each request is prefill + exposed transfer + decode, in series.
    k, out = 5, 21
    kv_bytes_per_token, link, tokens = 1e6, 1.0, 100  # 100 MB over 1 GB/s: 0.1 s, one layer -> all exposed
    gpu = fixed("gpu", P, G, kv_bytes_per_token=kv_bytes_per_token)
    config = node_config(1, 1, gpu=gpu, link_gb_per_s=link, gpu_decode_slots=0)
    result = run_simulation(config, [(tokens, out)] * k)
    per_request_s = P + 0.1 + (out - 1) * F
    assert result["duration_s"] == pytest.approx(k * per_request_s)
    assert result["throughput_tokens_per_s"] == pytest.approx(k * out / (k * per_request_s))
    assert result["requests_per_s"] == pytest.approx(1 / per_request_s)
    assert result["gpu_assist_requests"] == 0
    assert result["ttft_s"]["p50"] == pytest.approx(2 * per_request_s + P + 0.1)  # 3rd of 5 waits for two; + the KV


def test_gpu_assist_timeline_with_two_requests():
    out = 11
    result = run_simulation(node_config(1, 1), [(10, out)] * 2)
    # r0: prefill [0, P] then FPGA; r1: prefill [P, 2P] then decodes on the GPU
    e2e = sorted([P + (out - 1) * F, 2 * P + (out - 1) * G])
    assert [result["e2e_s"]["p50"]] == pytest.approx([np.percentile(e2e, 50)])
    assert result["duration_s"] == pytest.approx(max(e2e))
    assert result["gpu_assist_requests"] == 1


@pytest.mark.parametrize(
    "requests, gpu_step_s, assisted",
    [
        (3, G, 0),  # every request finds a free FPGA
        (4, G, 1),  # the 4th finds all 3 FPGAs claimed
        # FPGAs decode 100 s; each assisted request takes 11 s on the GPU, so
        # requests 4..9 are all assisted before the first FPGA frees (t = 101 s)
        (9, G, 6),
        # a slow GPU (500 s per assisted request) is still busy when FPGAs free:
        # only the 4th request is assisted, the rest wait for FPGAs
        (9, 5.0, 1),
    ],
)
def test_gpu_assists_only_when_every_fpga_is_busy(requests, gpu_step_s, assisted):
    config = node_config(1, 3, gpu=fixed("gpu", P, gpu_step_s), fpga=fixed("fpga", PF, 1.0))
    result = run_simulation(config, [(10, 101)] * requests)
    assert result["gpu_assist_requests"] == assisted


def test_prefill_cuts_in_between_assisted_tokens():
    # r0 on the FPGA, r1 assisted on the GPU, r2 waits for the FPGA; when r0
    # ends, r2's prefill runs between two of r1's tokens: one gap of P + G.
    out = 101
    config = node_config(1, 1, fpga=fixed("fpga", PF, 0.01))
    env = simpy.Environment()
    node = Node(env, config)
    all_at_once(node, [(10, out)] * 3)
    env.run()
    r1 = node.records[1]
    assert r1.decode_device == "gpu0"
    assert max(np.diff(r1.token_times_s)) == pytest.approx(P + G)


def test_gpu_only_node_serves_one_request_per_gpu_at_a_time():
    k, out = 4, 11
    result = run_simulation(node_config(2, 0), [(10, out)] * k)
    assert result["duration_s"] == pytest.approx(2 * (P + (out - 1) * G))
    assert result["utilisation"] == pytest.approx({"gpu0": 1.0, "gpu1": 1.0})


def test_fpga_only_node_prefills_and_decodes_on_the_fpga():
    k, out = 4, 11
    result = run_simulation(node_config(0, 2), [(10, out)] * k)
    assert result["duration_s"] == pytest.approx(2 * (PF + (out - 1) * F))
    assert result["devices"]["fpga0"]["prefill_utilisation"] == pytest.approx(PF / (PF + (out - 1) * F))


def test_busy_time_adds_up_to_the_work_done():
    k, out = 6, 31
    result = run_simulation(node_config(1, 2), [(10, out)] * k)
    busy = sum(d["busy_s"] for d in result["devices"].values())
    assisted = result["gpu_assist_requests"]
    expected = k * P + assisted * (out - 1) * G + (k - assisted) * (out - 1) * F
    assert busy == pytest.approx(expected)
    assert sum(result["utilisation"].values()) == pytest.approx(busy / result["duration_s"])


def test_power_and_price_definitions():
    # one GPU busy all the time at 100 W, one FPGA idle at 10 W
    result = run_simulation(node_config(1, 1, gpu_decode_slots=1), [(10, 1)] * 3)
    assert result["avg_power_w"] == pytest.approx(100 + 10)
    assert result["energy_efficiency"] == pytest.approx(result["throughput_tokens_per_s"] / 110)
    assert result["cost_efficiency"] == pytest.approx(result["throughput_tokens_per_s"] / 2000)


def test_md1_queue_wait_matches_pollaczek_khinchine():
    # Poisson arrivals, deterministic service D = P (one output token = prefill only)
    rate = 0.6
    result = run_simulation(node_config(1, 0), [(10, 1)] * 20000, request_rate=rate, seed=1)
    rho = rate * P
    wait_s = rate * P * P / (2 * (1 - rho))  # Pollaczek-Khinchine, M/D/1
    assert result["ttft_s"]["mean"] - P == pytest.approx(wait_s, rel=0.05)


def test_closed_loop_of_one_has_no_queueing():
    result = run_simulation(node_config(1, 0), [(10, 5)] * 10, concurrency=1)
    assert result["ttft_s"]["p99"] == pytest.approx(P)
    assert result["duration_s"] == pytest.approx(10 * (P + 4 * G))


def test_kv_that_does_not_fit_the_fpga_goes_to_the_gpu():
    small = fixed("fpga", PF, F, kv_capacity_bytes=5e3)  # 1000 B/token: room for 5 tokens
    result = run_simulation(node_config(1, 1, fpga=small), [(10, 5)])
    assert result["gpu_assist_requests"] == 1
    with pytest.raises(InvalidArgument, match="never ran"):
        run_simulation(node_config(1, 1, fpga=small, gpu_decode_slots=0), [(10, 5)])


def test_every_admission_goes_through_the_schedulers_place(monkeypatch):
    calls = []

    def spy(snapshot, request):
        calls.append(request)
        return placement.place(snapshot, request)

    monkeypatch.setattr(sim_node, "place", spy)
    run_simulation(node_config(2, 3), [(10, 5)] * 7)
    assert len(calls) == 7


def test_bad_arguments_are_invalid_argument():
    config = node_config(1, 1)
    with pytest.raises(InvalidArgument, match="not both"):
        run_simulation(config, [(10, 5)], request_rate=1.0, concurrency=2)
    with pytest.raises(InvalidArgument, match="positive"):
        run_simulation(config, [(10, 5)], request_rate=0.0)
    with pytest.raises(InvalidArgument, match="output token"):
        run_simulation(config, [(10, 0)])
