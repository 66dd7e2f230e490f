"""`glitches profile`, batched steps from the GPU worker's own step log (glitches/gpu_worker/step_log.py).

The worker serves its last steps on its HTTP side port, `GET /steps?since=<seq>&limit=<n>` (its address is
the `http_address` of `glitches status --json`, i.e. the registry record). Each logged step is one point
of the step model (glitches/sim/step_model.py): its prefill tokens, decode rows and context tokens (what
its attention reads from KV: glitches/sim/step_model.py context_read), and its seconds: `step_s`, the
whole step on the worker (schedule, packing, forward pass, postprocess), the loop's own clock. Read over
plain HTTP with the standard library (urllib) in a worker thread; no new dependency.
"""

from __future__ import annotations

import json
import urllib.request

from glitches.sim.step_model import StepPoint, context_read

PAGE = 1000  # steps per GET


def read_steps(http_address: str, since: int, timeout_s: float = 10.0) -> tuple[list[dict], int, int]:
    """The worker's logged steps after `since`, oldest first: (steps, last seq, steps the ring dropped)."""
    steps, dropped = [], 0
    while True:
        url = f"http://{http_address}/steps?since={since}&limit={PAGE}"
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            doc = json.loads(response.read())
        dropped += doc["dropped"]
        steps += doc["steps"]
        if not doc["steps"] or len(doc["steps"]) < PAGE:
            return steps, doc["last_seq"], dropped
        since = doc["steps"][-1]["seq"]


def last_seq(http_address: str, timeout_s: float = 10.0) -> int:
    with urllib.request.urlopen(f"http://{http_address}/steps?limit=1&since={2**62}", timeout=timeout_s) as response:
        return int(json.loads(response.read())["last_seq"])


def step_point(step: dict) -> StepPoint:
    """One logged step -> a StepPoint (tokens, rows, seconds = the whole step, step_s)."""
    chunks = [(int(n), int(past)) for n, past in step["chunks"]]
    contexts = [int(c) for c in step["decode_contexts"]]
    return StepPoint(sum(n for n, _ in chunks), len(contexts), context_read(chunks, contexts), float(step["step_s"]),
                     int(step.get("streamed_chunks", 0)))
