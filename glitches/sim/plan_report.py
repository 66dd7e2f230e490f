"""`glitches plan`'s outputs: the text report, and the cost-vs-goodput plot with the paper's mixes marked."""

from __future__ import annotations

from pathlib import Path

from glitches.sim.plan import pareto_front
from glitches.sim.sweep_plot import save_figure

PAPER_MIXES = ((1, 7), (8, 0), (0, 8))  # (GPUs, FPGAs) the paper compares: GLITCHES, 8 GPUs, 8 FPGAs


def render_text(result: dict) -> str:
    inp, best = result["inputs"], result["best"]
    slo = inp["slo"]
    lines = ["============ GLITCHES plan (simulated, not measured) ============",
             f"{'Workload:':<30}{inp['workload']}, {inp['requests']} requests, mean [{inp['mean_input_tokens']:.0f}, "
             f"{inp['mean_output_tokens']:.0f}] tokens",
             f"{'SLO:':<30}p{slo['percentile']} TTFT <= {slo['ttft_s']:g} s, p{slo['percentile']} TPOT <= "
             f"{slo['tpot_s'] * 1e3:g} ms",
             f"{'Mixes within limits:':<30}{result['mixes_within_limits']} ({len(result['evaluated'])} simulated, "
             f"cheapest first)"]
    if best is None:
        lines.append("No mix within the limits meets the SLO (raise the limits or relax the SLO).")
    else:
        p = slo["percentile"]
        lines += [
            f"{'Cheapest mix meeting the SLO:':<30}{best['label']} ({best['nodes']} node(s))",
            f"{'Price ($):':<30}{best['price_usd']:,.0f}",
            f"{'Output tokens/s:':<30}{best['tokens_per_s']:.1f}",
            f"{'tokens/s/$:':<30}{best['tokens_per_s_per_usd']:.4g}",
            f"{'tokens/s/W:':<30}{best['tokens_per_s_per_w']:.4g} (average {best['avg_power_w']:.0f} W)",
            f"{'GPU-assist share:':<30}{best['gpu_assist_share']:.1%} of requests "
            f"({best['gpu_assist_slots']} slots per GPU)",
            f"{f'TTFT p{p}, margin:':<30}{best['ttft_s']:.3f} s, {best['ttft_margin']:+.1%}",
            f"{f'TPOT p{p}, margin:':<30}{best['tpot_s'] * 1e3:.2f} ms, {best['tpot_margin']:+.1%}",
        ]
        if best.get("decode_gpus"):  # before the two SLO lines
            lines.insert(len(lines) - 2, f"{'Decode GPUs:':<30}{best['decode_gpus']} ({best['decode_gpu_slots']} "
                                         "slots each)")
    lines.append("Catalogue figures and their basis: glitches/sim/profiles/catalogue.json (`--json` prints them).")
    lines.append(f"Model: {result['model_note']}.")
    return "\n".join(lines)


def plot_front(result: dict, path: str | Path) -> Path:
    """Every simulated mix as price vs goodput; the Pareto front as a line, the paper's mixes and the answer marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    rows = [r for r in result["evaluated"] if "goodput_tokens_per_s" in r]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    ax.scatter([r["price_usd"] / 1e3 for r in rows], [r["goodput_tokens_per_s"] for r in rows],
               c=["tab:blue" if r["meets_slo"] else "lightgrey" for r in rows], s=18, label="mix (grey: misses SLO)")
    front = pareto_front(rows)
    ax.plot([r["price_usd"] / 1e3 for r in front], [r["goodput_tokens_per_s"] for r in front], color="tab:blue",
            lw=1, label="cost-vs-goodput front")
    for r in rows:
        if (r["gpus"], r["fpgas"]) in PAPER_MIXES:
            ax.scatter([r["price_usd"] / 1e3], [r["goodput_tokens_per_s"]], marker="s", facecolors="none",
                       edgecolors="black", s=70)
            ax.annotate(r["label"], (r["price_usd"] / 1e3, r["goodput_tokens_per_s"]), fontsize=7,
                        xytext=(4, 4), textcoords="offset points")
    if result["best"]:
        b = result["best"]
        ax.scatter([b["price_usd"] / 1e3], [b["goodput_tokens_per_s"]], marker="*", color="tab:red", s=160,
                   label=f"cheapest meeting SLO: {b['label']}", zorder=3)
    slo, inp = result["inputs"]["slo"], result["inputs"]
    ax.set_xlabel("price (k$)")
    ax.set_ylabel("goodput (output tok/s of requests meeting the SLO)")
    ax.set_title(f"{inp['workload']}, SLO p{slo['percentile']} TTFT <= {slo['ttft_s']:g} s, TPOT <= "
                 f"{slo['tpot_s'] * 1e3:g} ms (simulated); squares: the paper's mixes", fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
