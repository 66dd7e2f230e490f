"""A scheduler killed with SIGKILL mid-decode leaks nothing: its leases expire and are swept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from glitches import Client, TextChunk
from glitches.cluster import free_port
from tests.conftest import REDIS_URL
from tests.e2e.conftest import KV_TOKEN_ENV, assert_idle
from tests.dies_with_pytest import dies_with_pytest

pytestmark = pytest.mark.e2e
LEASE_TTL_S = 2.0


def test_sigkill_of_the_scheduler_mid_decode_frees_everything(cluster):
    port = free_port()
    proc = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "glitches", "scheduler", "--port", str(port), "--redis-url",
                             REDIS_URL, "--redis-prefix", cluster["prefix"], "--lease-ttl-s", str(LEASE_TTL_S)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **KV_TOKEN_ENV})  # a replica of the cluster: its KV token secret
    try:
        for line in proc.stdout:
            if line.startswith("scheduler ready"):
                break
        with Client(f"127.0.0.1:{port}", timeout_s=120) as client:
            stream = client.stream("Tell me a very long story about a lighthouse.", max_tokens=400, chat=True)
            for item in stream:
                if isinstance(item, TextChunk) and item.token_ids:
                    break
            assert cluster["registry"].occupancy(), "the request should hold slots while it streams"
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            killed = time.monotonic()
            assert_idle(cluster["registry"], timeout_s=LEASE_TTL_S + 1.0)
            assert time.monotonic() - killed <= LEASE_TTL_S + 1.0
            stream.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    # the cluster still serves
    assert cluster["client"].generate("Hi", max_tokens=3).completion_tokens == 3
