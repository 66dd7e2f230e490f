"""A real cluster for end-to-end tests: `glitches up --gateway-port 0` in its own process (scheduler, 1 GPU
worker, 2 emulated FPGA workers and the OpenAI gateway, each a process) on the shared Redis under a test-only
prefix, and
transformers' own model in this process as the reference. The cluster's KV token secret is given
to `up` in its environment (KV_TOKEN_ENV), so tests can start more schedulers that share it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid

import psutil
import pytest
import redis
import torch

from glitches import Client
from glitches.services.generation import models
from glitches.services.auth.kv_token import SECRET_ENV, new_secret
from glitches.services.cluster.registry import Registry
from tests.conftest import REDIS_URL
from tests.dies_with_pytest import dies_with_pytest

FPGA_WORKERS = 2
GPU_SLOTS = 8  # GPU-assist slots: the concurrent tests' requests never wait for one (a slow CI runner might time out)
KV_TOKEN_ENV = {SECRET_ENV: new_secret()}  # the session cluster's KV token secret (`up` passes it on)
KV_HOLD_TTL_S = 5.0  # the session cluster's workers free KV nobody renewed for this long (every test renews it)
CLUSTER_ENV = {**KV_TOKEN_ENV, "GLITCHES_KV_HOLD_TTL_S": str(KV_HOLD_TTL_S)}
# a prompt of ~1,000 tokens: long enough that KV streams while prefill runs
LONG = ("GLITCHES splits inference across devices: GPUs run prefill, FPGAs with HBM run decode, and the "
        "KV cache streams from one to the other while prefill is still running. ") * 40


def metric(http_address: str, name: str) -> float:
    """The value of an unlabelled sample `name` on a daemon's /metrics (its HTTP side port)."""
    text = urllib.request.urlopen(f"http://{http_address}/metrics", timeout=5).read().decode()
    return float(next(line.split()[-1] for line in text.splitlines() if line.startswith(name + " ")))


def start_up(args: list[str], timeout_s: float = 300.0, env: dict[str, str] | None = None
             ) -> tuple[subprocess.Popen, str]:
    """Run `glitches up ARGS` (with `env` added to this environment) and wait for its `ready <address>` line."""
    proc = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "glitches", "up", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    deadline = time.monotonic() + timeout_s
    proc.http_addresses = {}  # daemon name -> host:port of its HTTP side port
    proc.gateway_url = ""  # with --gateway-port
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("http "):
            proc.http_addresses[line.split()[1]] = line.split()[2]
        if line.startswith("gateway "):
            proc.gateway_url = line.split()[1]
        if line.startswith("ready "):
            return proc, line.split()[1]
        if not line and proc.poll() is not None:
            raise RuntimeError(f"glitches up exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
    proc.kill()
    raise TimeoutError("glitches up never printed ready")


def stop_up(proc: subprocess.Popen, pids: list[int]) -> None:
    """SIGTERM `glitches up`; it must exit within 30 s leaving none of its processes behind."""
    proc.terminate()
    assert proc.wait(timeout=30) == 0
    time.sleep(0.2)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"processes left behind: {alive}"


@pytest.fixture(scope="session")
def cluster():
    prefix = f"glitches-e2e-{uuid.uuid4().hex[:8]}"
    models.resolve_model(models.DEFAULT_MODEL)
    proc, address = start_up(["--port", "0", "--redis-url", REDIS_URL, "--redis-prefix", prefix,
                              "--gpu-workers", "1", "--fpga-workers", str(FPGA_WORKERS), "--gateway-port", "0",
                              "--gpu-slots", str(GPU_SLOTS), "--no-prefix-cache", "--no-kv-reuse"], env=CLUSTER_ENV)
    # --no-prefix-cache, --no-kv-reuse: these tests time whole prefills and the KV streaming under them, with
    # prompts that repeat (LONG; a card holding one would extend it instead); KV reuse has its own clusters
    # in test_prefix_cache.py and test_reuse_routing.py
    client = Client(address, timeout_s=600)
    pids = [w.pid for w in client.status().workers]
    yield dict(address=address, client=client, registry=Registry(REDIS_URL, prefix), prefix=prefix, proc=proc,
               http=proc.http_addresses, gateway_url=proc.gateway_url)
    client.close()
    stop_up(proc, pids)
    leftover = list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{prefix}:*"))
    assert leftover == [], f"registry keys left behind: {leftover}"


@pytest.fixture(scope="session")
def reference():
    """transformers' own model and tokenizer, float32 on CPU, for greedy reference tokens.

    GLITCHES_E2E_REFERENCE=cuda:float16 (scripts/gpu_check.sh) loads it on CUDA in float16 instead, to check a
    GPU worker running there in that precision; `tolerance` is the near-tie bound for that precision."""
    from tests.greedy_reference import TOLERANCE_FP16, TOLERANCE_FP32

    source = models.resolve_model(models.DEFAULT_MODEL)
    device, dtype = os.environ.get("GLITCHES_E2E_REFERENCE", "cpu:float32").rsplit(":", 1)
    model = models.load_causal_lm(source, device, dtype)
    tokenizer = models.load_tokenizer(source)

    def generate(prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        with torch.inference_mode():
            out = model.generate(torch.tensor([prompt_ids], device=model.device),
                                 attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=model.device),
                                 do_sample=False, max_new_tokens=max_new_tokens)
        new = out[0, len(prompt_ids):].tolist()
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        for i, token in enumerate(new):  # generate pads after EOS; the service stops at it
            if token in eos:
                return new[: i + 1]
        return new

    return dict(model=model, tokenizer=tokenizer, generate=generate,
                tolerance=TOLERANCE_FP32 if dtype == "float32" else TOLERANCE_FP16)


def assert_idle(registry: Registry, timeout_s: float = 5.0) -> None:
    """Occupancy in Redis drops back to zero (claims are released in the scheduler's finally)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if registry.occupancy() == {} and registry.claims() == {}:
            return
        time.sleep(0.05)
    assert registry.occupancy() == {} and registry.claims() == {}


@pytest.fixture(scope="session")
def gateway_cluster(cluster):
    """The session cluster's own gateway (`glitches up --gateway-port 0`) and an official `openai` client on it,
    for the OpenAI-surface tests (logprobs, echo, n, lm-eval)."""
    import openai

    oai = openai.OpenAI(base_url=cluster["gateway_url"] + "/v1", api_key="unused", max_retries=0, timeout=300)
    return dict(cluster, oai=oai, url=cluster["gateway_url"])
