"""The daemon commands `glitches scheduler`, `gpu-worker` and `fpga-worker`: flags (or GLITCHES_*
variables) into each daemon's settings object, then its serve()."""

from __future__ import annotations

import click

from glitches.cli_common import env_var
from glitches.cli_tls import tls_flags
from glitches.services.runtime.errors import GlitchesError as ServiceError
from glitches.services.generation.models import DEFAULT_MODEL


def daemon_options(fn):
    """Flags every daemon shares (services.settings.DaemonSettings)."""
    options = [
        click.option("--worker-id", default="", envvar=env_var("worker-id"), help="Registry id (default: derived)."),
        click.option("--host", default="127.0.0.1", envvar=env_var("host"), show_default=True,
                     help="Interface to bind."),
        click.option("--port", default=0, type=int, envvar=env_var("port"), help="gRPC port (0: any free port)."),
        click.option("--advertise-host", default="", envvar=env_var("advertise-host"),
                     help="Host name other daemons use to reach this one."),
        click.option("--redis-url", default="redis://127.0.0.1:6379/0", envvar=env_var("redis-url"), show_default=True,
                     help="redis://[[user]:password@]host:port/db (also rediss://, unix://), or "
                          "redis+sentinel://[[user]:password@]host1:port1,host2:port2/<service>[/db] for a primary "
                          "found through Redis Sentinel (docs/architecture.md, \"Redis failover\")."),
        click.option("--heartbeat-ttl-s", default=3.0, type=float, envvar=env_var("heartbeat-ttl-s"), show_default=True,
                     help="Workers: counted dead this long after their last heartbeat (one a second), seconds."),
        click.option("--redis-prefix", default="glitches", envvar=env_var("redis-prefix"), show_default=True,
                     help="Prefix of every registry key (clusters sharing a Redis use different ones)."),
        click.option("--model", default=DEFAULT_MODEL, envvar=env_var("model"), show_default=True,
                     help="Model name, local transformers directory, or .gguf file."),
        click.option("--threads", default=0, type=int, envvar=env_var("threads"),
                     help="torch threads (0: torch's default)."),
        click.option("--http-port", default=0, type=int, envvar=env_var("http-port"),
                     help="HTTP side port for /healthz, /readyz, /metrics (0: any free port)."),
        *tls_flags(server=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def kv_token_option(fn):
    """The KV-transfer token secret (services.kv_token): a file path flag, or GLITCHES_KV_TOKEN_SECRET."""
    return click.option("--kv-token-secret-file", default="", envvar=env_var("kv-token-secret-file"),
                        help="File holding the secret shared by the scheduler and the FPGA workers that signs each "
                             "KV transfer (or set GLITCHES_KV_TOKEN_SECRET; never a flag). Without one, KV "
                             "transfers are unauthenticated.")(fn)


def kv_intake_options(fn):
    """The bounds on KV streams a worker receives (glitches/kv_plane/kv_stream_limits.py): FPGA workers, and GPU
    workers with the decode role."""
    options = [
        click.option("--kv-header-timeout-s", default=2.0, type=float, envvar=env_var("kv-header-timeout-s"),
                     show_default=True, help="A received KV stream's header must arrive within this (at most 2 s)."),
        click.option("--kv-stall-timeout-s", default=30.0, type=float, envvar=env_var("kv-stall-timeout-s"),
                     show_default=True, help="Longest gap between two messages of one received KV stream, seconds."),
        click.option("--max-kv-streams", default=64, type=int, envvar=env_var("max-kv-streams"), show_default=True,
                     help="KV streams received at once (more: RESOURCE_EXHAUSTED at once)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def kv_copy_threads_option(fn):
    """Threads of one KV relayout (glitches/kv_plane/kv_copy_threads.py): GPU and FPGA workers."""
    return click.option("--kv-copy-threads", default=2, type=click.IntRange(1, 2), envvar=env_var("kv-copy-threads"),
                        show_default=True,
                        help="Threads that write one layer's KV at the card's addresses: 2 = K and V side by side "
                             "(CPU copies only: shm on the CPU, nixl staging, grpc receive).")(fn)


def kv_hold_option(fn):
    """How long a worker keeps KV nobody renews (services.kv_holds)."""
    return click.option("--kv-hold-ttl-s", default=20.0, type=float, envvar=env_var("kv-hold-ttl-s"), show_default=True,
                        help="KV held for a request that is not decoding is freed this long after the scheduler's "
                             "last renewal (its scheduler died), seconds.")(fn)


def _kv_token_secret(kwargs: dict) -> None:
    """Replace the --kv-token-secret-file value in kwargs by the secret (file or environment)."""
    from glitches.services.auth.kv_token import secret_from_environment

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
        raise click.ClickException(f"{error.code}: {error}") from None



@click.command("scheduler")
@daemon_options
@click.option("--max-new-tokens-limit", default=4096, type=int, envvar=env_var("max-new-tokens-limit"),
              show_default=True, help="Largest max_tokens a request may ask for.")
@click.option("--lease-ttl-s", default=5.0, type=float, envvar=env_var("lease-ttl-s"), show_default=True,
              help="How long a slot claim outlives a scheduler that died, seconds.")
@click.option("--max-active", default=24, type=int, envvar=env_var("max-active"), show_default=True,
              help="Requests this scheduler runs at once.")
@click.option("--max-queued", default=8, type=int, envvar=env_var("max-queued"), show_default=True,
              help="Requests that may wait for a place; beyond, RESOURCE_EXHAUSTED. The gRPC thread pool is "
                   "--max-active + --max-queued + 16 (health, Status and refusals keep threads).")
@click.option("--queue-wait-s", default=30.0, type=float, envvar=env_var("queue-wait-s"), show_default=True,
              help="Longest wait for a place, seconds.")
@click.option("--decode-stall-s", default=5.0, type=float, envvar=env_var("decode-stall-s"), show_default=True,
              help="An FPGA decode stream with no token for this long (plus 4 x its slowest step) is treated as a "
                   "dead worker and the request moves, seconds.")
@click.option("--max-migrations", default=2, type=int, envvar=env_var("max-migrations"), show_default=True,
              help="How often one request may move to other workers after a worker dies.")
@click.option("--api-keys-file", default="", envvar=env_var("api-keys-file"),
              help="Require `authorization: Bearer <key>` with a key from this file: one per line, `<key>` (its "
                   "own tenant) or `<key> <tenant>` (keys of one tenant share the prefix cache).")
@click.option("--api-keys", default="", envvar=env_var("api-keys"), help="Comma-separated keys (prefer the file).")
@click.option("--requests-per-minute-per-key", default=0.0, type=float, envvar=env_var("requests-per-minute-per-key"),
              show_default=True, help="With API keys: calls per key per minute (0: no limit).")
@click.option("--max-prompt-tokens", default=0, type=int, envvar=env_var("max-prompt-tokens"), show_default=True,
              help="Longest prompt accepted, tokens (0: the model's context).")
@click.option("--max-top-logprobs", default=20, type=int, envvar=env_var("max-top-logprobs"), show_default=True,
              help="Largest top_logprobs a request may ask for.")
@click.option("--max-stop-strings", default=16, type=int, envvar=env_var("max-stop-strings"), show_default=True,
              help="Most stop strings one request may give.")
@kv_token_option
@click.option("--kv-token-ttl-s", default=60.0, type=float, envvar=env_var("kv-token-ttl-s"), show_default=True,
              help="How long a KV-transfer token stays valid, seconds (clocks must agree within it).")
@click.option("--kv-reuse/--no-kv-reuse", default=True, envvar=env_var("kv-reuse"), show_default=True,
              help="Route by the KV workers hold: a card holding a prompt's prefix may extend it (no GPU, no "
                   "transfer); docs/architecture.md, KV-reuse routing.")
@click.option("--kv-reuse-partial/--no-kv-reuse-partial", default=True, envvar=env_var("kv-reuse-partial"),
              show_default=True, help="With --kv-reuse: the GPU may prefill the rest of a prompt a card holds in "
                                      "part and send only the KV it lacks (path transfer-partial).")
@click.option("--warm-replies/--no-warm-replies", default=True, envvar=env_var("warm-replies"), show_default=True,
              help="With --kv-reuse: after a card decoded a reply, the GPU that prefilled it computes the reply's KV "
                   "into its prefix cache at low priority (WarmPrefix), so the next turn's prefill reuses it.")
@click.option("--reuse-gpu-prefill-tokens-per-s", default=None, type=float,
              envvar=env_var("reuse-gpu-prefill-tokens-per-s"),
              help="Routing cost model: GPU prefill, tokens/s, pinned for every GPU. Unset: each GPU's measured "
                   "speed, 8,735 (an A100's) for one that has measured none yet.")
@click.option("--reuse-card-forced-step-s", default=None, type=float,
              envvar=env_var("reuse-card-forced-step-s"),
              help="Routing cost model: one prompt token forced through a card's decode step, seconds, pinned for "
                   "every card. Unset: each card's measured step, 0.0215 (a U280's) for one that has measured none.")
@click.option("--reuse-transfer-bytes-per-s", default=12e9, type=float, show_default=True,
              envvar=env_var("reuse-transfer-bytes-per-s"), help="Routing cost model: GPU -> card KV, bytes/s.")
@click.option("--reuse-queued-request-s", default=0.03, type=float, show_default=True,
              envvar=env_var("reuse-queued-request-s"), help="Routing cost model: delay each running request on "
                                                            "a device adds, seconds.")
@click.option("--prompt-logprobs-on", default="gpu", type=click.Choice(["gpu", "card"]), show_default=True,
              envvar=env_var("prompt-logprobs-on"), help="Who scores prompts for prompt logprobs: GPU prefill, or a "
                                                         "card stepping the whole prompt with its own numerics (to "
                                                         "evaluate a card, e.g. lm-eval through the gateway).")
def scheduler_cmd(**kwargs) -> None:
    """Run one scheduler replica (stateless; state lives in Redis)."""
    from glitches.scheduler.server import serve
    from glitches.scheduler.settings import SchedulerSettings
    from glitches.services.auth.api_keys import read_api_keys, shared_tenants

    try:
        tenants = read_api_keys(kwargs.pop("api_keys_file"), kwargs.pop("api_keys"))
        kwargs["api_keys"], kwargs["api_key_tenants"] = tuple(tenants), shared_tenants(tenants)
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    _kv_token_secret(kwargs)
    kwargs.pop("worker_id")
    _run_daemon(serve, SchedulerSettings, port=kwargs.pop("port") or 50051, **kwargs)


@click.command("gpu-worker")
@daemon_options
@click.option("--device", default="auto", envvar=env_var("device"), show_default=True,
              help="auto, cpu, cuda or cuda:N.")
@click.option("--dtype", default="auto", envvar=env_var("dtype"), show_default=True,
              help="auto (float32 on CPU, float16 on CUDA), float32, float16 or bfloat16.")
@click.option("--slots", default=0, type=int, envvar=env_var("gpu-slots"), show_default=True,
              help="Concurrent GPU-assist decodes (beyond them RESOURCE_EXHAUSTED); 0: as many as the KV budget "
                   "holds at a 2048-token context, capped at half of --max-batch-tokens (glitches/gpu_worker/assist_slots.py).")
@click.option("--kv-transport", default="auto", envvar=env_var("kv-transport"), show_default=True,
              type=click.Choice(["auto", "shm", "nixl", "grpc"]),
              help="How KV reaches the decode worker: auto = shm on its host, else nixl, else grpc.")
@kv_token_option
@kv_hold_option
@click.option("--kv-memory-fraction", default=0.9, type=float, envvar=env_var("kv-memory-fraction"), show_default=True,
              help="Share of the device memory free after the weights used for KV (host RAM on the CPU stand-in).")
@click.option("--kv-cache-gib", default=0.0, type=float, envvar=env_var("kv-cache-gib"), show_default=True,
              help="KV budget in GiB (0: from --kv-memory-fraction).")
@click.option("--max-batch-tokens", default=512, type=int, envvar=env_var("max-batch-tokens"), show_default=True,
              help="Tokens per batched forward pass (decodes + prefill chunks; longer prompts are chunked).")
@click.option("--compile-decode", is_flag=True, envvar=env_var("compile-decode"),
              help="torch.compile the decode steps (meant for CUDA; untested there).")
@click.option("--roles", default="prefill,assist", envvar=env_var("gpu-roles"), show_default=True,
              help="What it does, comma-separated: prefill, assist (decode what it prefilled), decode (take KV "
                   "from another GPU worker's prefill and decode it, as an FPGA does).")
@click.option("--kv-staging-gib", default=2.0, type=float, envvar=env_var("kv-staging-gib"), show_default=True,
              help="Decode role: host staging for KV arriving, GiB (a sparse shared-memory segment).")
@click.option("--prefix-cache/--no-prefix-cache", default=True, envvar=env_var("prefix-cache"), show_default=True,
              help="Keep finished requests' full KV blocks as evictable cache (per tenant) and reuse them for "
                   "prompts that start the same way.")
@kv_intake_options
@kv_copy_threads_option
def gpu_worker_cmd(**kwargs) -> None:
    """Run one GPU worker: prefill (streaming KV to the decode target) and GPU-assist decode; with --roles
    decode, also (or only) a decode target for other GPU workers' prefills."""
    from glitches.gpu_worker.daemon import serve
    from glitches.gpu_worker.settings import GpuWorkerSettings

    _kv_token_secret(kwargs)
    _run_daemon(serve, GpuWorkerSettings, **kwargs)


@click.command("fpga-worker")
@daemon_options
@click.option("--backend", default="emu", envvar=env_var("backend"), show_default=True,
              help="emu: the software kernel emulator (no card); xrt: an Alveo card through XRT's C API.")
@click.option("--numerics", default="reference", envvar=env_var("numerics"), show_default=True,
              help="emu numerics: reference (the model's own precision), w4a8 (the kernel's INT4 x INT8, Python) "
                   "or csim (the kernel's HLS source compiled with g++ by make setup: same bits as w4a8).")
@click.option("--hbm-bytes", default=8 * 1024**3, type=int, envvar=env_var("hbm-bytes"), show_default=True,
              help="Device memory for weights + KV, bytes (a U280 has 8 GiB of HBM).")
@click.option("--slots", default=1, type=int, envvar=env_var("fpga-slots"), show_default=True,
              help="Concurrent decode requests (1 = the paper's batch size 1).")
@click.option("--device", default="0", envvar=env_var("fpga-device"), help="Card index or PCI BDF (xrt backend).")
@click.option("--xclbin", default="", envvar=env_var("xclbin"), help="Decode bitstream path (xrt backend).")
@click.option("--run-timeout-s", default=10.0, type=float, envvar=env_var("run-timeout-s"), show_default=True,
              help="xrt backend: a kernel run not finished after this many seconds fails its request and takes "
                   "the card out of service (health NOT_SERVING, out of the registry).")
@click.option("--kv-transport", default="auto", envvar=env_var("kv-transport"), show_default=True,
              type=click.Choice(["auto", "shm", "nixl", "grpc"]),
              help="KV data planes accepted besides grpc (always accepted): auto = every one available.")
@kv_intake_options
@kv_token_option
@kv_hold_option
@kv_copy_threads_option
@click.option("--kv-retention/--no-kv-retention", default=True, envvar=env_var("kv-retention"), show_default=True,
              help="Keep finished requests' KV in HBM as evictable cache and serve DecodeFromHeld from it.")
def fpga_worker_cmd(**kwargs) -> None:
    """Run one FPGA worker: receive KV into HBM and decode from it."""
    from glitches.fpga_worker.daemon import serve
    from glitches.fpga_worker.settings import FpgaWorkerSettings

    _kv_token_secret(kwargs)
    _run_daemon(serve, FpgaWorkerSettings, **kwargs)



def register(group: click.Group) -> None:
    """Add the daemon commands to `group`."""
    for command in (scheduler_cmd, gpu_worker_cmd, fpga_worker_cmd):
        group.add_command(command)
