"""What `glitches simulate` calls: one simulation from plain arguments, and its text report."""

from __future__ import annotations

from dataclasses import replace

from glitches.sim.admission import AdmissionLimits
from glitches.sim.plan_workload import read_trace
from glitches.sim.reuse import compare_reuse
from glitches.sim.run import build_config, run_simulation


def simulate(
    gpus: int,
    gpu: str,
    fpgas: int,
    fpga: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    num_requests: int,
    request_rate: float | None,
    concurrency: int | None,
    profile_path: str | None,
    *,
    link_gb_per_s: float | None = None,
    gpu_decode_slots: int = 1,
    seed: int = 0,
    trace_path: str | None = None,
    gpu_batching: bool = False,
    fpga_prefetch_ratio: int | None = None,
    decode_gpus: int = 0,
    decode_gpu_slots: int = 0,
    host_cores: float | None = None,
    admission: AdmissionLimits = AdmissionLimits(),
) -> dict:
    """Simulate `num_requests` requests of [input_tokens, output_tokens] on gpus x gpu + fpgas x fpga.

    request_rate (requests/s, Poisson) or concurrency (closed loop) or neither
    (all at once). decode_gpus more GPUs of the `gpu` profile take the decode role (glitches/sim/decode_gpu.py),
    with decode_gpu_slots each (0: from their KV budget). host_cores: the cores of the host CPU that devices with
    host_threads share (glitches/sim/host_cpu.py); None = the profile file's "host_cores" (else not modelled),
    0 = not modelled. admission: the scheduler's admission control (glitches/sim/admission.py; default off).
    Devices come from `profile_path` (glitches.profile.v1) when
    it names them, else from glitches/sim/profiles/devices.json. Raises
    services.errors.InvalidArgument on bad input. Returns the dict described
    in sim.metrics plus an "inputs" entry echoing the arguments; a trace with conversations (multi-turn
    chat) adds "reuse": the same trace with KV reuse on and off (glitches/sim/reuse.py).
    """
    config = build_config(gpus, gpu, fpgas, fpga, model, profile_path, link_gb_per_s, gpu_decode_slots,
                          fpga_prefetch_ratio, decode_gpus, decode_gpu_slots, host_cores)
    config = replace(config, gpu_batching=gpu_batching, admission=admission)
    if trace_path is not None:  # the trace's arrival times and lengths replace the other workload arguments
        workload = read_trace(trace_path)
        result = run_simulation(config, workload.shapes, seed=seed, arrivals_s=workload.arrivals_s)
        num_requests = len(workload.shapes)
        if workload.conversations is not None:
            result["reuse"] = compare_reuse(config, workload, seed)
    else:
        shapes = [(input_tokens, output_tokens)] * num_requests
        result = run_simulation(config, shapes, request_rate, concurrency, seed)
    result["inputs"] = {
        "gpus": gpus, "gpu": gpu, "fpgas": fpgas, "fpga": fpga, "model": model,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "num_requests": num_requests,
        "request_rate": request_rate, "concurrency": concurrency, "profile_path": profile_path,
        "link_gb_per_s": config.link_gb_per_s, "gpu_decode_slots": gpu_decode_slots, "seed": seed,
        "trace": trace_path, "gpu_batching": gpu_batching, "fpga_prefetch_ratio": fpga_prefetch_ratio,
        "decode_gpus": decode_gpus, "decode_gpu_slots": decode_gpu_slots, "host_cores": config.host_cores,
        "max_active": admission.max_active, "max_queued": admission.max_queued,
    }  # fmt: skip
    return result


