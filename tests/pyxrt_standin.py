"""A STAND-IN for pyxrt (XRT's Python bindings), for tests only: it is not XRT and drives no card.

It implements the part of pyxrt's API surface the `xrt` backend uses (device, xclbin,
hw_context, kernel with group_id, bo with write/read/sync/map/size/address, run with
wait/state, xclBOSyncDirection, ert_cmd_state, xrt_info_device, enumerate_devices),
records every call on the device object (`device.calls`), and executes a kernel run by
running the kernel source, C-simulated (fpga_worker/kernel_csim.py, built by `make setup`),
on the bytes of the "HBM" buffers, per docs/fpga-kernel-abi.md (ABI v2):

- every bo has host memory (write/read/map) and device memory; only `sync` copies
  between them, so a missing or mis-sized sync shows up as wrong results;
- a run takes (args bo, 32 PC bos, result bo) and checks each bo's memory group
  against `kernel.group_id(arg)`; the kernel reads the image and the KV pages from the
  PC bytes, writes the step's K/V into them, and the result into the result bo.
"""

from __future__ import annotations

import enum
import json
import threading
from pathlib import Path

import numpy as np

STAND_IN = True  # the xrt backend reports emulated=True when it runs on this module
XCL_BO_FLAGS_NONE = 0
CARDS = ("0000:3b:00.1",)  # the stand-in's one "card"
KERNEL_ARGS = 34  # glitches_decode(args, hbm[0..31], result)
_GROUP_OF_ARG = [100] + list(range(32)) + [101]  # memory group of each argument: PLRAM, HBM[0..31], PLRAM


class xclBOSyncDirection(enum.IntEnum):
    XCL_BO_SYNC_BO_TO_DEVICE = 0
    XCL_BO_SYNC_BO_FROM_DEVICE = 1


class ert_cmd_state(enum.IntEnum):
    ERT_CMD_STATE_NEW = 1
    ERT_CMD_STATE_COMPLETED = 4
    ERT_CMD_STATE_ERROR = 5


class xrt_info_device(enum.IntEnum):
    bdf = 0
    name = 5
    electrical = 8
    thermal = 9
    memory = 11


def enumerate_devices() -> int:
    return len(CARDS)


class uuid:
    def __init__(self, text: str):
        self._text = text

    def to_string(self) -> str:
        return self._text

    def __repr__(self):
        return f"<pyxrt stand-in uuid {self._text} (stand-in, not XRT)>"


class device:
    def __init__(self, which):
        if isinstance(which, int):
            if not 0 <= which < len(CARDS):
                raise RuntimeError(f"No such device with index '{which}'")  # what XRT raises, in spirit
            self.bdf = CARDS[which]
        elif which in CARDS:
            self.bdf = which
        else:
            raise RuntimeError(f"No device with BDF '{which}'")
        self.calls: list[tuple] = []  # every call made on this device and its objects, in order
        self.power_w, self.temperature_c = 23.5, 41  # what its sensors report (a test may change them)
        self.xclbin: xclbin | None = None
        self.lock = threading.Lock()

    def register_xclbin(self, binary: "xclbin") -> uuid:
        self.calls.append(("register_xclbin", binary.path))
        self.xclbin = binary
        return binary.get_uuid()

    def get_info(self, key: xrt_info_device) -> str:
        self.calls.append(("get_info", key.name))
        return {
            xrt_info_device.bdf: self.bdf,
            xrt_info_device.name: "xilinx_u280 stand-in",
            xrt_info_device.electrical: json.dumps({"power_consumption_watts": str(self.power_w)}),
            xrt_info_device.thermal: json.dumps({"thermals": [
                {"location_id": "fpga0", "description": "FPGA", "is_present": "true",
                 "temp_C": str(self.temperature_c)}]}),
            xrt_info_device.memory: json.dumps({"board": {"memory": {"memories": [
                {"type": "MEM_HBM", "tag": f"HBM[{i}]", "range_bytes": hex(256 << 20)} for i in range(32)]}}}),
        }[key]

    def __repr__(self):
        return f"<pyxrt stand-in device {self.bdf} (stand-in, not XRT)>"


