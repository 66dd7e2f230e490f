"""200 mixed requests (finished, cancelled, failed) through a real cluster whose FPGA cards hold the KV of
only one request each: requests that do not fit go to the other card or to GPU assist, none fails for
lack of HBM, and afterwards no KV block has leaked (Info and registry back to capacity, occupancy zero)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from glitches.fpga_worker.abi import HBM_CHANNELS
from glitches.kv_plane.kv_layout import KvPlan
from glitches.fpga_worker.xrt_backend import weight_image_for
from glitches import Client, Completion
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.errors import GlitchesError
from glitches.services.runtime.channels import insecure_channel
from glitches.services.cluster.registry import Registry
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.e2e
PROMPTS = ["Hello", "FPGA decode", "Why is decode memory-bound?", "KV cache"]


def _one(address: str, i: int) -> str:
    """Request i: finished (i % 4 in 0, 1), cancelled after its first piece (2), or failed by its deadline (3)."""
    prompt, max_tokens = PROMPTS[i % len(PROMPTS)], 2 + i % 3
    if i % 4 == 3:
        with Client(address, timeout_s=0.02) as client:
            try:
                client.generate(prompt, max_tokens=max_tokens)
                return "finished"
            except GlitchesError:
                return "failed"
    with Client(address, timeout_s=60) as client:
        if i % 4 == 2:
            pieces = client.stream(prompt, max_tokens=max_tokens)
            next(pieces)
            pieces.close()  # cancels the call mid-request
            return "cancelled"
        done = client.generate(prompt, max_tokens=max_tokens)
        assert isinstance(done, Completion)
        return f"finished-{done.decode_device}"


def test_no_kv_block_leaks_after_200_mixed_requests(tiny_source, redis_prefix, tmp_path):
    image = weight_image_for(tiny_source)
    one_region = KvPlan.for_model(image.dims, 512).region_bytes_per_channel  # any request here: <= 512 tokens
    hbm_bytes = HBM_CHANNELS * (image.kv_base + one_region)  # each card holds one request's KV at a time
    spec = ClusterSpec(gpu_workers=1, fpga_workers=2, model=str(tiny_source.path), port=0, redis_url=REDIS_URL,
                       redis_prefix=redis_prefix, fpga_numerics="w4a8", fpga_hbm_bytes=hbm_bytes, fpga_slots=2,
                       threads_per_worker=1)
    with LocalCluster(spec, tmp_path) as cluster:
        with ThreadPoolExecutor(6) as pool:
            outcomes = list(pool.map(lambda i: _one(cluster.address, i), range(200)))
        kinds = {k: outcomes.count(k) for k in set(outcomes)}
        assert kinds.get("cancelled") == 50 and kinds.get("finished-fpga", 0) > 0, kinds
        assert kinds.get("finished-gpu", 0) > 0, kinds  # what did not fit a card went to GPU assist
        assert sum(v for k, v in kinds.items() if k.startswith("finished")) + kinds.get("failed", 0) == 150

        registry = Registry(REDIS_URL, redis_prefix)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and registry.occupancy():
            time.sleep(0.2)  # cancelled calls finish their release on the workers' side
        assert registry.occupancy() == {} and registry.claims() == {}
        with Client(cluster.address, timeout_s=10) as client:
            fpgas = [w for w in client.status().workers if w.kind == "fpga"]
        assert len(fpgas) == 2
        for worker in fpgas:
            stub = worker_pb2_grpc.WorkerStub(insecure_channel(worker.address))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                info = stub.Info(worker_pb2.InfoRequest(), timeout=5)
                if info.active_requests == 0 and info.kv_free_bytes == info.kv_capacity_bytes:
                    break
                time.sleep(0.2)
            assert info.active_requests == 0 and info.kv_free_bytes == info.kv_capacity_bytes, info
        records = {w.record.worker_id: w.record for w in registry.workers() if w.record.kind == "fpga"}
        for record in records.values():
            assert record.kv_free_bytes == record.kv_capacity_bytes
            assert record.kv_free_blocks * record.kv_block_bytes == record.kv_capacity_bytes
            assert record.kv_granularity_tokens == 512
