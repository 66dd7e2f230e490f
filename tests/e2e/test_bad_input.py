"""Bad input gets its status code, the CLI exits non-zero, and nothing leaks."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from glitches import Client, GlitchesError
from tests.conftest import REDIS_URL
from tests.e2e.conftest import assert_idle
from tests.dies_with_pytest import dies_with_pytest

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("prompt, kwargs, needle", [
    ("", {}, "prompt is empty"),
    ("hi", dict(max_tokens=0), "max_new_tokens"),
    ("hi", dict(max_tokens=-3), "max_new_tokens"),
    ("hi", dict(max_tokens=5000), "limit"),
    ("word " * 6000, dict(max_tokens=4000), "context"),
    ("hi", dict(temperature=-0.5), "temperature"),
    ("hi", dict(top_p=0.0), "top_p"),
    ("hi", dict(top_p=1.5), "top_p"),
    ("hi", dict(model="llama-9000"), "unknown model"),
])
def test_invalid_requests(cluster, prompt, kwargs, needle):
    with pytest.raises(GlitchesError) as info:
        cluster["client"].generate(prompt, **kwargs)
    assert info.value.code == "INVALID_ARGUMENT"
    assert needle in info.value.message
    assert_idle(cluster["registry"])


def test_cli_exits_non_zero_with_the_status(cluster):
    run = subprocess.run([sys.executable, "-m", "glitches", "generate", "", "--address", cluster["address"]],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode != 0
    assert "INVALID_ARGUMENT" in run.stderr and "prompt is empty" in run.stderr


def test_cli_json_has_the_documented_fields(cluster):
    import json

    run = subprocess.run([sys.executable, "-m", "glitches", "generate", "Hello", "--max-tokens", "5", "--json",
                          "--address", cluster["address"]], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    for key in ("text", "token_ids", "prompt_token_ids", "decode_device", "decode_worker", "timings"):
        assert key in out
    for key in ("ttft_s", "prefill_s", "kv_bytes", "kv_exposed_s", "decode_s", "tokens_per_s"):
        assert key in out["timings"]
    status = json.loads(subprocess.run([sys.executable, "-m", "glitches", "status", "--json", "--address",
                                        cluster["address"]], capture_output=True, text=True, timeout=60).stdout)
    fpgas = [w for w in status["workers"] if w["kind"] == "fpga"]
    assert fpgas and all(w["backend"] == "emu" and w["emulated"] for w in fpgas)
    for w in status["workers"]:
        for key in ("worker_id", "kind", "backend", "address", "pid", "healthy", "slots", "active_requests"):
            assert key in w


def test_no_worker_registered_is_unavailable(free_scheduler):
    with Client(free_scheduler, timeout_s=30) as client:
        with pytest.raises(GlitchesError) as info:
            client.generate("hi", max_tokens=2)
    assert info.value.code == "UNAVAILABLE" and "no GPU worker" in info.value.message


@pytest.fixture
def free_scheduler():
    """A scheduler process on a prefix no worker registers under."""
    from glitches.cluster import free_port

    port = free_port()
    proc = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "glitches", "scheduler", "--port", str(port), "--redis-url",
                             REDIS_URL, "--redis-prefix", f"empty-{uuid.uuid4().hex[:8]}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("scheduler ready"):
            break
    yield f"127.0.0.1:{port}"
    proc.terminate()
    assert proc.wait(timeout=30) == 0
