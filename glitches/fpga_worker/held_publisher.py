"""Publishes which KV blocks the card keeps as cache (Registry.publish_held), off the request path.

Protocol: the card's KV store records every chain hash that starts or stops being held
(decode_contract/retained_kv.py, `drain`); this thread drains those changes every `interval_s`
and writes them to P:held:{worker id} (glitches/services/cluster/registry.py), which expires with the
worker's heartbeat; `start` first deletes what an earlier process of the same worker id left there
(a restart loses the cache). A write that fails (Redis away) is kept and merged into the next one,
so the set converges once Redis answers. Routing reads it as a hint only: the card verifies token ids before it
reuses anything, so a stale entry costs time, never correctness.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from glitches.services.cluster.registry import Registry
from glitches.services.runtime.errors import Unavailable

log = logging.getLogger(__name__)


class HeldPublisher:
    def __init__(self, registry: Registry, worker_id: Callable[[], str],
                 drain: Callable[[], tuple[list[bytes], list[bytes]]], interval_s: float = 0.5):
        self._registry, self._worker_id, self._drain = registry, worker_id, drain
        self._interval_s = interval_s
        self._added: set[bytes] = set()  # drained but not yet written
        self._removed: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="held-kv-publisher", daemon=True)

    def start(self) -> HeldPublisher:
        """Clear what an earlier process with this worker id published (its cache died with it), then run."""
        try:
            self._registry.clear_held(self._worker_id())
        except Unavailable as error:
            log.warning("could not clear the held KV blocks published before: %s", error)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
        self.publish_once()

    def publish_once(self) -> bool:
        """Write the changes drained so far; False when Redis did not take them (kept for the next try)."""
        added, removed = self._drain()
        self._added = (self._added - set(removed)) | set(added)
        self._removed = (self._removed - set(added)) | set(removed)
        if not self._added and not self._removed:
            return True
        try:
            self._registry.publish_held(self._worker_id(), sorted(self._added), sorted(self._removed))
        except Unavailable as error:
            log.warning("could not publish the held KV blocks, will retry: %s", error)
            return False
        self._added, self._removed = set(), set()
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.publish_once()
