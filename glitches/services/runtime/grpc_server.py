"""Bootstrap every daemon's gRPC server the same way: the daemon's own services,
the standard grpc.health.v1 service, server reflection, domain-error mapping,
and a graceful stop (health NOT_SERVING, refuse new RPCs, finish in-flight ones).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from glitches.services.runtime.channels import MESSAGE_OPTIONS
from glitches.services.runtime.error_interceptor import ErrorMappingInterceptor
from glitches.services.runtime.grpc_metrics import MetricsInterceptor
from glitches.services.auth.tls import PLAINTEXT, TlsConfig

log = logging.getLogger(__name__)


@dataclass
class RunningServer:
    server: grpc.Server
    health: health.HealthServicer
    port: int  # the bound port (useful when asked for port 0)
    service_names: tuple[str, ...]

    def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.service_names):
            self.health.set(name, status)

    def stop(self, grace_s: float) -> None:
        """Mark NOT_SERVING, stop accepting RPCs, and wait up to grace_s for in-flight ones."""
        self.set_serving(False)
        self.server.stop(grace_s).wait()


def start_server(host: str, port: int, registrations: list[tuple[Callable, object]],
                 service_names: tuple[str, ...], max_workers: int = 32,
                 metrics_role: str | None = None, auth: grpc.ServerInterceptor | None = None,
                 tls: TlsConfig = PLAINTEXT, max_concurrent_rpcs: int | None = None) -> RunningServer:
    """Start a server on host:port with each (add_XServicer_to_server, servicer) registered.

    service_names are the full names (e.g. "glitches.v1.Worker") reported by
    health and reflection. metrics_role (services.metrics.ROLES) counts every call by status code.
    auth (services.api_keys.ApiKeyInterceptor) refuses calls without a valid key before any handler runs.
    tls (services.tls.TlsConfig) with a certificate: serve TLS only (mTLS when it requires client certificates).
    max_concurrent_rpcs: past this many calls in progress gRPC answers RESOURCE_EXHAUSTED at once instead of
    queueing the call for a thread (None: no limit, calls wait for one of max_workers threads).
    """
    interceptors = [ErrorMappingInterceptor()]
    if auth is not None:
        interceptors.insert(0, auth)
    if metrics_role is not None:
        interceptors.insert(0, MetricsInterceptor(metrics_role))  # outermost: sees the mapped status
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), interceptors=interceptors,
                         options=MESSAGE_OPTIONS, maximum_concurrent_rpcs=max_concurrent_rpcs)
    for add, servicer in registrations:
        add(servicer, server)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server)
    if tls.enabled:
        bound = server.add_secure_port(f"{host}:{port}", tls.server_credentials())
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"could not bind gRPC server to {host}:{port}")
    server.start()
    running = RunningServer(server, health_servicer, bound, service_names)
    running.set_serving(True)
    mode = ("mTLS" if tls.client_auth == "require" else "TLS") if tls.enabled else "plaintext"
    log.info("serving %s on %s:%d (%s)", ", ".join(service_names), host, bound, mode)
    return running
