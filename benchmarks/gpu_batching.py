"""GPU worker batching: the cluster's output tokens/s beside transformers' batched generate, same run.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/gpu_batching.py --mode assist --concurrency 8 32
    PYTHONPATH=$PWD .venv/bin/python benchmarks/gpu_batching.py --mode mixed --concurrency 8
    PYTHONPATH=/tmp/base .venv/bin/python benchmarks/gpu_batching.py --mode mixed --concurrency 8   # before

- assist: `glitches up --fpga-workers 0 --gpu-slots N` (every request decodes on GPU assist); for each
  concurrency C, C greedy requests of `--new-tokens` at once, wall-clock from the first send to the last
  token, then transformers' own `generate` of the same C prompts as one left-padded batch, in this
  process with as many threads as the GPU worker; `--rounds` such pairs back to back (each ratio is of one
  pair, run under the same load), with the load average before and after each. Both count only real tokens (up to and with EOS).
  `--threads N` gives the GPU worker and the reference N model threads each (default: every CPU, as `up`
  does); with fewer model threads than CPUs the cluster's serving processes (scheduler, client, gRPC)
  run beside the model instead of taking CPU from its thread team, as they would beside a real GPU.
- mixed: `glitches up` (1 GPU + 2 emulated FPGA workers), C requests at once: tokens/s and TTFT p50/p99.

It imports only the SDK, the cluster launcher and the model loader, so it runs unchanged against an
older checkout (PYTHONPATH=/tmp/base: the code before batching) for the before/after figures.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import statistics
import time

import torch

from glitches import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation import models

TOPICS = ["rivers", "memory bandwidth", "the history of printing", "prime numbers", "a lighthouse keeper",
          "compilers", "volcanoes", "the moon landing"]


def prompts(n: int) -> list[str]:
    """n prompts of different lengths (about 10 to 60 tokens)."""
    out = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        out.append(f"Here is a long and detailed essay about {topic}. " * (1 + i % 5) + "It begins:")
    return out


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def step_counters(http_address: str) -> dict[str, float]:
    """The GPU worker's step-loop counters from its /metrics: seconds inside forward passes (all phases),
    steps, and decode rows over all steps."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{http_address}/metrics", timeout=10).read().decode()
    out = dict(step_s=0.0, steps=0.0, decode_rows=0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "glitches_gpu_step_seconds_sum":
                out["step_s"] += sample.value
            elif sample.name == "glitches_gpu_step_seconds_count":
                out["steps"] += sample.value
            elif sample.name == "glitches_gpu_step_decode_requests_sum":
                out["decode_rows"] += sample.value
    return out


def run_cluster(client: Client, texts: list[str], new_tokens: int, gpu_http: str = "") -> dict:
    before = step_counters(gpu_http) if gpu_http else None
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        results = list(pool.map(lambda p: client.generate(p, max_tokens=new_tokens), texts))
    wall = time.monotonic() - started
    tokens = sum(len(r.token_ids) for r in results)
    ttft = [r.timings.ttft_s for r in results]
    row = dict(tokens=tokens, wall_s=wall, tokens_per_s=tokens / wall, ttft_p50_s=percentile(ttft, 50),
               ttft_p99_s=percentile(ttft, 99), devices=sorted({r.decode_device for r in results}),
               prompt_ids=[list(r.prompt_token_ids) for r in results])
    after = step_counters(gpu_http) if before is not None else None
    steps = after["steps"] - before["steps"] if after is not None else 0
    if steps:  # how much of the wall time the GPU worker spent in forward passes (code with a step loop only)
        row.update(step_busy=(after["step_s"] - before["step_s"]) / wall, steps=int(steps),
                   decodes_per_step=(after["decode_rows"] - before["decode_rows"]) / steps)
    return row


def run_reference(model, prompt_ids: list[list[int]], new_tokens: int, eos: set[int], pad: int) -> dict:
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    with torch.inference_mode():
        model.generate(ids[:, :8], attention_mask=mask[:, :8], do_sample=False, max_new_tokens=4,
                       pad_token_id=pad)  # warm up
        started = time.monotonic()
        out = model.generate(ids, attention_mask=mask, do_sample=False, max_new_tokens=new_tokens, pad_token_id=pad)
        wall = time.monotonic() - started
    tokens = 0
    for row in out[:, width:].tolist():
        ends = [i for i, t in enumerate(row) if t in eos]
        tokens += ends[0] + 1 if ends else len(row)
    return dict(tokens=tokens, wall_s=wall, tokens_per_s=tokens / wall)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("assist", "mixed"), default="assist")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="cluster/reference pairs per concurrency")
    parser.add_argument("--threads", type=int, default=0,
                        help="model threads of the GPU worker and of the reference (0: every CPU, as `up` gives it)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    source = models.resolve_model(models.DEFAULT_MODEL)
    # the scheduler admits --max-active requests at once (default 24): let every request of the largest
    # concurrency run, so no request waits in the scheduler's queue for another to finish
    admit = ("--max-active", str(max(args.concurrency)))
    if args.mode == "assist":
        spec = ClusterSpec(fpga_workers=0, port=0, gpu_slots=max(args.concurrency), scheduler_args=admit)
    elif "gpu_slots" in ClusterSpec.__dataclass_fields__:  # with slot enforcement: room for every request
        spec = ClusterSpec(port=0, gpu_slots=max(args.concurrency), scheduler_args=admit)
    else:  # the code before batching: GPU assist was not limited
        spec = ClusterSpec(port=0)
    threads = args.threads or os.cpu_count() or 1
    if args.threads:
        spec = dataclasses.replace(spec, threads_per_worker=args.threads)
    reference = None
    if args.mode == "assist":  # loaded before the cluster starts, so both halves of a round run back to back
        torch.set_num_threads(threads)  # as many as the GPU worker uses
        model = models.load_causal_lm(source, "cpu", "float32")
        tokenizer = models.load_tokenizer(source)
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos))
        reference = (model, eos, pad)
    rows = []
    with LocalCluster(spec) as cluster, Client(cluster.address, timeout_s=1800) as client:
        client.generate("Warm up the workers.", max_tokens=4)
        for c in args.concurrency:
            for round_index in range(args.rounds):  # cluster then reference, alternating: same load for both halves
                row = dict(concurrency=c, round=round_index, load_before=os.getloadavg()[0],
                           cluster=run_cluster(client, prompts(c), args.new_tokens,
                                                   getattr(cluster, "http_addresses", {}).get("gpu-0", "")))
                if reference is not None:
                    model, eos, pad = reference
                    row["transformers_generate"] = run_reference(model, row["cluster"]["prompt_ids"],
                                                                 args.new_tokens, eos, pad)
                    row["ratio"] = row["cluster"]["tokens_per_s"] / row["transformers_generate"]["tokens_per_s"]
                row["load_after"] = os.getloadavg()[0]
                rows.append(row)
    for row in rows:
        row["cluster"].pop("prompt_ids")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        c = row["cluster"]
        line = (f"{args.mode} C={row['concurrency']} round {row['round']} (load {row['load_before']:.1f}"
                f"->{row['load_after']:.1f}): cluster {c['tokens']} tokens in {c['wall_s']:.1f} s = "
                f"{c['tokens_per_s']:.1f} tok/s, TTFT p50 {c['ttft_p50_s']:.2f} s p99 {c['ttft_p99_s']:.2f} s, "
                f"decode on {c['devices']}")
        if "step_busy" in c:
            line += (f", GPU worker in forward passes {c['step_busy']:.0%} of the wall time, {c['steps']} steps, "
                     f"{c['decodes_per_step']:.1f} decodes per step")
        if "ratio" in row:
            t = row["transformers_generate"]
            line += (f"; transformers generate {t['tokens']} tokens in {t['wall_s']:.1f} s = "
                     f"{t['tokens_per_s']:.1f} tok/s; ratio {row['ratio']:.2f}x")
        print(line, flush=True)


if __name__ == "__main__":
    main()
