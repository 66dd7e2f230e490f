"""The xrt backend's host protocol, checked against the pyxrt stand-in (tests/pyxrt_standin.py, not XRT).

Weight image written once, KV chunks written + synced at their ABI addresses, one
kernel run per step with arguments in ABI order, results read back, logits equal to
the W4A8 emulated card's; clear errors without pyxrt, XILINX_XRT or a card.
"""

from __future__ import annotations

import sys

import pytest
import torch

import tests.pyxrt_standin as standin
from fpga_worker.abi import HBM_CHANNELS
from kv_plane.hbm_manager import KvSpace
from kv_plane.kv_layout import KvPlan
from fpga_worker.settings import FpgaWorkerSettings
from fpga_worker.w4a8_backend import W4A8EmulatedCard
from fpga_worker.weight_image import build_from_state_dict
from fpga_worker.xrt_backend import XrtCard, open_pyxrt
from services.errors import AlreadyExists, FailedPrecondition, InvalidArgument, ResourceExhausted
from tests.fpga_helpers import prefill_cache, tiny_llama

HBM = 32 * 1024 * 1024  # 1 MiB per pseudo-channel: room for the tiny image and a few KV regions
TO, FROM = "XCL_BO_SYNC_BO_TO_DEVICE", "XCL_BO_SYNC_BO_FROM_DEVICE"


@pytest.fixture(scope="module")
def image():
    model = tiny_llama()
    return build_from_state_dict(model.config, model.state_dict())


@pytest.fixture
def xclbin(tmp_path):
    path = tmp_path / "decode.xclbin"
    path.write_bytes(b"stand-in xclbin for tests")
    return str(path)


def test_host_protocol_and_numerics_match_the_w4a8_card(image, xclbin):
    card = XrtCard(image, standin, "0", xclbin, HBM)
    calls = card.device.calls
    bos = [c for c in calls if c[0] == "bo"]
    assert [c[4] for c in bos] == [card.kernel.group_id(i) for i in range(2 + HBM_CHANNELS)]  # by group_id
    assert [c[2] for c in bos] == [512] + [HBM // HBM_CHANNELS] * HBM_CHANNELS + [64 + 4 * image.dims.vocab]  # ABI v2
    hbm_index = {bo.index: pc for pc, bo in enumerate(card.hbm)}
    start = [c for c in calls if c[0] in ("write", "sync")]
    assert start == [c for pc in range(HBM_CHANNELS) for c in (
        ("write", card.hbm[pc].index, 0, image.kv_base), ("sync", card.hbm[pc].index, TO, image.kv_base, 0))]

    model, emu = tiny_llama(), W4A8EmulatedCard(image, HBM)
    ids = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(3))
    prompt = 19
    for backend in (card, emu):
        backend.reserve("r", 24)
    mark = len(calls)
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :prompt])):
        for backend in (card, emu):
            backend.write_kv("r", layer, 0, key[:, :, :5], value[:, :, :5])  # chunks across a block edge
            backend.write_kv("r", layer, 5, key[:, :, 5:], value[:, :, 5:])
    kv_calls = calls[mark:]
    plan, offset = KvPlan.for_model(image.dims, 24), card._requests["r"].kv_offset
    expected = []
    for layer in range(2):
        for first, stop in ((0, 5), (5, 16), (16, prompt)):
            for kind in (0, 1):
                for head in range(2):
                    pc, at = plan.address(offset, layer, head, kind, first)
                    size = (stop - first) * image.dims.head_dim * 2
                    expected.append((pc, at, size))
    writes = [(hbm_index[c[1]], c[2], c[3]) for c in kv_calls if c[0] == "write"]
    syncs = [(hbm_index[c[1]], c[4], c[3]) for c in kv_calls if c[0] == "sync" and c[2] == TO]
    assert sorted(writes) == sorted(expected) and sorted(syncs) == sorted(expected)  # every byte at its ABI address
    assert all(c[0] in ("write", "sync") for c in kv_calls)  # each chunk goes out as it arrives, no run
    for backend in (card, emu):
        backend.seal("r", prompt)

    mark = len(calls)
    tokens = {}
    for backend in (card, emu):
        token, out = int(ids[0, prompt]), []
        for position in range(prompt, 24):
            logits = backend.step("r", token, position)
            out.append(logits)
            token = int(torch.argmax(logits))
        tokens[backend] = out
    assert all(torch.equal(a, b) for a, b in zip(tokens[card], tokens[emu]))  # same bits, so same greedy tokens
    runs = [c for c in calls[mark:] if c[0] == "run"]
    order = (card.args_bo.index, *(bo.index for bo in card.hbm), card.result_bo.index)
    assert runs == [("run", order)] * (24 - prompt)  # one kernel run per token, arguments in ABI order
    step_calls = calls[mark:mark + 5]
    result = card.result_bo.index
    assert step_calls == [("write", card.args_bo.index, 0, 512), ("sync", card.args_bo.index, TO, 512, 0),
                          ("run", order), ("sync", result, FROM, 64 + 4 * image.dims.vocab, 0),
                          ("read", result, 0, 64 + 4 * image.dims.vocab)]  # ABI v2 buffer sizes
    assert sum(1 for c in calls if c[0] == "write" and c[2] == 0 and c[1] in hbm_index) == HBM_CHANNELS  # image once

    facts = card.facts()
    assert facts.backend == "xrt" and facts.emulated and "stand-in, not XRT" in facts.device_name
    assert "power_w" not in facts.extra  # a live reading, not a fact: card.sensors() (tests/test_fpga_sensors.py)
    assert facts.extra["bdf"] == "0000:3b:00.1" and "32 x MEM_HBM" in facts.extra["memory"]
    assert card.kv_free_bytes() < facts.kv_capacity_bytes == emu.facts().kv_capacity_bytes
    assert card.release("r") and not card.release("r")
    assert card.kv_free_bytes() == facts.kv_capacity_bytes and card.active_requests() == []


