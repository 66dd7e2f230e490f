"""The simulator's FPGA decode step: the kernel's own instruction-stream timing model, not a roofline.

An FPGA profile's decode step is `glitches/fpga_worker/timing_model.modeled_step_s` over the bursts
`glitches/fpga_worker/instruction_stream.step_program` counts in the kernel source (same merging, same
burst sizes, same prefetch ratio as `glitches fpga-timing`). Every figure is modeled; no card was measured.

- Context: the simulator's `decode_step_s(context_tokens)` and the model's `context` mean the same thing,
  tokens attended by the step including the new one (a request of P prompt tokens has steps P+1, P+2, ...).
- Calibration: the model's two fitted constants come from the paper's U280 (timing_model.calibrate on the
  default `U280()`): 21.50 ms/token for Llama-2-7B at prefetch ratio 1, which is also devices.json's u280
  `calibration.decode_s_per_token`. Other FPGA devices (u55c, v80) reuse those constants with their own
  HBM bandwidth and peak INT8 rate from devices.json, as their roofline efficiencies reuse the U280's.
- Prefetch ratio: `PAPER_CARD_PREFETCH_RATIO` (1, the card as the paper measured it: FlightLLM without
  GLITCHES' load merging) unless the caller names another; the kernel itself builds with
  GL_PREFETCH_RATIO = 4 (glitches/fpga_worker/kernel/Makefile PREFETCH_RATIO).
- Prefill on an FPGA stays the calibrated roofline (`RooflineTiming.prefill_s`): the kernel has no prefill.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from glitches.fpga_worker.abi import ModelDims
from glitches.fpga_worker.timing_model import U280, calibrate, modeled_step_s
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.model_shape import ModelShape

PAPER_CARD_PREFETCH_RATIO = 1  # the paper's measured U280 (FlightLLM, no prefetch): the calibration point


@dataclass(frozen=True)
class KernelDecodeTiming:
    """Prefill from the calibrated roofline; each decode step from the kernel's instruction stream."""

    roofline: object  # glitches.sim.profiles.RooflineTiming: prefill_s(prompt_tokens) -> s
    dims: ModelDims
    prefetch_ratio: int  # the kernel's GL_PREFETCH_RATIO
    hw: U280

    def prefill_s(self, prompt_tokens: int) -> float:
        return self.roofline.prefill_s(prompt_tokens)

    def decode_step_s(self, context_tokens: int) -> float:
        """Modeled seconds of one step attending `context_tokens` (>= 1) tokens."""
        return _step_s(self.dims, context_tokens, self.prefetch_ratio, self.hw)


@lru_cache(maxsize=65536)
def _step_s(dims: ModelDims, context: int, ratio: int, hw: U280) -> float:
    return modeled_step_s(dims, context, ratio, calibrate(), hw)


def model_dims(shape: ModelShape) -> ModelDims:
    """The kernel's view of a simulator model shape (RoPE theta and eps do not change the loads)."""
    return ModelDims(num_layers=shape.layers, hidden=shape.hidden, num_heads=shape.heads, kv_heads=shape.kv_heads,
                     head_dim=shape.head_dim, intermediate=shape.intermediate, vocab=shape.vocab,
                     rope_theta=10000.0, rms_eps=1e-5, tied_embeddings=shape.tied_embeddings)


def kernel_decode_timing(roofline, shape: ModelShape, spec: dict, prefetch_ratio: int | None = None) -> KernelDecodeTiming:
    """An FPGA device's timing from its devices.json entry: HBM GB/s and peak TOPS set the modeled card."""
    ratio = PAPER_CARD_PREFETCH_RATIO if prefetch_ratio is None else prefetch_ratio
    if ratio < 1:
        raise InvalidArgument(f"FPGA prefetch ratio must be a positive integer, got {ratio}")
    hw = U280(hbm_bytes_per_s=spec["bandwidth_gb_per_s"] * 1e9, peak_ops_per_s=spec["peak_tflops"] * 1e12)
    return KernelDecodeTiming(roofline, model_dims(shape), int(ratio), hw)
