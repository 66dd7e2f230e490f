"""KV reuse on a multi-turn chat, live: reuse on vs off on a 1 GPU + 2 card cluster and a GPU-only one, in one run.

    .venv/bin/python -m benchmarks.prefix_reuse [--conversations 4] [--max-tokens 16] [--seed 27] [--think-s 1]
        [--setups cards,gpu]

The defaults fit ~10 minutes on the shared 2-core machine: GPU-only turns decode on the CPU GPU worker's
assist path at ~1.2 s/token under load, so 6 conversations at 48 tokens would take ~45 minutes there.

The trace: glitches/sim/reuse.py's seeded generator `conversation_trace` (not real chats; shaped to
published ShareGPT statistics: 1 + Poisson(2.5) user turns, user messages log-normal of median 20 tokens,
replies of median 280). Each user message is that many words from a fixed list (seeded; SmolLM2's
tokenizer gives about a token a word); each reply is the model's own greedy answer capped at
min(the trace's reply length, --max-tokens). Every turn is re-rendered from the messages with the model's
chat template (as the OpenAI gateway does) and sent as token ids through the scheduler, one request at a
time (batch size 1, the latency-sensitive case), --think-s seconds apart (cards publish what they hold
every 0.5 s; a turn sent at once is routed by the previous publication).

Settings, each two fresh `glitches up` (ClusterSpec) running at once, reuse on and reuse off, same trace;
every turn goes to both back to back, in an order that alternates turn by turn, so the two halves of a
pair run under the same machine load, and a turn is sent only when the other cluster is idle (its GPU may be
warming a reply in the background: on real hardware that runs on other devices) ("paired_ttft_on_over_off":
per-turn TTFT ratios, median and p90; "cold":
--cold prompts of 200 random words, sharing no KV block with anything, sent first, paired the same way: what
reuse costs when it finds nothing, the issue's "reuse off costs nothing"):
- "cards": 1 GPU worker + 2 emulated FPGA workers (reference numerics, 256 MiB HBM each);
- "gpu": 1 GPU worker, no card (GPU assist decodes; the figures before the cards existed).
Reuse on: the defaults (--prefix-cache, --kv-reuse, cards --kv-retention). Reuse off: --no-prefix-cache,
--no-kv-reuse, cards --no-kv-retention.

Reported per setting (JSON on stdout; seconds unless named): TTFT p50/p99 of turns 2+ and of turn 1 (the
scheduler's ttft_s); prompt tokens sent; prefill tokens computed on the GPU (prompt - cached, 0 on the
extend path); prefix hit rate (prompt tokens the GPU did not compute / prompt tokens); KV bytes moved GPU ->
card (Timings.kv_bytes, exact) per turn and against the new tokens' KV (new tokens = prompt tokens the
decode card did not hold, i.e. prompt - Timings.reused_tokens, times the card's Info.kv_bytes_per_token);
output tokens/s (completion tokens / summed request total_s); the count of each serve path; and
"simulated": `glitches simulate --trace` of the same trace (the live prompt and reply lengths, one request
every 60 s in live order) with the paper-calibrated A100 / U280 profiles and the smollm2-135m shape, the
GPU batching as the GPU worker does (--gpu-batching: its prefix cache counts) and placement free to pick
transfer-partial, as the live scheduler's default.
The run exits non-zero if a setting's replies differ between reuse on and off (greedy: reuse changes no
token). The top-level "on" / "off" / "on_over_off" keys are the GPU-only setting's (as before the cards).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from glitches import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation import models
from glitches.services.runtime.channels import open_channel
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc
from glitches.sim.plan_workload import write_trace
from glitches.sim.reuse import conversation_trace

WORDS = ("memory bandwidth decode prefill cache token model layer attention kernel card device latency "
         "batch request reply stream tensor weight vector matrix compute schedule worker queue chat user "
         "answer question explain short why how what when fast slow cost power board host network").split()
SETUPS = {"cards": 2, "gpu": 0}  # setting name -> emulated FPGA workers beside the one GPU worker
CARD_HBM_BYTES = 256 * 1024**2  # per emulated card: plenty for these conversations, little of the machine's RAM
COLD_WORDS = 200  # words per cold prompt (about as many tokens)
COLD_REPLY_TOKENS = 4
SIM_GAP_S = 60.0  # the simulated trace's spacing between requests: one at a time, as live


def trace(seed: int, conversations: int) -> list[list[str]]:
    """The user messages of each conversation (the older word-count generator; benchmarks.partial_transfer's)."""
    rng = random.Random(seed)
    out = []
    for _ in range(conversations):
        turns = rng.randint(2, 5)
        out.append([" ".join(rng.choice(WORDS) for _ in range(max(3, round(rng.lognormvariate(math.log(15), 0.5)))))
                    + "?" for _ in range(turns)])
    return out


def chat_trace(seed: int, conversations: int) -> list[list[tuple[str, int]]]:
    """Per conversation, per turn: (user message, reply length in tokens), from sim.reuse.conversation_trace."""
    workload = conversation_trace(conversations, seed=seed)
    turns = collections.defaultdict(list)  # conversation id -> [(turn, prompt tokens, reply tokens)]
    for (prompt, reply), (conversation, turn) in zip(workload.shapes, workload.conversations):
        turns[conversation].append((turn, prompt, reply))
    rng = random.Random(seed)
    out = []
    for conversation in sorted(turns, key=lambda c: int(c[1:])):
        rows, context, chat = sorted(turns[conversation]), 32, []  # 32: the generator's system prompt
        for _, prompt, reply in rows:
            user_tokens = prompt - context
            chat.append((" ".join(rng.choice(WORDS) for _ in range(max(1, user_tokens))) + "?", reply))
            context = prompt + reply
        out.append(chat)
    return out


def _ids(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _card_kv_bytes_per_token(client: Client) -> int:
    """The first card's Info.kv_bytes_per_token (0 without a card)."""
    for worker in client.status().workers:
        if worker.kind == "fpga":
            stub = worker_pb2_grpc.WorkerStub(open_channel(worker.address))
            return stub.Info(worker_pb2.InfoRequest(), timeout=30).kv_bytes_per_token
    return 0


def _row(c: int, t: int, prompt: list[int], r) -> dict:
    card = r.decode_device == "fpga"
    return dict(conversation=c, turn=t + 1, ttft_s=r.timings.ttft_s, total_s=r.timings.total_s,
                prompt=len(prompt), cached=r.cached_tokens, path=r.timings.serve_path or "none",
                kv_bytes=r.timings.kv_bytes, new_tokens=len(prompt) - r.timings.reused_tokens if card else 0,
                output=len(r.token_ids), ids=list(r.token_ids))


def run_paired(specs: dict[str, ClusterSpec], chats: list[list[tuple[str, int]]], max_tokens: int, tokenizer,
               think_s: float, cold: list[list[int]]) -> tuple[dict[str, list[dict]], dict[str, int]]:
    """Every turn of the trace against two clusters up at once (reuse on and off), each turn sent to both
    back to back, the order alternating turn by turn, so both halves of a pair see the same machine load
    (this machine's speed drifts several-fold over minutes: halves run minutes apart are not comparable).
    Each cluster's conversation goes on with its own replies. First, the `cold` prompts (sharing no block with
    anything sent before: what reuse costs when it finds nothing), paired the same way, as rows of turn 0.
    Returns rows and KV bytes per token per label."""
    labels = list(specs)
    rows: dict[str, list[dict]] = {label: [] for label in labels}
    with contextlib.ExitStack() as stack:
        clients = {}
        for label in labels:
            cluster = stack.enter_context(LocalCluster(specs[label]))
            clients[label] = stack.enter_context(Client(cluster.address, timeout_s=600))
            clients[label].generate("warm up", max_tokens=2)
        kv_per_token = {label: _card_kv_bytes_per_token(clients[label]) for label in labels}
        pair = 0
        for i, prompt in enumerate(cold):
            for label in (labels if i % 2 == 0 else labels[::-1]):
                _wait_idle([clients[other] for other in labels if other != label])
                rows[label].append(_row(-1, -1, prompt, clients[label].generate(prompt, max_tokens=COLD_REPLY_TOKENS)))
        for c, chat in enumerate(chats):
            messages = {label: [] for label in labels}
            for t, (text, reply_tokens) in enumerate(chat):
                order = labels if pair % 2 == 0 else labels[::-1]
                pair += 1
                for label in order:
                    _wait_idle([clients[other] for other in labels if other != label])
                    messages[label].append({"role": "user", "content": text})
                    prompt = _ids(tokenizer, messages[label])
                    r = clients[label].generate(prompt, max_tokens=min(max_tokens, reply_tokens))
                    rows[label].append(_row(c, t, prompt, r))
                    messages[label].append({"role": "assistant", "content": r.text})
                time.sleep(think_s)
    return rows, kv_per_token


def _wait_idle(clients: list[Client], timeout_s: float = 60.0) -> None:
    """Until no worker of these clusters holds a request (their Info's active requests, as of the last
    heartbeat): the two clusters share this machine's 2 cores, so one's background work (a GPU warming a
    reply after a card decoded it) must not run during the other's measured turn. A cluster's own background
    work is not waited for: it competes with its next turn, as it would on its own devices."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(w.worker_active_requests == 0 for client in clients for w in client.status().workers):
            return
        time.sleep(0.05)


def cold_prompts(seed: int, count: int, tokenizer) -> list[list[int]]:
    """`count` prompts of COLD_WORDS random words each (seeded), no chat template: no two share a KV block."""
    rng = random.Random(seed + 1)
    return [tokenizer(" ".join(rng.choice(WORDS) for _ in range(COLD_WORDS)), add_special_tokens=False)["input_ids"]
            for _ in range(count)]


def paired_ttft(on: list[dict], off: list[dict]) -> dict:
    """Per turn on/off TTFT ratios of the same turn run back to back: median and p90 over turns 2+ and turn 1."""
    def ratios(turns) -> list[float]:
        return [a["ttft_s"] / b["ttft_s"] for a, b in zip(on, off) if turns(a["turn"]) and b["ttft_s"] > 0]
    later, first, cold = ratios(lambda t: t > 1), ratios(lambda t: t == 1), ratios(lambda t: t == 0)
    return dict(later_median=_median(later), later_p90=_quantile(later, 0.9), later_pairs=len(later),
                first_median=_median(first), first_p90=_quantile(first, 0.9), first_pairs=len(first),
                cold_median=_median(cold), cold_p90=_quantile(cold, 0.9), cold_pairs=len(cold),
                cold_cached_tokens_on=sum(a["cached"] for a in on if a["turn"] == 0))


def summarize(rows: list[dict], kv_per_token: int) -> dict:
    later = [r["ttft_s"] for r in rows if r["turn"] > 1]
    first = [r["ttft_s"] for r in rows if r["turn"] == 1]
    prompt = sum(r["prompt"] for r in rows)
    computed = sum(0 if r["path"] == "extend" else r["prompt"] - r["cached"] for r in rows)
    moved = [r for r in rows if r["new_tokens"]]
    new_kv = sum(r["new_tokens"] for r in moved) * kv_per_token
    return dict(turns=len(rows), later_turns=len(later),
                ttft_later_p50_s=_median(later), ttft_later_p99_s=_p99(later),
                ttft_first_p50_s=_median(first), ttft_first_p99_s=_p99(first),
                prompt_tokens=prompt, cached_tokens=sum(r["cached"] for r in rows), prefill_tokens=computed,
                reused_share=sum(r["cached"] for r in rows) / prompt, prefix_hit_rate=(prompt - computed) / prompt,
                kv_bytes=sum(r["kv_bytes"] for r in rows), kv_bytes_per_turn=[r["kv_bytes"] for r in rows],
                card_kv_bytes_per_token=kv_per_token, new_tokens_on_card=sum(r["new_tokens"] for r in moved),
                kv_over_new_tokens_kv=sum(r["kv_bytes"] for r in moved) / new_kv if new_kv else None,
                kv_over_new_tokens_kv_max_turn=max((r["kv_bytes"] / (r["new_tokens"] * kv_per_token)
                                                    for r in moved), default=None) if kv_per_token else None,
                output_tokens=sum(r["output"] for r in rows),
                output_tokens_per_s=sum(r["output"] for r in rows) / sum(r["total_s"] for r in rows),
                paths=dict(collections.Counter(r["path"] for r in rows)))


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _p99(values: list[float]) -> float | None:
    return _quantile(values, 0.99)


def _quantile(values: list[float], q: float) -> float | None:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] if ordered else None


def _ratio(on, off):
    return on / off if on is not None and off else None


def simulate(rows: list[dict], fpgas: int) -> dict:
    """`glitches simulate --trace` of the turns as run live (reuse on and off, simulated time)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "chat.jsonl")
        write_trace(path, [SIM_GAP_S * i for i in range(len(rows))], [(r["prompt"], max(1, r["output"])) for r in rows],
                    [(f"c{r['conversation']}", r["turn"]) for r in rows])
        command = [sys.executable, "-m", "glitches", "simulate", "--gpus", "1", "--fpgas", str(fpgas),
                   "--gpu-batching", "--model", "smollm2-135m", "--trace", path, "--json"]
        done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=300)
    reuse = json.loads(done.stdout)["reuse"]
    on, off = _simulated_figures(reuse["on"]), _simulated_figures(reuse["off"])
    return dict(profile="paper-calibrated a100 + u280 (glitches/sim/profiles/devices.json), model smollm2-135m, "
                        f"1 GPU (batching) + {fpgas} cards, one request every {SIM_GAP_S:g} s",
                on=on, off=off, on_over_off={k: _ratio(on[k], off[k]) for k in
                                             ("ttft_later_p50_s", "ttft_later_p99_s", "prefill_tokens", "kv_bytes")})