def test_card_by_bdf_and_kernel_status_errors(image, xclbin):
    card = XrtCard(image, standin, "0000:3b:00.1", xclbin, HBM)
    card.reserve("r", 8)
    ids = torch.arange(4).view(1, 4)
    for layer, (key, value) in enumerate(prefill_cache(tiny_llama(), ids)):
        card.write_kv("r", layer, 0, key, value)
    card.seal("r", 4)
    with pytest.raises(InvalidArgument, match="TOKEN_OUT_OF_RANGE"):
        card.step("r", 10**6, 4)
    with pytest.raises(ResourceExhausted, match="beyond"):
        card.step("r", 1, 600)


def test_missing_pyxrt_xrt_or_card_is_a_clear_error(image, xclbin, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyxrt", None)  # `import pyxrt` fails
    with pytest.raises(FailedPrecondition, match="import pyxrt.*XILINX_XRT is unset"):
        open_pyxrt(None)
    with pytest.raises(FailedPrecondition, match="XILINX_XRT=/opt/xilinx/xrt: run `source /opt/xilinx/xrt/setup.sh`"):
        open_pyxrt("/opt/xilinx/xrt")
    monkeypatch.setitem(sys.modules, "pyxrt", standin)  # importable, but XRT's environment is missing
    with pytest.raises(FailedPrecondition, match="XILINX_XRT is unset"):
        open_pyxrt(None)
    assert open_pyxrt("/opt/xilinx/xrt") is standin
    with pytest.raises(InvalidArgument, match="--device 3: XRT sees 1 card"):
        XrtCard(image, standin, "3", xclbin, HBM)
    with pytest.raises(InvalidArgument, match="0000:99:00.1"):
        XrtCard(image, standin, "0000:99:00.1", xclbin, HBM)
    with pytest.raises(InvalidArgument, match="--xclbin"):
        XrtCard(image, standin, "0", xclbin + ".missing", HBM)
    with pytest.raises(InvalidArgument, match="--xclbin"):
        FpgaWorkerSettings(backend="xrt")


def test_worker_start_without_pyxrt_fails_instead_of_emulating(tiny_source, monkeypatch):
    from fpga_worker.server import build_backend

    monkeypatch.setitem(sys.modules, "pyxrt", None)
    with pytest.raises(FailedPrecondition, match="pyxrt"):
        build_backend(FpgaWorkerSettings(backend="xrt", xclbin="/nonexistent.xclbin", xilinx_xrt=""), tiny_source)


def test_kv_space_counts_whole_blocks_and_reuses_them():
    space = KvSpace(kv_base=4096, channel_bytes=4096 + 10 * 512, block_bytes=512)
    assert space.capacity_bytes == space.free_bytes() == HBM_CHANNELS * 10 * 512
    a = space.reserve("a", 4 * 512)
    b = space.reserve("b", 4 * 512)
    assert (a, b) == (4096, 4096 + 4 * 512) and space.free_blocks() == HBM_CHANNELS * 2
    with pytest.raises(AlreadyExists):
        space.reserve("a", 512)
    with pytest.raises(ResourceExhausted, match="largest free region"):
        space.reserve("c", 3 * 512)
    with pytest.raises(InvalidArgument, match="whole number"):
        space.reserve("c", 100)
    assert space.release("a") and not space.release("a")
    assert space.reserve("c", 3 * 512) == 4096  # first fit reuses the freed blocks
    space.release("b"), space.release("c")
    assert space.free_bytes() == space.capacity_bytes


def test_shm_notices_sync_exactly_the_written_bytes_and_match_the_w4a8_card(image, xclbin):
    """Transport shm into an xrt card: the sender writes the host staging segment, each notice makes the worker
    bo.write + bo.sync exactly those bytes (inside the request's region), and decode equals the W4A8 card."""
    from kv_plane.kv_layout import KvRegion, region_view

    card = XrtCard(image, standin, "0", xclbin, HBM, tag="xrt-test")
    try:
        model, emu = tiny_llama(), W4A8EmulatedCard(image, HBM)
        ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(5))
        prompt = 37  # two whole blocks and a partial one
        for backend in (card, emu):
            backend.reserve("r", 40)
        where = card.placement("r")
        memory = card.kv_memory()
        staging = KvRegion(where.plan, torch.float16,
                           region_view(memory.memory, memory.channel_bytes, where.kv_offset, where.plan, torch.float16))
        mark = len(card.device.calls)
        for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :prompt])):
            emu.write_kv("r", layer, 0, key, value)
            staging.write(layer, 0, key[:, :, :20], value[:, :, :20])  # what a sender on this host does
            card.mark_written("r", layer, 0, 20)
            staging.write(layer, 20, key[:, :, 20:], value[:, :, 20:])
            card.mark_written("r", layer, 20, prompt - 20)
        with pytest.raises(InvalidArgument, match="overlap"):
            card.mark_written("r", 0, 10, 5)
        with pytest.raises(InvalidArgument, match="outside"):
            card.mark_written("r", 0, 30, 100)
        syncs = [c for c in card.device.calls[mark:] if c[0] == "sync"]
        region = (where.kv_offset, where.kv_offset + where.plan.region_bytes_per_channel)
        assert all(region[0] <= c[4] and c[4] + c[3] <= region[1] for c in syncs)  # only inside the reservation
        d = image.dims
        assert sum(c[3] for c in syncs) == 2 * d.num_layers * d.kv_heads * prompt * d.head_dim * 2  # exactly these
        for backend in (card, emu):
            backend.seal("r", prompt)
        token_card = token_emu = int(ids[0, prompt])
        for position in range(prompt, 40):
            a, b = card.step("r", token_card, position), emu.step("r", token_emu, position)
            assert torch.equal(a, b)
            token_card = token_emu = int(torch.argmax(a))
    finally:
        card.staging.close()
