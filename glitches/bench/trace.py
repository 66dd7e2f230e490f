"""Trace files in `glitches bench` (format: glitches/sim/plan_workload.py, the one `glitches simulate --trace` reads).

`--trace FILE`: each line's request is sent at its arrival_s (seconds from the start) with a prompt of
exactly input_tokens tokens and max_tokens = output_tokens. `--trace-out FILE`: what the bench did, one
line per request sent: its send time, the prompt tokens the scheduler counted, and the tokens it produced
(greedy decoding may stop early at EOS, so these can be fewer than asked). A request that failed (a full
scheduler refused it, say) is written with the prompt tokens the bench built and the tokens it asked for,
so a simulation of the trace is offered the same load and decides itself what it refuses; one whose
prompt length the bench does not know (a --prompts file) is left out.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glitches.bench.prompts import exact_length_prompt
from glitches.bench.records import BenchRequest, RequestResult


def trace_requests(tokenizer, path: str | Path, seed: int) -> tuple[list[BenchRequest], list[float]]:
    """The trace's requests in arrival order, and their arrival times (s, the first at 0)."""
    from glitches.sim.plan_workload import read_trace

    workload = read_trace(path)
    order = sorted(range(len(workload.shapes)), key=lambda i: workload.arrivals_s[i])
    rng = np.random.default_rng(seed)
    requests = [BenchRequest(exact_length_prompt(tokenizer, workload.shapes[i][0], rng), workload.shapes[i][1],
                             workload.shapes[i][0]) for i in order]
    return requests, [workload.arrivals_s[i] for i in order]


def write_result_trace(results: list[RequestResult], path: str | Path,
                       requests: list[BenchRequest] | None = None) -> None:
    """Every request sent as a trace file (module docstring); `requests` are the bench's, by result index."""
    from glitches.sim.plan_workload import write_trace

    arrivals, shapes = [], []
    for r in sorted(results, key=lambda r: r.start_s):
        if r.ok:
            shape = (r.prompt_tokens, r.output_tokens)
        else:
            built = requests[r.index].prompt_tokens if requests is not None else 0
            shape = (r.prompt_tokens or built, r.requested_tokens)
        if shape[0] > 0 and shape[1] > 0:
            arrivals.append(r.start_s)
            shapes.append(shape)
    write_trace(path, arrivals, shapes)
