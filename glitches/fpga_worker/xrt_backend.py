"""The `xrt` backend: the decode kernel on an Alveo card, driven through XRT's C API (glitches/fpga_worker/xrt_capi.py).

Host protocol (docs/fpga-kernel-abi.md, docs/fpga-host.md):
- start: open the card (index or PCI BDF), load the xclbin, open `glitches_decode`; check that the xclbin
  connects args and result to DDR and hbm<p> to HBM[p] (ABI v2); allocate each buffer in the memory group
  `xrtKernelArgGroupId(arg)` gives: arg 0 the 512-byte step arguments, args 1..32 one buffer per HBM
  pseudo-channel (PC), arg 33 the result; check every buffer's bank (xrt_banks.py); write and sync the weight
  image to bytes [0, kv_base) of every PC, once.
- TransferKV: each chunk is written and synced to its ABI addresses as it arrives (host-to-card copy overlaps
  prefill; ctypes releases the GIL, so the copies never stall the worker's other threads).
- TransferKVPlaced (transport shm): the host staging area is a shared-memory segment of the card's HBM size
  in the ABI's layout; a notice makes the worker write + sync exactly the noticed bytes (per PC).
- step: write + sync the arguments, start the run, poll xrtRunState until a final state or `run_timeout_s`,
  sync + read the result. A run past its timeout fails that request with UNAVAILABLE (the scheduler moves it
  to another worker) and marks the card FAILED: every later call is UNAVAILABLE and `on_failure` (set by the
  daemon) turns health NOT_SERVING and takes the worker out of the registry.
- KV regions (glitches/fpga_worker/xrt_kv.py, over decode_contract/kept_regions.py, the same bookkeeping as the
  emulated cards): one region per request at the same kv_offset in every PC, first-fit in whole blocks.

Retention (issue #27, as the emulated cards): the kernel writes each step's KV into the request's region, so a
request that finished normally leaves prompt + stepped tokens there; `retain` keeps the region as evictable cache
named by the prefix hash chain (kv_plane/prefix_index.py, root = model + tenant salt). `adopt` (DecodeFromHeld, or a
partial transfer's header) takes the kept region with the longest common prefix, token ids compared first (a
hash collision or a stale hint never attaches wrong KV): in place when its capacity covers the new request, else
copied HBM to HBM (through the host: sync from the card, relayout, write + sync back) into a larger region. A
partial transfer then writes only tokens [held, prompt), by TransferKV or shm notices, after the held ones.
Reservations evict kept regions least recently used first, never a region a request holds (receiving, sealed or
decoding). kv_free_bytes is free + evictable, kv_cached_bytes the evictable part (free + cached = capacity at
idle); `held_changes` gives the kept chains added and removed for the worker runtime's held-KV publisher. A
cancelled or failed request keeps nothing, and a card out of service (a hung run) drops its whole cache. ABI v2
is unchanged: each request's block table is still the consecutive pages of its one region.

Under XRT's no-op shim (XCL_EMULATION_MODE=noop, no card) the same path runs against the real XRT library,
and the step is computed by the C-simulated kernel on the buffers' bytes (glitches/fpga_worker/xrt_noop.py); the card
reports itself emulated. There is no fallback: without XRT or a card, XrtCard raises FailedPrecondition or
InvalidArgument naming what is missing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from glitches.fpga_worker import xrt_banks, xrt_capi
from glitches.fpga_worker.abi import HBM_BYTES, HBM_CHANNELS, KV_BLOCK_TOKENS, KernelStatus, OutputMode
from glitches.decode_contract.device import NO_READING, DecodeBackend, DeviceFacts, SensorReading
from glitches.decode_contract.kept_regions import KeptKvCalls
from glitches.kv_plane.kv_types import KvGeometry, KvMemory, KvPlacement
from glitches.fpga_worker.step_args import STEP_ARGS_BYTES, StepArgs, StepResult, result_bytes
from glitches.fpga_worker.weight_image import WeightImage
from glitches.fpga_worker.xclbin_meta import KERNEL_NAME, PORTS, read_bank_tags
from glitches.fpga_worker.xrt_capi import Bo, RunState, SyncDirection, XrtError
from glitches.fpga_worker.xrt_kv import XrtKv
from glitches.decode_contract.request_checks import check_sealable, check_steppable, forget, lookup, request_ids
from glitches.services.runtime.errors import (
    FailedPrecondition, GlitchesError, InvalidArgument, Unavailable,
)

log = logging.getLogger(__name__)
ARGS_ARG, FIRST_HBM_ARG, RESULT_ARG = 0, 1, 1 + HBM_CHANNELS  # kernel argument indices, ABI section 5
RUN_TIMEOUT_S = 10.0  # a decode step past this is a hung kernel (a U280 step of a 7B model: ~20 ms), seconds
_FINAL = {RunState.COMPLETED, RunState.ERROR, RunState.ABORT, RunState.TIMEOUT, RunState.NORESPONSE,
          RunState.SKERROR, RunState.SKCRASHED}
_POLL_S = (0.00005, 0.001)  # xrtRunState poll interval: first, then doubling up to the second, seconds

_STATUS_ERRORS = {  # ABI status -> domain error (section 5, "Status codes")
    KernelStatus.BAD_IMAGE: FailedPrecondition, KernelStatus.TOKEN_OUT_OF_RANGE: InvalidArgument,
    KernelStatus.POSITION_OUT_OF_RANGE: InvalidArgument, KernelStatus.KV_OUT_OF_BOUNDS: InvalidArgument,
    KernelStatus.BAD_MODE: InvalidArgument, KernelStatus.NON_FINITE: GlitchesError,
}


def require_xrt() -> None:
    """FailedPrecondition, naming what to install or set, unless XRT's library and its shim are present."""
    reason = xrt_capi.installed()
    if reason:
        raise FailedPrecondition(f"--backend xrt needs XRT's library: {reason}; or use --backend emu "
                                 "(the software emulator)")
    try:
        xrt_capi.check_shim()
    except XrtError as error:
        raise FailedPrecondition(f"--backend xrt: {error}") from None


