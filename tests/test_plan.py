"""`glitches plan`'s search (glitches/sim/plan.py) on small catalogues whose cheapest mix is known in closed form.

Devices (tests/sim_helpers.fixed): GPU "g" $1000, prefill 1 s, decode 0.1 s/token; FPGA "f" $300,
prefill 10 s, decode 0.05 s/token; KV transfer ~0 s. One request alone: on g + f TTFT 1 s, TPOT 0.05 s;
on g alone (GPU assist) TTFT 1 s, TPOT 0.1 s; on f alone TTFT 10 s, TPOT 0.05 s.
"""

from __future__ import annotations

import numpy as np
import pytest

from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.catalogue import CatalogueEntry, load_catalogue
from glitches.sim.plan import Limits, PlanSlo, candidate_mixes, pareto_front, plan
from glitches.sim.plan_workload import Workload, read_trace, sample_lengths, synthetic, write_trace
from tests.sim_helpers import fixed

FAST_LINK_GB_PER_S = 1e9  # KV transfer takes ~0 s


def _catalogue() -> dict[str, CatalogueEntry]:
    return {"g": CatalogueEntry("g", fixed("gpu", 1.0, 0.1, price_usd=1000.0), 8),
            "f": CatalogueEntry("f", fixed("fpga", 10.0, 0.05, price_usd=300.0), 8)}


def _spaced(n: int = 5, gap_s: float = 100.0) -> Workload:
    """n requests of [16, 11] tokens, far enough apart that each runs alone."""
    return Workload(((16, 11),) * n, arrivals_s=tuple(i * gap_s for i in range(n)))


def _best(slo: PlanSlo, workload: Workload, **limits) -> str | None:
    result = plan(_catalogue(), workload, slo, Limits(**limits), link_gb_per_s=FAST_LINK_GB_PER_S)
    return result["best"]["label"] if result["best"] else None


@pytest.mark.parametrize("ttft_s, tpot_s, cheapest", [
    (20.0, 0.08, "1xf"),  # a lax TTFT: one FPGA ($300) does prefill and decode
    (2.0, 0.2, "1xg"),  # a lax TPOT: one GPU ($1000), GPU assist
    (2.0, 0.08, "1xg + 1xf"),  # both tight: GPU prefill, FPGA decode ($1300)
])
def test_cheapest_mix_for_one_request_at_a_time(ttft_s, tpot_s, cheapest):
    assert _best(PlanSlo(ttft_s, tpot_s, 99), _spaced()) == cheapest


def test_two_requests_at_once_need_two_gpus_and_two_fpgas():
    """Both arrive at t = 0: one GPU makes the second wait a prefill (TTFT 2 s > 1.5 s); one FPGA sends the
    second to GPU assist (TPOT 0.1 s > 0.08 s). Cheapest that meets both at p99: 2 g + 2 f ($2600)."""
    both = Workload(((16, 11),) * 2)
    result = plan(_catalogue(), both, PlanSlo(1.5, 0.08, 99), Limits(max_cards=4), link_gb_per_s=FAST_LINK_GB_PER_S)
    best = result["best"]
    assert (best["label"], best["price_usd"]) == ("2xg + 2xf", 2600.0)
    assert best["gpu_assist_share"] == 0.0 and best["ttft_margin"] == pytest.approx(1 - 1.0 / 1.5, abs=1e-6)
    # nothing cheaper met the SLO, and the search stopped at that price
    assert all(not r["meets_slo"] for r in result["evaluated"] if r["price_usd"] < 2600.0)
    assert max(r["price_usd"] for r in result["evaluated"]) == 2600.0


def test_limits_that_exclude_the_optimum_leave_no_answer():
    assert _best(PlanSlo(2.0, 0.08, 99), _spaced(), max_price_usd=1200.0) is None
    assert _best(PlanSlo(2.0, 0.08, 99), _spaced(), max_power_w=150.0) is None  # 100 W a card


