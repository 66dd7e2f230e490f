"""Which peer may call which worker RPC, by the role in its mTLS certificate.

Under mutual TLS every caller presents a certificate from the deployment's CA; `glitches certs` names
each certificate's subject common name (CN) after its role. A worker then admits:

  Prefill, Decode,           only the scheduler
  DecodeFromHeld, Release,
  RenewKvHolds, WarmPrefix (it places requests and frees them),
  EvictCache                 (`glitches evict-cache` with the scheduler's certificate)
  TransferKV(Placed)         only a GPU worker (it streams prefill's KV to the decode target)
  Info, health, reflection   any peer with a valid certificate

so a client certificate (or a stolen gateway one) cannot drive decode or free another request's KV, and
only GPU workers can write KV into a card, in addition to the per-transfer token. Others get
PERMISSION_DENIED naming the roles allowed. Certificates made by other tooling need these CNs, or
the workers run with --no-tls-peer-roles (mTLS alone then decides).
"""

from __future__ import annotations

import grpc

from glitches.services.runtime.handlers import replace_behaviour
from glitches.services.auth.tls import TlsConfig

WORKER_SERVICE = "glitches.v1.Worker"
WORKER_CALLERS: dict[str, frozenset[str]] = {
    "Prefill": frozenset({"scheduler"}),
    "Decode": frozenset({"scheduler"}),
    "DecodeFromHeld": frozenset({"scheduler"}),
    "Release": frozenset({"scheduler"}),
    "RenewKvHolds": frozenset({"scheduler"}),
    "WarmPrefix": frozenset({"scheduler"}),
    "EvictCache": frozenset({"scheduler"}),  # the operator dials with the scheduler's certificate
    "TransferKV": frozenset({"gpu-worker"}),
    "TransferKVPlaced": frozenset({"gpu-worker"}),
}
_CN_KEY = "x509_common_name"  # gRPC's auth context property holding the peer certificate's subject CN


def peer_roles(context: grpc.ServicerContext) -> tuple[str, ...]:
    """The CNs of the peer's verified certificate (empty without mTLS)."""
    return tuple(v.decode("utf-8", "replace") for v in (context.auth_context() or {}).get(_CN_KEY, ()))


def _guard(handler: grpc.RpcMethodHandler, allowed: frozenset[str], method: str) -> grpc.RpcMethodHandler:
    def wrap(behaviour, _kind):
        def checked(request_or_iterator, context):
            roles = peer_roles(context)
            if not allowed.intersection(roles):
                context.abort(grpc.StatusCode.PERMISSION_DENIED,
                              f"{method} may be called only by {', '.join(sorted(allowed))}; this peer's certificate "
                              f"names {', '.join(roles) or 'no role'}")
            return behaviour(request_or_iterator, context)

        return checked

    return replace_behaviour(handler, wrap)


class PeerRoleInterceptor(grpc.ServerInterceptor):
    """PERMISSION_DENIED for a worker RPC whose caller's certificate CN is not a role allowed to call it."""

    def __init__(self, callers: dict[str, frozenset[str]] = WORKER_CALLERS, service: str = WORKER_SERVICE):
        self.callers = callers
        self.prefix = f"/{service}/"

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self.prefix):
            return handler
        allowed = self.callers.get(method[len(self.prefix):])
        return handler if allowed is None else _guard(handler, allowed, method)


def worker_role_check(tls: TlsConfig, enabled: bool) -> PeerRoleInterceptor | None:
    """The interceptor a worker serves with: only under mTLS (a verified client certificate) and when enabled."""
    if enabled and tls.enabled and tls.client_auth == "require":
        return PeerRoleInterceptor()
    return None
