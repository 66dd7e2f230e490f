"""The GPU worker's step loop on real in-process gRPC servers (tiny random Llama): batched requests stay
correct, admission enforces slots and KV blocks, one cancel leaves the others alone."""

from __future__ import annotations

import concurrent.futures
import threading

import grpc
import pytest
import torch

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.gpu_worker.kv_pool import KvPool
from glitches.gpu_worker.packed_attention import PackedBatch, Segment
from glitches.gpu_worker.request_kv import RequestKv
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.services.runtime import metrics
from glitches.services.generation import models
from glitches.services.runtime.channels import insecure_channel
from glitches.services.runtime.errors import RETRY_AFTER_KEY
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.greedy_reference import TOLERANCE_FP32, compare, greedy
from tests.worker_helpers import serve_worker


def _node(tiny_source, **settings):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path), **settings), tiny_source)
    server, stub = serve_worker(GpuWorkerServicer(engine, "gpu-b", tiny_source.name))
    return engine, server, stub


@pytest.fixture(scope="module")
def node(tiny_source):
    """A GPU worker that chunks prompts past 24 tokens, with 8 GPU-assist slots, and an emulated card."""
    engine, gpu_server, gpu = _node(tiny_source, slots=8, max_batch_tokens=24, kv_cache_gib=0.01)
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    fpga_server, _ = serve_worker(FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), "fpga-b",
                                               tiny_source.name, 4))
    fpga = worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{fpga_server.port}"))
    yield dict(engine=engine, gpu=gpu, fpga=fpga, fpga_address=f"127.0.0.1:{fpga_server.port}", card=card)
    gpu_server.stop(0)
    fpga_server.stop(0)
    engine.close()


def _sampling(n, **kw):
    return common_pb2.SamplingParams(max_new_tokens=n, **kw)


def _generate(node, rid, prompt, n, on_fpga=False, **sampling):
    """Prefill on the GPU, then decode on the card or the GPU; every token, first included."""
    target = worker_pb2.DecodeTarget(address=node["fpga_address"], worker_id="fpga-b") if on_fpga else None
    pre = node["gpu"].Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, target=target,
                                                        sampling=_sampling(n, **sampling)))
    if pre.finish_reason:
        return [pre.first_token_id]
    decoder = node["fpga"] if on_fpga else node["gpu"]
    steps = decoder.Decode(worker_pb2.DecodeRequest(request_id=rid, first_token_id=pre.first_token_id,
                                                    position=len(prompt), sampling=_sampling(n, **sampling)))
    return [pre.first_token_id] + [s.token_id for s in steps]


def _batched_steps() -> int:
    """Steps so far that decoded more than one request together."""
    buckets = {s.labels["le"]: s.value for s in metrics.GPU_STEP_DECODES.collect()[0].samples
               if s.name.endswith("_bucket")}
    return int(buckets["+Inf"] - buckets["1.0"])


def test_concurrent_requests_of_different_lengths_match_generate(node):
    """10 requests at once, 3 to the card: each greedy result equals generate for its prompt alone, or
    parts from it only at a near-tie of the reference (tests/greedy_reference.py)."""
    prompts = [list(range(5 + i, 5 + i + length)) for i, length in enumerate((3, 9, 17, 30, 45, 60, 4, 80, 25, 12))]
    lengths = [12, 8, 16, 10, 14, 6, 20, 9, 11, 15]
    before = _batched_steps()
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        futures = [pool.submit(_generate, node, f"c{i}", p, n, i % 4 == 1)
                   for i, (p, n) in enumerate(zip(prompts, lengths))]
        results = [f.result(timeout=120) for f in futures]
    verdicts = [compare(got, greedy(node["engine"].model, p, n), TOLERANCE_FP32)
                for got, p, n in zip(results, prompts, lengths)]
    assert verdicts.count("exact") >= 8, verdicts
    assert _batched_steps() > before, "some steps should have decoded several requests together"
    assert node["engine"].active_requests() == 0
    assert node["engine"].pool.free_blocks == node["engine"].pool.total_blocks
    assert node["card"].active_requests() == []


