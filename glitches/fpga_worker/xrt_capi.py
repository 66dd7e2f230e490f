"""XRT's C API (xrt_device.h, xrt_kernel.h, xrt_bo.h) through ctypes: the `xrt` backend's one binding.

Why the C API and not pyxrt: one binding serves XRT 2.13 to the current release (every function below is
declared with the same signature in 2.13's headers and in master's, docs/fpga-host.md; tests/test_xrt_backend.py
checks the installed library exports them and its headers declare them), so there is no pyxrt version split
(register_xclbin / hw_context appear in 2.16, enumerate_devices in 2.17); pyxrt is not on PyPI; and ctypes
releases the GIL around every foreign call, so a kernel run, a BO sync or a wait never stalls the worker's
other Python threads (the KV intake).

Protocol (docs/fpga-host.md):
    device = Device.open("0" or "0000:3b:00.1")    xrtDeviceOpen / xrtDeviceOpenByBDF
    uuid = device.load_xclbin(path)                 xrtDeviceLoadXclbinFile + xrtDeviceGetXclbinUUID
    kernel = Kernel(device, uuid, name)             xrtPLKernelOpen; kernel.group_id(arg): xrtKernelArgGroupId
    bo = Bo(device, size_bytes, group)              xrtBOAlloc (normal, host-backed on the no-op shim)
    bo.write(array, offset) / bo.read(size, offset) xrtBOWrite / xrtBORead: C-contiguous arrays only
    bo.sync(direction, size, offset)                xrtBOSync
    run = Run(kernel, bos); run.start()             xrtRunOpen + xrtRunSetArg per arg + xrtRunStart
    run.wait(timeout_s) -> RunState                 xrtRunWaitFor (TIMEOUT when the run is not done)
    close(): run, bo, kernel, device, in that order (xrtRunClose, xrtBOFree, xrtKernelClose, xrtDeviceClose)

XRT reports a C API failure as a NULL handle or a non-zero return with errno set (and a message on stderr);
each is raised here as XrtError naming the call and errno.
"""

from __future__ import annotations

import ctypes
import enum
import errno as errno_module
import os
import threading
from pathlib import Path

import numpy as np

LIBRARY_NAMES = ("libxrt_coreutil.so.2", "libxrt_coreutil.so")  # the C API's home, XRT 2.13 .. master
SYMBOLS = ("xrtDeviceOpen", "xrtDeviceOpenByBDF", "xrtDeviceClose", "xrtDeviceLoadXclbinFile",
           "xrtDeviceGetXclbinUUID", "xrtPLKernelOpen", "xrtKernelClose", "xrtKernelArgGroupId", "xrtBOAlloc",
           "xrtBOFree", "xrtBOSize", "xrtBOSync", "xrtBOMap", "xrtBOWrite", "xrtBORead", "xrtRunOpen",
           "xrtRunSetArg", "xrtRunStart", "xrtRunWaitFor", "xrtRunState", "xrtRunClose")
XRT_BO_FLAGS_NONE = 0  # xrtBufferFlags: a normal buffer (host copy + device copy, synced explicitly)


class SyncDirection(enum.IntEnum):  # enum xclBOSyncDirection (xrt/xrt_mem.h)
    TO_DEVICE = 0
    FROM_DEVICE = 1


class RunState(enum.IntEnum):  # enum ert_cmd_state (xrt/ert.h)
    NEW = 1
    QUEUED = 2
    RUNNING = 3
    COMPLETED = 4
    ERROR = 5
    ABORT = 6
    SUBMITTED = 7
    TIMEOUT = 8
    NORESPONSE = 9
    SKERROR = 10
    SKCRASHED = 11
    MAX = 12


class XrtError(RuntimeError):
    """A C API call failed: `call` is the function, `code` its errno (0 when XRT set none)."""

    def __init__(self, call: str, code: int, detail: str = ""):
        name = errno_module.errorcode.get(code, str(code)) if code else "no errno"
        super().__init__(f"{call} failed ({name}){': ' + detail if detail else ''}")
        self.call, self.code = call, code


_lock = threading.Lock()
_library: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """libxrt_coreutil, loaded once, with every signature declared; XrtError when it is not installed."""
    global _library
    with _lock:
        if _library is None:
            _library = _load()
        return _library


def installed() -> str | None:
    """None when XRT's C API can be loaded here, else the reason it cannot."""
    try:
        library()
        return None
    except XrtError as error:
        return str(error)


