"""The W4A8 emulated card behind the DecodeBackend interface: KV space, lifecycle, errors."""

from __future__ import annotations

import pytest
import torch

from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
from glitches.fpga_worker.w4a8_kernel import DecodeKernel
from glitches.fpga_worker.weight_image import build_from_state_dict
from glitches.services.runtime.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tests.fpga_helpers import one_torch_thread, prefill_cache, tiny_llama

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


def _card(hbm_bytes=32 * 1024 * 1024):
    model = tiny_llama()
    return model, W4A8EmulatedCard(build_from_state_dict(model.config, model.state_dict()), hbm_bytes)


def test_lifecycle_matches_the_kernel_run_directly():
    model, card = _card()
    facts = card.facts()
    assert facts.emulated and facts.backend == "emu" and "no card" in facts.device_name
    ids = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(5))
    free = card.kv_free_bytes()
    card.reserve("r1", 20)
    assert card.kv_free_bytes() < free
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :10])):
        card.write_kv("r1", layer, 0, key[:, :, :6], value[:, :, :6])
        card.write_kv("r1", layer, 6, key[:, :, 6:], value[:, :, 6:])
    card.seal("r1", 10)
    got = [card.step("r1", int(ids[0, p]), p) for p in (10, 11)]
    direct = DecodeKernel.from_image(card.image)
    region = direct.new_region(20)
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :10])):
        region.write(layer, 0, key, value)
    want = [direct.step(region, int(ids[0, p]), p) for p in (10, 11)]
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert card.release("r1") and not card.release("r1")
    assert card.kv_free_bytes() == free and card.active_requests() == []


def test_errors_name_what_to_change():
    model, card = _card()
    card.reserve("a", 16)
    with pytest.raises(AlreadyExists):
        card.reserve("a", 16)
    with pytest.raises(FailedPrecondition, match="KV transfer"):
        card.step("a", 1, 0)
    with pytest.raises(InvalidArgument, match="never arrived"):
        card.seal("a", 4)
    with pytest.raises(NotFound):
        card.write_kv("b", 0, 0, torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 1, 16))
    with pytest.raises(ResourceExhausted, match="largest free region"):
        card.reserve("huge", 10**7)


def test_regions_do_not_overlap_and_space_is_reused():
    _, card = _card()
    card.reserve("a", 600)
    card.reserve("b", 600)
    a, b = card.kv.get("a"), card.kv.get("b")
    assert a.kv_offset + a.region.plan.region_bytes_per_channel <= b.kv_offset
    card.release("a")
    card.reserve("c", 100)
    assert card.kv.get("c").kv_offset == a.kv_offset  # first fit reuses the freed space


def test_step_args_and_result_round_trip_through_bytes():
    import numpy as np

    from glitches.fpga_worker.abi import KernelStatus, OutputMode
    from glitches.fpga_worker.step_args import STEP_ARGS_BYTES, StepArgs, StepResult, result_bytes

    args = StepArgs(token_id=42, position=1000, kv_capacity_tokens=2048, kv_lane_stride=4 * 2048,
                    block_table=(3 << 20, (3 << 20) + 2048, 5 << 20, 6 << 20), pc_bytes=256 << 20)
    blob = args.pack()
    assert len(blob) == STEP_ARGS_BYTES and StepArgs.unpack(blob) == args
    assert np.frombuffer(blob, "<u4", 4, 64).tolist() == list(args.block_table)  # the table at byte 64
    assert StepArgs.unpack(blob).mode == OutputMode.LOGITS
    with pytest.raises(InvalidArgument, match="ABI version 1, expected 2"):
        StepArgs.unpack(b"\1" + blob[1:])
    logits = np.arange(5, dtype=np.float32)
    raw = StepResult(KernelStatus.OK, 0, logits).pack(5)
    assert len(raw) == result_bytes(5)
    assert np.array_equal(StepResult.unpack(raw, OutputMode.LOGITS).logits, logits)
    assert raw[64:68] == logits[:1].tobytes()  # ABI v2: logits at byte 64 of the result


def test_modeled_step_time_is_the_timing_models_and_grows_with_context():
    from glitches.fpga_worker.timing_model import calibrate, modeled_step_s
    from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
    from glitches.decode_contract.device import DecodeBackend

    assert DecodeBackend.modeled_step_s(None, 100) == 0.0
    card = W4A8EmulatedCard.__new__(W4A8EmulatedCard)  # only the attributes modeled_step_s reads

    class _Kernel:
        prefetch_ratio = 4

    from glitches.fpga_worker.timing_model import resolve_dims

    class _Image:
        dims = resolve_dims("smollm2-135m-instruct")

    card.kernel, card.image, card.prefetch_ratio = _Kernel(), _Image(), 4
    assert card.modeled_step_s(128) == modeled_step_s(_Image.dims, 128, 4, calibrate())
    assert card.modeled_step_s(2048) > card.modeled_step_s(128) > 0
