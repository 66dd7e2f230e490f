"""A whole cluster decoding on the C-simulated kernel source gives the same greedy tokens as the Python kernel."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def _answer(numerics: str) -> tuple[str, str]:
    """(answer text, the FPGA worker's log) of `glitches up --fpga-numerics NUMERICS --prompt ...` (greedy)."""
    run = subprocess.run([sys.executable, "-m", "glitches", "up", "--port", "0", "--fpga-workers", "1",
                          "--fpga-numerics", numerics, "--prompt", "Name three colours of the rainbow.",
                          "--max-tokens", "16"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "decoded on fpga worker fpga-0" in run.stderr
    log = (Path(re.search(r"logs in (\S+)", run.stderr).group(1)) / "fpga-0.log").read_text()
    answer = run.stdout.split("\nready ", 1)[1].split("\n", 1)[1]  # what follows the "ready ADDRESS" line
    return answer, log


def test_greedy_tokens_with_csim_numerics_equal_the_python_kernels():
    csim, csim_log = _answer("csim")
    python, _ = _answer("w4a8")
    assert "C-simulated with g++" in csim_log and "emulated=True" in csim_log
    assert csim.strip() and csim == python
