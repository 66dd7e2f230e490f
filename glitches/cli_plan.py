"""The offline command `glitches plan`: the cheapest device mix meeting an SLO (glitches/sim/plan.py)."""

from __future__ import annotations

import json

import click

from glitches.services.runtime.errors import GlitchesError as ServiceError


@click.command("plan")
@click.option("--model", default="llama-2-7b", show_default=True, help="Model shape (glitches/sim/profiles/models.json).")
@click.option("--input", "input_spec", default="1536", show_default=True,
              help="Prompt tokens: N, uniform:LO:HI or normal:MEAN:STD.")
@click.option("--output", "output_spec", default="512", show_default=True, help="Output tokens, same forms.")
@click.option("--trace", "trace_path", default=None,
              help="A trace file (JSONL arrival_s, input_tokens, output_tokens) instead of lengths and a rate.")
@click.option("--num-requests", default=200, type=int, show_default=True)
@click.option("--request-rate", default=None, type=float, help="Poisson arrivals, requests/s.")
@click.option("--concurrency", default=None, type=int, help="Closed loop with this many clients.")
@click.option("--slo-ttft", required=True, type=float, help="TTFT target, seconds.")
@click.option("--slo-tpot", required=True, type=float, help="TPOT target, seconds.")
@click.option("--slo-percentile", default=90, type=click.Choice(["50", "90", "99"]), show_default=True)
@click.option("--catalogue", "catalogue_path", default=None, help="Device catalogue (default glitches/sim/profiles/catalogue.json).")
@click.option("--devices", default="", help="Only these catalogue kinds, comma-separated (e.g. a100,h100,u280,v80).")
@click.option("--max-cards", default=8, type=int, show_default=True)
@click.option("--max-nodes", default=1, type=int, show_default=True)
@click.option("--max-price-usd", default=None, type=float)
@click.option("--max-power-w", default=None, type=float, help="Peak power ceiling (every card busy), W.")
@click.option("--max-decode-gpus", default=0, type=int, show_default=True,
              help="Also try mixes with up to this many decode-role GPUs (of the mix's GPU kind; within --max-cards).")
@click.option("--gpu-batching/--gpu-batch-1", default=True, show_default=True,
              help="GPUs batch continuously as the GPU worker does, or run one thing at a time (the paper's setting).")
@click.option("--seed", default=0, type=int, show_default=True)
@click.option("--all", "explore_all", is_flag=True, help="Simulate every mix (implied by --plot).")
@click.option("--plot", "plot_path", default=None, help="Write the cost-vs-goodput front PNG here.")
@click.option("--json", "as_json", is_flag=True)
def plan_cmd(model, input_spec, output_spec, trace_path, num_requests, request_rate, concurrency, slo_ttft, slo_tpot,
             slo_percentile, catalogue_path, devices, max_cards, max_nodes, max_price_usd, max_power_w, max_decode_gpus,
             gpu_batching, seed, explore_all, plot_path, as_json) -> None:
    """Find the cheapest mix of catalogue devices meeting TTFT and TPOT targets, by simulation (a model)."""
    from glitches.sim.catalogue import CATALOGUE_FILE, load_catalogue
    from glitches.sim.plan import Limits, PlanSlo, plan
    from glitches.sim.plan_report import plot_front, render_text
    from glitches.sim.plan_workload import read_trace, synthetic

    if request_rate is not None and concurrency is not None:
        raise click.UsageError("give --request-rate or --concurrency, not both")
    try:
        only = tuple(d.strip() for d in devices.split(",") if d.strip())
        catalogue = load_catalogue(model, catalogue_path or CATALOGUE_FILE, only)
        workload = (read_trace(trace_path) if trace_path
                    else synthetic(input_spec, output_spec, num_requests, request_rate, concurrency, seed))
        result = plan(catalogue, workload, PlanSlo(slo_ttft, slo_tpot, int(slo_percentile)),
                      Limits(max_cards, max_nodes, max_price_usd, max_power_w, max_decode_gpus), seed=seed,
                      explore_all=explore_all or plot_path is not None, gpu_batching=gpu_batching)
    except ServiceError as error:
        raise click.UsageError(str(error)) from None
    if plot_path:
        plot_front(result, plot_path)
    click.echo(json.dumps(result) if as_json else render_text(result))
