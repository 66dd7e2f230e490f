"""The `glitches deploy` command: discover devices, make the plan, print or apply it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from glitches.deploy.plan import FPGA_BACKENDS
from glitches.services.runtime.errors import GlitchesError as ServiceError


IMAGE_UID = 10001  # the user every GLITCHES image runs as (Dockerfile)
TLS_ROLES = ("scheduler", "gpu-worker", "fpga-worker")


def tls_dir_problem(folder: Path) -> str:
    """What is wrong with a --tls-dir for the containers (missing files, keys the images' user cannot read); "" if fine."""
    from glitches.certs import missing_files

    missing = missing_files(folder, TLS_ROLES)
    if missing:
        return missing
    unreadable = []
    for role in TLS_ROLES:
        st = (folder / f"{role}-key.pem").stat()
        if not (st.st_uid == IMAGE_UID or st.st_mode & 0o004 or (st.st_gid == IMAGE_UID and st.st_mode & 0o040)):
            unreadable.append(f"{role}-key.pem")
    if unreadable:
        return (f"the containers run as uid {IMAGE_UID} and cannot read {', '.join(unreadable)} in {folder}: "
                f"`chown {IMAGE_UID} {folder}/*-key.pem` (keep them mode 0600)")
    return ""


@click.command("deploy")
@click.option("--dry-run", is_flag=True, help="Print the plan; start nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan (or what was started) as JSON.")
@click.option("--down", is_flag=True, help="Remove the project's containers instead.")
@click.option("--project", default="glitches", show_default=True, help="Container name prefix and label.")
@click.option("--image-prefix", default="glitches", show_default=True,
              help="Images PREFIX-scheduler, -gpu-worker, -fpga-worker, -cpu (Dockerfile targets).")
@click.option("--tag", default="latest", show_default=True)
@click.option("--image", "image_override", default="", help="Run every daemon from this one image.")
@click.option("--model", default="smollm2-135m-instruct", show_default=True)
@click.option("--cache-dir", default="/var/cache/glitches", show_default=True,
              help="Host directory mounted as the model cache (GLITCHES_CACHE_DIR).")
@click.option("--redis-url", default="", help="Use this Redis instead of starting a Redis container.")
@click.option("--redis-port", default=6379, type=int, show_default=True)
@click.option("--redis-prefix", default="glitches", show_default=True)
@click.option("--grpc-base-port", default=50051, type=int, show_default=True, help="The scheduler's gRPC port.")
@click.option("--http-base-port", default=8080, type=int, show_default=True, help="The scheduler's HTTP port.")
@click.option("--advertise-host", default="127.0.0.1", show_default=True,
              help="Address the daemons use for each other (host network).")
@click.option("--cpu-gpu-workers", default=0, type=int, help="Prefill workers on the CPU when no GPU is found.")
@click.option("--decode-gpus", default=0, type=int, show_default=True,
              help="The last N GPU workers run --roles decode (GPU->GPU disaggregation; FPGAs are still preferred).")
@click.option("--emulated-fpgas", default=0, type=int, help="Emulated FPGA workers when no Alveo card is found.")
@click.option("--fpga-backend", type=click.Choice(FPGA_BACKENDS), default="xrt", show_default=True,
              help="What runs each detected Alveo card: xrt drives it (needs --xclbin); emu emulates it.")
@click.option("--xclbin", default="", help="Host path of the decode bitstream for the xrt FPGA workers "
              "(mounted read-only).")
@click.option("--tls-dir", default="", help="`glitches certs` output: mounted read-only, mTLS on every gRPC link "
              "(make it with --host for --advertise-host).")
@click.option("--docker-host", default="", envvar="DOCKER_HOST", help="Docker Engine API (default: DOCKER_HOST).")
def deploy_cmd(dry_run, as_json, down, docker_host, **options) -> None:
    """One container per device on this node: Redis, the scheduler, a GPU worker per NVIDIA GPU (NVML)
    and an FPGA worker per Alveo card (sysfs vendor 0x10ee), through the Docker Engine API."""
    from glitches.deploy import engine
    from glitches.deploy.devices import discover_alveo, discover_gpus
    from glitches.deploy.plan import DeployOptions, make_plan

    if down:
        removed = engine.down(engine.connect(docker_host), options["project"])
        click.echo(json.dumps({"removed": removed}) if as_json else "\n".join(f"removed {n}" for n in removed))
        return
    if options["tls_dir"]:
        options["tls_dir"] = str(Path(options["tls_dir"]).resolve())  # bind mounts need absolute paths
        problem = tls_dir_problem(Path(options["tls_dir"]))
        if problem:
            raise click.UsageError(problem)
    if options["xclbin"]:
        if not Path(options["xclbin"]).is_file():
            raise click.UsageError(f"--xclbin {options['xclbin']}: no such file")
        options["xclbin"] = str(Path(options["xclbin"]).resolve())  # bind mounts need absolute paths
    from glitches.services.auth.kv_token import SECRET_ENV, new_secret

    # one KV-transfer token secret per deploy (or the operator's), handed to containers in their environment
    options["kv_token_secret"] = os.environ.get(SECRET_ENV, "") or new_secret()
    try:
        plan = make_plan(discover_gpus(), discover_alveo(), DeployOptions(**options))
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    if not dry_run:
        Path(options["cache_dir"]).mkdir(parents=True, exist_ok=True)
        engine.up(engine.connect(docker_host), plan)
    if as_json:
        click.echo(json.dumps(plan.to_dict()))
        return
    for spec in plan.containers:
        click.echo(f"{'plan' if dry_run else 'started'} {spec.name:<36} {spec.role:<12} {spec.device or '-':<28} "
                   f"{spec.image}")
    click.echo(f"scheduler {plan.scheduler_address}")
