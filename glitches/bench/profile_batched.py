"""`glitches profile`, batched steps: the live GPU worker's step time by the step's composition.

Protocol. For each (rows, prompt tokens) of the grid, `rows` requests of exactly that prompt are sent
at once with ignore_eos and `tokens` tokens each, streamed, every token's arrival timed on this
client (time.monotonic, seconds). With FPGAs in the cluster, long "blocker" requests first take every
FPGA slot (profile_measure.Blockers), so all `rows` decode on the GPU (GPU assist) in one step loop.
The steady window is from the last request's first token (every row decoding) to the first
request's last token (none finished yet); the step time is the median gap between consecutive
tokens of one stream inside that window: the loop's cycle (schedule, packed forward pass,
postprocess, stream), as a client sees tokens arrive, which is what the simulator models. Each
window becomes a StepPoint (decode rows = rows, context = rows x the window's mean context).
A grid point whose requests did not all decode on the GPU, or whose window holds fewer than 2 gaps,
is skipped (logged in the profile's notes).

Also here: the request path's latency outside the forward pass, per request alone:
client TTFT (send -> first token) - the worker's prefill_s.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from glitches.aio import AsyncClient
from glitches.sim.step_model import StepPoint
from glitches.types import Completion, TextChunk


@dataclass
class TimedStream:
    sent_s: float  # time.monotonic() when the request was sent
    token_times_s: list[float] = field(default_factory=list)  # one per generated token, time.monotonic()
    done: Completion | None = None

    @property
    def ttft_s(self) -> float:
        return self.token_times_s[0] - self.sent_s


async def timed_stream(client: AsyncClient, prompt: str, max_tokens: int) -> TimedStream:
    """One streamed request, ignore_eos, each token's arrival time recorded."""
    out = TimedStream(time.monotonic())
    async for item in client.stream(prompt, max_tokens=max_tokens, ignore_eos=True):
        if isinstance(item, TextChunk):
            now = time.monotonic()
            out.token_times_s.extend([now] * max(1, len(item.token_ids)))
        elif isinstance(item, Completion):
            out.done = item
    return out


def steady_step(streams: list[TimedStream], prompt_tokens: int) -> StepPoint | None:
    """The median in-window token gap of `streams` decoding together (see the module docstring)."""
    start = max(s.token_times_s[0] for s in streams)
    end = min(s.token_times_s[-1] for s in streams)
    gaps, contexts = [], []
    for s in streams:
        t = s.token_times_s
        for j in range(1, len(t)):
            if t[j - 1] >= start and t[j] <= end and t[j] > t[j - 1]:  # equal times: one chunk of several tokens
                gaps.append(t[j] - t[j - 1])
                contexts.append(prompt_tokens + j)
    if len(gaps) < 2:
        return None
    rows = len(streams)
    return StepPoint(0, rows, int(round(rows * float(np.mean(contexts)))), float(np.median(gaps)))


async def measure_batched_steps(client: AsyncClient, prompts: dict[int, list[str]], rows_grid: tuple[int, ...],
                                tokens: int, blockers, notes: list[str]) -> list[StepPoint]:
    """prompts: prompt tokens -> at least max(rows_grid) distinct prompts of that length. blockers: a
    profile_measure.Blockers for the FPGA slots, or None when the cluster has no FPGA. Each length's grid
    runs there and back (1, 2, 4, 8, 8, 4, 2, 1 rows), and each row count's two windows give one point
    (median seconds): a machine whose speed drifts during the profile (shared cores) biases no row count."""
    points = []
    for prompt_tokens, texts in prompts.items():
        windows: dict[int, list[StepPoint]] = {rows: [] for rows in rows_grid}
        for rows in list(rows_grid) + list(reversed(rows_grid)):
            if blockers is not None:
                await blockers.fill()
            streams = await asyncio.gather(*(timed_stream(client, texts[i], tokens) for i in range(rows)))
            on_gpu = all(s.done is not None and s.done.decode_device == "gpu" for s in streams)
            point = steady_step(streams, prompt_tokens) if on_gpu else None
            if point is None:
                why = "not all on the GPU" if not on_gpu else "no steady window"
                notes.append(f"batched step {rows} rows x {prompt_tokens} prompt tokens skipped: {why}")
                continue
            windows[rows].append(point)
        points += [combine(found) for found in windows.values() if found]
    return points


def combine(points: list[StepPoint]) -> StepPoint:
    """Windows of one grid point -> one point: the median seconds, the mean context."""
    first = points[0]
    return StepPoint(first.prefill_tokens, first.decode_rows, int(round(np.mean([p.context_tokens for p in points]))),
                     float(np.median([p.seconds for p in points])))
