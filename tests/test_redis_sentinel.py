"""Registry URLs that name Redis Sentinels (glitches/services/cluster/redis_connect.py), and the registry across a failover.

The URL tests contact nothing. The failover tests start real redis-server processes (the bundled binary):
a primary, one replica and three sentinels through glitches.cluster.LocalCluster's private Redis (no
daemons), with the local down-after of 1 s, so each failover takes a few seconds."""

from __future__ import annotations

import signal
import threading
import time

import psutil
import pytest
import redis

from glitches.cluster import SENTINEL_SERVICE, ClusterSpec, LocalCluster
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.cluster.redis_connect import (BACKOFF_CAP_S, DEFAULT_SENTINEL_RETRY_S, SentinelTarget, check_url, connect,
                                    parse_sentinel_url, redact, retry_policy, sentinel_url)
from glitches.services.cluster.registry import Registry, WorkerRecord
from glitches.services.runtime.settings import DaemonSettings
from tests.conftest import REDIS_URL


# --- the URL ---------------------------------------------------------------------------------------
def test_a_sentinel_url_names_its_sentinels_service_db_and_passwords():
    target = parse_sentinel_url("redis+sentinel://:p%40ss@10.0.0.1:26380,[::1]:26381,sentinel-c/cache/3"
                                "?sentinel_password=s%26cret&retry_s=2.5")
    assert target == SentinelTarget(sentinels=(("10.0.0.1", 26380), ("::1", 26381), ("sentinel-c", 26379)),
                                    service="cache", db=3, username=None, password="p@ss",
                                    sentinel_password="s&cret", retry_s=2.5)
    plain = parse_sentinel_url("redis+sentinel://h:1/glitches")
    assert (plain.db, plain.password, plain.sentinel_password, plain.retry_s) == (0, None, None,
                                                                                  DEFAULT_SENTINEL_RETRY_S)
    assert parse_sentinel_url("REDIS+SENTINEL://app:pw@h:1/s/").username == "app"


def test_the_url_up_builds_parses_back_and_prints_without_its_passwords():
    url = sentinel_url([("127.0.0.1", 5000), ("127.0.0.1", 5001)], "glitches", 0, password="a/b@c",
                       sentinel_password="x&y", retry_s=10)
    target = parse_sentinel_url(url)
    assert target.password == "a/b@c" and target.sentinel_password == "x&y" and target.sentinels[1] == (
        "127.0.0.1", 5001)
    shown = redact(url)
    assert "a%2Fb" not in shown and "x%26y" not in shown and shown.count("***") == 2
    assert redact("redis://:secret@h:6379/0") == "redis://:***@h:6379/0"
    assert redact("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.parametrize("url, says", [
    ("redis+sentinel://h:1", "service name is missing"),
    ("redis+sentinel://h:1/", "service name is missing"),
    ("redis+sentinel:///s", "is not host:port"),
    ("redis+sentinel://h:1,,g:2/s", "is not host:port"),
    ("redis+sentinel://h:port/s", "sentinel port 'port' is not a number"),
    ("redis+sentinel://h:0/s", "not a number in 1..65535"),
    ("redis+sentinel://h:70000/s", "not a number in 1..65535"),
    ("redis+sentinel://h:1/s/x", "database 'x' is not a number"),
    ("redis+sentinel://h:1/s/1/2", "the path must be /<service> or /<service>/<db>"),
    ("redis+sentinel://h:1/s?password=x", "unknown option(s) password"),
    ("redis+sentinel://h:1/s?retry_s=0", "retry_s must be in (0, 600]"),
    ("redis+sentinel://h:1/s?retry_s=soon", "is not a number of seconds"),
    ("redis+sentinel://h:1/s?retry_s=1&retry_s=2", "given 2 times"),
    ("redis+sentinel://user@h:1/s", "give the password as"),
    ("rediss+sentinel://h:1/s", "TLS to sentinels is not supported"),
    ("http://h:1/0", "must specify one of the following schemes"),
    ("redis://h:port/0", "Port could not be cast"),
])
def test_a_bad_url_is_refused_saying_what_is_wrong(url, says):
    with pytest.raises(InvalidArgument) as info:
        check_url(url)
    assert says in str(info.value)


