"""The real XRT library under its no-op shim, for tests: skip with the reason where XRT is missing, or fail
where GLITCHES_REQUIRE_XRT=1 (set by .ci/run, so CI never skips these silently).

XRT reads XCL_EMULATION_MODE and xrt.ini once per process, so `noop_environment` sets them for the whole
pytest process (no other test uses XRT); a test that needs another xrt.ini (a slow shim) runs a subprocess.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REQUIRE_ENV = "GLITCHES_REQUIRE_XRT"


def missing_reason() -> str | None:
    """None when XRT's C API and its no-op shim are installed here, else why not."""
    from glitches.fpga_worker import xrt_capi
    from glitches.fpga_worker.xrt_noop import system_noop_shim

    reason = xrt_capi.installed()
    if reason is None and system_noop_shim() is None and not os.environ.get("XILINX_XRT"):
        reason = "XRT's no-op shim libxrt_noop.so.2 is not installed (Debian: apt-get install libxrt1)"
    return reason


def require_xrt() -> None:
    """Skip (or fail, under GLITCHES_REQUIRE_XRT=1) when the real XRT runtime is missing."""
    reason = missing_reason()
    if reason:
        message = f"the real XRT runtime is needed: {reason} (.ci/run installs libxrt1 libxrt-dev libxrt-utils)"
        if os.environ.get(REQUIRE_ENV) == "1":
            pytest.fail(f"{REQUIRE_ENV}=1 but {message}")
        pytest.skip(message)


def noop_environment(folder: Path) -> dict[str, str]:
    """Environment for XRT's no-op shim: XCL_EMULATION_MODE=noop and XILINX_XRT at a folder whose lib/ holds
    the shim (made under `folder` from the system's, unless XILINX_XRT already has one)."""
    from glitches.fpga_worker.xrt_noop import NOOP_SHIM, make_xilinx_xrt

    root = os.environ.get("XILINX_XRT", "")
    if not (root and (Path(root) / "lib" / NOOP_SHIM).is_file()):
        root = str(make_xilinx_xrt(folder))
    return {"XCL_EMULATION_MODE": "noop", "XILINX_XRT": root}