def open_device(device: str) -> xrt_capi.Device:
    """The card (index or BDF); FailedPrecondition when XRT is missing, InvalidArgument when it cannot open it."""
    require_xrt()
    try:
        return xrt_capi.Device.open(device)
    except XrtError as error:
        raise InvalidArgument(f"--device {device!r}: XRT cannot open it ({error}); give a card index or a PCI "
                              "BDF such as 0000:3b:00.1 from `xbutil examine`") from None


@dataclass
class _Request:
    prompt_tokens: int | None = None  # set by seal(), or by adopt() (the held tokens)


class XrtCard(KeptKvCalls, DecodeBackend):
    def __init__(self, image: WeightImage, device: str, xclbin: str, hbm_bytes: int = HBM_BYTES,
                 tag: str = "xrt", run_timeout_s: float = RUN_TIMEOUT_S):
        if hbm_bytes % HBM_CHANNELS:
            raise InvalidArgument(f"--hbm-bytes {hbm_bytes} must split evenly over {HBM_CHANNELS} pseudo-channels")
        if not run_timeout_s > 0:
            raise InvalidArgument(f"run timeout must be positive, got {run_timeout_s} s")
        require_xrt()
        if not xclbin or not Path(xclbin).is_file():
            raise InvalidArgument(f"--xclbin {xclbin!r} is not a file; give the path of the decode bitstream")
        self.image, self.hbm_bytes, self.xclbin_path, self.run_timeout_s = image, hbm_bytes, xclbin, run_timeout_s
        self.bdf = device
        self.channel_bytes = hbm_bytes // HBM_CHANNELS
        d = image.dims
        self._geometry = KvGeometry(d.num_layers, d.kv_heads, d.head_dim, torch.float16)
        self.emulated = xrt_capi.emulation_mode() == "noop"
        self.failed: str | None = None  # why the card stopped serving (a hung run); None while healthy
        self.on_failure: Callable[[str], None] | None = None  # the daemon's: health NOT_SERVING, deregister
        self._compute = None
        if self.emulated:
            from glitches.fpga_worker.xrt_noop import CsimOnBuffers

            self._compute = CsimOnBuffers()
        self._result_bytes = result_bytes(d.vocab)
        self._handles: list = []  # everything opened, closed in reverse order by close()
        self.device = open_device(device)
        self._handles.append(self.device)
        try:
            self._open(xclbin, image)
        except BaseException:
            self.close()
            raise
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()  # guards _requests
        try:  # the KV regions on the card's buffers, kept as cache after a normal finish; host staging (shm)
            self.kv = XrtKv(self.hbm, self.channel_bytes, image.kv_base, (d.num_layers, d.kv_heads, d.head_dim), tag)
        except BaseException:
            self.close()
            raise
        self.staging = self.kv.staging
        self._run_lock = threading.Lock()  # one kernel run at a time: the argument and result buffers are shared

    def _open(self, xclbin: str, image: WeightImage) -> None:
        tags = read_bank_tags(xclbin)
        try:
            uuid = self.device.load_xclbin(xclbin)
            self.kernel = xrt_capi.Kernel(self.device, uuid, KERNEL_NAME)
        except XrtError as error:
            raise FailedPrecondition(f"XRT could not load --xclbin {xclbin} or find kernel {KERNEL_NAME} in it "
                                     f"({error}); build it from the GLITCHES decode kernel") from None
        self._handles.append(self.kernel)
        xrt_banks.check_placement(self.kernel.group_id, tags, xclbin)
        self.bank_tags = tags
        self.args_bo = self._bo(STEP_ARGS_BYTES, ARGS_ARG)
        self.hbm = [self._bo(self.channel_bytes, FIRST_HBM_ARG + pc) for pc in range(HBM_CHANNELS)]
        self.result_bo = self._bo(self._result_bytes, RESULT_ARG)
        self.buffers = [self.args_bo, *self.hbm, self.result_bo]  # in argument order
        xrt_banks.check_buffers(self.kernel.group_id, [bo.group for bo in self.buffers], tags)
        self.run = xrt_capi.Run(self.kernel, self.buffers)  # arguments set once; started once per step
        self._handles.append(self.run)
        for pc, bo in enumerate(self.hbm):  # the weight image, once: PC bytes [0, kv_base)
            bo.write(image.channels[pc], 0)
            bo.sync(SyncDirection.TO_DEVICE, image.kv_base, 0)

    def _bo(self, size: int, arg: int) -> Bo:
        try:
            bo = Bo(self.device, size, self.kernel.group_id(arg))
        except XrtError as error:
            raise FailedPrecondition(f"XRT could not allocate the {size}-byte buffer of kernel argument {arg} "
                                     f"({PORTS[arg]}): {error}") from None
        self._handles.append(bo)
        return bo

    def close(self) -> None:
        """Free the run, buffers, kernel and device (reverse order). A run still in flight (hung) keeps its
        buffers: freeing memory a kernel may still write is worse than leaking it until the process ends."""
        kv = getattr(self, "kv", None)
        if kv is not None:  # the staging segment, host shared memory only: always freed
            kv.close()
        run = getattr(self, "run", None)
        if run is not None and run.handle and run.state() not in _FINAL and run.state() != RunState.NEW:
            log.error("xrt card %s: a kernel run is still in flight; its buffers are left allocated", self.bdf)
            return
        while self._handles:
            handle = self._handles.pop()
            try:
                handle.close()
            except XrtError as error:
                log.warning("xrt card %s: %s", self.bdf, error)

    # --- facts --------------------------------------------------------------
    def facts(self) -> DeviceFacts:
        from glitches.fpga_worker.xrt_noop import LABEL

        extra = {"bdf": self.bdf, "numerics": "csim" if self.emulated else "w4a8", "kv_dtype": "float16",
                 "abi_version": "2", "xclbin": self.xclbin_path, "weight_image_bytes": str(self.image.weight_bytes),
                 "memory": ", ".join(self.bank_tags), "run_timeout_s": f"{self.run_timeout_s:g}"}
        if self.failed:
            extra["failed"] = self.failed
        name = f"{LABEL} [{self.bdf}]" if self.emulated else f"Alveo card [{self.bdf}] (XRT)"
        return DeviceFacts(backend="xrt", emulated=self.emulated, device_name=name, hbm_bytes=self.hbm_bytes,
                           kv_capacity_bytes=self.kv.capacity_bytes, extra=extra)

    def sensors(self) -> SensorReading:
        """The card's own sensors, measured, from `xbutil examine` (glitches/fpga_worker/sensors.py); none under the no-op
        shim (there is no card to measure)."""
        if self.emulated:
            return NO_READING
        from glitches.fpga_worker.sensors import read_xbutil

        return read_xbutil(self.bdf)

    def geometry(self) -> KvGeometry:
        return self._geometry

    def kv_granularity_tokens(self) -> int:
        return HBM_CHANNELS * KV_BLOCK_TOKENS  # regions hold whole 512-token units

    # --- lifecycle --------------------------------------------------------------
    def reserve(self, request_id: str, max_tokens: int) -> None:
        self._check_healthy()
        self.kv.reserve(request_id, max_tokens)  # AlreadyExists; ResourceExhausted once nothing kept is left to evict
        with self._lock:
            self._requests[request_id] = _Request()

    def _get(self, request_id: str) -> _Request:
        return lookup(self._requests, self._lock, request_id)

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Write one chunk (key, value [1, kv_heads, seq, head_dim]) block by block to its HBM addresses."""
        self._check_healthy()
        self._get(request_id)
        self.kv.write(request_id, layer, seq_start, key, value)

    # --- the KV data plane: host staging segment, synced by notice -------------------------------
    def kv_memory(self) -> KvMemory | None:
        return KvMemory(self.staging.memory, self.channel_bytes, str(self.staging.path))

    def placement(self, request_id: str) -> KvPlacement:
        self._get(request_id)
        return self.kv.placement(request_id)

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        """Copy exactly the noticed tokens of `layer` from the staging segment to the card (bo.write + bo.sync)."""
        self._check_healthy()
        self._get(request_id)
        self.kv.mark_written(request_id, layer, seq_start, tokens)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        request, held = self._get(request_id), self.kv.get(request_id)
        check_sealable(held.written, prompt_tokens, held.plan.capacity_tokens)
        request.prompt_tokens = prompt_tokens

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        """One kernel run: write the step arguments, run, read back float32 logits [vocab]."""
        self._check_healthy()
        request, held = self._get(request_id), self.kv.get(request_id)
        check_steppable(request_id, request.prompt_tokens is not None, position, held.plan.capacity_tokens)
        args = StepArgs.for_region(token_id, position, held.plan, held.kv_offset, self.channel_bytes)
        with self._run_lock:
            self._check_healthy()
            self.args_bo.write(np.frombuffer(args.pack(), dtype=np.uint8), 0)
            self.args_bo.sync(SyncDirection.TO_DEVICE, STEP_ARGS_BYTES, 0)
            self.run.start()
            state = self._wait()
            if state == RunState.RUNNING:  # still running at the deadline: a hung kernel
                self._fail(f"decode kernel run did not finish within {self.run_timeout_s:g} s (request "
                           f"{request_id}, position {position})")
                raise Unavailable(f"{self.failed}; this card is out of service, the request moves to another "
                                  "worker")
            if state != RunState.COMPLETED:
                raise Unavailable(f"decode kernel run ended in state {state.name}; check the card with "
                                  "`xbutil examine`")
            if self._compute is not None:  # no-op shim: the kernel computed nothing; the C simulation does
                self._compute.run(self.args_bo, self.hbm, self.result_bo)
            self.result_bo.sync(SyncDirection.FROM_DEVICE, self._result_bytes, 0)
            raw = self.result_bo.read(self._result_bytes, 0)
        result = StepResult.unpack(raw.tobytes(), OutputMode.LOGITS)
        if result.status != KernelStatus.OK:
            raise _STATUS_ERRORS[result.status](f"decode kernel status {result.status.value} ({result.status.name}) "
                                                f"for request {request_id} at position {position}")
        return torch.from_numpy(result.logits)

    def _wait(self) -> RunState:
        """Poll xrtRunState (GIL released in each call and sleep) until a final state or run_timeout_s; RUNNING
        when the deadline passed first. Polling, not xrtRunWaitFor: XRT 2.13's no-op shim ignores the wait's
        timeout (its exec_wait spins until a completion), and polling bounds the wait the same way on a card."""
        deadline, pause = time.monotonic() + self.run_timeout_s, _POLL_S[0]
        while True:
            state = self.run.state()
            if state in _FINAL:
                return state
            if time.monotonic() >= deadline:
                return RunState.RUNNING
            time.sleep(pause)
            pause = min(_POLL_S[1], pause * 2)

    def _fail(self, reason: str) -> None:
        self.failed = reason
        log.error("xrt card %s out of service: %s", self.bdf, reason)
        self.kv.drop_retained()  # nothing is served from this card again: its kept chains are withdrawn
        if self.on_failure is not None:
            try:
                self.on_failure(reason)
            except Exception:  # the hook must not hide the request's own error
                log.exception("xrt card %s: on_failure hook failed", self.bdf)

    def _check_healthy(self) -> None:
        if self.failed:
            raise Unavailable(f"xrt card {self.bdf} is out of service ({self.failed}); restart the worker after "
                              "checking the card with `xbutil examine`")

    def release(self, request_id: str) -> bool:
        known = forget(self._requests, self._lock, request_id)
        return self.kv.release(request_id) or known

    # --- retention (issue #27): decode_contract/kept_regions.py ------------------------------------
    def retain(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        """Keep the KV of `tokens` (prompt + stepped tokens: the kernel wrote each step's KV into the region) as
        cache; False: not kept (release it). A card out of service keeps nothing."""
        request = self._requests.get(request_id)
        if request is None or request.prompt_tokens is None or self.failed:
            return False
        forget(self._requests, self._lock, request_id)
        return self.kv.retain(request_id, tokens, root)

    def adopt(self, request_id: str, prompt: list[int], root: bytes, max_tokens: int, min_held: int) -> int:
        """Reserve for `max_tokens` starting from the longest verified held prefix of `prompt`; returns the tokens
        held (FAILED_PRECONDITION below min_held, nothing reserved)."""
        self._check_healthy()
        n = self.kv.adopt(request_id, prompt, root, max_tokens, min_held)
        with self._lock:
            self._requests[request_id] = _Request(prompt_tokens=n)  # sealed: steps go on from token n
        return n

    def active_requests(self) -> list[str]:
        return request_ids(self._requests, self._lock)


def weight_image_for(source) -> WeightImage:
    """The weight image of a services.models.ModelSource: from its GGUF when it has one, else its float weights."""
    from glitches.fpga_worker.weight_image import build_from_gguf, build_from_state_dict

    if source.gguf_file is not None:
        return build_from_gguf(source.gguf_file)
    from glitches.services.generation.models import load_causal_lm

    model = load_causal_lm(source, "cpu", "float32")
    return build_from_state_dict(model.config, model.state_dict())
