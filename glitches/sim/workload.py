"""How requests reach the node: all at once, Poisson arrivals, a closed loop, or a trace's arrival times.

Each function registers simpy processes on `node.env`; run the environment
afterwards. `shapes` gives each request's (prompt tokens, output tokens), in
order; its length is the number of requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from glitches.sim.node import Node, RequestRecord

Shape = tuple[int, int]  # (prompt tokens, output tokens)


def all_at_once(node: Node, shapes: Sequence[Shape]) -> None:
    """Every request arrives at t = 0 (a saturating burst)."""
    for rid, (prompt, output) in enumerate(shapes):
        node.submit(RequestRecord(rid, prompt, output, arrival_s=0.0))


def poisson(node: Node, shapes: Sequence[Shape], rate_per_s: float, seed: int) -> None:
    """Open loop: exponential gaps with mean 1 / rate_per_s seconds."""
    gaps_s = np.random.default_rng(seed).exponential(1.0 / rate_per_s, size=len(shapes))

    def arrivals():
        for rid, ((prompt, output), gap_s) in enumerate(zip(shapes, gaps_s)):
            yield node.env.timeout(float(gap_s))
            node.submit(RequestRecord(rid, prompt, output, arrival_s=node.env.now))

    node.env.process(arrivals())


def closed_loop(node: Node, shapes: Sequence[Shape], concurrency: int) -> None:
    """`concurrency` clients; each sends its next request when the last one finishes."""
    pending = list(enumerate(shapes))
    pending.reverse()  # pop() from the end hands out requests in order

    def client():
        while pending:
            rid, (prompt, output) = pending.pop()
            yield node.submit(RequestRecord(rid, prompt, output, arrival_s=node.env.now))

    for _ in range(min(concurrency, len(shapes))):
        node.env.process(client())


def trace(node: Node, shapes: Sequence[Shape], arrivals_s: Sequence[float],
          conversations: Sequence[tuple[str, int]] | None = None) -> None:
    """Each request arrives at its own time (seconds from the start; any order); conversations: its
    (conversation id, turn), for KV reuse."""
    order = sorted(range(len(shapes)), key=lambda i: arrivals_s[i])

    def arrivals():
        for rid in order:
            yield node.env.timeout(max(0.0, float(arrivals_s[rid]) - node.env.now))
            prompt, output = shapes[rid]
            conversation, turn = conversations[rid] if conversations else ("", 1)
            node.submit(RequestRecord(rid, prompt, output, arrival_s=node.env.now, conversation=conversation,
                                      turn=turn))

    node.env.process(arrivals())