def test_a_bad_url_error_never_shows_the_password():
    with pytest.raises(InvalidArgument) as info:
        check_url("redis+sentinel://:hunter2@h:1/s?sentinel_password=hunter3&bogus=1")
    assert "hunter2" not in str(info.value) and "hunter3" not in str(info.value)


def test_every_daemon_refuses_a_bad_redis_url_at_start():
    with pytest.raises(InvalidArgument, match="service name is missing"):
        DaemonSettings(redis_url="redis+sentinel://127.0.0.1:26379")
    DaemonSettings(redis_url="redis+sentinel://127.0.0.1:26379/glitches")  # nothing is contacted


def test_the_retry_policy_covers_its_window_with_its_backoff_alone():
    for window_s in (0.5, 2.0, 10.0):
        policy = retry_policy(window_s)
        mean = sum(min(BACKOFF_CAP_S, 0.05 * 2 ** k) * 3 / 4 for k in range(1, policy.get_retries() + 1))
        assert window_s <= mean < window_s + BACKOFF_CAP_S
    assert connect("redis://127.0.0.1:1/0").retry_s == 0.5


def test_one_dead_redis_fails_a_registry_call_within_about_a_second():
    from glitches.services.runtime.errors import Unavailable

    registry = Registry("redis://127.0.0.1:1/0", "nobody")  # nothing listens on port 1
    started = time.monotonic()
    with pytest.raises(Unavailable, match="Redis is unreachable"):
        registry.workers()
    assert time.monotonic() - started < 1.5


def test_up_refuses_bad_sentinel_flags():
    from click.testing import CliRunner

    from glitches.cli import main

    runner = CliRunner()
    negative = runner.invoke(main, ["up", "--redis-sentinels", "-1"])
    assert negative.exit_code == 2 and "--redis-sentinels must be >= 1" in negative.output
    both = runner.invoke(main, ["up", "--redis-sentinels", "3", "--redis-url", "redis://127.0.0.1:6379/0"])
    assert both.exit_code == 2 and "cannot be combined with --redis-url" in both.output
    with pytest.raises(ValueError, match="cannot be combined"):
        LocalCluster(ClusterSpec(redis_sentinels=1, redis_url="redis://127.0.0.1:6379/0"))


# --- claims are idempotent (a retry after a lost reply) -----------------------------------------------
def _record(worker_id: str, slots: int = 1) -> WorkerRecord:
    return WorkerRecord(worker_id, "fpga", "emu", 1, "emulated card", "127.0.0.1:1", 1, "m", slots, 0, 0, 0)


def test_a_claim_sent_twice_counts_once(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=30)
    for worker_id in ("f0", "f1"):
        registry.register(_record(worker_id))
    assert registry.claim_first_free("r.1", "decode", ["f0", "f1"]) == "f0"
    assert registry.claim_first_free("r.1", "decode", ["f0", "f1"]) == "f0"  # its holder, not a second slot
    assert registry.claim_alive("r.1", "prefill", "f1") and registry.claim_alive("r.1", "prefill", "f1")
    assert registry.occupancy() == {"f0": 1, "f1": 1}
    with pytest.raises(redis.exceptions.ResponseError, match="already held on f1"):
        registry.claim_alive("r.1", "prefill", "f0")  # one claim field on two workers: a caller's bug
    assert registry.release("r.1", "decode") == "f0" and registry.release("r.1", "decode") is None
    assert registry.occupancy() == {"f1": 1}


# --- real failovers -----------------------------------------------------------------------------------
@pytest.fixture
def sentinel_redis(tmp_path):
    """A private primary + replica + 3 sentinels, settled (the sentinels know the replica and each other)."""
    cluster = LocalCluster(ClusterSpec(redis_sentinels=3), run_dir=tmp_path)
    try:
        cluster._start_redis()
        yield cluster
    finally:
        pids = [p.pid for p in cluster.processes.values()]
        cluster.stop(grace_s=10)
        assert [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE] == []


