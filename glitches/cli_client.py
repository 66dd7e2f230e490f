"""The client commands `glitches generate` and `glitches status`: they dial a scheduler."""

from __future__ import annotations

import json

import click

from glitches.cli_common import env_var
from glitches.cli_tls import client_tls, client_tls_options
from glitches.client import DEFAULT_ADDRESS, Client
from glitches.types import Completion


def print_stream(client: Client, prompt: str, kwargs: dict) -> Completion:
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


@click.command("generate")
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
@click.option("--address", default=DEFAULT_ADDRESS, envvar=env_var("address"), show_default=True)
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
            print_stream(client, prompt, kwargs)


@click.command("status")
@click.option("--json", "as_json", is_flag=True)
@click.option("--address", default=DEFAULT_ADDRESS, envvar=env_var("address"), show_default=True)
@client_tls_options
def status_cmd(as_json, address, **tls) -> None:
    """Every worker with its kind, backend, health and occupancy."""
    with Client(address, tls=client_tls(tls)) as client:
        status = client.status()
    if as_json:
        click.echo(json.dumps(status.to_dict()))
        return
    click.echo(f"model {status.model}; scheduler active requests {status.scheduler_active_requests}")
    if status.redis is not None:
        r = status.redis
        via = f" (sentinel service {r.sentinel_service} via {','.join(r.sentinels)})" if r.sentinel_service else ""
        click.echo(f"redis primary {r.primary or 'UNKNOWN: ' + r.error}{via}")
    click.echo(f"{'id':<10} {'kind':<7} {'backend':<8} {'address':<22} {'pid':>7} {'health':<8} {'active':>6}/slots "
               f"{'held':>4} {'expiring':>8} {'held KV':>12} {'cached KV':>12} {'roles':<20} kv transports")
    for w in status.workers:
        label = w.backend + (" (emulated)" if w.emulated else "")
        click.echo(f"{w.worker_id:<10} {w.kind:<7} {label:<8} {w.address:<22} {w.pid:>7} "
                   f"{'healthy' if w.healthy else 'DOWN':<8} {w.active_requests:>6}/{w.slots:<5} "
                   f"{w.worker_active_requests:>4} {w.expiring_requests:>8} {w.kv_held_bytes:>10} B {w.kv_cached_bytes:>10} B "
                   f"{_roles(w):<20} {','.join(w.kv_transports) or '-'}")
    for w in status.workers:
        if ("decode" in w.roles or w.kind == "fpga") and not w.kv_tokens_required:  # fpga: an older scheduler
            click.echo(f"warning: {w.worker_id} accepts KV transfers without a token (no KV token secret set)")


def _roles(worker) -> str:
    """e.g. "prefill,assist" or "decode(class 10)": what placement may use the worker for."""
    roles = ",".join(worker.roles) or "-"
    return f"{roles}(class {worker.decode_class})" if worker.decode_class else roles


def register(group: click.Group) -> None:
    """Add the client commands to `group`."""
    for command in (generate_cmd, status_cmd):
        group.add_command(command)
