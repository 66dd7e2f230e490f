"""The FPGA worker daemon: its card (or the emulator) and servicer, plugged into glitches/services/runtime/worker_runtime.py."""

from __future__ import annotations

import logging
from collections.abc import Callable

from glitches.decode_contract.wrappers import KvHeld, Notifying, SlotLimit
from glitches.fpga_worker.sensors import CachedSensors, publish_sensors
from glitches.fpga_worker.server import FpgaWorkerServicer, backend_vocab, build_backend
from glitches.fpga_worker.settings import FpgaWorkerSettings
from glitches.kv_plane import kv_copy_threads
from glitches.services.runtime import metrics, worker_runtime
from glitches.services.generation import models
from glitches.services.cluster.kv_holds import KvHolds
from glitches.services.auth.kv_token import SECRET_ENV, KvTokenVerifier
from glitches.services.auth.request_auth import OpenAccess, RequestAuthVerifier
from glitches.services.stubs.glitches.v1 import worker_pb2
from glitches.services.cluster.worker_record import KvBlocks

log = logging.getLogger(__name__)


class FpgaDevice(worker_runtime.WorkerDevice):
    kind = "fpga"
    role = "fpga-worker"
    # TransferKV is checked by its own KV token
    authorised_rpcs = ("Decode", "DecodeFromHeld", "Release", "RenewKvHolds", "EvictCache")
    settings: FpgaWorkerSettings

    def grpc_threads(self) -> int:
        return 32 + self.settings.max_kv_streams  # KV streams beside decodes and the rest

    def build(self, auth: RequestAuthVerifier | OpenAccess) -> FpgaWorkerServicer:
        settings = self.settings
        source = models.resolve_model(settings.model)
        kv_copy_threads.configure(settings.kv_copy_threads)
        self.backend = backend = build_backend(settings, source)
        # reserve/release re-publish the record at once (on_change is the heartbeat's poke, set by attach)
        self.notifying = Notifying(backend)
        self.holds = KvHolds(settings.kv_hold_ttl_s, self.notifying.release)  # frees what nobody renews
        held = KvHeld(SlotLimit(self.notifying, settings.slots), self.holds)  # slot limit + expiry
        self.kv_tokens = KvTokenVerifier(settings.kv_token_secret) if settings.kv_token_secret else None
        if self.kv_tokens is None:
            log.warning("KV transfers are UNAUTHENTICATED: no KV token secret is set, so this worker accepts KV "
                        "from anyone who reaches its port; give it and the scheduler the same %s (or "
                        "--kv-token-secret-file)", SECRET_ENV)
        tokenizer = models.load_tokenizer(source)
        self.servicer = FpgaWorkerServicer(
            held, tokenizer, "", source.name, settings.slots, self.kv_tokens, settings.kv_transport,
            (settings.kv_header_timeout_s, settings.kv_stall_timeout_s, settings.max_kv_streams),
            holds=self.holds, auth=auth, vocab_size=backend_vocab(backend, tokenizer),
            kv_retention=settings.kv_retention)
        self.block_bytes = backend.geometry().block_bytes
        self.facts = backend.facts()
        return self.servicer

    def attach(self, poke: Callable[[], None]) -> KvHolds:
        self.notifying.on_change = poke
        return self.holds.start()

    def held_changes(self):
        """Kept chains go to P:held:{id} for KV-aware routing (cards that keep KV, unless --no-kv-retention)."""
        return getattr(self.backend, "held_changes", None) if self.settings.kv_retention else None

    def kv_blocks(self, info: worker_pb2.InfoResponse) -> KvBlocks:
        return KvBlocks(self.backend.kv_granularity_tokens(), self.block_bytes, info.kv_free_bytes // self.block_bytes)

    def active_requests(self) -> int:
        return len(self.backend.active_requests())

    def held_kv_bytes(self) -> int:
        return self.facts.kv_capacity_bytes - self.backend.kv_free_bytes()

    def publish_metrics(self) -> None:
        backend, servicer = self.backend, self.servicer
        metrics.KV_FREE_BYTES.set_function(backend.kv_free_bytes)
        metrics.publish_kv_intake(self.role, servicer)
        metrics.KV_CAPACITY_BYTES.set(self.facts.kv_capacity_bytes)
        store = getattr(backend, "kv", None)  # the emulated cards' KV store (it keeps finished requests' KV)
        if store is not None and hasattr(store, "adopt_lookups"):
            metrics.CARD_KV_CACHED_BYTES.set_function(store.evictable_bytes)
            metrics.CARD_KV_CACHED_REGIONS.set_function(lambda: len(store.retained.keys()))
            metrics.CARD_KV_EVICTIONS.set_function(lambda: store.evictions)
            metrics.CARD_HELD_LOOKUPS.set_function(lambda: store.adopt_lookups)
            metrics.CARD_HELD_HITS.set_function(lambda: store.adopt_hits)
            metrics.CARD_HELD_HIT_RATE.set_function(
                lambda: store.adopt_hits / store.adopt_lookups if store.adopt_lookups else 0.0)
            metrics.CARD_HELD_REUSED_TOKENS.set_function(lambda: store.adopted_tokens)
        publish_sensors(self.role, self.settings.device, CachedSensors(backend.sensors))  # live, cached 1 s

    def on_failure(self, out_of_service: Callable[[str], None]) -> None:
        if hasattr(self.backend, "on_failure"):  # the xrt card: a hung kernel run takes it out of service
            self.backend.on_failure = out_of_service

    def ready_details(self) -> str:
        facts = self.facts
        return (f"backend={facts.backend} emulated={facts.emulated} device={facts.device_name!r} "
                f"kv_tokens={'required' if self.kv_tokens else 'OFF'} kv_hold_ttl_s={self.settings.kv_hold_ttl_s:g}")


def serve(settings: FpgaWorkerSettings) -> None:
    device = FpgaDevice(settings)
    try:
        worker_runtime.serve(device)
    finally:  # the xrt card frees its XRT handles: a process that exits holding them crashes in XRT's teardown
        close = getattr(getattr(device, "backend", None), "close", None)
        if close is not None:
            close()
