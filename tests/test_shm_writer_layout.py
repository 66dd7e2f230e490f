"""The shm writer's CUDA path arranges each layer per PC (ShmLayerWriter.arranged); checked here on the CPU.

The CUDA path copies each PC's arranged run device-to-host; that copy cannot run without a GPU, but the
arrangement is device-agnostic, so its bytes are compared with the CPU scatter (KvRegion.write) here.
"""

import pytest
import torch

from benchmarks.kv_cuda_replay import placement
from glitches.fpga_worker.abi import HBM_CHANNELS
from glitches.kv_plane.hbm_segment import HbmSegment
from glitches.kv_plane.kv_layout import KvPlan, KvRegion
from glitches.kv_plane.shm_writer import ShmLayerWriter


@pytest.mark.parametrize("layers,heads,dim,tokens,capacity", [
    (2, 3, 64, 37, 40), (3, 5, 16, 100, 129), (1, 2, 8, 16, 16), (2, 1, 8, 600, 1100), (4, 4, 8, 1, 3)])
def test_arranged_runs_hold_what_the_cpu_scatter_writes(tmp_path, layers, heads, dim, tokens, capacity):
    plan = KvPlan(layers, heads, dim, capacity, 2)
    offset = 8192
    channel_bytes = offset + plan.region_bytes_per_channel + 4096
    segment = HbmSegment(HBM_CHANNELS * channel_bytes, "layout-test", directory=tmp_path)
    try:
        writer = ShmLayerWriter(placement(segment, channel_bytes, plan, offset))
        reference = KvRegion(plan)
        torch.manual_seed(tokens)
        for layer in range(layers):
            key, value = (torch.randn(1, heads, tokens, dim).to(torch.float16) for _ in range(2))
            first, stop = plan.layer_slots(layer)
            for pc, blocks in writer.arranged(layer, key, value):
                writer.region.data[pc, first:stop].copy_(blocks)  # what the CUDA path copies to the host
            reference.write(layer, 0, key, value)
        for layer in range(layers):
            got, want = writer.region.read(layer, tokens), reference.read(layer, tokens)
            assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        # nothing outside the region was touched
        memory = segment.memory.view(HBM_CHANNELS, channel_bytes)
        assert not memory[:, :offset].any() and not memory[:, offset + plan.region_bytes_per_channel:].any()
    finally:
        segment.close()
