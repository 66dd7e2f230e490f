"""The `glitches` command: one click group, its commands added by each command module's register().

Command modules, by group: glitches.cli_daemons (scheduler, gpu-worker, fpga-worker), glitches.cli_up (up),
glitches.cli_client (generate, status), glitches.cli_operator (evict-cache), glitches.cli_tools (certs,
fpga-timing, simulate), glitches.deploy.command (deploy), glitches.bench.command (bench, profile),
glitches.gateway.command (gateway). Daemon settings come from flags or GLITCHES_* environment variables (the flag's name
upper-cased, e.g. --redis-url / GLITCHES_REDIS_URL)."""

from __future__ import annotations

import sys

import click

from glitches.errors import GlitchesError


def build_cli() -> click.Group:
    """The `glitches` group with every command (the one list of them)."""
    from glitches import cli_client, cli_daemons, cli_operator, cli_tools, cli_up
    from glitches.bench.command import bench_cmd, profile_cmd
    from glitches.deploy.command import deploy_cmd
    from glitches.gateway.command import gateway_cmd

    @click.group("glitches", context_settings={"help_option_names": ["-h", "--help"]})
    def group() -> None:
        """GLITCHES: GPU prefill, FPGA decode, KV streamed while prefill runs."""

    for module in (cli_daemons, cli_up, cli_tools, cli_client, cli_operator):
        module.register(group)
    for command in (deploy_cmd, bench_cmd, profile_cmd, gateway_cmd):
        group.add_command(command)
    return group


main = build_cli()


def run() -> None:
    """Entry point: SDK errors become one line on stderr and exit code 1."""
    try:
        main(standalone_mode=True)
    except GlitchesError as error:
        click.echo(f"error: {error.code}: {error.message}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    run()
