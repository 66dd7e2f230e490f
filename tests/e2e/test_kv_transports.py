"""Greedy tokens through the whole path with the KV forced over nixl and over grpc (the session cluster of
test_correctness.py uses auto = shm), a prompt >= 1,024 tokens included; `glitches status` shows the transports.
One small cluster per transport (1 GPU + 1 emulated FPGA worker) and few prompts: clusters are dear on 2 cores."""

from __future__ import annotations

import pytest

from glitches import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation import models
from glitches.services.cluster.registry import Registry
from tests.conftest import REDIS_URL
from tests.e2e.conftest import LONG, assert_idle

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a cluster per transport; shm is the default cluster's


@pytest.mark.parametrize("transport", ["nixl", "grpc"])
def test_tokens_equal_transformers_with_each_transport(transport, reference, redis_prefix, tmp_path):
    spec = ClusterSpec(gpu_workers=1, fpga_workers=1, model=models.DEFAULT_MODEL, port=0, redis_url=REDIS_URL,
                       redis_prefix=redis_prefix, kv_transport=transport)
    with LocalCluster(spec, tmp_path) as cluster, Client(cluster.address, timeout_s=600) as client:
        workers = {w.kind: w for w in client.status().workers}
        assert workers["fpga"].kv_transports == (transport,) + (("grpc",) if transport != "grpc" else ())
        for prompt, max_tokens in (("The capital of France is", 12), (LONG, 6)):
            result = client.generate(prompt, max_tokens=max_tokens)
            assert list(result.token_ids) == reference["generate"](list(result.prompt_token_ids), max_tokens)
            assert result.decode_device == "fpga" and result.timings.kv_transport == transport
            assert result.timings.kv_gbps > 0
        assert len(result.prompt_token_ids) >= 1024
        assert_idle(Registry(REDIS_URL, redis_prefix))
