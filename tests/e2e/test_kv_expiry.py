"""A scheduler SIGKILLed during a long prefill leaves no KV on any device: each worker frees what no
live scheduler renews within its --kv-hold-ttl-s (the session cluster's: KV_HOLD_TTL_S), FPGA cards
and GPU assist alike. Before workers owned their memory, the KV of a request whose scheduler died
after placing it stayed on the card (and in the GPU worker's assist caches) for good."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from glitches import Client, GlitchesError
from glitches.cluster import free_port
from glitches.services.runtime.channels import insecure_channel
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL
from tests.e2e.conftest import KV_TOKEN_ENV, assert_idle
from tests.dies_with_pytest import dies_with_pytest

pytestmark = pytest.mark.e2e
KV_HOLD_TTL_S = 5.0  # the session cluster's (tests/e2e/conftest.py CLUSTER_ENV)
LONG_PROMPT = "hello " * 2000  # ~2,000 tokens: a prefill of seconds on a CPU


def _prefills_done(http_address: str) -> int:
    text = urllib.request.urlopen(f"http://{http_address}/metrics", timeout=5).read().decode()
    match = re.search(r"^glitches_prefill_seconds_count (\S+)$", text, re.M)
    return int(float(match.group(1))) if match else 0


def _holdings(workers) -> dict[str, tuple[int, int]]:
    """worker id -> (requests it holds KV for, KV bytes held) from its own Info."""
    out = {}
    for w in workers:
        info = worker_pb2_grpc.WorkerStub(insecure_channel(w.address)).Info(worker_pb2.InfoRequest(), timeout=5)
        out[w.worker_id] = (info.active_requests, info.kv_capacity_bytes - info.kv_free_bytes)
    return out


def _start_replica(prefix: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "glitches", "scheduler", "--port", str(port), "--redis-url",
                             REDIS_URL, "--redis-prefix", prefix, "--lease-ttl-s", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **KV_TOKEN_ENV})
    for line in proc.stdout:
        if line.startswith("scheduler ready"):
            return proc, f"127.0.0.1:{port}"
    raise RuntimeError("the replica scheduler never got ready")


def test_sigkill_of_the_scheduler_during_a_long_prefill_frees_every_workers_kv(cluster):
    workers = list(cluster["client"].status().workers)
    gpu_http = cluster["http"]["gpu-0"]
    prefills_before = _prefills_done(gpu_http)
    proc, address = _start_replica(cluster["prefix"])
    errors = []

    def ask(prompt: str, max_tokens: int) -> None:
        try:
            with Client(address, timeout_s=300, retry=None) as client:
                client.generate(prompt, max_tokens=max_tokens)
        except GlitchesError as error:  # the scheduler dies under it: UNAVAILABLE
            errors.append(error)

    try:
        # A: a long prefill streaming to an FPGA; B: a short one to the other FPGA; C: GPU assist (no FPGA free).
        threads = [threading.Thread(target=ask, args=(LONG_PROMPT, 8))]
        threads[0].start()
        time.sleep(0.5)
        threads += [threading.Thread(target=ask, args=(p, 64)) for p in ("Count to ten.", "Name a fish.")]
        for t in threads[1:]:
            t.start()
        deadline = time.monotonic() + 60
        # each FPGA request: a prefill claim and a decode claim; the GPU-assist one: its decode claim on the GPU
        while len(cluster["registry"].claims()) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        claims = cluster["registry"].claims()
        assert len(claims) == 5 and sum(k.endswith(":decode") for k in claims) == 3, claims
        assert _prefills_done(gpu_http) == prefills_before, "the long prefill should still be running"
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        # The GPU worker's step loop sees each prefill's RPC cancelled when the scheduler dies: a queued one is
        # dropped, and the RPC thread of a running one stops waiting and aborts its KV stream, so the card frees
        # its reservation. A prefill that still completes leaves KV (card or GPU assist) that nobody renews.
        # Either way, within the hold TTL nothing may be held anywhere.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            gpu_info = [w for w in cluster["client"].status().workers if w.worker_id == "gpu-0"]
            if gpu_info and gpu_info[0].worker_active_requests == 0:
                break
            time.sleep(0.2)
        prefills_ended = time.monotonic()
        held = _holdings(workers)
        print(f"after the kill: {_prefills_done(gpu_http) - prefills_before} prefills completed, held {held}")
        while any(map(any, held.values())) and time.monotonic() < prefills_ended + KV_HOLD_TTL_S + 6.0:
            time.sleep(0.2)
            held = _holdings(workers)
        freed_after = time.monotonic() - prefills_ended
        assert not any(map(any, held.values())), f"KV still held {freed_after:.1f} s after the prefills: {held}"
        print(f"every worker held 0 KV {freed_after:.1f} s after the last prefill (ttl {KV_HOLD_TTL_S} s)")
    finally:
        if proc.poll() is None:
            proc.kill()
        for t in threads:
            t.join(timeout=60)
    assert len(errors) == 3
    assert_idle(cluster["registry"], timeout_s=5)  # the Redis leases went too
    status = {w.worker_id: w for w in cluster["client"].status().workers}
    if hasattr(next(iter(status.values())), "kv_held_bytes"):  # what the workers publish (absent before)
        time.sleep(1.5)  # one heartbeat
        status = {w.worker_id: w for w in cluster["client"].status().workers}
        assert all(w.kv_held_bytes == 0 and w.worker_active_requests == 0 for w in status.values()), status
    assert cluster["client"].generate("Hi", max_tokens=3).completion_tokens == 3  # and the cluster still serves
