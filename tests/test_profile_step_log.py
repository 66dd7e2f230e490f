"""`glitches profile` reads the GPU worker's own step log: a real in-process GPU worker (tiny random Llama,
started as its daemon starts it, registered in the real Redis with its HTTP side port) behind a real
in-process scheduler; a short profile fits its step model to the steps the worker logged."""

from __future__ import annotations

import pytest

from glitches.bench import profile_measure
from glitches.bench.profile_measure import ProfileConfig, measure_profile
from glitches.gpu_worker.daemon import GpuDevice
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.scheduler.orchestrator import ModelInfo, Orchestrator
from glitches.scheduler.server import SchedulerServicer
from glitches.scheduler.settings import SchedulerSettings
from glitches.services.cluster.registry import Registry
from glitches.services.generation import models
from glitches.services.runtime.worker_runtime import start_worker
from glitches.services.stubs.glitches.v1 import scheduler_pb2_grpc
from glitches.sim.step_model import StepModel
from tests.conftest import REDIS_URL
from tests.worker_helpers import serve


def test_profile_fits_the_step_model_to_the_workers_logged_steps(tiny_source, redis_prefix, monkeypatch):
    tokenizer = models.load_tokenizer(tiny_source)
    monkeypatch.setattr(profile_measure, "load_tokenizer_for", lambda name: tokenizer)
    running = start_worker(GpuDevice(GpuWorkerSettings(model=str(tiny_source.path), redis_prefix=redis_prefix,
                                                       slots=4, kv_cache_gib=0.01, heartbeat_interval_s=0.5)))
    registry = Registry(REDIS_URL, redis_prefix)
    orchestrator = Orchestrator(SchedulerSettings(redis_prefix=redis_prefix, model=str(tiny_source.path)), registry,
                                ModelInfo(models.resolve_model(str(tiny_source.path)).name, tokenizer, (2,), 512))
    scheduler = serve(SchedulerServicer(orchestrator), scheduler_pb2_grpc.add_SchedulerServicer_to_server,
                      "glitches.v1.Scheduler")
    try:
        doc = measure_profile(ProfileConfig(f"127.0.0.1:{scheduler.port}", prefill_lengths=(16, 48),
                                            decode_contexts=(16, 32), decode_tokens=4, repeats=1,
                                            batched_rows=(1, 2, 4), batched_tokens=6, progress=False))
    finally:
        scheduler.stop(0)
        registry.close()
        running.drain(0)
        running.close()
        running.device.engine.close()
    (entry,) = [d for d in doc["devices"].values() if "batched_steps" in d]
    batched = entry["batched_steps"]
    assert batched["source"] == "worker-step-log"
    points = batched["points"]
    # what ran: the two lone prefills, lone decodes, and steps of 2 and 4 decode rows from the batched windows
    assert {p["prefill_tokens"] for p in points if p["decode_rows"] == 0} >= {16, 48}
    assert {p["decode_rows"] for p in points} >= {0, 1, 2, 4}
    assert all(p["seconds"] > 0 for p in points)
    fit = StepModel.from_json(batched["fit"], "test")
    assert fit.fit_points == len(points) and fit.fit_median_rel_error >= 0
    assert batched["client_fit_on_logged"]["median_rel_error"] >= 0
    assert any("step log" in note for note in doc["notes"])
