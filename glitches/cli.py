"""The `glitches` command. Daemon settings come from flags or GLITCHES_* environment
variables (the flag's name upper-cased, e.g. --redis-url / GLITCHES_REDIS_URL)."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import threading
from pathlib import Path

import click

from glitches.cli_tls import client_tls, client_tls_options, tls_flags
from glitches.client import DEFAULT_ADDRESS, Client
from glitches.errors import GlitchesError
from glitches.types import Completion
from services.errors import GlitchesError as ServiceError
from services.models import DEFAULT_MODEL


def _env(name: str) -> str:
    return "GLITCHES_" + name.upper().replace("-", "_")


def daemon_options(fn):
    """Flags every daemon shares (services.settings.DaemonSettings)."""
    options = [
        click.option("--worker-id", default="", envvar=_env("worker-id"), help="Registry id (default: derived)."),
        click.option("--host", default="127.0.0.1", envvar=_env("host"), show_default=True,
                     help="Interface to bind."),
        click.option("--port", default=0, type=int, envvar=_env("port"), help="gRPC port (0: any free port)."),
        click.option("--advertise-host", default="", envvar=_env("advertise-host"),
                     help="Host name other daemons use to reach this one."),
        click.option("--redis-url", default="redis://127.0.0.1:6379/0", envvar=_env("redis-url"), show_default=True),
        click.option("--redis-prefix", default="glitches", envvar=_env("redis-prefix"), show_default=True,
                     help="Prefix of every registry key (clusters sharing a Redis use different ones)."),
        click.option("--model", default=DEFAULT_MODEL, envvar=_env("model"), show_default=True,
                     help="Model name, local transformers directory, or .gguf file."),
        click.option("--threads", default=0, type=int, envvar=_env("threads"),
                     help="torch threads (0: torch's default)."),
        click.option("--http-port", default=0, type=int, envvar=_env("http-port"),
                     help="HTTP side port for /healthz, /readyz, /metrics (0: any free port)."),
        *tls_flags(server=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def kv_token_option(fn):
    """The KV-transfer token secret (services.kv_token): a file path flag, or GLITCHES_KV_TOKEN_SECRET."""
    return click.option("--kv-token-secret-file", default="", envvar=_env("kv-token-secret-file"),
                        help="File holding the secret shared by the scheduler and the FPGA workers that signs each "
                             "KV transfer (or set GLITCHES_KV_TOKEN_SECRET; never a flag). Without one, KV "
                             "transfers are unauthenticated.")(fn)


def kv_hold_option(fn):
    """How long a worker keeps KV nobody renews (services.kv_holds)."""
    return click.option("--kv-hold-ttl-s", default=20.0, type=float, envvar=_env("kv-hold-ttl-s"), show_default=True,
                        help="KV held for a request that is not decoding is freed this long after the scheduler's "
                             "last renewal (its scheduler died), seconds.")(fn)


def _kv_token_secret(kwargs: dict) -> None:
    """Replace the --kv-token-secret-file value in kwargs by the secret (file or environment)."""
    from services.kv_token import secret_from_environment

    try:
        kwargs["kv_token_secret"] = secret_from_environment(kwargs.pop("kv_token_secret_file"))
    except ServiceError as error:
        raise click.UsageError(str(error)) from None


def _run_daemon(serve, settings_cls, **kwargs) -> None:
    try:
        settings = settings_cls(**kwargs)
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    try:
        serve(settings)
    except ServiceError as error:  # a start-up failure (no card, no XRT...): its status and what to change
        raise click.ClickException(f"{error.code.name}: {error}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """GLITCHES: GPU prefill, FPGA decode, KV streamed while prefill runs."""


@main.command("scheduler")
@daemon_options
@click.option("--max-new-tokens-limit", default=4096, type=int, envvar=_env("max-new-tokens-limit"),
              show_default=True, help="Largest max_tokens a request may ask for.")
@click.option("--lease-ttl-s", default=5.0, type=float, envvar=_env("lease-ttl-s"), show_default=True,
              help="How long a slot claim outlives a scheduler that died, seconds.")
@click.option("--max-active", default=24, type=int, envvar=_env("max-active"), show_default=True,
              help="Requests this scheduler runs at once.")
@click.option("--max-queued", default=8, type=int, envvar=_env("max-queued"), show_default=True,
              help="Requests that may wait for a place; beyond, RESOURCE_EXHAUSTED. The gRPC thread pool is "
                   "--max-active + --max-queued + 16 (health, Status and refusals keep threads).")
@click.option("--queue-wait-s", default=30.0, type=float, envvar=_env("queue-wait-s"), show_default=True,
              help="Longest wait for a place, seconds.")
@click.option("--decode-stall-s", default=5.0, type=float, envvar=_env("decode-stall-s"), show_default=True,
              help="An FPGA decode stream with no token for this long (plus 4 x its slowest step) is treated as a "
                   "dead worker and the request moves, seconds.")
@click.option("--max-migrations", default=2, type=int, envvar=_env("max-migrations"), show_default=True,
              help="How often one request may move to other workers after a worker dies.")
@click.option("--api-keys-file", default="", envvar=_env("api-keys-file"),
              help="Require `authorization: Bearer <key>` with a key from this file (one per line).")
@click.option("--api-keys", default="", envvar=_env("api-keys"), help="Comma-separated keys (prefer the file).")
@click.option("--requests-per-minute-per-key", default=0.0, type=float, envvar=_env("requests-per-minute-per-key"),
              show_default=True, help="With API keys: calls per key per minute (0: no limit).")
@click.option("--max-prompt-tokens", default=0, type=int, envvar=_env("max-prompt-tokens"), show_default=True,
              help="Longest prompt accepted, tokens (0: the model's context).")
@click.option("--max-top-logprobs", default=20, type=int, envvar=_env("max-top-logprobs"), show_default=True,
              help="Largest top_logprobs a request may ask for.")
@click.option("--max-stop-strings", default=16, type=int, envvar=_env("max-stop-strings"), show_default=True,
              help="Most stop strings one request may give.")
@kv_token_option
@click.option("--kv-token-ttl-s", default=60.0, type=float, envvar=_env("kv-token-ttl-s"), show_default=True,
              help="How long a KV-transfer token stays valid, seconds (clocks must agree within it).")
def scheduler_cmd(**kwargs) -> None:
    """Run one scheduler replica (stateless; state lives in Redis)."""
    from scheduler.server import serve
    from scheduler.settings import SchedulerSettings
    from services.api_keys import load_api_keys

    try:
        kwargs["api_keys"] = load_api_keys(kwargs.pop("api_keys_file"), kwargs.pop("api_keys"))
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    _kv_token_secret(kwargs)
    kwargs.pop("worker_id")
    _run_daemon(serve, SchedulerSettings, port=kwargs.pop("port") or 50051, **kwargs)


@main.command("gpu-worker")
@daemon_options
@click.option("--device", default="auto", envvar=_env("device"), show_default=True,
              help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", envvar=_env("dtype"), show_default=True,
              help="auto (float32 on CPU, float16 on CUDA), float32, float16 or bfloat16.")
@click.option("--slots", default=4, type=int, envvar=_env("gpu-slots"), show_default=True,
              help="Concurrent GPU-assist decodes.")
@click.option("--kv-transport", default="auto", envvar=_env("kv-transport"), show_default=True,
              type=click.Choice(["auto", "shm", "nixl", "grpc"]),
              help="How KV reaches the decode worker: auto = shm on its host, else nixl, else grpc.")
@kv_token_option
@kv_hold_option
def gpu_worker_cmd(**kwargs) -> None:
    """Run one GPU worker: prefill (streaming KV to the decode target) and GPU-assist decode."""
    from gpu_worker.server import serve
    from gpu_worker.settings import GpuWorkerSettings

    _kv_token_secret(kwargs)
    _run_daemon(serve, GpuWorkerSettings, **kwargs)


@main.command("fpga-worker")
@daemon_options
@click.option("--backend", default="emu", envvar=_env("backend"), show_default=True,
              help="emu: the software kernel emulator (no card); xrt: an Alveo card through pyxrt.")
@click.option("--numerics", default="reference", envvar=_env("numerics"), show_default=True,
              help="emu numerics: reference (the model's own precision) or w4a8 (the kernel's INT4 x INT8).")
@click.option("--hbm-bytes", default=8 * 1024**3, type=int, envvar=_env("hbm-bytes"), show_default=True,
              help="Device memory for weights + KV, bytes (a U280 has 8 GiB of HBM).")
@click.option("--slots", default=1, type=int, envvar=_env("fpga-slots"), show_default=True,
              help="Concurrent decode requests (1 = the paper's batch size 1).")
@click.option("--device", default="0", envvar=_env("fpga-device"), help="Card index or PCI BDF (xrt backend).")
@click.option("--xclbin", default="", envvar=_env("xclbin"), help="Decode bitstream path (xrt backend).")
@click.option("--kv-transport", default="auto", envvar=_env("kv-transport"), show_default=True,
              type=click.Choice(["auto", "shm", "nixl", "grpc"]),
              help="KV data planes accepted besides grpc (always accepted): auto = every one available.")
@click.option("--kv-header-timeout-s", default=2.0, type=float, envvar=_env("kv-header-timeout-s"),
              show_default=True, help="A KV stream's header must arrive within this (at most 2 s).")
@click.option("--kv-stall-timeout-s", default=30.0, type=float, envvar=_env("kv-stall-timeout-s"),
              show_default=True, help="Longest gap between two messages of one KV stream, seconds.")
@click.option("--max-kv-streams", default=64, type=int, envvar=_env("max-kv-streams"), show_default=True,
              help="KV streams served at once (more: RESOURCE_EXHAUSTED at once).")
@kv_token_option
@kv_hold_option
def fpga_worker_cmd(**kwargs) -> None:
    """Run one FPGA worker: receive KV into HBM and decode from it."""
    from fpga_worker.server import serve
    from fpga_worker.settings import FpgaWorkerSettings

    kwargs["xilinx_xrt"] = os.environ.get("XILINX_XRT", "")  # XRT's own variable, read here at the edge
    _kv_token_secret(kwargs)
    _run_daemon(serve, FpgaWorkerSettings, **kwargs)


@main.command("up")
@click.option("--gpu-workers", default=1, type=int, show_default=True)
@click.option("--fpga-workers", default=2, type=int, show_default=True)
@click.option("--model", default=DEFAULT_MODEL, show_default=True)
@click.option("--port", default=50051, type=int, show_default=True, help="Scheduler port (0: any free port).")
@click.option("--redis-url", default="", help="Use this Redis instead of starting a private redis-server.")
@click.option("--redis-prefix", default="glitches", show_default=True)
@click.option("--fpga-numerics", default="reference", show_default=True)
@click.option("--fpga-hbm-bytes", default=0, type=int, help="HBM per emulated card, bytes (0: 8 GiB).")
@click.option("--fpga-slots", default=1, type=int, show_default=True)
@click.option("--kv-transport", default="auto", show_default=True, type=click.Choice(["auto", "shm", "nixl", "grpc"]),
              help="Every worker's --kv-transport.")
@click.option("--prompt", default=None, help="Answer this prompt once the cluster is ready, then stop.")
@click.option("--max-tokens", default=48, type=int, show_default=True, help="With --prompt.")
@click.option("--gateway-port", default=None, type=int,
              help="Also start the OpenAI-compatible HTTP gateway on this port (0: any free port).")
@click.option("--api-keys-file", default="",
              help="The scheduler requires a key from this file; `up` and the gateway send GLITCHES_API_KEY, "
                   "else the file's first key.")
@click.option("--gateway-api-keys-file", default="", help="The gateway requires a key from this file.")
@click.option("--gateway-requests-per-minute-per-client", default=0.0, type=float,
              help="The gateway's limit per API key, or per client IP without keys (0: none).")
@click.option("--gateway-requests-per-minute-per-user", default=0.0, type=float,
              help="The gateway's limit per OpenAI `user` field within each client (0: none).")
@click.option("--tls", "tls_on", is_flag=True,
              help="TLS on every gRPC link and mTLS between daemons, with a fresh CA (see --tls-dir).")
@click.option("--tls-dir", default="", help="Certificates from `glitches certs` to use (implies --tls).")
def up_cmd(gpu_workers, fpga_workers, model, port, redis_url, redis_prefix, fpga_numerics, fpga_hbm_bytes,
           fpga_slots, kv_transport, prompt, max_tokens, gateway_port, api_keys_file, gateway_api_keys_file,
           gateway_requests_per_minute_per_client, gateway_requests_per_minute_per_user, tls_on, tls_dir) -> None:
    """Start a local cluster (Redis, scheduler, workers) as separate processes.

    Prints `ready <address>` once the scheduler answers with every worker
    registered; Ctrl-C or SIGTERM stops everything it started. The scheduler and the
    workers share a random KV token secret (GLITCHES_KV_TOKEN_SECRET in their
    environment) unless GLITCHES_KV_TOKEN_SECRET or GLITCHES_KV_TOKEN_SECRET_FILE is set.
    """
    from glitches.cluster import ClusterSpec, LocalCluster
    from services.models import resolve_model

    if gpu_workers < 1:
        raise click.UsageError("--gpu-workers must be at least 1 (prefill runs on GPU workers)")
    if fpga_workers < 0:
        raise click.UsageError("--fpga-workers must be >= 0")
    if tls_dir:
        _check_tls_dir(Path(tls_dir), gateway_port is not None)
    access = _up_access(api_keys_file, gateway_api_keys_file, gateway_requests_per_minute_per_client,
                        gateway_requests_per_minute_per_user)
    try:
        click.echo(f"preparing model {model} ...", err=True)
        resolve_model(model)  # convert once here, not in every daemon at the same time
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    run_dir = Path(tempfile.mkdtemp(prefix="glitches-up-"))
    if tls_on and not tls_dir:
        from glitches.certs import make_certs

        tls_dir = str(run_dir / "tls")
        make_certs(Path(tls_dir))
        click.echo(f"TLS: a fresh CA and certificates in {tls_dir} (client: client.pem, client-key.pem)", err=True)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    cluster = LocalCluster(ClusterSpec(gpu_workers=gpu_workers, fpga_workers=fpga_workers, model=model, port=port,
                                       redis_url=redis_url, redis_prefix=redis_prefix, fpga_numerics=fpga_numerics,
                                       fpga_hbm_bytes=fpga_hbm_bytes, fpga_slots=fpga_slots,
                                       kv_transport=kv_transport,
                                       gateway_port=gateway_port, tls_dir=tls_dir, **access), run_dir)
    try:
        click.echo(f"starting: logs in {cluster.run_dir}", err=True)
        cluster.start()
        click.echo(f"redis {cluster.shown_redis_url} prefix {redis_prefix}", err=True)
        for name, http_address in cluster.http_addresses.items():
            click.echo(f"http {name} {http_address}")  # /healthz /readyz /metrics
        cluster.wait_ready()
        if cluster.gateway_url:
            click.echo(f"gateway {cluster.gateway_url}")  # OpenAI-compatible: base_url = this + /v1
        click.echo(f"ready {cluster.address}" + (" tls" if tls_dir else ""), err=False)
        sys.stdout.flush()
        if prompt is not None:
            with Client(cluster.address, api_key=cluster.spec.api_key or None, tls=cluster.client_tls()) as client:
                _print_stream(client, prompt, dict(max_tokens=max_tokens, chat=True))
        else:
            stop.wait()
    finally:
        click.echo("stopping ...", err=True)
        cluster.stop()
        click.echo("stopped", err=True)


def _up_access(api_keys_file: str, gateway_api_keys_file: str, per_client: float, per_user: float) -> dict:
    """ClusterSpec fields for `up`'s API keys and gateway limits; key files are passed by path, keys never in argv."""
    from services.api_keys import load_api_keys

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


