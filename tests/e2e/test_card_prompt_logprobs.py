"""`glitches up --prompt-logprobs-on card --fpga-numerics reference` (1 GPU + 1 emulated card, SmolLM2): a request
asking for prompt logprobs is scored and decoded by the card alone (no GPU prefill), its prompt logprobs equal
transformers' float32 log_softmax within 1e-3, and its greedy tokens and their logprobs equal the normal path's
(GPU prefill + the card's decode) on the same cluster."""

from __future__ import annotations

import uuid

import pytest

from glitches import Client
from glitches.services.generation import models
from tests.conftest import REDIS_URL
from tests.e2e.conftest import start_up, stop_up
from tests.e2e.logprob_reference import TOLERANCE, reference_logprobs

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # a cluster of its own: ~45 s on 2 cores
PROMPT = "Question: Which gas do plants take in from the air to make food?\nAnswer:"


@pytest.fixture(scope="module")
def card_scoring_cluster():
    models.resolve_model(models.DEFAULT_MODEL)
    proc, address = start_up(["--port", "0", "--redis-url", REDIS_URL, "--redis-prefix",
                              f"glitches-e2e-{uuid.uuid4().hex[:8]}", "--gpu-workers", "1", "--fpga-workers", "1",
                              "--fpga-numerics", "reference", "--prompt-logprobs-on", "card",
                              "--no-prefix-cache", "--no-kv-reuse"])
    client = Client(address, timeout_s=300)
    pids = [w.pid for w in client.status().workers]
    yield client
    client.close()
    stop_up(proc, pids)


def test_card_scores_the_prompt_like_transformers_and_decodes_like_the_normal_path(card_scoring_cluster, reference):
    client = card_scoring_cluster
    scored = client.generate(PROMPT, max_tokens=8, logprobs=True, top_logprobs=2, prompt_logprobs=True)
    assert scored.timings.serve_path == "card_prompt"
    assert scored.prefill_worker == "" and scored.decode_device == "fpga"
    ids = list(scored.prompt_token_ids)
    expected = reference_logprobs(reference, ids)  # [len(ids), vocab]
    assert [r.token_id for r in scored.prompt_logprobs] == ids[1:]
    worst = max(abs(r.logprob - expected[i, r.token_id].item()) for i, r in enumerate(scored.prompt_logprobs))
    assert worst < TOLERANCE
    assert all(r.top[0].token_id == int(expected[i].argmax()) for i, r in enumerate(scored.prompt_logprobs))

    normal = client.generate(PROMPT, max_tokens=8, logprobs=True, top_logprobs=2)  # GPU prefill, card decode
    assert normal.prefill_worker != "" and normal.timings.serve_path != "card_prompt"
    assert list(scored.token_ids) == list(normal.token_ids) == reference["generate"](ids, 8)[:len(normal.token_ids)]
    assert max(abs(a.logprob - b.logprob) for a, b in zip(scored.logprobs, normal.logprobs)) < TOLERANCE
