"""`glitches up`: start a local cluster (glitches.cluster.LocalCluster) from the command line.

Its flags become one UpOptions: the ClusterSpec to start (flags named as ClusterSpec's fields go there
unchanged, so a new cluster setting is a field plus a flag) and what `up` itself does around it.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path

import click

from glitches.cli_client import print_stream
from glitches.client import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.runtime.errors import GlitchesError as ServiceError
from glitches.services.generation.models import DEFAULT_MODEL

_SPEC_FIELDS = frozenset(f.name for f in fields(ClusterSpec))


@dataclass(frozen=True)
class UpOptions:
    """Everything `glitches up` was told, checked on construction (click.UsageError)."""

    cluster: ClusterSpec  # what to start
    prompt: str | None = None  # answer it once the cluster is ready, then stop; None: run until a signal
    max_tokens: int = 48  # with prompt
    api_keys_file: str = ""  # the scheduler requires a key from this file
    gateway_api_keys_file: str = ""  # the gateway requires a key from this file
    gateway_requests_per_minute_per_client: float = 0.0  # 0: no limit
    gateway_requests_per_minute_per_user: float = 0.0  # 0: no limit
    tls_on: bool = False  # TLS with a fresh CA when cluster.tls_dir is empty
    kv_reuse: bool = True  # False: the scheduler runs --no-kv-reuse (never routes by held KV)
    prompt_logprobs_on: str = "gpu"  # the scheduler's --prompt-logprobs-on (card: a card scores prompts)

    def __post_init__(self):
        if self.cluster.gpu_workers < 1:
            raise click.UsageError("--gpu-workers must be at least 1 (prefill runs on GPU workers)")
        if self.cluster.fpga_workers < 0:
            raise click.UsageError("--fpga-workers must be >= 0")
        if self.cluster.gpu_decode_workers < 0:
            raise click.UsageError("--gpu-decode-workers must be >= 0")
        if self.cluster.redis_sentinels < 0:
            raise click.UsageError(f"--redis-sentinels must be >= 1 (0: no sentinels), got {self.cluster.redis_sentinels}")
        if self.cluster.redis_sentinels and self.cluster.redis_url:
            raise click.UsageError("--redis-sentinels starts a private Redis with sentinels; it cannot be combined with "
                                   "--redis-url (give a redis+sentinel:// URL there instead)")

    @classmethod
    def from_flags(cls, flags: dict) -> UpOptions:
        """Flags named as ClusterSpec fields build the cluster; the others are up's own."""
        return cls(ClusterSpec(**{k: v for k, v in flags.items() if k in _SPEC_FIELDS}),
                   **{k: v for k, v in flags.items() if k not in _SPEC_FIELDS})


@click.command("up")
@click.option("--gpu-workers", default=1, type=int, show_default=True)
@click.option("--fpga-workers", default=2, type=int, show_default=True)
@click.option("--gpu-decode-workers", default=0, type=int, show_default=True,
              help="GPU workers started with --roles decode: decode targets for the prefilling GPUs, as FPGAs are "
                   "(placement prefers FPGAs, then these, then GPU assist).")
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@click.option("--port", default=50051, type=int, show_default=True, help="Scheduler port (0: any free port).")
@click.option("--redis-url", default="", help="Use this Redis instead of starting a private redis-server.")
@click.option("--redis-sentinels", default=0, type=int, show_default=True,
              help="Start a private Redis primary, one replica and this many Redis Sentinels (typically 3) that "
                   "promote the replica when the primary dies; the daemons find the primary through them.")
@click.option("--redis-prefix", default="glitches", show_default=True)
@click.option("--fpga-numerics", default="reference", show_default=True,
              help="emulated FPGA workers' numerics: reference, w4a8 (the kernel in Python) or csim (the kernel's "
                   "source C-simulated; same bits as w4a8).")
@click.option("--fpga-hbm-bytes", default=0, type=int, help="HBM per emulated card, bytes (0: 8 GiB).")
@click.option("--fpga-slots", default=1, type=int, show_default=True)
@click.option("--kv-retention/--no-kv-retention", default=True, show_default=True,
              help="FPGA workers keep finished requests' KV as cache (fpga-worker --kv-retention).")