@main.command("certs")
@click.option("--out", required=True, help="Directory to write ca.pem and ROLE.pem / ROLE-key.pem into.")
@click.option("--host", "hosts", multiple=True,
              help="Extra DNS name or IP address the certificates are valid for (repeatable).")
@click.option("--role", "roles", multiple=True,
              help="Certificate to make (repeatable; default: scheduler, gpu-worker, fpga-worker, gateway, client).")
@click.option("--days", default=365, type=int, show_default=True, help="Validity, days.")
def certs_cmd(out, hosts, roles, days) -> None:
    """Make a local CA and a TLS certificate per role (server and client use) for a deployment."""
    from glitches.certs import DEFAULT_ROLES, make_certs

    try:
        made = make_certs(Path(out), tuple(roles) or DEFAULT_ROLES, tuple(hosts), days)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    click.echo(f"CA {Path(out) / 'ca.pem'} (its key ca-key.pem signs new certificates: keep it private)")
    for role, files in made.items():
        click.echo(f"{role}: --tls-cert {files.cert} --tls-key {files.key} --tls-ca {Path(out) / 'ca.pem'}")


def _print_stream(client: Client, prompt: str, kwargs: dict) -> Completion:
    final = None
    for item in client.stream(prompt, **kwargs):
        if isinstance(item, Completion):
            final = item
        else:
            click.echo(item.text, nl=False)
    click.echo()
    t = final.timings
    modeled = ""
    if t.modeled_decode_s > 0 and final.completion_tokens > 1:
        modeled = f", modeled U280 decode {t.modeled_decode_s / (final.completion_tokens - 1) * 1e3:.2f} ms/token"
    click.echo(f"[{final.completion_tokens} tokens, decoded on {final.decode_device} worker {final.decode_worker}, "
               f"ttft {t.ttft_s:.3f} s, {t.tokens_per_s:.1f} tokens/s{modeled}]", err=True)
    return final


