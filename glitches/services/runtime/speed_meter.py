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
        self._work = 0.0  # weighted mean work per sample (tokens, steps)
        self._seconds = 0.0  # weighted mean seconds per sample
        self._samples = 0
        self._lock = threading.Lock()

    def add(self, work: float, seconds: float) -> None:
        """One sample: `work` units done in `seconds`; ignored when either is not positive."""
        if work <= 0 or seconds <= 0:
            return
        with self._lock:
            w = 1.0 if self._samples == 0 else self.weight
            self._work += w * (work - self._work)
            self._seconds += w * (seconds - self._seconds)
            self._samples += 1

    @property
    def samples(self) -> int:
        return self._samples

    def per_second(self) -> float:
        """Work per second (a GPU's prefill tokens/s); 0.0 before the first sample."""
        with self._lock:
            return self._work / self._seconds if self._samples else 0.0

    def seconds_per(self) -> float:
        """Seconds per unit of work (a card's seconds per decode step); 0.0 before the first sample."""
        with self._lock:
            return self._seconds / self._work if self._samples else 0.0