def test_batched_logits_stay_within_the_tolerance(node):
    """Logits of 6 requests decoded in one packed step differ from each one's own pass by far less than
    the tolerance greedy comparisons allow."""
    engine = node["engine"]
    config = engine.config
    prompts = [list(range(3, 3 + n)) for n in (5, 11, 23, 40, 7, 64)]

    shared = KvPool(8 * 2 * len(prompts), engine.num_layers, config.num_key_value_heads, engine.head_dim,
                    torch.float32, "cpu")  # one pool, as the worker's: the decodes of a step attend batched

    def kv():
        return RequestKv(8, engine.num_layers, config.num_key_value_heads, engine.head_dim, torch.float32, "cpu",
                         shared)

    def step(items):
        ids, pos, segments, keep = [], [], [], []
        for cache, tokens, past in items:
            segments.append(Segment(cache, len(ids), len(tokens), past))
            ids += tokens
            pos += list(range(past, past + len(tokens)))
            keep.append(len(ids) - 1)
        with torch.inference_mode():
            out = engine.model(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), use_cache=False,
                               glitches_batch=PackedBatch(segments), logits_to_keep=torch.tensor(keep))
        return out.logits[0]

    alone, caches = [], []
    for p in prompts:
        cache = kv()
        step([(cache, p, 0)])
        caches.append(cache)
        alone.append(step([(cache, [7], len(p))])[0])
    batched_caches = [kv() for _ in prompts]
    step([(c, p, 0) for c, p in zip(batched_caches, prompts)])
    batch = PackedBatch([Segment(c, i, 1, len(p)) for i, (c, p) in enumerate(zip(batched_caches, prompts))])
    assert batch.decode_plan() is not None  # the batched decode attention (DecodePlan) runs, not the loop
    together = step([(c, [7], len(p)) for c, p in zip(batched_caches, prompts)])
    worst = max(float((a - b).abs().max()) for a, b in zip(alone, together))
    assert worst < TOLERANCE_FP32 / 10, worst


def test_per_request_sampling_inside_a_batch(node):
    """Seeded sampling, EOS and max tokens are each request's own: the same tokens batched as alone."""
    prompt = list(range(40, 60))
    alone = _generate(node, "s-alone", prompt, 12, temperature=0.8, top_p=0.9, seed=7)
    greedy_alone = _generate(node, "g-alone", list(range(60, 70)), 10)
    eos = greedy_alone[3]
    stop_at = greedy_alone.index(eos)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        sampled = pool.submit(_generate, node, "s-b", prompt, 12, temperature=0.8, top_p=0.9, seed=7)
        other = pool.submit(_generate, node, "o-b", prompt, 12, temperature=1.0, seed=8)
        ended = pool.submit(_generate, node, "e-b", list(range(60, 70)), 10, eos_token_ids=[eos])
        short = pool.submit(_generate, node, "m-b", list(range(60, 70)), 2)
        assert sampled.result(60) == alone
        assert len(other.result(60)) == 12
        assert ended.result(60) == greedy_alone[: stop_at + 1]
        assert short.result(60) == greedy_alone[:2]
    assert node["engine"].active_requests() == 0


def test_cancelling_one_decode_leaves_the_others_alone(node):
    prompts = [list(range(10, 10 + n)) for n in (6, 14, 22)]
    for i, p in enumerate(prompts):
        node["gpu"].Prefill(worker_pb2.PrefillRequest(request_id=f"x{i}", prompt_token_ids=p,
                                                      sampling=_sampling(40)))
    reference = [greedy(node["engine"].model, p, 40) for p in prompts]
    calls = [node["gpu"].Decode(worker_pb2.DecodeRequest(request_id=f"x{i}", first_token_id=reference[i].tokens[0],
                                                         position=len(p), sampling=_sampling(40)))
             for i, p in enumerate(prompts)]
    results: dict[int, list[int]] = {}

    def drain(i):
        results[i] = [reference[i].tokens[0]] + [s.token_id for s in calls[i]]

    threads = [threading.Thread(target=drain, args=(i,)) for i in (0, 2)]
    for t in threads:
        t.start()
    next(calls[1])
    calls[1].cancel()
    for t in threads:
        t.join(60)
    for i in (0, 2):
        assert compare(results[i], reference[i], TOLERANCE_FP32)
    engine = node["engine"]
    deadline = __import__("time").monotonic() + 2
    while engine.active_requests() and __import__("time").monotonic() < deadline:
        __import__("time").sleep(0.02)
    assert engine.active_requests() == 0
    assert engine.pool.free_blocks == engine.pool.total_blocks


def test_gpu_assist_admission_enforces_slots_and_kv_blocks(tiny_source):
    block_bytes = KV_BLOCK_TOKENS * 2 * 2 * 2 * 16 * 4  # 16 tokens x K+V x 2 layers x 2 kv heads x 16 x float32
    engine, server, gpu = _node(tiny_source, slots=2, kv_cache_gib=10 * block_bytes / 2**30)
    try:
        assert engine.pool.total_blocks == 10
        for rid in ("a", "b"):
            gpu.Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=[5] * 10, sampling=_sampling(6)))
        info = gpu.Info(worker_pb2.InfoRequest())
        assert (info.active_requests, info.gpu_assist_requests, info.kv_free_blocks) == (2, 2, 8)
        assert info.kv_free_bytes == 8 * block_bytes and info.kv_capacity_bytes == 10 * block_bytes
        with pytest.raises(grpc.RpcError) as full:
            gpu.Prefill(worker_pb2.PrefillRequest(request_id="c", prompt_token_ids=[5] * 10, sampling=_sampling(6)))
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "slots" in full.value.details()
        assert dict(full.value.trailing_metadata())[RETRY_AFTER_KEY] == "1000"
        assert gpu.Release(worker_pb2.ReleaseRequest(request_id="a")).released
        with pytest.raises(grpc.RpcError) as no_kv:  # 150 tokens: 10 blocks, 9 free
            gpu.Prefill(worker_pb2.PrefillRequest(request_id="d", prompt_token_ids=[5] * 100,
                                                  sampling=_sampling(50)))
        assert no_kv.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "blocks" in no_kv.value.details()
        gpu.Prefill(worker_pb2.PrefillRequest(request_id="e", prompt_token_ids=[5] * 100, sampling=_sampling(44)))  # 9
        assert gpu.Info(worker_pb2.InfoRequest()).kv_free_blocks == 0
        for rid in ("b", "e"):
            gpu.Release(worker_pb2.ReleaseRequest(request_id=rid))
        assert engine.pool.free_blocks == 10 and engine.active_requests() == 0
    finally:
        server.stop(0)
        engine.close()