@main.command("generate")
@click.argument("prompt")
@click.option("--max-tokens", default=64, type=int, show_default=True)
@click.option("--temperature", default=0.0, type=float, show_default=True, help="0 = greedy.")
@click.option("--top-p", default=1.0, type=float, show_default=True)
@click.option("--seed", default=0, type=int, show_default=True)
@click.option("--stop", multiple=True, help="Stop string (repeatable).")
@click.option("--chat", is_flag=True, help="Apply the model's chat template.")
@click.option("--model", default="", help="Expected model name (default: whatever the cluster serves).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of streaming text.")
@click.option("--json-object", is_flag=True, help="Constrain the answer to a JSON object (token masking).")
@click.option("--json-schema", "json_schema_file", type=click.File("r"), default=None,
              help="Constrain the answer to JSON valid against the JSON Schema in this file.")
@click.option("--logprobs", is_flag=True, help="With --json: each generated token's log-probability.")
@click.option("--top-logprobs", default=0, type=int, show_default=True,
              help="With --logprobs / --prompt-logprobs: this many most likely tokens per position.")
@click.option("--prompt-logprobs", is_flag=True, help="With --json: the prompt tokens' log-probabilities.")
@click.option("--ignore-eos", is_flag=True, help="Never stop on EOS.")
@click.option("--min-tokens", default=0, type=int, show_default=True,
              help="No EOS and no stop string before this many tokens.")
