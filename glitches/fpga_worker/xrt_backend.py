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
from glitches.kv_plane.kv_types import KvGeometry, KvMemory, KvPlacement
from glitches.kv_plane.hbm_segment import HbmSegment
from glitches.kv_plane.hbm_manager import KvSpace
from glitches.kv_plane.kv_layout import K_KIND, V_KIND, KvPlan
from glitches.fpga_worker.step_args import STEP_ARGS_BYTES, StepArgs, StepResult, result_bytes
from glitches.fpga_worker.weight_image import WeightImage
from glitches.fpga_worker.xclbin_meta import KERNEL_NAME, PORTS, read_bank_tags
from glitches.fpga_worker.xrt_capi import Bo, RunState, SyncDirection, XrtError
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
    plan: KvPlan
    kv_offset: int  # bytes from the start of every PC
    written: torch.Tensor  # bool [num_layers, capacity_tokens]: which tokens' KV has arrived
    prompt_tokens: int | None = None  # set by seal()


class XrtCard(DecodeBackend):
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
        self.space = KvSpace(image.kv_base, self.channel_bytes, self._geometry.block_bytes)
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
        self.staging = HbmSegment(hbm_bytes, tag)  # host staging for senders on this host (transport shm)
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
        staging = getattr(self, "staging", None)
        if staging is not None:  # host shared memory only: always freed
            staging.close()
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
                           kv_capacity_bytes=self.space.capacity_bytes, extra=extra)

    def sensors(self) -> SensorReading:
        """The card's own sensors, measured, from `xbutil examine` (glitches/fpga_worker/sensors.py); none under the no-op
        shim (there is no card to measure)."""
        if self.emulated:
            return NO_READING
        from glitches.fpga_worker.sensors import read_xbutil

        return read_xbutil(self.bdf)

    def geometry(self) -> KvGeometry:
        return self._geometry

    def kv_free_bytes(self) -> int:
        return self.space.free_bytes()

    def kv_granularity_tokens(self) -> int:
        return HBM_CHANNELS * KV_BLOCK_TOKENS  # regions hold whole 512-token units

    # --- lifecycle --------------------------------------------------------------
    def reserve(self, request_id: str, max_tokens: int) -> None:
        self._check_healthy()
        plan = KvPlan.for_model(self.image.dims, max_tokens)
        offset = self.space.reserve(request_id, plan.region_bytes_per_channel)  # AlreadyExists, ResourceExhausted
        with self._lock:
            self._requests[request_id] = _Request(plan, offset, torch.zeros(plan.num_layers, plan.capacity_tokens,
                                                                            dtype=torch.bool))

    def _get(self, request_id: str) -> _Request:
        return lookup(self._requests, self._lock, request_id)

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Write one chunk (key, value [1, kv_heads, seq, head_dim]) block by block to its HBM addresses."""
        self._check_healthy()
        request = self._get(request_id)
        plan = request.plan
        want = (1, plan.kv_heads, key.shape[2], plan.head_dim)
        if tuple(key.shape) != want or tuple(value.shape) != want:
            raise InvalidArgument(f"KV chunk shapes {tuple(key.shape)}, {tuple(value.shape)}; expected {want}")
        if not 0 <= layer < plan.num_layers:
            raise InvalidArgument(f"layer {layer} out of range 0..{plan.num_layers - 1}")
        stop = seq_start + key.shape[2]
        if seq_start < 0 or stop > plan.capacity_tokens:
            raise InvalidArgument(f"tokens {seq_start}..{stop - 1} exceed the reserved "
                                  f"{plan.capacity_tokens}-token KV region")
        kinds = {K_KIND: key[0].to(torch.float16).numpy(), V_KIND: value[0].to(torch.float16).numpy()}
        for kind, tensor in kinds.items():  # tensor: float16 [kv_heads, seq, head_dim]
            for head in range(plan.kv_heads):
                first = seq_start
                while first < stop:  # one write per block the chunk touches
                    last = min(stop, (first // KV_BLOCK_TOKENS + 1) * KV_BLOCK_TOKENS)
                    pc, offset = plan.address(request.kv_offset, layer, head, kind, first)
                    data = np.ascontiguousarray(tensor[head, first - seq_start: last - seq_start])
                    self.hbm[pc].write(data, offset)
                    self.hbm[pc].sync(SyncDirection.TO_DEVICE, data.nbytes, offset)
                    first = last
        request.written[layer, seq_start:stop] = True

    # --- the KV data plane: host staging segment, synced by notice -------------------------------
    def kv_memory(self) -> KvMemory | None:
        return KvMemory(self.staging.memory, self.channel_bytes, str(self.staging.path))

    def placement(self, request_id: str) -> KvPlacement:
        request = self._get(request_id)
        return KvPlacement(request.kv_offset, request.plan, torch.float16)

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        """Copy exactly the noticed tokens of `layer` from the staging segment to the card (bo.write + bo.sync)."""
        self._check_healthy()
        request = self._get(request_id)
        plan, stop = request.plan, seq_start + tokens
        if not 0 <= layer < plan.num_layers:
            raise InvalidArgument(f"layer {layer} out of range 0..{plan.num_layers - 1}")
        if tokens < 1 or seq_start < 0 or stop > plan.capacity_tokens:
            raise InvalidArgument(f"layer {layer}: tokens [{seq_start}, {stop}) lie outside the "
                                  f"{plan.capacity_tokens}-token KV region reserved")
        span = request.written[layer, seq_start:stop]
        if span.any():
            raise InvalidArgument(f"layer {layer}: tokens [{seq_start}, {stop}) overlap KV already written")
        row = plan.head_dim * 2  # bytes of one token's K or V vector
        staged = self.staging.memory.numpy()
        for kind in (K_KIND, V_KIND):
            for head in range(plan.kv_heads):
                first_block, last_block = seq_start // KV_BLOCK_TOKENS, (stop - 1) // KV_BLOCK_TOKENS
                for residue in range(min(HBM_CHANNELS, last_block - first_block + 1)):
                    b0 = first_block + residue  # blocks b0, b0 + 32, ... share one PC at consecutive slots
                    b1 = b0 + (last_block - b0) // HBM_CHANNELS * HBM_CHANNELS
                    pc, begin = plan.address(request.kv_offset, layer, head, kind, max(seq_start, b0 * KV_BLOCK_TOKENS))
                    _, end = plan.address(request.kv_offset, layer, head, kind,
                                          min(stop, (b1 + 1) * KV_BLOCK_TOKENS) - 1)
                    end += row
                    base = pc * self.channel_bytes
                    self.hbm[pc].write(staged[base + begin: base + end], begin)
                    self.hbm[pc].sync(SyncDirection.TO_DEVICE, end - begin, begin)
        span.fill_(True)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        request = self._get(request_id)
        check_sealable(request.written, prompt_tokens, request.plan.capacity_tokens)
        request.prompt_tokens = prompt_tokens

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        """One kernel run: write the step arguments, run, read back float32 logits [vocab]."""
        self._check_healthy()
        request = self._get(request_id)
        check_steppable(request_id, request.prompt_tokens is not None, position, request.plan.capacity_tokens)
        args = StepArgs.for_region(token_id, position, request.plan, request.kv_offset, self.channel_bytes)
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
        forget(self._requests, self._lock, request_id)
        return self.space.release(request_id)

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
