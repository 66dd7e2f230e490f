"""KV-reuse routing in the pure placement policy: known answers from round-number costs.

Costs: GPU prefill 1,000 tokens/s, a forced card step 0.01 s/token, transfer 1e9 B/s, 0.1 s per active
request; KV 1e6 B/token. A 1,000-token prompt: transfer path = 1.0 s prefill + 1.0 s transfer.
"""

import itertools

from glitches.scheduler.placement import (PATH_EXTEND, PATH_FRESH, PATH_TRANSFER, ClusterSnapshot, DeviceKind,
                                          PlacementRequest, WorkerView, place)
from glitches.scheduler.reuse_cost import DEFAULT_REUSE_COSTS, ReuseCosts

GPU, FPGA = DeviceKind.GPU, DeviceKind.FPGA
COSTS = ReuseCosts(gpu_prefill_tokens_per_s=1000.0, card_forced_step_s=0.01, transfer_bytes_per_s=1e9,
                   queued_request_s=0.1)
KV_PER_TOKEN = 10**6
REQ = PlacementRequest(prompt_tokens=1000, max_new_tokens=100, kv_bytes_needed=1100 * KV_PER_TOKEN)
ROOM = 2000 * KV_PER_TOKEN


def _card(worker_id, held=0, active=0, slots=1, free=ROOM):
    return WorkerView(worker_id, FPGA, slots, active, free, cached_tokens=held)


def test_no_overlap_anywhere_decides_as_before_reuse():
    """Every snapshot of a small grid: with cached_tokens 0 the decision equals the one the policy made before
    (least active GPU; cards by class, active, free, id), path transfer."""
    for g0, g1, f0, f1 in itertools.product(range(3), range(3), range(2), range(2)):
        snap = ClusterSnapshot((WorkerView("g1", GPU, 4, g1, 0), WorkerView("g0", GPU, 4, g0, 0),
                                _card("f1", active=f1), _card("f0", active=f0, free=ROOM - 1)))
        decision = place(snap, REQ, COSTS)
        assert decision.prefill_worker == min((g0, "g0"), (g1, "g1"))[1]
        expected_cards = sorted((a, -free, w) for w, a, free in (("f0", f0, ROOM - 1), ("f1", f1, ROOM)) if a < 1)
        assert decision.decode_candidates == tuple(w for _, _, w in expected_cards)
        assert (decision.path, decision.extend_worker) == (PATH_TRANSFER, None)


def test_a_card_holding_most_of_the_prompt_extends():
    snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0), _card("f0"), _card("f1", held=992)))
    decision = place(snap, REQ, COSTS)
    assert (decision.path, decision.extend_worker, decision.held_tokens) == (PATH_EXTEND, "f1", 992)
    assert abs(decision.estimated_ttft_s - 8 * 0.01) < 1e-9
    assert decision.prefill_worker == "g0" and decision.decode_candidates == ("f0", "f1")  # the fallback, ranked as before


def test_card_overlap_beats_its_load_up_to_a_point():
    """Holding 900 tokens: extend = 0.1 s x active + 1.0 s against transfer 2.0 s; ties go to the transfer."""
    for active, path in ((0, PATH_EXTEND), (9, PATH_EXTEND), (10, PATH_TRANSFER), (11, PATH_TRANSFER)):
        snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0), _card("f0", held=900, active=active, slots=100)))
        assert place(snap, REQ, COSTS).path == path, active


def test_gpu_overlap_beats_gpu_load_up_to_a_point():
    """g0 holds 500 tokens: 0.1 s x active + 0.5 s, against the idle g1's 1.0 s."""
    for active, chosen in ((1, "g0"), (4, "g0"), (5, "g1"), (6, "g1")):
        snap = ClusterSnapshot((WorkerView("g0", GPU, 8, active, 0, cached_tokens=500), WorkerView("g1", GPU, 8, 0, 0),
                                _card("f0")))
        decision = place(snap, REQ, COSTS)
        assert decision.prefill_worker == chosen, active
        assert decision.path == PATH_TRANSFER  # a GPU's cache shortens the prefill; the KV still moves


def test_busy_holder_means_fresh_elsewhere():
    snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0), _card("f0", held=992, active=1), _card("f1")))
    decision = place(snap, REQ, COSTS)
    assert (decision.path, decision.extend_worker, decision.decode_candidates) == (PATH_FRESH, None, ("f1",))


def test_the_whole_prompt_held_still_forces_its_last_token():
    snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0), _card("f0", held=5000)))
    decision = place(snap, REQ, COSTS)
    assert (decision.path, decision.held_tokens) == (PATH_EXTEND, 999)


def test_reuse_off_ignores_what_workers_hold():
    snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 1, 0, cached_tokens=999), WorkerView("g1", GPU, 4, 0, 0),
                            _card("f0", held=992)))
    off = PlacementRequest(1000, 100, 1100 * KV_PER_TOKEN, reuse=False)
    decision = place(snap, off, COSTS)
    assert (decision.prefill_worker, decision.path) == ("g1", PATH_TRANSFER)


def test_paper_devices_extend_only_a_short_follow_up():
    """Default costs (A100, U280, PCIe Gen3; Llama-2-7B fp16 KV 524,288 B/token), a 1,536-token prompt:
    transfer = 0.176 s + 0.067 s; a forced U280 step is 0.0215 s, so 11 new tokens extend and 12 do not."""
    kv = 524_288
    req = PlacementRequest(1536, 512, 2048 * kv)
    for new, path in ((11, PATH_EXTEND), (12, PATH_TRANSFER)):
        snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0), _card("f0", held=1536 - new, free=10**10)))
        assert place(snap, req, DEFAULT_REUSE_COSTS).path == path, new


def test_a_holder_needs_room_for_the_whole_request_because_its_free_bytes_already_count_the_held_prefix():
    """A card's free bytes include its evictable cache, the held prefix among it; adopting the prefix takes it
    out of the cache, so a holder needs room for all of the request's KV, not the KV minus the held part."""
    held = 992
    short = REQ.kv_bytes_needed - 1  # enough only if the held prefix were not already counted as free
    snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0), _card("f1", held=held, free=short)))
    assert place(snap, REQ, COSTS).path == PATH_FRESH
    snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0), _card("f1", held=held, free=REQ.kv_bytes_needed)))
    assert place(snap, REQ, COSTS).path == PATH_EXTEND


def test_gpu_assist_goes_to_the_gpu_whose_prefix_cache_holds_the_prompt_while_that_beats_its_load():
    """GPU-only: g0 holds 900 tokens: 0.1 s x its assist decodes + 0.1 s, against the idle g1's 1.0 s."""
    for busy, chosen in ((0, "g0"), (8, "g0"), (9, "g1"), (10, "g1")):
        snap = ClusterSnapshot((WorkerView("g0", GPU, 16, busy, ROOM, cached_tokens=900, assist_active=busy),
                                WorkerView("g1", GPU, 16, 0, ROOM)))
        assert place(snap, REQ, COSTS).gpu_assist_worker == chosen, busy
    no_reuse = PlacementRequest(prompt_tokens=1000, max_new_tokens=100, kv_bytes_needed=REQ.kv_bytes_needed,
                                reuse=False)
    snap = ClusterSnapshot((WorkerView("g0", GPU, 16, 1, ROOM, cached_tokens=900, assist_active=1),
                            WorkerView("g1", GPU, 16, 0, ROOM)))
    assert place(snap, no_reuse, COSTS).gpu_assist_worker == "g1"  # reuse off: fewest assist decodes, as before
