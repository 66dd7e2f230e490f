"""Layer-by-layer KV streaming against its closed forms."""

import pytest

from glitches.sim.kv_transfer import exposed_transfer_s, kv_transfer_s


def test_whole_transfer_time_is_bytes_over_bandwidth():
    # Llama-2-7B fp16, 1536 tokens = 805306368 B over 12 GB/s
    assert kv_transfer_s(1536, 524288, 12.0) == pytest.approx(1536 * 524288 / 12e9)


def test_link_faster_than_compute_exposes_only_the_last_layer():
    # each layer: 10 ms compute, 4 ms send -> only the last send shows
    assert exposed_transfer_s(prefill_s=0.32, layers=32, transfer_s=0.128) == pytest.approx(0.004)


def test_link_slower_than_compute_exposes_the_backlog():
    # sends queue up: last ends at one layer of compute + all sends
    prefill_s, layers, transfer_s = 0.1, 10, 0.5
    expected = transfer_s - (layers - 1) / layers * prefill_s
    assert exposed_transfer_s(prefill_s, layers, transfer_s) == pytest.approx(expected)


def test_one_layer_means_no_overlap():
    assert exposed_transfer_s(prefill_s=1.0, layers=1, transfer_s=0.3) == pytest.approx(0.3)
