"""The smaller findings of issue #14, each a clear INVALID_ARGUMENT (or a quiet log) instead of INTERNAL or
a CPU burn: bounded stop strings and an incremental hold-back, an overflowing KV layer shape, a first token
outside the vocabulary on an FPGA Decode, NaN KV under sampling, and no ERROR traceback for a TransferKV
its caller cancelled."""

from __future__ import annotations

import logging
import time

import grpc
import pytest
import torch

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.scheduler.detokenizer import Detokenizer
from glitches.scheduler.orchestrator import MAX_STOP_CHARS, GenerateInput, ModelInfo, Orchestrator
from glitches.scheduler.settings import SchedulerSettings
from glitches.kv_plane import kv_wire
from glitches.services.generation import models
from glitches.services.runtime.channels import insecure_channel
from glitches.services.generation.decoding import decode_loop
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.runtime.grpc_server import start_server
from glitches.services.cluster.registry import Registry
from glitches.services.generation.sampling import Sampling
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL


def _chars(ids):
    return "".join(chr(ord("a") + i % 3) for i in ids)


def test_three_long_stop_strings_cost_little_per_token():
    stops = tuple("ab" * (MAX_STOP_CHARS // 2) for _ in range(3))
    detok = Detokenizer(_chars, stops)  # text "abcabc...": every 'a' starts a possible stop
    started = time.process_time()
    out = "".join(detok.add(i) for i in range(3000)) + detok.finish()
    assert time.process_time() - started < 5.0  # was O(text x stop length) per token: minutes
    assert out == _chars(range(3000))


def test_hold_back_and_stop_still_exact():
    text = "hello wor" + "ld and more"
    detok = Detokenizer(lambda ids: text[: len(ids)], ("world",))
    pieces = [detok.add(i) for i in range(len(text))]
    assert "".join(pieces) + detok.finish() == "hello "
    assert pieces[8] == ""  # "hello wor" holds back "wor"


@pytest.fixture(scope="module")
def orchestrator(tiny_source):
    tokenizer = models.load_tokenizer(tiny_source)
    model = ModelInfo(tiny_source.name, tokenizer, (0,), 2048)
    return Orchestrator(SchedulerSettings(redis_url=REDIS_URL), Registry(REDIS_URL, "glitches-unit-stop"), model)


def test_absurd_stop_strings_are_invalid_argument(orchestrator):
    for stop in (("x" * 1_000_000,) * 3, ("x",) * 17):
        request = GenerateInput("Hello", False, Sampling(max_new_tokens=4, stop=stop))
        with pytest.raises(InvalidArgument, match="stop strings"):
            orchestrator.validate(request)


def test_a_layer_shape_whose_element_count_overflows_is_invalid_argument():
    chunk = worker_pb2.KvLayerChunk(layer=0, dtype="float32", shape=[1, 2**32 - 1, 2**32 - 1, 2**32 - 1],
                                    key=b"\0" * 16, value=b"\0" * 16)
    with pytest.raises(InvalidArgument, match="needs"):
        kv_wire.decode_chunk(chunk)


def test_nan_kv_under_sampling_is_invalid_argument():
    nan_logits = torch.full((10,), float("nan"))
    steps = decode_loop(lambda token, pos: nan_logits, [1], 5, Sampling(temperature=0.8, max_new_tokens=4),
                        lambda ids: "")
    with pytest.raises(InvalidArgument, match="NaN"):
        next(steps)


@pytest.fixture(scope="module")
def fpga(tiny_source):
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    servicer = FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), "fpga-s", tiny_source.name, 1,
                                  vocab_size=card.model.config.vocab_size)
    server = start_server("127.0.0.1", 0, [(worker_pb2_grpc.add_WorkerServicer_to_server, servicer)],
                          ("glitches.v1.Worker",))
    yield worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{server.port}")), card
    server.stop(0)


def test_a_first_token_outside_the_vocabulary_is_invalid_argument(fpga):
    stub, _ = fpga
    with pytest.raises(grpc.RpcError) as info:
        list(stub.Decode(worker_pb2.DecodeRequest(request_id="v", first_token_id=2**31, position=3,
                                                  sampling=common_pb2.SamplingParams(max_new_tokens=4)), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "vocabulary" in info.value.details()


def test_a_cancelled_transfer_logs_no_error_traceback(fpga, caplog):
    stub, card = fpga
    header = worker_pb2.KvChunk(header=worker_pb2.KvHeader(request_id="c1", prompt_tokens=4, reserve_tokens=8,
                                                           num_layers=card.geometry().num_layers))

    def messages():
        yield header
        time.sleep(0.5)  # the call is cancelled while the worker waits for the next chunk
        yield header

    with caplog.at_level(logging.INFO, logger="glitches.services.runtime.error_interceptor"):
        call = stub.TransferKV.future(messages(), timeout=30)
        time.sleep(0.2)
        call.cancel()
        deadline = time.monotonic() + 5
        while card.active_requests() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
    assert card.active_requests() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
