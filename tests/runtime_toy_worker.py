"""A trivial device for glitches/services/runtime/worker_runtime.py: no model, no engine; it "decodes" by counting.

Used by tests/test_worker_runtime.py and tests/test_held_withdrawal.py in-process and, as
`python -m tests.runtime_toy_worker PREFIX [--keeps-cache]`, as a real daemon process that is sent SIGTERM.
With keeps_cache it "caches" a new KV block name every 20 ms (ToyDevice.held_changes), so its held-KV
publisher always has something to write.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from glitches.services.runtime import worker_runtime
from glitches.services.cluster.kv_holds import KvHolds
from glitches.services.auth.request_auth import AuthBoundWorkerId, OpenAccess, RequestAuthVerifier
from glitches.services.runtime.settings import DaemonSettings
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from glitches.services.cluster.worker_record import KvBlocks

TOY_BLOCK_BYTES = 1024  # bytes of one toy KV block
TOY_BLOCKS = 64  # blocks the toy device has


@dataclass(frozen=True)
class ToySettings(DaemonSettings):
    slots: int = 2
    kv_token_secret: bytes = field(default=b"", repr=False)
    kv_hold_ttl_s: float = 20.0
    decode_step_s: float = 0.2  # how long one toy decode step takes, seconds
    keeps_cache: bool = False  # keep a new block name as cache every 20 ms, published to P:held:{id}


class ToyServicer(AuthBoundWorkerId, worker_pb2_grpc.WorkerServicer):
    def __init__(self, auth: RequestAuthVerifier | OpenAccess, slots: int, step_s: float):
        self.auth = auth
        self.slots = slots
        self.step_s = step_s
        self.free_blocks = TOY_BLOCKS
        self.on_change: Callable[[], None] = lambda: None
        self.worker_id = ""


    def info(self) -> worker_pb2.InfoResponse:
        return worker_pb2.InfoResponse(worker_id=self.worker_id, backend="toy", emulated=True,
                                       device_name="a counting toy", model="none", slots=self.slots,
                                       kv_capacity_bytes=TOY_BLOCKS * TOY_BLOCK_BYTES,
                                       kv_free_bytes=self.free_blocks * TOY_BLOCK_BYTES, kv_bytes_per_token=8,
                                       kv_transports=["grpc"])

    def Info(self, request, context):
        return self.info()

    def Decode(self, request, context):
        """max_new_tokens steps of step_s each, token ids 0, 1, 2, ..."""
        self.auth.check(request.auth_token, "decode", request.request_id)
        for token in range(request.sampling.max_new_tokens):
            time.sleep(self.step_s)
            yield worker_pb2.DecodeToken(token_id=token)

    def Release(self, request, context):
        self.auth.check(request.auth_token, "release", request.request_id)
        return worker_pb2.ReleaseResponse(released=False)

    def take_blocks(self, blocks: int) -> None:
        self.free_blocks -= blocks
        self.on_change()


class ToyDevice(worker_runtime.WorkerDevice):
    kind = "toy"
    role = "toy-worker"  # its own metrics registry, made on first use (services.metrics.registry)
    authorised_rpcs = ("Decode", "Release")
    settings: ToySettings

    def build(self, auth: RequestAuthVerifier | OpenAccess) -> ToyServicer:
        self.auth = auth
        self.servicer = ToyServicer(auth, self.settings.slots, self.settings.decode_step_s)
        self.released: list[str] = []
        return self.servicer

    def attach(self, poke: Callable[[], None]) -> KvHolds:
        self.servicer.on_change = poke
        self.holds = KvHolds(self.settings.kv_hold_ttl_s, self.released.append).start()
        return self.holds

    def kv_blocks(self, info: worker_pb2.InfoResponse) -> KvBlocks:
        return KvBlocks(16, TOY_BLOCK_BYTES, info.kv_free_bytes // TOY_BLOCK_BYTES)

    def held_changes(self) -> Callable[[], tuple[list[bytes], list[bytes]]] | None:
        if not self.settings.keeps_cache:
            return None
        self.cached: list[bytes] = []  # names "kept" so far, oldest first
        self._undrained = 0  # cached[-_undrained:] not yet drained
        lock = threading.Lock()

        def keep_one_every_20_ms():
            while True:
                time.sleep(0.02)
                with lock:
                    self.cached.append(len(self.cached).to_bytes(8, "big"))
                    self._undrained += 1

        def drain() -> tuple[list[bytes], list[bytes]]:
            with lock:
                added = self.cached[len(self.cached) - self._undrained:]
                self._undrained = 0
            return added, []

        threading.Thread(target=keep_one_every_20_ms, name="toy-cache", daemon=True).start()
        return drain

    def on_failure(self, out_of_service: Callable[[str], None]) -> None:
        self.fail = out_of_service  # tests call it as a failing card's backend would

    def active_requests(self) -> int:
        return 0

    def held_kv_bytes(self) -> int:
        return (TOY_BLOCKS - self.servicer.free_blocks) * TOY_BLOCK_BYTES

    def ready_details(self) -> str:
        return "toy=yes"


if __name__ == "__main__":  # python -m tests.runtime_toy_worker PREFIX [--keeps-cache]: serve until SIGTERM
    worker_runtime.serve(ToyDevice(ToySettings(redis_prefix=sys.argv[1], drain_grace_s=10.0,
                                               keeps_cache="--keeps-cache" in sys.argv[2:])))
    print(f"exited cleanly, threads left: {sorted(t.name for t in threading.enumerate())}", flush=True)
