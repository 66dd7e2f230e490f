"""The decode kernel's C simulation (glitches/fpga_worker/kernel/, built by `make setup` with g++, or on first use
from an installed package: kernel_build.py) through ctypes.

Entry point of the library (glitches/fpga_worker/kernel/glitches_csim.cpp):
    uint32_t glitches_csim_step(const uint8_t *args, uint8_t *const *hbm, uint8_t *result)
runs `glitches_decode` once: args is the 512-byte step argument buffer, hbm 32 pointers to the
pseudo-channels' bytes (the weight image at [0, kv_base), KV pages above), result 64 + 4 * vocab
bytes. It is the kernel source itself, compiled for the CPU; ctypes releases the GIL during the
call. Calls are serialised here (the kernel keeps its working buffers in static storage, as on-chip
memory). Nothing here is a card: every figure it produces is emulated.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from glitches.fpga_worker import kernel_build
from glitches.fpga_worker.abi import ABI_VERSION, GROUP_SIZE, HBM_CHANNELS, KV_BLOCK_TOKENS, KV_PAGE_TOKENS, MAX_KV_PAGES
from glitches.fpga_worker.step_args import RESULT_HEAD_BYTES, STEP_ARGS_BYTES, StepArgs, StepResult, result_bytes
from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument

KERNEL_DIR = kernel_build.KERNEL_DIR
LIBRARY = kernel_build.IN_TREE_LIBRARY  # a source checkout's build; else $GLITCHES_CSIM_LIBRARY or the user cache's
STREAMS = ("header", "values", "scales", "vector", "kv", "kv_store")  # burst counters' rows (glitches_hbm.h)
# glitches_csim_constant(i) for i in order; checked against the host's ABI constants at load
_CONSTANTS = ("abi_version", "pcs", "group", "kv_block_tokens", "kv_page_tokens", "max_kv_pages", "args_bytes",
              "result_head_bytes", "prefetch_ratio", "buffer_bytes")

_lock = threading.Lock()  # one kernel call at a time per process
_library: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """The compiled kernel (kernel_build.library_path: built with g++ on first use if need be); FailedPrecondition
    saying what to install when it cannot be built."""
    global _library
    with _lock:
        if _library is None:
            path = kernel_build.library_path(LIBRARY)
            lib = ctypes.CDLL(str(path))
            lib.glitches_csim_step.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p]
            lib.glitches_csim_step.restype = ctypes.c_uint32
            lib.glitches_csim_bursts.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
            lib.glitches_csim_constant.argtypes = [ctypes.c_uint32]
            lib.glitches_csim_constant.restype = ctypes.c_uint32
            _check_constants(lib, path)
            _library = lib
        return _library


def constants(lib: ctypes.CDLL | None = None) -> dict[str, int]:
    """The ABI constants the library was compiled with."""
    lib = lib or library()
    return {name: int(lib.glitches_csim_constant(i)) for i, name in enumerate(_CONSTANTS)}


def _check_constants(lib: ctypes.CDLL, path: Path) -> None:
    got = constants(lib)
    want = {"abi_version": ABI_VERSION, "pcs": HBM_CHANNELS, "group": GROUP_SIZE, "kv_block_tokens": KV_BLOCK_TOKENS,
            "kv_page_tokens": KV_PAGE_TOKENS, "max_kv_pages": MAX_KV_PAGES, "args_bytes": STEP_ARGS_BYTES,
            "result_head_bytes": RESULT_HEAD_BYTES}
    differ = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    if differ:
        raise FailedPrecondition(f"{path} was built for another ABI (library, host): {differ}; run `make setup` "
                                 "(a source checkout) or delete it (a cached build)")


def step_raw(args: bytes, channel_pointers: list[int], result: np.ndarray) -> int:
    """One kernel call on raw memory: args (512 bytes), 32 PC base addresses, result uint8 [64 + 4 vocab]
    (written in place). Returns the ABI status. The caller keeps the memory alive and large enough."""
    if len(args) != STEP_ARGS_BYTES or len(channel_pointers) != HBM_CHANNELS:
        raise InvalidArgument(f"csim step wants {STEP_ARGS_BYTES} argument bytes and {HBM_CHANNELS} PC pointers")
    if result.dtype != np.uint8 or not result.flags.c_contiguous:
        raise InvalidArgument("the result buffer must be contiguous uint8")
    lib = library()
    pointers = (ctypes.c_void_p * HBM_CHANNELS)(*channel_pointers)
    arg_buf = ctypes.create_string_buffer(args, STEP_ARGS_BYTES)
    with _lock:
        return int(lib.glitches_csim_step(arg_buf, pointers, result.ctypes.data))


def step_on_memory(memory_address: int, channel_bytes: int, args: StepArgs, vocab: int) -> StepResult:
    """One call on an emulated card's memory: PC p at [memory_address + p * channel_bytes, + channel_bytes)."""
    if args.pc_bytes != channel_bytes:
        raise InvalidArgument(f"step arguments say {args.pc_bytes}-byte PCs, the memory has {channel_bytes}")
    result = np.zeros(result_bytes(vocab), dtype=np.uint8)
    step_raw(args.pack(), [memory_address + p * channel_bytes for p in range(HBM_CHANNELS)], result)
    return StepResult.unpack(result.tobytes())


def bursts() -> tuple[np.ndarray, np.ndarray]:
    """(counts, bytes) uint64 [6 streams, 32 PCs] of the bursts issued since the last call (then zeroed)."""
    lib = library()
    counts = np.zeros((len(STREAMS), HBM_CHANNELS), dtype=np.uint64)
    sizes = np.zeros_like(counts)
    with _lock:
        lib.glitches_csim_bursts(counts.ctypes.data, sizes.ctypes.data)
    return counts, sizes


class CsimDecoder:
    """The C-simulated kernel bound to an emulated card's memory: the weight image is copied into bytes
    [0, kv_base) of every PC of `memory` (uint8 [32 * channel_bytes], PC p at p * channel_bytes), where the
    KV data plane also writes, and each step runs the kernel on that memory."""

    numerics = "csim"

    def __init__(self, image, memory, channel_bytes: int):
        if memory.numel() != HBM_CHANNELS * channel_bytes or image.kv_base > channel_bytes:
            raise InvalidArgument(f"{memory.numel()}-byte memory cannot hold a {image.kv_base}-byte-per-PC image "
                                  f"in {HBM_CHANNELS} PCs of {channel_bytes} bytes")
        library()  # FailedPrecondition now, not at the first step, when it was not built
        self.image, self.memory, self.channel_bytes = image, memory, channel_bytes
        import torch

        memory.view(HBM_CHANNELS, channel_bytes)[:, : image.kv_base] = torch.from_numpy(image.channels)
        self.prefetch_ratio = constants()["prefetch_ratio"]

    def step(self, kv_offset: int, plan, token_id: int, position: int):
        """Logits float32 [vocab] (torch) of one step; KernelError with the kernel's status otherwise."""
        import torch

        from glitches.fpga_worker.abi import KernelStatus
        from glitches.fpga_worker.w4a8_kernel import KernelError

        args = StepArgs.for_region(token_id, position, plan, kv_offset, self.channel_bytes)
        result = step_on_memory(self.memory.data_ptr(), self.channel_bytes, args, self.image.dims.vocab)
        if result.status != KernelStatus.OK:
            raise KernelError(result.status, f"C-simulated kernel refused token {token_id} at position {position} "
                                             f"(KV capacity {plan.capacity_tokens} tokens)")
        return torch.from_numpy(result.logits)
