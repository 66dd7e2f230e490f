"""Worker-side lifetime of held KV: what no live scheduler renews expires.

Protocol (every worker keeps one `KvHolds`):
- `hold(id)` when the worker starts holding KV for a request (a GPU-assist prefill's cache
  when Prefill returns). The hold expires `ttl_s` later unless renewed.
- `hold(id, receiving=True)` for KV still arriving (an FPGA reservation at the TransferKV
  header): it never expires while the transfer runs (the transfer's own deadlines bound it, and
  its failure releases it); `received(id)` starts the countdown once the KV is complete.
- `renew(ids)` from the scheduler's RenewKvHolds call (glitches/scheduler/leases.py, every second
  while the request lives) pushes each known id's expiry to now + ttl_s.
- `begin_decode(id)` / `end_decode(id)` bracket a Decode stream: a decoding request never
  expires (its stream's end frees it), and a second concurrent Decode of the same id is
  refused with FAILED_PRECONDITION (the per-request decode lock). After `end_decode` the
  hold counts down again from ttl_s.
- `forget(id)` when the KV goes (Release, a finished Decode, a failed transfer).
A reaper thread calls `release(id)` for every hold past its expiry, outside the lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument
from glitches.services.stubs.glitches.v1 import worker_pb2

log = logging.getLogger(__name__)
DEFAULT_TTL_S = 20.0  # held KV outlives a dead scheduler by at most this long, seconds


@dataclass(frozen=True)
class HeldSummary:
    requests: int  # requests holding KV here (decoding or not)
    expiring: int  # of them, not decoding: they expire unless renewed
    kv_bytes: int  # bytes the holds were registered with


class KvHolds:
    def __init__(self, ttl_s: float, release: Callable[[str], object], clock: Callable[[], float] = time.monotonic,
                 interval_s: float = 0.25):
        if ttl_s <= 0:
            raise InvalidArgument(f"--kv-hold-ttl-s must be positive, got {ttl_s}")
        self.ttl_s = ttl_s
        self._release = release
        self._clock = clock
        self._interval_s = interval_s
        self._expiry: dict[str, float] = {}  # request id -> monotonic expiry (ignored while decoding)
        self._bytes: dict[str, int] = {}  # request id -> KV bytes held
        self._decoding: set[str] = set()
        self._receiving: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kv-hold-reaper", daemon=True)
        self.expired_total = 0

    def start(self) -> KvHolds:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def hold(self, request_id: str, kv_bytes: int = 0, receiving: bool = False) -> None:
        with self._lock:
            self._expiry[request_id] = self._clock() + self.ttl_s
            self._bytes[request_id] = kv_bytes
            if receiving:
                self._receiving.add(request_id)

    def received(self, request_id: str) -> None:
        """The KV transfer completed: the hold counts down from now."""
        with self._lock:
            self._receiving.discard(request_id)
            if request_id in self._expiry:
                self._expiry[request_id] = self._clock() + self.ttl_s

    def _busy(self, request_id: str) -> bool:
        return request_id in self._decoding or request_id in self._receiving

    def renew(self, request_ids: Iterable[str]) -> list[str]:
        """Push each held id's expiry to now + ttl_s; returns the ids not held here."""
        unknown = []
        with self._lock:
            now = self._clock()
            for request_id in request_ids:
                if request_id in self._expiry:
                    self._expiry[request_id] = now + self.ttl_s
                else:
                    unknown.append(request_id)
        return unknown

    def begin_decode(self, request_id: str) -> None:
        with self._lock:
            if request_id in self._decoding:
                raise FailedPrecondition(f"request {request_id} is already decoding on this worker; "
                                         "one Decode stream per request at a time")
            self._decoding.add(request_id)

    def end_decode(self, request_id: str) -> None:
        with self._lock:
            self._decoding.discard(request_id)
            if request_id in self._expiry:
                self._expiry[request_id] = self._clock() + self.ttl_s

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._expiry.pop(request_id, None)
            self._bytes.pop(request_id, None)
            self._receiving.discard(request_id)

    def summary(self) -> HeldSummary:
        with self._lock:
            expiring = sum(1 for r in self._expiry if not self._busy(r))
            return HeldSummary(len(self._expiry), expiring, sum(self._bytes.values()))

    def expire(self) -> list[str]:
        """Release every hold past its expiry that is not decoding; returns their ids."""
        with self._lock:
            now = self._clock()
            due = [r for r, t in self._expiry.items() if t <= now and not self._busy(r)]
            for request_id in due:
                del self._expiry[request_id]
                self._bytes.pop(request_id, None)
            self.expired_total += len(due)
        for request_id in due:
            log.warning("released the KV of %s: no scheduler renewed it for %.0f s (its scheduler died?)",
                        request_id, self.ttl_s)
            try:
                self._release(request_id)
            except Exception:  # one bad release must not stop the reaper
                log.exception("releasing expired KV of %s failed", request_id)
        return due

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.expire()


def renew_rpc(holds: KvHolds, auth, request: worker_pb2.RenewKvHoldsRequest) -> worker_pb2.RenewKvHoldsResponse:
    """Worker/RenewKvHolds: check every renewal's authorisation (one refused: PERMISSION_DENIED for the call),
    then renew the held ids. `auth` is a services.request_auth verifier."""
    for renewal in request.renewals:
        auth.check(renewal.auth_token, "renew", renewal.request_id)
    return worker_pb2.RenewKvHoldsResponse(unknown_request_ids=holds.renew(r.request_id for r in request.renewals))
