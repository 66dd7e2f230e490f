"""The GPU worker daemon: its engine and servicer, plugged into services/worker_runtime.py."""

from __future__ import annotations

from collections.abc import Callable

from gpu_worker.engine import GpuEngine
from gpu_worker.kv_budget import BLOCK_TOKENS
from gpu_worker.server import GpuWorkerServicer
from gpu_worker.settings import GpuWorkerSettings
from services import metrics, models, worker_runtime
from services.kv_holds import KvHolds
from services.observability import watch_cuda_device
from services.request_auth import OpenAccess, RequestAuthVerifier
from services.stubs.glitches.v1 import worker_pb2
from services.worker_record import KvBlocks


class GpuDevice(worker_runtime.WorkerDevice):
    kind = "gpu"
    role = "gpu-worker"
    authorised_rpcs = ("Prefill", "Decode", "Release", "RenewKvHolds")
    settings: GpuWorkerSettings

    def build(self, auth: RequestAuthVerifier | OpenAccess) -> GpuWorkerServicer:
        settings = self.settings
        source = models.resolve_model(settings.model)
        self.engine = GpuEngine(settings, source)
        self.holds = KvHolds(settings.kv_hold_ttl_s, self.engine.release).start()  # frees GPU-assist KV nobody renews
        self.servicer = GpuWorkerServicer(self.engine, "", source.name, settings.tls(), self.holds, auth)
        return self.servicer

    def attach(self, poke: Callable[[], None]) -> KvHolds:
        if "nixl" in self.servicer._sends():  # start the NIXL agent now, not during the first transfer
            from gpu_worker.nixl_writer import local_agent

            local_agent()
        self.engine.requests.on_change = poke  # placement sees slots and KV change within a beat
        return self.holds

    def kv_blocks(self, info: worker_pb2.InfoResponse) -> KvBlocks:
        return KvBlocks(BLOCK_TOKENS, self.engine.budget.block_bytes, info.kv_free_blocks)

    def active_requests(self) -> int:
        return self.engine.active_requests()

    def held_kv_bytes(self) -> int:
        return self.holds.summary().kv_bytes

    def publish_metrics(self) -> None:
        engine = self.engine
        metrics.GPU_KV_FREE_BLOCKS.set_function(lambda: engine.budget.free_blocks)
        metrics.GPU_ASSIST_ACTIVE.set_function(engine.requests.assist_active)
        watch_cuda_device(self.role, engine.device)

    def ready_details(self) -> str:
        return f"device={self.engine.device} dtype={self.engine.dtype}"


def serve(settings: GpuWorkerSettings) -> None:
    worker_runtime.serve(GpuDevice(settings))
