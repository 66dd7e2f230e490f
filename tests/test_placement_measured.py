"""Reuse routing with each worker's measured speeds (issue #27 item 3): known answers from round numbers.

Cluster figures (ReuseCosts, as a scheduler's --reuse-* flags would set them for a slow GPU): GPU prefill
100 tokens/s, a forced card step 0.02 s, transfer 1e9 B/s, 0.1 s per active request; KV 1e6 B/token.
A 1,000-token prompt a card holds 990 tokens of: extend = 10 x step; transfer = 1,000 / GPU rate + 1.0 s.
"""

from dataclasses import replace

from glitches.scheduler.placement import (PATH_EXTEND, PATH_TRANSFER, PATH_TRANSFER_PARTIAL, ClusterSnapshot,
                                          DeviceKind, PlacementRequest, WorkerView, place)
from glitches.scheduler.reuse_cost import A100_PREFILL_TOKENS_PER_S, U280_DECODE_STEP_S, ReuseCosts
from glitches.scheduler.settings import SchedulerSettings

GPU, FPGA = DeviceKind.GPU, DeviceKind.FPGA
COSTS = ReuseCosts(gpu_prefill_tokens_per_s=100.0, card_forced_step_s=0.02, transfer_bytes_per_s=1e9,
                   queued_request_s=0.1)
KV_PER_TOKEN = 10**6
REQ = PlacementRequest(prompt_tokens=1000, max_new_tokens=100, kv_bytes_needed=1100 * KV_PER_TOKEN)
ROOM = 2000 * KV_PER_TOKEN


def _snapshot(gpu_rate=0.0, card_step=0.0, gpu_held=0):
    return ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0, cached_tokens=gpu_held, prefill_tokens_per_s=gpu_rate),
                            WorkerView("f0", FPGA, 1, 0, ROOM, cached_tokens=990, decode_step_s=card_step)))


def test_fresh_workers_use_the_cluster_figures():
    """Nothing measured (0): extend 10 x 0.02 = 0.2 s against transfer 10 s + 1 s, as with the constants alone."""
    decision = place(_snapshot(), REQ, COSTS)
    assert (decision.path, decision.extend_worker) == (PATH_EXTEND, "f0")
    assert abs(decision.estimated_ttft_s - 0.2) < 1e-9


def test_a_slow_card_loses_extend_to_a_fast_gpu_the_constants_would_have_lost_to():
    """The card measured 0.5 s a step: extend 10 x 0.5 = 5.0 s; the GPU measured 1,000 tokens/s: transfer
    1.0 s + 1.0 s = 2.0 s wins. With the constants (previous test) extend won at 0.2 s against 11 s."""
    decision = place(_snapshot(gpu_rate=1000.0, card_step=0.5), REQ, COSTS)
    assert (decision.path, decision.prefill_worker, decision.decode_candidates) == (PATH_TRANSFER, "g0", ("f0",))
    assert abs(decision.estimated_ttft_s - 2.0) < 1e-9


def test_each_side_measured_alone_mixes_with_the_other_sides_constant():
    # the card alone measured slow: 5.0 s extend against the constant GPU's 11.0 s: still extend
    decision = place(_snapshot(card_step=0.5), REQ, COSTS)
    assert decision.path == PATH_EXTEND and abs(decision.estimated_ttft_s - 5.0) < 1e-9
    # the GPU alone measured fast: 2.0 s transfer against the constant card's 0.2 s: still extend
    assert place(_snapshot(gpu_rate=1000.0), REQ, COSTS).path == PATH_EXTEND
    # a GPU measured 10,000 tokens/s and a card 0.2 s a step: 1.1 s transfer beats 2.0 s extend
    decision = place(_snapshot(gpu_rate=10000.0, card_step=0.2), REQ, COSTS)
    assert decision.path == PATH_TRANSFER and abs(decision.estimated_ttft_s - 1.1) < 1e-9


def test_the_partial_path_uses_the_gpus_measured_rate():
    """GPU holds 900: it prefills 100 tokens. Partial = 100 / rate + 10 tokens' KV (0.01 s); extend 10 x 0.02 s."""
    partial = PlacementRequest(1000, 100, 1100 * KV_PER_TOKEN, partial=True)
    assert place(_snapshot(gpu_held=900), partial, COSTS).path == PATH_EXTEND  # 1.0 + 0.01 against 0.2
    decision = place(_snapshot(gpu_rate=10000.0, gpu_held=900), partial, COSTS)  # 0.01 + 0.01 against 0.2
    assert decision.path == PATH_TRANSFER_PARTIAL and abs(decision.estimated_ttft_s - 0.02) < 1e-9


def test_the_fastest_holding_card_extends_and_the_prefill_gpu_is_ranked_as_before():
    """Two cards hold the same prefix: the one measured faster extends, though the slower sorts first by id.
    Two idle GPUs measured apart: the prefill GPU is still the least loaded, then by id (not by speed)."""
    snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0, prefill_tokens_per_s=50.0),
                            WorkerView("g1", GPU, 4, 0, 0, prefill_tokens_per_s=5000.0),
                            WorkerView("f0", FPGA, 1, 0, ROOM, cached_tokens=990, decode_step_s=0.05),
                            WorkerView("f1", FPGA, 1, 0, ROOM, cached_tokens=990, decode_step_s=0.01)))
    decision = place(snap, REQ, COSTS)
    assert (decision.path, decision.extend_worker, decision.prefill_worker) == (PATH_EXTEND, "f1", "g0")
    assert abs(decision.estimated_ttft_s - 0.1) < 1e-9


def test_with_measured_keeps_the_cluster_figure_for_what_was_not_measured():
    assert COSTS.with_measured() is COSTS
    own = COSTS.with_measured(prefill_tokens_per_s=250.0)
    assert (own.gpu_prefill_tokens_per_s, own.card_forced_step_s, own.transfer_bytes_per_s) == (250.0, 0.02, 1e9)
    own = COSTS.with_measured(forced_step_s=0.3)
    assert (own.gpu_prefill_tokens_per_s, own.card_forced_step_s, own.queued_request_s) == (100.0, 0.3, 0.1)


def test_a_pinned_figure_beats_the_measured_one():
    """The operator's --reuse-* figure (pinned) holds for every worker: the slow card's 0.5 s is ignored when the step
    is pinned at 0.02 s (extend, 0.2 s); the fast GPU's 1,000 tokens/s when the prefill is pinned at 100."""
    decision = place(_snapshot(gpu_rate=1000.0, card_step=0.5), REQ, replace(COSTS, step_pinned=True))
    assert decision.path == PATH_EXTEND and abs(decision.estimated_ttft_s - 0.2) < 1e-9
    decision = place(_snapshot(gpu_rate=1000.0, card_step=0.5), REQ, replace(COSTS, prefill_pinned=True))
    assert decision.path == PATH_EXTEND and abs(decision.estimated_ttft_s - 5.0) < 1e-9  # 5.0 s against 11.0 s


def test_scheduler_settings_pin_only_the_figures_given():
    costs = SchedulerSettings().reuse_costs
    assert (costs.prefill_pinned, costs.step_pinned) == (False, False)
    assert (costs.gpu_prefill_tokens_per_s, costs.card_forced_step_s) == (A100_PREFILL_TOKENS_PER_S, U280_DECODE_STEP_S)
    costs = SchedulerSettings(reuse_card_forced_step_s=0.3).reuse_costs
    assert (costs.prefill_pinned, costs.step_pinned, costs.card_forced_step_s) == (False, True, 0.3)
