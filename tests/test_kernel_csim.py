"""The decode kernel's source, C-simulated (glitches/fpga_worker/kernel/ built by `make setup`), against the Python kernel.

Under ABI v2 the two must agree bit for bit: same logits bits, same KV bytes written. Also: the
kernel's status codes, a paged block table, and the C++ testbench on golden vectors from Python.
"""

from __future__ import annotations

import copy
import subprocess

import numpy as np
import pytest
import torch

from glitches.fpga_worker import kernel_csim
from glitches.fpga_worker.abi import HBM_CHANNELS, KernelStatus
from glitches.fpga_worker.step_args import StepArgs, StepResult, result_bytes
from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
from glitches.fpga_worker.w4a8_kernel import KernelError
from glitches.fpga_worker.weight_image import build_from_state_dict
from glitches.services.runtime.errors import InvalidArgument
from tests.fpga_helpers import one_torch_thread, prefill_cache, tiny_llama

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)
TINY_HBM = 32 * 2 * 1024 * 1024  # 2 MiB per PC: the tiny image plus a few regions


def _decode(card, model, ids, prompt, steps, request="r"):
    """Prefill ids[:, :prompt] with transformers into the card, then step teacher-forced; logits per step."""
    card.reserve(request, prompt + steps)
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :prompt])):
        card.write_kv(request, layer, 0, key, value)
    card.seal(request, prompt)
    return torch.stack([card.step(request, int(ids[0, p]), p) for p in range(prompt, prompt + steps)])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


def test_library_was_built_for_the_host_abi():
    got = kernel_csim.constants()
    assert got["abi_version"] == 2 and got["pcs"] == HBM_CHANNELS and got["buffer_bytes"] == 32768


@pytest.mark.parametrize("tied", [False, True])
def test_csim_equals_the_python_kernel_bit_for_bit_on_a_tiny_model(tied):
    """64 steps after a 500-token prompt: crosses 16-token blocks and the 512-token page boundary."""
    model = tiny_llama(tied)
    config = copy.deepcopy(model.config)
    config.max_position_embeddings = 1024  # the image's RoPE table must reach past the 512-token page
    image = build_from_state_dict(config, model.state_dict())
    ids = torch.randint(0, 256, (1, 565), generator=torch.Generator().manual_seed(5))
    python = W4A8EmulatedCard(image, TINY_HBM, numerics="w4a8")
    csim = W4A8EmulatedCard(image, TINY_HBM, numerics="csim")
    assert csim.facts().extra["numerics"] == "csim" and "C-simulated" in csim.facts().device_name
    want, got = _decode(python, model, ids, 500, 64), _decode(csim, model, ids, 500, 64)
    assert _same_bits(want, got)
    # and the K/V the two kernels appended are the same bytes
    held_py, held_c = python.kv.get("r"), csim.kv.get("r")
    assert torch.equal(held_py.region.channel_bytes(), held_c.region.channel_bytes())


def test_csim_equals_the_python_kernel_bit_for_bit_on_smollm2():
    """The real model: 64 greedy steps of the Python kernel, the same tokens fed to the C simulation."""
    from glitches.services.generation.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model
    from tests.fpga_helpers import smollm2_image

    source = resolve_model(DEFAULT_MODEL)
    model, tokenizer = load_causal_lm(source, "cpu", "float32"), load_tokenizer(source)
    image = smollm2_image()
    hbm = HBM_CHANNELS * (image.kv_base + 4 * 1024 * 1024)
    python, csim = W4A8EmulatedCard(image, hbm, numerics="w4a8"), W4A8EmulatedCard(image, hbm, numerics="csim")
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    n = prompt.shape[1]
    for card in (python, csim):
        card.reserve("r", n + 64)
        for layer, (key, value) in enumerate(prefill_cache(model, prompt[:, :-1])):
            card.write_kv("r", layer, 0, key, value)
        card.seal("r", n - 1)
    token, equal = int(prompt[0, -1]), []
    for position in range(n - 1, n + 63):
        want, got = python.step("r", token, position), csim.step("r", token, position)
        equal.append(_same_bits(want, got))
        token = int(want.argmax())
    assert all(equal), f"{equal.count(False)} of 64 steps differ"


def _tiny_csim_card():
    model = tiny_llama()
    image = build_from_state_dict(model.config, model.state_dict())
    card = W4A8EmulatedCard(image, TINY_HBM, numerics="csim")
    ids = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(6))
    card.reserve("r", 40)
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :20])):
        card.write_kv("r", layer, 0, key, value)
    card.seal("r", 20)
    return model, image, card


