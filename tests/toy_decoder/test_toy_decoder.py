"""The toy decode device (this package) started beside the real daemons decodes requests, greedy-identical to
transformers' generate, with nothing outside this package knowing its kind (issue #12 item 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import redis
from click.testing import CliRunner

from glitches import Client
from glitches.cli import main as glitches_cli
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation import models
from glitches.services.cluster.registry import Registry
from tests.conftest import REDIS_URL
from tests.greedy_reference import greedy
from tests.dies_with_pytest import dies_with_pytest

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]  # on the toy's PYTHONPATH, wherever pytest runs from
PROMPTS = (("The capital of France is", 12), ("Write a haiku about the sea.", 16), ("Count: one, two,", 8))


def _wait_listed(client: Client, worker_id: str, proc: subprocess.Popen, timeout_s: float = 180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listed = {w.worker_id: w for w in client.status().workers if w.healthy}
        if worker_id in listed:
            return listed[worker_id]
        assert proc.poll() is None, f"the toy device exited {proc.returncode}"
        time.sleep(0.2)
    raise TimeoutError("the toy device never registered")


def test_toy_device_decodes_beside_the_real_daemons(redis_prefix, tmp_path):
    source = models.resolve_model(models.DEFAULT_MODEL)
    reference = models.load_causal_lm(source, "cpu", "float32")
    eos = reference.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    spec = ClusterSpec(gpu_workers=1, fpga_workers=0, model=models.DEFAULT_MODEL, port=0, redis_url=REDIS_URL,
                       redis_prefix=redis_prefix)
    with LocalCluster(spec, tmp_path) as cluster, Client(cluster.address, timeout_s=600) as client:
        env = {**os.environ, **cluster.daemon_env, "PYTHONPATH": str(REPO)}  # the cluster's KV token secret
        toy = subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "tests.toy_decoder", "--redis-url", REDIS_URL, "--redis-prefix",
                                redis_prefix, "--worker-id", "toy-0", "--model", models.DEFAULT_MODEL],
                               env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "toy.log", "wb"))
        try:
            listed = _wait_listed(client, "toy-0", toy)
            assert listed.kind == "toy-npu" and tuple(listed.roles) == ("decode",) and listed.emulated
            assert listed.decode_class == 15 and listed.kv_tokens_required  # the cluster's secret reached it
            table = CliRunner().invoke(glitches_cli, ["status", "--address", cluster.address])
            assert table.exit_code == 0 and "toy-npu" in table.output and "decode(class 15)" in table.output, \
                table.output
            shown = CliRunner().invoke(glitches_cli, ["status", "--address", cluster.address, "--json"])
            row = {w["worker_id"]: w for w in json.loads(shown.output)["workers"]}["toy-0"]
            assert (row["kind"], row["roles"], row["kv_transports"]) == ("toy-npu", ["decode"], ["grpc"])
            for prompt, max_tokens in PROMPTS:
                result = client.generate(prompt, max_tokens=max_tokens)
                assert (result.decode_device, result.decode_worker) == ("toy-npu", "toy-0")
                expected = greedy(reference, list(result.prompt_token_ids), max_tokens, eos).tokens
                assert list(result.token_ids) == expected
                assert result.timings.kv_transport == "grpc"
            registry = Registry(REDIS_URL, redis_prefix)
            deadline = time.monotonic() + 5
            while (registry.occupancy() or registry.claims()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert registry.occupancy() == {} and registry.claims() == {}
        finally:
            toy.terminate()
            assert toy.wait(timeout=30) == 0, (tmp_path / "toy.log").read_text()[-3000:]
    time.sleep(0.2)
    assert not psutil.pid_exists(toy.pid) or psutil.Process(toy.pid).status() == psutil.STATUS_ZOMBIE
    assert list(redis.Redis.from_url(REDIS_URL).scan_iter(f"{redis_prefix}:*")) == []