@click.option("--address", default=DEFAULT_ADDRESS, envvar=_env("address"), show_default=True)
@client_tls_options
def generate_cmd(prompt, max_tokens, temperature, top_p, seed, stop, chat, model, as_json, json_object,
                 json_schema_file, logprobs, top_logprobs, prompt_logprobs, ignore_eos, min_tokens, address,
                 **tls) -> None:
    """Generate text for PROMPT, streaming it as it is produced."""
    kwargs = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stop=stop, chat=chat,
                  model=model, logprobs=logprobs, top_logprobs=top_logprobs, prompt_logprobs=prompt_logprobs,
                  ignore_eos=ignore_eos, min_tokens=min_tokens)
    if json_object and json_schema_file:
        raise click.UsageError("give --json-object or --json-schema, not both")
    if json_schema_file is not None:
        try:
            kwargs["response_format"] = json.load(json_schema_file)
        except ValueError as error:
            raise click.UsageError(f"--json-schema: the file is not JSON ({error})") from None
        if not isinstance(kwargs["response_format"], dict):
            raise click.UsageError("--json-schema: the schema must be a JSON object")
    elif json_object:
        kwargs["response_format"] = "json_object"
    with Client(address, tls=client_tls(tls)) as client:
        if as_json:
            click.echo(json.dumps(client.generate(prompt, **kwargs).to_dict(), ensure_ascii=False))
        else:
            _print_stream(client, prompt, kwargs)