def _simulated_figures(summary: dict) -> dict:
    """sim.reuse.reuse_summary's figures under this benchmark's names."""
    later = summary["ttft_later_turns_s"]
    return dict(ttft_later_p50_s=later["p50"], ttft_later_p99_s=later["p99"], prefix_hit_rate=summary["hit_rate"],
                prefill_tokens=summary["gpu_prefill_tokens"], kv_bytes=summary["kv_bytes_moved"],
                paths=summary["paths"])


def run_setup(fpgas: int, chats, max_tokens: int, tokenizer, think_s: float, cold: list[list[int]]) -> tuple[dict, bool]:
    specs = {label: ClusterSpec(gpu_workers=1, fpga_workers=fpgas, port=0,
                                fpga_hbm_bytes=CARD_HBM_BYTES if fpgas else 0, prefix_cache=reuse,
                                kv_retention=reuse, scheduler_args=() if reuse else ("--no-kv-reuse",))
             for label, reuse in (("on", True), ("off", False))}
    rows, kv_per_token = run_paired(specs, chats, max_tokens, tokenizer, think_s, cold)
    paired = paired_ttft(rows["on"], rows["off"])
    same = [r["ids"] for r in rows["on"]] == [r["ids"] for r in rows["off"]]
    rows = {label: [r for r in rows[label] if r["turn"] > 0] for label in rows}  # the trace's turns
    halves = {label: dict(prefix_cache=label == "on", kv_reuse=label == "on", kv_retention=label == "on" and fpgas > 0,
                          **summarize(rows[label], kv_per_token[label])) for label in ("on", "off")}
    halves["simulated"] = simulate(rows["on"], fpgas)
    on, off = halves["on"], halves["off"]
    halves["on_over_off"] = dict(
        ttft_later_p50=_ratio(on["ttft_later_p50_s"], off["ttft_later_p50_s"]),
        ttft_later_p99=_ratio(on["ttft_later_p99_s"], off["ttft_later_p99_s"]),
        ttft_first_p50=_ratio(on["ttft_first_p50_s"], off["ttft_first_p50_s"]),
        ttft_first_p99=_ratio(on["ttft_first_p99_s"], off["ttft_first_p99_s"]),
        prefill_tokens=_ratio(on["prefill_tokens"], off["prefill_tokens"]),
        kv_bytes=_ratio(on["kv_bytes"], off["kv_bytes"]),
        output_tokens_per_s=_ratio(on["output_tokens_per_s"], off["output_tokens_per_s"]))
    halves["paired_ttft_on_over_off"] = paired
    halves["turns"] = {label: [{k: v for k, v in r.items() if k != "ids"} for r in rows[label]] for label in rows}
    halves["replies_equal"] = same
    return halves, same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--think-s", type=float, default=1.0, help="pause between turns, seconds")
    parser.add_argument("--setups", default="cards,gpu", help=f"comma-separated, of {sorted(SETUPS)}")
    parser.add_argument("--cold", type=int, default=6, help="cold prompts (no shared block) first, paired")
    args = parser.parse_args()
    tokenizer = models.load_tokenizer(models.resolve_model(models.DEFAULT_MODEL))
    chats = chat_trace(args.seed, args.conversations)
    load_before, started = os.getloadavg(), time.monotonic()
    settings, all_same = {}, True
    for name in args.setups.split(","):
        settings[name], same = run_setup(SETUPS[name], chats, args.max_tokens, tokenizer, args.think_s,
                                         cold_prompts(args.seed, args.cold, tokenizer))
        all_same &= same
        print(json.dumps({name: settings[name]}), file=sys.stderr, flush=True)  # progress: a setting's figures
    out = dict(trace=f"glitches.sim.reuse.conversation_trace(seed={args.seed}), {args.conversations} conversations",
               seed=args.seed, conversations=args.conversations, max_tokens=args.max_tokens, think_s=args.think_s,
               replies_equal=all_same)
    if "gpu" in settings:  # the keys of the GPU-only benchmark this one grew from
        out.update(on=settings["gpu"]["on"], off=settings["gpu"]["off"], on_over_off=settings["gpu"]["on_over_off"])
    out.update(settings=settings, load_before=load_before, load_after=os.getloadavg(),
               wall_s=time.monotonic() - started)
    print(json.dumps(out, indent=2))
    if not all_same:
        raise SystemExit("the replies differ between reuse on and off")


if __name__ == "__main__":
    main()
