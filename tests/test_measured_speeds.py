"""Workers measure and publish their own speeds (issue #27 item 3): the meter, the record through the real Redis,
the scheduler routing by them, and a real in-process GPU worker and emulated card whose Info fills in after requests."""

from __future__ import annotations

import pytest

from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.kv_plane.prefix_index import block_hashes, root_hash
from glitches.scheduler.orchestrator import Orchestrator
from glitches.scheduler.placement import PATH_EXTEND, PATH_TRANSFER
from glitches.scheduler.reuse_cost import ReuseCosts
from glitches.scheduler.settings import SchedulerSettings
from glitches.scheduler.validation import ModelInfo
from glitches.services.cluster.registry import Registry, WorkerRecord
from glitches.services.cluster.worker_record import KvBlocks, record_from_info
from glitches.services.generation import models
from glitches.services.generation.sampling import Sampling
from glitches.services.runtime.channels import insecure_channel
from glitches.services.runtime.speed_meter import AffineSpeedMeter, SpeedMeter
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL
from tests.worker_helpers import serve_worker

MODEL = "m"
PROMPT = list(range(1, 65))  # 4 full blocks
SALT = b"tenant-a"


def _record(worker_id, kind, **speeds):
    return WorkerRecord(worker_id=worker_id, kind=kind, backend="emu", emulated=1, device_name="emu",
                        address="127.0.0.1:1", pid=1, model=MODEL, slots=1, kv_capacity_bytes=10**9,
                        kv_free_bytes=10**9, kv_bytes_per_token=1000, **speeds)


def test_meter_is_zero_until_measured_then_a_weighted_ratio():
    meter = SpeedMeter(weight=0.5)
    assert (meter.per_second(), meter.seconds_per()) == (0.0, 0.0)
    meter.add(0, 1.0)  # nothing done, or no time: not a sample
    meter.add(10, 0.0)
    assert meter.samples == 0 and meter.per_second() == 0.0
    meter.add(100, 1.0)  # the first sample is the mean: 100 tokens/s
    assert meter.per_second() == pytest.approx(100.0) and meter.seconds_per() == pytest.approx(0.01)
    meter.add(900, 1.0)  # means 500 tokens, 1 s: 500 tokens/s (a mean of the rates would say 500 too)
    assert meter.per_second() == pytest.approx(500.0)
    meter.add(10, 1.0)  # a short sample weighs as little as its work: means 255 tokens in 1 s
    assert meter.per_second() == pytest.approx(255.0)
    for _ in range(30):  # the device slowed down: the mean follows
        meter.add(1, 0.5)
    assert meter.seconds_per() == pytest.approx(0.5, rel=1e-3)
    with pytest.raises(ValueError):
        SpeedMeter(weight=0.0)


def test_record_round_trips_through_redis_and_an_older_record_reads_as_not_measured(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=30)
    try:
        registry.register(_record("g0", "gpu", prefill_tokens_per_s=1234.5678, prefill_overhead_s=0.0625))
        registry.register(_record("f0", "fpga", decode_step_s=0.123456789))
        registry.register(_record("f1", "fpga"))
        records = {state.record.worker_id: state.record for state in registry.workers()}
        assert records["g0"] == _record("g0", "gpu", prefill_tokens_per_s=1234.5678, prefill_overhead_s=0.0625)
        assert records["f0"].decode_step_s == 0.123456789 and records["f0"].prefill_tokens_per_s == 0.0
        # a record written by a worker from before the fields: they read as 0 (not measured)
        registry.redis.hdel(registry._key("worker", "f1"), "decode_step_s", "prefill_tokens_per_s")
        assert {s.record.worker_id: s.record for s in registry.workers()}["f1"] == _record("f1", "fpga")
    finally:
        registry.close()


@pytest.mark.parametrize("card_step_s, pinned_step_s, path", [(0.0, None, PATH_EXTEND), (0.5, None, PATH_TRANSFER),
                                                               (0.5, 0.001, PATH_EXTEND)])
def test_the_scheduler_routes_by_the_cards_published_step(redis_prefix, card_step_s, pinned_step_s, path):
    """f1 holds 48 of 64 tokens; the GPU's prefill pinned at 100 tokens/s: the transfer takes 0.64 s. The card
    publishing nothing: the U280 default, 16 x 0.0215 = 0.344 s, extend. Publishing 0.5 s a step: 8 s, so the
    transfer (to f0) wins; unless the operator pinned the card step (--reuse-card-forced-step-s), which beats any
    measurement. (Partial transfers off: with them the GPU would prefill and send f1 only the KV it lacks.)"""
    registry = Registry(REDIS_URL, redis_prefix, heartbeat_ttl_s=30)
    try:
        registry.register(_record("g0", "gpu", prefill_tokens_per_s=10**6))  # pinned below: ignored
        registry.register(_record("f0", "fpga"))
        registry.register(_record("f1", "fpga", decode_step_s=card_step_s))
        registry.publish_held("f1", block_hashes(PROMPT, root_hash(MODEL, SALT))[:3], [])
        settings = SchedulerSettings(redis_prefix=redis_prefix, reuse_gpu_prefill_tokens_per_s=100.0,
                                     reuse_card_forced_step_s=pinned_step_s, kv_reuse_partial=False)
        orchestrator = Orchestrator(settings, registry, ModelInfo(MODEL, None, (0,), 2048, vocab_size=1000))
        _gpu, card, decision = orchestrator._place("r1.0", PROMPT, Sampling(max_new_tokens=8), set(), wait_s=0.0,
                                                   reuse_salt=SALT)
        assert (decision.path, card.record.worker_id) == (path, "f1" if path == PATH_EXTEND else "f0")
    finally:
        registry.close()


