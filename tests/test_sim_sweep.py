"""Mix enumeration under a budget, and a tiny end-to-end sweep with its plot."""

import pytest

from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.sweep import Slo, mixes_within, sweep
from glitches.sim.sweep_plot import plot_sweep
from tests.sim_helpers import fixed


def test_mixes_respect_price_power_and_card_limits():
    gpu = fixed("gpu", 1.0, 0.1, price_usd=3, power_w=100)
    fpga = fixed("fpga", 10.0, 0.05, price_usd=1, power_w=10)
    assert set(mixes_within(gpu, fpga, budget_usd=4, budget_w=None, max_cards=3)) == {
        (0, 1), (0, 2), (0, 3), (1, 0), (1, 1),
    }  # fmt: skip
    assert set(mixes_within(gpu, fpga, budget_usd=None, budget_w=110, max_cards=8)) == {
        (0, f) for f in range(1, 9)
    } | {(1, 0), (1, 1)}
    with pytest.raises(InvalidArgument, match="budget"):
        mixes_within(gpu, fpga, None, None, 8)


def test_small_sweep_recommends_a_mix_that_meets_the_slo_and_plots(tmp_path):
    result = sweep("a100", "u280", "llama-2-7b", 128, 16, Slo(ttft_p90_s=1.0, tpot_p90_s=0.05),
                   budget_usd=26000, max_cards=2, num_requests=30)  # fmt: skip
    labels = {m["label"] for m in result["mixes"]}
    assert labels == {"0G+1F", "0G+2F", "1G+0F", "1G+1F"}  # 2 GPUs cost $34000
    best = result["recommended"]
    assert best["meets_slo"] and best["ttft_p90_s"] <= 1.0
    assert best["throughput_tokens_per_s"] == max(m["throughput_tokens_per_s"] for m in result["mixes"])
    png = plot_sweep(result, tmp_path / "sweep.png")
    assert png.stat().st_size > 10_000
