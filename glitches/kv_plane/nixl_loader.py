"""NIXL's Python API, from the installed wheel: `nixl-cu12` (imports as nixl_cu12._api; its UCX backend
moves host memory between processes without a GPU, and registers GPU memory where CUDA exists).

The PyPI meta package `nixl` only re-exports a backend wheel and requires both nixl-cu12 and
nixl-cu13; the Makefile installs nixl-cu12 with --no-deps instead. `load()` raises
FAILED_PRECONDITION with the import error when neither is importable.
"""

from __future__ import annotations

import importlib
import logging

from glitches.services.runtime.errors import FailedPrecondition

BACKENDS = ["UCX"]


def load():
    errors = []
    for name in ("nixl_cu12._api", "nixl._api"):
        try:
            module = importlib.import_module(name)
            logging.getLogger("nixl").setLevel(logging.WARNING)  # its INFO lines on every agent start
            return module
        except ImportError as error:  # noqa: PERF203
            errors.append(f"{name}: {error}")
    raise FailedPrecondition("transport nixl needs NIXL (`pip install --no-deps nixl-cu12==1.5.1`): "
                             + "; ".join(errors))


def available() -> bool:
    try:
        load()
        return True
    except FailedPrecondition:
        return False


def new_agent(name: str, progress_thread: bool = False):
    """A NIXL agent with the UCX backend; thread-safe calls (STRICT sync), no progress thread by default.

    NIXL's progress thread spins: an idle agent with it used 2.9 s of CPU per 3 s here, a whole core
    for as long as the worker lives. Without it nothing is lost on this path: a host-memory WRITE
    between processes (UCX cma) is copied by the initiator inside transfer()/check_xfer_state(), and
    notifications arrive when the target polls get_new_notifs (glitches/kv_plane/nixl_receiver.py polls while
    a registration exists).
    """
    api = load()
    config = api.nixl_agent_config(enable_prog_thread=progress_thread, backends=BACKENDS,
                                   sync_mode=api.nixl_thread_sync_t.NIXL_THREAD_SYNC_STRICT)
    return api.nixl_agent(name, config)