def render_text(result: dict) -> str:
    """A fixed-width report in the spirit of vLLM's serving benchmark."""
    inp = result.get("inputs", {})
    lines = ["============ GLITCHES simulation ============"]
    if inp:
        load = (
            f"trace {inp['trace']}" if inp.get("trace")
            else f"Poisson {inp['request_rate']} req/s" if inp["request_rate"] is not None
            else f"closed loop x{inp['concurrency']}" if inp["concurrency"] is not None
            else "all at once"
        )  # fmt: skip
        decode = f" + {inp['decode_gpus']} x {inp['gpu']} (decode role)" if inp.get("decode_gpus") else ""
        lines += [
            f"{'Node:':<34}{inp['gpus']} x {inp['gpu']}{decode} + {inp['fpgas']} x {inp['fpga']}",
            f"{'Model, [input, output]:':<34}{inp['model']}, [{inp['input_tokens']}, {inp['output_tokens']}]",
            f"{'Requests, load:':<34}{inp['num_requests']}, {load}",
        ]
        if inp.get("host_cores"):
            lines.append(f"{'Shared host CPU (cores):':<34}{inp['host_cores']:g}")
        if inp.get("max_active"):
            lines.append(f"{'Scheduler admission:':<34}{inp['max_active']} running, {inp['max_queued']} queued; "
                         f"{result['rejected_requests']} refused")
    lines += [
        f"{'Duration (s):':<34}{result['duration_s']:.2f}",
        f"{'Request throughput (req/s):':<34}{result['requests_per_s']:.3f}",
        f"{'Output token throughput (tok/s):':<34}{result['throughput_tokens_per_s']:.2f}",
        f"{'Total token throughput (tok/s):':<34}{result['total_tokens_per_s']:.2f}",
        f"{'Average power (W):':<34}{result['avg_power_w']:.1f}",
        f"{'Energy efficiency (tok/s/W):':<34}{result['energy_efficiency']:.4g}",
        f"{'Device price ($):':<34}{result['price_usd']:.0f}",
        f"{'Cost efficiency (tok/s/$):':<34}{result['cost_efficiency']:.4g}",
        f"{'GPU-assisted requests:':<34}{result['gpu_assist_requests']}",
    ]
    for key, title in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E latency")):
        d = result[key]
        lines.append(f"{'-' * 12} {title} (ms) {'-' * 12}")
        lines += [f"{stat + ':':<34}{d[stat] * 1e3:.2f}" for stat in ("mean", "p50", "p90", "p99")]
    lines.append(f"{'-' * 12} Devices {'-' * 12}")
    for wid, dev in result["devices"].items():
        lines.append(
            f"{wid + ' (' + dev['device'] + ')':<22}util {dev['utilisation']:6.1%}  "
            f"prefill {dev['prefill_utilisation']:6.1%}  decode {dev['decode_utilisation']:6.1%}  "
            f"{dev['avg_power_w']:6.1f} W"
        )
    lines += _reuse_lines(result.get("reuse"))
    return "\n".join(lines)


def _reuse_lines(reuse: dict | None) -> list[str]:
    """The KV-reuse comparison (reuse on vs off), when the trace had conversations."""
    if not reuse:
        return []
    lines = [f"{'-' * 12} KV reuse (on / off) {'-' * 12}"]
    on, off = reuse["on"], reuse["off"]
    lines.append(f"{'Prefix hit rate:':<34}{on['hit_rate']:.1%} / {off['hit_rate']:.1%}")
    paths = on["paths"]
    lines.append(f"{'Paths (xfer/partial/ext/fresh):':<34}{paths['transfer']}/{paths['transfer-partial']}/"
                 f"{paths['extend']}/{paths['fresh']}")
    for stat in ("p50", "p99"):
        lines.append(f"{'TTFT turns 2+ ' + stat + ' (ms):':<34}{on['ttft_later_turns_s'][stat] * 1e3:.2f} / "
                     f"{off['ttft_later_turns_s'][stat] * 1e3:.2f}")
    lines.append(f"{'GPU prefill tokens:':<34}{on['gpu_prefill_tokens']} / {off['gpu_prefill_tokens']}")
    lines.append(f"{'KV bytes moved (GB):':<34}{on['kv_bytes_moved'] / 1e9:.2f} / {off['kv_bytes_moved'] / 1e9:.2f}")
    return lines
