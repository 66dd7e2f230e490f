"""Frozen workers (SIGSTOP) on a cluster of its own: overload is answered, never a timeout, and a frozen
decode moves on.

- With the GPU worker frozen and 36 requests in flight, new Generate calls get RESOURCE_EXHAUSTED with a
  retry hint at once while grpc.health.v1 Check and Status answer in under a second (admission engages
  before the gRPC thread pool fills: the pool is sized from the admission bounds plus control headroom).
- An FPGA worker frozen mid-decode is treated as dead after --decode-stall-s without a token: the request
  migrates and its greedy tokens equal transformers' own.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glitches import Client, Completion, GlitchesError, ResourceExhaustedError, TextChunk
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.runtime.channels import insecure_channel
from glitches.services.cluster.registry import Registry
from tests.conftest import REDIS_URL
from tests.e2e.conftest import assert_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # SIGSTOP waits and a cluster of its own: minutes
MAX_ACTIVE, MAX_QUEUED = 24, 8  # the scheduler's defaults (not given: the test runs what users get)
DECODE_STALL_S = 2.0
MAX_TOKENS = 64  # a decode of seconds on the emulator: time to find its worker and freeze it


@pytest.fixture(scope="module")
def frozen_cluster():
    prefix = f"glitches-freeze-{uuid.uuid4().hex[:8]}"
    spec = ClusterSpec(gpu_workers=1, fpga_workers=2, port=0, redis_url=REDIS_URL, redis_prefix=prefix,
                       threads_per_worker=1,
                       scheduler_args=("--queue-wait-s", "5", "--decode-stall-s", str(DECODE_STALL_S)))
    with LocalCluster(spec) as cluster, Client(cluster.address, timeout_s=300) as client:
        yield dict(cluster=cluster, client=client, registry=Registry(REDIS_URL, prefix))


def _timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_overload_with_the_gpu_frozen_is_resource_exhausted_while_health_and_status_answer(frozen_cluster):
    client, address = frozen_cluster["client"], frozen_cluster["cluster"].address
    gpu = next(w for w in client.status().workers if w.kind == "gpu")
    outcomes: list[str] = []

    def ask(i: int) -> None:
        try:
            with Client(address, timeout_s=120, retry=None) as c:
                c.generate(f"Say {i}.", max_tokens=3)
            outcomes.append("done")
        except ResourceExhaustedError as error:
            outcomes.append("exhausted" if error.retry_after_s else "exhausted-without-hint")
        except GlitchesError as error:
            outcomes.append(error.code)

    os.kill(gpu.pid, signal.SIGSTOP)
    threads = [threading.Thread(target=ask, args=(i,)) for i in range(36)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while client.status().scheduler_active_requests < MAX_ACTIVE and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.status().scheduler_active_requests == MAX_ACTIVE
        time.sleep(0.5)
        assert outcomes.count("exhausted") == 36 - MAX_ACTIVE - MAX_QUEUED, outcomes  # refused at once
        with Client(address, timeout_s=10, retry=None) as c:
            for _ in range(3):
                with pytest.raises(ResourceExhaustedError) as refused:
                    _timed(lambda: c.generate("One more?", max_tokens=3))
                assert refused.value.retry_after_s and refused.value.retry_after_s >= 1
            _, took = _timed(c.status)
            assert took < 1.0
        health = health_pb2_grpc.HealthStub(insecure_channel(address))
        reply, took = _timed(lambda: health.Check(health_pb2.HealthCheckRequest(), timeout=5))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING and took < 1.0
    finally:
        os.kill(gpu.pid, signal.SIGCONT)
        for t in threads:
            t.join(timeout=180)
    # the queued ones gave up with RESOURCE_EXHAUSTED or ran; none ran into a deadline
    assert set(outcomes) <= {"done", "exhausted"} and outcomes.count("done") >= MAX_ACTIVE, outcomes
    assert_idle(frozen_cluster["registry"], timeout_s=10)


def _busy_fpga(client: Client, timeout_s: float = 30.0):
    """The FPGA worker that says (its own Info) it holds a request now."""
    from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

    fpgas = [w for w in client.status().workers if w.kind == "fpga"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in fpgas:
            info = worker_pb2_grpc.WorkerStub(insecure_channel(w.address)).Info(worker_pb2.InfoRequest(), timeout=5)
            if info.active_requests:
                return w
        time.sleep(0.01)
    raise AssertionError("no busy FPGA worker")


def test_an_fpga_frozen_mid_decode_is_migrated_with_identical_tokens(frozen_cluster, reference):
    client = frozen_cluster["client"]
    # the GPU worker heartbeats again after the test above: wait until it counts as healthy
    deadline = time.monotonic() + 30
    while not all(w.healthy for w in client.status().workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    prompt = "Write a long list of fruits, one per line:"
    stream = client.stream(prompt, max_tokens=MAX_TOKENS)
    seen = 0
    for item in stream:
        seen += len(item.token_ids) if isinstance(item, TextChunk) else 0
        if seen >= 4:
            break  # the card has decoded a few tokens (the first comes from prefill)
    victim = _busy_fpga(client)
    os.kill(victim.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    thaw = threading.Timer(45.0, os.kill, (victim.pid, signal.SIGCONT))  # without a watchdog: wake it, then fail
    thaw.start()
    try:
        final = next(p for p in stream if isinstance(p, Completion))
        moved_after = time.monotonic() - frozen_at
    finally:
        thaw.cancel()
        os.kill(victim.pid, signal.SIGCONT)
    assert final.migrations == 1 and final.decode_worker != victim.worker_id
    assert list(final.token_ids) == reference["generate"](list(final.prompt_token_ids), MAX_TOKENS)
    assert moved_after < 60  # not the 120 s x max_tokens deadline
    assert_idle(frozen_cluster["registry"], timeout_s=10)
