"""The GPU worker's step log (glitches/gpu_worker/step_log.py): the ring, its JSON route on the HTTP side port,
and a real in-process GPU worker (tiny random Llama, registered in the real Redis) whose log holds the steps
that ran, with their composition."""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry

from glitches.gpu_worker.daemon import GpuDevice
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.gpu_worker.step_log import StepLog
from glitches.services.runtime.channels import insecure_channel
from glitches.services.runtime.http_side import HttpSide, Readiness
from glitches.services.runtime.worker_runtime import start_worker
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.worker_helpers import get


def _fill(log: StepLog, n: int) -> None:
    for i in range(n):
        log.add(10.0 + i, 10.5 + i, [7 + i, 9], [(4, 2)], 0.01, 0.4, 0.05)


def test_the_ring_keeps_the_last_steps_and_says_what_a_late_reader_missed():
    log = StepLog(capacity=3)
    assert log.since(0) == ([], 0) and log.last_seq == 0
    _fill(log, 5)
    steps, dropped = log.since(0)
    assert [s.seq for s in steps] == [3, 4, 5] and dropped == 2
    steps, dropped = log.since(3)
    assert [s.seq for s in steps] == [4, 5] and dropped == 0
    assert log.since(5) == ([], 0)
    assert [s.seq for s in log.since(2, limit=1)[0]] == [3]
    last = steps[-1]
    assert last.decode_contexts == (11, 9) and last.chunks == ((4, 2),)
    assert abs(last.step_s - 0.5) < 1e-9  # ended_s - started_s: the whole step
    doc = log.document(4)
    assert doc["last_seq"] == 5 and doc["capacity"] == 3 and doc["dropped"] == 0
    assert doc["steps"][0] | {"step_s": 0} == {"seq": 5, "started_s": 14.0, "ended_s": 14.5, "decode_contexts": (11, 9),
                                               "chunks": ((4, 2),), "schedule_s": 0.01, "forward_s": 0.4,
                                               "postprocess_s": 0.05, "streamed_chunks": 0, "step_s": 0}


def test_a_json_route_on_the_http_side_port():
    log = StepLog()
    _fill(log, 2)
    side = HttpSide("127.0.0.1", 0, CollectorRegistry(), Readiness())

    def route(query):
        return log.document(int(query.get("since", "0")))
    side.add_json_route("/steps", route)
    base = f"http://127.0.0.1:{side.port}"
    try:
        status, body = get(base + "/steps?since=1")
        assert status == 200
        doc = json.loads(body)
        assert [s["seq"] for s in doc["steps"]] == [2] and doc["steps"][0]["chunks"] == [[4, 2]]
        status, body = get(base + "/steps?since=x")
        assert status == 400 and "bad query" in body
        assert get(base + "/healthz") == (200, "ok\n")
    finally:
        side.stop()


def test_a_live_gpu_workers_log_holds_the_steps_that_ran(tiny_source, redis_prefix):
    """A 10-token prefill, then 4 tokens decoded on the GPU (3 decode steps after the prefill's first token):
    /steps shows one prefill step of 10 new tokens on an empty KV, then decode rows at contexts 10, 11, 12."""
    running = start_worker(GpuDevice(GpuWorkerSettings(model=str(tiny_source.path), redis_prefix=redis_prefix,
                                                       slots=2, kv_cache_gib=0.01)))
    base = f"http://{running.http.address}"
    try:
        before = json.loads(get(base + "/steps")[1])["last_seq"]
        stub = worker_pb2_grpc.WorkerStub(insecure_channel(running.address))
        prompt = list(range(20, 30))
        sampling = common_pb2.SamplingParams(max_new_tokens=4, ignore_eos=True)
        pre = stub.Prefill(worker_pb2.PrefillRequest(request_id="r1", prompt_token_ids=prompt, sampling=sampling))
        tokens = list(stub.Decode(worker_pb2.DecodeRequest(request_id="r1", first_token_id=pre.first_token_id,
                                                           position=len(prompt), sampling=sampling)))
        assert len(tokens) == 3
        status, body = get(base + f"/steps?since={before}")
        assert status == 200
        steps = json.loads(body)["steps"]
        assert [(s["chunks"], s["decode_contexts"]) for s in steps] == [
            ([[10, 0]], []), ([], [10]), ([], [11]), ([], [12])]
        for s in steps:
            assert 0 < s["forward_s"] <= s["step_s"] and s["started_s"] < s["ended_s"]
        assert get(base + "/steps?since=-1")[0] == 400
        assert len(json.loads(get(base + f"/steps?since={before}&limit=2")[1])["steps"]) == 2
    finally:
        running.drain(0)
        running.close()
        running.device.engine.close()
