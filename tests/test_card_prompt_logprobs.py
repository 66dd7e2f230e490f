"""Prompt logprobs scored by a card (Worker/DecodeFromHeld with sampling.prompt_logprobs) on real in-process
cards and a real GPU worker, tiny seeded Llama: the float reference card equals transformers' float32
log_softmax and the GPU's own prefill scores within 1e-3 (same first token); the W4A8 kernel in Python and its
C simulation give bit-identical scores; a card that holds the prompt still steps all of it; held KV and prompt
logprobs together are refused."""

from __future__ import annotations

import grpc
import pytest
import torch

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.services.generation import models
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from tests.e2e.logprob_reference import TOLERANCE
from tests.worker_helpers import serve_worker

HBM = 64 * 1024**2
SALT = b"tenant-a"
PROMPT = list(range(500, 530))  # 30 prompt tokens
TOP = 3


def _card(source, numerics: str):
    backend = (EmulatedCard(source, HBM) if numerics == "reference"
               else W4A8EmulatedCard.from_source(source, HBM, numerics=numerics))
    server, stub = serve_worker(FpgaWorkerServicer(backend, models.load_tokenizer(source), f"fpga-{numerics}",
                                                   source.name, 2))
    return backend, server, stub


@pytest.fixture(scope="module")
def cards(tiny_source):
    made = {numerics: _card(tiny_source, numerics) for numerics in ("reference", "w4a8", "csim")}
    yield {numerics: stub for numerics, (_, _, stub) in made.items()}
    for backend, server, _ in made.values():
        server.stop(0)
        backend.kv.close()


def _sampling(n: int, prompt_logprobs: bool = True) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_new_tokens=n, prompt_logprobs=prompt_logprobs, logprobs=True,
                                     top_logprobs=TOP)


def _scored(stub, rid: str, n: int = 4, min_held: int = 0):
    """(generated token ids, the first token's DecodeToken) of a DecodeFromHeld asking for prompt logprobs."""
    tokens = list(stub.DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(
        request_id=rid, prompt_token_ids=PROMPT, sampling=_sampling(n), cache_salt=SALT, min_held_tokens=min_held)))
    return [t.token_id for t in tokens], tokens[0]


def _as_table(records) -> list[tuple[int, float, list[tuple[int, float]]]]:
    return [(r.chosen.token_id, r.chosen.logprob, [(e.token_id, e.logprob) for e in r.top]) for r in records]


def test_reference_card_scores_the_prompt_as_transformers_and_gpu_prefill(cards, tiny_source):
    from transformers import AutoModelForCausalLM

    generated, first = _scored(cards["reference"], "ref-1")
    assert first.reused_prompt_tokens == 0
    scores = _as_table(first.prompt_logprobs)
    assert [token for token, _, _ in scores] == PROMPT[1:]  # one per prompt token after the first
    model = AutoModelForCausalLM.from_pretrained(tiny_source.path, torch_dtype=torch.float32).eval()
    with torch.inference_mode():
        expected = torch.log_softmax(model(torch.tensor([PROMPT])).logits[0].float(), dim=-1)  # [30, vocab]
    for position, (token, logprob, top) in enumerate(scores):
        assert abs(logprob - expected[position, token].item()) < TOLERANCE
        want_top = torch.topk(expected[position], TOP)
        assert [t for t, _ in top] == want_top.indices.tolist()
        assert all(abs(lp - want) < TOLERANCE for (_, lp), want in zip(top, want_top.values.tolist()))

    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path)), tiny_source)
    server, gpu = serve_worker(GpuWorkerServicer(engine, "gpu-t", tiny_source.name))
    try:
        prefill = gpu.Prefill(worker_pb2.PrefillRequest(request_id="gpu-1", prompt_token_ids=PROMPT,
                                                        sampling=_sampling(1)))
    finally:
        server.stop(0)
        engine.close()
    gpu_scores = _as_table(prefill.prompt_logprobs)
    assert [t for t, _, _ in gpu_scores] == [t for t, _, _ in scores]
    assert max(abs(a[1] - b[1]) for a, b in zip(gpu_scores, scores)) < TOLERANCE
    assert prefill.first_token_id == generated[0]


def test_w4a8_and_csim_cards_score_the_prompt_bit_identically(cards):
    w4a8_tokens, w4a8_first = _scored(cards["w4a8"], "w4a8-1", n=6)
    csim_tokens, csim_first = _scored(cards["csim"], "csim-1", n=6)
    assert len(w4a8_first.prompt_logprobs) == len(PROMPT) - 1
    assert _as_table(w4a8_first.prompt_logprobs) == _as_table(csim_first.prompt_logprobs)  # exact floats
    assert w4a8_tokens == csim_tokens


def test_a_card_holding_the_prompt_still_steps_all_of_it(cards):
    stub = cards["w4a8"]
    plain = list(stub.DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(  # kept as cache when it finishes
        request_id="keep-1", prompt_token_ids=PROMPT, sampling=_sampling(3, prompt_logprobs=False), cache_salt=SALT)))
    assert not plain[0].prompt_logprobs
    again = list(stub.DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(  # the whole prompt is held now
        request_id="keep-2", prompt_token_ids=PROMPT, sampling=_sampling(3, prompt_logprobs=False), cache_salt=SALT)))
    assert again[0].reused_prompt_tokens == len(PROMPT) - 1
    _, first = _scored(stub, "keep-3")
    assert first.reused_prompt_tokens == 0 and len(first.prompt_logprobs) == len(PROMPT) - 1
    with pytest.raises(grpc.RpcError) as info:
        _scored(stub, "keep-4", min_held=16)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
