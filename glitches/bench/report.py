"""The bench report as fixed-width text (in the spirit of vLLM's serving benchmark)."""

from __future__ import annotations


def _fmt(value, spec: str, unknown: str = "unknown") -> str:
    return unknown if value is None else format(value, spec)


def render_text(result: dict) -> str:
    inp = result.get("inputs", {})
    lines = ["============ GLITCHES benchmark (live cluster) ============"]
    if inp:
        lines += [f"{'Address, model:':<36}{inp['address']}, {inp['model']}",
                  f"{'Requests, load:':<36}{result['num_requests']}, {inp['load']}"]
    kv = result["kv"]
    lines += [
        f"{'Completed / failed:':<36}{result['completed']} / {result['failed']}",
        f"{'Duration (s):':<36}{result['duration_s']:.2f}",
        f"{'Prompt / output tokens:':<36}{result['prompt_tokens']} / {result['output_tokens']}"
        f" (asked for {result['requested_output_tokens']}; {result['stopped_early']} stopped early at EOS/stop)",
        f"{'Request throughput (req/s):':<36}{result['requests_per_s']:.3f}",
        f"{'Output token throughput (tok/s):':<36}{result['throughput_tokens_per_s']:.2f}",
        f"{'Total token throughput (tok/s):':<36}{result['total_tokens_per_s']:.2f}",
        f"{'Goodput (req/s, tok/s):':<36}{result['goodput_requests_per_s']:.3f}, "
        f"{result['goodput_tokens_per_s']:.2f} ({result['good_requests']} requests meet "
        f"TTFT <= {result['slo']['ttft_s']} s, TPOT <= {result['slo']['tpot_s']} s; None = no SLO)",
        f"{'GPU-assisted requests:':<36}{result['gpu_assist_requests']}",
        f"{'KV GB/s (prefill+exposed window):':<36}{_fmt(kv['gb_per_s'], '.3f', 'n/a')} "
        f"({kv['requests']} requests, {kv['bytes'] / 1e6:.1f} MB)",
        f"{'Exposed KV (ms) mean/p50/p99:':<36}{kv['exposed_s']['mean'] * 1e3:.2f} / "
        f"{kv['exposed_s']['p50'] * 1e3:.2f} / {kv['exposed_s']['p99'] * 1e3:.2f}",
        f"{'Energy efficiency (tok/s/W):':<36}{_fmt(result['tokens_per_s_per_w'], '.4g')}",
        f"{'Cost efficiency (tok/s/$):':<36}{_fmt(result['tokens_per_s_per_usd'], '.4g')}",
        f"{'  (power/price):':<36}{result['efficiency_note']}",
    ]
    for key, title in (("ttft_s", "TTFT"), ("tpot_s", "TPOT"), ("itl_s", "ITL"), ("e2e_s", "E2E latency")):
        d = result[key]
        lines.append(f"{'-' * 12} {title} (ms) {'-' * 12}")
        lines += [f"{stat + ':':<36}{d[stat] * 1e3:.2f}" for stat in ("mean", "p50", "p90", "p99")]
    lines.append(f"{'-' * 12} Devices (busy / wall) {'-' * 12}")
    for wid, w in result["workers"].items():
        power = f"{_fmt(w.get('power_w'), '.0f')} W, ${_fmt(w.get('price_usd'), '.0f')}"
        lines.append(f"{wid:<10}{w.get('backend', '?'):<5} util {w['utilisation']:6.1%}  prefill "
                     f"{w['prefill_utilisation']:6.1%}  decode {w['decode_utilisation']:6.1%}  "
                     f"prefilled {w['requests_prefilled']:>3}  decoded {w['requests_decoded']:>3}  {power}")
    return "\n".join(lines)
