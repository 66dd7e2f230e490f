"""KV cache streamed GPU -> FPGA one layer at a time while the prefill runs.

Layer i's K and V can leave as soon as layer i is computed; sends share one
PCIe link, so they go one after another. The decode can start when the last
layer has arrived. What the prefill does not hide is the exposed transfer:

    exposed = max(0, last layer's send end - prefill end)

Layers are assumed to take equal time (prefill_s / layers) and equal bytes.

Concurrent transfers share their GPU's link (`SharedLink`): one layer send at a time at full
bandwidth, each send in the earliest idle gap of the link at or after its layer is ready (and after
the same transfer's previous layer). The simulator books a transfer when its prefill ends (it knows
the prefill's length only then), so where two streams want the same gap the one booked first has it.
A transfer alone on its link gets exactly `exposed_transfer_s`.
"""

from __future__ import annotations

from bisect import bisect_right

PCIE_GEN3_X16_GB_PER_S = 12.0  # effective, of ~15.8 GB/s raw; V100S is Gen3 x16


def kv_transfer_s(prompt_tokens: int, kv_bytes_per_token: float, link_gb_per_s: float) -> float:
    """Time to move a prompt's whole KV over the link, not overlapped, seconds."""
    return prompt_tokens * kv_bytes_per_token / (link_gb_per_s * 1e9)


def exposed_transfer_s(prefill_s: float, layers: int, transfer_s: float) -> float:
    """Transfer time left after the prefill ends, seconds (0 if fully hidden)."""
    layer_compute_s = prefill_s / layers
    layer_send_s = transfer_s / layers
    send_end = 0.0
    for i in range(layers):
        ready = (i + 1) * layer_compute_s  # layer i computed
        send_end = max(send_end, ready) + layer_send_s
    return max(0.0, send_end - prefill_s)


class SharedLink:
    """One GPU's outgoing link, booked by concurrent KV streams (see the module docstring). Seconds."""

    def __init__(self) -> None:
        self._starts: list[float] = []  # booked sends, sorted, never overlapping: absolute sim times
        self._ends: list[float] = []
        self.transfers = 0  # transfers booked so far
        self.waited_s = 0.0  # total time layer sends waited for other transfers' sends

    def _place(self, ready_s: float, send_s: float) -> float:
        """Book the earliest [t, t + send_s) with t >= ready_s that overlaps no booked send; returns t."""
        i = bisect_right(self._starts, ready_s) - 1
        t = max(ready_s, self._ends[i]) if i >= 0 else ready_s
        j = i + 1
        while j < len(self._starts) and self._starts[j] < t + send_s:
            t = max(t, self._ends[j])
            j += 1
        self._starts.insert(j, t)
        self._ends.insert(j, t + send_s)
        return t

    def book(self, prefill_end_s: float, prefill_s: float, layers: int, transfer_s: float) -> float:
        """Book one prefill's layer sends (layer i ready when its compute ends, prefill_s / layers each);
        returns the exposed seconds after prefill_end_s until its last layer has arrived."""
        start = prefill_end_s - prefill_s
        layer_compute_s, layer_send_s = prefill_s / layers, transfer_s / layers
        own_end = start  # this transfer's previous send end: its layers go in order
        for i in range(layers):
            ready = max(start + (i + 1) * layer_compute_s, own_end)
            begins = self._place(ready, layer_send_s)
            self.waited_s += begins - ready
            own_end = begins + layer_send_s
        self.transfers += 1
        return max(0.0, own_end - prefill_end_s)
