"""The W4A8 emulated card behind the DecodeBackend interface: KV space, lifecycle, errors."""

from __future__ import annotations

import pytest
import torch

from fpga_worker.w4a8_backend import W4A8EmulatedCard
from fpga_worker.w4a8_kernel import DecodeKernel
from fpga_worker.weight_image import build_from_state_dict
from services.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from tests.fpga_helpers import prefill_cache, tiny_llama


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
    a, b = card._requests["a"], card._requests["b"]
    assert a.kv_offset + a.region.plan.region_bytes_per_channel <= b.kv_offset
    card.release("a")
    card.reserve("c", 100)
    assert card._requests["c"].kv_offset == a.kv_offset  # first fit reuses the freed space
