"""Serving-benchmark figures from finished requests (the same definitions as sim.metrics).

All times in seconds, measured on the client's clock:
- TTFT: first output token received - request sent.
- TPOT: per request, (last token - first token) / (output tokens - 1).
- ITL: every gap between consecutive tokens of a request, pooled over requests.
- E2E: last token received - request sent.
- duration: first request sent -> last token of the last request.
- throughput_tokens_per_s: output tokens actually produced / duration.
- goodput: requests meeting every given SLO (TTFT <= slo_ttft_s, TPOT <= slo_tpot_s) / duration.
- utilisation of a worker: busy seconds / duration, where busy is the union of the intervals in
  which it prefilled or decoded (glitches.bench.timeline.intervals: from the client's token times
  and each request's prefill_s / kv_exposed_s), so overlapping requests count once. busy_sum_s is
  the plain sum of prefill_s and device_decode_s (the worker's own step times), which exceeds
  the wall time when a worker runs requests side by side (a CPU stand-in GPU does).
- KV GB/s: sum kv_bytes / sum (prefill_s + kv_exposed_s) over requests that streamed KV: the
  transfer runs alongside the prefill and ends kv_exposed_s after it, so this is the achieved
  rate over the window the transfer had, not the link's peak.
Percentiles are numpy's linear interpolation. Failed requests count in `failed` only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from glitches.bench.power import DevicePower, efficiency
from glitches.bench.records import RequestResult
from glitches.bench.timeline import intervals


def distribution(values: Iterable[float]) -> dict[str, float]:
    arr = np.asarray(list(values), dtype=float)
    if arr.size == 0:
        return {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "p99": float("nan")}
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"mean": float(arr.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


def meets_slo(result: RequestResult, slo_ttft_s: float | None, slo_tpot_s: float | None) -> bool:
    if slo_ttft_s is not None and result.ttft_s > slo_ttft_s:
        return False
    tpot = result.tpot_s
    return slo_tpot_s is None or tpot is None or tpot <= slo_tpot_s


def union_s(spans: Iterable[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals, seconds."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def busy_union(results: Sequence[RequestResult]) -> dict[str, dict[str, float]]:
    """worker id -> seconds in which it prefilled, decoded, or did either (overlaps counted once)."""
    spans: dict[str, dict[str, list]] = {}
    for worker, phase, start, end, _ in intervals(results):
        if phase != "kv":
            spans.setdefault(worker, {"prefill": [], "decode": []})[phase].append((start, end))
    return {w: {"prefill_s": union_s(p["prefill"]), "decode_s": union_s(p["decode"]),
                "busy_s": union_s(p["prefill"] + p["decode"])} for w, p in spans.items()}


def busy_seconds(results: Sequence[RequestResult]) -> dict[str, dict[str, float]]:
    """worker id -> {"prefill_s": ..., "decode_s": ...}: seconds the device itself was working."""
    busy: dict[str, dict[str, float]] = {}
    for r in results:
        if r.timings is None:
            continue
        busy.setdefault(r.prefill_worker, {"prefill_s": 0.0, "decode_s": 0.0})["prefill_s"] += r.timings.prefill_s
        busy.setdefault(r.decode_worker, {"prefill_s": 0.0, "decode_s": 0.0})["decode_s"] += r.timings.device_decode_s
    return busy


def kv_figures(results: Sequence[RequestResult]) -> dict:
    streamed = [r for r in results if r.timings is not None and r.timings.kv_bytes > 0]
    window_s = sum(r.timings.prefill_s + r.timings.kv_exposed_s for r in streamed)
    total_bytes = sum(r.timings.kv_bytes for r in streamed)
    return {
        "requests": len(streamed),
        "bytes": total_bytes,
        "gb_per_s": total_bytes / window_s / 1e9 if window_s > 0 else None,
        "exposed_s": distribution(r.timings.kv_exposed_s for r in streamed),
    }


def summarise(results: Sequence[RequestResult], devices: dict[str, DevicePower] | None = None,
              slo_ttft_s: float | None = None, slo_tpot_s: float | None = None) -> dict:
    """The benchmark report as one JSON-able dict. `devices`: worker id -> its power/price facts."""
    ok = [r for r in results if r.ok]
    failed = len(results) - len(ok)
    if not ok:
        raise ValueError(f"all {len(results)} requests failed; first error: {results[0].error if results else '-'}")
    start_s = min(r.start_s for r in ok)
    duration_s = max(r.token_times_s[-1] for r in ok) - start_s
    output_tokens = sum(r.output_tokens for r in ok)
    prompt_tokens = sum(r.prompt_tokens for r in ok)
    per_s = (lambda x: x / duration_s) if duration_s > 0 else (lambda x: float("inf"))
    good = [r for r in ok if meets_slo(r, slo_ttft_s, slo_tpot_s)]
    throughput = per_s(output_tokens)

    summed, union = busy_seconds(ok), busy_union(ok)
    zero = {"prefill_s": 0.0, "decode_s": 0.0, "busy_s": 0.0}
    workers = {}
    for wid in sorted(set(summed) | set(union) | set(devices or {})):
        b, u = summed.get(wid, zero), union.get(wid, zero)
        workers[wid] = {
            "busy_s": u["busy_s"],
            "busy_sum_s": b["prefill_s"] + b["decode_s"],
            "utilisation": u["busy_s"] / duration_s if duration_s > 0 else 0.0,
            "prefill_utilisation": u["prefill_s"] / duration_s if duration_s > 0 else 0.0,
            "decode_utilisation": u["decode_s"] / duration_s if duration_s > 0 else 0.0,
            "requests_prefilled": sum(1 for r in ok if r.prefill_worker == wid),
            "requests_decoded": sum(1 for r in ok if r.decode_worker == wid),
        }
        if devices and wid in devices:
            workers[wid].update(devices[wid].to_dict())
    return {
        "num_requests": len(results),
        "completed": len(ok),
        "failed": failed,
        "duration_s": duration_s,
        "requests_per_s": per_s(len(ok)),
        "throughput_tokens_per_s": throughput,
        "total_tokens_per_s": per_s(output_tokens + prompt_tokens),
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "requested_output_tokens": sum(r.requested_tokens for r in ok),
        "stopped_early": sum(1 for r in ok if r.output_tokens < r.requested_tokens),
        "ttft_s": distribution(r.ttft_s for r in ok),
        "tpot_s": distribution(r.tpot_s for r in ok if r.tpot_s is not None),
        "itl_s": distribution(np.concatenate([np.diff(r.token_times_s) for r in ok])),
        "e2e_s": distribution(r.e2e_s for r in ok),
        "slo": {"ttft_s": slo_ttft_s, "tpot_s": slo_tpot_s},
        "good_requests": len(good),
        "goodput_requests_per_s": per_s(len(good)),
        "goodput_tokens_per_s": per_s(sum(r.output_tokens for r in good)),
        # GPU assist: decoded where it was prefilled (a GPU with the decode role decodes another GPU's prefill)
        "gpu_assist_requests": sum(1 for r in ok if r.decode_worker and r.decode_worker == r.prefill_worker),
        "kv": kv_figures(ok),
        "workers": workers,
        **efficiency(throughput, devices or {}),
    }
