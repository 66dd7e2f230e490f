"""The `xrt` backend: the W4A8 decode kernel on an Alveo card, driven through pyxrt (XRT's Python bindings).

Host protocol (docs/fpga-kernel-abi.md):
- start: open the card (index or PCI BDF), register the xclbin, make a hardware
  context and the `glitches_decode` kernel; allocate its buffers by
  `kernel.group_id(arg)`: arg 0 the 64-byte step arguments, args 1..32 one buffer
  per HBM pseudo-channel (PC), arg 33 the result; write and sync the weight image
  to bytes [0, kv_base) of every PC, once.
- TransferKV: each chunk is written and synced to its ABI addresses as it arrives,
  so the host-to-card copy overlaps prefill.
- TransferKVPlaced (transport shm): the host staging area is a shared-memory segment of the
  card's HBM size in the ABI's layout; a same-host sender writes a layer into it, and its notice
  makes the worker bo.write + bo.sync exactly the noticed bytes (one contiguous run per lane and
  block residue, i.e. per PC) to the card.
- one kernel run per decode token; the result buffer is synced back and read.

There is no fallback: without pyxrt, XRT or the card, `open_pyxrt` / `XrtCard`
raise FailedPrecondition or InvalidArgument naming what is missing.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fpga_worker.abi import HBM_BYTES, HBM_CHANNELS, KV_BLOCK_TOKENS, KernelStatus, OutputMode
from decode_contract.device import DecodeBackend, DeviceFacts, SensorReading
from kv_plane.kv_types import KvGeometry, KvMemory, KvPlacement
from kv_plane.hbm_segment import HbmSegment
from kv_plane.hbm_manager import KvSpace
from kv_plane.kv_layout import K_KIND, V_KIND, KvPlan
from fpga_worker.step_args import STEP_ARGS_BYTES, StepArgs, StepResult, result_bytes
from fpga_worker.weight_image import WeightImage
from decode_contract.request_checks import check_sealable, check_steppable, forget, lookup, request_ids
from services.errors import (
    FailedPrecondition, GlitchesError, InvalidArgument, Unavailable,
)

KERNEL_NAME = "glitches_decode"
ARGS_ARG, FIRST_HBM_ARG, RESULT_ARG = 0, 1, 1 + HBM_CHANNELS  # kernel argument indices, ABI section 5

_STATUS_ERRORS = {  # ABI status -> domain error (section 5, "Status codes")
    KernelStatus.BAD_IMAGE: FailedPrecondition, KernelStatus.TOKEN_OUT_OF_RANGE: InvalidArgument,
    KernelStatus.POSITION_OUT_OF_RANGE: InvalidArgument, KernelStatus.KV_OUT_OF_BOUNDS: InvalidArgument,
    KernelStatus.BAD_MODE: InvalidArgument, KernelStatus.NON_FINITE: GlitchesError,
}


def open_pyxrt(xilinx_xrt: str | None):
    """Import pyxrt; `xilinx_xrt` is $XILINX_XRT as the CLI read it (None when unset)."""
    try:
        import pyxrt
    except ImportError as error:
        hint = (f"XILINX_XRT={xilinx_xrt}: run `source {xilinx_xrt}/setup.sh` so {xilinx_xrt}/python is on "
                "PYTHONPATH" if xilinx_xrt else
                "XILINX_XRT is unset: install XRT and run `source /opt/xilinx/xrt/setup.sh`")
        raise FailedPrecondition(f"--backend xrt needs XRT's Python bindings, but `import pyxrt` failed "
                                 f"({error}); {hint}; or use --backend emu (the software emulator)") from None
    if not xilinx_xrt:
        raise FailedPrecondition("--backend xrt: XILINX_XRT is unset; run `source /opt/xilinx/xrt/setup.sh` "
                                 "(XRT's environment) before starting the worker")
    return pyxrt


def _json_info(device, pyxrt, key: str) -> dict:
    try:
        return json.loads(device.get_info(getattr(pyxrt.xrt_info_device, key)) or "{}")
    except (RuntimeError, ValueError):
        return {}  # a report the platform does not provide is left out of Info, never invented


def _memory_summary(report: dict) -> str:
    """'32 x MEM_HBM = 8589934592 bytes, ...' from XRT's memory report (board.memory.memories[])."""
    banks: dict[str, list[int]] = {}
    for mem in report.get("board", {}).get("memory", {}).get("memories", []):
        try:
            banks.setdefault(mem.get("type", "?"), []).append(int(str(mem.get("range_bytes", "0")), 0))
        except ValueError:
            continue
    return ", ".join(f"{len(sizes)} x {kind} = {sum(sizes)} bytes" for kind, sizes in sorted(banks.items()))