def _wait_primary(registry: Registry, address: str, timeout_s: float = 20.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if registry.redis_primary() == address:
                return time.monotonic() - started
        except Exception:  # noqa: BLE001 -- no sentinel names one during the election
            pass
        time.sleep(0.05)
    raise AssertionError(f"the sentinels never named {address} within {timeout_s} s")


def test_operations_in_flight_at_the_primarys_death_finish_on_the_promoted_replica(sentinel_redis):
    cluster = sentinel_redis
    primary, replica = (f"127.0.0.1:{cluster.redis_nodes[n]}" for n in ("redis", "redis-replica"))
    registry = Registry(cluster.redis_url, "failover", heartbeat_ttl_s=30, lease_ttl_s=30)
    assert registry.redis_primary() == primary
    registry.register(_record("f0", slots=2))
    assert registry.claim_first_free("before.1", "decode", ["f0"]) == "f0"
    cluster._node(cluster.redis_nodes["redis"]).wait(1, 1000)  # replicated: it must survive the failover
    results, errors = {}, []

    def worker(name: str, call):
        try:
            results[name] = call()
        except Exception as error:  # noqa: BLE001 -- reported below
            errors.append((name, error))

    cluster.processes["redis"].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    calls = {"claim": lambda: registry.claim_first_free("during.1", "decode", ["f0"]),
             "register": lambda: registry.register(_record("f1")),
             "renew": lambda: registry.renew("before.1", ("decode",)),
             "workers": lambda: [w.record.worker_id for w in registry.workers()]}
    threads = [threading.Thread(target=worker, args=item) for item in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    took_s = time.monotonic() - killed
    assert errors == [] and results["claim"] == "f0" and set(results["workers"]) >= {"f0"}
    assert registry.redis_primary() == replica
    assert registry.claims() == {"before.1:decode": "f0", "during.1:decode": "f0"}
    assert registry.occupancy() == {"f0": 2}
    assert registry.claim_first_free("after.1", "decode", ["f0"]) is None  # full: no claim was lost or doubled
    print(f"operations blocked by the failover finished {took_s:.2f} s after the SIGKILL")
    assert took_s < DEFAULT_SENTINEL_RETRY_S


@pytest.mark.slow  # a freeze, a failover and a demotion: ~15 s
def test_a_script_on_a_demoted_primary_goes_to_the_new_one(sentinel_redis):
    """A frozen primary loses its role while frozen; once back, the sentinels demote it. Lua writes on a
    connection still open to it fail READONLY inside the script, which redis-py does not take for a
    failover: the registry drops its connections and runs the script on the new primary."""
    cluster = sentinel_redis
    old = cluster.processes["redis"]
    old_node, replica = cluster._node(cluster.redis_nodes["redis"]), f"127.0.0.1:{cluster.redis_nodes['redis-replica']}"
    registry = Registry(cluster.redis_url, "demoted", heartbeat_ttl_s=30)
    registry.register(_record("f0", slots=4))  # the pool now holds a connection to the old primary
    old.send_signal(signal.SIGSTOP)
    try:
        _wait_primary(registry, replica)
    finally:
        old.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + 20
    while old_node.role()[0] != b"slave":  # the sentinels reconfigure it as a replica of the new primary
        assert time.monotonic() < deadline, "the old primary was never demoted"
        time.sleep(0.1)
    assert registry.claim_first_free("late.1", "decode", ["f0"]) == "f0"
    registry.register(_record("f0", slots=4))  # a MULTI/EXEC pipeline too
    new_node = cluster._node(cluster.redis_nodes["redis-replica"])
    assert new_node.hget("demoted:claims", "late.1:decode") == b"f0"
    assert cluster.redis_primary() == replica and SENTINEL_SERVICE == registry.link.sentinel_service
