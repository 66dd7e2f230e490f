"""The operator command `glitches evict-cache`: it dials workers directly (Worker/EvictCache).

Forced eviction drops every evictable cached KV block of a worker (a GPU worker's prefix cache, a card's
retained KV), never KV a running request uses; the worker then publishes the evictions, so routing stops
sending reuse there. Gated like the scheduler's calls to workers: with a request-auth secret
(GLITCHES_KV_TOKEN_SECRET or --kv-token-secret-file) the command signs an "evict" token for the worker id
that Info reports; under mTLS with peer roles it needs the scheduler's certificate (--tls-cert/--tls-key).
"""

from __future__ import annotations

import json

import click
import grpc

from glitches.cli_daemons import kv_token_option
from glitches.cli_tls import client_tls, client_tls_options


def evict_cache(address: str, tls, secret: bytes) -> dict:
    """Worker/EvictCache on `address`: what it evicted, as a dict (keys as EvictCacheResponse's fields)."""
    from glitches.services.auth.request_auth import RequestAuthIssuer
    from glitches.services.runtime.channels import open_channel
    from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

    channel = open_channel(address, tls)
    try:
        stub = worker_pb2_grpc.WorkerStub(channel)
        worker_id = stub.Info(worker_pb2.InfoRequest(), timeout=10).worker_id
        token = RequestAuthIssuer(secret).issue("evict", "", worker_id) if secret else ""
        reply = stub.EvictCache(worker_pb2.EvictCacheRequest(auth_token=token), timeout=30)
    finally:
        channel.close()
    return dict(worker=worker_id, address=address, evicted_blocks=reply.evicted_blocks,
                evicted_bytes=reply.evicted_bytes, evicted_regions=reply.evicted_regions,
                in_use_cached_bytes=reply.in_use_cached_bytes)


@click.command("evict-cache")
@click.option("--worker", "workers", multiple=True, required=True,
              help="host:port of a worker's gRPC server (repeatable); `glitches status` lists them.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per worker.")
@kv_token_option
@client_tls_options
def evict_cache_cmd(workers, as_json, kv_token_secret_file, **tls) -> None:
    """Drop every evictable cached KV block of each --worker (blocks in use stay)."""
    from glitches.services.auth.kv_token import secret_from_environment
    from glitches.services.runtime.errors import GlitchesError as ServiceError

    try:
        secret = secret_from_environment(kv_token_secret_file)
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    config = client_tls(tls)
    for address in workers:
        try:
            done = evict_cache(address, config, secret)
        except grpc.RpcError as error:
            raise click.ClickException(f"{address}: {error.code().name}: {error.details()}") from None
        if as_json:
            click.echo(json.dumps(done))
        else:
            regions = f" ({done['evicted_regions']} kept regions)" if done["evicted_regions"] else ""
            click.echo(f"{done['worker']} {address}: evicted {done['evicted_blocks']} blocks, "
                       f"{done['evicted_bytes']} B{regions}; {done['in_use_cached_bytes']} B cached KV in use stays")


def register(group: click.Group) -> None:
    """Add the operator commands to `group`."""
    group.add_command(evict_cache_cmd)
