"""The scheduler's KV need matches what a card really reserves (block-rounded regions)."""

from __future__ import annotations

from glitches.kv_plane.kv_layout import KvPlan
from glitches.scheduler.orchestrator import kv_bytes_needed
from glitches.services.cluster.registry import WorkerRecord, WorkerState
from tests.fpga_helpers import tiny_llama


def _state(kind, per_token, granularity):
    record = WorkerRecord(worker_id=kind, kind=kind, backend="emu", emulated=1, device_name="", address="", pid=1,
                          model="m", slots=1, kv_capacity_bytes=0, kv_free_bytes=0, kv_bytes_per_token=per_token,
                          kv_granularity_tokens=granularity)
    return WorkerState(record, True, 0)


def test_need_is_the_cards_block_rounded_reservation():
    from glitches.fpga_worker.abi import ModelDims

    dims = ModelDims.from_config(tiny_llama().config)
    per_token = 2 * dims.num_layers * dims.kv_heads * dims.head_dim * 2  # float16 K and V
    for tokens in (1, 40, 512, 513, 1500):
        real = 32 * KvPlan.for_model(dims, tokens).region_bytes_per_channel
        assert kv_bytes_needed([_state("fpga", per_token, 512), _state("gpu", 999, 1)], tokens) == real
    assert kv_bytes_needed([_state("fpga", per_token, 1)], 40) == 40 * per_token  # byte-exact emulator
    assert kv_bytes_needed([_state("gpu", 999, 1)], 40) == 0