def _load() -> ctypes.CDLL:
    tried = []
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name, use_errno=True)
            break
        except OSError as error:
            tried.append(str(error))
    else:
        raise XrtError("dlopen(libxrt_coreutil)", 0, "XRT is not installed (Debian: apt-get install libxrt1; "
                       "Xilinx: the xrt package, then `source /opt/xilinx/xrt/setup.sh`); tried " + "; ".join(tried))
    missing = [s for s in SYMBOLS if not hasattr(lib, s)]
    if missing:
        raise XrtError("dlsym", 0, f"this XRT lacks C API function(s) {missing}")
    handle, size_t = ctypes.c_void_p, ctypes.c_size_t
    signatures = {  # name: (argtypes, restype); xrtRunSetArg is variadic: its argtypes stay open
        "xrtDeviceOpen": ([ctypes.c_uint], handle), "xrtDeviceOpenByBDF": ([ctypes.c_char_p], handle),
        "xrtDeviceClose": ([handle], ctypes.c_int),
        "xrtDeviceLoadXclbinFile": ([handle, ctypes.c_char_p], ctypes.c_int),
        "xrtDeviceGetXclbinUUID": ([handle, ctypes.c_char_p], ctypes.c_int),
        "xrtPLKernelOpen": ([handle, ctypes.c_char_p, ctypes.c_char_p], handle),
        "xrtKernelClose": ([handle], ctypes.c_int), "xrtKernelArgGroupId": ([handle, ctypes.c_int], ctypes.c_int),
        "xrtBOAlloc": ([handle, size_t, ctypes.c_uint64, ctypes.c_uint32], handle),
        "xrtBOFree": ([handle], ctypes.c_int), "xrtBOSize": ([handle], size_t),
        "xrtBOSync": ([handle, ctypes.c_int, size_t, size_t], ctypes.c_int), "xrtBOMap": ([handle], handle),
        "xrtBOWrite": ([handle, ctypes.c_void_p, size_t, size_t], ctypes.c_int),
        "xrtBORead": ([handle, ctypes.c_void_p, size_t, size_t], ctypes.c_int),
        "xrtRunOpen": ([handle], handle), "xrtRunStart": ([handle], ctypes.c_int),
        "xrtRunWaitFor": ([handle, ctypes.c_uint], ctypes.c_int), "xrtRunState": ([handle], ctypes.c_int),
        "xrtRunClose": ([handle], ctypes.c_int),
    }
    for name, (argtypes, restype) in signatures.items():
        function = getattr(lib, name)
        function.argtypes, function.restype = argtypes, restype
    lib.xrtRunSetArg.restype = ctypes.c_int
    return lib


def _candidates() -> list[str]:
    """$XILINX_XRT/lib first (Xilinx's packages install there), then the loader's search path (Debian's)."""
    root = os.environ.get("XILINX_XRT")
    local = [str(Path(root) / "lib" / name) for name in LIBRARY_NAMES] if root else []
    return [*[p for p in local if Path(p).exists()], *LIBRARY_NAMES]


def _check(call: str, result: int) -> None:
    if result != 0:
        raise XrtError(call, ctypes.get_errno() or (abs(result) if result < 0 else 0))


def _handle(call: str, value: int | None) -> int:
    if not value:
        raise XrtError(call, ctypes.get_errno())
    return value


def emulation_mode() -> str:
    """$XCL_EMULATION_MODE as XRT reads it: "" for a card, "noop" for the no-op shim (no card)."""
    return os.environ.get("XCL_EMULATION_MODE", "")


def check_shim() -> Path:
    """The shim library XRT 2.x will dlopen on the first device call ($XILINX_XRT/lib/lib<shim>.so.2), checked
    first: when it is missing XRT throws from a static initialiser and the process aborts, so the worker
    would die instead of answering with an error (seen with XRT 2.13)."""
    mode = emulation_mode()
    shims = {"": "xrt_core", "noop": "xrt_noop"}
    if mode not in shims:
        raise XrtError("xrt shim", 0, f"XCL_EMULATION_MODE={mode!r} is not supported by the worker: unset it for "
                       "a card, or set noop for XRT's no-op shim (no card)")
    root = os.environ.get("XILINX_XRT", "")
    if not root:
        raise XrtError("xrt shim", 0, "XILINX_XRT is unset: run `source /opt/xilinx/xrt/setup.sh` (Xilinx's XRT) "
                       "or point it at a folder whose lib/ holds XRT's shim libraries")
    shim = Path(root) / "lib" / f"lib{shims[mode]}.so.2"
    if not shim.is_file():
        raise XrtError("xrt shim", 0, f"{shim} does not exist: XRT would abort the process loading it; "
                       f"XILINX_XRT={root} is not an XRT install{' with the no-op shim' if mode else ''}")
    return shim


def _release_handle(owner, close_function: str) -> None:
    """Close `owner.handle` with the C API's `close_function` once; later calls do nothing (handle 0)."""
    if owner.handle:
        handle, owner.handle = owner.handle, 0
        _check(close_function, getattr(library(), close_function)(handle))


