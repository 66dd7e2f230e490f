"""GPU and FPGA worker servicers on real in-process gRPC servers, with a tiny random Llama."""

from __future__ import annotations

import grpc
import pytest
import torch

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.services.generation import models
from glitches.services.runtime.channels import insecure_channel
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from tests.worker_helpers import KV_END, greedy_tokens, kv_header, kv_layer, serve_worker, transfer


@pytest.fixture(scope="module")
def cluster(tiny_source):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path)), tiny_source)
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    gpu_server, gpu = serve_worker(GpuWorkerServicer(engine, "gpu-t", tiny_source.name))
    fpga_server, fpga = serve_worker(FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), "fpga-t",
                                                  tiny_source.name, 1))
    yield dict(engine=engine, card=card, gpu=gpu, fpga=fpga, fpga_address=f"127.0.0.1:{fpga_server.port}",
               fpga_server=fpga_server)
    gpu_server.stop(0)
    fpga_server.stop(0)
    engine.close()  # the step loop's thread


def _sampling(n):
    return common_pb2.SamplingParams(max_new_tokens=n)


def test_prefill_streams_kv_and_fpga_decode_matches_transformers(cluster):
    prompt = list(range(100, 140))
    target = worker_pb2.DecodeTarget(address=cluster["fpga_address"], worker_id="fpga-t")
    pre = cluster["gpu"].Prefill(worker_pb2.PrefillRequest(request_id="r1", prompt_token_ids=prompt,
                                                           sampling=_sampling(12), target=target))
    assert pre.kv_bytes == 2 * 2 * 2 * 16 * 4 * len(prompt)  # K+V, 2 layers, 2 kv heads, head_dim 16, float32
    assert pre.num_layers == 2
    tokens = [pre.first_token_id] + [t.token_id for t in cluster["fpga"].Decode(worker_pb2.DecodeRequest(
        request_id="r1", first_token_id=pre.first_token_id, position=len(prompt), sampling=_sampling(12)))]
    assert tokens == greedy_tokens(cluster["engine"], prompt, 12)
    assert cluster["card"].active_requests() == []  # decode end frees the KV


def test_gpu_assist_decode_matches_transformers(cluster):
    prompt = list(range(7, 30))
    pre = cluster["gpu"].Prefill(worker_pb2.PrefillRequest(request_id="r2", prompt_token_ids=prompt,
                                                           sampling=_sampling(10)))
    assert pre.kv_bytes == 0
    steps = cluster["gpu"].Decode(worker_pb2.DecodeRequest(request_id="r2", first_token_id=pre.first_token_id,
                                                           position=len(prompt), sampling=_sampling(10)))
    tokens = [pre.first_token_id] + [s.token_id for s in steps]
    assert tokens == greedy_tokens(cluster["engine"], prompt, 10)
    assert cluster["engine"].active_requests() == 0


@pytest.mark.parametrize("on_fpga", [True, False], ids=["fpga", "gpu-assist"])
def test_logprobs_from_prefill_and_decode_equal_the_models_own(cluster, on_fpga):
    """Prompt logprobs from prefill, the first token's from prefill, the rest from decode (FPGA emulator or
    GPU assist): each log_softmax of the model's raw logits over prompt + tokens, within 1e-4 (float32)."""
    prompt = list(range(200, 220))
    rid = f"lp-{on_fpga}"
    sampling = common_pb2.SamplingParams(max_new_tokens=6, temperature=0.7, seed=3, logprobs=True, top_logprobs=3,
                                         prompt_logprobs=True)
    target = worker_pb2.DecodeTarget(address=cluster["fpga_address"], worker_id="fpga-t") if on_fpga else None
    pre = cluster["gpu"].Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=sampling,
                                                           target=target))
    decoder = cluster["fpga"] if on_fpga else cluster["gpu"]
    steps = list(decoder.Decode(worker_pb2.DecodeRequest(request_id=rid, first_token_id=pre.first_token_id,
                                                         position=len(prompt), sampling=sampling)))
    tokens = [pre.first_token_id] + [s.token_id for s in steps]
    assert len(pre.prompt_logprobs) == len(prompt) - 1
    with torch.inference_mode():
        expected = torch.log_softmax(cluster["engine"].model(torch.tensor([prompt + tokens])).logits[0].float(), -1)
    records = [*pre.prompt_logprobs, pre.first_token_logprobs, *(s.logprobs for s in steps)]
    for position, record in enumerate(records, start=1):
        row = expected[position - 1]
        assert record.chosen.token_id == (prompt + tokens)[position]
        assert abs(record.chosen.logprob - row[record.chosen.token_id].item()) < 1e-4
        assert [e.token_id for e in record.top] == torch.topk(row, 3).indices.tolist()


_ENUM_SCHEMA = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}, "ok": {"type": "boolean"}},
                "required": ["color", "ok"], "additionalProperties": False}