@main.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.option("--address", default=DEFAULT_ADDRESS, envvar=_env("address"), show_default=True)
@client_tls_options
def status_cmd(as_json, address, **tls) -> None:
    """Every worker with its kind, backend, health and occupancy."""
    with Client(address, tls=client_tls(tls)) as client:
        status = client.status()
    if as_json:
        click.echo(json.dumps(status.to_dict()))
        return
    click.echo(f"model {status.model}; scheduler active requests {status.scheduler_active_requests}")
    click.echo(f"{'id':<10} {'kind':<5} {'backend':<8} {'address':<22} {'pid':>7} {'health':<8} {'active':>6}/slots "
               f"{'held':>4} {'expiring':>8} {'held KV':>12} kv transports")
    for w in status.workers:
        label = w.backend + (" (emulated)" if w.emulated else "")
        click.echo(f"{w.worker_id:<10} {w.kind:<5} {label:<8} {w.address:<22} {w.pid:>7} "
                   f"{'healthy' if w.healthy else 'DOWN':<8} {w.active_requests:>6}/{w.slots:<5} "
                   f"{w.worker_active_requests:>4} {w.expiring_requests:>8} {w.kv_held_bytes:>10} B "
                   f"{','.join(w.kv_transports) or '-'}")
    for w in status.workers:
        if w.kind == "fpga" and not w.kv_tokens_required:
            click.echo(f"warning: {w.worker_id} accepts KV transfers without a token (no KV token secret set)")


