"""Validate the simulator against live Poisson runs (issue #25 item 4): for each cluster (GPU-only, and 1 GPU +
2 emulated FPGAs), measure a profile, find the live capacity, then at three Poisson rates (light, near
saturation, over it) run `glitches bench --trace-out` and `glitches simulate --trace --profile
--gpu-batching` of exactly what was sent, and print TTFT / TPOT p50, p90, p99 and tokens/s, simulated
vs live, with the machine's load average beside each run.

    .venv/bin/python -m benchmarks.validate_sim_poisson [--fpgas 0,2 --input 64 --output 16 --num-requests 100]

Every process shares this machine's cores (the GPU is the host CPU, the FPGAs are the software
emulator: emulated hardware, named as such in every output). The capacity is the live closed-loop
throughput at --capacity-concurrency clients (32: past the batching GPU's knee, so it is the saturation
rate); the rates are light 0.3x, near 0.9x and over 1.5x of it.

The profile (`glitches profile`'s measure_profile) includes the loaded phase (closed loops at
--loaded-concurrency, seen through the GPU's step log) and states the shared host: host_cores = this
machine's CPUs, host_threads = the threads glitches.cluster gives each worker (the GPU worker every core,
each card its share), so the simulator shares the cores between devices that compute at once
(glitches/sim/host_cpu.py). Shared-host speeds must be measured alone: a cluster with cards times the
GPU's batched steps beside busy cards (GPU-assist rows exist only then), so when the GPU-only cluster was
profiled first in the same run (--fpgas 0,2) its GPU step model, measured with no card, replaces the
cards cluster's; that model has no streamed prefill (no card to stream to), so its per_streamed_chunk_s (the
per-layer KV send inside the pass, glitches/sim/step_model.py) comes from the cards cluster's prefill-only
steps that streamed: the median of their logged seconds less the GPU-only model's (--no-host-share: none of
this, as before).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.validate_sim_causes import live_breakdown, render, run_speed_profile, sim_breakdown
from glitches.bench.profile_doc import with_host, write_profile
from glitches.bench.profile_measure import ProfileConfig, device_key, measure_profile
from glitches.bench.profile_steplog import last_seq, read_steps, step_point
from glitches.bench.run import BenchConfig, run_bench
from glitches.client import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.scheduler.settings import SchedulerSettings
from glitches.services.generation.models import DEFAULT_MODEL, resolve_model
from glitches.sim.admission import AdmissionLimits
from glitches.sim.metrics import summarise
from glitches.sim.plan_workload import read_trace
from glitches.sim.run import build_config, simulate_node
from glitches.sim.step_model import StepModel


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


# the LocalCluster scheduler's admission control (defaults), which the simulator applies as well
SCHEDULER_ADMISSION = AdmissionLimits(SchedulerSettings.max_active, SchedulerSettings.max_queued,
                                      SchedulerSettings.queue_wait_s)
RATE_FRACTIONS = (("light", 0.3), ("near saturation", 0.9), ("over", 1.5))
FIGURES = [(k, s) for k in ("ttft_s", "tpot_s") for s in ("p50", "p90", "p99")] + [("throughput_tokens_per_s", None)]


def _get(result: dict, key: str, stat: str | None) -> float:
    return result[key][stat] if stat else result[key]


def _load() -> str:
    return "load %.2f %.2f %.2f" % os.getloadavg()


def _keep_run(path: Path, results, logged: list[dict]) -> None:
    """Each live request (index = its trace line) and the GPU's logged steps, for a request-by-request look."""
    requests = [{"index": r.index, "start_s": r.start_s, "token_times_s": r.token_times_s, "error": r.error,
                 "prefill_worker": r.prefill_worker, "decode_worker": r.decode_worker,
                 "prefill_s": r.timings.prefill_s if r.timings else None} for r in results]
    path.write_text(json.dumps({"requests": requests, "gpu_steps": logged}))


def _streamed_chunk_s(alone: StepModel, points: list[dict]) -> float:
    """A streamed prefill's extra seconds: the median over the logged prefill-only steps that streamed their KV
    to a card of (seconds - the GPU-only model's time for the same step) per streamed chunk; 0 without any."""
    extra = [(p["seconds"] - alone.seconds(p["prefill_tokens"], 0, p["context_tokens"])) / p["streamed_chunks"]
             for p in points if p.get("streamed_chunks", 0) > 0 and p["decode_rows"] == 0]
    return max(0.0, float(np.median(extra))) if extra else 0.0


