"""CLI commands that need no cluster."""

import json

from click.testing import CliRunner

from glitches.cli import main


def test_fpga_timing_json_is_labelled_modeled():
    result = CliRunner().invoke(main, ["fpga-timing", "--model", "llama-2-7b", "--context", "1024", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["modeled"] is True and out["ms_per_token"] > 0


def test_simulate_json_has_the_documented_fields():
    result = CliRunner().invoke(main, ["simulate", "--gpus", "1", "--fpgas", "2", "--input", "128", "--output", "16",
                                       "--num-requests", "10", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    for key in ("throughput_tokens_per_s", "cost_efficiency", "energy_efficiency", "utilisation"):
        assert key in out


def test_bad_daemon_settings_are_usage_errors():
    result = CliRunner().invoke(main, ["fpga-worker", "--numerics", "int2"])
    assert result.exit_code == 2 and "--numerics" in result.output


def test_generate_json_schema_flags_are_checked_before_connecting(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text("[1]")
    both = CliRunner().invoke(main, ["generate", "x", "--json-object", "--json-schema", str(schema)])
    assert both.exit_code == 2 and "not both" in both.output
    not_object = CliRunner().invoke(main, ["generate", "x", "--json-schema", str(schema)])
    assert not_object.exit_code == 2 and "JSON object" in not_object.output
