"""simulate() and its text report: the fields the CLI promises."""

import pytest

from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.cli import render_text, simulate


def test_simulate_returns_every_promised_field_and_renders():
    result = simulate(1, "v100s", 7, "u280", "llama-2-7b", 1536, 64, 16, None, None, None)
    for key in ("throughput_tokens_per_s", "cost_efficiency", "energy_efficiency", "requests_per_s", "utilisation"):
        assert key in result
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(result[key]) == {"mean", "p50", "p90", "p99"}
    assert set(result["utilisation"]) == {"gpu0"} | {f"fpga{i}" for i in range(7)}
    text = render_text(result)
    assert "1 x v100s + 7 x u280" in text and "TPOT" in text


def test_single_request_on_paper_devices_reproduces_the_measured_latencies():
    # one request, [1536, 512]: TTFT = V100S prefill + the KV transfer's exposed tail (as live: the first token
    # is sent once the KV has landed on the card); 511 FPGA steps average the U280's 21.50 ms
    result = simulate(1, "v100s", 1, "u280", "llama-2-7b", 1536, 512, 1, None, None, None)
    exposed_s = result["exposed_kv_s"]["mean"]
    assert 0 < exposed_s < 0.05
    assert result["ttft_s"]["mean"] == pytest.approx(0.3988 + exposed_s)
    assert result["tpot_s"]["mean"] == pytest.approx(0.0215, rel=1e-9)


def test_poisson_and_closed_loop_loads_run():
    poisson = simulate(2, "a100", 2, "u280", "llama-2-7b", 128, 32, 20, 0.5, None, None, seed=3)
    closed = simulate(2, "a100", 2, "u280", "llama-2-7b", 128, 32, 20, None, 4, None)
    assert poisson["num_requests"] == closed["num_requests"] == 20


def test_device_kind_mismatch_is_rejected():
    with pytest.raises(InvalidArgument, match="not a gpu"):
        simulate(1, "u280", 1, "u280", "llama-2-7b", 128, 32, 1, None, None, None)
    with pytest.raises(InvalidArgument, match="at least one device"):
        simulate(0, "a100", 0, "u280", "llama-2-7b", 128, 32, 1, None, None, None)
