"""One runtime for every worker daemon; a device package plugs its engine or backend into it.

A device package (glitches/gpu_worker/, glitches/fpga_worker/) supplies its settings (a DaemonSettings that also
has `slots`, `kv_token_secret` and `kv_hold_ttl_s`), its glitches.v1.Worker servicer (whose
`info()` is the worker's Info and whose `worker_id` the runtime sets) and a `WorkerDevice` saying
how to build and watch it. Everything else is here, the same for every kind:

  start_worker(device), in this order:
    1. the HTTP side port: /healthz at once, /readyz "loading the model", /metrics of device.role;
    2. request auth from the cluster's secret (glitches/services/auth/request_auth.py), or open, with a warning;
    3. device.build(auth): the package loads its model and engine/backend, returns its servicer;
    4. the gRPC server (glitches/services/runtime/grpc_server.py): that servicer, health, reflection, error mapping,
       call metrics of device.role, TLS, and under mTLS the peer-role check (glitches/services/auth/peer_roles.py);
       the worker id (--worker-id, or "{kind}-{host}-{port}-{pid}") and the address peers dial;
    5. the heartbeat, publishing glitches/services/worker_record.record_from_info(servicer.info(), ...) every
       interval and whenever device.attach's `poke` is called (slots or KV changed);
    6. device.attach(poke) -> the package's KvHolds; P:held:{id} deleted (what an earlier process with this
       worker id published; its cache died with it), then the first beat (registers in Redis, failing fast
       when Redis is unreachable); the held-KV publisher when device.held_changes gives a drain
       (glitches/services/cluster/held_publisher.py); the gauges every worker has (active requests, slots,
       held KV), device.publish_metrics(), and /readyz answering "registered in Redis".
  serve(device): start_worker, print the ready line, wait for SIGTERM or SIGINT, then RunningWorker.drain:
  leave the registry, health NOT_SERVING, in-flight RPCs get --drain-grace-s, exit 0.

Leaving the registry (leave_registry: drain, SIGTERM, a device out of service) stops the held-KV publisher first
and then deregisters, so no cached block outlives the worker's registration: P:held:{id} is deleted with the
record and nothing writes it again. A worker killed outright leaves both to expire with its heartbeat.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from glitches.services.runtime import metrics
from glitches.services.runtime.daemon import configure_logging, wait_for_signal
from glitches.services.runtime.grpc_server import RunningServer, start_server
from glitches.services.cluster.held_publisher import HeldPublisher
from glitches.services.cluster.kv_holds import KvHolds
from glitches.services.auth.kv_token import SECRET_ENV
from glitches.services.runtime.observability import DaemonHttp, worker_ready_check
from glitches.services.auth.peer_roles import worker_role_check
from glitches.services.cluster.registry import Heartbeat, Registry, WorkerRecord
from glitches.services.auth.request_auth import OpenAccess, RequestAuthVerifier
from glitches.services.runtime.settings import DaemonSettings
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from glitches.services.cluster.worker_record import KvBlocks, record_from_info

log = logging.getLogger(__name__)
SERVICE_NAME = worker_pb2.DESCRIPTOR.services_by_name["Worker"].full_name


class WorkerDevice(ABC):
    """What one kind of worker gives the runtime. Subclasses set the class attributes and keep
    their engine/backend on self between the calls (build, then attach, then the rest)."""

    kind: str  # the record's kind and the worker id's prefix: "gpu", "fpga"
    role: str  # its metrics registry and log name (services.metrics.ROLES): "gpu-worker", "fpga-worker"
    authorised_rpcs: tuple[str, ...]  # the RPCs request auth checks (named in the warning when it is off)

    def __init__(self, settings: DaemonSettings):
        self.settings = settings

    def grpc_threads(self) -> int:
        """Threads of the gRPC server's pool: RPCs served at once."""
        return 32

    @abstractmethod
    def build(self, auth: RequestAuthVerifier | OpenAccess) -> worker_pb2_grpc.WorkerServicer:
        """Load the model, build the engine/backend; return the servicer (it must have info() and worker_id)."""

    @abstractmethod
    def attach(self, poke: Callable[[], None]) -> KvHolds:
        """Call poke() whenever slots or KV change (the record is re-published at once); return the
        started KvHolds whose reaper frees what no scheduler renews."""

    @abstractmethod
    def kv_blocks(self, info: worker_pb2.InfoResponse) -> KvBlocks:
        """The KV block geometry for the record (Info does not carry it for every kind)."""

    @abstractmethod
    def active_requests(self) -> int:
        """Requests holding KV here now (the glitches_active_requests gauge)."""

    @abstractmethod
    def held_kv_bytes(self) -> int:
        """KV bytes held for requests now (the glitches_kv_held_bytes gauge)."""

    def held_changes(self) -> Callable[[], tuple[list[bytes], list[bytes]]] | None:
        """The device's drain of the KV block names it started or stopped keeping as cache, which the runtime
        publishes for KV-aware routing (services/cluster/held_publisher.py); None (the default): it keeps none."""
        return None

    def publish_metrics(self) -> None:
        """Set this kind's own gauges (read at scrape time); none by default."""

    def http_routes(self) -> dict:
        """Read-only JSON routes for the HTTP side port, path -> route (http_side.JsonRoute); none by default."""
        return {}

    def ready_details(self) -> str:
        """What the ready line says about the device, e.g. "device=cuda:0 dtype=float16"."""
        return ""

    def on_failure(self, out_of_service: Callable[[str], None]) -> None:
        """Give the device the runtime's reaction to it failing (health NOT_SERVING, out of the registry, so
        schedulers move its requests elsewhere); a device that never fails by itself ignores it."""


