"""The click commands `glitches bench` and `glitches profile` (registered by glitches.cli)."""

from __future__ import annotations

import json

import click

from glitches.client import DEFAULT_ADDRESS


def _device_threads(text: str) -> tuple[tuple[str, int], ...]:
    """Parse --host-threads: 'gpu-cpu=2,fpga-emu=1' -> (("gpu-cpu", 2), ("fpga-emu", 1))."""
    out = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, threads = item.partition("=")
        if not threads.strip().isdigit() or int(threads) < 1:
            raise click.BadParameter(f"expected DEVICE=THREADS (THREADS >= 1), got {item!r}",
                                     param_hint="--host-threads")
        out.append((name.strip(), int(threads)))
    return tuple(out)


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise click.BadParameter(f"need comma-separated token counts, got {text!r}") from None
    if any(v < 1 for v in values) or list(values) != sorted(set(values)):
        raise click.BadParameter(f"token counts must be positive and increasing, got {text!r}")
    return values


@click.command("bench")
@click.option("--address", default=DEFAULT_ADDRESS, envvar="GLITCHES_ADDRESS", show_default=True)
@click.option("--input", "input_tokens", type=int, default=None, help="Prompt tokens per request (exact).")
@click.option("--output", "output_tokens", type=int, default=None,
              help="Tokens asked for per request (greedy decoding may stop earlier at EOS).")
@click.option("--prompts", "prompts_path", default=None, help='JSONL file of {"prompt": ..., "max_tokens": ...}.')
@click.option("--trace", "trace_path", default=None,
              help="A trace file (JSONL arrival_s, input_tokens, output_tokens): its arrival times and lengths.")
@click.option("--trace-out", default=None, help="Write what was sent and produced as a trace file (for simulate).")
@click.option("--num-requests", type=int, default=None, help="Default: 100, or the JSONL file's length.")
@click.option("--request-rate", type=float, default=None, help="Poisson arrivals, requests/s (default: all at once).")
@click.option("--concurrency", type=int, default=None, help="Closed loop with this many clients.")
@click.option("--slo-ttft", type=float, default=None, help="Goodput SLO: TTFT at most this many seconds.")
@click.option("--slo-tpot", type=float, default=None, help="Goodput SLO: TPOT at most this many seconds.")
@click.option("--seed", type=int, default=0, show_default=True, help="Prompts and Poisson gaps.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of the text report.")
@click.option("--plot", "plot_path", default=None, help="Write a per-device timeline PNG here.")
def bench_cmd(address, input_tokens, output_tokens, prompts_path, trace_path, trace_out, num_requests, request_rate,
              concurrency, slo_ttft, slo_tpot, seed, as_json, plot_path) -> None:
    """Load a live cluster like vLLM's `bench serve`: TTFT, TPOT, ITL, throughput, goodput, utilisation."""
    from glitches.bench.report import render_text
    from glitches.bench.run import BenchConfig, run_bench

    if request_rate is not None and concurrency is not None:
        raise click.UsageError("give --request-rate or --concurrency, not both")
    if num_requests is not None and num_requests < 1:
        raise click.UsageError("--num-requests must be at least 1")
    if trace_path is not None and (request_rate is not None or concurrency is not None):
        raise click.UsageError("a trace sets the arrival times: no --request-rate or --concurrency with --trace")
    config = BenchConfig(address, input_tokens, output_tokens, prompts_path, num_requests, request_rate, concurrency,
                         slo_ttft, slo_tpot, seed, trace_path=trace_path, trace_out=trace_out)
    from glitches.services.runtime.errors import GlitchesError

    try:
        report, results = run_bench(config)
    except (ValueError, OSError, GlitchesError) as error:
        raise click.UsageError(str(error)) from None
    if plot_path:
        from glitches.bench.timeline import plot_timeline

        plot_timeline(results, plot_path, f"{report['inputs']['model']}, {config.load_label()}, "
                                          f"{report['completed']} requests")
    click.echo(json.dumps(report) if as_json else render_text(report))


@click.command("profile")
@click.option("--address", default=DEFAULT_ADDRESS, envvar="GLITCHES_ADDRESS", show_default=True)
@click.option("--out", "out_path", default="glitches_profile.json", show_default=True,
              help="Where to write the glitches.profile.v1 file.")
@click.option("--prefill-lengths", default="32,128,512", show_default=True, help="Prompt tokens to time prefill at.")
@click.option("--decode-contexts", default="32,256,512", show_default=True, help="Contexts to time decode at.")
@click.option("--decode-tokens", default=16, type=int, show_default=True, help="Tokens per decode sample.")
@click.option("--repeats", default=2, type=int, show_default=True, help="Samples per point (median written).")
@click.option("--no-gpu-decode", is_flag=True, help="Skip GPU-assist decode (it occupies the FPGAs meanwhile).")
@click.option("--prefill-under-load", is_flag=True,
              help="Time prefill while all FPGA slots but one decode (captures shared-core contention).")
@click.option("--batched-rows", default="1,2,4,8", show_default=True,
              help="Decode rows per batched GPU step to time (fits the step model); '' skips batched steps.")
@click.option("--loaded-concurrency", default="4,16", show_default=True,
              help="Closed loops run at these concurrencies so the GPU's step log has busy steps (mixed prefill + "
                   "decode, wide batches) to fit; '' skips them.")
@click.option("--host-cores", default=0.0, type=float, show_default=True,
              help="The devices share this many host CPU cores (emulated devices, CPU workers); written into the "
                   "profile so `glitches simulate` shares them. 0: each device has its own silicon.")
@click.option("--host-threads", default="", help="With --host-cores: DEVICE=THREADS,... host CPU threads each device "
                                                 "computes on, e.g. gpu-cpu=2,fpga-emu=1.")
def profile_cmd(address, out_path, prefill_lengths, decode_contexts, decode_tokens, repeats, no_gpu_decode,
                prefill_under_load, batched_rows, loaded_concurrency, host_cores, host_threads) -> None:
    """Measure the live workers and write a profile for `glitches simulate --profile`."""
    from glitches.bench.profile_doc import write_profile
    from glitches.bench.profile_measure import ProfileConfig, measure_profile

    if decode_tokens < 2 or repeats < 1:
        raise click.UsageError("--decode-tokens must be >= 2 and --repeats >= 1")
    config = ProfileConfig(address, _ints(prefill_lengths), _ints(decode_contexts), decode_tokens, repeats,
                           not no_gpu_decode, prefill_under_load,
                           _ints(batched_rows) if batched_rows.strip() else (),
                           loaded_concurrency=_ints(loaded_concurrency) if loaded_concurrency.strip() else (),
                           host_cores=host_cores, host_threads=_device_threads(host_threads))
    try:
        doc = measure_profile(config)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    write_profile(doc, out_path)
    for name, d in doc["devices"].items():
        click.echo(f"{name}: prefill {d['prefill']} decode {d['decode']} "
                   f"kv link {d.get('kv_transfer_gb_per_s', '-')} GB/s")
        if "batched_steps" in d:  # the step model (glitches/sim/step_model.py) and how well it explains its points
            steps = d["batched_steps"]
            fit = steps["fit"]
            click.echo(f"{name}: step model from {steps.get('source', 'client-token-clock')} "
                       f"({fit.get('fit_points', len(steps['points']))} steps): "
                       + " ".join(f"{k} {v:.3g}" for k, v in fit.items() if not k.startswith("fit_"))
                       + f"; relative error median {fit.get('fit_median_rel_error', 0):.1%} "
                       f"worst {fit['fit_max_rel_error']:.1%}")
    click.echo(f"wrote {out_path}")
