"""What KV reuse buys on a multi-turn trace: the routing's costs from device profiles, a seeded chat-trace
generator, and the same trace simulated with reuse on and off.

Figures of one run (`reuse_summary`), over every request unless named:
- hit_rate: prompt tokens not computed (held by the extending card or the prefill GPU) / prompt tokens.
- paths: requests per placement path (transfer, transfer-partial, extend, fresh).
- ttft_s / ttft_later_turns_s: TTFT of every request / of turns 2 and later, seconds (sim.metrics.distribution).
- gpu_prefill_tokens: prompt tokens a GPU computed.
- kv_bytes_moved: KV bytes streamed GPU -> card (the whole prompt on transfer / fresh, the tokens the
  holding card lacked on transfer-partial, 0 on the extend path), at the decoding device's bytes per token.

Generated traces (`conversation_trace`): conversations start as a Poisson process; each has 1 + Poisson(2.5)
user turns (mean 3.5); user messages and replies are log-normal with medians of 20 and 280 tokens (the
shape the issue gives for ShareGPT chats); a system prompt of `system_tokens` opens each. Turn t's prompt
is turn t-1's prompt + reply + the new user message; the next turn arrives after the previous reply could
have finished (reply tokens x `reply_s_per_token`) plus an exponential think time. A conversation ends
early when its next turn would not fit `max_context_tokens`.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from glitches.scheduler.placement import PATH_EXTEND, PATH_FRESH, PATH_TRANSFER, PATH_TRANSFER_PARTIAL
from glitches.scheduler.reuse_cost import DEFAULT_REUSE_COSTS, ReuseCosts
from glitches.sim.metrics import distribution
from glitches.sim.node import Node, NodeConfig
from glitches.sim.partial_reuse import moved_kv_tokens
from glitches.sim.plan_workload import Workload
from glitches.sim.run import simulate_node

COST_PROMPT_TOKENS = 1536  # the prompt the GPU prefill speed is taken at (the paper's input length)
COST_CONTEXT_TOKENS = 1792  # the context a card's forced step is taken at (the paper's mid-decode context)


def costs_from_profiles(config: NodeConfig, queued_request_s: float = DEFAULT_REUSE_COSTS.queued_request_s
                        ) -> ReuseCosts:
    """The routing's cost model for this node's devices (defaults where a device kind is absent)."""
    costs = {"queued_request_s": queued_request_s, "transfer_bytes_per_s": config.link_gb_per_s * 1e9}
    if config.gpu is not None:
        costs["gpu_prefill_tokens_per_s"] = COST_PROMPT_TOKENS / config.gpu.timing.prefill_s(COST_PROMPT_TOKENS)
    if config.fpga is not None:
        costs["card_forced_step_s"] = config.fpga.timing.decode_step_s(COST_CONTEXT_TOKENS)
    return replace(DEFAULT_REUSE_COSTS, **costs)


def conversation_trace(conversations: int, seed: int, rate_per_s: float = 0.5, system_tokens: int = 32,
                       max_context_tokens: int = 4096, think_s: float = 20.0,
                       reply_s_per_token: float = 0.05) -> Workload:
    """A seeded multi-turn chat workload (module docstring), requests in arrival order."""
    rng = np.random.default_rng(seed)
    rows = []  # (arrival s, prompt tokens, reply tokens, conversation id, turn)
    start = 0.0
    for c in range(conversations):
        start += float(rng.exponential(1.0 / rate_per_s))
        arrival, context = start, system_tokens
        for turn in range(1, 2 + int(rng.poisson(2.5))):
            user = max(1, int(round(rng.lognormal(np.log(20), 0.8))))
            reply = max(2, int(round(rng.lognormal(np.log(280), 0.6))))
            if context + user + reply > max_context_tokens:
                break
            rows.append((arrival, context + user, reply, f"c{c}", turn))
            context += user + reply
            arrival += reply * reply_s_per_token + float(rng.exponential(think_s))
    rows.sort(key=lambda r: r[0])
    return Workload(tuple((p, o) for _, p, o, _, _ in rows), arrivals_s=tuple(r[0] for r in rows),
                    conversations=tuple((r[3], r[4]) for r in rows))


def reuse_summary(node: Node) -> dict:
    """The figures of one finished run (module docstring)."""
    records = node.records
    prompt = sum(r.prompt_tokens for r in records)
    reused = sum(r.reused_tokens for r in records)
    kv_per_token = (node.config.fpga or node.config.gpu).kv_bytes_per_token
    moved = [r for r in records if r.path != PATH_EXTEND and r.decode_device != r.prefill_device]
    return {
        "requests": len(records),
        "hit_rate": reused / prompt if prompt else 0.0,
        "paths": {path: sum(r.path == path for r in records)
                  for path in (PATH_TRANSFER, PATH_TRANSFER_PARTIAL, PATH_EXTEND, PATH_FRESH)},
        "ttft_s": distribution([r.first_token_s - r.arrival_s for r in records]),
        "ttft_later_turns_s": distribution([r.first_token_s - r.arrival_s for r in records if r.turn >= 2]),
        "gpu_prefill_tokens": sum(r.prompt_tokens - r.reused_tokens for r in records if r.path != PATH_EXTEND),
        "kv_bytes_moved": float(sum(moved_kv_tokens(r.prompt_tokens, r.card_held_tokens) for r in moved)
                                * kv_per_token),
    }


def compare_reuse(config: NodeConfig, workload: Workload, seed: int = 0) -> dict:
    """{"on": reuse_summary, "off": reuse_summary} of the same trace; costs from the node's profiles."""
    costs = costs_from_profiles(config)
    out = {}
    for label, on in (("on", True), ("off", False)):
        node = simulate_node(replace(config, kv_reuse=on, reuse_costs=costs), workload.shapes, seed=seed,
                             arrivals_s=workload.arrivals_s, conversations=workload.conversations)
        out[label] = reuse_summary(node)
    return out