@dataclass
class RunningWorker:
    """A started worker: registered, heart beating, serving gRPC and its HTTP side port."""

    device: WorkerDevice
    servicer: worker_pb2_grpc.WorkerServicer
    server: RunningServer
    http: DaemonHttp
    registry: Registry
    heartbeat: Heartbeat
    holds: KvHolds
    address: str  # gRPC host:port peers dial
    held_publisher: HeldPublisher | None = None  # what the device keeps as cache, to P:held:{id}

    @property
    def worker_id(self) -> str:
        return self.servicer.worker_id

    def ready_line(self) -> str:
        details = self.device.ready_details()
        return (f"{self.device.role} {self.worker_id} ready {self.address}" + (f" {details}" if details else "")
                + f" http={self.http.address}")

    def drain(self, grace_s: float) -> None:
        """What SIGTERM does (serve): leave the registry, then stop serving; in-flight RPCs get grace_s."""
        leave_registry(self.heartbeat, self.held_publisher)
        self.server.stop(grace_s)

    def close(self) -> None:
        """After drain, in-process (tests): stop the threads serve() leaves to the process's exit."""
        self.holds.stop()
        self.http.stop()
        self.registry.close()


def request_auth(secret: bytes, rpcs: tuple[str, ...]) -> RequestAuthVerifier | OpenAccess:
    """The per-request authorisation of rpcs: tokens signed with the cluster's secret, or none at all."""
    if secret:
        return RequestAuthVerifier(secret)
    log.warning("%s are UNAUTHENTICATED: no secret is set (%s or --kv-token-secret-file), so anyone who reaches "
                "this port can call them, and decode or free any request's KV", ", ".join(rpcs), SECRET_ENV)
    return OpenAccess()


def start_worker(device: WorkerDevice) -> RunningWorker:
    """Steps 1-6 of the module docstring; returns once the worker is registered and ready."""
    settings, role = device.settings, device.role
    http = DaemonHttp(settings, role)
    registry = Registry(settings.redis_url, settings.redis_prefix, settings.heartbeat_ttl_s)
    servicer = device.build(request_auth(settings.kv_token_secret, device.authorised_rpcs))
    server = start_server(settings.host, settings.port, [(worker_pb2_grpc.add_WorkerServicer_to_server, servicer)],
                          (SERVICE_NAME,), max_workers=device.grpc_threads(), metrics_role=role,
                          tls=settings.tls(), auth=worker_role_check(settings.tls(), settings.tls_peer_roles))
    servicer.worker_id = settings.id_for(device.kind, server.port)
    address = settings.address_for(server.port)

    def record() -> WorkerRecord:
        info = servicer.info()
        return record_from_info(info, device.kind, address, http.address, device.kv_blocks(info))

    heartbeat = Heartbeat(registry, record, settings.heartbeat_interval_s)
    holds = device.attach(heartbeat.poke)
    # an earlier process with this id (a restart) may have left hints of a cache that died with it: gone before
    # the first beat renews their expiry, also for a device that keeps no cache now (--no-prefix-cache)
    registry.clear_held(servicer.worker_id)
    heartbeat.start()
    drain = device.held_changes()
    publisher = HeldPublisher(registry, lambda: servicer.worker_id, drain).start() if drain is not None else None
    device.on_failure(lambda reason: out_of_service(server, heartbeat, publisher, reason))
    metrics.ACTIVE_REQUESTS.of(role).set_function(device.active_requests)
    metrics.SLOTS.of(role).set(device.settings.slots)  # as resolved by build (GPU: --slots 0)
    metrics.publish_holds(role, holds, device.held_kv_bytes)
    device.publish_metrics()
    for path, route in device.http_routes().items():
        http.side.add_json_route(path, route)
    http.readiness.serving(worker_ready_check(registry, servicer.worker_id))
    return RunningWorker(device, servicer, server, http, registry, heartbeat, holds, address, publisher)


def leave_registry(heartbeat: Heartbeat, publisher: HeldPublisher | None) -> None:
    """No new work is routed here and no cache is offered: the held-KV publisher stops first (it deletes
    P:held:{id} and writes nothing after), then the heartbeat stops and the record is deregistered. Idempotent."""
    if publisher is not None:
        publisher.stop()
    heartbeat.stop(deregister=True)


def out_of_service(server: RunningServer, heartbeat: Heartbeat, publisher: HeldPublisher | None,
                   reason: str) -> None:
    """The device failed (e.g. a hung kernel run): health NOT_SERVING and the worker leaves the registry (its held
    KV with it: a failed card's cache is not reusable), while the process keeps answering Info, Release and
    health; restarting it is the operator's call."""
    log.error("device out of service: %s; health NOT_SERVING, leaving the registry", reason)
    server.set_serving(False)
    leave_registry(heartbeat, publisher)


def serve(device: WorkerDevice) -> None:
    """A worker daemon's whole life: start, say ready, wait for SIGTERM/SIGINT, drain, return."""
    configure_logging(device.role)
    running = start_worker(device)
    wait_for_signal(running.ready_line())
    running.drain(device.settings.drain_grace_s)
    log.info("stopped")