def _share_host(doc: dict, args, spec: ClusterSpec, gpu_name: str, fpga_name: str | None, alone: dict) -> dict:
    """doc with the shared host stated (each worker's threads as `spec` starts it) and, with cards, the GPU's
    step model measured alone (module docstring)."""
    if not args.host_share:
        return doc
    cpus = os.cpu_count() or 1
    gpu_threads, card_threads = spec.worker_threads(cpus)
    threads = {gpu_name: gpu_threads} | ({fpga_name: card_threads} if fpga_name else {})
    doc = with_host(doc, float(cpus), threads)
    if spec.fpga_workers and gpu_name in alone:
        steps = doc["devices"][gpu_name].get("batched_steps", {})
        merged = copy.deepcopy(alone[gpu_name])
        stream_s = _streamed_chunk_s(StepModel.from_json(merged["fit"], gpu_name), steps.get("points", []))
        merged["fit"]["per_streamed_chunk_s"] = stream_s
        doc["devices"][gpu_name]["batched_steps"] = merged
        doc["notes"].append(f"{gpu_name} batched_steps: from the GPU-only cluster's profile (measured with no card); "
                            f"per_streamed_chunk_s {stream_s:.4f} s from this cluster's streamed prefills")
    elif not spec.fpga_workers and "batched_steps" in doc["devices"][gpu_name]:
        alone[gpu_name] = doc["devices"][gpu_name]["batched_steps"]
    return doc


