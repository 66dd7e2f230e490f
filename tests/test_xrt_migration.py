"""The scheduler moves a request off a card whose kernel run hangs: `glitches up` (1 GPU worker, no emulated
FPGA) plus a `glitches fpga-worker --backend xrt` on the real XRT library under its no-op shim, whose runs
complete 2 s late (xrt.ini) against --run-timeout-s 0.3. The request is placed on the card (FPGAs preferred),
its Decode fails UNAVAILABLE, the scheduler migrates it to GPU assist: it finishes with one migration and the
same greedy tokens as a request that never met the card; the card's record leaves the registry.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import pytest

from glitches.fpga_worker.xclbin_meta import write_xclbin
from glitches import Client
from glitches.services.auth.kv_token import SECRET_ENV, new_secret
from glitches.services.cluster.registry import Registry
from tests.conftest import REDIS_URL
from tests.dies_with_pytest import dies_with_pytest
from tests.e2e.conftest import start_up, stop_up
from tests.xrt_noop_env import noop_environment, require_xrt

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _fpga_workers(registry: Registry) -> list[str]:
    return [w.record.worker_id for w in registry.workers() if w.record.kind == "fpga"]


def test_a_request_on_a_hung_card_migrates_with_identical_tokens(tmp_path):
    require_xrt()
    prefix, secret = f"glitches-xrt-{uuid.uuid4().hex[:8]}", {SECRET_ENV: new_secret()}
    registry = Registry(REDIS_URL, prefix)
    up, address = start_up(["--gpu-workers", "1", "--fpga-workers", "0", "--port", "0", "--redis-url", REDIS_URL,
                            "--redis-prefix", prefix, "--no-prefix-cache"], env=secret)
    ini = tmp_path / "xrt.ini"
    ini.write_text("[Runtime]\nnoop_completion_delay_us=2000000\n")
    env = {**os.environ, **secret, **noop_environment(tmp_path / "xilinx_xrt"), "XRT_INI_PATH": str(ini)}
    card = subprocess.Popen(
        [*dies_with_pytest(), sys.executable, "-m", "glitches", "fpga-worker", "--backend", "xrt", "--xclbin",
         str(write_xclbin(tmp_path / "glitches_decode.xclbin")), "--hbm-bytes", str(1 << 30), "--run-timeout-s",
         "0.3", "--redis-url", REDIS_URL, "--redis-prefix", prefix],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in card.stdout:
            lines.append(line)
            if " ready " in line:
                break
        assert re.search(r" ready \S+", lines[-1] if lines else ""), "".join(lines[-20:])
        with Client(address, timeout_s=300) as client:
            moved = client.generate("Write a list of fruits, one per line:", max_tokens=8)
            assert moved.migrations == 1  # placed on the card, moved to GPU assist when its run hung
            deadline = time.monotonic() + 10
            while _fpga_workers(registry) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert _fpga_workers(registry) == []  # out of service: no longer placed on
            direct = client.generate("Write a list of fruits, one per line:", max_tokens=8)
            assert direct.migrations == 0 and direct.token_ids == moved.token_ids
        assert card.poll() is None  # the card's worker process is still up
        card.terminate()
        assert card.wait(60) == 0  # and drains, closes its XRT handles and exits cleanly on SIGTERM
    finally:
        if card.poll() is None:
            card.terminate()
            card.wait(60)
        stop_up(up, [])
