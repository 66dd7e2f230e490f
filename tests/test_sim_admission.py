"""The scheduler's admission control in the simulator (glitches/sim/admission.py): known answers."""

from dataclasses import replace

import pytest

from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.admission import AdmissionLimits
from glitches.sim.metrics import summarise
from glitches.sim.run import simulate_node
from tests.sim_helpers import fixed, node_config


def _gpu_only(limits: AdmissionLimits):
    # one GPU, one request at a time: prefill 1 s, then 2 decode steps of 0.1 s (3 tokens: done 1.2 s after it starts)
    return replace(node_config(1, 0, gpu=fixed("gpu", 1.0, 0.1), gpu_decode_slots=1), admission=limits)


def test_no_limits_serves_everything():
    node = simulate_node(_gpu_only(AdmissionLimits()), [(8, 3)] * 4, arrivals_s=[0.0] * 4)
    assert not any(r.rejected for r in node.records)
    assert summarise(node)["rejected_requests"] == 0


def test_past_running_and_queued_places_requests_are_refused():
    # 1 place + 1 queued: r0 runs, r1 waits for r0's place, r2 and r3 find the queue full
    node = simulate_node(_gpu_only(AdmissionLimits(max_active=1, max_queued=1)), [(8, 3)] * 4, arrivals_s=[0.0] * 4)
    assert [r.rejected for r in node.records] == [False, False, True, True]
    assert [r.first_token_s for r in node.records[:2]] == pytest.approx([1.0, 2.2])  # r1 admitted when r0 ends
    summary = summarise(node)
    assert summary["num_requests"] == 2 and summary["rejected_requests"] == 2
    assert summary["ttft_s"]["p50"] == pytest.approx(1.6)  # over the served requests only


def test_a_place_that_frees_later_serves_a_later_arrival():
    # r2 arrives after r0 ended: it gets a place although the queue was full when r1 arrived
    node = simulate_node(_gpu_only(AdmissionLimits(max_active=1, max_queued=0)), [(8, 3)] * 3,
                         arrivals_s=[0.0, 0.5, 1.5])
    assert [r.rejected for r in node.records] == [False, True, False]
    assert node.records[2].first_token_s == pytest.approx(2.5)


def test_a_queued_request_gives_up_after_queue_wait():
    node = simulate_node(_gpu_only(AdmissionLimits(max_active=1, max_queued=4, queue_wait_s=0.5)), [(8, 3)] * 2,
                         arrivals_s=[0.0, 0.0])
    assert [r.rejected for r in node.records] == [False, True]


def test_negative_limits_are_rejected():
    with pytest.raises(InvalidArgument):
        AdmissionLimits(max_active=-1)


def test_glitches_simulate_applies_the_schedulers_admission():
    import json

    from click.testing import CliRunner

    from glitches.cli_tools import simulate_cmd

    args = ["--gpus", "1", "--fpgas", "0", "--gpu-slots", "1", "--input", "128", "--output", "32",
            "--num-requests", "40", "--max-active", "2", "--max-queued", "1"]
    out = CliRunner().invoke(simulate_cmd, args + ["--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["inputs"]["max_active"] == 2 and result["rejected_requests"] == 37  # all at once: 2 run, 1 waits
    text = CliRunner().invoke(simulate_cmd, args)
    assert "2 running, 1 queued; 37 refused" in text.output
    assert CliRunner().invoke(simulate_cmd, args[:-4] + ["--json"]).exit_code == 0  # no admission: all served
    assert CliRunner().invoke(simulate_cmd, args[:-3] + ["-1"]).exit_code == 2