def test_real_workers_publish_their_speeds_after_requests(tiny_source):
    """A GPU worker and an emulated card, in process: Info says 0 before any request, positive figures after a
    prefill streamed to the card and decoded there, and the registry record built from Info carries them."""
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path), slots=2, kv_cache_gib=0.01), tiny_source)
    gpu_server, gpu = serve_worker(GpuWorkerServicer(engine, "gpu-m", tiny_source.name))
    card_servicer = FpgaWorkerServicer(EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2),
                                       models.load_tokenizer(tiny_source), "fpga-m", tiny_source.name, 2)
    card_server, _ = serve_worker(card_servicer)
    card = worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{card_server.port}"))
    try:
        before = gpu.Info(worker_pb2.InfoRequest()), card.Info(worker_pb2.InfoRequest())
        assert (before[0].prefill_tokens_per_s, before[1].decode_step_s) == (0.0, 0.0)
        target = worker_pb2.DecodeTarget(address=f"127.0.0.1:{card_server.port}", worker_id="fpga-m")
        sampling = common_pb2.SamplingParams(max_new_tokens=6)
        pre = gpu.Prefill(worker_pb2.PrefillRequest(request_id="r1", prompt_token_ids=PROMPT[:40], target=target,
                                                    sampling=sampling))
        steps = list(card.Decode(worker_pb2.DecodeRequest(request_id="r1", first_token_id=pre.first_token_id,
                                                          position=40, sampling=sampling)))
        assert steps
        gpu_info, card_info = gpu.Info(worker_pb2.InfoRequest()), card.Info(worker_pb2.InfoRequest())
        assert gpu_info.prefill_tokens_per_s > 0 and card_info.decode_step_s > 0
        # one 40-token prefill pass: 40 tokens over its forward seconds, which are within the Prefill's prefill_s
        assert gpu_info.prefill_tokens_per_s >= 40 / pre.prefill_s * 0.99
        # each streamed token is one backend step (the prefill's token fed first); a step is within its token's step_s
        assert card_servicer.step_speed.samples == len(steps)
        assert card_info.decode_step_s <= max(step.step_s for step in steps)
        blocks = KvBlocks(16, 1, 1)
        assert record_from_info(gpu_info, "gpu", "a:1", "", blocks).prefill_tokens_per_s == gpu_info.prefill_tokens_per_s
        assert record_from_info(card_info, "fpga", "a:2", "", blocks).decode_step_s == card_info.decode_step_s
    finally:
        gpu_server.stop(0)
        card_server.stop(0)
        engine.close()


def test_the_affine_meter_separates_a_passs_fixed_seconds_from_its_per_token_rate():
    """Passes of 0.06 s + 1 ms per token: the fit gives both; a plain ratio would say 20 tokens cost 0.125 s at
    the mixed rate of these samples (it cannot tell 20 from 500)."""
    meter = AffineSpeedMeter()
    assert meter.fit() == (0.0, 0.0)
    for tokens in (20, 500, 64, 300, 20, 800, 128):
        meter.add(tokens, 0.06 + tokens / 1000)
    overhead_s, rate = meter.fit()
    assert overhead_s == pytest.approx(0.06, rel=1e-6) and rate == pytest.approx(1000, rel=1e-6)


def test_the_affine_meter_falls_back_to_the_ratio_while_sizes_hardly_vary():
    meter = AffineSpeedMeter()
    for _ in range(5):
        meter.add(100, 0.2)
    assert meter.fit() == (0.0, pytest.approx(500.0))
    meter.add(0, 1.0)  # ignored, as SpeedMeter
    assert meter.samples == 5


def test_a_measured_overhead_counts_once_per_prefill_pass_and_not_for_a_fully_cached_prompt():
    costs = ReuseCosts(gpu_prefill_tokens_per_s=8735.0).with_measured(1000.0, 0.0, prefill_overhead_s=0.06)
    assert costs.gpu_prefill_s(0, 500, 0) == pytest.approx(0.06 + 0.5)
    assert costs.gpu_prefill_s(0, 500, 500) == 0.0
    pinned = ReuseCosts(prefill_pinned=True).with_measured(1000.0, 0.0, prefill_overhead_s=0.06)
    assert pinned.gpu_prefill_overhead_s == 0.0  # a pinned figure ignores the measurement, its overhead too
