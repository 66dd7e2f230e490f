"""No cached block outlives its worker's registration (issue #27, Correctness and faults): the worker runtime
(glitches/services/runtime/worker_runtime.py) with a toy device that caches a new KV block name every 20 ms
(tests/runtime_toy_worker.py), so its held-KV publisher always has something to write, against the real Redis.
Drain, SIGTERM (a real process) and a device taken out of service each delete P:held:{id} when the record
leaves the registry, and nothing writes it again while in-flight work finishes; a restarted worker with the
same id starts with none of the old process's hints, also when it keeps no cache itself."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import grpc
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glitches.services.cluster.held_publisher import HeldPublisher
from glitches.services.cluster.registry import Registry
from glitches.services.runtime.channels import insecure_channel
from glitches.services.runtime.worker_runtime import start_worker
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL
from tests.dies_with_pytest import dies_with_pytest
from tests.runtime_toy_worker import ToyDevice, ToySettings


def _held_key(prefix: str, worker_id: str) -> str:
    return f"{prefix}:held:{worker_id}"


def _wait(predicate, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _decode_in_background(address: str, steps: int) -> tuple[threading.Thread, list[int], grpc.Channel]:
    """A toy Decode of `steps` x 0.2 s streaming in a thread: in-flight work that keeps a drain's grace open."""
    channel = insecure_channel(address)
    tokens: list[int] = []
    stream = worker_pb2_grpc.WorkerStub(channel).Decode(worker_pb2.DecodeRequest(
        request_id="r", sampling=common_pb2.SamplingParams(max_new_tokens=steps)), timeout=30)
    reader = threading.Thread(target=lambda: tokens.extend(t.token_id for t in stream))
    reader.start()
    return reader, tokens, channel


def _never_again(r: redis.Redis, key: str, until) -> int:
    """Polls `key` until until() is true; returns how many polls found it (0: it never came back)."""
    found = 0
    while not until():
        found += r.exists(key)
        time.sleep(0.02)
    return found + r.exists(key)


def test_drain_deletes_held_blocks_with_the_record_and_nothing_writes_them_while_in_flight_work_ends(redis_prefix):
    running = start_worker(ToyDevice(ToySettings(redis_prefix=redis_prefix, keeps_cache=True)))
    r = redis.Redis.from_url(REDIS_URL)
    key = _held_key(redis_prefix, running.worker_id)
    try:
        assert _wait(lambda: r.scard(key) > 0)  # published by the runtime's publisher
        reader, tokens, channel = _decode_in_background(running.address, 8)  # 1.6 s of grace used
        time.sleep(0.3)
        drainer = threading.Thread(target=running.drain, args=(10.0,))
        drainer.start()
        assert _wait(lambda: not r.exists(f"{redis_prefix}:worker:{running.worker_id}"), 2.0)
        assert _never_again(r, key, lambda: not drainer.is_alive()) == 0  # the cache kept growing meanwhile
        reader.join(10)
        assert tokens == list(range(8))
        channel.close()
    finally:
        running.drain(0)
        running.close()
        r.close()


def test_a_device_out_of_service_stops_offering_its_cache_at_once(redis_prefix):
    running = start_worker(ToyDevice(ToySettings(redis_prefix=redis_prefix, keeps_cache=True,
                                                 heartbeat_ttl_s=30.0)))
    r = redis.Redis.from_url(REDIS_URL)
    registry = Registry(REDIS_URL, redis_prefix)
    key = _held_key(redis_prefix, running.worker_id)
    channel = insecure_channel(running.address)
    try:
        assert _wait(lambda: r.scard(key) > 0)
        running.device.fail("a kernel run hung")  # what the xrt backend's watchdog calls
        assert not r.exists(key) and not registry.is_registered(running.worker_id)
        # the process lives on (Info, Release, health answer) and keeps caching names: none is published again,
        # where before it wrote them for as long as the process lived, with the TTL of a healthy worker (30 s)
        deadline = time.monotonic() + 1.5  # three publisher intervals
        assert _never_again(r, key, lambda: time.monotonic() > deadline) == 0
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        channel.close()
        running.drain(0)  # after out_of_service: leaving the registry again is a no-op
        running.close()
        registry.close()
        r.close()
    assert not r.exists(key)


def test_sigterm_deletes_held_blocks_before_in_flight_work_ends_and_they_stay_gone(redis_prefix):
    process = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "tests.runtime_toy_worker", redis_prefix,
                                "--keeps-cache"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    r = redis.Redis.from_url(REDIS_URL)
    try:
        for line in process.stdout:
            if " ready " in line:
                break
        worker_id, address = line.split()[1], line.split()[3]
        key = _held_key(redis_prefix, worker_id)
        assert _wait(lambda: r.scard(key) > 0)
        reader, tokens, channel = _decode_in_background(address, 10)  # 2 s: the process drains that long
        time.sleep(0.3)
        process.terminate()  # SIGTERM
        assert _wait(lambda: not r.exists(f"{redis_prefix}:worker:{worker_id}"), 2.0)
        # the old SIGTERM path deregistered and left the publisher running until exit: P:held came back
        assert _never_again(r, key, lambda: process.poll() is not None) == 0
        reader.join(10)
        channel.close()
        assert process.returncode == 0 and tokens == list(range(10))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        r.close()


def test_a_restarted_worker_with_the_same_id_inherits_no_held_blocks(redis_prefix):
    r = redis.Redis.from_url(REDIS_URL)
    key = _held_key(redis_prefix, "toy-r")
    stale = [b"\x01" * 8, b"\x02" * 8]
    for keeps_cache in (True, False):  # the restart may keep no cache at all (--no-prefix-cache)
        r.sadd(key, *(h.hex() for h in stale))  # what the killed process published; its TTL not yet run out
        r.expire(key, 60)
        running = start_worker(ToyDevice(ToySettings(redis_prefix=redis_prefix, worker_id="toy-r",
                                                     keeps_cache=keeps_cache)))
        try:
            members = r.smembers(key)
            assert not members & {h.hex().encode() for h in stale}, keeps_cache
        finally:
            running.drain(0)
            running.close()
    r.close()


def test_stop_is_idempotent_and_a_stopped_publisher_writes_nothing(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=30)
    changes = [([b"\x07" * 8], [])]
    publisher = HeldPublisher(registry, lambda: "w", lambda: changes.pop() if changes else ([], []), interval_s=60)
    publisher.start()
    assert publisher.publish_once() and registry.redis.scard(_held_key(redis_prefix, "w")) == 1
    publisher.stop()
    publisher.stop()
    changes.append(([b"\x08" * 8], []))
    assert publisher.publish_once()  # nothing to do once stopped
    assert not registry.redis.exists(_held_key(redis_prefix, "w")) and changes  # not even drained
    registry.close()
