"""WarmPrefix on a GPU worker (tiny random Llama, real in-process gRPC server): the warmed tokens' full blocks
are cached under the tenant's salt, so a later prefill of them plus new tokens reuses them and gives the same
tokens as a worker without a cache; a real prefill sent while a long warm job runs goes in the very next
step, ahead of the warm chunk; a warm job beyond the limit, or one that does not fit, is dropped; nothing leaks."""

from __future__ import annotations

import threading

import grpc
import pytest

from glitches.gpu_worker.engine import MAX_WARM_JOBS
from glitches.kv_plane.prefix_index import block_hashes, root_hash
from glitches.gpu_worker.step_loop import WARM_CHUNK_TOKENS, PrefillJob
from glitches.services.generation.sampling import Sampling
from glitches.services.runtime.errors import Cancelled
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from tests.worker_helpers import serve_gpu

SALT = b"t" * 32
HISTORY = [(11 * i) % 900 + 30 for i in range(70)]  # a previous prompt + reply: 4 full blocks and 6 tokens
NEW = [(5 * i) % 700 + 40 for i in range(20)]


@pytest.fixture(scope="module")
def node(tiny_source):
    on, on_server, on_stub = serve_gpu(tiny_source, True)
    off, off_server, off_stub = serve_gpu(tiny_source, False)
    yield dict(on=on, off=off, on_stub=on_stub, off_stub=off_stub)
    for server in (on_server, off_server):
        server.stop(0)
    on.close()
    off.close()


def _idle(engine) -> None:
    assert engine.active_requests() == 0
    assert engine.pool.free_blocks == engine.pool.total_blocks  # free + evictable: nothing held


def _warm(stub, rid: str, tokens: list[int], salt: bytes = SALT) -> worker_pb2.WarmPrefixResponse:
    return stub.WarmPrefix(worker_pb2.WarmPrefixRequest(request_id=rid, token_ids=tokens, cache_salt=salt))


def _generate(stub, rid: str, prompt: list[int], salt: bytes = SALT):
    """GPU assist: (tokens, first token's logprob, cached_tokens)."""
    params = common_pb2.SamplingParams(max_new_tokens=8, ignore_eos=True, logprobs=True)
    pre = stub.Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, sampling=params,
                                                 cache_salt=salt))
    steps = stub.Decode(worker_pb2.DecodeRequest(request_id=rid, first_token_id=pre.first_token_id,
                                                 position=len(prompt), sampling=params))
    tokens = [pre.first_token_id] + [s.token_id for s in steps]
    return tokens, pre.first_token_logprobs.chosen.logprob, pre.cached_tokens


def test_warmed_blocks_are_reused_with_the_same_tokens(node):
    first = _warm(node["on_stub"], "w1", HISTORY)
    assert (first.cached_tokens, first.warmed_tokens, first.dropped) == (0, 64, False)
    published, _ = node["on"].pool.held_changes()  # what the held publisher sends next (P:held)
    assert set(block_hashes(HISTORY[:64], root_hash("tiny-llama", SALT))) <= set(published)
    again = _warm(node["on_stub"], "w1-again", HISTORY)
    assert (again.cached_tokens, again.warmed_tokens) == (64, 0)  # already cached: nothing computed
    _idle(node["on"])
    assert node["on"].pool.evictable_blocks >= 4
    tokens, logprob, cached = _generate(node["on_stub"], "after-warm", HISTORY + NEW)
    plain, plain_logprob, not_cached = _generate(node["off_stub"], "no-cache", HISTORY + NEW)
    assert cached == 64 and not_cached == 0
    assert tokens == plain
    assert logprob == plain_logprob, (logprob, plain_logprob)
    other_tenant = _generate(node["on_stub"], "other-tenant", HISTORY + NEW, salt=b"u" * 32)
    assert other_tenant[2] == 0
    _idle(node["on"])
    off = _warm(node["off_stub"], "w-off", HISTORY)  # no prefix cache: nothing to warm
    assert off.dropped and off.warmed_tokens == 0
    _idle(node["off"])


