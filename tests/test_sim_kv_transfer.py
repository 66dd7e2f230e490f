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


def test_a_transfer_alone_on_a_shared_link_gets_the_closed_form():
    from glitches.sim.kv_transfer import SharedLink

    for prefill_s, layers, transfer_s in ((0.32, 32, 0.128), (0.1, 10, 0.5), (1.0, 1, 0.3)):
        link = SharedLink()
        assert link.book(5.0 + prefill_s, prefill_s, layers, transfer_s) == pytest.approx(
            exposed_transfer_s(prefill_s, layers, transfer_s))
        assert link.waited_s == 0.0


def test_two_prompts_of_one_step_interleave_their_layers_on_the_link():
    from glitches.sim.kv_transfer import SharedLink

    # one batched step computes both prompts' layers together: 10 ms per layer, each send 4 ms
    link = SharedLink()
    first = link.book(0.32, 0.32, 32, 0.128)
    second = link.book(0.32, 0.32, 32, 0.128)
    assert first == pytest.approx(0.004)
    assert second == pytest.approx(0.008)  # each of its sends follows the other's in the same 10 ms: 8 ms < 10 ms
    assert link.waited_s == pytest.approx(32 * 0.004)


def test_a_saturated_link_serialises_concurrent_transfers():
    from glitches.sim.kv_transfer import SharedLink

    # sends slower than compute: the link is the bottleneck, two transfers take twice the bytes' time
    link = SharedLink()
    link.book(0.1, 0.1, 10, 0.5)
    second = link.book(0.1, 0.1, 10, 0.5)
    assert second == pytest.approx(2 * 0.5 - 0.1 + 0.01, abs=1e-9)  # link busy from the first layer's end


def test_the_simulator_shares_one_gpus_link_between_concurrent_streams():
    from dataclasses import replace

    from glitches.sim.run import simulate_node
    from tests.sim_helpers import fixed, node_config

    # 100 prompt tokens x 1e7 B = 1 GB over 1 GB/s: 1 s of sends, 0.25 s per layer; a batching GPU runs both
    # prompts in one 2 s step (0.5 s per layer), so their layers share the link
    gpu = fixed("gpu", 1.0, 0.1, layers=4, kv_bytes_per_token=1e7)
    config = replace(node_config(1, 2, gpu=gpu, link_gb_per_s=1.0), gpu_batching=True)
    alone = simulate_node(config, [(100, 4)]).records[0]
    both = simulate_node(config, [(100, 4)] * 2).records
    assert alone.exposed_kv_s == pytest.approx(0.25)  # only the last layer's send shows
    assert {r.decode_device for r in both} == {"fpga0", "fpga1"}
    assert sorted(r.exposed_kv_s for r in both) == pytest.approx([0.25, 0.5])  # the second waits for the first's
