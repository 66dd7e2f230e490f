"""Exec a command that receives SIGTERM when its parent dies.

    python -m glitches.die_with_parent PARENT_PID COMMAND [ARGS...]

`glitches up` starts every child through this shim instead of a preexec_fn:
running Python between fork() and exec() in a process that uses gRPC can abort
the child, while this shim is a fresh process. PR_SET_PDEATHSIG survives exec.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def command_prefix() -> list[str]:
    """The argv to put before a command so that it gets SIGTERM when the calling thread's process dies."""
    return [sys.executable, "-m", "glitches.die_with_parent", str(os.getpid())]


def main() -> None:
    parent, argv = int(sys.argv[1]), sys.argv[2:]
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the signal was armed
        sys.exit(1)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