@dataclass
class _Request:
    plan: KvPlan
    kv_offset: int  # bytes from the start of every PC
    written: torch.Tensor  # bool [num_layers, capacity_tokens]: which tokens' KV has arrived
    prompt_tokens: int | None = None  # set by seal()


class XrtCard(DecodeBackend):
    def __init__(self, image: WeightImage, pyxrt, device: str, xclbin: str, hbm_bytes: int = HBM_BYTES,
                 tag: str = "xrt"):
        if hbm_bytes % HBM_CHANNELS:
            raise InvalidArgument(f"--hbm-bytes {hbm_bytes} must split evenly over {HBM_CHANNELS} pseudo-channels")
        self.image, self.pyxrt, self.hbm_bytes, self.xclbin_path = image, pyxrt, hbm_bytes, xclbin
        self.channel_bytes = hbm_bytes // HBM_CHANNELS
        d = image.dims
        self._geometry = KvGeometry(d.num_layers, d.kv_heads, d.head_dim, torch.float16)
        self.space = KvSpace(image.kv_base, self.channel_bytes, self._geometry.block_bytes)
        self.device = self._open_device(device)
        self.kernel = self._load_kernel(xclbin)
        self.stand_in = bool(getattr(pyxrt, "STAND_IN", False))  # the test stand-in says so; XRT does not
        sync = pyxrt.xclBOSyncDirection
        self._to_device, self._from_device = sync.XCL_BO_SYNC_BO_TO_DEVICE, sync.XCL_BO_SYNC_BO_FROM_DEVICE
        self._result_bytes = result_bytes(d.vocab)
        self.args_bo = self._bo(STEP_ARGS_BYTES, ARGS_ARG)
        self.hbm = [self._bo(self.channel_bytes, FIRST_HBM_ARG + pc) for pc in range(HBM_CHANNELS)]
        self.result_bo = self._bo(self._result_bytes, RESULT_ARG)
        for pc, bo in enumerate(self.hbm):  # the weight image, once: PC bytes [0, kv_base)
            bo.write(image.channels[pc], 0)
            bo.sync(self._to_device, image.kv_base, 0)
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()  # guards _requests
        self.staging = HbmSegment(hbm_bytes, tag)  # host staging for senders on this host (transport shm)
        self._run_lock = threading.Lock()  # one kernel run at a time: the argument and result buffers are shared

    def _open_device(self, device: str):
        count = self.pyxrt.enumerate_devices()
        try:
            if device.isdigit():
                if int(device) >= count:
                    raise InvalidArgument(f"--device {device}: XRT sees {count} card(s) on this host (indices "
                                          f"0..{count - 1}); `xbutil examine` lists them")
                return self.pyxrt.device(int(device))
            return self.pyxrt.device(device)
        except RuntimeError as error:
            raise InvalidArgument(f"--device {device!r}: XRT cannot open it ({error}); give a card index or a "
                                  "PCI BDF such as 0000:3b:00.1 from `xbutil examine`") from None

    def _load_kernel(self, xclbin: str):
        if not xclbin or not Path(xclbin).is_file():
            raise InvalidArgument(f"--xclbin {xclbin!r} is not a file; give the path of the decode bitstream")
        try:
            binary = self.pyxrt.xclbin(xclbin)
            names = [k.get_name() for k in binary.get_kernels()]
            if KERNEL_NAME not in names:
                raise FailedPrecondition(f"--xclbin {xclbin} holds kernels {names}, not {KERNEL_NAME}; "
                                         "build it from the GLITCHES decode kernel")
            uuid = self.device.register_xclbin(binary)
            self.context = self.pyxrt.hw_context(self.device, uuid)
            return self.pyxrt.kernel(self.context, KERNEL_NAME)
        except RuntimeError as error:
            raise FailedPrecondition(f"XRT could not load --xclbin {xclbin}: {error}") from None

    def _bo(self, size: int, arg: int):
        return self.pyxrt.bo(self.device, size, self.pyxrt.bo.normal, self.kernel.group_id(arg))

    # --- facts --------------------------------------------------------------
    def facts(self) -> DeviceFacts:
        info = self.pyxrt.xrt_info_device
        name, bdf = self.device.get_info(info.name), self.device.get_info(info.bdf)
        extra = {"bdf": bdf, "numerics": "w4a8", "kv_dtype": "float16", "abi_version": "1",
                 "xclbin": self.xclbin_path, "weight_image_bytes": str(self.image.weight_bytes)}
        memory = _memory_summary(_json_info(self.device, self.pyxrt, "memory"))
        if memory:
            extra["memory"] = memory
        label = " (stand-in, not XRT)" if self.stand_in else ""
        return DeviceFacts(backend="xrt", emulated=self.stand_in, device_name=f"{name} [{bdf}]{label}",
                           hbm_bytes=self.hbm_bytes, kv_capacity_bytes=self.space.capacity_bytes, extra=extra)

    def sensors(self) -> SensorReading:
        """The card's own sensors, measured: pyxrt's electrical report (power_consumption_watts) and
        thermal report (the hottest present sensor's temp_C); a report the platform lacks is None."""
        power = _json_info(self.device, self.pyxrt, "electrical").get("power_consumption_watts")
        temps = [float(t["temp_C"]) for t in _json_info(self.device, self.pyxrt, "thermal").get("thermals", [])
                 if str(t.get("is_present", "true")) == "true" and "temp_C" in t]
        return SensorReading(power_w=float(power) if power not in (None, "") else None,
                             temperature_c=max(temps) if temps else None)

    def geometry(self) -> KvGeometry:
        return self._geometry

    def kv_free_bytes(self) -> int:
        return self.space.free_bytes()

    def kv_granularity_tokens(self) -> int:
        return HBM_CHANNELS * KV_BLOCK_TOKENS  # regions hold whole 512-token units

    # --- lifecycle --------------------------------------------------------------
    def reserve(self, request_id: str, max_tokens: int) -> None:
        plan = KvPlan.for_model(self.image.dims, max_tokens)
        offset = self.space.reserve(request_id, plan.region_bytes_per_channel)  # AlreadyExists, ResourceExhausted
        with self._lock:
            self._requests[request_id] = _Request(plan, offset, torch.zeros(plan.num_layers, plan.capacity_tokens,
                                                                            dtype=torch.bool))

    def _get(self, request_id: str) -> _Request:
        return lookup(self._requests, self._lock, request_id)

    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Write one chunk (key, value [1, kv_heads, seq, head_dim]) block by block to its HBM addresses."""
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
                    self.hbm[pc].sync(self._to_device, data.nbytes, offset)
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
                    self.hbm[pc].sync(self._to_device, end - begin, begin)
        span.fill_(True)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        request = self._get(request_id)
        check_sealable(request.written, prompt_tokens, request.plan.capacity_tokens)
        request.prompt_tokens = prompt_tokens

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        """One kernel run: write the step arguments, run, read back float32 logits [vocab]."""
        request = self._get(request_id)
        check_steppable(request_id, request.prompt_tokens is not None, position, request.plan.capacity_tokens)
        args = StepArgs.for_region(token_id, position, request.plan, request.kv_offset, self.channel_bytes)
        with self._run_lock:
            self.args_bo.write(args.pack(), 0)
            self.args_bo.sync(self._to_device, STEP_ARGS_BYTES, 0)
            run = self.kernel(self.args_bo, *self.hbm, self.result_bo)
            state = run.wait()
            if state != self.pyxrt.ert_cmd_state.ERT_CMD_STATE_COMPLETED:
                raise Unavailable(f"decode kernel run ended in state {state}; check the card with `xbutil examine`")
            self.result_bo.sync(self._from_device, self._result_bytes, 0)
            raw = self.result_bo.read(self._result_bytes, 0)
        result = StepResult.unpack(np.asarray(raw).tobytes(), OutputMode.LOGITS)
        if result.status != KernelStatus.OK:
            raise _STATUS_ERRORS[result.status](f"decode kernel status {result.status.value} ({result.status.name}) "
                                                f"for request {request_id} at position {position}")
        return torch.from_numpy(result.logits)

    def release(self, request_id: str) -> bool:
        forget(self._requests, self._lock, request_id)
        return self.space.release(request_id)

    def active_requests(self) -> list[str]:
        return request_ids(self._requests, self._lock)


def weight_image_for(source) -> WeightImage:
    """The weight image of a services.models.ModelSource: from its GGUF when it has one, else its float weights."""
    from fpga_worker.weight_image import build_from_gguf, build_from_state_dict

    if source.gguf_file is not None:
        return build_from_gguf(source.gguf_file)
    from services.models import load_causal_lm

    model = load_causal_lm(source, "cpu", "float32")
    return build_from_state_dict(model.config, model.state_dict())
