"""KV cache streamed GPU -> FPGA one layer at a time while the prefill runs.

Layer i's K and V can leave as soon as layer i is computed; sends share one
PCIe link, so they go one after another. The decode can start when the last
layer has arrived. What the prefill does not hide is the exposed transfer:

    exposed = max(0, last layer's send end - prefill end)

Layers are assumed to take equal time (prefill_s / layers) and equal bytes.
"""

from __future__ import annotations

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
