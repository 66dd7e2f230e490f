"""Validate the simulator against the live system: profile a local cluster, simulate a workload
with that profile, run the same workload with `glitches bench`, and print the simulator's error.

    .venv/bin/python -m benchmarks.validate_sim [--input 64 --output 32 --num-requests 12 --concurrency 2]

Starts its own cluster (glitches.cluster.LocalCluster: private Redis, scheduler, 1 GPU worker on
the CPU, 2 emulated FPGA workers). Every process shares this machine's cores. Two profiles are
measured and each simulated: "isolated" (one request at a time: no contention) and "prefill
under load" (prefill timed while the other FPGA decodes, as in a saturated closed loop).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from glitches.bench.profile_doc import write_profile
from glitches.bench.profile_measure import ProfileConfig, device_key, measure_profile
from glitches.bench.run import BenchConfig, run_bench
from glitches.client import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation.models import DEFAULT_MODEL, resolve_model
from glitches.sim.cli import simulate

COMPARED = (("throughput_tokens_per_s", None, "output tokens/s"), ("ttft_s", "p50", "median TTFT (s)"),
            ("tpot_s", "p50", "median TPOT (s)"), ("e2e_s", "p50", "median E2E (s)"))


def _value(result: dict, key: str, stat: str | None) -> float:
    return result[key][stat] if stat else result[key]


def compare(sim: dict, live: dict) -> list[dict]:
    rows = []
    for key, stat, label in COMPARED:
        s, m = _value(sim, key, stat), _value(live, key, stat)
        rows.append({"figure": label, "simulated": s, "measured": m, "error": (s - m) / m})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=int, default=64, help="prompt tokens per request")
    parser.add_argument("--output", type=int, default=32, help="tokens asked for per request")
    parser.add_argument("--num-requests", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=2, help="closed loop clients")
    parser.add_argument("--profile-out", default=None, help="keep the measured profile here")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON too")
    args = parser.parse_args()

    resolve_model(DEFAULT_MODEL)
    run_dir = Path(tempfile.mkdtemp(prefix="glitches-validate-"))
    with LocalCluster(ClusterSpec(gpu_workers=1, fpga_workers=2, port=0), run_dir) as cluster:
        with Client(cluster.address) as client:
            status = client.status()
        gpu = next(w for w in status.workers if w.kind == "gpu")
        fpga = next(w for w in status.workers if w.kind == "fpga")
        span = sorted({max(8, args.input // 2), args.input, args.input * 2})
        profiles = {}
        for loaded in (False, True):  # one request at a time; prefill with the other FPGAs decoding
            doc = measure_profile(ProfileConfig(cluster.address, prefill_lengths=tuple(span),
                                                decode_contexts=(args.input, args.input + args.output), repeats=2,
                                                prefill_under_load=loaded))
            path = run_dir / f"profile{'-loaded' if loaded else ''}.json"
            write_profile(doc, path)
            profiles["prefill under load" if loaded else "isolated"] = (doc, path)
        live, _ = run_bench(BenchConfig(cluster.address, args.input, args.output, num_requests=args.num_requests,
                                        concurrency=args.concurrency))
    if args.profile_out:
        write_profile(profiles["isolated"][0], args.profile_out)
    # the simulator's requests produce exactly `output` tokens; the live ones may stop at EOS
    produced = round(live["output_tokens"] / live["completed"])
    print(f"workload: [{args.input}, {args.output}] (produced {produced} per request on average), "
          f"{args.num_requests} requests, closed loop x{args.concurrency}; profiles in {run_dir}")
    out = {"live": live}
    for label, (doc, path) in profiles.items():
        sim = simulate(1, device_key("gpu", gpu.backend), 2, device_key("fpga", fpga.backend), "llama-2-7b",
                       args.input, produced, args.num_requests, None, args.concurrency, str(path),
                       gpu_decode_slots=gpu.slots)
        rows = compare(sim, live)
        out[label] = {"rows": rows, "profile": doc, "sim": sim}
        gpu_doc = doc["devices"][device_key("gpu", gpu.backend)]
        print(f"\nprofile: {label}; GPU prefill {gpu_doc['prefill']}; "
              f"GPU-assisted requests: live {live['gpu_assist_requests']}, simulated {sim['gpu_assist_requests']}")
        print(f"{'figure':<18}{'simulated':>12}{'measured':>12}{'error':>9}")
        for r in rows:
            print(f"{r['figure']:<18}{r['simulated']:>12.4f}{r['measured']:>12.4f}{r['error']:>+9.1%}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