def test_explore_all_gives_the_same_answer_and_a_monotone_front():
    slo = PlanSlo(1.5, 0.08, 99)
    both = Workload(((16, 11),) * 2)
    quick = plan(_catalogue(), both, slo, Limits(max_cards=4), link_gb_per_s=FAST_LINK_GB_PER_S)
    full = plan(_catalogue(), both, slo, Limits(max_cards=4), link_gb_per_s=FAST_LINK_GB_PER_S, explore_all=True)
    assert full["best"]["label"] == quick["best"]["label"] and len(full["evaluated"]) == full["mixes_within_limits"]
    front = pareto_front(full["evaluated"])
    assert [r["price_usd"] for r in front] == sorted(r["price_usd"] for r in front)
    assert np.all(np.diff([r["goodput_tokens_per_s"] for r in front]) > 0)


def test_candidate_mixes_respect_cards_and_nodes():
    cat = _catalogue()
    assert len(candidate_mixes(cat, Limits(max_cards=2))) == 5  # 1g 2g 1f 2f 1g+1f
    small_node = {"g": CatalogueEntry("g", cat["g"].profile, 2), "f": cat["f"]}
    labels = [m.label for m in candidate_mixes(small_node, Limits(max_cards=3, max_nodes=1))]
    assert "3xg" not in labels and "2xg" in labels and "2xg + 1xf" not in labels  # 2 GPUs fill a node


def test_shipped_catalogue_states_a_basis_for_every_figure():
    catalogue = load_catalogue("llama-2-7b")
    assert {"a100", "v100s", "u280", "h100", "h200", "l40s", "u55c", "v80"} <= catalogue.keys()
    for entry in catalogue.values():
        assert {"timing", "price_usd", "power_w", "cards_per_node"} <= entry.basis.keys(), entry.name
        assert all(b.split(" ")[0] in ("measured", "vendor-stated", "roofline-derived", "assumption")
                   for b in entry.basis.values()), entry.basis


def test_lengths_and_trace_files(tmp_path):
    rng = np.random.default_rng(0)
    assert sample_lengths("7", 3, rng) == [7, 7, 7]
    assert set(sample_lengths("uniform:2:4", 200, rng)) == {2, 3, 4}
    assert min(sample_lengths("normal:5:10", 200, rng)) >= 1
    with pytest.raises(InvalidArgument):
        sample_lengths("poisson:3", 1, rng)
    workload = synthetic("uniform:10:20", "5", 4, 1.0, None, seed=1)
    write_trace(tmp_path / "t.jsonl", [3.0, 1.0, 2.0, 4.5], workload.shapes)
    back = read_trace(tmp_path / "t.jsonl")
    assert back.shapes == workload.shapes and back.arrivals_s == (2.0, 0.0, 1.0, 3.5)


def test_batching_gpus_change_the_answer():
    """8 requests at once, GPUs only. Batch 1 (one GPU-assist slot, the paper's setting): a GPU serves one
    request at a time, 1 s prefill + 10 x 0.1 s decode; on 1 g the last waits 14 s (TTFT 15 s), on 2 g it
    starts at 6 s (TTFT 7 s <= 8.5 s): 2 g. Batching: one pass carries all 8 rows (TPOT 0.1 s) and their 8
    prefills (8 s, the fallback step time sums them): 1 g meets TTFT <= 8.5 s."""
    only_gpu = {"g": _catalogue()["g"]}
    burst = Workload(((16, 11),) * 8)
    slo = PlanSlo(8.5, 0.15, 99)
    batch1 = plan(only_gpu, burst, slo, Limits(max_cards=8), link_gb_per_s=FAST_LINK_GB_PER_S)
    batching = plan(only_gpu, burst, slo, Limits(max_cards=8), link_gb_per_s=FAST_LINK_GB_PER_S, gpu_batching=True)
    assert batch1["best"]["label"] == "2xg" and batching["best"]["label"] == "1xg"
    assert batching["best"]["gpu_assist_share"] == 1.0
