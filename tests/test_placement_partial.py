"""The "transfer-partial" choice of the pure placement policy (issue #27): known answers from round-number costs.

Costs as tests/test_placement_reuse.py: GPU prefill 1,000 tokens/s, a forced card step 0.01 s/token, transfer
1e9 B/s, 0.1 s per active request; KV 1e6 B/token; a 1,000-token prompt. Partial path = the GPU's prefill of
what its cache lacks + the card's wait + (prompt - held) tokens' KV streamed.
"""

from dataclasses import replace

from glitches.scheduler.placement import (PATH_EXTEND, PATH_FRESH, PATH_TRANSFER, PATH_TRANSFER_PARTIAL,
                                          ClusterSnapshot, DeviceKind, PlacementRequest, WorkerView, place)
from glitches.scheduler.reuse_cost import ReuseCosts

GPU, FPGA = DeviceKind.GPU, DeviceKind.FPGA
COSTS = ReuseCosts(gpu_prefill_tokens_per_s=1000.0, card_forced_step_s=0.01, transfer_bytes_per_s=1e9,
                   queued_request_s=0.1)
KV_PER_TOKEN = 10**6
REQ = PlacementRequest(prompt_tokens=1000, max_new_tokens=100, kv_bytes_needed=1100 * KV_PER_TOKEN, partial=True)
ROOM = 2000 * KV_PER_TOKEN


def _snapshot(held, card_active=0, gpu_cached=0, slots=4):
    return ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0, cached_tokens=gpu_cached),
                            WorkerView("f0", FPGA, slots, 0, ROOM),
                            WorkerView("f1", FPGA, slots, card_active, ROOM, cached_tokens=held)))


def test_many_new_tokens_go_partial_few_extend():
    """held 500: extend 5.0 s, transfer 2.0 s, partial 1.0 + 0.5 = 1.5 s. held 900: extend 1.0 s < partial 1.1 s."""
    decision = place(_snapshot(500), REQ, COSTS)
    assert (decision.path, decision.extend_worker, decision.held_tokens) == (PATH_TRANSFER_PARTIAL, "f1", 500)
    assert abs(decision.estimated_ttft_s - 1.5) < 1e-9
    assert decision.prefill_worker == "g0" and decision.decode_candidates == ("f0", "f1")  # the fallback, as before
    assert place(_snapshot(900), REQ, COSTS).path == PATH_EXTEND


def test_the_gpu_cache_and_the_card_load_count():
    """The GPU caches 800: partial 0.2 + 0.5 = 0.7 s. Nothing cached, the holder runs 14 requests: 1.0 + 1.4 + 0.5
    = 2.9 s (extend 6.4 s) > transfer 2.0 s."""
    decision = place(_snapshot(500, gpu_cached=800), REQ, COSTS)
    assert decision.path == PATH_TRANSFER_PARTIAL and abs(decision.estimated_ttft_s - 0.7) < 1e-9
    busy = place(_snapshot(500, card_active=14, slots=20), REQ, COSTS)
    assert busy.path == PATH_TRANSFER and abs(busy.estimated_ttft_s - 2.0) < 1e-9


def test_a_whole_prompt_held_leaves_the_last_token_to_send():
    decision = place(_snapshot(1000), REQ, ReuseCosts(
        gpu_prefill_tokens_per_s=1000.0, card_forced_step_s=10.0, transfer_bytes_per_s=1e9, queued_request_s=0.1))
    assert (decision.path, decision.held_tokens) == (PATH_TRANSFER_PARTIAL, 999)


def test_without_partial_or_with_a_full_holder_the_decision_is_as_before():
    for held in (0, 500, 900, 1000):
        before = place(_snapshot(held), replace(REQ, partial=False), COSTS)
        assert before.path != PATH_TRANSFER_PARTIAL
        if held == 0:
            assert place(_snapshot(held), REQ, COSTS) == before
    full = place(_snapshot(500, card_active=4), REQ, COSTS)  # the holder's 4 slots are taken
    assert full.path == PATH_FRESH and full.decode_candidates == ("f0",)
