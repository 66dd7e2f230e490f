"""Greedy reference tokens with their logit margins, and the batching-tolerant comparison.

Batching reorders float summation, so a batched request's greedy tokens can part from the
reference only where the reference itself was nearly tied. `compare` accepts a result that equals
the reference, or that first differs at a position whose reference top-2 logit gap is below
`tolerance` (and then stops being compared: what follows is a different continuation).

TOLERANCE_FP32 = 1e-3: in float32, SmolLM2-135M's logits from the batched step loop (8 requests of
13-61 tokens in one packed step) differ from transformers' own forward of each prompt alone by at
most 5.1e-5 (measured; logits reach ~26), so a flip needs a reference gap below ~1e-4; 1e-3 leaves a
20x margin yet is far below the gaps of decided tokens (typically > 0.1).
tests/test_gpu_batching.py::test_batched_logits_stay_within_the_tolerance fails if the tiny test
model's batched logits drift past a tenth of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOLERANCE_FP32 = 1e-3
TOLERANCE_FP16 = 0.25  # float16 logits carry ~3 significant digits: |logit| ~ 20 -> steps of ~0.016, x16 margin


@dataclass(frozen=True)
class Reference:
    tokens: list[int]
    gaps: list[float]  # top-1 minus top-2 logit at each generated position


def greedy(model, prompt_ids: list[int], max_new_tokens: int, eos_ids=()) -> Reference:
    """transformers' generate(do_sample=False) for one prompt alone, with each step's top-2 gap; cut after EOS."""
    with torch.inference_mode():
        out = model.generate(torch.tensor([prompt_ids], device=model.device),
                             attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long, device=model.device),
                             do_sample=False, max_new_tokens=max_new_tokens, output_logits=True,
                             return_dict_in_generate=True)
    tokens = out.sequences[0, len(prompt_ids):].tolist()
    gaps = []
    for logits in out.logits:
        top2 = torch.topk(logits[0].float(), 2).values
        gaps.append(float(top2[0] - top2[1]))
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return Reference(tokens[: i + 1], gaps[: i + 1])
    return Reference(tokens, gaps)


def compare(got: list[int], ref: Reference, tolerance: float) -> str:
    """'exact' or 'near-tie at i (gap g)'; AssertionError when they differ where the reference was decided."""
    for i, (a, b) in enumerate(zip(got, ref.tokens)):
        if a != b:
            assert ref.gaps[i] < tolerance, (f"token {i}: got {a}, reference {b} with a top-2 gap of "
                                             f"{ref.gaps[i]:.4g} >= tolerance {tolerance}: {got} vs {ref.tokens}")
            return f"near-tie at {i} (gap {ref.gaps[i]:.3g})"
    assert len(got) == len(ref.tokens), f"lengths differ: {got} vs {ref.tokens}"
    return "exact"
