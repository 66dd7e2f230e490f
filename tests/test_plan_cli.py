"""`glitches plan` from the command line: the shipped catalogue, a trace file, --json and --plot."""

from __future__ import annotations

import json

from click.testing import CliRunner

from glitches.cli import main
from glitches.sim.plan_workload import write_trace


def test_plan_prints_the_cheapest_mix_with_its_figures(tmp_path):
    plot = tmp_path / "front.png"
    out = CliRunner().invoke(main, ["plan", "--devices", "a100,u280", "--max-cards", "3", "--num-requests", "20",
                                    "--request-rate", "0.2", "--slo-ttft", "2", "--slo-tpot", "0.05",
                                    "--plot", str(plot)])
    assert out.exit_code == 0, out.output
    assert "Cheapest mix meeting the SLO:" in out.output and "simulated, not measured" in out.output
    for figure in ("Output tokens/s:", "tokens/s/$:", "tokens/s/W:", "GPU-assist share:", "margin:"):
        assert figure in out.output
    assert plot.stat().st_size > 10_000


def test_plan_reads_a_trace_and_says_when_nothing_fits(tmp_path):
    trace = tmp_path / "trace.jsonl"
    write_trace(trace, [0.0, 0.5, 1.0], [(1536, 64)] * 3)
    out = CliRunner().invoke(main, ["plan", "--devices", "u280", "--max-cards", "2", "--trace", str(trace),
                                    "--slo-ttft", "1", "--slo-tpot", "0.05", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert result["best"] is None and result["inputs"]["workload"] == "trace of 3 requests"  # FPGA prefill: 5 s
    assert result["catalogue"]["u280"]["profile_basis"]["timing"].startswith("measured")
