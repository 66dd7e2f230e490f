"""Faults around the workers: client deadlines, scheduler replicas under load, drain, a Redis outage.

One cluster of its own with a private Redis (so the test can stop and restart it)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import redis

from glitches import Client, GlitchesError, TextChunk
from glitches.cluster import ClusterSpec, LocalCluster, free_port
from glitches.services.cluster.registry import Registry
from tests.e2e.conftest import assert_idle
from tests.dies_with_pytest import dies_with_pytest

pytestmark = pytest.mark.e2e


# 100 requests at once per replica below: places for all of them (the defaults, 24 + 8, would refuse some)
PLACES = ("--queue-wait-s", "600", "--max-active", "64", "--max-queued", "64")


@pytest.fixture(scope="module")
def private():
    spec = ClusterSpec(gpu_workers=1, fpga_workers=2, port=0, threads_per_worker=1,
                       scheduler_args=PLACES)
    with LocalCluster(spec) as cluster, Client(cluster.address, timeout_s=600) as client:
        yield dict(cluster=cluster, client=client, registry=Registry(cluster.redis_url, spec.redis_prefix))


def test_a_client_deadline_stops_the_request_and_frees_its_slots(private):
    with Client(private["cluster"].address, timeout_s=1.5) as hurried:
        with pytest.raises(GlitchesError) as info:
            hurried.generate("Write a long story about a river.", max_tokens=400, chat=True)
    assert info.value.code == "DEADLINE_EXCEEDED"
    assert_idle(private["registry"], timeout_s=5)


@pytest.mark.slow  # 200 requests through two schedulers: ~2 min
def test_two_scheduler_replicas_share_one_redis_without_overfilling_a_card(private):
    port = free_port()
    second = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "glitches", "scheduler", "--port", str(port),
                               "--redis-prefix", "glitches", *PLACES],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, **private["cluster"].daemon_env,  # the cluster's KV token secret
                                   "GLITCHES_REDIS_URL": private["cluster"].redis_url})  # and Redis password
    try:
        for line in second.stdout:
            if line.startswith("scheduler ready"):
                break
        addresses = [private["cluster"].address, f"127.0.0.1:{port}"]
        clients = [Client(a, timeout_s=600) for a in addresses]
        worst, stop = {}, threading.Event()

        def sample():  # the most requests any FPGA held at once, read from Redis during the run
            slots = {w.record.worker_id: w.record.slots for w in private["registry"].workers()
                     if w.record.kind == "fpga"}
            while not stop.is_set():
                for worker_id, active in private["registry"].occupancy().items():
                    if worker_id in slots:
                        worst[worker_id] = max(worst.get(worker_id, 0), active)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with concurrent.futures.ThreadPoolExecutor(200) as pool:
            results = list(pool.map(lambda i: clients[i % 2].generate(f"Say {i}.", max_tokens=2), range(200)))
        stop.set()
        sampler.join()
        assert len(results) == 200 and all(r.completion_tokens >= 1 for r in results)
        assert worst and max(worst.values()) <= 1, worst  # one request per FPGA at a time (slots = 1)
        assert {r.decode_device for r in results} == {"fpga", "gpu"}
        assert_idle(private["registry"], timeout_s=5)
        for c in clients:
            c.close()
    finally:
        second.terminate()
        assert second.wait(timeout=30) == 0


def test_sigterm_drains_a_worker_that_is_decoding(private):
    cluster = private["cluster"]
    stream = private["client"].stream("Count slowly from one to forty in words:", max_tokens=30)
    for item in stream:
        if isinstance(item, TextChunk) and item.token_ids:
            break
    busy = [w for w in private["client"].status().workers if w.active_requests and w.kind == "fpga"]
    assert busy, "the request should be decoding on an FPGA"
    name = busy[0].worker_id
    cluster.processes[name].send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert name not in [w.worker_id for w in private["client"].status().workers]  # deregistered at once
    final = [i for i in stream][-1]
    assert final.completion_tokens == 30 and final.migrations == 0  # finished where it was
    assert cluster.processes[name].wait(timeout=30) == 0
    assert_idle(private["registry"], timeout_s=5)


def test_a_redis_outage_fails_new_requests_fast_and_service_resumes(private):
    cluster = private["cluster"]
    stream = private["client"].stream("List ten animals:", max_tokens=20)
    for item in stream:
        if isinstance(item, TextChunk) and item.token_ids:
            break
    redis_proc = cluster.processes["redis"]
    argv = redis_proc.command
    redis_proc.kill()
    redis_proc.wait()
    final = [i for i in stream][-1]  # the decode in flight finishes
    assert final.completion_tokens == 20
    started = time.monotonic()
    with pytest.raises(GlitchesError) as info:
        private["client"].generate("Hello", max_tokens=2)
    assert info.value.code == "UNAVAILABLE" and "Redis" in info.value.message
    assert time.monotonic() - started < 5
    cluster._spawn("redis", list(argv))  # back, empty, on the same port
    client = redis.Redis.from_url(cluster.redis_url)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    back = time.monotonic()
    while time.monotonic() - back < 5 and sum(w.healthy for w in private["client"].status().workers) < 2:
        time.sleep(0.1)
    assert time.monotonic() - back < 2.5  # re-registered within about one heartbeat
    assert private["client"].generate("Hello", max_tokens=3).completion_tokens == 3
