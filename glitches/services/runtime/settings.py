"""Settings every daemon shares. Each daemon's own settings extend this dataclass;
the CLI fills them from flags or GLITCHES_* environment variables (the only place
the environment is read)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from glitches.services.runtime.errors import InvalidArgument
from glitches.services.generation.models import DEFAULT_MODEL
from glitches.services.cluster.redis_connect import check_url
from glitches.services.auth.tls import TlsConfig


@dataclass(frozen=True)
class DaemonSettings:
    worker_id: str = ""  # registry id; empty: derived from kind, host and port
    host: str = "127.0.0.1"  # interface the gRPC server binds
    port: int = 0  # 0 = any free port
    advertise_host: str = ""  # host others use to reach it; empty: host (or this machine's name for 0.0.0.0)
    redis_url: str = "redis://127.0.0.1:6379/0"  # or redis+sentinel://... (glitches/services/cluster/redis_connect.py)
    redis_prefix: str = "glitches"  # every registry key starts with it
    model: str = DEFAULT_MODEL
    heartbeat_interval_s: float = 1.0
    heartbeat_ttl_s: float = 3.0  # a worker counts as dead this long after its last beat; with Redis Sentinel,
    # keep it above the failover gap + one interval (the promoted replica's copy must not expire meanwhile)
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    drain_grace_s: float = 30.0  # how long SIGTERM waits for in-flight requests
    http_port: int = 0  # HTTP side port (/healthz /readyz /metrics) on `host`; 0 = any free port
    tls_ca: str = ""  # PEM CA file; with tls_cert/tls_key: serve TLS, require client certs, dial peers with mTLS
    tls_cert: str = ""  # PEM certificate of this daemon (server and client identity)
    tls_key: str = ""  # PEM private key of tls_cert
    tls_client_auth: str = "require"  # "require" a client certificate signed by tls_ca, or "none"
    tls_server_name: str = ""  # name to expect in peers' certificates instead of their address's host
    tls_peer_roles: bool = True  # workers under mTLS: admit each RPC only from its role (services.peer_roles)

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"--port must be in 0..65535, got {self.port}")
        if not 0 <= self.http_port <= 65535:
            raise InvalidArgument(f"--http-port must be in 0..65535 (0 = any free port), got {self.http_port}")
        if self.heartbeat_ttl_s <= self.heartbeat_interval_s:
            raise InvalidArgument(f"--heartbeat-ttl-s must be longer than the heartbeat interval "
                                  f"({self.heartbeat_interval_s} s), got {self.heartbeat_ttl_s}")
        if self.threads < 0:
            raise InvalidArgument(f"--threads must be >= 0, got {self.threads}")
        check_url(self.redis_url)  # a bad --redis-url is refused here, naming the forms taken
        self.tls()  # refuses half-given TLS settings

    def tls(self) -> TlsConfig:
        return TlsConfig(ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key, client_auth=self.tls_client_auth,
                         server_name=self.tls_server_name)

    def address_for(self, bound_port: int) -> str:
        host = self.advertise_host or (socket.gethostname() if self.host in ("0.0.0.0", "::") else self.host)
        return f"{host}:{bound_port}"

    def id_for(self, kind: str, bound_port: int) -> str:
        return self.worker_id or f"{kind}-{socket.gethostname()}-{bound_port}-{os.getpid()}"
