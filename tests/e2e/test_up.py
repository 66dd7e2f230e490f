"""`glitches up` with its own private Redis answers a prompt and leaves no process behind."""

from __future__ import annotations

import re
from pathlib import Path
import subprocess
import sys

import psutil
import pytest

pytestmark = pytest.mark.e2e


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(text in part for part in proc.info["cmdline"] or []):
                found.append(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_up_with_private_redis_answers_and_cleans_up():
    run = subprocess.run([sys.executable, "-m", "glitches", "up", "--port", "0", "--fpga-workers", "1",
                          "--prompt", "What is 2 + 2?", "--max-tokens", "6"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert re.search(r"^ready 127\.0\.0\.1:\d+$", run.stdout, re.MULTILINE)
    assert "decoded on fpga worker fpga-0" in run.stderr
    run_dir = re.search(r"logs in (\S+)", run.stderr).group(1)
    assert "kv_tokens=required" in (Path(run_dir) / "fpga-0.log").read_text()  # up made a secret for the cluster
    redis_url = re.search(r"redis (redis://\S+)", run.stderr).group(1)
    assert _processes_mentioning(run_dir) == [] and _processes_mentioning(redis_url) == []


def test_up_with_w4a8_numerics_decodes_on_the_emulated_kernel():
    run = subprocess.run([sys.executable, "-m", "glitches", "up", "--port", "0", "--fpga-workers", "1",
                          "--fpga-numerics", "w4a8", "--prompt", "Name a planet.", "--max-tokens", "6"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "decoded on fpga worker fpga-0" in run.stderr
    log = (Path(re.search(r"logs in (\S+)", run.stderr).group(1)) / "fpga-0.log").read_text()
    assert "W4A8 kernel" in log and "emulated=True" in log
    assert "modeled U280 decode" in run.stderr  # the timing model's figure, labelled as modeled
