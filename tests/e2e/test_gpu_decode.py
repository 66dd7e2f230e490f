"""GPU->GPU disaggregation (issue #12 item 4) through the whole path: a cluster of one prefill GPU worker and one
GPU worker started with --roles decode (`glitches up --gpu-decode-workers 1`), no FPGA. Every request prefills on
gpu-0, its KV travels to gpu-decode-0 by the transport under test, and decodes there; the greedy tokens equal
transformers' generate, a prompt >= 1,024 tokens included. shm (auto) runs in the default suite, nixl and grpc in
the slow tier (a cluster each)."""

from __future__ import annotations

import pytest

from glitches import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation import models
from glitches.services.cluster.registry import Registry
from tests.conftest import REDIS_URL
from tests.e2e.conftest import LONG, assert_idle, metric

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("transport", ["auto", pytest.param("nixl", marks=pytest.mark.slow),
                                       pytest.param("grpc", marks=pytest.mark.slow)])
def test_gpu_to_gpu_decode_equals_transformers(transport, reference, redis_prefix, tmp_path):
    spec = ClusterSpec(gpu_workers=1, gpu_decode_workers=1, fpga_workers=0, model=models.DEFAULT_MODEL, port=0,
                       redis_url=REDIS_URL, redis_prefix=redis_prefix, kv_transport=transport)
    expected = "shm" if transport == "auto" else transport
    with LocalCluster(spec, tmp_path) as cluster, Client(cluster.address, timeout_s=600) as client:
        workers = {w.worker_id: w for w in client.status().workers}
        assert set(workers["gpu-decode-0"].roles) == {"decode"} and "decode" not in workers["gpu-0"].roles
        for prompt, max_tokens in (("The capital of France is", 12), ("Write a haiku about the sea.", 16),
                                   (LONG, 6)):
            result = client.generate(prompt, max_tokens=max_tokens)
            assert list(result.token_ids) == reference["generate"](list(result.prompt_token_ids), max_tokens)
            assert (result.decode_device, result.decode_worker, result.prefill_worker) == ("gpu", "gpu-decode-0",
                                                                                          "gpu-0")
            assert result.timings.kv_transport == expected and result.timings.kv_gbps > 0
        assert len(result.prompt_token_ids) >= 1024
        assert_idle(Registry(REDIS_URL, redis_prefix))
        decode_metrics = cluster.http_addresses["gpu-decode-0"]  # its own /metrics shows the KV it received
        assert metric(decode_metrics, "glitches_kv_received_bytes_total") > 0
        assert metric(decode_metrics, "glitches_kv_streams") == 0
        assert metric(decode_metrics, "glitches_kv_nixl_registrations") == 0


@pytest.mark.slow
def test_decode_gpu_killed_mid_decode_migrates_with_identical_tokens(reference, redis_prefix, tmp_path):
    """SIGKILL of the decode-role GPU mid-decode: the request moves (to the other decode GPU) and its greedy
    tokens do not change; nothing stays claimed."""
    import os
    import signal

    from glitches import Completion, TextChunk

    spec = ClusterSpec(gpu_workers=1, gpu_decode_workers=2, fpga_workers=0, model=models.DEFAULT_MODEL, port=0,
                       redis_url=REDIS_URL, redis_prefix=redis_prefix, threads_per_worker=1)
    with LocalCluster(spec, tmp_path) as cluster, Client(cluster.address, timeout_s=600) as client:
        stream = client.stream("Write a long list of fruits, one per line:", max_tokens=40)
        seen = 0
        for item in stream:
            if isinstance(item, TextChunk):
                seen += len(item.token_ids)
                if seen >= 5:
                    break
        busy = [w for w in client.status().workers if "decode" in w.roles and w.active_requests]
        assert len(busy) == 1, busy
        os.kill(busy[0].pid, signal.SIGKILL)
        final = next(item for item in stream if isinstance(item, Completion))
        assert final.migrations == 1 and final.decode_worker != busy[0].worker_id
        assert list(final.token_ids) == reference["generate"](list(final.prompt_token_ids), 40)
        assert_idle(Registry(REDIS_URL, redis_prefix), timeout_s=15)
