"""A per-device timeline of prefill, KV transfer and decode (like the paper's timeline figure).

Intervals are on the client's clock (seconds since the bench started), derived from the
client's token receive times and the scheduler's per-request timings:
- decode: first token received -> last token received, on the decode worker's row;
- prefill: it ended kv_exposed_s before the first token (the prefill RPC returns once the KV
  is in), so [first - kv_exposed_s - prefill_s, first - kv_exposed_s], on the prefill worker's row;
- KV transfer: streamed layer by layer from the prefill's start until kv_exposed_s after its
  end, on the receiving (decode) worker's row.
The scheduler's own overheads (tokenising, placement, RPC hops) are not separated out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from glitches.bench.records import RequestResult

COLOURS = {"prefill": "tab:blue", "kv": "tab:orange", "decode": "tab:green"}


def intervals(results: Sequence[RequestResult]) -> list[tuple[str, str, float, float, int]]:
    """(worker id, phase, start s, end s, request index) for every phase of every finished request."""
    out = []
    for r in results:
        if not r.ok or r.timings is None:
            continue
        t = r.timings
        first, last = r.token_times_s[0], r.token_times_s[-1]
        prefill_end = first - t.kv_exposed_s
        prefill_start = prefill_end - t.prefill_s
        out.append((r.prefill_worker, "prefill", prefill_start, prefill_end, r.index))
        if t.kv_bytes > 0 and r.decode_worker != r.prefill_worker:
            out.append((r.decode_worker, "kv", prefill_start, first, r.index))
        if last > first:
            out.append((r.decode_worker, "decode", first, last, r.index))
    return out


def plot_timeline(results: Sequence[RequestResult], path: str | Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    spans = intervals(results)
    workers = sorted({s[0] for s in spans}, key=lambda w: (not w.startswith("gpu"), w))
    row = {w: i for i, w in enumerate(workers)}
    # each worker row has 3 lanes (prefill / kv / decode) so overlapping phases stay visible
    lane = {"prefill": 0.0, "kv": 1 / 3, "decode": 2 / 3}
    fig, ax = plt.subplots(figsize=(12, 1.2 + 1.0 * len(workers)))
    for worker, phase, start, end, index in spans:
        y = row[worker] + lane[phase] - 0.45
        ax.broken_barh([(start, max(end - start, 1e-4))], (y, 0.3), facecolors=COLOURS[phase],
                       edgecolor="black", linewidth=0.4, alpha=0.75)
        if end - start > 0.02 * max(s[3] for s in spans):
            ax.text((start + end) / 2, y + 0.15, str(index), ha="center", va="center", fontsize=6)
    ax.set_yticks(range(len(workers)), workers)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the bench started (client clock)")
    ax.set_title(title or "per-device timeline (numbers: request index)")
    ax.legend(handles=[Patch(color=c, label={"kv": "KV transfer (receiving)"}.get(p, p)) for p, c in COLOURS.items()],
              loc="upper right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
