"""Every daemon of a real `glitches up` cluster serves /healthz, /readyz and /metrics on its HTTP side port,
and the metrics move when a request runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from glitches import GlitchesError
from tests.worker_helpers import get, samples

pytestmark = pytest.mark.e2e


def _value(found: dict, name: str, **labels) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def test_every_daemon_is_healthy_and_ready(cluster):
    assert set(cluster["http"]) == {"scheduler", "gpu-0", "fpga-0", "fpga-1"}
    for address in cluster["http"].values():
        assert get(f"http://{address}/healthz") == (200, "ok\n")
        assert get(f"http://{address}/readyz") == (200, "ready\n")


def test_status_json_shows_each_workers_http_address(cluster):
    run = subprocess.run([sys.executable, "-m", "glitches", "status", "--json", "--address", cluster["address"]],
                         capture_output=True, text=True, timeout=60, check=True)
    shown = {w["worker_id"]: w["http_address"] for w in json.loads(run.stdout)["workers"]}
    assert shown == {name: cluster["http"][name] for name in ("gpu-0", "fpga-0", "fpga-1")}


def test_metrics_follow_a_request(cluster):
    scheduler = f"http://{cluster['http']['scheduler']}/metrics"
    generate = "/glitches.v1.Scheduler/Generate"
    before = samples(get(scheduler)[1])
    result = cluster["client"].generate("Name a colour.", max_tokens=4)
    with pytest.raises(GlitchesError):
        cluster["client"].generate("")
    # the server counts a streamed call after its last message went out: give it a moment
    ok_before = _value(before, "glitches_grpc_requests_total", method=generate, code="OK")
    deadline = time.monotonic() + 5
    while True:
        after = samples(get(scheduler)[1])
        if _value(after, "glitches_grpc_requests_total", method=generate, code="OK") > ok_before or \
                time.monotonic() > deadline:
            break
        time.sleep(0.05)

    assert _value(after, "glitches_ttft_seconds_count") == _value(before, "glitches_ttft_seconds_count") + 1
    itl_added = _value(after, "glitches_inter_token_latency_seconds_count") - \
        _value(before, "glitches_inter_token_latency_seconds_count")
    assert itl_added == len(result.token_ids) - 1
    for code in ("OK", "INVALID_ARGUMENT"):
        assert _value(after, "glitches_grpc_requests_total", method=generate, code=code) == \
            _value(before, "glitches_grpc_requests_total", method=generate, code=code) + 1
    assert _value(after, "glitches_migrations_total") == 0
    for worker in ("gpu-0", "fpga-0", "fpga-1"):
        kind = worker.split("-")[0]
        backend = "emu" if kind == "fpga" else "cpu"
        assert _value(after, "glitches_worker_healthy", worker_id=worker, kind=kind, backend=backend) == 1
        assert (("glitches_worker_active_requests", (("backend", backend), ("kind", kind), ("worker_id", worker)))
                in after)

    gpu = samples(get(f"http://{cluster['http']['gpu-0']}/metrics")[1])
    assert _value(gpu, "glitches_prefill_seconds_count") >= 1
    steps = sum(_value(gpu, "glitches_gpu_step_seconds_count", phase=p) for p in ("prefill", "decode", "mixed"))
    assert steps >= 1  # the step loop's per-batch timings
    assert _value(gpu, "glitches_gpu_step_prefill_tokens_sum") >= len(result.prompt_token_ids)
    assert _value(gpu, "glitches_gpu_kv_free_blocks") > 0
    if result.decode_device == "fpga":
        assert _value(gpu, "glitches_kv_sent_bytes_total") >= result.timings.kv_bytes > 0
        assert _value(gpu, "glitches_kv_transfer_seconds_count") >= 1
        assert _value(gpu, "glitches_kv_exposed_seconds_count") >= 1
        received = sum(_value(samples(get(f"http://{cluster['http'][f]}/metrics")[1]), "glitches_kv_received_bytes_total")
                       for f in ("fpga-0", "fpga-1"))
        assert received >= result.timings.kv_bytes
    fpga = samples(get(f"http://{cluster['http']['fpga-0']}/metrics")[1])
    assert _value(fpga, "glitches_kv_capacity_bytes") > 0 and _value(fpga, "glitches_slots") == 1
    # emulated card and CPU stand-in report no power or temperature: nothing is invented
    for found in (gpu, fpga):
        assert not any(name.startswith(("glitches_device_power", "glitches_device_temperature")) for name, _ in found)
