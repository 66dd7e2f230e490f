"""XRT's no-op shim (XCL_EMULATION_MODE=noop): the real XRT host path with no card, and its kernel stand-in.

Under the no-op shim (XRT 2.13's src/runtime_src/core/pcie/noop/shim.cpp) XRT really parses the xclbin,
answers xrtKernelArgGroupId, allocates buffers (host memory: xrtBOMap's address is also the "device" copy,
xrtBOSync copies nothing) and moves runs through their states; kernels compute nothing. So that a step has
logits, the worker then runs the decode kernel's C simulation (glitches/fpga_worker/kernel_csim.py) on the buffers'
own bytes, after XRT reports the run COMPLETED. Everything it produces is emulated and says so.

A slow or hung kernel: the shim completes each run `Runtime.noop_completion_delay_us` after its start
(xrt.ini, found through $XRT_INI_PATH), on one completer thread, in start order.
"""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import numpy as np

from glitches.fpga_worker.xrt_capi import Bo
from glitches.services.runtime.errors import FailedPrecondition

NOOP_SHIM = "libxrt_noop.so.2"
LABEL = "XRT no-op shim, no card: kernel C-simulated on the buffers' bytes (emulated)"


def system_noop_shim() -> Path | None:
    """Where the loader finds libxrt_noop.so.2 (Debian's libxrt1 puts it in the multiarch lib folder), or None."""
    try:
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        listing = ""
    for line in listing.splitlines():
        if line.strip().startswith(NOOP_SHIM + " ") and "=>" in line:
            return Path(line.split("=>", 1)[1].strip())
    return None


def make_xilinx_xrt(folder: Path) -> Path:
    """A folder to use as $XILINX_XRT for the no-op shim on a distribution install (XRT 2.13 looks for
    $XILINX_XRT/lib/libxrt_noop.so.2, which Debian's /usr/lib/<triplet>/ layout does not match): lib/ with a
    link to the system's shim. FailedPrecondition when no shim is installed."""
    shim = system_noop_shim()
    if shim is None:
        raise FailedPrecondition(f"{NOOP_SHIM} is not installed (Debian: apt-get install libxrt1)")
    lib = folder / "lib"
    lib.mkdir(parents=True, exist_ok=True)
    link = lib / NOOP_SHIM
    if not link.exists():
        link.symlink_to(shim)
    return folder


class CsimOnBuffers:
    """The decode kernel, C-simulated, run on the buffers XRT allocated: args (512 bytes), 32 PCs, result."""

    def __init__(self):
        from glitches.fpga_worker import kernel_csim

        self._csim = kernel_csim
        kernel_csim.library()  # FailedPrecondition naming `make setup` now, not at the first step

    def run(self, args: Bo, hbm: list[Bo], result: Bo) -> None:
        """Compute one step on the buffers' host bytes (which are the device bytes under the no-op shim)."""
        args_bytes = ctypes.string_at(args.host_address(), args.size)
        out = np.ctypeslib.as_array(ctypes.cast(result.host_address(), ctypes.POINTER(ctypes.c_uint8)),
                                    shape=(result.size,))
        self._csim.step_raw(args_bytes, [bo.host_address() for bo in hbm], out)