@click.option("--kv-transport", default="auto", show_default=True, type=click.Choice(["auto", "shm", "nixl", "grpc"]),
              help="Every worker's --kv-transport.")
@click.option("--gpu-slots", default=0, type=int, show_default=True,
              help="GPU-assist decodes per GPU worker (0: as many as its KV budget holds at a 2048-token context, "
                   "capped at half of --max-batch-tokens; glitches/gpu_worker/assist_slots.py).")
@click.option("--prefix-cache/--no-prefix-cache", default=True, show_default=True,
              help="GPU workers keep finished requests' full KV blocks as cache and reuse them (per tenant).")
@click.option("--kv-reuse/--no-kv-reuse", default=True, show_default=True,
              help="The scheduler routes by the KV workers hold (a card may extend a prefix it holds).")
@click.option("--prompt-logprobs-on", default="gpu", type=click.Choice(["gpu", "card"]), show_default=True,
              help="Who scores prompts for prompt logprobs (the scheduler's --prompt-logprobs-on): card evaluates "
                   "the FPGA workers' numerics, e.g. lm-eval through --gateway-port.")
@click.option("--prompt", default=None, help="Answer this prompt once the cluster is ready, then stop.")
@click.option("--max-tokens", default=48, type=int, show_default=True, help="With --prompt.")
@click.option("--gateway-port", default=None, type=int,
              help="Also start the OpenAI-compatible HTTP gateway on this port (0: any free port).")
@click.option("--api-keys-file", default="",
              help="The scheduler requires a key from this file (`<key>` or `<key> <tenant>` per line: keys of one "
                   "tenant share the prefix cache); `up` and the gateway send GLITCHES_API_KEY, else the file's "
                   "first key.")
@click.option("--gateway-api-keys-file", default="",
              help="The gateway requires a key from this file; the same file as --api-keys-file makes the gateway "
                   "forward each client's key, so the scheduler keeps tenants' prefix caches apart.")
@click.option("--gateway-requests-per-minute-per-client", default=0.0, type=float,
              help="The gateway's limit per API key, or per client IP without keys (0: none).")
@click.option("--gateway-requests-per-minute-per-user", default=0.0, type=float,
              help="The gateway's limit per OpenAI `user` field within each client (0: none).")
@click.option("--tls", "tls_on", is_flag=True,
              help="TLS on every gRPC link and mTLS between daemons, with a fresh CA (see --tls-dir).")
@click.option("--tls-dir", default="", help="Certificates from `glitches certs` to use (implies --tls).")
def up_cmd(**flags) -> None:
    """Start a local cluster (Redis, scheduler, workers) as separate processes.

    Prints `ready <address>` once the scheduler answers with every worker
    registered; Ctrl-C or SIGTERM stops everything it started. The scheduler and the
    workers share a random KV token secret (GLITCHES_KV_TOKEN_SECRET in their
    environment) unless GLITCHES_KV_TOKEN_SECRET or GLITCHES_KV_TOKEN_SECRET_FILE is set.
    """
    run_up(UpOptions.from_flags(flags))


