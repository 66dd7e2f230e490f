"""The xrt backend against the REAL XRT library (Debian's libxrt1, 2.13) under its no-op shim: real xclbin
parsing of a generated metadata-only xclbin, real group ids, buffers and run states; each step computed by
the C-simulated kernel on the buffers' own bytes. Logits equal the W4A8 emulated card's (Python kernel) bit
for bit; a buffer in the wrong bank, a strided write, a missing XRT are clear errors.

Skips with the reason where XRT is missing; .ci/run sets GLITCHES_REQUIRE_XRT=1, which turns a skip into a
failure.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
import torch

from glitches.fpga_worker import xclbin_meta, xrt_banks, xrt_capi
from glitches.fpga_worker.abi import HBM_CHANNELS, KV_BLOCK_TOKENS
from glitches.fpga_worker.step_args import result_bytes
from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
from glitches.fpga_worker.weight_image import build_from_state_dict
from glitches.fpga_worker.xrt_backend import XrtCard
from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from tests.fpga_helpers import prefill_cache, tiny_llama
from tests.xrt_noop_env import REQUIRE_ENV, noop_environment, require_xrt

HBM = 32 * 1024 * 1024  # 1 MiB per pseudo-channel: room for the tiny image and a few KV regions


@pytest.fixture(scope="module")
def noop(tmp_path_factory):
    """XCL_EMULATION_MODE=noop and XILINX_XRT for this process (XRT reads them once), restored afterwards."""
    require_xrt()
    env = noop_environment(tmp_path_factory.mktemp("xilinx_xrt"))
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def xclbin(tmp_path_factory):
    return str(xclbin_meta.write_xclbin(tmp_path_factory.mktemp("xclbin") / "glitches_decode.xclbin"))


@pytest.fixture(scope="module")
def image():
    model = tiny_llama()
    return build_from_state_dict(model.config, model.state_dict())


@pytest.fixture(scope="module")
def card(noop, image, xclbin):
    card = XrtCard(image, "0", xclbin, HBM, tag="xrt-noop-test")
    yield card
    card.close()


def test_generated_xclbin_banks_follow_the_link_config(noop, xclbin):
    """XRT's own parser gives each argument the bank u280_link.cfg names: args/result DDR[0], hbm<p> HBM[p]."""
    tags = xclbin_meta.read_bank_tags(xclbin)
    device = xrt_capi.Device.open("0")
    kernel = xrt_capi.Kernel(device, device.load_xclbin(xclbin), "glitches_decode")
    try:
        banks = xclbin_meta.port_banks()
        assert [tags[kernel.group_id(arg)] for arg in range(len(xclbin_meta.PORTS))] == \
            [banks[port].tag for port in xclbin_meta.PORTS]
        assert tags[kernel.group_id(0)] == "DDR[0]" and tags[kernel.group_id(33)] == "DDR[0]"
        with pytest.raises(xrt_capi.XrtError, match="xrtPLKernelOpen"):
            xrt_capi.Kernel(device, device.load_xclbin(xclbin), "not_a_kernel")
    finally:
        kernel.close()
        device.close()


def test_tokens_equal_the_w4a8_card_under_the_real_runtime(card, image):
    """Same bits as the Python W4A8 kernel, hence the same greedy tokens, through XRT's real host path."""
    assert [bo.group for bo in card.buffers] == [card.kernel.group_id(a) for a in range(2 + HBM_CHANNELS)]
    assert [bo.size for bo in card.buffers] == [512] + [HBM // HBM_CHANNELS] * HBM_CHANNELS + \
        [result_bytes(image.dims.vocab)]
    emu = W4A8EmulatedCard(image, HBM, numerics="w4a8")
    model = tiny_llama()
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3))
    prompt = 37  # two whole blocks and a partial one
    for backend in (card, emu):
        backend.reserve("r", 40)
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :prompt])):
        for backend in (card, emu):
            backend.write_kv("r", layer, 0, key[:, :, :5], value[:, :, :5])  # chunks across a block edge
            backend.write_kv("r", layer, 5, key[:, :, 5:], value[:, :, 5:])
    tokens = {}
    for backend in (card, emu):
        backend.seal("r", prompt)
        token, out = int(ids[0, prompt]), []
        for position in range(prompt, 40):
            logits = backend.step("r", token, position)
            token = int(torch.argmax(logits))
            out.append((token, logits))
        tokens[backend] = out
    assert [t for t, _ in tokens[card]] == [t for t, _ in tokens[emu]]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(tokens[card], tokens[emu]))
    facts = card.facts()
    assert facts.emulated and "no-op shim" in facts.device_name and "emulated" in facts.device_name
    assert facts.extra["memory"].startswith("DDR[0], HBM[0]")
    assert card.sensors().power_w is None  # no card, nothing measured
    assert card.release("r") and card.active_requests() == []
    assert card.kv_free_bytes() == facts.kv_capacity_bytes


