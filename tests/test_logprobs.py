"""Logprob records where tokens are sampled (glitches/services/generation/logprobs.py, sampling.sample), ignore_eos and
min_tokens in the stop decision (glitches/services/generation/decoding.py) and in the detokenizer."""

from __future__ import annotations

import math

import torch

from glitches.scheduler.detokenizer import Detokenizer
from glitches.services.generation.decoding import Finish, finish_reason
from glitches.services.generation.logprobs import prompt_logprobs, token_logprob
from glitches.services.generation.sampling import Sampling, sample, sample_token


def _text(pieces: list[str]):
    return lambda ids: "".join(pieces[i] for i in ids)


def test_token_logprob_is_log_softmax_of_the_raw_logits_with_the_top_tokens():
    logits = torch.tensor([0.5, 3.0, -1.0, 2.0])
    record = token_logprob(logits, 3, top_n=2)
    expected = torch.log_softmax(logits, dim=-1)
    assert record.token_id == 3 and math.isclose(record.logprob, expected[3].item(), abs_tol=1e-6)
    assert [t for t, _ in record.top] == [1, 3]
    assert math.isclose(record.top[0][1], expected[1].item(), abs_tol=1e-6)
    assert token_logprob(logits, 0, top_n=99).top[-1][0] == 2  # top_n above the vocabulary: all of it


def test_sample_returns_the_same_token_as_sample_token_and_a_record_only_when_asked():
    logits = torch.randn(50, generator=torch.Generator().manual_seed(0))
    for s in (Sampling(temperature=0.0), Sampling(temperature=0.8, top_p=0.9, seed=4)):
        for index in range(5):
            token, record = sample(logits, s, index)
            assert token == sample_token(logits, s, index) and record is None
            token, record = sample(logits, Sampling(**{**s.__dict__, "logprobs": True, "top_logprobs": 3}), index)
            assert record.token_id == token and len(record.top) == 3
            # temperature does not change the reported distribution (raw logprobs)
            assert math.isclose(record.logprob, torch.log_softmax(logits, -1)[token].item(), abs_tol=1e-6)


def test_min_tokens_masks_eos_until_enough_tokens():
    logits = torch.tensor([0.0, 0.0, 9.0])  # EOS (2) is by far the most likely
    s = Sampling(eos_token_ids=(2,), min_tokens=2, logprobs=True)
    assert sample(logits, s, 0)[0] != 2 and sample(logits, s, 1)[0] != 2 and sample(logits, s, 2)[0] == 2
    token, record = sample(logits, s, 0)
    assert math.isclose(record.logprob, torch.log_softmax(logits, -1)[token].item(), abs_tol=1e-6)


def test_prompt_logprobs_score_each_token_after_the_first_from_the_row_before():
    logits = torch.randn(4, 10, generator=torch.Generator().manual_seed(1))  # [seq, vocab]
    prompt = [3, 7, 1, 5]
    records = prompt_logprobs(logits, prompt, top_n=1)
    expected = torch.log_softmax(logits, dim=-1)
    assert [r.token_id for r in records] == [7, 1, 5]
    for i, r in enumerate(records):
        assert math.isclose(r.logprob, expected[i, prompt[i + 1]].item(), abs_tol=1e-6)
        assert r.top[0][0] == expected[i].argmax().item()
    assert prompt_logprobs(logits, [3], top_n=1) == []


def test_ignore_eos_and_min_tokens_in_the_stop_decision():
    text = _text(["a", ".", "b", ".", "c", "<eos>"])
    assert finish_reason([0, 5], Sampling(eos_token_ids=(5,), max_new_tokens=9), text) is Finish.EOS
    assert finish_reason([0, 5], Sampling(eos_token_ids=(5,), max_new_tokens=9, ignore_eos=True), text) is None
    assert finish_reason([0, 5], Sampling(eos_token_ids=(5,), max_new_tokens=9, min_tokens=3), text) is None
    assert finish_reason([0, 1], Sampling(stop=(".",), max_new_tokens=9), text) is Finish.STOP
    # with min_tokens 4, the "." of token 1 never counts; the one of token 3 does (4 tokens exist)
    s = Sampling(stop=(".",), max_new_tokens=9, min_tokens=4)
    assert finish_reason([0, 1], s, text) is None
    assert finish_reason([0, 1, 2], s, text) is None
    assert finish_reason([0, 1, 2, 3], s, text) is Finish.STOP


def test_detokenizer_cuts_at_a_stop_string_only_after_min_tokens():
    pieces = ["a", ".", "b", ".", "c"]
    d = Detokenizer(_text(pieces), (".",), min_tokens=4)
    out = "".join(d.add(i) for i in range(4)) + d.finish()
    assert out == "a.b" and d.text == "a.b"
    plain = Detokenizer(_text(pieces), (".",))
    assert "".join(plain.add(i) for i in range(4)) + plain.finish() == "a"
