"""lm-eval (EleutherAI's harness, `local-completions`, prompts sent as token ids) against a live
`glitches up --gateway-port` on the two tiny tasks shipped in tests/e2e/lm_eval_tasks/: a multiple-choice
loglikelihood task, whose per-choice log-likelihoods must equal transformers' own (float32, CPU) within
1e-3 absolute (why 1e-3: tests/e2e/test_gateway_logprobs.py), and a generate_until task with six stop
strings (plus the EOS text lm-eval adds), whose greedy answers must equal transformers' generate cut at
the first stop string. The tokenizer is the converted local model directory; no hub access."""

from __future__ import annotations

from pathlib import Path

import pytest

from glitches.services.generation import models
from tests.e2e.logprob_reference import TOLERANCE, reference_logprobs

pytestmark = pytest.mark.e2e
TASKS = Path(__file__).parent / "lm_eval_tasks"
MODEL_NAME = models.DEFAULT_MODEL


def _context_and_continuation(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's own split: the whole string's tokens, the context's count as context (trailing spaces move)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    n = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    return whole[:n], whole[n:]


def test_lm_eval_local_completions_matches_transformers(gateway_cluster, reference, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    source = models.resolve_model(models.DEFAULT_MODEL)
    out = simple_evaluate(
        model="local-completions",
        model_args=dict(model=MODEL_NAME, base_url=gateway_cluster["url"] + "/v1/completions",
                        tokenizer_backend="huggingface", tokenizer=str(source.path), num_concurrent=1,
                        max_retries=1),
        tasks=["glitches_tiny_mc", "glitches_tiny_gen"], task_manager=TaskManager(include_path=str(TASKS)),
        log_samples=True)
    tok = reference["tokenizer"]
    mc = out["samples"]["glitches_tiny_mc"]
    assert len(mc) == 4
    scored = 0
    for sample in mc:
        for (context, continuation), (loglikelihood, _greedy) in zip(sample["arguments"], sample["filtered_resps"]):
            ctx, cont = _context_and_continuation(tok, context, continuation)
            expected = reference_logprobs(reference, ctx + cont)
            want = sum(expected[len(ctx) + i - 1, t].item() for i, t in enumerate(cont))
            assert abs(loglikelihood - want) < TOLERANCE, (context, continuation, loglikelihood, want)
            scored += 1
    assert scored == 12
    assert out["results"]["glitches_tiny_mc"]["acc,none"] >= 0.5  # the model knows most of these
    gen = out["samples"]["glitches_tiny_gen"]
    assert len(gen) == 3
    for sample in gen:
        context, kwargs = sample["arguments"][0]
        assert len(kwargs["until"]) >= 5
        ids = tok(context)["input_ids"]
        text = tok.decode(reference["generate"](ids, kwargs["max_gen_toks"]), skip_special_tokens=True)
        cuts = [text.find(s) for s in kwargs["until"] if s in text]
        assert sample["filtered_resps"][0] == (text[: min(cuts)] if cuts else text)