def test_kernel_status_errors(card):
    ids = torch.arange(4).view(1, 4)
    card.reserve("s", 8)
    for layer, (key, value) in enumerate(prefill_cache(tiny_llama(), ids)):
        card.write_kv("s", layer, 0, key, value)
    card.seal("s", 4)
    with pytest.raises(InvalidArgument, match="TOKEN_OUT_OF_RANGE"):
        card.step("s", 10**6, 4)
    with pytest.raises(ResourceExhausted, match="beyond"):
        card.step("s", 1, 600)
    card.release("s")


def test_a_buffer_in_the_wrong_bank_is_refused(card):
    """A buffer XRT really allocated in DDR[0] passed as hbm4: refused, naming the argument and both banks."""
    groups = [bo.group for bo in card.buffers]
    wrong = xrt_capi.Bo(card.device, 4096, card.kernel.group_id(0))
    try:
        groups[5] = wrong.group
        with pytest.raises(FailedPrecondition, match=r"argument 5 \(hbm4\) is connected to HBM\[4\] "
                                                     r"\(memory group 5\), but its buffer is in DDR\[0\]"):
            xrt_banks.check_buffers(card.kernel.group_id, groups, card.bank_tags)
    finally:
        wrong.close()


def test_an_xclbin_that_puts_args_outside_ddr_is_refused(noop, image, tmp_path):
    config = tmp_path / "plram.cfg"
    config.write_text(xclbin_meta.LINK_CONFIG.read_text().replace("sp=glitches_decode_1.hbm3:HBM[3]",
                                                                  "sp=glitches_decode_1.hbm3:DDR[0]"))
    path = tmp_path / "wrong.xclbin"
    path.write_bytes(xclbin_meta.build_xclbin(config, uuid.uuid4()))
    with pytest.raises(FailedPrecondition, match=r"argument 4 \(hbm3\) is connected to DDR\[0\].*wants HBM\[3\]"):
        XrtCard(image, "0", str(path), HBM)


