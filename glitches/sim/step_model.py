"""A batched GPU step's time from its composition, fitted to measured steps (roofline-shaped, least squares).

    step_s = overhead_s
           + per_prefill_token_s x prefill tokens in the step
           + per_decode_row_s    x decode rows in the step
           + per_context_token_s x context tokens the step's attention reads
           + batched_decode_s    x (1 when the step has 2 or more decode rows, else 0)
           + per_streamed_chunk_s x prefill chunks whose KV streams out layer by layer during the pass

Units: every coefficient is seconds (per step, per token, per row, per token of context, per step).
"Context tokens" are what the step's attention reads from KV: each prefill chunk's tokens already in KV
(besides itself), plus the decode rows' KV: a lone decode row reads its own context (its KV length); 2 or
more rows run as one batched attention (glitches/gpu_worker/packed_attention.py DecodePlan) that pads every
row to the longest, so they read rows x the longest context. The shape is a roofline's once the weights
are read once per step (the fixed overhead holds that read and the loop's schedule), the work per new
token, per sampled row (its share of the pass, its sampling and handing its token to its stream: the
step loop's postprocess grows with rows), and the KV read per context token; `batched_decode_s` is the
batched decode path's own cost per step (its gather/scatter plan built once per step, and an
index_copy, index_select and mask per layer), which a lone row does not pay: client-timed steps on the
CPU stand-in went 0.055 s at 1 row to 0.089-0.105 s at 2 and 0.110 s at 8 rows, a jump no per-row term
explains (docs/benchmarks.md, issue #25). `per_streamed_chunk_s` is the per-layer KV send a prefill for a card
(or a decode GPU) does inside the pass (the per-layer hook where the KV sender's put_layer runs,
glitches/gpu_worker/engine.py); on the CPU stand-in it is ~0.1 s a prompt and holds up every row of that step; a profile whose log has no
streamed prefill (a GPU-only cluster) fits it as 0.

Points come from the GPU worker's own step log (glitches/gpu_worker/step_log.py: every step with its exact
composition and its whole step time) or, where a worker does not serve one, from the client's token clock
(glitches/bench/profile_batched.py).

Fit: relative least squares over the measured points; a coefficient that comes out negative (no
physical meaning) is fixed at 0 and the rest refitted, until all are >= 0 (a small active-set NNLS).
`fit_step_model` reports the fit's relative error on its own points (the worst and the median), so a
profile says how well the shape explains what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glitches.services.runtime.errors import InvalidArgument

TERMS = ("overhead_s", "per_prefill_token_s", "per_decode_row_s", "per_context_token_s", "batched_decode_s",
         "per_streamed_chunk_s")
OPTIONAL_TERMS = ("batched_decode_s", "per_streamed_chunk_s")  # 0 when a profile written before it has none


@dataclass(frozen=True)
class StepPoint:
    """One measured step (or the median of several alike): its composition and its seconds."""

    prefill_tokens: int  # new prompt tokens in the step
    decode_rows: int  # requests that each add one token
    context_tokens: int  # tokens already in KV read by the step's attention (see module docstring)
    seconds: float
    streamed_chunks: int = 0  # prefill chunks whose KV streamed out during the step (module docstring)

    def features(self) -> list[float]:
        return [1.0, float(self.prefill_tokens), float(self.decode_rows), float(self.context_tokens),
                1.0 if self.decode_rows >= 2 else 0.0, float(self.streamed_chunks)]


def context_read(chunks: list[tuple[int, int]], decode_contexts: list[int]) -> int:
    """Tokens the step's attention reads from KV: chunks (new, already in KV) read their past; a lone decode
    row its context, 2+ rows (the batched path, padded) rows x the longest context."""
    rows = len(decode_contexts)
    decode = rows * max(decode_contexts) if rows >= 2 else sum(decode_contexts)
    return decode + sum(past for _, past in chunks)


@dataclass(frozen=True)
class StepModel:
    overhead_s: float
    per_prefill_token_s: float
    per_decode_row_s: float
    per_context_token_s: float
    batched_decode_s: float = 0.0  # per step with 2+ decode rows (the batched decode path)
    per_streamed_chunk_s: float = 0.0  # per prefill chunk whose KV streams out during the pass
    fit_max_rel_error: float = 0.0  # worst |fit - measured| / measured over the points it was fitted to
    fit_median_rel_error: float = 0.0  # median of the same
    fit_points: int = 0  # how many points it was fitted to

    def seconds(self, prefill_tokens: int, decode_rows: int, context_tokens: int, streamed_chunks: int = 0) -> float:
        return (self.overhead_s + self.per_prefill_token_s * prefill_tokens + self.per_decode_row_s * decode_rows
                + self.per_context_token_s * context_tokens + (self.batched_decode_s if decode_rows >= 2 else 0.0)
                + self.per_streamed_chunk_s * streamed_chunks)

    def step_s(self, chunks: list[tuple[int, int]], decode_contexts: list[int], streamed_chunks: int = 0) -> float:
        """The simulator's interface (glitches/sim/gpu_batching.py): chunks (new tokens, tokens already in KV);
        one context (tokens) per decode row; streamed_chunks of the chunks send their KV out during the pass."""
        new = sum(n for n, _ in chunks)
        return self.seconds(new, len(decode_contexts), context_read(chunks, decode_contexts), streamed_chunks)

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in TERMS} | {
            "fit_max_rel_error": self.fit_max_rel_error, "fit_median_rel_error": self.fit_median_rel_error,
            "fit_points": self.fit_points}

    @classmethod
    def from_json(cls, spec: dict, where: str) -> StepModel:
        try:
            values = {name: float(spec[name] if name not in OPTIONAL_TERMS else spec.get(name, 0.0))
                      for name in TERMS}
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{where}: step model needs numbers {', '.join(TERMS)} ({exc})") from exc
        if any(v < 0 for v in values.values()) or values["overhead_s"] + values["per_decode_row_s"] <= 0:
            raise InvalidArgument(f"{where}: step model coefficients must be >= 0 s and a step must cost time")
        return cls(**values, fit_max_rel_error=float(spec.get("fit_max_rel_error", 0.0)),
                   fit_median_rel_error=float(spec.get("fit_median_rel_error", 0.0)),
                   fit_points=int(spec.get("fit_points", 0)))


def fit_step_model(points: list[StepPoint]) -> StepModel:
    """Least squares with every coefficient >= 0 (active set: a negative one is pinned at 0, then refit)."""
    if len(points) < 2:
        raise InvalidArgument(f"a step model needs at least 2 measured steps, got {len(points)}")
    x = np.array([p.features() for p in points])  # [points, len(TERMS)]
    y = np.array([p.seconds for p in points])  # [points] seconds
    # relative least squares: every point weighs by 1/seconds, so a long prefill does not drown the decode steps
    w = 1.0 / y
    free = [j for j in range(len(TERMS)) if np.any(x[:, j] != 0) or j == 0]
    coef = np.zeros(len(TERMS))
    while free:
        sol, *_ = np.linalg.lstsq(x[:, free] * w[:, None], y * w, rcond=None)
        if (sol >= 0).all():
            coef[:] = 0.0
            coef[free] = sol
            break
        free = [j for j, c in zip(free, sol) if c > 0]  # drop the negative ones and refit the rest
    relative = np.abs(x @ coef - y) / y
    return StepModel(*map(float, coef), fit_max_rel_error=float(np.max(relative)),
                     fit_median_rel_error=float(np.median(relative)), fit_points=len(points))
