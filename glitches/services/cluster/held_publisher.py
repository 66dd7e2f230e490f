"""A worker's held KV blocks, published for KV-aware routing (Registry.publish_held), off the request path.

Protocol: the worker's KV store returns the chain hashes (kv_plane/prefix_index.py) that started or
stopped being held since its last call (`drain() -> (added, removed)`; the GPU's KvPool.held_changes);
a thread drains them every `interval_s` and writes them to P:held:{worker id}, which expires with the
worker's heartbeat. A write Redis refuses is kept and merged into the next (the set converges once Redis
answers). `start` first deletes what an earlier process of the same worker id published (a restart loses
the cache). `stop` is for a worker leaving the registry (drain, SIGTERM, a device taken out of service):
no write lands after it returns (one in flight is waited for), and it deletes P:held:{id}, since nobody
would keep a stopped publisher's set current; when Redis does not answer, the key still expires with the
heartbeat nobody renews. The scheduler reads the set as a hint (a card verifies token ids before it
reuses anything): a stale entry costs time, never correctness. Started by the worker runtime
(services/runtime/worker_runtime.py) for the GPU worker (KvPool.held_changes) and the emulated cards (their
KV store's held_changes).
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
        self._pending: dict[bytes, bool] = {}  # hash -> held (True) or not: drained, not yet written
        self._lock = threading.Lock()  # one drain-and-write at a time; stop() waits for the one in flight
        self._stopped = False  # under _lock: no write after stop()
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
        """Publish nothing more and delete what was published (the worker leaves the registry). Idempotent."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        with self._lock:  # a write still in flight (Redis retrying past the join) lands before the delete
            if self._stopped:
                return
            self._stopped = True
            self._pending = {}
        try:
            self._registry.clear_held(self._worker_id())
        except Unavailable as error:
            log.warning("could not delete the held KV blocks published (they expire with the heartbeat): %s", error)

    def publish_once(self) -> bool:
        """Write what was drained so far; False when Redis did not take it (kept for the next try).
        After stop() it writes nothing (True)."""
        with self._lock:
            return self._stopped or self._publish()

    def _publish(self) -> bool:
        added, removed = self._drain()
        self._pending.update({h: False for h in removed})
        self._pending.update({h: True for h in added})  # a drain reports each hash once, by its last change
        if not self._pending:
            return True
        try:
            self._registry.publish_held(self._worker_id(), [h for h, v in self._pending.items() if v],
                                        [h for h, v in self._pending.items() if not v])
        except Unavailable as error:
            log.warning("could not publish the held KV blocks, will retry: %s", error)
            return False
        self._pending = {}
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.publish_once()
