"""Keeps the leases of this scheduler replica's running requests alive.

Every second it renews each running request's claims and sweeps claims whose
leases expired (another replica died). If this process dies, its leases expire
after lease_ttl_s and any live daemon's sweep frees the slots.

The same beat renews the KV the workers hold for these requests (`hold_on`): each
worker frees KV of a request that is not decoding once no renewal came for its
--kv-hold-ttl-s (glitches/services/cluster/kv_holds.py), so a dead scheduler's KV goes too, not only
its Redis claims. `renew_holds({(address, worker_id): [request ids]})` sends them
(Orchestrator._renew_holds: one non-blocking RenewKvHolds call per worker).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from glitches.services.runtime.errors import Unavailable
from glitches.services.cluster.registry import Registry

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, registry: Registry, interval_s: float = 1.0):
        self._registry = registry
        self._interval_s = interval_s
        self._running: set[str] = set()
        self._holds: dict[str, set[tuple[str, str]]] = {}  # request id -> {(worker address, worker id)}
        self.renew_holds: Callable[[dict[tuple[str, str], list[str]]], None] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def add(self, request_id: str) -> None:
        with self._lock:
            self._running.add(request_id)

    def discard(self, request_id: str) -> None:
        with self._lock:
            self._running.discard(request_id)
            self._holds.pop(request_id, None)

    def hold_on(self, request_id: str, address: str, worker_id: str) -> None:
        """The request may hold KV on this worker: renew it there until discard()."""
        with self._lock:
            self._holds.setdefault(request_id, set()).add((address, worker_id))

    def held(self) -> dict[tuple[str, str], list[str]]:
        """(worker address, worker id) -> the request ids to renew there."""
        groups: dict[tuple[str, str], list[str]] = {}
        with self._lock:
            for request_id, workers in self._holds.items():
                for worker in workers:
                    groups.setdefault(worker, []).append(request_id)
        return groups

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                running = list(self._running)
            if self.renew_holds is not None:
                try:
                    self.renew_holds(self.held())
                except Exception:  # a renewal problem must never stop the Redis leases
                    log.exception("renewing the workers' KV holds failed")
            try:
                for request_id in running:
                    self._registry.renew(request_id)
                for claim in self._registry.sweep_expired():
                    log.warning("released claim %s: its lease expired", claim)
            except Unavailable as error:
                log.warning("lease renewal failed, will retry: %s", error)
