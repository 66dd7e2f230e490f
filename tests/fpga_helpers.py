"""Shared, cached inputs for the FPGA-kernel tests: a tiny seeded Llama and the real SmolLM2 weight image."""

from __future__ import annotations

from functools import cache

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@cache
def tiny_llama(tied: bool = False) -> LlamaForCausalLM:
    """2 layers, hidden 64, 4 heads over 2 KV heads (GQA), vocab 256; seeded random weights."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=tied)
    return LlamaForCausalLM(config).eval()


@cache
def smollm2_image():
    """The real default model's weight image, built from its GGUF (about 4 s)."""
    from glitches.fpga_worker.weight_image import build_from_gguf
    from glitches.services.generation.models import default_gguf_path

    return build_from_gguf(default_gguf_path())


@torch.inference_mode()
def prefill_cache(model, ids: torch.Tensor):
    """transformers' KV for ids [1, seq]: a list over layers of (key, value) [1, kv_heads, seq, head_dim]."""
    out = model(ids, use_cache=True)
    return [(layer.keys, layer.values) for layer in out.past_key_values.layers]


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread: on a shared 2-core machine, 2 threads can thrash and take 5x longer."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