class Device:
    """An opened device (a card, or the no-op shim's pretend one). Close it; it is not closed for you."""

    def __init__(self, handle: int):
        self.handle = handle

    @classmethod
    def open(cls, which: str) -> Device:
        """`which`: a card index ("0") or a PCI BDF ("0000:3b:00.1")."""
        lib = library()
        check_shim()
        if which.isdigit():
            return cls(_handle(f"xrtDeviceOpen({which})", lib.xrtDeviceOpen(int(which))))
        return cls(_handle(f"xrtDeviceOpenByBDF({which!r})", lib.xrtDeviceOpenByBDF(which.encode())))

    def load_xclbin(self, path: str) -> bytes:
        """Load the xclbin file; returns its 16-byte UUID (the key xrtPLKernelOpen wants)."""
        lib = library()
        _check(f"xrtDeviceLoadXclbinFile({path!r})", lib.xrtDeviceLoadXclbinFile(self.handle, path.encode()))
        uuid = ctypes.create_string_buffer(16)
        _check("xrtDeviceGetXclbinUUID", lib.xrtDeviceGetXclbinUUID(self.handle, uuid))
        return uuid.raw

    def close(self) -> None:
        _release_handle(self, "xrtDeviceClose")


class Kernel:
    """A PL kernel of the loaded xclbin, opened shared."""

    def __init__(self, device: Device, xclbin_uuid: bytes, name: str):
        self.name = name
        self.handle = _handle(f"xrtPLKernelOpen({name!r})",
                              library().xrtPLKernelOpen(device.handle, xclbin_uuid, name.encode()))

    def group_id(self, arg: int) -> int:
        """The memory group (bank index in the xclbin's MEM_TOPOLOGY) that argument `arg` is connected to."""
        group = library().xrtKernelArgGroupId(self.handle, arg)
        if group < 0:
            raise XrtError(f"xrtKernelArgGroupId({self.name}, {arg})", ctypes.get_errno() or -group)
        return group

    def close(self) -> None:
        _release_handle(self, "xrtKernelClose")


class Bo:
    """A buffer object of `size` bytes in memory group `group` (host copy + device copy)."""

    def __init__(self, device: Device, size: int, group: int):
        self.size, self.group = size, group
        self.handle = _handle(f"xrtBOAlloc({size} bytes, group {group})",
                              library().xrtBOAlloc(device.handle, size, XRT_BO_FLAGS_NONE, group))

    def _span(self, what: str, size: int, offset: int) -> None:
        if offset < 0 or size < 0 or offset + size > self.size:
            raise ValueError(f"{what} of {size} bytes at offset {offset} runs past the {self.size}-byte buffer")

    def write(self, data: np.ndarray, offset: int) -> None:
        """Copy a C-contiguous array's bytes to the host copy at `offset`. A strided array is refused: XRT
        copies `size` bytes from its start pointer, so a strided view would be written wrong, silently."""
        if not isinstance(data, np.ndarray) or not data.flags.c_contiguous:
            raise ValueError("Bo.write takes a C-contiguous numpy array; copy a strided view with "
                             "np.ascontiguousarray first (XRT copies raw bytes from the start pointer)")
        self._span("write", data.nbytes, offset)
        _check("xrtBOWrite", library().xrtBOWrite(self.handle, data.ctypes.data, data.nbytes, offset))

    def read(self, size: int, offset: int) -> np.ndarray:
        """`size` bytes of the host copy from `offset`, as uint8 [size]."""
        self._span("read", size, offset)
        out = np.empty(size, dtype=np.uint8)
        _check("xrtBORead", library().xrtBORead(self.handle, out.ctypes.data, size, offset))
        return out

    def sync(self, direction: SyncDirection, size: int, offset: int) -> None:
        self._span("sync", size, offset)
        _check(f"xrtBOSync({direction.name})", library().xrtBOSync(self.handle, int(direction), size, offset))

    def host_address(self) -> int:
        """Address of the host copy (xrtBOMap). Under the no-op shim it is also the 'device' memory."""
        return _handle("xrtBOMap", library().xrtBOMap(self.handle))

    def close(self) -> None:
        _release_handle(self, "xrtBOFree")


class Run:
    """One kernel execution: every argument a Bo, in argument order."""

    def __init__(self, kernel: Kernel, bos: list[Bo]):
        lib = library()
        self.handle = _handle("xrtRunOpen", lib.xrtRunOpen(kernel.handle))
        try:
            for arg, bo in enumerate(bos):  # a global-memory argument takes the xrtBufferHandle
                _check(f"xrtRunSetArg({arg})", lib.xrtRunSetArg(ctypes.c_void_p(self.handle), ctypes.c_int(arg),
                                                                 ctypes.c_void_p(bo.handle)))
        except XrtError:
            self.close()
            raise

    def start(self) -> None:
        _check("xrtRunStart", library().xrtRunStart(self.handle))

    def wait(self, timeout_s: float) -> RunState:
        """Block (GIL released) until the run finishes or `timeout_s` passes: TIMEOUT in that case."""
        timeout_ms = max(1, int(timeout_s * 1000))
        return _state(library().xrtRunWaitFor(self.handle, timeout_ms))

    def state(self) -> RunState:
        return _state(library().xrtRunState(self.handle))

    def close(self) -> None:
        _release_handle(self, "xrtRunClose")


def _state(value: int) -> RunState:
    try:
        return RunState(value)
    except ValueError:
        return RunState.ERROR
