"""Recommend a device mix for a budget and an SLO, and plot every mix.

    .venv/bin/python benchmarks/sweep_mix.py --gpu v100s --fpga u280 --budget-usd 68000 \
        --input 512 --output 128 --ttft-p90 2.0 --tpot-p90 0.025 --png docs/sweep_v100s_u280.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from glitches.sim.sweep import OBJECTIVES, Slo, sweep  # noqa: E402
from glitches.sim.sweep_plot import plot_sweep  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpu", default="v100s")
    p.add_argument("--fpga", default="u280")
    p.add_argument("--model", default="llama-2-7b")
    p.add_argument("--budget-usd", type=float, help="total device price, $")
    p.add_argument("--budget-w", type=float, help="total peak device power, W")
    p.add_argument("--max-cards", type=int, default=8, help="cards in one node")
    p.add_argument("--input", type=int, default=512, help="prompt tokens")
    p.add_argument("--output", type=int, default=128, help="output tokens")
    p.add_argument("--ttft-p90", type=float, required=True, help="SLO on p90 TTFT, s")
    p.add_argument("--tpot-p90", type=float, required=True, help="SLO on p90 TPOT, s")
    p.add_argument("--objective", choices=OBJECTIVES, default="throughput_tokens_per_s")
    p.add_argument("--requests", type=int, default=200, help="requests per simulation")
    p.add_argument("--profile", help="glitches.profile.v1 file measured on live workers")
    p.add_argument("--png", default="sweep.png")
    p.add_argument("--json", help="also write the full result here")
    a = p.parse_args()
    result = sweep(a.gpu, a.fpga, a.model, a.input, a.output, Slo(a.ttft_p90, a.tpot_p90), a.budget_usd,
                   a.budget_w, a.max_cards, a.objective, a.requests, a.profile)  # fmt: skip
    print("| mix | price $ | peak W | meets SLO | goodput req/s | tok/s | tok/s/$ | tok/s/W | TTFT p90 s | TPOT p90 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in sorted(result["mixes"], key=lambda m: -m["throughput_tokens_per_s"]):
        print(f"| {m['label']} | {m['price_usd']:.0f} | {m['peak_power_w']:.0f} | {'yes' if m['meets_slo'] else 'no'} "
              f"| {m['goodput_requests_per_s']:.3f} | {m['throughput_tokens_per_s']:.1f} | {m['cost_efficiency']:.2e} "
              f"| {m['energy_efficiency']:.3f} | {m['ttft_p90_s']:.2f} | {m['tpot_p90_s'] * 1e3:.1f} |")  # fmt: skip
    best = result["recommended"]
    print(f"\nRecommended ({a.objective}): {best['label'] if best else 'none meets the SLO'}")
    print(f"Plot: {plot_sweep(result, a.png)}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