class xclbin:
    """An xclbin file for the stand-in: any file; it declares the one kernel glitches_decode."""

    class xclbinkernel:
        def __init__(self, name: str, args: int):
            self._name, self._args = name, args

        def get_name(self) -> str:
            return self._name

        def get_num_args(self) -> int:
            return self._args

    def __init__(self, path: str):
        self.path = str(path)
        self._text = Path(path).read_bytes()[:64].decode(errors="replace")

    def get_kernels(self):
        return [xclbin.xclbinkernel("glitches_decode", KERNEL_ARGS)]

    def get_uuid(self) -> uuid:
        return uuid("57a0d1e5-0000-4000-8000-" + f"{abs(hash(self._text)) % 10**12:012d}")

    def __repr__(self):
        return f"<pyxrt stand-in xclbin {self.path} (stand-in, not XRT)>"


class hw_context:
    def __init__(self, dev: device, xclbin_uuid: uuid):
        dev.calls.append(("hw_context", xclbin_uuid.to_string()))
        self.device = dev

    def __repr__(self):
        return "<pyxrt stand-in hw_context (stand-in, not XRT)>"


class bo:
    class flags(enum.IntEnum):
        normal = 0

    normal = flags.normal

    def __init__(self, dev: device, size: int, flags: "bo.flags", group: int):
        self.device, self._size, self.group = dev, size, group
        self.host = np.zeros(size, dtype=np.uint8)
        self.device_memory = np.zeros(size, dtype=np.uint8)
        self.index = sum(1 for c in dev.calls if c[0] == "bo")
        dev.calls.append(("bo", self.index, size, int(flags), group))

    def write(self, data, seek: int) -> None:
        raw = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
        if seek + raw.size > self._size:
            raise RuntimeError(f"bo write of {raw.size} bytes at {seek} runs past its {self._size} bytes")
        self.host[seek: seek + raw.size] = raw
        self.device.calls.append(("write", self.index, seek, raw.size))

    def read(self, size: int, skip: int) -> np.ndarray:
        self.device.calls.append(("read", self.index, skip, size))
        return self.host[skip: skip + size].view(np.int8).copy()  # pyxrt returns a char array

    def sync(self, direction: xclBOSyncDirection, size: int | None = None, offset: int = 0) -> None:
        size = self._size - offset if size is None else size
        if offset + size > self._size:
            raise RuntimeError(f"bo sync of {size} bytes at {offset} runs past its {self._size} bytes")
        with self.device.lock:
            if direction == xclBOSyncDirection.XCL_BO_SYNC_BO_TO_DEVICE:
                self.device_memory[offset: offset + size] = self.host[offset: offset + size]
            else:
                self.host[offset: offset + size] = self.device_memory[offset: offset + size]
        self.device.calls.append(("sync", self.index, direction.name, size, offset))

    def map(self) -> memoryview:
        return memoryview(self.host)

    def size(self) -> int:
        return self._size

    def address(self) -> int:
        return 0x4000000000 + self.group * (1 << 28)

    def __repr__(self):
        return f"<pyxrt stand-in bo #{self.index} {self._size} bytes group {self.group} (stand-in, not XRT)>"


class run:
    def __init__(self, state: ert_cmd_state):
        self._state = state

    def wait(self, timeout_ms: int = 0) -> ert_cmd_state:
        return self._state

    def state(self) -> ert_cmd_state:
        return self._state

    def __repr__(self):
        return f"<pyxrt stand-in run {self._state.name} (stand-in, not XRT)>"


class kernel:
    def __init__(self, context: hw_context, name: str):
        self.device, self.name = context.device, name
        self.device.calls.append(("kernel", name))

    def group_id(self, arg: int) -> int:
        return _GROUP_OF_ARG[arg]

    def __call__(self, *args) -> run:
        self.device.calls.append(("run", tuple(a.index for a in args)))
        if len(args) != KERNEL_ARGS or any(a.group != self.group_id(i) for i, a in enumerate(args)):
            raise RuntimeError("glitches_decode takes (args, hbm[0..31], result) bos in their memory groups")
        with self.device.lock:
            self._execute(args[0], args[1:-1], args[-1])
        return run(ert_cmd_state.ERT_CMD_STATE_COMPLETED)

    def _execute(self, args_bo: bo, hbm, result_bo: bo) -> None:
        """The kernel source, C-simulated (fpga_worker/kernel_csim.py), on the buffers' own bytes (ABI v2)."""
        from fpga_worker import kernel_csim

        kernel_csim.step_raw(args_bo.device_memory.tobytes(), [pc.device_memory.ctypes.data for pc in hbm],
                             result_bo.device_memory)

    def __repr__(self):
        return f"<pyxrt stand-in kernel {self.name} (stand-in, not XRT)>"