def test_prompt_logprobs_of_a_chunked_prompt_equal_one_whole_pass(node):
    """A 60-token prompt runs in 24-token chunks (max_batch_tokens=24) next to other requests; its prompt
    logprobs, first-token logprob and decode logprobs equal those of the model's own single pass."""
    prompt = list(range(100, 160))
    sampling = _sampling(4, logprobs=True, top_logprobs=2, prompt_logprobs=True)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        others = [pool.submit(_generate, node, f"lp-o{i}", list(range(20, 50 + i)), 8) for i in range(2)]
        pre = node["gpu"].Prefill(worker_pb2.PrefillRequest(request_id="lp", prompt_token_ids=prompt,
                                                            sampling=sampling))
        steps = list(node["gpu"].Decode(worker_pb2.DecodeRequest(request_id="lp", first_token_id=pre.first_token_id,
                                                                 position=len(prompt), sampling=sampling)))
        for f in others:
            f.result(60)
    tokens = prompt + [pre.first_token_id] + [s.token_id for s in steps]
    with torch.inference_mode():
        logits = node["engine"].model(input_ids=torch.tensor([tokens])).logits[0].float()
    expected = torch.log_softmax(logits, -1)
    records = [*pre.prompt_logprobs, pre.first_token_logprobs, *(s.logprobs for s in steps)]
    assert len(pre.prompt_logprobs) == len(prompt) - 1 and len(records) == len(tokens) - 1
    for i, record in enumerate(records):
        assert record.chosen.token_id == tokens[i + 1]
        assert abs(record.chosen.logprob - float(expected[i, tokens[i + 1]])) < 1e-3
        assert [e.token_id for e in record.top] == torch.topk(expected[i], 2).indices.tolist()
    assert node["engine"].active_requests() == 0


def test_non_finite_logits_fail_that_decode_alone(node, monkeypatch):
    """A decode row of NaN logits is INVALID_ARGUMENT for its request; a request batched with it goes on."""
    from glitches.gpu_worker import step_loop

    real = step_loop.StepLoop._sample

    def poisoned(logits, sampling, index, constraint, refuse_non_finite=None):
        if refuse_non_finite is not None and sampling.seed == 666:
            logits = torch.full_like(logits, float("nan"))
        return real(logits, sampling, index, constraint, refuse_non_finite)

    monkeypatch.setattr(step_loop.StepLoop, "_sample", staticmethod(poisoned))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        good = pool.submit(_generate, node, "nan-ok", list(range(30, 40)), 10)
        with pytest.raises(grpc.RpcError) as bad:
            _generate(node, "nan-bad", list(range(30, 40)), 10, seed=666)
        assert good.result(60) == greedy(node["engine"].model, list(range(30, 40)), 10).tokens
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "NaN" in bad.value.details()
    assert node["engine"].active_requests() == 0


def test_an_expired_kv_hold_frees_the_step_loops_blocks(tiny_source):
    """GPU-assist KV nobody renews: the KvHolds reaper calls engine.release, which gives the blocks back
    (a later Decode is NOT_FOUND); releasing again is a harmless no-op."""
    from glitches.services.cluster.kv_holds import KvHolds

    class Clock:
        now = 0.0

        def __call__(self):
            return self.now

    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path), kv_cache_gib=0.001), tiny_source)
    clock = Clock()
    holds = KvHolds(5.0, engine.release, clock)
    server, gpu = serve_worker(GpuWorkerServicer(engine, "gpu-h", tiny_source.name, holds=holds))
    try:
        total = engine.pool.total_blocks
        pre = gpu.Prefill(worker_pb2.PrefillRequest(request_id="h", prompt_token_ids=[5] * 20, sampling=_sampling(12)))
        assert engine.pool.free_blocks == total - 2 and holds.summary().requests == 1
        clock.now += 6.0
        assert holds.expire() == ["h"]
        assert engine.pool.free_blocks == total and engine.active_requests() == 0
        assert engine.release("h") is False  # twice is safe
        with pytest.raises(grpc.RpcError) as gone:
            list(gpu.Decode(worker_pb2.DecodeRequest(request_id="h", first_token_id=pre.first_token_id,
                                                     position=20, sampling=_sampling(12))))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert not gpu.Release(worker_pb2.ReleaseRequest(request_id="h")).released
    finally:
        server.stop(0)
        engine.close()
