"""A worker's own measure of its speed, for the registry record (issue #27 item 3: reuse routing by measured speeds).

Exponentially weighted means of the work each sample did and of the seconds it took; the speed is their ratio,
so a long prefill weighs more than a short one (a mean of per-sample rates would let a few-token step's fixed
overhead count as much as a thousand-token prefill). 0 until the first sample: the scheduler then uses its
cluster-wide figure (glitches/scheduler/reuse_cost.py).
"""

from __future__ import annotations

import threading

DEFAULT_WEIGHT = 0.2  # the newest sample's weight: the mean follows a change within about ten samples


class SpeedMeter:
    """Work and seconds of recent samples (thread-safe: the step thread adds, the heartbeat reads)."""

    def __init__(self, weight: float = DEFAULT_WEIGHT):
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        self.weight = weight
        self._m = [0.0] * len(self._moments(0.0, 0.0))  # weighted means: work (tokens, steps), seconds, ...
        self._samples = 0
        self._lock = threading.Lock()

    @staticmethod
    def _moments(work: float, seconds: float) -> tuple[float, ...]:
        """What one sample adds to the weighted means (a subclass may track more)."""
        return work, seconds

    def add(self, work: float, seconds: float) -> None:
        """One sample: `work` units done in `seconds`; ignored when either is not positive."""
        if work <= 0 or seconds <= 0:
            return
        with self._lock:
            w = 1.0 if self._samples == 0 else self.weight
            for i, x in enumerate(self._moments(work, seconds)):
                self._m[i] += w * (x - self._m[i])
            self._samples += 1

    @property
    def samples(self) -> int:
        return self._samples

    def per_second(self) -> float:
        """Work per second (a GPU's prefill tokens/s); 0.0 before the first sample."""
        with self._lock:
            return self._m[0] / self._m[1] if self._samples else 0.0

    def seconds_per(self) -> float:
        """Seconds per unit of work (a card's seconds per decode step); 0.0 before the first sample."""
        with self._lock:
            return self._m[1] / self._m[0] if self._samples else 0.0


class AffineSpeedMeter(SpeedMeter):
    """seconds = overhead_s + work / rate, fitted by exponentially weighted least squares over recent samples.

    A GPU's prefill pass costs a fixed part (the weights read once, the launch and the step's schedule: tens of
    ms on the CPU stand-in) plus a part per token; a plain ratio of means over a mix of short and long prefills
    mixes the two and misjudges both a 20-token and a 500-token prefill. The fit keeps weighted means of work,
    seconds, work^2 and work x seconds (weight per new sample as SpeedMeter's). While the samples' sizes hardly
    vary (relative spread under MIN_SPREAD) or the fit is not physical (negative overhead or slope), it falls
    back to the ratio of the means with no overhead. Thread-safe.
    """

    MIN_SPREAD = 0.2  # std / mean of the work below which the slope is not trusted

    @staticmethod
    def _moments(work: float, seconds: float) -> tuple[float, ...]:
        return work, seconds, work * work, work * seconds

    def fit(self) -> tuple[float, float]:
        """(overhead_s, rate in work/s); (0.0, 0.0) before the first sample."""
        with self._lock:
            if not self._samples:
                return 0.0, 0.0
            mean_w, mean_s, mean_ww, mean_ws = self._m
        var = mean_ww - mean_w * mean_w
        if var > (self.MIN_SPREAD * mean_w) ** 2:
            slope = (mean_ws - mean_w * mean_s) / var  # seconds per unit of work
            overhead = mean_s - slope * mean_w
            if slope > 0 and overhead >= 0:
                return overhead, 1.0 / slope
        return 0.0, mean_w / mean_s
