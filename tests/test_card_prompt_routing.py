"""The scheduler's --prompt-logprobs-on card against the real Redis and real in-process workers (tiny seeded
Llama): a request asking for prompt logprobs is scored and decoded by a card alone (no GPU registered at all),
its first delta carrying the card's prompt logprobs; a worker that registers as a card but cannot step a whole
prompt (DecodeFromHeld UNIMPLEMENTED) is skipped for the next card; with no card able to, UNAVAILABLE."""

from __future__ import annotations

import pytest

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.scheduler.orchestrator import PATH_CARD_PROMPT, Delta, Final, Orchestrator
from glitches.scheduler.settings import SchedulerSettings
from glitches.scheduler.validation import GenerateInput, ModelInfo
from glitches.services.cluster.registry import Registry, WorkerRecord
from glitches.services.generation import models
from glitches.services.generation.sampling import Sampling
from glitches.services.runtime.errors import Unavailable
from glitches.services.stubs.glitches.v1 import worker_pb2_grpc
from tests.conftest import REDIS_URL
from tests.worker_helpers import serve_worker

PROMPT = tuple(range(700, 712))  # 12 prompt tokens
HBM = 64 * 1024**2


def _record(worker_id: str, port: int, model: str) -> WorkerRecord:
    return WorkerRecord(worker_id=worker_id, kind="fpga", backend="emu", emulated=1, device_name="emu",
                        address=f"127.0.0.1:{port}", pid=1, model=model, slots=1, kv_capacity_bytes=HBM,
                        kv_free_bytes=HBM, kv_bytes_per_token=1000)


@pytest.fixture
def routed(redis_prefix, tiny_source):
    backend = EmulatedCard(tiny_source, HBM)
    tokenizer = models.load_tokenizer(tiny_source)
    card, _ = serve_worker(FpgaWorkerServicer(backend, tokenizer, "f-card", tiny_source.name, 1))
    mute, _ = serve_worker(worker_pb2_grpc.WorkerServicer())  # every rpc UNIMPLEMENTED
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=30)
    settings = SchedulerSettings(redis_prefix=redis_prefix, prompt_logprobs_on="card", queue_wait_s=0.0)
    orchestrator = Orchestrator(settings, registry, ModelInfo(tiny_source.name, tokenizer, (2,), 512))
    yield dict(orchestrator=orchestrator, registry=registry, card=card.port, mute=mute.port, model=tiny_source.name)
    registry.close()
    card.stop(0)
    mute.stop(0)
    backend.kv.close()


def _generate(orchestrator) -> list:
    request = GenerateInput("", False, Sampling(max_new_tokens=3, prompt_logprobs=True, logprobs=True),
                            prompt_token_ids=PROMPT)
    return list(orchestrator.generate(request))


def test_a_card_scores_the_prompt_after_a_card_that_cannot_is_skipped(routed):
    registry = routed["registry"]
    registry.register(_record("f-mute", routed["mute"], routed["model"]))  # no DecodeFromHeld there
    registry.register(_record("f-card", routed["card"], routed["model"]))
    out = _generate(routed["orchestrator"])
    final = out[-1]
    assert isinstance(final, Final) and final.timings["serve_path"] == PATH_CARD_PROMPT
    assert final.decode_worker == "f-card" and final.prefill_worker == ""
    assert len(final.token_ids) == 3
    first = next(d for d in out if isinstance(d, Delta) and d.token_ids)
    assert [r.token_id for r in first.prompt_logprobs] == list(PROMPT[1:])
    assert list(first.prompt_token_ids) == list(PROMPT)
    assert final.prompt_logprobs == first.prompt_logprobs


def test_no_card_that_can_score_is_unavailable(routed):
    routed["registry"].register(_record("f-mute", routed["mute"], routed["model"]))
    with pytest.raises(Unavailable):
        _generate(routed["orchestrator"])
