"""Log-probabilities of chosen tokens, computed where tokens are sampled (and in prefill for the prompt).

The distribution is log_softmax of the model's raw logits, float32: before temperature, top_p, the
min_tokens EOS mask or any other logits processing (vLLM's default, `raw_logprobs`). So a token's
logprob does not depend on how it was sampled, and greedy and sampled requests report the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLogprob:
    token_id: int
    logprob: float  # natural log of the token's probability
    top: tuple[tuple[int, float], ...] = ()  # (token id, logprob) of the most likely tokens, most likely first


def _records(log_probs: torch.Tensor, chosen: torch.Tensor, top_n: int) -> list[TokenLogprob]:
    """log_probs [n, vocab] float32, chosen [n] token ids -> one record per row."""
    picked = log_probs.gather(1, chosen.unsqueeze(1)).squeeze(1).tolist()  # [n]
    top_n = min(top_n, log_probs.shape[1])
    if top_n:
        values, ids = torch.topk(log_probs, top_n, dim=-1)  # [n, top_n], sorted descending
        tops = [tuple(zip(row_ids, row_values)) for row_ids, row_values in zip(ids.tolist(), values.tolist())]
    else:
        tops = [()] * len(picked)
    return [TokenLogprob(int(t), float(lp), top) for t, lp, top in zip(chosen.tolist(), picked, tops)]


def token_logprob(logits: torch.Tensor, token_id: int, top_n: int) -> TokenLogprob:
    """The record of `token_id` under logits [vocab] (any float dtype), with the top_n most likely tokens."""
    log_probs = torch.log_softmax(logits.float().cpu(), dim=-1).unsqueeze(0)  # [1, vocab]
    return _records(log_probs, torch.tensor([token_id]), top_n)[0]


def prompt_logprobs(logits: torch.Tensor, prompt: list[int], top_n: int) -> list[TokenLogprob]:
    """Records of prompt[1:], each scored by the logits of the position before it.

    logits: [len(prompt) or more, vocab], row i predicting token i + 1; rows past the prompt are ignored.
    The first prompt token has no record (nothing predicts it), as in OpenAI's and vLLM's echo.
    """
    n = len(prompt) - 1
    if n <= 0:
        return []
    log_probs = torch.log_softmax(logits[:n].float().cpu(), dim=-1)  # [n, vocab]
    return _records(log_probs, torch.tensor(prompt[1:]), top_n)
