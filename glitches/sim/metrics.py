"""Serving-benchmark figures from a finished simulation.

Definitions (all times in seconds):
- TTFT: first token time - arrival (includes the scheduler queue).
- TPOT: per request, (last token - first token) / (output tokens - 1).
- ITL: every gap between consecutive tokens of a request, pooled over requests.
- E2E: last token time - arrival.
- duration: first arrival -> last token of the last request.
- throughput_tokens_per_s: output tokens / duration (the paper's token/s);
  total_tokens_per_s counts prompt tokens too.
- rejected_requests: refused by the scheduler's admission control (NodeConfig.admission); every other
  figure is over the requests served.
- utilisation of a device: busy seconds (prefill + decode) / duration.
- avg_power_w: sum over devices of (prefill s x prefill W + decode s x decode W
  + idle s x idle W) / duration.
- energy_efficiency: throughput_tokens_per_s / avg_power_w, token/s/W (= token/J).
- cost_efficiency: throughput_tokens_per_s / sum of device prices, token/s/$.
Percentiles are numpy's linear interpolation.
"""

from __future__ import annotations

import numpy as np

from glitches.sim.node import Node


def distribution(values) -> dict[str, float]:
    if len(values) == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    arr = np.asarray(values, dtype=float)
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def summarise(node: Node) -> dict:
    """The figures over the requests served; `rejected_requests` counts those admission control refused."""
    records = [r for r in node.records if not r.rejected]
    start_s = min(r.arrival_s for r in records)
    end_s = max(r.token_times_s[-1] for r in records)
    duration_s = end_s - start_s
    output_tokens = sum(r.output_tokens for r in records)
    prompt_tokens = sum(r.prompt_tokens for r in records)

    ttft = [r.first_token_s - r.arrival_s for r in records]
    e2e = [r.token_times_s[-1] - r.arrival_s for r in records]
    tpot = [(r.token_times_s[-1] - r.first_token_s) / (r.output_tokens - 1) for r in records if r.output_tokens > 1]
    itl = np.concatenate([np.diff(r.token_times_s) for r in records]) if records else []

    devices = {}
    total_power_w = 0.0
    for dev in node.devices.values():
        prof = dev.profile
        busy_s = dev.busy_prefill_s + dev.busy_decode_s
        idle_s = max(0.0, duration_s - busy_s)
        energy_j = dev.busy_prefill_s * prof.prefill_w + dev.busy_decode_s * prof.decode_w + idle_s * prof.idle_w
        power_w = energy_j / duration_s if duration_s > 0 else prof.idle_w
        total_power_w += power_w
        devices[dev.worker_id] = {
            "device": prof.name,
            "kind": prof.kind.value,
            "utilisation": busy_s / duration_s if duration_s > 0 else 0.0,
            "prefill_utilisation": dev.busy_prefill_s / duration_s if duration_s > 0 else 0.0,
            "decode_utilisation": dev.busy_decode_s / duration_s if duration_s > 0 else 0.0,
            "busy_s": busy_s,
            "avg_power_w": power_w,
        }
    price_usd = sum(dev.profile.price_usd for dev in node.devices.values())
    throughput = output_tokens / duration_s if duration_s > 0 else float("inf")
    assisted = sum(1 for r in records if r.decode_device == r.prefill_device and r.decode_device.startswith("gpu"))
    return {
        "num_requests": len(records),
        "rejected_requests": len(node.records) - len(records),
        "duration_s": duration_s,
        "requests_per_s": len(records) / duration_s if duration_s > 0 else float("inf"),
        "throughput_tokens_per_s": throughput,
        "total_tokens_per_s": (output_tokens + prompt_tokens) / duration_s if duration_s > 0 else float("inf"),
        "ttft_s": distribution(ttft),
        "tpot_s": distribution(tpot),
        "itl_s": distribution(itl),
        "e2e_s": distribution(e2e),
        "exposed_kv_s": distribution([r.exposed_kv_s for r in records  # the requests whose KV moved
                                      if r.decode_device.startswith(("fpga", "dgpu"))]),
        "gpu_assist_requests": assisted,
        "utilisation": {wid: d["utilisation"] for wid, d in devices.items()},
        "devices": devices,
        "avg_power_w": total_power_w,
        "price_usd": price_usd,
        "energy_efficiency": throughput / total_power_w if total_power_w > 0 else float("inf"),
        "cost_efficiency": throughput / price_usd if price_usd > 0 else float("inf"),
    }
