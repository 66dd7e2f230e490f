"""The HBM weight image: ABI offsets, round trips, and exactness against the real SmolLM2 GGUF."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glitches.fpga_worker.abi import HBM_CHANNELS, HEADER_BYTES, TensorFormat
from glitches.fpga_worker.weight_image import build_from_state_dict, load_image
from glitches.services.runtime.errors import InvalidArgument
from tests.fpga_helpers import one_torch_thread, smollm2_image, tiny_llama

pytestmark = pytest.mark.usefixtures(one_torch_thread.__name__)


def test_header_round_trip_gives_same_dims_and_offsets():
    model = tiny_llama()
    image = build_from_state_dict(model.config, model.state_dict())
    reopened = load_image(image.channels)
    assert reopened.dims == image.dims
    assert reopened.entries == image.entries
    assert reopened.kv_base == image.kv_base and image.kv_base % 4096 == 0


def test_row_r_lives_in_channel_r_mod_32_at_the_documented_offset():
    model = tiny_llama()
    image = build_from_state_dict(model.config, model.state_dict())
    entry = image.entry("blk.1.ffn_gate")
    values, scales = image.planes("blk.1.ffn_gate")
    spec = entry.spec
    for row in (0, 1, 31, 32, 77, spec.rows - 1):
        pc, slot = row % HBM_CHANNELS, row // HBM_CHANNELS
        start = entry.offset + slot * spec.value_stride  # rows padded to 64 bytes (ABI v2)
        assert spec.value_stride % 64 == 0 and spec.scale_stride % 64 == 0
        assert np.array_equal(image.channels[pc, start: start + spec.qs_row_bytes], values[row])
        start = entry.scale_offset + slot * spec.scale_stride
        assert np.array_equal(image.channels[pc, start: start + spec.scale_row_bytes], scales[row])


def test_float_weights_are_quantized_round_to_nearest():
    model = tiny_llama()
    state = model.state_dict()
    image = build_from_state_dict(model.config, state)
    weight = state["model.layers.0.mlp.up_proj.weight"]
    got = image.dequantized("blk.0.ffn_up")
    groups = weight.view(weight.shape[0], -1, 32)
    low = groups.amin(-1, keepdim=True)
    step = (groups.amax(-1, keepdim=True) - low) / 15  # Q4_1 scale per group
    err = (got - weight).abs().view_as(groups)
    # half a step from rounding, plus float16 rounding of the stored scale (times q <= 15) and min
    assert (err <= step / 2 + (15 * step + low.abs()) * 2**-11 + 1e-7).all()
    assert torch.equal(image.vector("blk.0.attn_norm"), state["model.layers.0.input_layernorm.weight"])
    assert image.entry("token_embd").spec.fmt == TensorFormat.W8G32


def test_foreign_bytes_are_refused_with_a_clear_error():
    channels = np.zeros((HBM_CHANNELS, HEADER_BYTES), dtype=np.uint8)
    with pytest.raises(InvalidArgument, match="not a GLITCHES weight image"):
        load_image(channels)


def test_a_version_1_image_is_refused_naming_its_version():
    model = tiny_llama()
    channels = build_from_state_dict(model.config, model.state_dict()).channels.copy()
    channels[0, 4:8] = np.frombuffer(np.uint32(1).tobytes(), dtype=np.uint8)  # the v1 header's version field
    with pytest.raises(InvalidArgument, match="ABI version 1; .* version 2 only"):
        load_image(channels)


def test_header_fields_sit_at_their_natural_alignment():
    """The v2 header: f32 eps at 56, u64 kv_base at 64, records at 128 + 64 i (docs/fpga-kernel-abi.md)."""
    model = tiny_llama()
    image = build_from_state_dict(model.config, model.state_dict())
    head = image.channels[0, :HEADER_BYTES].tobytes()
    assert np.frombuffer(head, "<f4", 1, 56)[0] == np.float32(model.config.rms_norm_eps)
    assert np.frombuffer(head, "<u8", 1, 64)[0] == image.kv_base
    assert head[128:128 + 12] == b"rope_cos_sin"
    rope = image.vector("rope_cos_sin").view(image.dims.max_positions, image.dims.head_dim)
    assert rope[0, :8].eq(1).all() and rope[0, 8:].eq(0).all()


def test_smollm2_image_holds_the_gguf_weights_exactly():
    """Every tensor of the image dequantizes bit for bit to transformers' float32 weights of the same GGUF."""
    from safetensors import safe_open

    from glitches.fpga_worker.weight_image import _HF_LAYER_NAMES
    from glitches.services.generation.models import DEFAULT_MODEL, resolve_model

    image = smollm2_image()
    kinds = sorted(set(v for k, v in image.provenance.items() if k != "rope_cos_sin"))
    assert kinds == ["exact F32", "exact Q4_1", "exact Q8_0"], kinds  # nothing was re-rounded
    path = resolve_model(DEFAULT_MODEL).path / "model.safetensors"
    worst = 0.0
    with safe_open(str(path), framework="pt") as tensors:
        for name, entry in image.entries.items():
            if name == "rope_cos_sin":  # computed by the host, not a GGUF tensor
                continue
            parts = name.split(".")
            key = (f"model.layers.{parts[1]}.{_HF_LAYER_NAMES[parts[2]]}.weight" if parts[0] == "blk"
                   else {"output_norm": "model.norm.weight", "token_embd": "model.embed_tokens.weight"}[name])
            ours = image.vector(name) if entry.spec.fmt == TensorFormat.F32 else image.dequantized(name)
            worst = max(worst, (ours - tensors.get_tensor(key)).abs().max().item())
    assert worst == 0.0
