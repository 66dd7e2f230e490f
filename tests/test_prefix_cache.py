"""The GPU worker's prefix cache on real in-process gRPC servers (tiny random Llama): a multi-turn
conversation gives the same greedy tokens with reuse as without (and as transformers' generate), on
GPU assist and with the KV streaming to an emulated card, also after forced evictions; the reused
tokens are reported; prompt logprobs read nothing from the cache; nothing leaks."""

from __future__ import annotations

import grpc
import pytest

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.services.generation import models
from glitches.services.auth.api_keys import tenant_salt
from glitches.services.runtime.channels import insecure_channel
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.greedy_reference import TOLERANCE_FP32, compare, greedy
from tests.worker_helpers import serve_gpu, serve_worker

TURNS = 4
USER = [[(7 * t + 3 * i) % 900 + 20 for i in range(n)] for t, n in enumerate((37, 21, 18, 25))]  # user messages
REPLY_TOKENS = 12


@pytest.fixture(scope="module")
def node(tiny_source):
    """Two GPU workers, prefix cache on and off, and one emulated card."""
    on, on_server, on_stub = serve_gpu(tiny_source, True)
    off, off_server, off_stub = serve_gpu(tiny_source, False)
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    fpga_server, _ = serve_worker(FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), "fpga-p",
                                                     tiny_source.name, 4))
    fpga = worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{fpga_server.port}"))
    yield dict(on=on, off=off, on_stub=on_stub, off_stub=off_stub, fpga=fpga, card=card,
               fpga_address=f"127.0.0.1:{fpga_server.port}")
    for server in (on_server, off_server, fpga_server):
        server.stop(0)
    on.close()
    off.close()


def _generate(node, gpu: str, rid: str, prompt: list[int], on_fpga: bool, **sampling):
    """(tokens, cached_tokens): prefill on `gpu` ("on" / "off"), decode on the card or the GPU."""
    target = worker_pb2.DecodeTarget(address=node["fpga_address"], worker_id="fpga-p") if on_fpga else None
    params = common_pb2.SamplingParams(max_new_tokens=REPLY_TOKENS, ignore_eos=True, **sampling)
    stub = node[f"{gpu}_stub"]
    pre = stub.Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt, target=target,
                                                 sampling=params))
    decoder = node["fpga"] if on_fpga else stub
    steps = decoder.Decode(worker_pb2.DecodeRequest(request_id=rid, first_token_id=pre.first_token_id,
                                                    position=len(prompt), sampling=params))
    return [pre.first_token_id] + [s.token_id for s in steps], pre.cached_tokens


def _evict_all(engine) -> None:
    """Force every evictable block out: take every block the pool can give, then give them back unnamed."""
    pool = engine.pool
    pool.give(pool.take(pool.free_blocks))


def _conversation(node, on_fpga: bool, evict_after: tuple[int, ...] = ()) -> None:
    tag = f"{'f' if on_fpga else 'g'}{''.join(map(str, evict_after))}"
    _evict_all(node["on"])  # a cold cache: earlier tests used the same first message
    history: list[int] = []
    for turn in range(TURNS):
        prompt = history + USER[turn]
        with_reuse, cached = _generate(node, "on", f"{tag}-on-{turn}", prompt, on_fpga)
        without, not_cached = _generate(node, "off", f"{tag}-off-{turn}", prompt, on_fpga)
        assert with_reuse == without, f"turn {turn}"
        assert compare(with_reuse, greedy(node["on"].model, prompt, REPLY_TOKENS), TOLERANCE_FP32) == "exact"
        assert not_cached == 0
        if turn == 0 or turn - 1 in evict_after:
            assert cached == 0, f"turn {turn}"
        else:  # every full block of the previous turn's prompt (GPU assist: of its reply too, minus the last)
            assert cached >= len(history) // 16 * 16 - 16 > 0, (turn, cached, len(history))
            assert cached % 16 == 0 and cached < len(prompt)
        if turn in evict_after:
            _evict_all(node["on"])
        history = prompt + with_reuse
    for name in ("on", "off"):
        assert node[name].active_requests() == 0
        assert node[name].pool.free_blocks == node[name].pool.total_blocks
    assert node["card"].active_requests() == []


@pytest.mark.parametrize("on_fpga", [False, True], ids=["gpu-assist", "fpga"])
def test_multi_turn_tokens_with_reuse_equal_without(node, on_fpga):
    _conversation(node, on_fpga)


@pytest.mark.parametrize("on_fpga", [False, True], ids=["gpu-assist", "fpga"])
def test_multi_turn_after_forced_evictions(node, on_fpga):
    before = node["on"].pool.evictions
    _conversation(node, on_fpga, evict_after=(1,))
    assert node["on"].pool.evictions > before


def test_prompt_logprobs_read_nothing_from_the_cache(node):
    prompt = list(range(300, 350))
    _generate(node, "on", "lp-warm", prompt, False)
    tokens, cached = _generate(node, "on", "lp-read", prompt, False, prompt_logprobs=True)
    assert cached == 0
    again, cached_again = _generate(node, "on", "lp-plain", prompt, False)
    assert cached_again == 48 and again == tokens


def test_tenants_never_share_cached_blocks(node):
    """The scheduler's salt (from the API key) separates tenants; the same salt hits; a huge salt is refused."""
    prompt = list(range(500, 560))

    def cached(rid: str, salt: bytes) -> int:
        params = common_pb2.SamplingParams(max_new_tokens=1)
        return node["on_stub"].Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt,
                                                                  sampling=params, cache_salt=salt)).cached_tokens

    alice, bob = tenant_salt("key-of-alice", ("key-of-alice", "key-of-bob")), tenant_salt("key-of-bob",
                                                                                          ("key-of-alice", "key-of-bob"))
    assert len(alice) == 32 and alice != bob
    assert tenant_salt("key-of-eve", ("key-of-alice",)) == b"" == tenant_salt("key-of-alice", ())
    assert cached("t-alice-1", alice) == 0
    assert cached("t-bob-1", bob) == 0
    assert cached("t-default-1", b"") == 0
    assert cached("t-alice-2", alice) == 48
    with pytest.raises(grpc.RpcError) as refused:
        cached("t-huge", b"x" * 65)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert node["on"].pool.free_blocks == node["on"].pool.total_blocks