def _raw_step(card, args: StepArgs) -> StepResult:
    return kernel_csim.step_on_memory(card.kv.segment.memory.data_ptr(), card.channel_bytes, args,
                                      card.image.dims.vocab)


def test_kernel_status_codes():
    _, image, card = _tiny_csim_card()
    held = card.kv.get("r")
    plan, offset, pc = held.region.plan, held.kv_offset, card.channel_bytes
    ok = StepArgs.for_region(3, 20, plan, offset, pc)
    assert _raw_step(card, ok).status == KernelStatus.OK
    cases = {
        KernelStatus.TOKEN_OUT_OF_RANGE: StepArgs.for_region(256, 20, plan, offset, pc),
        KernelStatus.POSITION_OUT_OF_RANGE: StepArgs.for_region(3, plan.capacity_tokens, plan, offset, pc),
        KernelStatus.KV_OUT_OF_BOUNDS: StepArgs(3, 20, 40, ok.kv_lane_stride, (image.kv_base - 4096,), pc),
    }
    for status, args in cases.items():
        assert _raw_step(card, args).status == status, status
    past_end = StepArgs(3, 20, 40, ok.kv_lane_stride, (pc - plan.region_bytes_per_channel + 64,), pc)
    assert _raw_step(card, past_end).status == KernelStatus.KV_OUT_OF_BOUNDS
    bad_version = bytearray(ok.pack())
    bad_version[0] = 1
    result = np.zeros(result_bytes(image.dims.vocab), np.uint8)
    pointers = [card.kv.segment.memory.data_ptr() + p * pc for p in range(HBM_CHANNELS)]
    assert kernel_csim.step_raw(bytes(bad_version), pointers, result) == KernelStatus.BAD_MODE
    with pytest.raises(KernelError) as err:
        card.step("r", 256, 20)
    assert err.value.status == KernelStatus.TOKEN_OUT_OF_RANGE


def test_a_version_1_image_in_hbm_is_bad_image():
    _, image, card = _tiny_csim_card()
    card.kv.segment.memory[4] = 1  # PC 0's header: the version field
    held = card.kv.get("r")
    args = StepArgs.for_region(3, 20, held.region.plan, held.kv_offset, card.channel_bytes)
    assert _raw_step(card, args).status == KernelStatus.BAD_IMAGE


