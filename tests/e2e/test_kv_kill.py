"""SIGKILL of either side in the middle of a KV transfer leaks nothing (issue #15, Safety), with real daemons:
- the FPGA worker killed: its HBM segment stays in /dev/shm until the next FPGA worker starts, which removes it;
  a SIGTERMed worker removes its own at exit; the GPU worker serves the next request;
- the GPU worker killed (shm and nixl): the FPGA worker frees the reservation (Info back to full capacity, no
  active request) and holds no NIXL registration or KV stream (/metrics), then serves the next transfer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from glitches.services.runtime.channels import insecure_channel
from glitches.services.auth.kv_token import SECRET_ENV
from glitches.services.cluster.registry import Registry
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL
from tests.dies_with_pytest import dies_with_pytest
from tests.e2e.conftest import metric

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # kills and restarts: minutes
PROMPT = [100 + (i * 37) % 40000 for i in range(1500)]  # ~3 s of prefill on this CPU: time to kill mid-transfer


def _spawn(prefix: str, kind: str, worker_id: str, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_ENV)}  # no KV tokens: direct calls
    # these tests kill a worker mid-transfer of the same prompt again and again: a prefix-cache hit would compute
    # and send that KV in no time, so the kill would land after the transfer instead of during it
    no_cache = ["--no-prefix-cache"] if kind == "gpu-worker" else []
    return subprocess.Popen([*dies_with_pytest(), sys.executable, "-m", "glitches", kind, "--redis-url", REDIS_URL, "--redis-prefix",
                             prefix, "--port", "0", "--worker-id", worker_id, "--threads", "1", *no_cache, *extra],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _record(registry: Registry, worker_id: str, proc: subprocess.Popen, timeout_s: float = 180.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for state in registry.workers():
            if state.record.worker_id == worker_id and state.healthy and state.record.pid == proc.pid:
                return state.record
        assert proc.poll() is None, f"{worker_id} exited {proc.returncode}"
        time.sleep(0.2)
    raise TimeoutError(f"{worker_id} never registered")


def _stub(address: str) -> worker_pb2_grpc.WorkerStub:
    return worker_pb2_grpc.WorkerStub(insecure_channel(address))


def _prefill_in_background(gpu, fpga_record, request_id: str) -> dict:
    outcome: dict = {}

    def run():
        try:
            outcome["response"] = gpu.Prefill(worker_pb2.PrefillRequest(
                request_id=request_id, prompt_token_ids=PROMPT, sampling=common_pb2.SamplingParams(max_new_tokens=4),
                target=worker_pb2.DecodeTarget(address=fpga_record.address, worker_id=fpga_record.worker_id)),
                timeout=120)
        except grpc.RpcError as error:
            outcome["error"] = error.code()

    outcome["thread"] = threading.Thread(target=run)
    outcome["thread"].start()
    return outcome


def _wait_reserved(fpga, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while fpga.Info(worker_pb2.InfoRequest()).active_requests == 0:
        assert time.monotonic() < deadline, "the transfer never started"
        time.sleep(0.02)
    time.sleep(0.3)  # a few layers in


def _wait_freed(worker, free_bytes: int, timeout_s: float = 10.0) -> None:
    """The worker holds no request and `free_bytes` of KV are free again (its receiver released the reservation)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = worker.Info(worker_pb2.InfoRequest(), timeout=2)
        if info.active_requests == 0 and info.kv_free_bytes == free_bytes:
            return
        assert time.monotonic() < deadline, f"the reservation was not freed: {info}"
        time.sleep(0.1)


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        proc.wait(timeout=30)


def test_fpga_worker_killed_mid_transfer_leaves_no_segment_after_restart(redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix)
    gpu_proc = _spawn(redis_prefix, "gpu-worker", "gpu-k", "--kv-transport", "shm")
    fpga_proc = _spawn(redis_prefix, "fpga-worker", "fpga-k1")
    again = None
    try:
        gpu_rec, fpga_rec = _record(registry, "gpu-k", gpu_proc), _record(registry, "fpga-k1", fpga_proc)
        segment = Path(fpga_rec.shm_segment)
        assert segment.exists() and str(fpga_proc.pid) in segment.name
        gpu, fpga = _stub(gpu_rec.address), _stub(fpga_rec.address)
        outcome = _prefill_in_background(gpu, fpga_rec, "killed-card")
        _wait_reserved(fpga)
        fpga_proc.send_signal(signal.SIGKILL)
        fpga_proc.wait(10)
        outcome["thread"].join(60)
        assert outcome.get("error") is not None, "the prefill cannot succeed once its card died"
        assert segment.exists()  # SIGKILL leaves it: only the next worker can clean up
        again = _spawn(redis_prefix, "fpga-worker", "fpga-k2")
        new_rec = _record(registry, "fpga-k2", again)
        assert not segment.exists(), "the new FPGA worker removes the dead one's segment at start"
        done = gpu.Prefill(worker_pb2.PrefillRequest(
            request_id="after", prompt_token_ids=PROMPT[:64], sampling=common_pb2.SamplingParams(max_new_tokens=4),
            target=worker_pb2.DecodeTarget(address=new_rec.address, worker_id="fpga-k2")), timeout=120)
        assert done.kv_transport == "shm"
        assert _stub(new_rec.address).Release(worker_pb2.ReleaseRequest(request_id="after")).released
        new_segment = Path(new_rec.shm_segment)
        _stop(again)
        assert not new_segment.exists(), "a worker stopped by SIGTERM removes its own segment"
    finally:
        _stop(gpu_proc, *([again] if again else []))


