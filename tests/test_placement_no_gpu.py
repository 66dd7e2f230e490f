"""The extend path needs no GPU: with no prefill worker registered (the GPU died), a card that holds the prompt
still serves it alone; anything else is NoWorkerAvailable, as before."""

import pytest

from glitches.scheduler.placement import (PATH_EXTEND, ClusterSnapshot, DeviceKind, NoWorkerAvailable,
                                          PlacementRequest, WorkerView, place)
from glitches.scheduler.reuse_cost import ReuseCosts

FPGA = DeviceKind.FPGA
COSTS = ReuseCosts(gpu_prefill_tokens_per_s=1000.0, card_forced_step_s=0.01, transfer_bytes_per_s=1e9,
                   queued_request_s=0.1)
KV_PER_TOKEN = 10**6
REQ = PlacementRequest(prompt_tokens=1000, max_new_tokens=100, kv_bytes_needed=1100 * KV_PER_TOKEN, reuse=True)
ROOM = 2000 * KV_PER_TOKEN


def _card(worker_id, held=0, active=0, slots=1, free=ROOM):
    return WorkerView(worker_id, FPGA, slots, active, free, cached_tokens=held)


def test_a_holding_card_extends_with_no_gpu_registered():
    snap = ClusterSnapshot((_card("f0", held=992, active=1, slots=2), _card("f1", held=800), _card("f2")))
    decision = place(snap, REQ, COSTS)
    # f0: 0.1 s queued + 8 forced steps; f1: 200 forced steps: f0, although busier
    assert (decision.path, decision.extend_worker, decision.held_tokens) == (PATH_EXTEND, "f0", 992)
    assert (decision.prefill_worker, decision.decode_candidates, decision.gpu_assist_worker) == ("", (), None)
    assert abs(decision.estimated_ttft_s - (0.1 + 8 * 0.01)) < 1e-9


@pytest.mark.parametrize("cards, request_", [
    ((_card("f0"),), REQ),  # nobody holds the prompt: it needs a prefill
    ((_card("f0", held=992),), PlacementRequest(1000, 100, 1100 * KV_PER_TOKEN, reuse=False)),  # reuse off
    ((_card("f0", held=992, active=1),), REQ),  # the holder has no free slot
    ((_card("f0", held=992, free=10),), REQ),  # nor room for the rest of the KV
])
def test_without_a_gpu_nothing_else_is_placed(cards, request_):
    with pytest.raises(NoWorkerAvailable):
        place(ClusterSnapshot(cards), request_, COSTS)
