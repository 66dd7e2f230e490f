"""How far two live runs of the same trace differ: the noise floor under any simulator's error on this machine.

    .venv/bin/python -m benchmarks.live_repeatability --fpgas 0 TRACE.jsonl [TRACE.jsonl ...]

For each trace (e.g. the ones benchmarks/validate_sim_poisson.py wrote with `glitches bench --trace-out`), one
LocalCluster (1 GPU: the host CPU stand-in; --fpgas emulated FPGA cards: emulated hardware) serves it
`--repeats` times with `glitches bench --trace` (the same arrival times and lengths; fresh prompts each time,
by seed, so the GPU's prefix cache never serves a repeat). It prints TTFT / TPOT p50, p90, p99 and tokens/s
of every repeat and each figure's spread, (max - min) / mean over the repeats: a simulation compared with one
live run cannot be shown closer than that spread.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from glitches.bench.run import BenchConfig, run_bench
from glitches.cluster import ClusterSpec, LocalCluster

FIGURES = [(k, s) for k in ("ttft_s", "tpot_s") for s in ("p50", "p90", "p99")] + [("throughput_tokens_per_s", None)]


def _figures(report: dict) -> dict[str, float]:
    return {f"{k} {s}" if s else k: (report[k][s] if s else report[k]) for k, s in FIGURES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", nargs="+")
    parser.add_argument("--fpgas", type=int, default=0, help="emulated FPGA cards beside the 1 GPU")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="write every run's figures here")
    args = parser.parse_args()
    rows = []
    with LocalCluster(ClusterSpec(gpu_workers=1, fpga_workers=args.fpgas, port=0),
                      Path(tempfile.mkdtemp(prefix="glitches-repeat-"))) as cluster:
        print(f"1 GPU (host CPU) + {args.fpgas} emulated FPGA(s); {len(args.traces)} trace(s) x {args.repeats}")
        for t, trace in enumerate(args.traces):
            runs = []
            for r in range(args.repeats):
                before = "%.2f" % os.getloadavg()[0]
                report, _ = run_bench(BenchConfig(cluster.address, trace_path=trace, seed=1000 + 10 * t + r,
                                                  progress=False))
                runs.append({"figures": _figures(report), "completed": report["completed"],
                             "load": f"{before} -> {os.getloadavg()[0]:.2f}"})
            spread = {}
            print(f"\n{Path(trace).name}: completed {[run['completed'] for run in runs]}, load "
                  f"{[run['load'] for run in runs]}")
            for name in runs[0]["figures"]:
                values = [run["figures"][name] for run in runs]
                mean = sum(values) / len(values)
                spread[name] = (max(values) - min(values)) / mean if mean else float("nan")
                print(f"  {name:<26}" + "".join(f"{v:>10.4f}" for v in values) + f"   spread {spread[name]:.1%}")
            rows.append({"trace": trace, "runs": runs, "spread": spread})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
