"""The toy device plugged into glitches/services/runtime/worker_runtime.py: its settings and its WorkerDevice."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from glitches.services.generation import models
from glitches.services.runtime import worker_runtime
from glitches.services.cluster.kv_holds import KvHolds
from glitches.services.auth.kv_token import KvTokenVerifier
from glitches.services.auth.request_auth import OpenAccess, RequestAuthVerifier
from glitches.services.runtime.settings import DaemonSettings
from glitches.services.stubs.glitches.v1 import worker_pb2
from glitches.services.cluster.worker_record import KvBlocks
from tests.toy_decoder.servicer import KIND, ToyServicer
from tests.toy_decoder.store import ToyStore


@dataclass(frozen=True)
class ToySettings(DaemonSettings):
    slots: int = 2  # requests holding KV at once
    capacity_tokens: int = 8192  # KV tokens it holds across its requests
    kv_token_secret: bytes = field(default=b"", repr=False)  # the cluster's secret; b"": KV and calls open
    kv_hold_ttl_s: float = 20.0  # received KV nobody renews is freed this long after its last renewal


class ToyDevice(worker_runtime.WorkerDevice):
    kind = KIND
    role = "toy-npu-worker"  # its own metrics registry (services.metrics.registry makes it)
    authorised_rpcs = ("Decode", "Release", "RenewKvHolds")
    settings: ToySettings

    def build(self, auth: RequestAuthVerifier | OpenAccess) -> ToyServicer:
        source = models.resolve_model(self.settings.model)
        model = models.load_causal_lm(source, "cpu", "float32")
        self.store = ToyStore(model, self.settings.capacity_tokens, self.settings.slots)
        secret = self.settings.kv_token_secret
        self.servicer = ToyServicer(self.store, models.load_tokenizer(source), source.name,
                                    KvTokenVerifier(secret) if secret else None, auth)
        return self.servicer

    def attach(self, poke: Callable[[], None]) -> KvHolds:
        holds = KvHolds(self.settings.kv_hold_ttl_s, self.store.release).start()
        self.servicer.holds = holds
        return holds

    def kv_blocks(self, info: worker_pb2.InfoResponse) -> KvBlocks:
        per_token = info.kv_bytes_per_token
        return KvBlocks(1, per_token, info.kv_free_bytes // per_token)  # exact reservations: 1-token blocks

    def active_requests(self) -> int:
        return len(self.store.active_requests())

    def held_kv_bytes(self) -> int:
        return (self.store.capacity_tokens - self.store.free_tokens()) * self.store.geometry().bytes_per_token

    def ready_details(self) -> str:
        return "backend=toy emulated=True (a test toy)"
