"""Transformers' own log-probabilities, the reference the gateway's logprobs and lm-eval's log-likelihoods are
compared with, and the tolerance (why 1e-3: tests/e2e/test_gateway_logprobs.py's docstring)."""

from __future__ import annotations

import torch

TOLERANCE = 1e-3  # absolute, nats; see tests/e2e/test_gateway_logprobs.py


def reference_logprobs(reference, ids: list[int]) -> torch.Tensor:
    """log_softmax [len(ids), vocab] float32 of transformers' forward over ids; row i predicts token i + 1."""
    with torch.inference_mode():
        logits = reference["model"](torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)
