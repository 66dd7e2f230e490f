"""glitches/services/cluster/worker_client.py: a failed worker call becomes the domain error the orchestrator acts on."""

from __future__ import annotations

import grpc
import pytest

from glitches.services.generation.decoding import Finish
from glitches.services.runtime.errors import (Cancelled, InvalidArgument, KvRefused, NotFound, ResourceExhausted, Unavailable,
                             WorkerFull, WorkerLost)
from glitches.services.cluster.registry import WorkerRecord
from glitches.services.generation.sampling import Sampling
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from glitches.services.cluster.worker_client import WorkerClient

GPU = WorkerRecord("g0", "gpu", "cpu", 1, "cpu", "gpu:1", 1, "m", 4, 0, 0, 0)
FPGA = WorkerRecord("f0", "fpga", "emu", 1, "emu", "fpga:1", 1, "m", 1, 0, 0, 0)


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str = "boom", trailing=()):
        self._code, self._details, self._trailing = code, details, trailing

    def code(self):
        return self._code

    def details(self):
        return self._details

    def trailing_metadata(self):
        return self._trailing


class FakeCall:
    """A unary callable (with .future) that answers or raises, and records what it was sent."""

    def __init__(self, answer=None, error: Exception | None = None):
        self.answer, self.error, self.sent, self.futures = answer, error, [], 0

    def __call__(self, message, timeout=None):
        self.sent.append(message)
        if self.error is not None:
            raise self.error
        return self.answer

    def future(self, message, timeout=None):
        self.futures += 1
        self.sent.append(message)


class FakeStream:
    """A Decode call: yields its messages, then raises `error` (if any)."""

    def __init__(self, messages, error=None):
        self.messages, self.error, self.cancelled = messages, error, False

    def __iter__(self):
        yield from self.messages
        if self.error is not None:
            raise self.error

    def cancel(self):
        self.cancelled = True


class FakeStub:
    def __init__(self, **calls):
        self.Prefill = calls.get("Prefill", FakeCall(worker_pb2.PrefillResponse()))
        self.Info = calls.get("Info", FakeCall(worker_pb2.InfoResponse()))
        self.Release = calls.get("Release", FakeCall(worker_pb2.ReleaseResponse()))
        self.Decode = calls.get("Decode", lambda message, timeout=None: FakeStream([]))


class FakeStubs:
    def __init__(self, by_address: dict[str, FakeStub]):
        self.by_address = by_address

    def get(self, address):
        return self.by_address[address]


def _client(gpu: FakeStub, fpga: FakeStub | None = None) -> WorkerClient:
    auth = lambda purpose, request_id, worker_id: f"{purpose}:{request_id}@{worker_id}"  # noqa: E731
    return WorkerClient(auth=auth, stubs=FakeStubs({"gpu:1": gpu, "fpga:1": fpga or FakeStub()}))


def _prefill(client, target=FPGA):
    return client.prefill(GPU, "r.0", [1, 2, 3], Sampling(max_new_tokens=4), [], target=target, kv_token="kv")


def test_a_prefill_carries_the_request_and_its_result_comes_back_typed():
    answer = worker_pb2.PrefillResponse(first_token_id=7, finish_reason=common_pb2.FINISH_REASON_EOS, kv_bytes=10,
                                        prefill_s=0.5, kv_transport="grpc", num_layers=2)
    call = FakeCall(answer)
    result = _prefill(_client(FakeStub(Prefill=call)))
    assert (result.first_token_id, result.finish, result.kv_bytes, result.kv_transport) == (7, Finish.EOS, 10, "grpc")
    assert result.first_logprob is None and result.prompt_logprobs == []
    [sent] = call.sent
    assert sent.target.worker_id == "f0" and sent.target.address == "fpga:1" and sent.target.kv_token == "kv"
    assert sent.auth_token == "prefill:r.0@g0" and list(sent.prompt_token_ids) == [1, 2, 3]


def test_gpu_assist_refused_is_worker_full_with_its_retry_hint():
    error = FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "no slot", (("retry-after-ms", "1500"),))
    with pytest.raises(WorkerFull) as caught:
        _prefill(_client(FakeStub(Prefill=FakeCall(error=error))), target=None)
    assert isinstance(caught.value, ResourceExhausted) and caught.value.retry_after_s == 1.5
    assert str(caught.value) == "prefill on g0 failed: no slot"


@pytest.mark.parametrize("code, words", [(grpc.StatusCode.RESOURCE_EXHAUSTED, "had no room for the KV"),
                                         (grpc.StatusCode.PERMISSION_DENIED, "refused the KV transfer")])
def test_a_decode_target_refusing_the_kv_is_kv_refused(code, words):
    with pytest.raises(KvRefused) as caught:
        _prefill(_client(FakeStub(Prefill=FakeCall(error=FakeRpcError(code)))))
    assert caught.value.worker_id == "f0" and caught.value.status_code == code and words in str(caught.value)


