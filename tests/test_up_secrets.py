"""What `glitches up` hands its children: a per-cluster KV token secret in the daemons' environment
(never argv), API key files by path, the gateway's limits and its key towards the scheduler. The
launcher's spawn is recorded instead of run; no process starts here."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from glitches.cli import main
from glitches.cli_up import _up_access
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.auth.kv_token import SECRET_ENV


@pytest.fixture
def spawned(monkeypatch):
    calls = {}
    monkeypatch.setattr(LocalCluster, "_spawn",
                        lambda self, name, argv, role=None, env=None: calls.setdefault(name, (argv, env or {})))
    return calls


def _start(tmp_path, **spec) -> LocalCluster:
    cluster = LocalCluster(ClusterSpec(gpu_workers=1, fpga_workers=2, port=50999, redis_url="redis://x:1/0",
                                       gateway_port=8123, **spec), run_dir=tmp_path)
    cluster.start()
    return cluster


def test_daemons_share_a_fresh_secret_through_the_environment(tmp_path, spawned, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(SECRET_ENV + "_FILE", raising=False)
    _start(tmp_path)
    secrets = {spawned[name][1].get(SECRET_ENV) for name in ("scheduler", "gpu-0", "fpga-0", "fpga-1")}
    assert len(secrets) == 1 and len(secrets.pop()) == 64
    secret = spawned["scheduler"][1][SECRET_ENV]
    assert all(secret not in " ".join(argv) for argv, _ in spawned.values())
    assert SECRET_ENV not in spawned["gateway"][1]  # the gateway receives no KV


def test_two_clusters_get_different_secrets(tmp_path, monkeypatch):
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.delenv(SECRET_ENV + "_FILE", raising=False)
    first, second = (LocalCluster(ClusterSpec(), run_dir=tmp_path) for _ in range(2))
    assert first.daemon_env[SECRET_ENV] != second.daemon_env[SECRET_ENV]


@pytest.mark.parametrize("variable", [SECRET_ENV, SECRET_ENV + "_FILE"])
def test_a_secret_already_given_is_inherited_not_replaced(tmp_path, spawned, monkeypatch, variable):
    monkeypatch.setenv(variable, "given")
    _start(tmp_path)
    assert SECRET_ENV not in spawned["fpga-0"][1]  # the child inherits the variable from this environment


def test_api_keys_and_gateway_limits_reach_the_children(tmp_path, spawned, monkeypatch):
    monkeypatch.delenv("GLITCHES_API_KEY", raising=False)
    keys = tmp_path / "keys"
    keys.write_text("# scheduler keys\nsk-1\nsk-2\n")
    gateway_keys = tmp_path / "gateway-keys"
    gateway_keys.write_text("gk-1\n")
    access = _up_access(str(keys), str(gateway_keys), 30.0, 5.0)
    assert access["api_key"] == "sk-1"
    _start(tmp_path, **access)
    scheduler_argv, _ = spawned["scheduler"]
    assert scheduler_argv[-2:] == ["--api-keys-file", str(keys)]
    gateway_argv, gateway_env = spawned["gateway"]
    assert gateway_argv[-6:] == ["--api-keys-file", str(gateway_keys), "--requests-per-minute-per-client", "30.0",
                                 "--requests-per-minute-per-user", "5.0"]
    assert gateway_env["GLITCHES_API_KEY"] == "sk-1"  # the gateway's key towards the scheduler, not in argv
    assert all("sk-1" not in " ".join(argv) for argv, _ in spawned.values())
    monkeypatch.setenv("GLITCHES_API_KEY", "sk-2")
    assert _up_access(str(keys), "", 0, 0)["api_key"] == "sk-2"


def test_up_access_refuses_bad_input(tmp_path):
    with pytest.raises(click.UsageError, match="cannot read"):
        _up_access(str(tmp_path / "missing"), "", 0, 0)
    with pytest.raises(click.UsageError, match=">= 0"):
        _up_access("", "", -1, 0)
    assert _up_access("", "", 0, 0) == dict(scheduler_args=(), gateway_args=(), api_key="")


def test_cli_lists_the_new_flags():
    runner = CliRunner()
    up_help = runner.invoke(main, ["up", "--help"]).output
    for flag in ("--api-keys-file", "--gateway-api-keys-file", "--gateway-requests-per-minute-per-client",
                 "--gateway-requests-per-minute-per-user"):
        assert flag in up_help
    for command in ("scheduler", "fpga-worker"):
        assert "--kv-token-secret-file" in runner.invoke(main, [command, "--help"]).output
    gateway_help = runner.invoke(main, ["gateway", "--help"]).output
    assert "--requests-per-minute-per-client" in gateway_help and "--requests-per-minute-per-user" in gateway_help


def test_the_bundled_redis_gets_a_random_password_kept_out_of_argv(tmp_path, spawned, monkeypatch):
    from urllib.parse import urlsplit

    monkeypatch.setattr(LocalCluster, "_wait_redis", lambda self: None)
    cluster = LocalCluster(ClusterSpec(gpu_workers=1, fpga_workers=1, port=50999), run_dir=tmp_path)
    cluster.start()
    password = urlsplit(cluster.redis_url).password
    assert password and len(password) == 32
    assert all(password not in " ".join(argv) for argv, _ in spawned.values())
    assert all(spawned[name][1]["GLITCHES_REDIS_URL"] == cluster.redis_url for name in ("scheduler", "gpu-0", "fpga-0"))
    config = tmp_path / "redis.conf"
    assert config.stat().st_mode & 0o777 == 0o600 and f"requirepass {password}" in config.read_text()
    assert password not in cluster.shown_redis_url and ":***@127.0.0.1:" in cluster.shown_redis_url


def test_a_password_protected_redis_refuses_the_registry_without_it(tmp_path):
    import subprocess
    import time

    import redis

    from glitches.cluster import free_port, redis_server_binary
    from glitches.services.runtime.errors import Unavailable
    from glitches.services.cluster.registry import Registry

    config = tmp_path / "redis.conf"
    config.write_text("requirepass s3cret-s3cret\n")
    port = free_port()
    server = subprocess.Popen([redis_server_binary(), str(config), "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        good = Registry(f"redis://:s3cret-s3cret@127.0.0.1:{port}/0", "pw-test")
        deadline = time.monotonic() + 10
        while True:
            try:
                good.ping()
                break
            except Unavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with pytest.raises(redis.exceptions.AuthenticationError):
            Registry(f"redis://127.0.0.1:{port}/0", "pw-test").redis.ping()
        assert good.workers() == []
    finally:
        server.terminate()
        server.wait(timeout=10)
