"""Threads for the KV relayout: a layer's K scatter and V scatter run side by side.

The relayout (glitches/kv_plane/kv_layout.py) puts every 4 KiB block on another page 256 MiB away, so one
thread is bound by the memory system's latency, not its bandwidth: on this project's 2-core VM it moved
~0.5 of a sequential memcpy's bytes/s on one thread, and 1.5-1.7x that with K and V on two
(docs/benchmarks.md, KV data plane Run 5). Both halves are still one copy per byte.

Process-wide, as the cores are: `configure(threads)` once when a daemon starts (the workers'
`--kv-copy-threads`, default 2); 1 runs everything on the caller's thread. The helper is one
ThreadPoolExecutor thread (daemon start to exit; concurrent.futures joins it at interpreter exit).
torch releases the GIL inside its copies, so the two halves really overlap.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from glitches.services.runtime.errors import InvalidArgument

DEFAULT_THREADS = 2
MAX_THREADS = 2  # K and V: the relayout splits into two halves, no more
MIN_SPLIT_BYTES = 1 << 20  # below this a hand-off to the helper (~20-50 us) costs more than it saves

_threads = DEFAULT_THREADS
_pool: ThreadPoolExecutor | None = None
_lock = threading.Lock()


def check(threads: int) -> int:
    if not 1 <= threads <= MAX_THREADS:
        raise InvalidArgument(f"--kv-copy-threads must be 1 or 2 (K and V side by side), got {threads}")
    return threads


def configure(threads: int) -> None:
    """Threads every later relayout in this process uses (1 or 2)."""
    global _threads
    _threads = check(threads)


def threads() -> int:
    return _threads


def _helper() -> ThreadPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-copy")
        return _pool


def run_pair(first: Callable[[], None], second: Callable[[], None], nbytes: int) -> None:
    """Run first() and second(), on two threads when configured and nbytes (of both) is worth it.

    Both always finish before this returns (so the caller's notice covers both); the first error is raised.
    """
    if _threads < 2 or nbytes < MIN_SPLIT_BYTES:
        first()
        second()
        return
    done = _helper().submit(first)
    try:
        second()
    finally:
        done.result()  # waits even when second() failed; re-raises first()'s error
