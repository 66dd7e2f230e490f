"""`glitches fpga-timing`: the U280 timing model's modeled decode step (ms/token, the busiest pseudo-channel's HBM
loads, a per-part breakdown) for one model, context length and prefetch ratio, as text or JSON (labelled modeled).

`timing_report` computes the figures (timing_model.py over instruction_stream.py's program); `timing_cli` formats
them; glitches/cli_tools.py is the click command that calls it."""

from __future__ import annotations

import json

from glitches.fpga_worker.instruction_stream import step_program
from glitches.fpga_worker.timing_model import U280, breakdown_ms, calibrate, modeled_step_s, resolve_dims
from glitches.services.runtime.errors import InvalidArgument

DEVICE = "modeled xilinx_u280 (timing model, no card)"


def timing_report(model: str, context: int, prefetch_ratio: int = 4) -> dict:
    """Modeled decode-step figures for one model, context length (tokens) and prefetch ratio."""
    if context < 1:
        raise InvalidArgument(f"--context must be a positive number of tokens, got {context}")
    if prefetch_ratio < 1:
        raise InvalidArgument(f"--prefetch-ratio must be a positive integer, got {prefetch_ratio}")
    dims, hw = resolve_dims(model), U280()
    cal = calibrate(hw)
    seconds = modeled_step_s(dims, context, prefetch_ratio, cal, hw)
    program = step_program(dims, context, prefetch_ratio, hw.buffer_bytes)
    return {
        "model": model,
        "context": context,
        "prefetch_ratio": prefetch_ratio,
        "ms_per_token": seconds * 1e3,
        "tokens_per_s": 1.0 / seconds,
        "modeled": True,
        "device": DEVICE,
        "assumptions": "HBM 460 GB/s over 32 PCs, 6.91 TOPS INT8, exact-length merged loads, "
                       "32 KiB per-PC prefetch buffer, W4G32 weights, float16 KV; 2 constants fitted on the paper; "
                       "the loads are the bursts of the kernel source (glitches/fpga_worker/kernel, ABI v2), "
                       "which was never synthesised",
        "loads_per_step_busiest_pc": program.load_count,
        "hbm_bytes_per_step_busiest_pc": program.load_bytes,
        "load_size_histogram": {str(k): v for k, v in program.histogram().items()},
        "breakdown_ms": breakdown_ms(dims, context, prefetch_ratio, cal, hw),
        "calibration": {"instr_overhead_ns": cal.instr_overhead_s * 1e9, "op_overhead_us": cal.op_overhead_s * 1e6},
    }


def timing_cli(model: str, context: int, prefetch_ratio: int, as_json: bool) -> str:
    """What `glitches fpga-timing --model M --context N [--prefetch-ratio R] [--json]` prints."""
    report = timing_report(model, context, prefetch_ratio)
    if as_json:
        return json.dumps(report, indent=2)
    parts = ", ".join(f"{k.removesuffix('_ms')} {v:.2f}" for k, v in report["breakdown_ms"].items())
    return "\n".join([
        f"{DEVICE}",
        f"model {model}, context {context} tokens, prefetch ratio {prefetch_ratio}",
        f"modeled decode step: {report['ms_per_token']:.2f} ms/token ({report['tokens_per_s']:.1f} tokens/s, modeled)",
        f"modeled breakdown, ms: {parts}",
        "loads: the bursts glitches/fpga_worker/kernel's source issues (ABI v2; the kernel was never synthesised)",
        f"HBM loads per step in the busiest pseudo-channel: {report['loads_per_step_busiest_pc']} "
        f"({report['hbm_bytes_per_step_busiest_pc'] / 1e6:.1f} MB)",
        f"fitted constants: {report['calibration']['instr_overhead_ns']:.1f} ns per load instruction, "
        f"{report['calibration']['op_overhead_us']:.2f} us per operator",
    ])
