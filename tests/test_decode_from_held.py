"""Worker/DecodeFromHeld on a real in-process card (emu reference, W4A8 and csim numerics) beside a real GPU worker:
a 2-turn conversation's second turn served from the KV the card kept equals the normal path (prefill KV
transferred + Decode), and prefixes the card does not hold (wrong ids, another salt, evicted) are refused."""

from __future__ import annotations

import grpc
import pytest

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.services.generation import models
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from tests.worker_helpers import serve_worker

HBM = 64 * 1024**2
SALT = b"tenant-a"
TURN1 = list(range(100, 140))  # 40 prompt tokens
USER2 = list(range(300, 310))  # the second turn's new message


@pytest.fixture(scope="module")
def gpu(tiny_source):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path)), tiny_source)
    server, stub = serve_worker(GpuWorkerServicer(engine, "gpu-t", tiny_source.name))
    yield stub
    server.stop(0)
    engine.close()


@pytest.fixture(scope="module", params=["reference", "w4a8", "csim"])
def card(request, tiny_source):
    if request.param == "reference":
        backend = EmulatedCard(tiny_source, HBM)
    else:
        backend = W4A8EmulatedCard.from_source(tiny_source, HBM, numerics=request.param)
    server, stub = serve_worker(FpgaWorkerServicer(backend, models.load_tokenizer(tiny_source), "fpga-t",
                                                   tiny_source.name, 2))
    yield dict(backend=backend, stub=stub, address=f"127.0.0.1:{server.port}", source=tiny_source)
    server.stop(0)
    backend.kv.close()


def _sampling(n):
    return common_pb2.SamplingParams(max_new_tokens=n)


def _normal(gpu, card, rid, prompt, n, keep: bool):
    """Prefill on the GPU (KV streamed to the card), then Decode there; keep: the card may retain the KV."""
    target = worker_pb2.DecodeTarget(address=card["address"], worker_id="fpga-t")
    pre = gpu.Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=_sampling(n),
                                                target=target))
    decode = worker_pb2.DecodeRequest(request_id=rid, first_token_id=pre.first_token_id, position=len(prompt),
                                      sampling=_sampling(n), cache_salt=SALT,
                                      prompt_token_ids=prompt if keep else [])
    return [pre.first_token_id] + [t.token_id for t in card["stub"].Decode(decode)]


def _from_held(card, rid, prompt, n, min_held, salt=SALT):
    stream = card["stub"].DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=_sampling(n), cache_salt=salt, min_held_tokens=min_held))
    tokens = list(stream)
    return [t.token_id for t in tokens], tokens[0].reused_prompt_tokens


def _idle(backend):
    kv = backend.kv
    assert backend.active_requests() == [] and kv.ids() == []
    assert kv.free_now_bytes() + kv.evictable_bytes() == kv.capacity_bytes == backend.kv_free_bytes()


def test_second_turn_from_held_kv_equals_the_normal_path(gpu, card):
    backend = card["backend"]
    backend.kv.drop_retained()
    reply1 = _normal(gpu, card, "t1", TURN1, 12, keep=True)
    assert len(backend.kv.retained.keys()) == 1  # prompt + the 11 reply tokens the card stepped
    _idle(backend)
    turn2 = TURN1 + reply1 + USER2
    expected = _normal(gpu, card, "t2-normal", turn2, 10, keep=False)
    held_tokens = len(TURN1) + len(reply1) - 1  # the last reply token was sampled, never stepped
    tokens, reused = _from_held(card, "t2-held", turn2, 10, min_held=held_tokens)
    assert reused == held_tokens
    assert tokens == expected
    _idle(backend)
    # the card kept turn 2 as well (longer, the adopted region): turn 3 reuses all of it
    turn3 = turn2 + tokens + [7, 8, 9]
    _, reused3 = _from_held(card, "t3", turn3, 3, min_held=1)
    assert reused3 == len(turn2) + len(tokens) - 1
    _idle(backend)