def test_warm_refuses_bad_input(node):
    for request in (worker_pb2.WarmPrefixRequest(request_id="", token_ids=[1]),
                    worker_pb2.WarmPrefixRequest(request_id="w", token_ids=[]),
                    worker_pb2.WarmPrefixRequest(request_id="w", token_ids=[10**6]),
                    worker_pb2.WarmPrefixRequest(request_id="w", token_ids=[1], cache_salt=b"x" * 65)):
        with pytest.raises(grpc.RpcError) as refused:
            node["on_stub"].WarmPrefix(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _warm(node["on_stub"], "short", HISTORY[:15]).warmed_tokens == 0  # no full block
    _idle(node["on"])


def test_real_prefill_goes_in_the_next_step_ahead_of_the_warm_job(node):
    """The warm job's cancel check runs at every schedule, on the loop thread, between steps: at its second
    one (one warm step done) it submits a real GPU-assist prefill, which must run in the very next step, first,
    with at most one warm chunk beside it."""
    engine = node["on"]
    real_tokens = [(3 * i) % 500 + 60 for i in range(40)]
    held = engine.requests.admit("real", len(real_tokens) + 2, True)
    real = PrefillJob(held.kv, real_tokens, Sampling(max_new_tokens=2), 0, None, lambda: False,
                      prompt_len=len(real_tokens))
    schedules, submitted_after = [], []

    def cancelled() -> bool:
        if threading.current_thread().name != "gpu-step-loop":  # the RPC side's poll, not a schedule
            return False
        schedules.append(1)
        if len(schedules) == 2:
            submitted_after.append(engine.loop.steps.last_seq)
            engine.loop.submit_prefill(real)
        return False

    long_reply = [(13 * i) % 800 + 25 for i in range(480)]
    result = engine.warm("long", long_reply, SALT, cancelled)
    real.future.result(timeout=30)
    engine.requests.release("real")
    assert result.warmed_tokens == 480 and len(schedules) > 3
    steps, _ = engine.loop.steps.since(submitted_after[0])
    next_step = steps[0]
    assert next_step.seq == submitted_after[0] + 1
    assert next_step.chunks[0] == (len(real_tokens), 0)  # the real prefill, whole, first
    assert len(next_step.chunks) <= 2 and all(n <= WARM_CHUNK_TOKENS for n, _ in next_step.chunks[1:])
    _idle(engine)


def test_extra_and_oversized_warm_jobs_are_dropped_and_leak_nothing(node):
    engine = node["on"]
    started = threading.Event()
    release = threading.Event()

    def cancelled() -> bool:  # holds the first warm job at its first schedule until the second was dropped
        started.set()
        release.wait(10)
        return False

    tokens = [(17 * i) % 800 + 25 for i in range(256)]
    results = []
    worker = threading.Thread(target=lambda: results.append(engine.warm("busy", tokens, SALT, cancelled)))
    worker.start()
    assert started.wait(10)
    extra = [_warm(node["on_stub"], f"extra-{i}", tokens[:128]) for i in range(MAX_WARM_JOBS)]
    release.set()
    worker.join(30)
    assert all(r.dropped and r.warmed_tokens == 0 for r in extra)
    assert results and results[0].warmed_tokens == 256 and not results[0].dropped
    engine.pool.evict_cache()
    everything = engine.pool.take(engine.pool.free_blocks)  # no KV free: a warm job does not wait for it
    no_room = _warm(node["on_stub"], "no-room", tokens)
    engine.pool.give(everything)
    assert no_room.dropped and no_room.warmed_tokens == 0
    with pytest.raises(Cancelled):  # the scheduler gave up on it: what was computed stays, nothing is held
        engine.warm("gone", tokens, b"w" * 32, cancelled=lambda: True)
    _idle(engine)
