"""glitches.die_with_parent, the shim `glitches up` starts its daemons with and tests start theirs with
(tests/dies_with_pytest.py): a parent SIGKILLed leaves no child behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil

PARENT = textwrap.dedent("""
    import subprocess, sys, time
    from tests.dies_with_pytest import dies_with_pytest
    child = subprocess.Popen([*dies_with_pytest(), sys.executable, "-c", "import time; time.sleep(120)"])
    print(child.pid, flush=True)
    time.sleep(120)
""")


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_a_child_gets_sigterm_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    child = int(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 30  # until the shim has armed the signal and exec'd the child (same pid)
        while "time.sleep(120)" not in " ".join(psutil.Process(child).cmdline()):
            assert time.monotonic() < deadline, "the shim never exec'd the child"
            time.sleep(0.05)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone(child, 10), "the child outlived its SIGKILLed parent"
    finally:
        if psutil.pid_exists(child):
            os.kill(child, signal.SIGKILL)


def test_the_shim_refuses_to_start_when_its_parent_is_already_gone():
    done = subprocess.run([sys.executable, "-m", "glitches.die_with_parent", "1", sys.executable, "-c", "print(1)"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
