"""Power and temperature of the decode card, read live (at most once per `max_age_s`) for each metrics scrape.

Where a reading comes from is the backend's business (DecodeBackend.sensors()):
- an `xrt` card reads its own sensors with XRT's `xbutil examine --report electrical thermal --format JSON`
  (electrical.power_consumption_watts; thermals[].temp_C of the present sensors), a measurement; XRT writes
  "N/A" (or "NA") for a figure the platform lacks, which reads as None, never as a number, and
  {"msg": "No sensors present"} in place of the thermals list on a card without them;
- an emulated card has no sensors: it reports the power its U280 would draw by the model below,
  `modeled=True`, exported under its own metric name (glitches_emulated_device_power_watts) so it is
  never mistaken for a measurement, and no temperature (nothing models one).

Power model of an emulated card, watts: IDLE_POWER_W + (DECODE_POWER_W - IDLE_POWER_W) * busy, where
`busy` is the share of the last `window_s` seconds its kernel spent stepping (BusyMeter).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from glitches.decode_contract.device import NO_READING, SensorReading
from glitches.services.runtime import metrics

DECODE_POWER_W = 46.0  # GLITCHES slides: an Alveo U280 running FlightLLM decode, watts
IDLE_POWER_W = 35.0  # not in the paper: an assumption (as glitches/sim/profiles/devices.json's u280 idle), watts
MAX_AGE_S = 1.0  # a reading is reused for this long, so scrapes and Info calls do not hammer the card


def modeled_power_w(busy_fraction: float) -> float:
    """The emulated U280's modeled board power, watts, for the share of time it is stepping (0..1)."""
    return IDLE_POWER_W + (DECODE_POWER_W - IDLE_POWER_W) * min(1.0, max(0.0, busy_fraction))


def modeled_reading(meter: BusyMeter) -> SensorReading:
    """An emulated card's reading: modeled power from its recent stepping, no temperature."""
    return SensorReading(power_w=modeled_power_w(meter.fraction()), modeled=True)


def sensor_number(value) -> float | None:
    """A figure from an XRT report: a finite number, or None for "N/A", "NA", "", None or anything else."""
    try:
        number = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def xrt_reading(report: dict) -> SensorReading:
    """A measured reading from one device's report (its "electrical" object and "thermals" list)."""
    power = sensor_number(report.get("electrical", {}).get("power_consumption_watts"))
    temps = [sensor_number(t.get("temp_C")) for t in report.get("thermals", [])
             if isinstance(t, dict) and str(t.get("is_present", "true")).lower() == "true"]
    temps = [t for t in temps if t is not None]
    return SensorReading(power_w=power, temperature_c=max(temps) if temps else None)


def _device_report(tree) -> dict:
    """The object holding "electrical" / "thermals" in xbutil's JSON, wherever its schema nests it."""
    if isinstance(tree, dict):
        if "electrical" in tree or "thermals" in tree:
            return tree
        children = tree.values()
    elif isinstance(tree, list):
        children = tree
    else:
        return {}
    for child in children:
        found = _device_report(child)
        if found:
            return found
    return {}


def read_xbutil(bdf: str, timeout_s: float = 5.0) -> SensorReading:
    """Card `bdf`'s power and temperature from `xbutil examine`; NO_READING when xbutil fails or is missing."""
    own = os.path.join(os.environ.get("XILINX_XRT", ""), "bin", "xbutil")  # Xilinx's install: $XILINX_XRT/bin
    xbutil = own if os.path.isfile(own) else shutil.which("xbutil")
    if xbutil is None:
        return NO_READING
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "report.json")
        try:
            # no check on the exit status: when one report fails XRT still writes the whole file, then exits
            # non-zero (produce_reports' operation_canceled), so the figures that did read are kept
            subprocess.run([xbutil, "examine", "--device", bdf, "--report", "electrical", "thermal", "--format",
                            "JSON", "--output", out], capture_output=True, timeout=timeout_s)
            with open(out) as file:
                return xrt_reading(_device_report(json.load(file)))
        except (OSError, subprocess.SubprocessError, ValueError):
            return NO_READING


class BusyMeter:
    """How much of the last `window_s` seconds a card spent in steps, wall clock. Steps are one at a
    time (each emulator holds its compute lock around `busy()`), so their spans never overlap."""

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._spans: deque[tuple[float, float]] = deque()  # (start, end) of finished steps, seconds
        self._running_since: float | None = None  # start of the step in progress
        self._lock = threading.Lock()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Count the time inside this block as stepping."""
        with self._lock:
            self._running_since = self._clock()
        try:
            yield
        finally:
            with self._lock:
                self._spans.append((self._running_since, self._clock()))
                self._running_since = None

    def fraction(self) -> float:
        """Share of the last window_s spent stepping, 0..1."""
        now = self._clock()
        since = now - self.window_s
        with self._lock:
            while self._spans and self._spans[0][1] <= since:
                self._spans.popleft()
            spans = [*self._spans, *([(self._running_since, now)] if self._running_since is not None else [])]
        busy_s = sum(max(0.0, end - max(start, since)) for start, end in spans)
        return min(1.0, busy_s / self.window_s)


class CachedSensors:
    """One backend's readings, read again when the last one is older than max_age_s (thread-safe)."""

    def __init__(self, read: Callable[[], SensorReading], max_age_s: float = MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic):
        self._read = read
        self.max_age_s = max_age_s
        self._clock = clock
        self._last = NO_READING
        self._read_at = -math.inf
        self._lock = threading.Lock()

    def reading(self) -> SensorReading:
        with self._lock:
            if self._clock() - self._read_at >= self.max_age_s:
                self._last = self._read()
                self._read_at = self._clock()
            return self._last


def publish_sensors(role: str, device: str, sensors: CachedSensors) -> None:
    """Gauges read at each scrape: measured power and temperature (glitches_device_*) for a real card's
    sensors, modeled power (glitches_emulated_device_power_watts) for an emulated card. A figure the
    first reading lacks is not exported; one that goes missing later reads NaN."""
    first = sensors.reading()

    def value(pick: Callable[[SensorReading], float | None]) -> Callable[[], float]:
        def read() -> float:
            figure = pick(sensors.reading())
            return math.nan if figure is None else figure
        return read

    if first.modeled:
        if first.power_w is not None:
            metrics.EMULATED_POWER.labels(device=device).set_function(value(lambda r: r.power_w))
        return
    if first.power_w is not None:
        metrics.POWER.of(role).labels(device=device).set_function(value(lambda r: r.power_w))
    if first.temperature_c is not None:
        metrics.TEMPERATURE.of(role).labels(device=device).set_function(value(lambda r: r.temperature_c))
