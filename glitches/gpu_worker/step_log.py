"""The GPU worker's own step log: the last steps its loop ran, each with its composition and its seconds.

Served read-only on the worker's HTTP side port as `GET /steps?since=<seq>` (JSON, glitches/services/runtime/
http_side.py), so `glitches profile` and the simulator's live validation fit the batched-step model
(glitches/sim/step_model.py) to the steps the worker really ran rather than to a client's token clock.

One entry per step of glitches/gpu_worker/step_loop.py (a pass that failed is not logged):
- seq: 1, 2, 3, ... in the order the steps ended (a reader asks for the entries after the last seq it saw);
- started_s, ended_s: time.monotonic() of the step's schedule start and postprocess end (seconds; the clock is
  the host's, so a reader on the same host can line them up with its own);
- decode_contexts: one per decode row, the tokens already in KV its attention reads (its position);
- chunks: one [new tokens, tokens already in KV] per prefill chunk;
- streamed_chunks: how many of the chunks sent their KV out layer by layer during the pass (the final chunk
  of a prefill whose decode runs elsewhere: the per-layer hook where the KV sender's put_layer runs,
  glitches/gpu_worker/engine.py);
- schedule_s, forward_s, postprocess_s: parts of the step, seconds; forward_s is the packed forward pass
  alone (the glitches_gpu_step_seconds metric); step_s = ended_s - started_s is the whole step (schedule,
  packing the batch, forward, postprocess: sampling and handing each token to its RPC thread), what spaces
  one decode row's tokens while the loop is busy (the simulator's step time). The time from one step's
  ended_s to the next one's started_s is the loop waiting for its lock or for work (not in step_s).

The ring keeps the last `capacity` entries (a deque: append and read are O(1) and O(returned) under a lock),
so a reader that falls behind by more than that gets the newest ones and `dropped` says how many it missed.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass

DEFAULT_CAPACITY = 4096  # steps kept; at ~200 bytes each, under 1 MB


@dataclass(frozen=True)
class LoggedStep:
    seq: int
    started_s: float  # time.monotonic() when the step's schedule began
    ended_s: float  # time.monotonic() when its postprocess ended
    decode_contexts: tuple[int, ...]  # tokens in KV read by each decode row
    chunks: tuple[tuple[int, int], ...]  # (new tokens, tokens already in KV) per prefill chunk
    schedule_s: float
    forward_s: float
    postprocess_s: float
    streamed_chunks: int = 0  # chunks whose KV streamed out layer by layer during the pass

    @property
    def step_s(self) -> float:
        return self.ended_s - self.started_s

    def to_json(self) -> dict:
        return asdict(self) | {"step_s": self.step_s}


class StepLog:
    """Bounded ring of LoggedStep; thread-safe (the step loop appends, HTTP threads read)."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 1:
            raise ValueError(f"a step log keeps at least 1 step, got capacity {capacity}")
        self.capacity = capacity
        self._steps: deque[LoggedStep] = deque(maxlen=capacity)
        self._seq = 0
        self._lock = threading.Lock()

    def add(self, started_s: float, ended_s: float, decode_contexts: list[int], chunks: list[tuple[int, int]],
            schedule_s: float, forward_s: float, postprocess_s: float, streamed_chunks: int = 0) -> None:
        with self._lock:
            self._seq += 1
            self._steps.append(LoggedStep(self._seq, started_s, ended_s, tuple(decode_contexts),
                                          tuple((int(n), int(past)) for n, past in chunks), schedule_s, forward_s,
                                          postprocess_s, int(streamed_chunks)))

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq

    def since(self, seq: int, limit: int | None = None) -> tuple[list[LoggedStep], int]:
        """(the entries with seq > `seq`, oldest first, at most `limit`; how many of those the ring dropped)."""
        with self._lock:
            first = self._steps[0].seq if self._steps else self._seq + 1
            start = max(0, seq + 1 - first)  # entries are consecutive: index of seq + 1
            dropped = max(0, first - (seq + 1))
            steps = [self._steps[i] for i in range(start, len(self._steps))]
        if limit is not None:
            steps = steps[:limit]
        return steps, dropped

    def document(self, since: int = 0, limit: int | None = None) -> dict:
        """What GET /steps?since=<seq>&limit=<n> returns (JSON-ready)."""
        steps, dropped = self.since(since, limit)
        return {"last_seq": self.last_seq, "capacity": self.capacity, "dropped": dropped,
                "steps": [s.to_json() for s in steps]}
