"""FPGA power and temperature, read live per scrape and cached about a second (glitches/fpga_worker/sensors.py):
an emulated card's modeled power follows its stepping and is exported under its own, labelled name;
an xrt card's measured sensors (XRT's report JSON, "N/A" figures included) reach glitches_device_* and change
as the card's do."""

from __future__ import annotations

import math
import time

import pytest
import torch

from glitches.decode_contract.device import SensorReading
from glitches.fpga_worker.sensors import (DECODE_POWER_W, IDLE_POWER_W, BusyMeter, CachedSensors, modeled_power_w,
                                 publish_sensors, sensor_number, xrt_reading)
from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
from glitches.fpga_worker.weight_image import build_from_state_dict
from glitches.services.runtime import metrics
from tests.fpga_helpers import prefill_cache, tiny_llama

HBM = 32 * 1024 * 1024  # 1 MiB per pseudo-channel: the tiny image and a few KV regions
FPGA_REGISTRY = metrics.REGISTRIES["fpga-worker"]


class Clock:
    def __init__(self):
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def _sample(name: str, device: str) -> float | None:
    return FPGA_REGISTRY.get_sample_value(name, {"device": device})


@pytest.fixture(scope="module")
def image():
    model = tiny_llama()
    return build_from_state_dict(model.config, model.state_dict())


def test_busy_meter_counts_the_last_window_only():
    clock = Clock()
    meter = BusyMeter(window_s=1.0, clock=clock)
    assert meter.fraction() == 0.0
    for _ in range(3):  # three 0.1 s steps, 0.1 s apart
        with meter.busy():
            clock.now_s += 0.1
        clock.now_s += 0.1
    assert meter.fraction() == pytest.approx(0.3)
    with meter.busy():  # a step in progress counts up to now
        clock.now_s += 0.2
        assert meter.fraction() == pytest.approx(0.5)
    clock.now_s += 0.35  # steps at 0.0-0.1, 0.2-0.3, 0.4-0.5, 0.6-0.8; the window is now 0.15-1.15
    assert meter.fraction() == pytest.approx(0.4)
    clock.now_s += 0.1  # window 0.25-1.25: half of the second step is left
    assert meter.fraction() == pytest.approx(0.35)
    clock.now_s += 5
    assert meter.fraction() == 0.0


def test_modeled_power_spans_idle_to_decode():
    assert modeled_power_w(0.0) == IDLE_POWER_W == 35.0
    assert modeled_power_w(1.0) == DECODE_POWER_W == 46.0
    assert modeled_power_w(0.5) == pytest.approx(40.5) and modeled_power_w(7.0) == DECODE_POWER_W


def test_cached_sensors_read_at_most_once_per_max_age():
    clock, reads = Clock(), []

    def read() -> SensorReading:
        reads.append(clock.now_s)
        return SensorReading(power_w=float(len(reads)))
    sensors = CachedSensors(read, max_age_s=1.0, clock=clock)
    assert sensors.reading().power_w == 1.0
    clock.now_s += 0.9
    assert sensors.reading().power_w == 1.0 and len(reads) == 1
    clock.now_s += 0.1
    assert sensors.reading().power_w == 2.0 and len(reads) == 2


