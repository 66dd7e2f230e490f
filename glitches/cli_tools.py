"""The offline commands `glitches certs`, `fpga-timing` and `simulate`: no cluster needed."""

from __future__ import annotations

import json
from pathlib import Path

import click

from glitches.services.runtime.errors import GlitchesError as ServiceError


@click.command("certs")
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



@click.command("fpga-timing")
@click.option("--model", default="llama-2-7b", show_default=True,
              help="llama-2-7b, smollm2-135m, ... or a transformers config.json path.")
@click.option("--context", required=True, type=int, help="Tokens already in the KV cache.")
@click.option("--prefetch-ratio", default=4, type=int, show_default=True, help="Loads merged per instruction.")
@click.option("--json", "as_json", is_flag=True)
def fpga_timing_cmd(model, context, prefetch_ratio, as_json) -> None:
    """The modeled U280 decode time per token (a model of the card, not a measurement)."""
    from glitches.fpga_worker.timing_cli import timing_cli

    try:
        click.echo(timing_cli(model, context, prefetch_ratio, as_json))
    except ServiceError as error:
        raise click.UsageError(str(error)) from None


@click.command("simulate")
@click.option("--gpus", required=True, type=int, help="GPUs in the node.")
@click.option("--gpu", default="a100", show_default=True, help="GPU profile (a100, v100s, h100-pcie, l4, ...).")
@click.option("--fpgas", required=True, type=int, help="FPGA cards in the node.")
@click.option("--fpga", default="u280", show_default=True, help="FPGA profile.")
@click.option("--model", default="llama-2-7b", show_default=True, help="Model shape (glitches/sim/profiles/models.json).")
@click.option("--input", "input_tokens", default=None, type=int, help="Prompt tokens per request.")
@click.option("--output", "output_tokens", default=None, type=int, help="New tokens per request.")
@click.option("--num-requests", default=200, type=int, show_default=True)
@click.option("--request-rate", default=None, type=float, help="Poisson arrivals, requests/s.")
@click.option("--concurrency", default=None, type=int, help="Closed loop with this many clients.")
@click.option("--profile", "profile_path", default=None, help="Measured device profiles (glitches.profile.v1).")
@click.option("--trace", "trace_path", default=None,
              help="A trace file (e.g. from `glitches bench --trace-out`): its arrival times and lengths replace "
                   "--input/--output/--num-requests/--request-rate.")
@click.option("--gpu-slots", "gpu_decode_slots", default=1, type=int, show_default=True,
              help="GPU-assist decodes per GPU at once.")
@click.option("--gpu-batching", is_flag=True, help="GPUs batch continuously as the GPU worker does (default: batch 1, "
                                                   "the paper's setting).")
@click.option("--decode-gpus", default=0, type=int, show_default=True,
              help="More GPUs of --gpu with the decode role only: they take the KV a prefill GPU sends and batch "
                   "their decodes (placement prefers FPGAs, then them, then GPU assist).")
@click.option("--decode-gpu-slots", default=0, type=int, show_default=True,
              help="Requests one decode GPU decodes at once; 0 = from its KV budget, as the GPU worker's --slots 0.")
@click.option("--fpga-prefetch-ratio", default=None, type=int,
              help="The FPGA kernel's prefetch ratio for its modeled decode step (as `glitches fpga-timing`); "
                   "default 1, the paper's measured U280.")
@click.option("--host-cores", default=None, type=float,
              help="Cores of the host CPU that devices with host_threads share (default: the measured profile's "
                   "host_cores; 0 = off).")
@click.option("--max-active", default=0, type=click.IntRange(min=0), show_default=True,
              help="The scheduler's --max-active (requests running at once; beyond them they queue); 0 = no admission "
                   "control (what the devices alone can serve). The live scheduler's default is 24.")
@click.option("--max-queued", default=0, type=click.IntRange(min=0), show_default=True,
              help="With --max-active: the scheduler's --max-queued (requests waiting for a place; beyond them "
                   "refused). The live scheduler's default is 8.")
@click.option("--json", "as_json", is_flag=True)
def simulate_cmd(gpus, gpu, fpgas, fpga, model, input_tokens, output_tokens, num_requests, request_rate,
                 concurrency, profile_path, trace_path, gpu_decode_slots, gpu_batching, decode_gpus, decode_gpu_slots,
                 fpga_prefetch_ratio, host_cores, max_active, max_queued, as_json) -> None:
    """Predict a node of N GPUs + M FPGAs with a discrete-event model (the scheduler's own placement)."""
    from glitches.sim.admission import AdmissionLimits
    from glitches.sim.cli import render_text, simulate

    if request_rate is not None and concurrency is not None:
        raise click.UsageError("give --request-rate or --concurrency, not both")
    if trace_path is None and (input_tokens is None or output_tokens is None):
        raise click.UsageError("give --input and --output, or --trace FILE")
    if host_cores is not None and host_cores < 0:
        raise click.BadParameter(f"must be >= 0 cores (0: devices share no host CPU), got {host_cores:g}",
                                 param_hint="--host-cores")
    try:
        result = simulate(gpus, gpu, fpgas, fpga, model, input_tokens or 1, output_tokens or 1, num_requests,
                          request_rate, concurrency, profile_path, trace_path=trace_path,
                          gpu_decode_slots=gpu_decode_slots, gpu_batching=gpu_batching,
                          fpga_prefetch_ratio=fpga_prefetch_ratio, decode_gpus=decode_gpus,
                          decode_gpu_slots=decode_gpu_slots, host_cores=host_cores,
                          admission=AdmissionLimits(max_active, max_queued))
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    click.echo(json.dumps(result) if as_json else render_text(result))



def register(group: click.Group) -> None:
    """Add the offline commands to `group`."""
    from glitches.cli_plan import plan_cmd

    for command in (certs_cmd, fpga_timing_cmd, simulate_cmd, plan_cmd):
        group.add_command(command)
