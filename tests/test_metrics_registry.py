"""A device package's own metrics role (issue #12 item 5): its registry appears on first use with every common
and worker metric, and the built-in roles are unchanged."""

from __future__ import annotations

import threading

from prometheus_client import generate_latest

from glitches.services.runtime import metrics


def test_a_new_role_gets_every_common_and_worker_metric():
    registry = metrics.registry("toy-test-worker")
    assert metrics.registry("toy-test-worker") is registry  # made once
    metrics.SLOTS.of("toy-test-worker").set(3)
    metrics.GRPC_REQUESTS.of("toy-test-worker").labels(method="Decode", code="OK").inc()
    text = generate_latest(registry).decode()
    for name in ("glitches_slots 3.0", "glitches_grpc_requests_total", "glitches_active_requests",
                 "glitches_kv_held_bytes", "glitches_device_power_watts", "process_cpu_seconds_total"):
        assert name in text, name
    assert "glitches_ttft_seconds" not in text and "glitches_gpu_step_seconds" not in text  # others' own


def test_builtin_roles_keep_their_metrics():
    scheduler = generate_latest(metrics.registry("scheduler")).decode()
    assert "glitches_ttft_seconds" in scheduler and "glitches_slots" not in scheduler
    gpu = generate_latest(metrics.registry("gpu-worker")).decode()
    assert "glitches_gpu_step_seconds" in gpu and "glitches_slots" in gpu


def test_threads_naming_a_new_role_at_once_get_one_registry():
    start, got = threading.Barrier(8), []

    def name_it():
        start.wait()
        got.append(metrics.SLOTS.of("toy-race-worker"))

    threads = [threading.Thread(target=name_it) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(gauge) for gauge in got}) == 1  # every thread records into the registry /metrics serves
    got[0].set(5)
    assert "glitches_slots 5.0" in generate_latest(metrics.registry("toy-race-worker")).decode()
