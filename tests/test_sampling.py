import torch

from glitches.services.generation.decoding import Finish, finish_reason
from glitches.services.generation.sampling import Sampling, sample_token


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 3.0, -1.0, 2.9])
    assert sample_token(logits, Sampling(temperature=0.0), 0) == 1


def test_seeded_sampling_depends_only_on_seed_and_index():
    logits = torch.randn(1000)
    s = Sampling(temperature=1.0, seed=7)
    assert [sample_token(logits, s, i) for i in range(20)] == [sample_token(logits, s, i) for i in range(20)]
    other = [sample_token(logits, Sampling(temperature=1.0, seed=8), i) for i in range(20)]
    assert other != [sample_token(logits, s, i) for i in range(20)]


def test_tiny_top_p_keeps_only_the_top_token():
    logits = torch.tensor([0.0, 5.0, 4.9, 1.0])
    s = Sampling(temperature=1.0, top_p=0.01, seed=3)
    assert {sample_token(logits, s, i) for i in range(50)} == {1}


def test_finish_reasons():
    text = lambda ids: "".join(map(str, ids))  # noqa: E731
    assert finish_reason([5, 2], Sampling(eos_token_ids=(2,), max_new_tokens=9), text) is Finish.EOS
    assert finish_reason([1, 2, 3], Sampling(stop=("23",), max_new_tokens=9), text) is Finish.STOP
    assert finish_reason([1, 2], Sampling(max_new_tokens=2), text) is Finish.LENGTH
    assert finish_reason([1], Sampling(max_new_tokens=2), text) is None