def test_the_whole_prompt_on_the_card_equals_the_normal_path(gpu, card):
    backend = card["backend"]
    backend.kv.drop_retained()
    prompt = list(range(500, 530))
    expected = _normal(gpu, card, "n", prompt, 8, keep=False)
    tokens, reused = _from_held(card, "pure", prompt, 8, min_held=0)  # nothing held: the card computes it all
    assert reused == 0 and tokens == expected
    _idle(backend)


def test_a_prefix_the_card_does_not_hold_is_refused(gpu, card):
    backend = card["backend"]
    backend.kv.drop_retained()
    reply = _normal(gpu, card, "k", TURN1, 6, keep=True)
    held = len(TURN1) + len(reply) - 1
    wrong = TURN1[:20] + [TURN1[20] + 1] + TURN1[21:] + reply + USER2  # one id differs inside the held prefix
    for prompt, salt in ((wrong, SALT), (TURN1 + reply + USER2, b"tenant-b")):
        with pytest.raises(grpc.RpcError) as info:
            _from_held(card, "refused", prompt, 4, min_held=held, salt=salt)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "prefix no longer held" in info.value.details()
    _idle(backend)
    backend.kv.drop_retained()  # evicted (as under pressure): refused the same way
    with pytest.raises(grpc.RpcError) as info:
        _from_held(card, "evicted", TURN1 + reply + USER2, 4, min_held=held)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert backend.kv.free_now_bytes() == backend.kv.capacity_bytes
    _idle(backend)


def test_logprobs_and_a_json_schema_hold_on_the_held_path(gpu, card):
    """Seeded sampling with logprobs, then a JSON schema, from held KV: each logprob is the model's own
    log_softmax over prompt + tokens (within 1e-4), and every token went through the schema's mask."""
    import json

    import jsonschema
    import torch

    backend = card["backend"]
    if not isinstance(backend, EmulatedCard):
        pytest.skip("the reference numerics' float32 model is the logprob reference")
    backend.kv.drop_retained()
    reply = _normal(gpu, card, "lp1", TURN1, 5, keep=True)
    turn2 = TURN1 + reply + USER2
    sampling = common_pb2.SamplingParams(max_new_tokens=6, temperature=0.7, seed=3, logprobs=True, top_logprobs=3)
    steps = list(card["stub"].DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(
        request_id="lp2", prompt_token_ids=turn2, sampling=sampling, cache_salt=SALT, min_held_tokens=1)))
    assert steps[0].reused_prompt_tokens == len(TURN1) + len(reply) - 1 and steps[0].index == 0
    tokens = [s.token_id for s in steps]
    with torch.inference_mode():
        expected = torch.log_softmax(backend.model(torch.tensor([turn2 + tokens])).logits[0].float(), -1)
    for i, step in enumerate(steps):
        row = expected[len(turn2) - 1 + i]
        assert abs(step.logprobs.chosen.logprob - row[step.token_id].item()) < 1e-4
        assert [e.token_id for e in step.logprobs.top] == torch.topk(row, 3).indices.tolist()
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
              "additionalProperties": False}
    sampling = common_pb2.SamplingParams(max_new_tokens=40, json_schema=json.dumps(schema),
                                         response_format=common_pb2.RESPONSE_FORMAT_KIND_JSON_SCHEMA)
    steps = list(card["stub"].DecodeFromHeld(worker_pb2.DecodeFromHeldRequest(
        request_id="json", prompt_token_ids=turn2 + tokens + [5], sampling=sampling, cache_salt=SALT,
        min_held_tokens=1)))
    text = models.load_tokenizer(card["source"]).decode([s.token_id for s in steps], skip_special_tokens=True)
    jsonschema.validate(json.loads(text), schema)
    assert steps[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    _idle(backend)


def test_a_fully_held_prompt_still_steps_its_last_token(gpu, card):
    """The card holds every token of the prompt: it reuses all but the last, whose logits give token 0,
    so asking turn 1 again from held KV repeats turn 1's greedy reply."""
    backend = card["backend"]
    backend.kv.drop_retained()
    reply = _normal(gpu, card, "f1", TURN1, 6, keep=True)
    tokens, reused = _from_held(card, "f2", TURN1, 6, min_held=len(TURN1) - 1)
    assert reused == len(TURN1) - 1 and tokens == reply
    _idle(backend)
