"""A hung kernel run fails one request, not the worker: a real `glitches fpga-worker --backend xrt` process on
the real XRT library under its no-op shim, with the shim's completion delay (xrt.ini
Runtime.noop_completion_delay_us, 2 s) far beyond --run-timeout-s (0.3 s).

The Decode fails with UNAVAILABLE naming the timeout (the scheduler's cue to move the request); the process
stays up: health turns NOT_SERVING, the record leaves the registry, Info and Release still answer, new KV is
refused as UNAVAILABLE; SIGTERM still stops it cleanly. XRT reads xrt.ini once per process, hence the process.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from glitches.fpga_worker.xclbin_meta import write_xclbin
from glitches.services.runtime.channels import insecure_channel
from glitches.services.cluster.registry import Registry
from glitches.services.generation.sampling import Sampling
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from tests.conftest import REDIS_URL
from tests.dies_with_pytest import dies_with_pytest
from tests.worker_helpers import KV_END, kv_header, kv_layer, transfer
from tests.xrt_noop_env import noop_environment, require_xrt

DELAY_US = 2_000_000  # the no-op shim completes each run this long after its start, microseconds
RUN_TIMEOUT_S = 0.3


@pytest.fixture
def hung_worker(tiny_source, redis_prefix, tmp_path):
    require_xrt()
    ini = tmp_path / "xrt.ini"
    ini.write_text(f"[Runtime]\nnoop_completion_delay_us={DELAY_US}\n")
    env = {**os.environ, **noop_environment(tmp_path / "xilinx_xrt"), "XRT_INI_PATH": str(ini)}
    xclbin = write_xclbin(tmp_path / "glitches_decode.xclbin")
    process = subprocess.Popen(
        [*dies_with_pytest(), sys.executable, "-m", "glitches", "fpga-worker", "--backend", "xrt", "--xclbin",
         str(xclbin), "--model", str(tiny_source.path), "--hbm-bytes", str(32 * 1024 * 1024), "--run-timeout-s",
         str(RUN_TIMEOUT_S), "--redis-prefix", redis_prefix],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready, lines = "", []
        for line in process.stdout:  # the daemon prints its ready line once registered
            lines.append(line)
            if " ready " in line:
                ready = line
                break
        address = re.search(r" ready (\S+)", ready)
        assert address, "the worker did not start:\n" + "".join(lines[-20:])
        yield process, address.group(1), Registry(REDIS_URL, redis_prefix), ready
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def test_a_hung_run_fails_one_request_not_the_worker(hung_worker):
    process, address, registry, ready = hung_worker
    assert "backend=xrt emulated=True" in ready and "no-op shim" in ready
    channel = insecure_channel(address)
    stub, health = worker_pb2_grpc.WorkerStub(channel), health_pb2_grpc.HealthStub(channel)
    worker_id = stub.Info(worker_pb2.InfoRequest()).worker_id
    assert worker_id in {w.record.worker_id for w in registry.workers()}
    assert transfer(stub, [kv_header("r"), kv_layer(0), kv_layer(1), KV_END])

    started = time.monotonic()
    sampling = Sampling(max_new_tokens=2).to_proto(common_pb2.SamplingParams)
    answered_during_run = []

    def info_while_the_run_hangs():  # the step thread waits with the GIL released: other RPCs go on
        time.sleep(RUN_TIMEOUT_S / 3)
        asked = time.monotonic()
        stub.Info(worker_pb2.InfoRequest(), timeout=RUN_TIMEOUT_S)
        answered_during_run.append((asked - started, time.monotonic() - started))

    helper = threading.Thread(target=info_while_the_run_hangs)
    helper.start()
    with pytest.raises(grpc.RpcError) as failed:
        list(stub.Decode(worker_pb2.DecodeRequest(request_id="r", first_token_id=1, position=4, sampling=sampling)))
    failed_at = time.monotonic() - started
    helper.join()
    assert answered_during_run and answered_during_run[0][1] < failed_at  # answered while the run was in flight
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE  # the scheduler's WorkerLost: it migrates
    assert f"did not finish within {RUN_TIMEOUT_S:g} s" in failed.value.details()
    assert time.monotonic() - started < DELAY_US / 1e6  # failed at the timeout, not when the shim finished

    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.NOT_SERVING
    deadline = time.monotonic() + 5
    while worker_id in {w.record.worker_id for w in registry.workers()} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert worker_id not in {w.record.worker_id for w in registry.workers()}  # schedulers no longer place here
    info = stub.Info(worker_pb2.InfoRequest())  # the process still answers
    assert info.worker_id == worker_id and info.active_requests == 0  # the failed request's KV was released
    assert not stub.Release(worker_pb2.ReleaseRequest(request_id="r")).released
    with pytest.raises(grpc.RpcError) as refused:
        transfer(stub, [kv_header("s"), kv_layer(0), kv_layer(1), KV_END])
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE and "out of service" in refused.value.details()
    channel.close()

    process.terminate()
    assert process.wait(30) == 0  # SIGTERM still drains and exits cleanly