@main.command("fpga-timing")
@click.option("--model", default="llama-2-7b", show_default=True,
              help="llama-2-7b, smollm2-135m, ... or a transformers config.json path.")
@click.option("--context", required=True, type=int, help="Tokens already in the KV cache.")
@click.option("--prefetch-ratio", default=4, type=int, show_default=True, help="Loads merged per instruction.")
@click.option("--json", "as_json", is_flag=True)
def fpga_timing_cmd(model, context, prefetch_ratio, as_json) -> None:
    """The modeled U280 decode time per token (a model of the card, not a measurement)."""
    from fpga_worker.timing_cli import timing_cli

    try:
        click.echo(timing_cli(model, context, prefetch_ratio, as_json))
    except ServiceError as error:
        raise click.UsageError(str(error)) from None


@main.command("simulate")
@click.option("--gpus", required=True, type=int, help="GPUs in the node.")
@click.option("--gpu", default="a100", show_default=True, help="GPU profile (a100, v100s, h100-pcie, l4, ...).")
@click.option("--fpgas", required=True, type=int, help="FPGA cards in the node.")
@click.option("--fpga", default="u280", show_default=True, help="FPGA profile.")
@click.option("--model", default="llama-2-7b", show_default=True, help="Model shape (sim/profiles/models.json).")
@click.option("--input", "input_tokens", required=True, type=int, help="Prompt tokens per request.")
@click.option("--output", "output_tokens", required=True, type=int, help="New tokens per request.")
@click.option("--num-requests", default=200, type=int, show_default=True)
@click.option("--request-rate", default=None, type=float, help="Poisson arrivals, requests/s.")
@click.option("--concurrency", default=None, type=int, help="Closed loop with this many clients.")
@click.option("--profile", "profile_path", default=None, help="Measured device profiles (glitches.profile.v1).")
@click.option("--json", "as_json", is_flag=True)
def simulate_cmd(gpus, gpu, fpgas, fpga, model, input_tokens, output_tokens, num_requests, request_rate,
                 concurrency, profile_path, as_json) -> None:
    """Predict a node of N GPUs + M FPGAs with a discrete-event model (the scheduler's own placement)."""
    from sim.cli import render_text, simulate

    if request_rate is not None and concurrency is not None:
        raise click.UsageError("give --request-rate or --concurrency, not both")
    try:
        result = simulate(gpus, gpu, fpgas, fpga, model, input_tokens, output_tokens, num_requests, request_rate,
                          concurrency, profile_path)
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    click.echo(json.dumps(result) if as_json else render_text(result))


def _add_deploy() -> None:
    from glitches.deploy.command import deploy_cmd

    main.add_command(deploy_cmd)


_add_deploy()


def _add_bench() -> None:
    from glitches.bench.command import bench_cmd, profile_cmd

    main.add_command(bench_cmd)
    main.add_command(profile_cmd)


_add_bench()


def _add_gateway() -> None:
    from glitches.gateway.command import gateway_cmd

    main.add_command(gateway_cmd)


_add_gateway()


def run() -> None:
    """Entry point: SDK errors become one line on stderr and exit code 1."""
    try:
        main(standalone_mode=True)
    except GlitchesError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
