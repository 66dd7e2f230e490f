from dataclasses import replace

import pytest

from glitches.scheduler.placement import (ClusterSnapshot, DeviceKind, NoWorkerAvailable, PlacementRequest, WorkerView,
                                 place)

GPU, FPGA = DeviceKind.GPU, DeviceKind.FPGA
REQ = PlacementRequest(prompt_tokens=100, max_new_tokens=20, kv_bytes_needed=1000)


def test_no_gpu_means_no_placement():
    with pytest.raises(NoWorkerAvailable):
        place(ClusterSnapshot((WorkerView("f0", FPGA, 1, 0, 10**9),)), REQ)


def test_least_loaded_gpu_and_free_fpgas_ranked():
    snap = ClusterSnapshot((
        WorkerView("g0", GPU, 4, 2, 0), WorkerView("g1", GPU, 4, 1, 0),
        WorkerView("f0", FPGA, 1, 1, 10**9),  # busy
        WorkerView("f1", FPGA, 2, 1, 10**9), WorkerView("f2", FPGA, 1, 0, 10**6),
        WorkerView("f3", FPGA, 1, 0, 500),  # KV does not fit
    ))
    decision = place(snap, REQ)
    assert decision.prefill_worker == "g1"
    assert decision.fpga_candidates == ("f2", "f1")


def test_all_fpgas_busy_leaves_gpu_assist():
    snap = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 0), WorkerView("f0", FPGA, 1, 1, 10**9)))
    assert place(snap, REQ).fpga_candidates == ()


def test_gpu_assist_goes_to_a_gpu_with_a_free_slot_and_room_for_the_kv():
    req = PlacementRequest(prompt_tokens=100, max_new_tokens=20, kv_bytes_needed=1000, gpu_kv_bytes_needed=5000)
    snap = ClusterSnapshot((
        WorkerView("g0", GPU, 2, 0, 10**9, assist_active=2),  # every GPU-assist slot taken
        WorkerView("g1", GPU, 4, 3, 4000, assist_active=1),  # KV does not fit
        WorkerView("g2", GPU, 4, 5, 10**6, assist_active=1),
        WorkerView("f0", FPGA, 1, 1, 10**9),
    ))
    decision = place(snap, req)
    assert decision.fpga_candidates == () and decision.gpu_assist_worker == "g2"


def test_nothing_free_leaves_the_request_waiting():
    req = PlacementRequest(prompt_tokens=100, max_new_tokens=20, kv_bytes_needed=1000, gpu_kv_bytes_needed=5000)
    snap = ClusterSnapshot((WorkerView("g0", GPU, 1, 1, 10**9, assist_active=1), WorkerView("f0", FPGA, 1, 1, 10**9)))
    decision = place(snap, req)
    assert decision.fpga_candidates == () and decision.gpu_assist_worker is None


def test_fpga_first_then_decode_role_gpus_then_gpu_assist():
    """The paper's order (issue #12 item 4): FPGAs, then GPUs started with --roles decode, then GPU assist."""
    from glitches.services.cluster.worker_caps import DECODE_CLASS_GPU, ROLE_DECODE

    decode_gpu = WorkerView("gd0", GPU, 4, 0, 10**9, roles=frozenset({ROLE_DECODE}), decode_class=DECODE_CLASS_GPU)
    free = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 10**9), decode_gpu, WorkerView("f0", FPGA, 1, 0, 10**9)))
    decision = place(free, REQ)
    assert decision.prefill_worker == "g0"  # a decode-only GPU never prefills
    assert decision.decode_candidates == ("f0", "gd0") and decision.gpu_assist_worker == "g0"
    busy_fpga = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 10**9), decode_gpu, WorkerView("f0", FPGA, 1, 1, 10**9)))
    assert place(busy_fpga, REQ).decode_candidates == ("gd0",)
    full = replace(decode_gpu, active=4)
    both_busy = ClusterSnapshot((WorkerView("g0", GPU, 4, 0, 10**9), full, WorkerView("f0", FPGA, 1, 1, 10**9)))
    decision = place(both_busy, REQ)
    assert decision.decode_candidates == () and decision.gpu_assist_worker == "g0"
