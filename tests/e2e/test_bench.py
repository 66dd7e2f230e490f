"""`glitches bench --json` against the session's live cluster."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from glitches.cli import main

pytestmark = pytest.mark.e2e


def test_bench_json_fields(cluster, tmp_path):
    png = tmp_path / "timeline.png"
    result = CliRunner().invoke(main, ["bench", "--address", cluster["address"], "--num-requests", "4", "--input",
                                       "32", "--output", "8", "--concurrency", "2", "--json", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(report[key]) == {"mean", "p50", "p90", "p99"}
        assert report[key]["p50"] > 0
    assert report["completed"] == 4 and report["failed"] == 0
    assert report["prompt_tokens"] == 4 * 32  # prompts of exactly --input tokens
    assert 4 <= report["output_tokens"] <= 4 * 8
    assert report["throughput_tokens_per_s"] > 0 and report["requests_per_s"] > 0
    assert report["tokens_per_s_per_w"] is None  # the CPU standing in for a GPU has no known power
    assert "unknown" in report["efficiency_note"]
    assert set(report["workers"]) >= {"gpu-0"}
    assert png.stat().st_size > 10_000
