"""`xbutil examine --report electrical thermal --format JSON --output FILE` read end to end (sensors.read_xbutil).

No card and no working xbutil here (Debian's libxrt-utils ships wrappers without the programs), so an
executable stands in for xbutil and writes the file. The files' shapes are XRT's own, recorded from its
sources (Xilinx/XRT, read for this test), never made up:
- the file: XBUtilities::produce_reports (src/runtime_src/core/tools/common/XBUtilities.cpp):
  {"schema_version": {"schema", "creation_date"}, "devices": [{"interface_type": "pcie", "device_id": BDF,
  <one child per report>}]}; it writes the whole file even when a report throws, then exits non-zero
  (operation_canceled);
- electrical and thermals: xrt_core::sensor (src/runtime_src/core/common/sensor.cpp): boost property trees, so
  every value is a string; legacy sensors put temp_C "0" with is_present "false" (and error_msg when the query
  threw); power_consumption_* are "N/A" when unreadable; the data-driven model writes the thermals as
  {"msg": "No sensors present"} when the card lists none.
"""

from __future__ import annotations

import json
import stat

import pytest

from glitches.decode_contract.device import SensorReading
from glitches.fpga_worker.sensors import _device_report, read_xbutil, xrt_reading

BDF = "0000:3b:00.1"


def _rail(rail_id: str, description: str, volts: str, amps: str) -> dict:
    return {"id": rail_id, "description": description,
            "voltage": {"volts": volts, "is_present": "true" if volts != "0.000" else "false"},
            "current": {"amps": amps, "is_present": "true" if amps != "0.000" else "false"}}


def _temp(location: str, description: str, temp_c: str, error: str | None = None) -> dict:
    entry = {"location_id": location, "description": description, "temp_C": temp_c,
             "is_present": "true" if temp_c != "0" else "false"}
    return {"error_msg": error, **entry} if error else entry


LEGACY = {  # an XRT 2.13-era Alveo card: named sensors (read_legacy_*), one of them absent
    "schema_version": {"schema": "JSON", "creation_date": "Sat Dec  5 10:00:00 2026 GMT"},
    "devices": [{
        "interface_type": "pcie", "device_id": BDF,
        "electrical": {"power_rails": [_rail("12v_aux", "12 Volts Auxillary", "12.121", "0.853"),
                                       _rail("12v_pex", "12 Volts PCI Express", "12.104", "1.071"),
                                       _rail("vccint", "Internal FPGA Vcc", "0.851", "0.000")],
                       "power_consumption_max_watts": "225", "power_consumption_watts": "23.354116",
                       "power_consumption_warning": "N/A"},
        "thermals": [_temp("pcb_top_front", "PCB Top Front", "38"), _temp("fpga0", "FPGA", "47"),
                     _temp("fpga_hbm", "FPGA HBM", "45"),
                     _temp("cage_temp_0", "Cage0", "0", "Operation not supported")],
    }],
}
NO_SENSORS = {  # data-driven model (sensor::read_electrical / read_thermals), a card that lists no sensors
    "schema_version": {"schema": "JSON", "creation_date": "Sat Dec  5 10:00:00 2026 GMT"},
    "devices": [{"interface_type": "pcie", "device_id": BDF,
                 "electrical": {"msg": "No sensors present"}, "thermals": {"msg": "No sensors present"}}],
}
NO_TOTAL_POWER = {  # data-driven electrical (read_data_driven_electrical) without a "Total Power" sensor
    "power_rails": [{"id": "12v_pex", "description": "12v_pex", "voltage": {"volts": "12.100", "max": "12.200",
                                                                            "average": "12.100", "is_present": "true"},
                     "current": {"is_present": "false"}}],
    "power_consumption_watts": "N/A", "power_consumption_max_watts": "N/A", "power_consumption_warning": "N/A",
}


def test_a_recorded_legacy_report_reads_power_and_the_hottest_present_sensor():
    assert xrt_reading(_device_report(LEGACY)) == SensorReading(power_w=23.354116, temperature_c=47.0)


def test_a_card_without_sensors_reads_as_missing_not_an_error():
    assert xrt_reading(_device_report(NO_SENSORS)) == SensorReading(power_w=None, temperature_c=None)
    report = {"electrical": NO_TOTAL_POWER, "thermals": [_temp("fpga0", "FPGA", "52")]}
    assert xrt_reading(report) == SensorReading(power_w=None, temperature_c=52.0)


def _fake_xbutil(folder, report: dict, exit_code: int):
    """An executable in xbutil's place: checks its arguments, writes `report` to --output, exits exit_code."""
    script = folder / "bin" / "xbutil"
    script.parent.mkdir(parents=True)
    want = ["examine", "--device", BDF, "--report", "electrical", "thermal", "--format", "JSON", "--output"]
    script.write_text(f"""#!/usr/bin/env python3
import sys
args = sys.argv[1:]
if args[:-1] != {want!r}:
    sys.exit("unexpected arguments: " + " ".join(args))
with open(args[-1], "w") as out:
    out.write({json.dumps(json.dumps(report, indent=4))})
sys.exit({exit_code})
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("exit_code", [0, 1])
def test_read_xbutil_takes_the_file_xbutil_wrote_even_when_a_report_failed(monkeypatch, tmp_path, exit_code):
    _fake_xbutil(tmp_path, LEGACY, exit_code)
    monkeypatch.setenv("XILINX_XRT", str(tmp_path))  # $XILINX_XRT/bin/xbutil, as Xilinx's install lays it out
    assert read_xbutil(BDF) == SensorReading(power_w=23.354116, temperature_c=47.0)


def test_read_xbutil_on_a_card_without_sensors_gives_no_figures(monkeypatch, tmp_path):
    _fake_xbutil(tmp_path, NO_SENSORS, 0)
    monkeypatch.setenv("XILINX_XRT", str(tmp_path))
    assert read_xbutil(BDF) == SensorReading(power_w=None, temperature_c=None)
