"""Plot a sweep: goodput throughput and cost efficiency per device mix, to a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402


def plot_sweep(result: dict, path: str | Path) -> Path:
    """Two bar panels over mixes (sorted by price); SLO misses grey, the recommendation red."""
    mixes = sorted(result["mixes"], key=lambda m: (m["price_usd"], m["gpus"]))
    labels = [m["label"] for m in mixes]
    best = (result["recommended"] or {}).get("label")
    colours = ["tab:red" if m["label"] == best else "tab:blue" if m["meets_slo"] else "lightgrey" for m in mixes]
    inp = result["inputs"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(8, 0.45 * len(mixes)), 7), sharex=True)
    top.bar(labels, [m["throughput_tokens_per_s"] for m in mixes], color=colours)
    top.set_ylabel("output tok/s at goodput")
    slo = inp["slo"]
    top.set_title(
        f"{inp['gpu']} (G) + {inp['fpga']} (F), {inp['model']} [{inp['input_tokens']}, {inp['output_tokens']}], "
        f"SLO p90 TTFT <= {slo['ttft_p90_s']} s, p90 TPOT <= {slo['tpot_p90_s'] * 1e3:.0f} ms\n"
        f"budget: {'$' + format(inp['budget_usd'], ',.0f') if inp['budget_usd'] else ''}"
        f"{' ' + format(inp['budget_w'], '.0f') + ' W' if inp['budget_w'] else ''}; "
        f"red = recommended ({inp['objective']}), grey = misses SLO",
        fontsize=9,
    )
    for i, m in enumerate(mixes):
        if not m["meets_slo"]:
            top.annotate("miss", (i, 0), ha="center", va="bottom", fontsize=7, color="grey", rotation=90)
    bottom.bar(labels, [m["cost_efficiency"] * 1e3 for m in mixes], color=colours)
    bottom.set_ylabel("tok/s per $1000")
    bottom.set_xlabel("mix (sorted by price)")
    plt.setp(bottom.get_xticklabels(), rotation=60, ha="right", fontsize=8)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write as PNG (110 dpi, parent folders made) and close `fig`; returns the path written."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