def test_strided_writes_are_refused_not_written_wrong(card):
    bo = card.hbm[0]
    strided = np.arange(64, dtype=np.uint8)[::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        bo.write(strided, image_end := card.image.kv_base)
    bo.write(np.ascontiguousarray(strided), image_end)
    assert np.array_equal(bo.read(32, image_end), strided)
    with pytest.raises(ValueError, match="runs past"):
        bo.write(strided.copy(), bo.size - 8)


def test_missing_xrt_card_or_xclbin_is_a_clear_error(noop, image, xclbin, tmp_path, monkeypatch):
    with pytest.raises(InvalidArgument, match="--xclbin"):
        XrtCard(image, "0", xclbin + ".missing", HBM)
    not_xclbin = tmp_path / "junk.xclbin"
    not_xclbin.write_bytes(b"not an xclbin")
    with pytest.raises(InvalidArgument, match="not an xclbin"):
        XrtCard(image, "0", str(not_xclbin), HBM)
    monkeypatch.setenv("XILINX_XRT", str(tmp_path / "nowhere"))  # XRT itself would abort the process here
    with pytest.raises(FailedPrecondition, match="libxrt_noop.so.2 does not exist"):
        XrtCard(image, "0", xclbin, HBM)


def test_worker_start_without_xrt_fails_instead_of_emulating(tiny_source, monkeypatch):
    from glitches.fpga_worker import server
    from glitches.fpga_worker.settings import FpgaWorkerSettings

    monkeypatch.setattr(xrt_capi, "installed", lambda: "dlopen(libxrt_coreutil) failed: XRT is not installed")
    with pytest.raises(FailedPrecondition, match="needs XRT's library.*--backend emu"):
        server.build_backend(FpgaWorkerSettings(backend="xrt", xclbin="/nonexistent.xclbin"), tiny_source)


def test_the_c_api_binding_releases_the_gil_and_its_symbols_are_declared(noop):
    """ctypes.CDLL (not PyDLL) drops the GIL around every call; each function bound is exported by the installed
    library and declared in the installed headers (libxrt-dev, XRT 2.13); master's headers were checked by hand
    (docs/fpga-host.md)."""
    import ctypes
    import re
    from pathlib import Path

    lib = xrt_capi.library()
    assert isinstance(lib, ctypes.CDLL) and not isinstance(lib, ctypes.PyDLL)
    assert all(hasattr(lib, name) for name in xrt_capi.SYMBOLS)
    headers = Path("/usr/include/xrt/xrt")
    if not headers.is_dir():
        (pytest.fail if os.environ.get(REQUIRE_ENV) == "1" else pytest.skip)("XRT's headers (libxrt-dev) are missing")
    text = "".join(p.read_text() for p in headers.glob("xrt_*.h"))
    assert [s for s in xrt_capi.SYMBOLS if not re.search(rf"^{s}\(", text, re.M)] == []


def test_shm_notices_copy_exactly_the_written_bytes_and_match_the_w4a8_card(card, image):
    """Transport shm: a sender writes the host staging segment; each notice makes the worker write + sync those
    bytes into the XRT buffers (checked on the BOs' own bytes); decode equals the Python W4A8 card."""
    import ctypes

    from glitches.kv_plane.kv_layout import KvRegion, region_view

    emu = W4A8EmulatedCard(image, HBM, numerics="w4a8")
    model = tiny_llama()
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(5))
    prompt = 37
    for backend in (card, emu):
        backend.reserve("m", 40)
    where, memory = card.placement("m"), card.kv_memory()
    staging = KvRegion(where.plan, torch.float16,
                       region_view(memory.memory, memory.channel_bytes, where.kv_offset, where.plan, torch.float16))
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :prompt])):
        emu.write_kv("m", layer, 0, key, value)
        staging.write(layer, 0, key[:, :, :20], value[:, :, :20])  # what a sender on this host does
        card.mark_written("m", layer, 0, 20)
        staging.write(layer, 20, key[:, :, 20:], value[:, :, 20:])
        card.mark_written("m", layer, 20, prompt - 20)
    with pytest.raises(InvalidArgument, match="overlap"):
        card.mark_written("m", 0, 10, 5)
    with pytest.raises(InvalidArgument, match="outside"):
        card.mark_written("m", 0, 30, 100)
    staged = card.staging.memory.numpy().reshape(HBM_CHANNELS, card.channel_bytes)
    plan, row = where.plan, image.dims.head_dim * 2  # bytes of one token's K or V vector
    for layer in range(plan.num_layers):  # every noticed token's bytes, in the XRT buffer at its ABI address
        for head in range(plan.kv_heads):
            for kind in (0, 1):
                for first in range(0, prompt, KV_BLOCK_TOKENS):
                    pc, at = plan.address(where.kv_offset, layer, head, kind, first)
                    size = (min(prompt, first + KV_BLOCK_TOKENS) - first) * row
                    on_bo = np.frombuffer(ctypes.string_at(card.hbm[pc].host_address() + at, size), dtype=np.uint8)
                    assert np.array_equal(on_bo, staged[pc, at:at + size]) and on_bo.any()
    for backend in (card, emu):
        backend.seal("m", prompt)
    token = int(ids[0, prompt])
    for position in range(prompt, 40):
        a, b = card.step("m", token, position), emu.step("m", token, position)
        assert torch.equal(a, b)
        token = int(torch.argmax(a))
    assert card.release("m")


def test_xclbin_generator_layout_without_xrt(tmp_path):
    """The generated file's axlf fields (xclbin.h) and banks, read back without XRT; a link config missing a
    port's sp= line is refused by name."""
    import struct

    blob = xclbin_meta.build_xclbin(xclbin_meta.LINK_CONFIG, uuid.UUID(int=7))
    assert blob[:8] == b"xclbin2\0" and struct.unpack_from("<Q", blob, 304)[0] == len(blob)  # m_length
    assert blob[304 + 112: 304 + 128] == uuid.UUID(int=7).bytes  # the header's uuid field
    assert struct.unpack_from("<I", blob, 448)[0] == 4  # m_numSections
    path = tmp_path / "x.xclbin"
    path.write_bytes(blob)
    assert xclbin_meta.read_bank_tags(str(path)) == ["DDR[0]", *(f"HBM[{pc}]" for pc in range(HBM_CHANNELS))]
    config = tmp_path / "partial.cfg"
    config.write_text(xclbin_meta.LINK_CONFIG.read_text().replace("sp=glitches_decode_1.result:DDR[0]\n", ""))
    with pytest.raises(InvalidArgument, match=r"no sp= bank for kernel port\(s\) \['result'\]"):
        xclbin_meta.port_banks(config)