def run_config(fpgas: int, args, run_dir: Path, alone: dict) -> list[dict]:
    rows = []
    (run_dir / f"cluster-{fpgas}").mkdir()
    spec = ClusterSpec(gpu_workers=1, fpga_workers=fpgas, port=0)
    with LocalCluster(spec, run_dir / f"cluster-{fpgas}") as cluster:
        with Client(cluster.address) as client:
            workers = client.status().workers
        gpu = next(w for w in workers if w.kind == "gpu")
        fpga = next((w for w in workers if w.kind == "fpga"), None)
        gpu_name = device_key("gpu", gpu.backend)
        fpga_name = device_key("fpga", fpga.backend) if fpga else None
        doc = measure_profile(ProfileConfig(cluster.address, prefill_lengths=(args.input // 2, args.input, args.input * 2),
                                            decode_contexts=(args.input, args.input + args.output), repeats=2,
                                            loaded_concurrency=_ints(args.loaded_concurrency), seed=args.seed + 1000,
                                            progress=False))
        doc = _share_host(doc, args, spec, gpu_name, fpga_name, alone)
        profile = run_dir / f"profile-{fpgas}.json"
        write_profile(doc, profile)
        conc = args.capacity_concurrency
        closed, _ = run_bench(BenchConfig(cluster.address, args.input, args.output, num_requests=3 * conc,
                                          concurrency=conc, seed=args.seed + 100 + fpgas, progress=False))
        capacity = closed["requests_per_s"]
        print(f"\n1 GPU (host CPU) + {fpgas} emulated FPGA(s): GPU-assist slots {gpu.slots}; live capacity "
              f"{capacity:.3f} req/s (closed loop x{conc}); {_load()}", flush=True)
        for index, (label, fraction) in enumerate(RATE_FRACTIONS):
            rate = fraction * capacity
            trace = run_dir / f"trace-{fpgas}-{label.replace(' ', '-')}.jsonl"
            before = _load()
            log_start = last_seq(gpu.http_address)  # the GPU's step log: the replay's step times
            live, results = run_bench(BenchConfig(cluster.address, args.input, args.output,
                                                  num_requests=args.num_requests, request_rate=rate,
                                                  seed=args.seed + 10 * fpgas + index,  # prompts never sent before
                                                  progress=False, trace_out=str(trace)))
            after = _load()
            logged, _, dropped = read_steps(gpu.http_address, log_start)
            _keep_run(run_dir / f"run-{fpgas}-{label.replace(' ', '-')}.json", results, logged)
            config = build_config(1, gpu_name, fpgas, fpga_name or "u280",
                                  "llama-2-7b", str(profile), gpu_decode_slots=gpu.slots)
            workload = read_trace(str(trace))
            node = simulate_node(replace(config, gpu_batching=True, admission=SCHEDULER_ADMISSION), workload.shapes,
                                 arrivals_s=workload.arrivals_s)
            sim = summarise(node)
            row = {"fpgas": fpgas, "label": label, "rate": rate, "load_before": before, "load_after": after,
                   "gpu_assist_live": live["gpu_assist_requests"], "gpu_assist_sim": sim["gpu_assist_requests"],
                   "refused_live": sum(not r.ok for r in results), "refused_sim": sim["rejected_requests"],
                   "figures": {}}
            print(f"  {label}: Poisson {rate:.3f} req/s, {live['completed']} requests; {before} -> {after}; "
                  f"GPU-assisted live {row['gpu_assist_live']} / sim {row['gpu_assist_sim']}; refused (scheduler full) "
                  f"live {row['refused_live']} / sim {row['refused_sim']}")
            print(f"    {'figure':<26}{'simulated':>11}{'live':>11}{'error':>9}")
            for key, stat in FIGURES:
                s, m = _get(sim, key, stat), _get(live, key, stat)
                err = (s - m) / m if m else float("nan")
                name = f"{key} {stat}" if stat else key
                row["figures"][name] = {"sim": s, "live": m, "error": err}
                print(f"    {name:<26}{s:>11.4f}{m:>11.4f}{err:>+9.1%}{'  within 10%' if abs(err) <= 0.10 else ''}")
            row["causes"] = {"live": live_breakdown(results), "sim": sim_breakdown(node)}
            print("\n".join(render(row["causes"]["live"], row["causes"]["sim"], doc["devices"][gpu_name])), flush=True)
            replay_path = run_dir / f"profile-run-speed-{fpgas}-{label.replace(' ', '-')}.json"
            replay_doc = run_speed_profile(doc, results, gpu_name, fpga_name, [step_point(s) for s in logged])
            replay_doc.pop("host_cores", None)  # the run's own speeds already hold the sharing
            write_profile(replay_doc, replay_path)
            row["replay_steps"] = {"logged": len(logged), "dropped": dropped}
            replay_config = build_config(1, gpu_name, fpgas, fpga_name or "u280", "llama-2-7b", str(replay_path),
                                         gpu_decode_slots=gpu.slots)
            replay = summarise(simulate_node(replace(replay_config, gpu_batching=True, admission=SCHEDULER_ADMISSION),
                                             workload.shapes,
                                             arrivals_s=workload.arrivals_s))
            row["replay"] = {}
            for key, stat in FIGURES:
                s, m = _get(replay, key, stat), _get(live, key, stat)
                row["replay"][f"{key} {stat}" if stat else key] = (s - m) / m if m else float("nan")
            inside = sum(abs(e) <= 0.10 for e in row["replay"].values())
            print(f"    replay at this run's own device speeds (not a prediction): {inside} of {len(FIGURES)} within "
                  "10%: " + " ".join(f"{e:+.0%}" for e in row["replay"].values()), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=int, default=64, help="prompt tokens per request")
    parser.add_argument("--output", type=int, default=16, help="tokens asked for per request")
    parser.add_argument("--num-requests", type=int, default=100, help="per rate")
    parser.add_argument("--fpgas", default="0,2", help="clusters to validate: emulated FPGAs beside 1 GPU")
    parser.add_argument("--capacity-concurrency", type=int, default=32, help="closed-loop clients for the capacity")
    parser.add_argument("--loaded-concurrency", default="4,16,32", help="the profile's loaded phase")
    parser.add_argument("--no-host-share", dest="host_share", action="store_false",
                        help="profiles without host_cores (devices as independent silicon)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write every row here")
    args = parser.parse_args()
    resolve_model(DEFAULT_MODEL)
    run_dir = Path(tempfile.mkdtemp(prefix="glitches-validate-poisson-"))
    print(f"[{args.input}, {args.output}] tokens, {args.num_requests} requests per rate; files in {run_dir}; "
          "GPU = host CPU stand-in, FPGAs = software emulator (emulated hardware)")
    rows, alone = [], {}
    for fpgas in (int(f) for f in args.fpgas.split(",")):
        rows += run_config(fpgas, args, run_dir, alone)
    within = sum(abs(f["error"]) <= 0.10 for r in rows for f in r["figures"].values())
    total = sum(len(r["figures"]) for r in rows)
    print(f"\n{within} of {total} figures within 10% of live")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
