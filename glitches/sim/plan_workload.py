"""The workload `glitches plan` (and `simulate --trace`) runs: request shapes and how they arrive.

Lengths: "N" (every request N tokens), "uniform:LO:HI" (integers, both ends included) or
"normal:MEAN:STD" (rounded, at least 1), drawn with the seed. Arrivals: a Poisson rate (requests/s), a
closed loop of C clients, or a trace file.

Trace file (JSONL, one request per line, the format `glitches bench --trace-out` writes):
    {"arrival_s": seconds from the first request, "input_tokens": prompt tokens, "output_tokens": tokens generated}
  optional, for KV reuse (multi-turn chat): "conversation": its id (a string), "turn": 1, 2, ... (a turn's
  prompt starts with the previous turn's prompt and reply; glitches/sim/reuse.py writes such traces)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.workload import Shape


@dataclass(frozen=True)
class Workload:
    shapes: tuple[Shape, ...]  # (prompt tokens, output tokens) per request
    request_rate: float | None = None  # Poisson, requests/s
    concurrency: int | None = None  # closed loop
    arrivals_s: tuple[float, ...] | None = None  # a trace's arrival times, s
    conversations: tuple[tuple[str, int], ...] | None = None  # a trace's (conversation id, turn) per request

    def label(self) -> str:
        if self.arrivals_s is not None:
            return f"trace of {len(self.shapes)} requests"
        if self.request_rate is not None:
            return f"Poisson {self.request_rate:g} req/s"
        return f"closed loop x{self.concurrency}" if self.concurrency is not None else "all at once"

    def run_kwargs(self) -> dict:
        return {"request_rate": self.request_rate, "concurrency": self.concurrency, "arrivals_s": self.arrivals_s}


def sample_lengths(spec: str, count: int, rng: np.random.Generator) -> list[int]:
    """`count` token lengths from a spec string (module docstring)."""
    parts = spec.split(":")
    try:
        if len(parts) == 1:
            values = [int(parts[0])] * count
        elif parts[0] == "uniform" and len(parts) == 3:
            values = rng.integers(int(parts[1]), int(parts[2]) + 1, size=count).tolist()
        elif parts[0] == "normal" and len(parts) == 3:
            values = np.maximum(1, np.rint(rng.normal(float(parts[1]), float(parts[2]), size=count))).astype(int).tolist()
        else:
            raise ValueError("unknown form")
    except ValueError:
        raise InvalidArgument(f"length {spec!r}: need N, uniform:LO:HI or normal:MEAN:STD") from None
    if min(values) < 1:
        raise InvalidArgument(f"length {spec!r}: every request needs at least 1 token")
    return [int(v) for v in values]


def synthetic(input_spec: str, output_spec: str, num_requests: int, request_rate: float | None,
              concurrency: int | None, seed: int = 0) -> Workload:
    if num_requests < 1:
        raise InvalidArgument(f"need at least one request, got {num_requests}")
    rng = np.random.default_rng(seed)
    inputs, outputs = sample_lengths(input_spec, num_requests, rng), sample_lengths(output_spec, num_requests, rng)
    return Workload(tuple(zip(inputs, outputs)), request_rate, concurrency)


def read_trace(path: str | Path) -> Workload:
    """A trace file (module docstring) as a workload; arrivals are shifted so the first is at 0 s."""
    rows = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((float(row["arrival_s"]), int(row["input_tokens"]), int(row["output_tokens"]),
                         (str(row["conversation"]), int(row.get("turn", 1))) if "conversation" in row else None))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{path}:{number}: need {{\"arrival_s\", \"input_tokens\", \"output_tokens\"}}: "
                                  f"{exc}") from None
    if not rows:
        raise InvalidArgument(f"{path}: no requests in the trace")
    first = min(r[0] for r in rows)
    conversations = tuple(r[3] or ("", 1) for r in rows) if any(r[3] for r in rows) else None
    return Workload(tuple((i, o) for _, i, o, _ in rows), arrivals_s=tuple(r[0] - first for r in rows),
                    conversations=conversations)


def write_trace(path: str | Path, arrivals_s, shapes, conversations=None) -> None:
    """Write a trace file (module docstring): one line per request; conversations: (id, turn) per request."""
    rows = [{"arrival_s": round(float(a), 6), "input_tokens": int(i), "output_tokens": int(o)}
            for a, (i, o) in zip(arrivals_s, shapes)]
    for row, (conversation, turn) in zip(rows, conversations or ()):
        row.update(conversation=conversation, turn=turn)
    lines = [json.dumps(row) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n")
