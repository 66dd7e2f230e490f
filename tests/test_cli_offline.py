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


def test_up_flags_become_one_options_object_around_the_cluster_spec():
    from dataclasses import fields

    from glitches.cli_up import UpOptions, up_cmd
    from glitches.cluster import ClusterSpec

    params = up_cmd.make_context("up", ["--gpu-workers", "2", "--fpga-slots", "3", "--kv-transport", "grpc",
                                        "--prompt", "hi", "--tls"]).params
    options = UpOptions.from_flags(params)
    assert (options.cluster.gpu_workers, options.cluster.fpga_slots, options.cluster.kv_transport) == (2, 3, "grpc")
    assert (options.prompt, options.max_tokens, options.tls_on) == ("hi", 48, True)
    own = {f.name for f in fields(UpOptions)} - {"cluster"}
    spec = {f.name for f in fields(ClusterSpec)}
    assert set(params) <= own | spec and not own & spec  # every flag lands in exactly one place


def test_up_refuses_impossible_worker_counts_before_starting_anything():
    for flags, message in ((["--gpu-workers", "0"], "--gpu-workers must be at least 1"),
                           (["--fpga-workers", "-1"], "--fpga-workers must be >= 0")):
        result = CliRunner().invoke(main, ["up", *flags])
        assert result.exit_code == 2 and message in result.output


def test_python_dash_m_glitches_lists_every_command():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "glitches", "--help"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for command in ("scheduler", "gpu-worker", "fpga-worker", "up", "generate", "status", "certs", "fpga-timing",
                    "simulate", "deploy", "bench", "profile", "gateway"):
        assert f"  {command} " in run.stdout


def test_status_table_names_each_workers_roles_and_decode_class():
    from types import SimpleNamespace

    from glitches.cli_client import _roles

    assert _roles(SimpleNamespace(roles=("prefill", "assist"), decode_class=0)) == "prefill,assist"
    assert _roles(SimpleNamespace(roles=("decode",), decode_class=10)) == "decode(class 10)"
    assert _roles(SimpleNamespace(roles=(), decode_class=0)) == "-"
