"""Prefix reuse on a multi-turn chat: the GPU worker's prefix cache on vs off, in one run on one machine.

    .venv/bin/python -m benchmarks.prefix_reuse [--conversations 8] [--max-tokens 48] [--seed 27]

The trace (a generator, seeded; not real chats): each conversation has 2-5 user turns (uniform, mean
3.5), each user message a number of words drawn from a log-normal of median 15 words (SmolLM2's
tokenizer gives ~20 tokens for them), words from a fixed list; each reply is the model's own greedy
answer capped at --max-tokens. Every turn is re-rendered from the messages with the model's chat
template (as the OpenAI gateway does) and sent as token ids through the scheduler, one request at a
time (batch size 1, the latency-sensitive case). The same trace runs against `glitches up` with one
GPU worker and no FPGA twice: --prefix-cache, then --no-prefix-cache (a fresh cluster each).

Reported per setting: TTFT p50/p99 of turns 2+ and of turn 1 (seconds, the scheduler's ttft_s),
prompt tokens sent, prefill tokens computed (prompt - cached), reused share, and the ratios on / off.
Replies are checked equal between the two settings (greedy), so reuse changes no token.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import time

from glitches import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation import models

WORDS = ("memory bandwidth decode prefill cache token model layer attention kernel card device latency "
         "batch request reply stream tensor weight vector matrix compute schedule worker queue chat user "
         "answer question explain short why how what when fast slow cost power board host network").split()


def trace(seed: int, conversations: int) -> list[list[str]]:
    """The user messages of each conversation."""
    rng = random.Random(seed)
    out = []
    for _ in range(conversations):
        turns = rng.randint(2, 5)
        out.append([" ".join(rng.choice(WORDS) for _ in range(max(3, round(rng.lognormvariate(math.log(15), 0.5)))))
                    + "?" for _ in range(turns)])
    return out


def _ids(tokenizer, messages: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def run(prefix_cache: bool, chats: list[list[str]], max_tokens: int, tokenizer) -> dict:
    spec = ClusterSpec(gpu_workers=1, fpga_workers=0, port=0, prefix_cache=prefix_cache)
    rows = []  # (conversation, turn, ttft_s, prompt tokens, cached tokens, reply token ids)
    with LocalCluster(spec) as cluster, Client(cluster.address, timeout_s=600) as client:
        client.generate("warm up", max_tokens=2)
        for c, users in enumerate(chats):
            messages = []
            for t, text in enumerate(users):
                messages.append({"role": "user", "content": text})
                prompt = _ids(tokenizer, messages)
                r = client.generate(prompt, max_tokens=max_tokens)
                rows.append((c, t, r.timings.ttft_s, len(prompt), r.cached_tokens, list(r.token_ids)))
                messages.append({"role": "assistant", "content": r.text})
    later = [r[2] for r in rows if r[1] > 0]
    first = [r[2] for r in rows if r[1] == 0]
    prompt_tokens = sum(r[3] for r in rows)
    cached = sum(r[4] for r in rows)
    return dict(prefix_cache=prefix_cache, turns=len(rows), later_turns=len(later),
                ttft_later_p50_s=statistics.median(later), ttft_later_p99_s=_p99(later),
                ttft_first_p50_s=statistics.median(first), prompt_tokens=prompt_tokens, cached_tokens=cached,
                prefill_tokens=prompt_tokens - cached, reused_share=cached / prompt_tokens,
                output_tokens=sum(len(r[5]) for r in rows), replies=[r[5] for r in rows])


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=27)
    args = parser.parse_args()
    tokenizer = models.load_tokenizer(models.resolve_model(models.DEFAULT_MODEL))
    chats = trace(args.seed, args.conversations)
    started = time.monotonic()
    on = run(True, chats, args.max_tokens, tokenizer)
    off = run(False, chats, args.max_tokens, tokenizer)
    same = on.pop("replies") == off.pop("replies")
    ratios = dict(ttft_later_p50=on["ttft_later_p50_s"] / off["ttft_later_p50_s"],
                  ttft_later_p99=on["ttft_later_p99_s"] / off["ttft_later_p99_s"],
                  ttft_first_p50=on["ttft_first_p50_s"] / off["ttft_first_p50_s"],
                  prefill_tokens=on["prefill_tokens"] / off["prefill_tokens"])
    print(json.dumps(dict(seed=args.seed, conversations=args.conversations, max_tokens=args.max_tokens,
                          replies_equal=same, on=on, off=off, on_over_off=ratios,
                          wall_s=time.monotonic() - started), indent=2))
    if not same:
        raise SystemExit("the replies differ between prefix cache on and off")


if __name__ == "__main__":
    main()
