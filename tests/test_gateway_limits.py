"""`glitches gateway` as a real process (uvicorn, the default model's tokenizer), no cluster behind it:
slow and huge requests cannot hold it up (header timeout, 413, chat parsing off the event loop)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from glitches.cluster import free_port
from tests.dies_with_pytest import dies_with_pytest


@pytest.fixture(scope="module")
def gateway():
    port = free_port()
    proc = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "glitches", "gateway", "--scheduler", "127.0.0.1:1",
                             "--port", str(port), "--header-timeout-s", "1.5", "--max-body-bytes", str(8 * 1024**2),
                             "--timeout-s", "5"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"the gateway did not start: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    yield dict(url=url, port=port)
    proc.terminate()
    proc.wait(timeout=30)


def test_slow_headers_are_cut_off(gateway):
    """A slowloris client sends a header byte every 0.3 s: the connection is closed after the header timeout."""
    sock = socket.create_connection(("127.0.0.1", gateway["port"]))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed_after = None
    try:
        for _ in range(40):  # up to 12 s of trickling
            time.sleep(0.3)
            sock.sendall(b"X")
            sock.settimeout(0.01)
            try:
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - started
                    break
            except socket.timeout:
                pass
    except (BrokenPipeError, ConnectionResetError):
        closed_after = time.monotonic() - started
    finally:
        sock.close()
    assert closed_after is not None and closed_after < 4.0, closed_after
    # an ordinary request on a fresh connection is still served, and an idle connection is also cut
    assert httpx.get(gateway["url"] + "/healthz", timeout=5).status_code == 200
    idle = socket.create_connection(("127.0.0.1", gateway["port"]))
    idle.settimeout(6)
    assert idle.recv(1) == b""  # closed by the server, not by our timeout
    idle.close()


def test_huge_chat_body_does_not_block_health_and_is_refused_before_rendering(gateway):
    """110k messages (3.7 MB): refused as context_length_exceeded; /healthz keeps answering meanwhile."""
    body = json.dumps({"model": "smollm2-135m-instruct",
                       "messages": [{"role": "user", "content": "hi"}] * 110_000}).encode()
    result = {}

    def post():
        result["reply"] = httpx.post(gateway["url"] + "/v1/chat/completions", content=body, timeout=60,
                                     headers={"content-type": "application/json"})

    worker = threading.Thread(target=post)
    worker.start()
    slowest = 0.0
    while worker.is_alive():
        started = time.monotonic()
        assert httpx.get(gateway["url"] + "/healthz", timeout=10).status_code == 200
        slowest = max(slowest, time.monotonic() - started)
        time.sleep(0.02)
    worker.join()
    error = result["reply"].json()["error"]
    assert result["reply"].status_code == 400 and error["code"] == "context_length_exceeded"
    assert error["param"] == "messages"
    print(f"slowest /healthz while the 110k-message body was handled: {slowest:.3f} s")
    # 4-6 s before (docs/benchmarks.md), with the template rendered on the loop; json.loads in the worker
    # thread still holds the GIL, and this 2-core machine is often loaded by other jobs
    assert slowest < 1.2, slowest
    too_big = httpx.post(gateway["url"] + "/v1/completions", content=b"x" * (9 * 1024**2), timeout=60)
    assert too_big.status_code == 413