@pytest.mark.parametrize("on_fpga, temperature", [(True, 0.0), (True, 0.9), (False, 0.0), (False, 0.9)])
def test_json_schema_is_enforced_at_prefill_and_every_decode_step(cluster, on_fpga, temperature):
    """The tiny random model would never write JSON by itself: every token here went through the mask."""
    import json

    import jsonschema

    rid = f"json-{on_fpga}-{temperature}"
    prompt = list(range(200, 220))
    sampling = common_pb2.SamplingParams(max_new_tokens=60, temperature=temperature, seed=3,
                                         response_format=common_pb2.RESPONSE_FORMAT_KIND_JSON_SCHEMA,
                                         json_schema=json.dumps(_ENUM_SCHEMA))
    target = (worker_pb2.DecodeTarget(address=cluster["fpga_address"], worker_id="fpga-t") if on_fpga
              else worker_pb2.DecodeTarget())
    pre = cluster["gpu"].Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt,
                                                           sampling=sampling, target=target))
    decoder = cluster["fpga"] if on_fpga else cluster["gpu"]
    steps = list(decoder.Decode(worker_pb2.DecodeRequest(request_id=rid, first_token_id=pre.first_token_id,
                                                         position=len(prompt), sampling=sampling)))
    tokens = [pre.first_token_id] + [s.token_id for s in steps]
    text = cluster["engine"].text_of(tokens)
    jsonschema.validate(json.loads(text), _ENUM_SCHEMA)
    assert steps[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert cluster["card"].active_requests() == [] and cluster["engine"].active_requests() == 0


def test_a_bad_schema_is_invalid_argument_at_the_worker(cluster):
    sampling = common_pb2.SamplingParams(max_new_tokens=4, response_format=common_pb2.RESPONSE_FORMAT_KIND_JSON_SCHEMA,
                                         json_schema="[not a schema")
    with pytest.raises(grpc.RpcError) as caught:
        cluster["gpu"].Prefill(worker_pb2.PrefillRequest(request_id="bad-schema", prompt_token_ids=[5, 6],
                                                         sampling=sampling))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("glitches-error-field", "response_format") in caught.value.trailing_metadata()


@pytest.mark.parametrize("messages, code", [
    ([kv_layer(0)], grpc.StatusCode.INVALID_ARGUMENT),  # no header
    ([kv_header(layers=3)], grpc.StatusCode.INVALID_ARGUMENT),  # wrong layer count
    ([kv_header(), kv_layer(5)], grpc.StatusCode.INVALID_ARGUMENT),  # layer out of range
    ([kv_header(), kv_layer(0, heads=3)], grpc.StatusCode.INVALID_ARGUMENT),  # wrong shape
    ([kv_header(), kv_layer(0, dtype=torch.float16)], grpc.StatusCode.OK),  # float16 is accepted and converted
    ([kv_header(), kv_layer(0, start=6)], grpc.StatusCode.INVALID_ARGUMENT),  # beyond the reserved tokens
    ([kv_header(), kv_layer(0), kv_layer(1), KV_END, KV_END], grpc.StatusCode.INVALID_ARGUMENT),  # second end marker
    ([kv_header(), kv_layer(0), KV_END], grpc.StatusCode.INVALID_ARGUMENT),  # layer 1 missing
    ([kv_header(), kv_header()], grpc.StatusCode.INVALID_ARGUMENT),  # second header
    ([kv_header(), kv_layer(0), kv_layer(1)], grpc.StatusCode.INVALID_ARGUMENT),  # no end marker
    ([kv_header(reserve=10**9)], grpc.StatusCode.RESOURCE_EXHAUSTED),  # does not fit in HBM
])
def test_bad_kv_streams_get_their_status_and_leak_nothing(cluster, messages, code):
    if code == grpc.StatusCode.OK:
        messages = messages + [kv_layer(1), KV_END]
        assert transfer(cluster["fpga"], messages).kv_bytes > 0
        assert cluster["fpga"].Release(worker_pb2.ReleaseRequest(request_id="bad")).released
    else:
        with pytest.raises(grpc.RpcError) as info:
            transfer(cluster["fpga"], messages)
        assert info.value.code() == code, info.value.details()
    assert cluster["card"].active_requests() == []
    # the card still serves a good stream afterwards
    transfer(cluster["fpga"], [kv_header(rid="good"), kv_layer(0), kv_layer(1), KV_END])
    assert cluster["fpga"].Release(worker_pb2.ReleaseRequest(request_id="good")).released


def test_prefill_refused_by_a_full_card_is_resource_exhausted(cluster):
    target = worker_pb2.DecodeTarget(address=cluster["fpga_address"], worker_id="fpga-t")
    huge = common_pb2.SamplingParams(max_new_tokens=400)
    small_card_free = cluster["card"].kv_free_bytes()
    assert small_card_free > 0
    space = cluster["card"].kv.space
    blocks, space.blocks_per_channel = space.blocks_per_channel, 1  # shrink the card's KV space to one block per PC
    try:
        with pytest.raises(grpc.RpcError) as info:
            cluster["gpu"].Prefill(worker_pb2.PrefillRequest(request_id="r3", prompt_token_ids=[1, 2, 3],
                                                             sampling=huge, target=target))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        space.blocks_per_channel = blocks
    assert cluster["card"].active_requests() == []


def test_decode_of_unknown_request_is_not_found(cluster):
    for stub in (cluster["gpu"], cluster["fpga"]):
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Decode(worker_pb2.DecodeRequest(request_id="nope", first_token_id=1, position=3,
                                                      sampling=_sampling(4))))
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_info_names_the_backend(cluster):
    info = cluster["fpga"].Info(worker_pb2.InfoRequest())
    assert info.backend == "emu" and info.emulated and "emulator" in info.device_name
    assert cluster["gpu"].Info(worker_pb2.InfoRequest()).kind == common_pb2.DEVICE_KIND_GPU


def test_health_and_reflection_are_served_and_drain_turns_not_serving(cluster):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = insecure_channel(cluster["fpga_address"])
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "glitches.v1.Worker"):
        assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
            health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    [reply] = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in reply.list_services_response.service}
    assert {"glitches.v1.Worker", "grpc.health.v1.Health"} <= names
    cluster["fpga_server"].set_serving(False)
    try:
        assert health.Check(health_pb2.HealthCheckRequest(service="glitches.v1.Worker")).status == \
            health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        cluster["fpga_server"].set_serving(True)