@pytest.mark.parametrize("transport", ["shm", "nixl"])
def test_gpu_worker_killed_mid_transfer_frees_the_reservation(transport, redis_prefix):
    registry = Registry(REDIS_URL, redis_prefix)
    fpga_proc = _spawn(redis_prefix, "fpga-worker", "fpga-g")
    gpu_proc = _spawn(redis_prefix, "gpu-worker", "gpu-g", "--kv-transport", transport)
    second = None
    try:
        fpga_rec, gpu_rec = _record(registry, "fpga-g", fpga_proc), _record(registry, "gpu-g", gpu_proc)
        fpga = _stub(fpga_rec.address)
        capacity = fpga.Info(worker_pb2.InfoRequest()).kv_capacity_bytes
        outcome = _prefill_in_background(_stub(gpu_rec.address), fpga_rec, "killed-gpu")
        _wait_reserved(fpga)
        gpu_proc.send_signal(signal.SIGKILL)
        gpu_proc.wait(10)
        outcome["thread"].join(60)
        _wait_freed(fpga, capacity)
        assert metric(fpga_rec.http_address, "glitches_kv_nixl_registrations") == 0
        assert metric(fpga_rec.http_address, "glitches_kv_streams") == 0
        second = _spawn(redis_prefix, "gpu-worker", "gpu-g2", "--kv-transport", transport)
        rec2 = _record(registry, "gpu-g2", second)
        done = _stub(rec2.address).Prefill(worker_pb2.PrefillRequest(
            request_id="after", prompt_token_ids=PROMPT[:64], sampling=common_pb2.SamplingParams(max_new_tokens=4),
            target=worker_pb2.DecodeTarget(address=fpga_rec.address, worker_id="fpga-g")), timeout=120)
        assert done.kv_transport == transport
        assert fpga.Release(worker_pb2.ReleaseRequest(request_id="after")).released
    finally:
        _stop(fpga_proc, *([second] if second else []))


def test_decode_gpu_killed_mid_transfer_and_prefill_gpu_killed_mid_transfer(redis_prefix):
    """A GPU worker with the decode role (issue #12 item 4) under both kills: SIGKILLed mid-transfer, its staging
    segment stays until the next decode worker starts (which removes it); a prefill GPU SIGKILLed mid-transfer
    into it leaves nothing reserved there (no request, every KV block free, no staging region)."""
    registry = Registry(REDIS_URL, redis_prefix)
    sender = _spawn(redis_prefix, "gpu-worker", "gpu-s", "--kv-transport", "shm")
    decoder = _spawn(redis_prefix, "gpu-worker", "gpu-d1", "--roles", "decode")
    procs = [sender, decoder]
    try:
        send_rec, dec_rec = _record(registry, "gpu-s", sender), _record(registry, "gpu-d1", decoder)
        segment = Path(dec_rec.shm_segment)
        assert segment.exists() and str(decoder.pid) in segment.name
        outcome = _prefill_in_background(_stub(send_rec.address), dec_rec, "killed-decoder")
        _wait_reserved(_stub(dec_rec.address))
        decoder.send_signal(signal.SIGKILL)
        decoder.wait(10)
        outcome["thread"].join(60)
        assert outcome.get("error") is not None, "the prefill cannot succeed once its decode target died"
        assert segment.exists()  # SIGKILL leaves it: only the next worker can clean up
        decoder = _spawn(redis_prefix, "gpu-worker", "gpu-d2", "--roles", "decode")
        procs.append(decoder)
        dec_rec = _record(registry, "gpu-d2", decoder)
        assert not segment.exists(), "the new decode GPU removes the dead one's staging segment at start"
        dec = _stub(dec_rec.address)
        full = dec.Info(worker_pb2.InfoRequest()).kv_free_bytes
        outcome = _prefill_in_background(_stub(send_rec.address), dec_rec, "killed-sender")
        _wait_reserved(dec)
        sender.send_signal(signal.SIGKILL)
        sender.wait(10)
        outcome["thread"].join(60)
        _wait_freed(dec, full)
        sender = _spawn(redis_prefix, "gpu-worker", "gpu-s2", "--kv-transport", "shm")
        procs.append(sender)
        rec = _record(registry, "gpu-s2", sender)
        done = _stub(rec.address).Prefill(worker_pb2.PrefillRequest(
            request_id="after", prompt_token_ids=PROMPT[:64], sampling=common_pb2.SamplingParams(max_new_tokens=4),
            target=worker_pb2.DecodeTarget(address=dec_rec.address, worker_id="gpu-d2")), timeout=120)
        assert done.kv_transport == "shm"
        assert dec.Release(worker_pb2.ReleaseRequest(request_id="after")).released
    finally:
        _stop(*procs)