@pytest.mark.parametrize("gpu_answers, target, lost", [(True, FPGA, "f0"), (False, FPGA, "g0"), (True, None, "g0")])
def test_unavailable_in_prefill_names_the_worker_that_is_gone(gpu_answers, target, lost):
    info = FakeCall(worker_pb2.InfoResponse()) if gpu_answers else FakeCall(
        error=FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    stub = FakeStub(Prefill=FakeCall(error=FakeRpcError(grpc.StatusCode.UNAVAILABLE, "reset")), Info=info)
    with pytest.raises(WorkerLost) as caught:
        _prefill(_client(stub), target=target)
    assert caught.value.worker_id == lost and isinstance(caught.value, Unavailable)
    assert str(caught.value) == f"worker {lost} was lost during prefill (reset)"


def test_other_prefill_failures_keep_their_code_field_and_context():
    error = FakeRpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad schema", (("glitches-error-field", "response_format"),))
    with pytest.raises(InvalidArgument) as caught:
        _prefill(_client(FakeStub(Prefill=FakeCall(error=error))))
    assert caught.value.field == "response_format" and str(caught.value) == "prefill on g0 failed: bad schema"
    slow = FakeCall(error=FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED))
    with pytest.raises(Unavailable) as caught:  # the worker was slow: not the caller's own deadline
        _prefill(_client(FakeStub(Prefill=slow)))
    assert not isinstance(caught.value, WorkerLost)


def _token(token_id, finish=common_pb2.FINISH_REASON_UNSPECIFIED):
    return worker_pb2.DecodeToken(token_id=token_id, step_s=0.01, finish_reason=finish)


@pytest.mark.parametrize("code, expected", [(grpc.StatusCode.UNAVAILABLE, WorkerLost),
                                            (grpc.StatusCode.CANCELLED, Cancelled),
                                            (grpc.StatusCode.NOT_FOUND, NotFound)])
def test_a_decode_stream_yields_typed_steps_then_its_failure_as_a_domain_error(code, expected):
    stream = FakeStream([_token(5), _token(6)], FakeRpcError(code, "gone"))
    sent = []
    stub = FakeStub(Decode=lambda message, timeout=None: sent.append(message) or stream)
    decode = _client(FakeStub(), stub).decode(FPGA, "r.0", 4, 10, Sampling(max_new_tokens=4), [4], timeout_s=5)
    steps = []
    with pytest.raises(expected) as caught:
        for step in decode:
            steps.append(step)
    assert [s.token_id for s in steps] == [5, 6] and steps[0].finish is None
    assert "f0" in str(caught.value) and sent[0].auth_token == "decode:r.0@f0" and sent[0].position == 10
    if expected is WorkerLost:
        assert caught.value.worker_id == "f0"
    decode.cancel()
    assert stream.cancelled


def test_a_finished_decode_stream_says_why():
    stream = FakeStream([_token(5), _token(2, common_pb2.FINISH_REASON_EOS)])
    client = _client(FakeStub(), FakeStub(Decode=lambda message, timeout=None: stream))
    steps = list(client.decode(FPGA, "r.0", 4, 10, Sampling(max_new_tokens=4), [4], timeout_s=5))
    assert [s.finish for s in steps] == [None, Finish.EOS]


def test_release_failures_are_logged_not_raised_and_a_lost_worker_is_not_waited_for(caplog):
    release = FakeCall(error=FakeRpcError(grpc.StatusCode.UNAVAILABLE))
    client = _client(FakeStub(), FakeStub(Release=release))
    client.release(FPGA, "r.0")  # no exception
    assert "release of r.0 on f0 failed" in caplog.text
    client.release(FPGA, "r.1", wait=False)
    assert release.futures == 1 and release.sent[-1].auth_token == "release:r.1@f0"


def test_info_is_typed_and_a_silent_worker_is_lost():
    info = FakeCall(worker_pb2.InfoResponse(worker_id="f0", kind_name="fpga", roles=["decode"], decode_class=10,
                                            slots=2))
    client = _client(FakeStub(), FakeStub(Info=info))
    assert client.info(FPGA).roles == ("decode",) and client.info(FPGA).decode_class == 10
    assert client.answers(FPGA)
    silent = _client(FakeStub(), FakeStub(Info=FakeCall(error=FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED))))
    with pytest.raises(WorkerLost):
        silent.info(FPGA)
    assert not silent.answers(FPGA)


def test_a_card_without_room_to_extend_its_held_prefix_is_kv_refused_so_the_request_goes_elsewhere():
    """DecodeFromHeld answering RESOURCE_EXHAUSTED (its HBM too fragmented for the grown region) is a refusal of
    this card, as a full card refusing a KV transfer: the scheduler excludes it and places the request again."""
    stream = FakeStream([], FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "largest free region is 64 bytes"))
    card = FakeStub()
    card.DecodeFromHeld = lambda message, timeout=None: stream
    decode = _client(FakeStub(), card).decode_from_held(FPGA, "r.0", [1, 2, 3], Sampling(max_new_tokens=4), b"",
                                                         2, timeout_s=5)
    with pytest.raises(KvRefused) as caught:
        list(decode)
    assert caught.value.worker_id == "f0" and "largest free region" in str(caught.value)
