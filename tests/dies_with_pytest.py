"""A prefix for the argv of every long-lived process a test starts, so that it gets SIGTERM when pytest dies.

pytest's own teardown stops what a test started; a pytest that is SIGKILLed (a CI timeout, an OOM kill)
runs no teardown, and a cluster it started would keep its ports, its Redis keys and the CPU. The prefix
runs glitches.die_with_parent (PR_SET_PDEATHSIG), as `glitches up` does for its own children; the
process keeps its pid (the shim execs). Call it from the thread that outlives the process: the signal
fires when the thread that started the process ends, which for pytest's main thread is pytest's end.
"""

from __future__ import annotations

from glitches.die_with_parent import command_prefix as dies_with_pytest  # noqa: F401 - the tests' name for it
