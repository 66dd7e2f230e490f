"""The software decode kernel: Llama math vs transformers, exact integer W4A8, KV layout, errors, SmolLM2 quality."""

from __future__ import annotations

import pytest
import torch

from glitches.fpga_worker.abi import KernelStatus
from glitches.kv_plane.kv_layout import K_KIND, V_KIND, KvPlan, KvRegion
from glitches.fpga_worker.w4a8_kernel import DecodeKernel, KernelError
import numpy as np

from glitches.fpga_worker.w4a8_ops import GroupQuantLinear, exp_f32, quantize_groups, sum16
from glitches.fpga_worker.weight_image import build_from_state_dict
from glitches.services.runtime.errors import InvalidArgument
from tests.fpga_helpers import one_torch_thread, prefill_cache, smollm2_image, tiny_llama

PROMPT, STEPS = 19, 13  # prompt tokens, decode steps: spans a 16-token KV block boundary

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


def _decode_logits(kernel, model, ids, chunk=7):
    """Prefill ids[:, :PROMPT] with transformers, write it in chunks, then step the rest; logits per step."""
    region = kernel.new_region(PROMPT + STEPS)
    for layer, (key, value) in enumerate(prefill_cache(model, ids[:, :PROMPT])):
        for start in range(0, PROMPT, chunk):
            region.write(layer, start, key[:, :, start: start + chunk], value[:, :, start: start + chunk])
    return torch.stack([kernel.step(region, int(ids[0, p]), p) for p in range(PROMPT, PROMPT + STEPS)])