def test_a_paged_block_table_gives_the_same_logits_as_the_contiguous_region():
    """Copy a request's KV into pages placed anywhere (lane stride = one block, pages out of order): the kernel
    addressed through that block table returns the same bits as through the emulator's contiguous region."""
    _, image, card = _tiny_csim_card()
    held = card.kv.get("r")
    plan, pc_bytes = held.region.plan, card.channel_bytes
    block, lanes = plan.block_bytes, plan.lanes
    memory = card.kv.segment.memory.view(HBM_CHANNELS, pc_bytes)
    page_bytes = lanes * block
    pages = [pc_bytes - 2 * page_bytes, pc_bytes - 4 * page_bytes]  # below the top, descending
    for page, start in enumerate(pages[: -(-plan.capacity_tokens // 512)]):
        for lane in range(lanes):
            src = held.kv_offset + (lane * plan.slots_per_lane + page) * block
            memory[:, start + lane * block: start + (lane + 1) * block] = memory[:, src: src + block]
    contiguous = _raw_step(card, StepArgs.for_region(7, 20, plan, held.kv_offset, pc_bytes))
    paged = _raw_step(card, StepArgs(7, 20, plan.capacity_tokens, block, tuple(pages[:1]), pc_bytes))
    assert contiguous.status == paged.status == KernelStatus.OK
    assert np.array_equal(contiguous.logits.view(np.uint32), paged.logits.view(np.uint32))
    # and the new token's K/V went to the same bytes of each layout: block 1 of every lane, row 4 (position 20)
    row = (20 % 16) * plan.head_dim * 2
    for lane in range(lanes):
        pc = (lane + 1) % HBM_CHANNELS
        src = held.kv_offset + lane * plan.slots_per_lane * block + row
        dst = pages[0] + lane * block + row
        written = memory[pc, src: src + 2 * plan.head_dim]
        assert written.any() and torch.equal(written, memory[pc, dst: dst + 2 * plan.head_dim]), lane


def test_step_args_refuse_a_table_longer_than_the_abi():
    with pytest.raises(InvalidArgument, match="block table of 16"):
        StepArgs(0, 0, 1, 2048, tuple(range(17)), 1 << 20).pack()


def test_cpp_testbench_matches_golden_vectors(tmp_path):
    """Golden vectors from the Python kernel; the C++ testbench (compiled here with g++) runs the kernel source."""
    model = tiny_llama()
    image = build_from_state_dict(model.config, model.state_dict())
    python = W4A8EmulatedCard(image, TINY_HBM, numerics="w4a8")
    ids = torch.randint(0, 256, (1, 60), generator=torch.Generator().manual_seed(7))
    python.reserve("r", 60)
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :40])):
        python.write_kv("r", layer, 0, key, value)
    python.seal("r", 40)
    memory = python.kv.segment.memory.view(HBM_CHANNELS, python.channel_bytes).clone()
    memory[:, : image.kv_base] = torch.from_numpy(image.channels)  # the Python kernel reads weights from its copy
    (tmp_path / "hbm.bin").write_bytes(memory.numpy().tobytes())
    held = python.kv.get("r")
    for i, position in enumerate(range(40, 56)):
        token = int(ids[0, position])
        logits = python.step("r", token, position).numpy()
        expected = StepResult(KernelStatus.OK, int(logits.argmax()), logits).pack(image.dims.vocab)
        args = StepArgs.for_region(token, position, held.region.plan, held.kv_offset, python.channel_bytes)
        (tmp_path / f"args_{i}.bin").write_bytes(args.pack())
        (tmp_path / f"expected_{i}.bin").write_bytes(expected)
    (tmp_path / "steps.txt").write_text(f"{python.channel_bytes} 16 {image.dims.vocab}\n")
    subprocess.run(["make", "-s", "-C", str(kernel_csim.KERNEL_DIR), "testbench"], check=True, timeout=300)
    run = subprocess.run([str(kernel_csim.KERNEL_DIR / "build" / "testbench"), str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("PASS 16 steps"), run.stdout + run.stderr


@pytest.mark.parametrize("model_name", ["tiny", "smollm2"])
def test_timing_model_counts_the_bursts_the_kernel_source_issues(model_name):
    """glitches/fpga_worker/instruction_stream.kernel_bursts == the C-simulated kernel's own burst counters, per stream and
    PC, and step_program's busiest-PC totals are what those bursts give (the timing model describes this kernel)."""
    from glitches.fpga_worker.instruction_stream import STREAMS, kernel_bursts, step_program

    if model_name == "tiny":
        model, image, card = _tiny_csim_card()
        position = 20
    else:
        from tests.fpga_helpers import smollm2_image

        image = smollm2_image()
        card = W4A8EmulatedCard(image, HBM_CHANNELS * (image.kv_base + 4 * 1024 * 1024), numerics="csim")
        card.reserve("r", 700)
        card.kv.mark_written("r", 0, 0, 1)  # zero KV is fine for counting; only the addresses matter
        position = 600
    held = card.kv.get("r")
    kernel_csim.bursts()  # zero the counters
    args = StepArgs.for_region(77, position, held.region.plan, held.kv_offset, card.channel_bytes)
    assert _raw_step(card, args).status == KernelStatus.OK
    counts, sizes = kernel_csim.bursts()
    want_counts, want_sizes = kernel_bursts(image.dims, position + 1, 77, kernel_csim.constants()["prefetch_ratio"])
    for row, stream in enumerate(STREAMS):
        assert np.array_equal(counts[row], want_counts[row]), stream
        assert np.array_equal(sizes[row], want_sizes[row]), stream
    program = step_program(image.dims, position + 1, kernel_csim.constants()["prefetch_ratio"])
    other_pc = (77 + 1) % HBM_CHANNELS  # neither the embedding row's PC (77 % 32) nor the RoPE row's
    for stream in ("values", "scales", "vector"):  # every PC issues these alike; step_program lists one PC's
        modeled = sum(ld.count for op in program.operators for ld in op.loads
                      if ld.stream == stream and op.name != "embedding")
        assert counts[STREAMS.index(stream), other_pc] == modeled, stream


def test_a_missing_library_is_a_clear_failed_precondition(monkeypatch, tmp_path):
    from glitches.services.runtime.errors import FailedPrecondition

    monkeypatch.setattr(kernel_csim, "LIBRARY", tmp_path / "libglitches_csim.so")
    monkeypatch.setattr(kernel_csim, "_library", None)
    monkeypatch.setenv("GLITCHES_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no g++ to build it on first use (tests/test_kernel_build.py)
    with pytest.raises(FailedPrecondition, match="run `make setup`"):
        kernel_csim.library()
