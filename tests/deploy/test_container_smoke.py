"""The container smoke test (scripts/container/smoke.sh) as a pytest test, marker `container`.

It builds the CPU image with podman, brings up the compose topology on the host network, answers one
prompt through an emulated FPGA worker and tears everything down. It takes minutes (README "Deploy" has the
measured phase times), so it is not part of `make test`: it runs only with GLITCHES_CONTAINER_SMOKE=1, e.g.
`GLITCHES_CONTAINER_SMOKE=1 .venv/bin/pytest -m container -s`, or without pytest: `make container-smoke`.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "container" / "smoke.sh"
TIMEOUT_S = 40 * 60  # a cold machine: debootstrap, pip install of torch and the rest, model conversion


@pytest.mark.container
def test_cpu_image_builds_and_the_compose_topology_answers_a_prompt(tmp_path):
    if os.environ.get("GLITCHES_CONTAINER_SMOKE") != "1":
        pytest.skip("minutes long: set GLITCHES_CONTAINER_SMOKE=1 (or run `make container-smoke`)")
    if os.geteuid() != 0:
        pytest.skip("needs root: installs podman and debootstraps the base image")
    timings = tmp_path / "timings.json"
    run = subprocess.run([str(SCRIPT)], cwd=ROOT, env={**os.environ, "GLITCHES_SMOKE_TIMINGS": str(timings)},
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-6000:] + run.stdout[-2000:]
    assert "(emulated FPGA)" in run.stdout  # scripts/container/check_answer.py's line for a good answer
    phases = json.loads(timings.read_text())
    assert set(phases) == {"install", "base", "build", "up", "answer", "down"}
    print(run.stdout)
