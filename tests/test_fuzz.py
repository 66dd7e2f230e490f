"""Property-based fuzzing (hypothesis) of every RPC and every gateway route, on in-process servers
with the tiny random Llama: malformed and extreme inputs must get a well-formed error (a gRPC status
other than INTERNAL/UNKNOWN; an HTTP 4xx JSON body), never crash a daemon (a good request still
works afterwards) and never leak (no request held on the card or the GPU, Redis occupancy zero).

Run with `-s` to see how many cases each property ran (also in hypothesis' own statistics with
`--hypothesis-show-statistics`)."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import grpc
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gateway.app import Gateway, create_app
from glitches.gateway.chat import ChatTemplate
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.scheduler.orchestrator import ModelInfo, Orchestrator
from glitches.scheduler.server import SchedulerServicer
from glitches.scheduler.settings import SchedulerSettings
from glitches.services.generation import models
from glitches.services.runtime.channels import insecure_channel
from glitches.services.auth.kv_token import KvTokenIssuer, KvTokenVerifier
from glitches.services.cluster.registry import Heartbeat, Registry, WorkerRecord
from glitches.services.stubs.glitches.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc, worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL
from tests.worker_helpers import serve

CASES: Counter = Counter()  # property -> examples run
OUTCOMES: Counter = Counter()  # notable outcomes among those examples
BAD_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
def fuzz(examples: int):
    """`examples` cases per property, times GLITCHES_FUZZ_SCALE (default 1) for longer hunts."""
    return settings(max_examples=int(examples * float(os.environ.get("GLITCHES_FUZZ_SCALE", "1"))), deadline=None, suppress_health_check=list(HealthCheck), database=None)
INT32 = st.integers(-2**31, 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
HUGE = st.builds(lambda piece, n: piece * n, st.sampled_from(["ab ", "\u00e9", "\U0001f600", "\x00", "<|im_start|>"]),
                 st.integers(2000, 30000))  # hypothesis draws no text this long itself
TEXT = st.one_of(st.text(max_size=40), HUGE)
KV_SECRET = b"fuzz-kv-token-secret-0123456789"  # the FPGA worker takes KV only with tokens under it
TOKENS = KvTokenIssuer(KV_SECRET)
VALID = "VALID"  # stands for a fresh token for the message's request id, issued when the case runs
KV_TOKEN = st.one_of(st.just(VALID), st.just(""), st.text(max_size=12),
                     st.builds(lambda rid: TOKENS.issue(rid, "fpga-f"), st.sampled_from(["fz", "", "other"])))


def _with_token(request_id: str, token: str) -> str:
    return TOKENS.issue(request_id, "fpga-f") if token == VALID else token


@pytest.fixture(scope="module")
def daemons(tiny_source):
    prefix = f"glitches-fuzz-{time.monotonic_ns()}"
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path)), tiny_source)
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    tokenizer = models.load_tokenizer(tiny_source)
    gpu_servicer = GpuWorkerServicer(engine, "gpu-f", tiny_source.name)
    fpga_servicer = FpgaWorkerServicer(card, tokenizer, "fpga-f", tiny_source.name, 1, KvTokenVerifier(KV_SECRET))
    gpu_server = serve(gpu_servicer)
    fpga_server = serve(fpga_servicer)
    registry = Registry(REDIS_URL, prefix)
    beats = []
    for servicer, server, kind in ((gpu_servicer, gpu_server, "gpu"), (fpga_servicer, fpga_server, "fpga")):
        def record(servicer=servicer, server=server, kind=kind):
            info = servicer.info()
            return WorkerRecord(worker_id=info.worker_id, kind=kind, backend=info.backend, emulated=1,
                                device_name=info.device_name, address=f"127.0.0.1:{server.port}", pid=info.pid,
                                model=info.model, slots=info.slots, kv_capacity_bytes=info.kv_capacity_bytes,
                                kv_free_bytes=info.kv_free_bytes, kv_bytes_per_token=info.kv_bytes_per_token)
        beats.append(Heartbeat(registry, record, 0.5))
        beats[-1].start()
    settings_ = SchedulerSettings(redis_prefix=prefix, model=str(tiny_source.path), max_new_tokens_limit=32,
                                  kv_token_secret=KV_SECRET)
    orchestrator = Orchestrator(settings_, registry, ModelInfo(tiny_source.name, tokenizer, (2,), 512))
    scheduler_server = serve(SchedulerServicer(orchestrator), scheduler_pb2_grpc.add_SchedulerServicer_to_server,
                             "glitches.v1.Scheduler")
    scheduler_address = f"127.0.0.1:{scheduler_server.port}"
    gateway = Gateway(scheduler_address, ChatTemplate(tokenizer), tiny_source.name)
    with TestClient(create_app(gateway), raise_server_exceptions=False) as http:
        yield dict(engine=engine, card=card, registry=registry, model=tiny_source.name, http=http,
                   gpu=worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{gpu_server.port}")),
                   fpga=worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{fpga_server.port}")),
                   fpga_address=f"127.0.0.1:{fpga_server.port}", orchestrator=orchestrator,
                   channels={"scheduler": insecure_channel(scheduler_address),
                             "gpu": insecure_channel(f"127.0.0.1:{gpu_server.port}"),
                             "fpga": insecure_channel(f"127.0.0.1:{fpga_server.port}")},
                   scheduler=scheduler_pb2_grpc.SchedulerStub(insecure_channel(scheduler_address)))
    for beat in beats:
        beat.stop()
    for server in (scheduler_server, gpu_server, fpga_server):
        server.stop(0)
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    print("\nfuzz cases run:", dict(CASES), "total", sum(CASES.values()), "; of them:", dict(OUTCOMES))


def _assert_no_leak(d, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        state = (d["registry"].occupancy(), d["registry"].claims(), d["card"].active_requests(),
                 d["engine"].active_requests(), d["orchestrator"].active)
        if state == ({}, {}, [], 0, 0) or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert state == ({}, {}, [], 0, 0), f"leaked: {state}"


def _expect_well_formed(call):
    """Run call(); an RpcError must carry a specific status, never INTERNAL/UNKNOWN."""
    try:
        return call()
    except grpc.RpcError as error:
        assert error.code() not in BAD_CODES, f"{error.code()}: {error.details()}"
        return error


def _good_generate(d):
    sampling = common_pb2.SamplingParams(max_new_tokens=3)
    final = list(d["scheduler"].Generate(scheduler_pb2.GenerateRequest(prompt="hello", sampling=sampling)))[-1]
    assert final.final.usage.completion_tokens == 3


# --- the scheduler ---------------------------------------------------------------------------------
SAMPLING = st.builds(
    lambda t, p, seed, n, stop, eos: common_pb2.SamplingParams(
        temperature=t, seed=seed, max_new_tokens=n, stop=stop, eos_token_ids=eos,
        **({} if p is None else {"top_p": p})),
    FLOATS, st.none() | FLOATS, UINT64, st.one_of(INT32, st.integers(1, 6)), st.lists(st.text(max_size=5), max_size=4),
    st.lists(UINT32, max_size=3))


@fuzz(120)
@given(prompt=TEXT, chat=st.booleans(), model=st.sampled_from(["", "tiny-llama", "other", "\x00"]),
       sampling=st.none() | SAMPLING)
def test_fuzz_scheduler_generate(daemons, prompt, chat, model, sampling):
    CASES["Scheduler.Generate"] += 1
    request = scheduler_pb2.GenerateRequest(prompt=prompt, chat=chat, model=model)
    if sampling is not None:
        request.sampling.CopyFrom(sampling)
    _expect_well_formed(lambda: list(daemons["scheduler"].Generate(request, timeout=60)))
    _assert_no_leak(daemons)
    assert daemons["scheduler"].Status(scheduler_pb2.StatusRequest()).model == daemons["model"]


def test_scheduler_still_serves_after_fuzzing(daemons):
    _good_generate(daemons)
    _assert_no_leak(daemons)


# --- the workers -----------------------------------------------------------------------------------
@fuzz(80)
@given(request_id=st.text(max_size=20), prompt=st.lists(st.one_of(UINT32, st.integers(0, 49151)), max_size=600),
       sampling=st.none() | SAMPLING, target=st.sampled_from(["", "fpga", "127.0.0.1:1"]), token=KV_TOKEN)
def test_fuzz_worker_prefill(daemons, request_id, prompt, sampling, target, token):
    CASES["Worker.Prefill"] += 1
    address = daemons["fpga_address"] if target == "fpga" else target
    request = worker_pb2.PrefillRequest(request_id=request_id, prompt_token_ids=prompt,
                                        target=worker_pb2.DecodeTarget(address=address, worker_id="x",
                                                                       kv_token=_with_token(request_id, token)))
    if sampling is not None:
        request.sampling.CopyFrom(sampling)
    _expect_well_formed(lambda: daemons["gpu"].Prefill(request, timeout=60))
    for stub in (daemons["gpu"], daemons["fpga"]):
        stub.Release(worker_pb2.ReleaseRequest(request_id=request_id))
    _assert_no_leak(daemons)


DTYPES = st.sampled_from(["float32", "float16", "bfloat16", "int8", "", "float64\x00"])
CHUNK = st.one_of(
    st.builds(lambda rid, p, r, n, token: worker_pb2.KvChunk(header=worker_pb2.KvHeader(
        request_id=rid, prompt_tokens=p, reserve_tokens=r, num_layers=n, kv_token=token)),
        st.sampled_from(["fz", ""]), st.one_of(UINT32, st.integers(0, 8)), st.one_of(UINT32, st.integers(0, 16)),
        st.one_of(UINT32, st.integers(0, 3)), KV_TOKEN),
    st.builds(lambda layer, start, dtype, shape, k, v: worker_pb2.KvChunk(layer=worker_pb2.KvLayerChunk(
        layer=layer, seq_start=start, dtype=dtype, shape=shape, key=k, value=v)),
        st.one_of(UINT32, st.integers(0, 2)), st.one_of(UINT32, st.integers(0, 4)), DTYPES,
        st.one_of(st.lists(UINT32, max_size=5), st.just([1, 2, 4, 16])), st.binary(max_size=1024),
        st.binary(max_size=1024)),
    st.builds(lambda n: worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=n)), st.one_of(UINT32, st.integers(0, 3))),
    st.just(worker_pb2.KvChunk()))


@fuzz(200)
@given(chunks=st.lists(CHUNK, max_size=8))
def test_fuzz_worker_transfer_kv(daemons, chunks):
    CASES["Worker.TransferKV"] += 1
    for chunk in chunks:
        if chunk.WhichOneof("body") == "header":
            chunk.header.kv_token = _with_token(chunk.header.request_id, chunk.header.kv_token)
    outcome = _expect_well_formed(lambda: daemons["fpga"].TransferKV(iter(chunks), timeout=30))
    OUTCOMES["TransferKV refused for its token"] += isinstance(outcome, grpc.RpcError) and \
        outcome.code() == grpc.StatusCode.PERMISSION_DENIED
    for rid in ("fz", ""):
        daemons["fpga"].Release(worker_pb2.ReleaseRequest(request_id=rid))
    _assert_no_leak(daemons)


@fuzz(80)
@given(worker=st.sampled_from(["gpu", "fpga"]), request_id=st.text(max_size=20), first=UINT32, position=UINT32,
       sampling=st.none() | SAMPLING, generated=st.lists(UINT32, max_size=5))
def test_fuzz_worker_decode_release_info(daemons, worker, request_id, first, position, sampling, generated):
    CASES["Worker.Decode/Release/Info"] += 1
    stub = daemons[worker]
    request = worker_pb2.DecodeRequest(request_id=request_id, first_token_id=first, position=position,
                                       generated_token_ids=generated)
    if sampling is not None:
        request.sampling.CopyFrom(sampling)
    _expect_well_formed(lambda: list(stub.Decode(request, timeout=30)))
    assert stub.Release(worker_pb2.ReleaseRequest(request_id=request_id)).released is False
    assert stub.Info(worker_pb2.InfoRequest()).model == daemons["model"]
    _assert_no_leak(daemons)


def test_workers_still_serve_after_fuzzing(daemons):
    prompt = list(range(100, 120))
    target = worker_pb2.DecodeTarget(address=daemons["fpga_address"], worker_id="fpga-f",
                                     kv_token=TOKENS.issue("ok", "fpga-f"))
    pre = daemons["gpu"].Prefill(worker_pb2.PrefillRequest(request_id="ok", prompt_token_ids=prompt,
                                                           sampling=common_pb2.SamplingParams(max_new_tokens=4),
                                                           target=target))
    steps = list(daemons["fpga"].Decode(worker_pb2.DecodeRequest(
        request_id="ok", first_token_id=pre.first_token_id, position=len(prompt),
        sampling=common_pb2.SamplingParams(max_new_tokens=4))))
    assert len(steps) == 3
    _assert_no_leak(daemons)


# --- the gateway -----------------------------------------------------------------------------------
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=30))
JSON_ANY = st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(max_size=8), inner, max_size=3), max_leaves=8)
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
          "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs", "echo", "tools", "ignore_eos",
          "min_tokens"]
GOOD = {"model": st.just("tiny-llama"),
        "prompt": st.one_of(st.text(max_size=50), HUGE), "max_tokens": st.integers(1, 4),
        "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                    "content": st.text(max_size=30)}), min_size=1, max_size=3),
        "max_completion_tokens": st.integers(1, 4), "temperature": st.floats(0, 2), "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}), "stop": st.text(max_size=3)}
BODY = st.fixed_dictionaries({}, optional={name: st.one_of(GOOD.get(name, JSON_ANY), JSON_ANY) for name in FIELDS})


def _check_http(reply) -> None:
    assert reply.status_code < 500, reply.text[:500]
    if reply.status_code >= 400:
        assert set(reply.json()["error"]) >= {"message", "type"}
    elif reply.headers["content-type"].startswith("text/event-stream"):
        assert reply.text.endswith("data: [DONE]\n\n")


@fuzz(150)
@given(route=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), body=BODY)
def test_fuzz_gateway_json(daemons, route, body):
    CASES["gateway JSON"] += 1
    _check_http(daemons["http"].post(route, json=body))
    _assert_no_leak(daemons)


@fuzz(100)
@given(route=st.sampled_from(["/v1/completions", "/v1/chat/completions", "/v1/models", "/v1/models/x",
                              "/healthz", "/v1/%ff", "/" + "a" * 5000]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
       raw=st.one_of(st.binary(max_size=300), st.just(b"\xff" * 100), st.just(b'{"model": "\xc3\x28"}'),
                     st.builds(lambda b: json.dumps(b).encode(), JSON_ANY)))
def test_fuzz_gateway_raw(daemons, route, method, raw):
    CASES["gateway raw bytes"] += 1
    _check_http(daemons["http"].request(method, route, content=raw, headers={"content-type": "application/json"}))
    _assert_no_leak(daemons)


def test_gateway_still_serves_after_fuzzing(daemons):
    reply = daemons["http"].post("/v1/completions", json={"model": "tiny-llama", "prompt": "hi", "max_tokens": 2})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] == 2
    _assert_no_leak(daemons)


# --- raw bytes as protobuf requests ----------------------------------------------------------------
RAW_METHODS = [  # (daemon, method, request type, kind: uu unary, us server-streaming, su client-streaming)
    ("scheduler", "/glitches.v1.Scheduler/Generate", scheduler_pb2.GenerateRequest, "us"),
    ("scheduler", "/glitches.v1.Scheduler/Status", scheduler_pb2.StatusRequest, "uu"),
    ("gpu", "/glitches.v1.Worker/Info", worker_pb2.InfoRequest, "uu"),
    ("gpu", "/glitches.v1.Worker/Prefill", worker_pb2.PrefillRequest, "uu"),
    ("gpu", "/glitches.v1.Worker/Decode", worker_pb2.DecodeRequest, "us"),
    ("fpga", "/glitches.v1.Worker/TransferKV", worker_pb2.KvChunk, "su"),
    ("fpga", "/glitches.v1.Worker/Decode", worker_pb2.DecodeRequest, "us"),
    ("fpga", "/glitches.v1.Worker/Release", worker_pb2.ReleaseRequest, "uu"),
]
RAW = st.one_of(st.binary(max_size=200), st.just(b"\x0a\x02\xc3\x28"), st.just(b"\x0a\x05ab"),
                st.builds(lambda s: b"\x0a" + bytes([len(s)]) + s, st.binary(max_size=100)))


def _request_ids(request_type, messages: list[bytes]) -> set[str]:
    """Request ids that random bytes happened to name when they parse (to release them afterwards)."""
    ids = set()
    for raw in messages:
        try:
            message = request_type.FromString(raw)
        except Exception:  # noqa: BLE001 - most random bytes do not parse
            continue
        if request_type is worker_pb2.KvChunk:
            ids.add(message.header.request_id)
        elif hasattr(message, "request_id"):
            ids.add(message.request_id)
    return ids


@fuzz(200)
@given(target=st.sampled_from(RAW_METHODS), messages=st.lists(RAW, min_size=1, max_size=3))
def test_fuzz_raw_bytes_on_every_rpc(daemons, target, messages):
    CASES["raw protobuf bytes"] += 1
    daemon, method, request_type, kind = target
    channel = daemons["channels"][daemon]
    if kind == "uu":
        _expect_well_formed(lambda: channel.unary_unary(method)(messages[0], timeout=30))
    elif kind == "us":
        _expect_well_formed(lambda: list(channel.unary_stream(method)(messages[0], timeout=30)))
    else:
        _expect_well_formed(lambda: channel.stream_unary(method)(iter(messages), timeout=30))
    for request_id in _request_ids(request_type, messages):
        for stub in (daemons["gpu"], daemons["fpga"]):
            stub.Release(worker_pb2.ReleaseRequest(request_id=request_id))
    _assert_no_leak(daemons)


# --- regressions the fuzzing found -------------------------------------------------------------------
def test_tiny_temperature_samples_instead_of_failing(daemons):
    """1e-40 (a float32 denormal) passed validation; logits / T overflowed to inf, softmax gave NaN (INTERNAL)."""
    sampling = common_pb2.SamplingParams(max_new_tokens=3, temperature=1e-40, seed=5)
    replies = list(daemons["scheduler"].Generate(scheduler_pb2.GenerateRequest(prompt="hi", sampling=sampling)))
    assert replies[-1].final.usage.completion_tokens == 3
    _assert_no_leak(daemons)


@pytest.mark.parametrize("temperature, top_p", [(float("nan"), 1.0), (-1.0, 1.0), (float("inf"), 1.0),
                                                (1.0, 0.0), (1.0, float("nan")), (1.0, 1.5)])
def test_workers_refuse_bad_sampling(daemons, temperature, top_p):
    """Worker RPCs are reachable without the scheduler's validation: they check sampling themselves."""
    sampling = common_pb2.SamplingParams(max_new_tokens=2, temperature=temperature, top_p=top_p)
    with pytest.raises(grpc.RpcError) as info:
        daemons["gpu"].Prefill(worker_pb2.PrefillRequest(request_id="bad-s", prompt_token_ids=[1, 2],
                                                         sampling=sampling))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for stub in (daemons["gpu"], daemons["fpga"]):
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Decode(worker_pb2.DecodeRequest(request_id="bad-s", first_token_id=1, position=2,
                                                      sampling=sampling)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _assert_no_leak(daemons)


def test_malformed_protobuf_is_invalid_argument(daemons):
    """grpc answers INTERNAL for a request it cannot parse; the error interceptor makes it INVALID_ARGUMENT."""
    call = daemons["channels"]["scheduler"].unary_stream("/glitches.v1.Scheduler/Generate")
    with pytest.raises(grpc.RpcError) as info:
        list(call(b"\x0a\x02\xc3\x28", timeout=10))  # prompt = 2 bytes that are not UTF-8
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in info.value.details()