@pytest.mark.parametrize("tied", [False, True])
def test_reference_numerics_match_transformers(tied):
    model = tiny_llama(tied)
    ids = torch.randint(0, model.config.vocab_size, (1, PROMPT + STEPS), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(ids).logits[0, PROMPT:]
    got = _decode_logits(DecodeKernel.from_state_dict(model.config, model.state_dict()), model, ids)
    assert (got - expected).abs().max().item() < 1e-4


def test_w4a8_integer_parts_are_exact_with_one_scale_per_group():
    gen = torch.Generator().manual_seed(2)
    q = torch.randint(0, 16, (40, 96), dtype=torch.int8, generator=gen)
    d, m = torch.rand(40, 3, generator=gen), torch.randn(40, 3, generator=gen)
    linear = GroupQuantLinear(q, d, m)
    x = (torch.randn(96, generator=gen) * torch.tensor([1.0, 30.0, 0.01]).repeat_interleave(32)).numpy()
    x_q, scale = quantize_groups(x)
    assert scale.shape == (3,) and (np.abs(x_q.reshape(3, 32)).max(1) == 127).all()  # each group uses its range
    acc, xsum = linear.integer_parts(x_q)
    want = (q.long().view(40, 3, 32) * torch.from_numpy(x_q).long().view(1, 3, 32)).sum(-1)
    assert torch.equal(torch.from_numpy(acc).long(), want)
    assert torch.equal(torch.from_numpy(xsum).long(), torch.from_numpy(x_q).long().view(3, 32).sum(-1))
    exact = ((d.double() * want.double() + m.double() * torch.from_numpy(xsum).double()) *
             torch.from_numpy(scale).double()).sum(1)
    assert torch.allclose(torch.from_numpy(linear(x)).double(), exact, rtol=1e-5, atol=1e-5)


def test_int16_activations_for_qkv_are_exact_integers():
    """The Q/K/V input is quantized to -32767..32767 per group; the integer parts stay exact in int32."""
    from glitches.fpga_worker.w4a8_ops import INT16_MAX

    gen = torch.Generator().manual_seed(8)
    q = torch.randint(0, 16, (24, 64), dtype=torch.int8, generator=gen)
    linear = GroupQuantLinear(q, torch.rand(24, 2, generator=gen), torch.randn(24, 2, generator=gen), qmax=INT16_MAX)
    x = torch.randn(64, generator=gen).numpy()
    x_q, scale = quantize_groups(x, INT16_MAX)
    assert x_q.dtype == np.int16 and (np.abs(x_q.reshape(2, 32)).max(1) == INT16_MAX).all()
    acc, xsum = linear.integer_parts(x_q)
    want = (q.long().view(24, 2, 32) * torch.from_numpy(x_q).long().view(1, 2, 32)).sum(-1)
    assert torch.equal(torch.from_numpy(acc).long(), want)
    # 16 bits track float activations closer than 8 bits do
    exact = linear.dequantized() @ x
    err16 = np.abs(linear(x) - exact).max()
    int8 = GroupQuantLinear(q, torch.from_numpy(linear.d), torch.from_numpy(linear.m))
    err8 = np.abs(int8(x) - exact).max()
    assert err16 < err8 / 20, (err16, err8)


def test_sum16_order_and_exp_polynomial():
    """sum16 is lanes by index mod 16 then a halving fold; exp_f32 stays within 3 ulp of exp on its range."""
    values = np.array([1e8, 1.0, -1e8] + [0.0] * 13 + [1.0], dtype=np.float32)
    # a plain left-to-right sum gives 0 here, sum16 gives 1; the lane order is what both kernels must follow
    lanes = np.zeros(16, np.float32)
    for i, v in enumerate(values):
        lanes[i % 16] += v
    for width in (8, 4, 2, 1):
        lanes[:width] += lanes[width: 2 * width]
    assert sum16(values) == lanes[0]
    x = np.linspace(-86, 88, 20001, dtype=np.float32)
    got, want = exp_f32(x).astype(np.float64), np.exp(x.astype(np.float64))
    assert (np.abs(got - want) / want).max() < 3 * 2.0**-23


def test_w4a8_tracks_reference_on_the_same_weights():
    """Only the INT8 activations and FP16 KV differ: the reference runs the image's dequantized weights."""
    model = tiny_llama()
    image = build_from_state_dict(model.config, model.state_dict())
    state = dict(model.state_dict())
    from glitches.fpga_worker.weight_image import _HF_LAYER_NAMES
    for layer in range(model.config.num_hidden_layers):
        for short, long in _HF_LAYER_NAMES.items():
            if "norm" not in short:
                state[f"model.layers.{layer}.{long}.weight"] = image.dequantized(f"blk.{layer}.{short}")
    state["model.embed_tokens.weight"] = image.dequantized("token_embd")
    state["lm_head.weight"] = image.dequantized("output")
    ids = torch.randint(0, 256, (1, PROMPT + STEPS), generator=torch.Generator().manual_seed(3))
    reference = _decode_logits(DecodeKernel.from_state_dict(model.config, state), model, ids)
    w4a8 = _decode_logits(DecodeKernel.from_image(image), model, ids)
    assert (w4a8 - reference).abs().mean().item() < 0.05 * reference.std().item()


def test_kv_address_points_at_the_bytes_the_region_holds():
    plan = KvPlan(num_layers=3, kv_heads=2, head_dim=16, capacity_tokens=600)
    region = KvRegion(plan)
    gen = torch.Generator().manual_seed(4)
    key, value = torch.randn(1, 2, 600, 16, generator=gen), torch.randn(1, 2, 600, 16, generator=gen)
    region.write(2, 0, key, value)
    raw, kv_offset = region.channel_bytes(), 1 << 20
    for head, kind, token in [(0, K_KIND, 0), (1, V_KIND, 15), (1, K_KIND, 16), (0, V_KIND, 511), (1, K_KIND, 599)]:
        pc, offset = plan.address(kv_offset, 2, head, kind, token)
        start = offset - kv_offset
        stored = raw[pc, start: start + 32].view(torch.float16)
        source = (key if kind == K_KIND else value)[0, head, token].half()
        assert torch.equal(stored, source)
    keys, values = region.read(2, 600)
    assert torch.equal(keys, key[0].half().float()) and torch.equal(values, value[0].half().float())


def test_bad_steps_and_writes_are_refused_with_status_codes():
    model = tiny_llama()
    kernel = DecodeKernel.from_state_dict(model.config, model.state_dict())
    region = kernel.new_region(8)
    with pytest.raises(KernelError) as err:
        kernel.step(region, 256, 0)
    assert err.value.status == KernelStatus.TOKEN_OUT_OF_RANGE
    with pytest.raises(KernelError) as err:
        kernel.step(region, 1, 8)
    assert err.value.status == KernelStatus.POSITION_OUT_OF_RANGE
    with pytest.raises(InvalidArgument, match="exceed the reserved 8-token"):
        region.write(0, 4, torch.zeros(1, 2, 5, 16), torch.zeros(1, 2, 5, 16))
    with pytest.raises(InvalidArgument, match="expected"):
        region.write(0, 0, torch.zeros(1, 3, 2, 16), torch.zeros(1, 3, 2, 16))


def test_each_step_records_its_load_instructions():
    model = tiny_llama()
    kernel = DecodeKernel.from_image(build_from_state_dict(model.config, model.state_dict()))
    region = kernel.new_region(40)
    kernel.step(region, 5, 0)
    first = kernel.last_program
    kernel.step(region, 6, 1)
    assert first.context == 1 and kernel.last_program.context == 2
    assert first.load_count > 0 and any(op.name == "lm_head" for op in first.operators)


def test_smollm2_w4a8_agrees_with_float32_on_real_text():
    """Real model, teacher-forced on transformers' greedy tokens; the one test that loads it in transformers."""
    from glitches.services.generation.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model

    source = resolve_model(DEFAULT_MODEL)
    model, tokenizer = load_causal_lm(source, "cpu", "float32"), load_tokenizer(source)
    prompt = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.inference_mode():
        ids = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=model.config.eos_token_id)
        expected = model(ids).logits[0, prompt.shape[1] - 1: -1]
    kernel = DecodeKernel.from_image(smollm2_image())
    region = kernel.new_region(ids.shape[1])
    for layer, (key, value) in enumerate(prefill_cache(model, prompt[:, :-1])):
        region.write(layer, 0, key, value)
    got = torch.stack([kernel.step(region, int(ids[0, p]), p) for p in range(prompt.shape[1] - 1, ids.shape[1] - 1)])
    agree = (got.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree >= 0.75, agree
    assert (got - expected).abs().mean().item() < 1.0
