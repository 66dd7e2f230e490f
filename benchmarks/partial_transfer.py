"""Partial KV transfers on a multi-turn chat: path transfer-partial on vs off, in one run on one machine.

    .venv/bin/python -m benchmarks.partial_transfer [--conversations 6] [--max-tokens 32] [--seed 27] [--think-s 1]

The trace is benchmarks/prefix_reuse.py's (seeded generator, not real chats; each turn re-rendered with
SmolLM2's chat template and sent as token ids, one request at a time). `glitches up` with one GPU worker
(CPU stand-in, prefix cache on) and one emulated card (reference numerics, KV retention on, shm): first
with the scheduler's default (--kv-reuse-partial), then a fresh cluster with --no-kv-reuse-partial (later
turns then go "transfer", the whole prompt's KV, or "extend"). Default routing costs (paper profiles).
Between turns the client waits --think-s (a user's think time): the card publishes what it keeps every
0.5 s, so a turn sent at once would be routed by the previous publication (a hint that lags, by design).

Reported per setting, later turns (2+) only: KV bytes moved GPU -> card (exact), TTFT p50 (the scheduler's
ttft_s), the paths taken; replies are checked equal between the two settings (greedy).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import time

from benchmarks.prefix_reuse import _ids, trace
from glitches import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation import models


def run(partial: bool, chats: list[list[str]], max_tokens: int, tokenizer, think_s: float) -> dict:
    spec = ClusterSpec(gpu_workers=1, fpga_workers=1, port=0, fpga_hbm_bytes=256 * 1024**2,
                       redis_prefix=f"bench-partial-{os.getpid()}-{int(partial)}",  # not another cluster's records
                       scheduler_args=() if partial else ("--no-kv-reuse-partial",))
    rows = []  # (turn, ttft_s, kv_bytes, serve_path, prompt tokens, reused tokens, reply ids)
    with LocalCluster(spec) as cluster, Client(cluster.address, timeout_s=600) as client:
        client.generate("warm up", max_tokens=2)
        for users in chats:
            messages = []
            for t, text in enumerate(users):
                messages.append({"role": "user", "content": text})
                prompt = _ids(tokenizer, messages)
                r = client.generate(prompt, max_tokens=max_tokens)
                rows.append((t, r.timings.ttft_s, r.timings.kv_bytes, r.timings.serve_path, len(prompt),
                             r.timings.reused_tokens, list(r.token_ids)))
                messages.append({"role": "assistant", "content": r.text})
                time.sleep(think_s)
    later = [r for r in rows if r[0] > 0]
    return dict(partial=partial, turns=len(rows), later_turns=len(later),
                kv_bytes_later=sum(r[2] for r in later), ttft_later_p50_s=statistics.median(r[1] for r in later),
                paths_later=dict(collections.Counter(r[3] for r in later)),
                prompt_tokens_later=sum(r[4] for r in later), card_reused_tokens_later=sum(r[5] for r in later),
                replies=[r[6] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--seed", type=int, default=27)
    parser.add_argument("--think-s", type=float, default=1.0, help="pause between turns, seconds")
    args = parser.parse_args()
    tokenizer = models.load_tokenizer(models.resolve_model(models.DEFAULT_MODEL))
    chats = trace(args.seed, args.conversations)
    started = time.monotonic()
    on = run(True, chats, args.max_tokens, tokenizer, args.think_s)
    off = run(False, chats, args.max_tokens, tokenizer, args.think_s)
    same = on.pop("replies") == off.pop("replies")
    ratios = dict(kv_bytes_later=on["kv_bytes_later"] / off["kv_bytes_later"],
                  ttft_later_p50=on["ttft_later_p50_s"] / off["ttft_later_p50_s"])
    print(json.dumps(dict(seed=args.seed, conversations=args.conversations, max_tokens=args.max_tokens,
                          think_s=args.think_s,
                          replies_equal=same, on=on, off=off, on_over_off=ratios,
                          wall_s=time.monotonic() - started), indent=2))
    if not same:
        raise SystemExit("the replies differ between partial transfers on and off")


if __name__ == "__main__":
    main()
