"""The scheduler's "transfer-partial" path end to end on real components: the real Redis (private prefix), an
in-process GPU worker and emulated card (reference numerics, KV tokens required) in the registry by their
heartbeats, the card's held blocks published by its real HeldPublisher. A conversation's later turn is
prefilled on the GPU and only the KV the card lacks moves; its greedy tokens equal the same turn served
without reuse; a card that evicted the prefix after publishing it gets the whole KV instead (a stale hold,
not a migration)."""

from __future__ import annotations

import pytest

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.services.cluster.held_publisher import HeldPublisher
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.scheduler.orchestrator import GenerateInput, ModelInfo, Orchestrator
from glitches.scheduler.placement import PATH_TRANSFER, PATH_TRANSFER_PARTIAL
from glitches.scheduler.settings import SchedulerSettings
from glitches.services.auth.kv_token import KvTokenVerifier
from glitches.services.cluster.registry import Registry
from glitches.services.generation import models
from glitches.services.generation.sampling import Sampling
from glitches.services.runtime import metrics
from tests.conftest import REDIS_URL
from tests.worker_helpers import beat_workers, serve

SECRET = b"partial-routing-secret-0123456789abcdef"
CARD_ID = "fpga-r"
SALT = b"tenant-r"
TURN1 = list(range(100, 140))
USER2 = list(range(300, 330))  # 30 new tokens: the GPU's prefill beats the card forcing them (default costs)


@pytest.fixture(scope="module")
def workers(tiny_source):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path)), tiny_source)
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2)
    gpu = GpuWorkerServicer(engine, "gpu-r", tiny_source.name)
    fpga = FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), CARD_ID, tiny_source.name, 2,
                              KvTokenVerifier(SECRET))
    gpu_server, fpga_server = serve(gpu), serve(fpga)
    yield dict(engine=engine, card=card, servicers=(gpu, fpga), model=tiny_source.name,
               addresses=(f"127.0.0.1:{gpu_server.port}", f"127.0.0.1:{fpga_server.port}"),
               tokenizer=models.load_tokenizer(tiny_source))
    gpu_server.stop(0)
    fpga_server.stop(0)
    engine.close()
    card.kv.close()


@pytest.fixture
def cluster(workers, redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix)
    beats = beat_workers(registry, workers["servicers"], workers["addresses"], ("gpu", "fpga"))
    card = workers["card"]
    card.kv.drop_retained()
    publisher = HeldPublisher(registry, lambda: CARD_ID, card.held_changes)
    publisher.publish_once()  # whatever earlier tests left to drain
    registry.clear_held(CARD_ID)
    settings = SchedulerSettings(redis_prefix=registry.prefix, kv_token_secret=SECRET)
    orchestrator = Orchestrator(settings, registry, ModelInfo(workers["model"], workers["tokenizer"], (2,), 512))
    yield orchestrator, registry, publisher
    for beat in beats:
        beat.stop()
    registry.close()


def _generate(orchestrator, registry, workers, prompt, n):
    request = GenerateInput("", False, Sampling(max_new_tokens=n), prompt_token_ids=tuple(prompt), cache_salt=SALT)
    items = list(orchestrator.generate(request))
    assert registry.claims() == {} and workers["card"].active_requests() == []
    return items[-1]


def test_a_later_turn_sends_only_the_kv_the_card_lacks_and_equals_the_turn_without_reuse(workers, cluster):
    orchestrator, registry, publisher = cluster
    card = workers["card"]
    turn1 = _generate(orchestrator, registry, workers, TURN1, 12)
    assert turn1.timings["serve_path"] == PATH_TRANSFER
    publisher.publish_once()  # the card's kept prompt + reply, as its publisher thread would every 0.5 s
    prompt2 = TURN1 + turn1.token_ids + USER2
    held = (len(TURN1) + len(turn1.token_ids) - 1) // 16 * 16  # whole published blocks of what the card stepped
    turn2 = _generate(orchestrator, registry, workers, prompt2, 8)
    assert turn2.timings["serve_path"] == PATH_TRANSFER_PARTIAL and turn2.migrations == 0
    assert turn2.timings["reused_tokens"] == held
    assert turn2.timings["kv_bytes"] == (len(prompt2) - held) * card.geometry().bytes_per_token

    card.kv.drop_retained()  # the same turn without reuse: the whole KV transferred
    publisher.publish_once()
    again = _generate(orchestrator, registry, workers, prompt2, 8)
    assert again.timings["serve_path"] == PATH_TRANSFER
    assert again.timings["kv_bytes"] == len(prompt2) * card.geometry().bytes_per_token
    assert again.token_ids == turn2.token_ids


def test_a_stale_hold_sends_the_whole_kv_without_a_migration(workers, cluster):
    orchestrator, registry, publisher = cluster
    card = workers["card"]
    turn1 = _generate(orchestrator, registry, workers, TURN1, 6)
    publisher.publish_once()
    card.kv.drop_retained()  # evicted after publishing: the hint in Redis is stale
    stale = metrics.STALE_HOLDS._value.get()
    prompt2 = TURN1 + turn1.token_ids + USER2
    turn2 = _generate(orchestrator, registry, workers, prompt2, 6)
    assert turn2.migrations == 0 and metrics.STALE_HOLDS._value.get() == stale + 1
    assert turn2.timings["kv_bytes"] == len(prompt2) * card.geometry().bytes_per_token
    assert len(turn2.token_ids) == 6
