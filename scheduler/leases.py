"""Keeps the leases of this scheduler replica's running requests alive.

Every second it renews each running request's claims and sweeps claims whose
leases expired (another replica died). If this process dies, its leases expire
after lease_ttl_s and any live daemon's sweep frees the slots.
"""

from __future__ import annotations

import logging
import threading

from services.errors import Unavailable
from services.registry import Registry

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, registry: Registry, interval_s: float = 1.0):
        self._registry = registry
        self._interval_s = interval_s
        self._running: set[str] = set()
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

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                running = list(self._running)
            try:
                for request_id in running:
                    self._registry.renew(request_id)
                for claim in self._registry.sweep_expired():
                    log.warning("released claim %s: its lease expired", claim)
            except Unavailable as error:
                log.warning("lease renewal failed, will retry: %s", error)
