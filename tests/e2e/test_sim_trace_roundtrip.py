"""A trace-file workload round-trips: `glitches bench --trace IN --trace-out OUT` on the live cluster, then
`glitches simulate --trace OUT` runs the same requests (arrival times, prompt and output lengths)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from glitches.cli import main
from glitches.sim.plan_workload import read_trace, write_trace

pytestmark = pytest.mark.e2e

ARRIVALS_S = [0.0, 0.3, 0.6, 1.2]
SHAPES = [(12, 4), (20, 6), (8, 3), (16, 5)]  # (prompt tokens, output tokens)
SEND_SLACK_S = 0.25  # a request goes out at most this late on the shared 2-core machine


def test_trace_round_trips_through_bench_and_simulate(cluster, tmp_path):
    sent, seen = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_trace(sent, ARRIVALS_S, SHAPES)
    bench = CliRunner().invoke(main, ["bench", "--address", cluster["address"], "--trace", str(sent),
                                      "--trace-out", str(seen), "--json"])
    assert bench.exit_code == 0, bench.output
    report = json.loads(bench.stdout.strip().splitlines()[-1])
    assert report["completed"] == 4 and report["inputs"]["load"] == f"trace {sent}"
    back = read_trace(seen)
    assert [s[0] for s in back.shapes] == [s[0] for s in SHAPES]  # prompts of exactly the trace's tokens
    assert all(1 <= got <= want for (_, got), (_, want) in zip(back.shapes, SHAPES))  # greedy may stop at EOS
    assert all(abs(a - b) <= SEND_SLACK_S for a, b in zip(back.arrivals_s, ARRIVALS_S)), back.arrivals_s

    sim = CliRunner().invoke(main, ["simulate", "--gpus", "1", "--fpgas", "2", "--trace", str(seen), "--json"])
    assert sim.exit_code == 0, sim.output
    result = json.loads(sim.output)
    assert result["num_requests"] == 4 and result["inputs"]["trace"] == str(seen)
    assert result["throughput_tokens_per_s"] * result["duration_s"] == pytest.approx(sum(s[1] for s in back.shapes))
    assert result["duration_s"] >= back.arrivals_s[-1]  # the last request arrived at its trace time
