"""A batched GPU step's time from its composition, fitted to measured steps (roofline-shaped, least squares).

    step_s = overhead_s
           + per_prefill_token_s x prefill tokens in the step
           + per_decode_row_s    x decode rows in the step
           + per_context_token_s x context tokens the step's attention reads

Units: every coefficient is seconds (per step, per token, per row, per token of context). "Context
tokens" are, summed over the step, each decode row's context (its KV length) plus each prefill chunk's
tokens already in KV (what that chunk's attention reads besides itself). The shape is a roofline's
once the weights are read once per step (the fixed overhead holds that read and the loop's
schedule/postprocess), the work per new token, per sampled row, and the KV read per context token.

Fit: ordinary least squares over the measured points; a coefficient that comes out negative (no
physical meaning) is fixed at 0 and the rest refitted, until all are >= 0 (a small active-set NNLS).
`fit_step_model` reports the fit's relative error on its own points, so a profile says how well the
shape explains what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from glitches.services.runtime.errors import InvalidArgument

TERMS = ("overhead_s", "per_prefill_token_s", "per_decode_row_s", "per_context_token_s")


@dataclass(frozen=True)
class StepPoint:
    """One measured step (or the median of several alike): its composition and its seconds."""

    prefill_tokens: int  # new prompt tokens in the step
    decode_rows: int  # requests that each add one token
    context_tokens: int  # tokens already in KV read by the step's attention (see module docstring)
    seconds: float

    def features(self) -> list[float]:
        return [1.0, float(self.prefill_tokens), float(self.decode_rows), float(self.context_tokens)]


@dataclass(frozen=True)
class StepModel:
    overhead_s: float
    per_prefill_token_s: float
    per_decode_row_s: float
    per_context_token_s: float
    fit_max_rel_error: float = 0.0  # worst |fit - measured| / measured over the points it was fitted to

    def seconds(self, prefill_tokens: int, decode_rows: int, context_tokens: int) -> float:
        return (self.overhead_s + self.per_prefill_token_s * prefill_tokens + self.per_decode_row_s * decode_rows
                + self.per_context_token_s * context_tokens)

    def step_s(self, chunks: list[tuple[int, int]], decode_contexts: list[int]) -> float:
        """The simulator's interface (glitches/sim/gpu_batching.py): chunks (new tokens, tokens already in KV);
        one context (tokens) per decode row."""
        new = sum(n for n, _ in chunks)
        context = sum(decode_contexts) + sum(past for _, past in chunks)
        return self.seconds(new, len(decode_contexts), context)

    def to_json(self) -> dict:
        return {name: getattr(self, name) for name in TERMS} | {"fit_max_rel_error": self.fit_max_rel_error}

    @classmethod
    def from_json(cls, spec: dict, where: str) -> StepModel:
        try:
            values = {name: float(spec[name]) for name in TERMS}
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"{where}: step model needs numbers {', '.join(TERMS)} ({exc})") from exc
        if any(v < 0 for v in values.values()) or values["overhead_s"] + values["per_decode_row_s"] <= 0:
            raise InvalidArgument(f"{where}: step model coefficients must be >= 0 s and a step must cost time")
        return cls(**values, fit_max_rel_error=float(spec.get("fit_max_rel_error", 0.0)))


def fit_step_model(points: list[StepPoint]) -> StepModel:
    """Least squares with every coefficient >= 0 (active set: a negative one is pinned at 0, then refit)."""
    if len(points) < 2:
        raise InvalidArgument(f"a step model needs at least 2 measured steps, got {len(points)}")
    x = np.array([p.features() for p in points])  # [points, 4]
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
    predicted = x @ coef
    error = float(np.max(np.abs(predicted - y) / y))
    return StepModel(*map(float, coef), fit_max_rel_error=error)
