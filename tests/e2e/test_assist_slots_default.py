"""`glitches up --fpga-workers 0` with default flags serves 8 concurrent requests in one wave (issue #25).

With the old constant of 4 GPU-assist slots, the second four waited for the first four to finish
(their TTFT was a whole generation longer). The slots now default from the GPU's KV budget
(glitches/gpu_worker/assist_slots.py), so all 8 are admitted at once and their first tokens come within one
step of each other: TTFT p99 / p50 <= 1.5 (TTFT as the scheduler measures it, arrival -> first token).
"""

from __future__ import annotations

import threading
import uuid

import pytest

from glitches import Client
from tests.conftest import REDIS_URL
from tests.e2e.conftest import start_up, stop_up

pytestmark = pytest.mark.e2e

CONCURRENT = 8  # the measurement: 8 requests at once on a GPU-only cluster
PROMPTS = [f"Request {i}: name a colour and one thing of that colour." for i in range(CONCURRENT)]


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-q * len(ordered) // 100)) - 1))]


def test_gpu_only_cluster_with_default_flags_starts_8_concurrent_requests_together():
    proc, address = start_up(["--port", "0", "--fpga-workers", "0", "--redis-url", REDIS_URL,
                              "--redis-prefix", f"glitches-e2e-slots-{uuid.uuid4().hex[:8]}"])
    client = Client(address, timeout_s=300)
    pids = [w.pid for w in client.status().workers]
    try:
        gpu = next(w for w in client.status().workers if w.kind == "gpu")
        assert gpu.slots >= CONCURRENT, gpu  # the default came from the KV budget, which has room for all of them
        barrier = threading.Barrier(CONCURRENT)
        results: list = [None] * CONCURRENT

        def one(i: int) -> None:
            barrier.wait()
            results[i] = client.generate(PROMPTS[i], max_tokens=4, temperature=0.0)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENT)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert all(r is not None for r in results), "a request did not finish"
        assert {r.decode_device for r in results} == {"gpu"}  # all GPU assist: no FPGA in this cluster
        ttft = [r.timings.ttft_s for r in results]
        p50, p99 = _percentile(ttft, 50), _percentile(ttft, 99)
        assert p99 / p50 <= 1.5, f"TTFT p50 {p50:.3f} s, p99 {p99:.3f} s: {sorted(ttft)}"
    finally:
        client.close()
        stop_up(proc, pids)
