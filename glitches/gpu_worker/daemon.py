"""The GPU worker daemon: its engine and servicer, plugged into glitches/services/runtime/worker_runtime.py."""

from __future__ import annotations

from collections.abc import Callable

from glitches.decode_contract.wrappers import KvHeld
from glitches.gpu_worker.engine import GpuEngine
from glitches.gpu_worker.kv_intake import GpuKvIntake
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.kv_plane import kv_copy_threads
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.services.runtime import metrics, worker_runtime
from glitches.services.generation import models
from glitches.services.cluster.kv_holds import KvHolds
from glitches.services.auth.kv_token import KvTokenVerifier
from glitches.services.runtime.observability import watch_cuda_device
from glitches.services.auth.request_auth import OpenAccess, RequestAuthVerifier
from glitches.services.stubs.glitches.v1 import worker_pb2
from glitches.services.cluster.worker_caps import ROLE_DECODE
from glitches.services.cluster.worker_record import KvBlocks


class GpuDevice(worker_runtime.WorkerDevice):
    kind = "gpu"
    role = "gpu-worker"
    authorised_rpcs = ("Prefill", "Decode", "Release", "RenewKvHolds", "EvictCache")
    settings: GpuWorkerSettings

    def build(self, auth: RequestAuthVerifier | OpenAccess) -> GpuWorkerServicer:
        settings = self.settings
        source = models.resolve_model(settings.model)
        kv_copy_threads.configure(settings.kv_copy_threads)
        self.engine = GpuEngine(settings, source)
        settings = self.settings = self.engine.settings  # --slots 0 resolved from the KV budget
        roles = settings.role_set()
        self.intake = None
        release = self.engine.release
        if ROLE_DECODE in roles:  # KV from other GPU workers' prefills lands in a staging segment, then our blocks
            self.intake = GpuKvIntake(self.engine, int(settings.kv_staging_gib * 2**30), settings.worker_id or "gpu")
            release = self.intake.release
        self.holds = KvHolds(settings.kv_hold_ttl_s, release).start()  # frees held KV nobody renews
        # received KV is held from its header on, and expires once complete unless renewed (as on an FPGA)
        intake = KvHeld(self.intake, self.holds) if self.intake is not None else None
        kv_tokens = KvTokenVerifier(settings.kv_token_secret) if settings.kv_token_secret else None
        self.servicer = GpuWorkerServicer(self.engine, "", source.name, settings.tls(), self.holds, auth, roles,
                                          intake, kv_tokens)
        return self.servicer

    def grpc_threads(self) -> int:
        return 32 + (self.settings.max_kv_streams if self.intake is not None else 0)

    def attach(self, poke: Callable[[], None]) -> KvHolds:
        if "nixl" in self.servicer._sends():  # start the NIXL agent now, not during the first transfer
            from glitches.kv_plane.nixl_writer import local_agent

            local_agent()
        self.engine.requests.on_change = poke  # placement sees slots and KV change within a beat
        return self.holds

    def held_changes(self):
        """Cached chains go to P:held:{id} for KV-aware routing (none with --no-prefix-cache)."""
        return self.engine.pool.held_changes if self.settings.prefix_cache else None

    def kv_blocks(self, info: worker_pb2.InfoResponse) -> KvBlocks:
        return KvBlocks(KV_BLOCK_TOKENS, self.engine.pool.block_bytes, info.kv_free_blocks)

    def active_requests(self) -> int:
        return self.engine.active_requests()

    def held_kv_bytes(self) -> int:
        return self.holds.summary().kv_bytes

    def publish_metrics(self) -> None:
        engine = self.engine
        metrics.GPU_KV_FREE_BLOCKS.set_function(lambda: engine.pool.free_blocks)
        metrics.GPU_ASSIST_ACTIVE.set_function(engine.requests.assist_active)
        pool = engine.pool
        metrics.GPU_PREFIX_CACHED_BLOCKS.set_function(lambda: pool.cached_blocks)
        metrics.GPU_PREFIX_EVICTABLE_BLOCKS.set_function(lambda: pool.evictable_blocks)
        metrics.GPU_PREFIX_EVICTIONS.set_function(lambda: pool.evictions)
        metrics.GPU_PREFIX_LOOKUP_BLOCKS.set_function(lambda: pool.lookup_blocks)
        metrics.GPU_PREFIX_HIT_BLOCKS.set_function(lambda: pool.hit_blocks)
        metrics.GPU_PREFIX_HIT_RATE.set_function(lambda: pool.hit_blocks / pool.lookup_blocks if pool.lookup_blocks
                                                 else 0.0)
        watch_cuda_device(self.role, engine.device)
        if self.intake is not None:  # decode role: the KV streams it receives
            metrics.publish_kv_intake(self.role, self.servicer)

    def http_routes(self) -> dict:
        """GET /steps?since=<seq>&limit=<n>: the step loop's log (glitches/gpu_worker/step_log.py)."""
        steps = self.engine.loop.steps

        def route(query: dict[str, str]) -> dict:
            since = int(query.get("since", "0"))  # ValueError -> 400
            limit = int(query["limit"]) if "limit" in query else None
            if since < 0 or (limit is not None and limit < 1):
                raise ValueError("since must be >= 0 and limit >= 1")
            return steps.document(since, limit)
        return {"/steps": route}

    def ready_details(self) -> str:
        return (f"device={self.engine.device} dtype={self.engine.dtype} roles={self.settings.roles}"
                + (f" kv_transports={','.join(self.servicer.kv_transports)}" if self.intake is not None else ""))


def serve(settings: GpuWorkerSettings) -> None:
    worker_runtime.serve(GpuDevice(settings))
