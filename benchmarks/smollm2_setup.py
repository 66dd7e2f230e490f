"""Shared setup for the FPGA-kernel benchmarks: SmolLM2 as transformers float32 and as a weight image."""

from __future__ import annotations

import time

import torch

from glitches.kv_plane.kv_layout import KvRegion
from glitches.fpga_worker.w4a8_kernel import DecodeKernel
from glitches.fpga_worker.weight_image import build_from_gguf
from glitches.services.generation.models import DEFAULT_MODEL, load_causal_lm, load_tokenizer, resolve_model

PROMPTS = [
    "The capital of France is",
    "Write a short poem about the sea.",
    "def fibonacci(n):",
    "Explain why the sky is blue in one sentence.",
    "List three uses of a paperclip:",
    "In 1969, the first humans",
    "The quick brown fox",
    "Translate to French: Good morning, how are you?",
]


def load_all():
    """(transformers model, tokenizer, W4A8 kernel, reference kernel, seconds to build the image)."""
    source = resolve_model(DEFAULT_MODEL)
    model = load_causal_lm(source, "cpu", "float32")
    tokenizer = load_tokenizer(source)
    start = time.perf_counter()
    image = build_from_gguf(source.gguf_file)
    build_s = time.perf_counter() - start
    w4a8 = DecodeKernel.from_image(image)
    reference = DecodeKernel.from_state_dict(model.config, model.state_dict())
    return model, tokenizer, w4a8, reference, build_s


@torch.inference_mode()
def prefill_into(model, kernel: DecodeKernel, prompt_ids: torch.Tensor, capacity: int) -> KvRegion:
    """Run transformers prefill on prompt_ids [1, seq] and write its KV into a new region, as the GPU would."""
    out = model(prompt_ids, use_cache=True)
    region = kernel.new_region(capacity)
    for layer, cached in enumerate(out.past_key_values.layers):
        region.write(layer, 0, cached.keys, cached.values)
    return region
