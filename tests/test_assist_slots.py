"""The GPU worker's default GPU-assist slots from its KV budget (glitches/gpu_worker/assist_slots.py)."""

from __future__ import annotations

import pytest

from glitches.gpu_worker.assist_slots import TYPICAL_CONTEXT_TOKENS, default_assist_slots
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.services.runtime.errors import InvalidArgument

BLOCKS_PER_TYPICAL = TYPICAL_CONTEXT_TOKENS // 16  # 128 blocks of 16 tokens


def test_typical_context_is_the_papers_workload():
    assert TYPICAL_CONTEXT_TOKENS == 1536 + 512


@pytest.mark.parametrize("kv_blocks, max_context, max_batch_tokens, slots", [
    (10 * BLOCKS_PER_TYPICAL, 8192, 512, 10),  # what the KV holds at 2048 tokens
    (10 * BLOCKS_PER_TYPICAL + 127, 8192, 512, 10),  # a partial request's worth does not make a slot
    (1000 * BLOCKS_PER_TYPICAL, 8192, 512, 256),  # capped at half of --max-batch-tokens
    (1000 * BLOCKS_PER_TYPICAL, 8192, 64, 32),
    (5, 8192, 512, 1),  # less than one typical request: still one slot (admission checks the real need)
    (64, 1024, 512, 1),  # a 1024-token model: its whole context is the typical request
    (640, 1024, 512, 10),
])
def test_default_slots_rule(kv_blocks, max_context, max_batch_tokens, slots):
    assert default_assist_slots(kv_blocks, max_context, max_batch_tokens) == slots


def test_settings_take_zero_as_from_the_budget_and_refuse_negative():
    assert GpuWorkerSettings().slots == 0
    with pytest.raises(InvalidArgument, match="--slots"):
        GpuWorkerSettings(slots=-1)
