"""An emulated decode card running the W4A8 kernel: the DecodeBackend interface over DecodeKernel.

HBM is modelled by its ABI layout (glitches/decode_contract/emu_kv.py, the same KV store as the reference
emulator): the weight image takes [0, kv_base) of every pseudo-channel (PC), and each request
gets one KV region at the same offset in every PC, placed first-fit in [kv_base, PC size) by
the one KV space (hbm_manager.KvSpace), inside a shared-memory segment a same-host sender can
write into. Regions hold whole 512-token units (32 PCs x 16-token blocks), so a reservation
rounds up. No card is involved: `facts()` says so.

Retention (emu_kv.py): the kernel writes each step's KV into the region, so a finished request's
region already holds prompt + stepped tokens; `retain` keeps it, `adopt` starts a request from it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch

from glitches.fpga_worker.abi import ABI_VERSION, HBM_BYTES, HBM_CHANNELS, KV_BLOCK_TOKENS
from glitches.decode_contract.device import DecodeBackend, DeviceFacts, SensorReading
from glitches.kv_plane.kv_types import KvGeometry
from glitches.decode_contract.emu_kv import EmulatedKvCalls, EmulatedKvStore
from glitches.fpga_worker.w4a8_kernel import DecodeKernel
from glitches.fpga_worker.weight_image import WeightImage, build_from_gguf, build_from_state_dict
from glitches.decode_contract.request_checks import check_sealable, check_steppable, forget, lookup, request_ids
from glitches.fpga_worker.sensors import BusyMeter, modeled_reading
from glitches.services.runtime.errors import InvalidArgument


KERNEL_NUMERICS = ("w4a8", "csim")  # the Python kernel, or the kernel source C-simulated


@dataclass
class _Request:
    prompt_tokens: int | None = None  # set by seal()


class W4A8EmulatedCard(EmulatedKvCalls, DecodeBackend):
    def __init__(self, image: WeightImage, hbm_bytes: int = HBM_BYTES, prefetch_ratio: int = 4, tag: str = "fpga",
                 numerics: str = "csim"):
        """numerics: "csim" (the default) runs the kernel source compiled with g++ (glitches/fpga_worker/kernel_csim.py)
        on the emulated HBM; "w4a8" the Python kernel (the readable specification). Same bits; csim measured
        2.3x faster per step (docs/benchmarks.md, "Emulator speed")."""
        if numerics not in KERNEL_NUMERICS:
            raise InvalidArgument(f"W4A8 card numerics must be one of {', '.join(KERNEL_NUMERICS)}, got {numerics!r}")
        if hbm_bytes % HBM_CHANNELS:
            raise InvalidArgument(f"--hbm-bytes {hbm_bytes} must split evenly over {HBM_CHANNELS} pseudo-channels")
        self.channel_bytes = hbm_bytes // HBM_CHANNELS
        if image.kv_base >= self.channel_bytes:
            raise InvalidArgument(f"--hbm-bytes {hbm_bytes} cannot hold the {image.weight_bytes}-byte weight image")
        self.image, self.hbm_bytes = image, hbm_bytes
        d = image.dims
        self.kv = EmulatedKvStore(hbm_bytes, image.kv_base, d.num_layers, d.kv_heads, d.head_dim, torch.float16, tag)
        self.numerics = numerics
        if numerics == "csim":
            from glitches.fpga_worker.kernel_csim import CsimDecoder

            self.kernel = CsimDecoder(image, self.kv.segment.memory, self.channel_bytes)
        else:
            self.kernel = DecodeKernel.from_image(image, prefetch_ratio)
        from glitches.fpga_worker.timing_model import calibrate

        calibrate()  # fit the timing model once (~1 s) now rather than on the first decode step
        self._requests: dict[str, _Request] = {}
        self._lock = threading.Lock()  # guards _requests
        self._compute_lock = threading.Lock()  # one kernel step at a time, like one card
        self.meter = BusyMeter()  # time spent stepping, for the modeled power (sensors())

    @classmethod
    def from_source(cls, source, hbm_bytes: int = HBM_BYTES, prefetch_ratio: int = 4,
                    tag: str = "fpga", numerics: str = "csim") -> "W4A8EmulatedCard":
        """From a services.models.ModelSource: its GGUF when it has one (exact blocks), else its float weights."""
        if source.gguf_file is not None:
            return cls(build_from_gguf(source.gguf_file), hbm_bytes, prefetch_ratio, tag, numerics)
        from glitches.services.generation.models import load_causal_lm

        model = load_causal_lm(source, "cpu", "float32")
        return cls(build_from_state_dict(model.config, model.state_dict()), hbm_bytes, prefetch_ratio, tag, numerics)

    def facts(self) -> DeviceFacts:
        return DeviceFacts(
            backend="emu", emulated=True,
            device_name="software emulator of an Alveo U280 decode card (no card), W4A8 kernel"
                        + (" C-simulated with g++ (never synthesised)" if self.numerics == "csim" else " in Python"),
            hbm_bytes=self.hbm_bytes, kv_capacity_bytes=self.kv.capacity_bytes,
            extra={"numerics": self.numerics, "kv_dtype": "float16", "abi_version": str(ABI_VERSION),
                   "weight_image_bytes": str(self.image.weight_bytes),
                   "prefetch_ratio": str(self.kernel.prefetch_ratio)},
        )

    def sensors(self) -> SensorReading:
        return modeled_reading(self.meter)  # modeled, labelled so: an emulator has no sensors

    def geometry(self) -> KvGeometry:
        d = self.image.dims
        return KvGeometry(d.num_layers, d.kv_heads, d.head_dim, torch.float16)

    def kv_granularity_tokens(self) -> int:
        return HBM_CHANNELS * KV_BLOCK_TOKENS  # regions hold whole 512-token units

    def kv_free_bytes(self) -> int:
        return self.kv.free_bytes()

    def kv_cached_bytes(self) -> int:
        return self.kv.evictable_bytes()

    def reserve(self, request_id: str, max_tokens: int) -> None:
        self.kv.reserve(request_id, max_tokens)  # AlreadyExists / ResourceExhausted
        with self._lock:
            self._requests[request_id] = _Request()

    def _get(self, request_id: str) -> _Request:
        return lookup(self._requests, self._lock, request_id)

    def seal(self, request_id: str, prompt_tokens: int) -> None:
        request, held = self._get(request_id), self.kv.get(request_id)
        check_sealable(held.written, prompt_tokens, held.region.plan.capacity_tokens)
        request.prompt_tokens = prompt_tokens

    def step(self, request_id: str, token_id: int, position: int) -> torch.Tensor:
        request, held = self._get(request_id), self.kv.get(request_id)
        check_steppable(request_id, request.prompt_tokens is not None, position, held.region.plan.capacity_tokens)
        with self._compute_lock, self.meter.busy():
            if self.numerics == "csim":
                return self.kernel.step(held.kv_offset, held.region.plan, token_id, position)
            return self.kernel.step(held.region, token_id, position)

    def modeled_step_s(self, context_tokens: int) -> float:
        """The U280 timing model's seconds for this step (glitches/fpga_worker/timing_model.py): modeled, not measured."""
        from glitches.fpga_worker.timing_model import calibrate, modeled_step_s

        return modeled_step_s(self.image.dims, context_tokens, self.kernel.prefetch_ratio, calibrate())

    def release(self, request_id: str) -> bool:
        known = forget(self._requests, self._lock, request_id)
        return self.kv.release(request_id) or known

    def retain(self, request_id: str, tokens: list[int], root: bytes) -> bool:
        """Keep the KV of `tokens` (prompt + stepped tokens) as cache; False: not kept (release it)."""
        request = self._requests.get(request_id)
        if request is None or request.prompt_tokens is None:
            return False
        forget(self._requests, self._lock, request_id)
        return self.kv.retain(request_id, tokens, root)

    def adopt(self, request_id: str, prompt: list[int], root: bytes, max_tokens: int, min_held: int) -> int:
        """Reserve for `max_tokens` starting from the longest held prefix of `prompt`; returns the tokens held."""
        n = self.kv.adopt(request_id, prompt, root, max_tokens, min_held)
        with self._lock:
            self._requests[request_id] = _Request(prompt_tokens=n)  # sealed: steps go on from token n
        return n

    def active_requests(self) -> list[str]:
        return request_ids(self._requests, self._lock)