def _decode_steps(card, image, steps: int) -> None:
    model = tiny_llama()
    ids = torch.randint(0, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    card.reserve("r", 8 + steps)
    for layer, (key, value) in enumerate(prefill_cache(model, ids)):
        card.write_kv("r", layer, 0, key, value)
    card.seal("r", 8)
    token = int(ids[0, -1])
    for position in range(8, 8 + steps):
        token = int(torch.argmax(card.step("r", token, position)))
    card.release("r")


def test_emulated_card_reports_modeled_power_live_and_labelled(image):
    card = W4A8EmulatedCard(image, HBM)
    idle = card.sensors()
    assert idle == SensorReading(power_w=IDLE_POWER_W, temperature_c=None, modeled=True)
    publish_sensors("fpga-worker", "emu-sensors-test", CachedSensors(card.sensors, max_age_s=0.05))
    assert _sample("glitches_emulated_device_power_watts", "emu-sensors-test") == IDLE_POWER_W
    assert _sample("glitches_device_power_watts", "emu-sensors-test") is None  # never as a measurement
    assert _sample("glitches_device_temperature_celsius", "emu-sensors-test") is None

    started = time.monotonic()
    _decode_steps(card, image, 20)
    stepping_s = time.monotonic() - started
    time.sleep(0.06)  # past the cache's age
    busy = card.sensors()
    assert busy.modeled and IDLE_POWER_W < busy.power_w <= DECODE_POWER_W
    scraped = _sample("glitches_emulated_device_power_watts", "emu-sensors-test")
    assert IDLE_POWER_W < scraped <= DECODE_POWER_W  # the scrape read it again
    assert scraped <= modeled_power_w(min(1.0, stepping_s) + 0.01)  # no more than the time it really stepped
    time.sleep(1.1)  # a second without steps: idle again
    assert _sample("glitches_emulated_device_power_watts", "emu-sensors-test") == IDLE_POWER_W


def _report(power, *temps, present="true") -> dict:
    """One device's report as XRT's electrical and thermal queries write it (strings throughout)."""
    return {"electrical": {"power_consumption_watts": power, "power_consumption_max_watts": "NA"},
            "thermals": [{"location_id": f"t{i}", "description": "FPGA", "temp_C": t, "is_present": present}
                         for i, t in enumerate(temps)]}


def test_xrt_reports_with_na_or_junk_read_as_missing_never_raise():
    assert xrt_reading(_report("23.5", "41", "38")) == SensorReading(power_w=23.5, temperature_c=41.0)
    assert xrt_reading(_report("N/A", "N/A")) == SensorReading(power_w=None, temperature_c=None)
    assert xrt_reading(_report("NA", "40", present="false")) == SensorReading(power_w=None, temperature_c=None)
    assert xrt_reading({}) == SensorReading(power_w=None, temperature_c=None)
    assert [sensor_number(v) for v in ("12", 7, "", None, "nan", "inf", "1e2", "12 W", {"x": 1})] == \
        [12.0, 7.0, None, None, None, None, 100.0, None, None]


def test_xrt_measured_sensors_are_published_live():
    clock, report = Clock(), {"now": _report("23.5", "41")}
    sensors = CachedSensors(lambda: xrt_reading(report["now"]), max_age_s=1.0, clock=clock)
    publish_sensors("fpga-worker", "xrt-sensors-test", sensors)
    assert _sample("glitches_device_power_watts", "xrt-sensors-test") == 23.5
    assert _sample("glitches_device_temperature_celsius", "xrt-sensors-test") == 41.0
    assert _sample("glitches_emulated_device_power_watts", "xrt-sensors-test") is None
    report["now"] = _report("31.25", "57")
    assert _sample("glitches_device_power_watts", "xrt-sensors-test") == 23.5  # within the cache's second
    clock.now_s += 1.0
    assert _sample("glitches_device_power_watts", "xrt-sensors-test") == 31.25  # read again, live
    assert _sample("glitches_device_temperature_celsius", "xrt-sensors-test") == 57.0
    report["now"] = _report("N/A", "N/A")  # a figure that goes missing later reads NaN, not an exception
    clock.now_s += 1.0
    assert math.isnan(_sample("glitches_device_power_watts", "xrt-sensors-test"))


def test_xbutil_that_cannot_report_gives_no_reading(monkeypatch, tmp_path):
    """No xbutil, or one that writes no report (no card here; Debian's 2.13 wrapper lacks its binary): None."""
    from glitches.fpga_worker.sensors import read_xbutil

    assert read_xbutil("0000:99:00.1") == SensorReading(power_w=None, temperature_c=None)
    monkeypatch.setenv("XILINX_XRT", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert read_xbutil("0000:99:00.1") == SensorReading(power_w=None, temperature_c=None)