def run_up(options: UpOptions) -> None:
    """Start options.cluster, print its addresses, answer options.prompt or wait for a signal, stop it all."""
    from glitches.services.generation.models import resolve_model

    spec = options.cluster
    if spec.tls_dir:
        _check_tls_dir(Path(spec.tls_dir), spec.gateway_port is not None)
    access = _up_access(options.api_keys_file, options.gateway_api_keys_file,
                        options.gateway_requests_per_minute_per_client, options.gateway_requests_per_minute_per_user)
    if not options.kv_reuse:
        access["scheduler_args"] += ("--no-kv-reuse",)
    if options.prompt_logprobs_on != "gpu":
        access["scheduler_args"] += ("--prompt-logprobs-on", options.prompt_logprobs_on)
    try:
        click.echo(f"preparing model {spec.model} ...", err=True)
        resolve_model(spec.model)  # convert once here, not in every daemon at the same time
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    run_dir = Path(tempfile.mkdtemp(prefix="glitches-up-"))
    tls_dir = spec.tls_dir
    if options.tls_on and not tls_dir:
        from glitches.certs import make_certs

        tls_dir = str(run_dir / "tls")
        make_certs(Path(tls_dir))
        click.echo(f"TLS: a fresh CA and certificates in {tls_dir} (client: client.pem, client-key.pem)", err=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    cluster = LocalCluster(replace(spec, tls_dir=tls_dir, **access), run_dir)
    try:
        click.echo(f"starting: logs in {cluster.run_dir}", err=True)
        cluster.start()
        click.echo(f"redis {cluster.shown_redis_url} prefix {spec.redis_prefix}", err=True)
        if spec.redis_sentinels:
            click.echo(f"redis primary {cluster.redis_primary()}, replica 127.0.0.1:"
                       f"{cluster.redis_nodes['redis-replica']}, {spec.redis_sentinels} sentinel(s)", err=True)
        for name, http_address in cluster.http_addresses.items():
            click.echo(f"http {name} {http_address}")  # /healthz /readyz /metrics
        cluster.wait_ready()
        if cluster.gateway_url:
            click.echo(f"gateway {cluster.gateway_url}")  # OpenAI-compatible: base_url = this + /v1
        with Client(cluster.address, api_key=cluster.spec.api_key or None, tls=cluster.client_tls()) as client:
            _show_workers(client)
            click.echo(f"ready {cluster.address}" + (" tls" if tls_dir else ""), err=False)
            sys.stdout.flush()
            if options.prompt is not None:
                print_stream(client, options.prompt, dict(max_tokens=options.max_tokens, chat=True))
        if options.prompt is None:
            stop.wait()
    finally:
        click.echo("stopping ...", err=True)
        cluster.stop()
        click.echo("stopped", err=True)


def _show_workers(client: Client) -> None:
    """One line per worker: what it is and whether a software stand-in plays the device (no card, no GPU)."""
    try:
        workers = client.status().workers
    except ServiceError as error:  # the cluster is ready; a failed listing must not stop it
        click.echo(f"workers: not listed ({error})", err=True)
        return
    for w in workers:
        stand_in = " EMULATED: a software stand-in, not the device" if w.emulated else ""
        click.echo(f"worker {w.worker_id} {w.kind} backend={w.backend} roles={','.join(w.roles) or '-'}{stand_in}",
                   err=True)


def _up_access(api_keys_file: str, gateway_api_keys_file: str, per_client: float, per_user: float) -> dict:
    """ClusterSpec fields for `up`'s API keys and gateway limits; key files are passed by path, keys never in argv."""
    from glitches.services.auth.api_keys import load_api_keys

    if per_client < 0 or per_user < 0:
        raise click.UsageError("--gateway-requests-per-minute-per-client/-per-user must be >= 0 (0: no limit)")
    try:
        for path in (api_keys_file, gateway_api_keys_file):
            load_api_keys(path)  # readable and not empty, or a usage error now rather than in a child's log
        keys = load_api_keys(api_keys_file) if api_keys_file else ()
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    api_key = os.environ.get("GLITCHES_API_KEY", "") or (keys[0] if keys else "")
    scheduler_args = ("--api-keys-file", os.path.abspath(api_keys_file)) if api_keys_file else ()
    gateway_args = ("--api-keys-file", os.path.abspath(gateway_api_keys_file)) if gateway_api_keys_file else ()
    if api_keys_file and gateway_api_keys_file and os.path.samefile(api_keys_file, gateway_api_keys_file):
        gateway_args += ("--forward-api-key",)  # one set of keys: the scheduler sees each tenant
    if per_client:
        gateway_args += ("--requests-per-minute-per-client", str(per_client))
    if per_user:
        gateway_args += ("--requests-per-minute-per-user", str(per_user))
    return dict(scheduler_args=scheduler_args, gateway_args=gateway_args, api_key=api_key)


def _check_tls_dir(folder: Path, with_gateway: bool) -> None:
    from glitches.certs import DEFAULT_ROLES, missing_files

    problem = missing_files(folder, tuple(r for r in DEFAULT_ROLES if r != "gateway" or with_gateway))
    if problem:
        raise click.UsageError(problem)



def register(group: click.Group) -> None:
    """Add `up` to `group`."""
    group.add_command(up_cmd)
