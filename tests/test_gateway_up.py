"""`glitches up --gateway-port`: the launcher starts the gateway as one more child, pointed at the
scheduler, and waits for its /healthz (without starting any real process here)."""

from __future__ import annotations

from click.testing import CliRunner

from glitches.cli import main
from glitches.cluster import ClusterSpec, LocalCluster


def test_up_starts_the_gateway_as_a_child(tmp_path, monkeypatch):
    spawned = {}
    monkeypatch.setattr(LocalCluster, "_spawn", lambda self, name, argv, role=None, env=None: spawned.setdefault(name, argv))
    cluster = LocalCluster(ClusterSpec(gpu_workers=1, fpga_workers=1, port=50999, redis_url="redis://x:1/0",
                                       gateway_port=8123), run_dir=tmp_path)
    cluster.start()
    argv = spawned["gateway"]
    assert argv[-7:] == ["gateway", "--scheduler", "127.0.0.1:50999", "--port", "8123", "--model",
                         "smollm2-135m-instruct"]
    assert cluster.gateway_url == "http://127.0.0.1:8123"
    assert cluster._gateway_answers() is False  # nothing listens: wait_ready keeps waiting


def test_up_without_gateway_port_starts_no_gateway(tmp_path, monkeypatch):
    spawned = {}
    monkeypatch.setattr(LocalCluster, "_spawn", lambda self, name, argv, role=None, env=None: spawned.setdefault(name, argv))
    cluster = LocalCluster(ClusterSpec(redis_url="redis://x:1/0", port=50999), run_dir=tmp_path)
    cluster.start()
    assert "gateway" not in spawned and cluster.gateway_url == "" and cluster._gateway_answers()


def test_cli_lists_the_gateway():
    runner = CliRunner()
    assert "--gateway-port" in runner.invoke(main, ["up", "--help"]).output
    help_text = runner.invoke(main, ["gateway", "--help"]).output
    assert "--scheduler" in help_text and "--api-keys-file" in help_text
