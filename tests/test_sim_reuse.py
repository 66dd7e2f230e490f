"""The simulator's KV-reuse model: held-KV LRU by bytes, the extend and transfer-partial paths, a batching GPU's
prefix cache, the trace's conversations, `glitches simulate`'s reuse on/off report."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from glitches.scheduler.placement import PATH_EXTEND, PATH_TRANSFER, PATH_TRANSFER_PARTIAL
from glitches.scheduler.reuse_cost import DEFAULT_REUSE_COSTS, ReuseCosts
from glitches.sim.cli import render_text, simulate
from glitches.sim.held_cache import HeldCache
from glitches.sim.plan_workload import read_trace, write_trace
from glitches.sim.reuse import compare_reuse, conversation_trace, costs_from_profiles, reuse_summary
from glitches.sim.run import build_config, simulate_node
from tests.sim_helpers import fixed, node_config


def test_held_cache_is_lru_by_bytes_within_what_running_requests_leave():
    cache = HeldCache(capacity_bytes=1000, kv_bytes_per_token=10)
    cache.keep("a", 40, kv_in_use_bytes=0)
    cache.keep("b", 50, kv_in_use_bytes=0)
    cache.keep("c", 30, kv_in_use_bytes=0)  # 1,200 B: the least recent (a) goes
    assert (cache.held("a", 100), cache.held("b", 100), cache.held("c", 20), cache.evictions) == (0, 50, 20, 1)
    cache.shrink(kv_in_use_bytes=300)  # a request reserved 300 B: b goes, c (300 B) stays
    assert (cache.held("b", 100), cache.held("c", 100), cache.held_bytes) == (0, 30, 300)
    cache.keep("c", 200, kv_in_use_bytes=0)  # 2,000 B never fits: the conversation's older entry goes too
    assert cache.held("c", 100) == 0 and cache.held_bytes == 0


TWO_TURNS = dict(shapes=[(100, 11), (116, 10)], arrivals_s=[0.0, 100.0], conversations=[("c", 1), ("c", 2)])
# GPU prefill 1 s (any length), card step 0.05 s; the routing's costs: a GPU prefills 10 tokens/s
COSTS = ReuseCosts(gpu_prefill_tokens_per_s=10.0, card_forced_step_s=0.05, transfer_bytes_per_s=1e15,
                   queued_request_s=0.0)


def _run(kv_reuse: bool):
    config = replace(node_config(1, 1), kv_reuse=kv_reuse, reuse_costs=COSTS)
    return simulate_node(config, TWO_TURNS["shapes"], arrivals_s=TWO_TURNS["arrivals_s"],
                         conversations=TWO_TURNS["conversations"])


def test_second_turn_extends_on_the_card_that_decoded_the_first():
    """The card holds turn 1's prompt + reply but its last token (110 tokens): it forces 6, 0.05 s each."""
    on = _run(True).records
    assert [r.path for r in on] == [PATH_TRANSFER, PATH_EXTEND]
    second = on[1]
    assert (second.decode_device, second.prefill_device, second.reused_tokens) == ("fpga0", "", 110)
    assert second.first_token_s - second.arrival_s == pytest.approx(6 * 0.05)
    assert len(second.token_times_s) == 10 and second.token_times_s[-1] - second.first_token_s == pytest.approx(9 * 0.05)
    off = _run(False).records
    assert [r.path for r in off] == [PATH_TRANSFER, PATH_TRANSFER] and off[1].reused_tokens == 0
    assert off[1].first_token_s - off[1].arrival_s == pytest.approx(1.0)  # the GPU prefill again


def test_reuse_summary_counts_hits_paths_and_moved_kv():
    on, off = reuse_summary(_run(True)), reuse_summary(_run(False))
    assert on["hit_rate"] == pytest.approx(110 / 216) and off["hit_rate"] == 0.0
    assert on["paths"] == {"transfer": 1, "transfer-partial": 0, "extend": 1, "fresh": 0}
    assert (on["gpu_prefill_tokens"], off["gpu_prefill_tokens"]) == (100, 216)
    assert (on["kv_bytes_moved"], off["kv_bytes_moved"]) == (100 * 1000.0, 216 * 1000.0)  # 1,000 B/token
    assert on["ttft_later_turns_s"]["p50"] == pytest.approx(0.3) and off["ttft_later_turns_s"]["p50"] == pytest.approx(1.0)


def test_costs_from_the_paper_profiles_are_the_routing_defaults():
    costs = costs_from_profiles(build_config(1, "a100", 1, "u280", "llama-2-7b"))
    assert costs.gpu_prefill_tokens_per_s == pytest.approx(DEFAULT_REUSE_COSTS.gpu_prefill_tokens_per_s, rel=1e-6)
    assert costs.card_forced_step_s == pytest.approx(DEFAULT_REUSE_COSTS.card_forced_step_s, rel=0.02)
    assert costs.transfer_bytes_per_s == DEFAULT_REUSE_COSTS.transfer_bytes_per_s


def test_generated_chat_trace_has_the_stated_shape():
    workload = conversation_trace(300, seed=7)
    turns = {}
    for conversation, turn in workload.conversations:
        turns[conversation] = max(turns.get(conversation, 0), turn)
    assert 3.0 < np.mean(list(turns.values())) < 4.0  # 1 + Poisson(2.5), a few cut by the context
    assert 200 < np.median([o for _, o in workload.shapes]) < 360  # replies: median 280
    assert list(workload.arrivals_s) == sorted(workload.arrivals_s)
    assert conversation_trace(300, seed=7) == workload


def test_simulate_reports_reuse_on_and_off_for_a_multi_turn_trace(tmp_path):
    workload = conversation_trace(12, seed=3, rate_per_s=0.05)
    path = tmp_path / "chat.jsonl"
    write_trace(path, workload.arrivals_s, workload.shapes, workload.conversations)
    assert read_trace(path).conversations == workload.conversations
    result = simulate(1, "a100", 2, "u280", "llama-2-7b", 0, 0, 0, None, None, None, trace_path=str(path))
    reuse = result["reuse"]
    assert reuse["on"]["hit_rate"] > 0.3 and reuse["off"]["hit_rate"] == 0.0
    assert reuse["on"]["gpu_prefill_tokens"] < 0.7 * reuse["off"]["gpu_prefill_tokens"]
    assert "KV reuse (on / off)" in render_text(result)
    direct = compare_reuse(build_config(1, "a100", 2, "u280", "llama-2-7b"), workload)  # arrivals not rounded
    assert [(direct[k]["paths"], direct[k]["hit_rate"]) for k in ("on", "off")] == \
        [(reuse[k]["paths"], reuse[k]["hit_rate"]) for k in ("on", "off")]


# the routing's costs for transfer-partial: a forced card step (10 s) loses to a GPU prefill (1,000 tokens/s)
# plus the missing tokens' KV; the whole prompt's KV (1e3 B/token at 1e6 B/s: 0.116 s) loses to the missing 6
PARTIAL_COSTS = ReuseCosts(gpu_prefill_tokens_per_s=1000.0, card_forced_step_s=10.0, transfer_bytes_per_s=1e6,
                           queued_request_s=0.0)


def _run_partial(kv_reuse: bool, partial: bool = True):
    config = replace(node_config(1, 1), kv_reuse=kv_reuse, kv_reuse_partial=partial, reuse_costs=PARTIAL_COSTS)
    return simulate_node(config, TWO_TURNS["shapes"], arrivals_s=TWO_TURNS["arrivals_s"],
                         conversations=TWO_TURNS["conversations"])


def test_second_turn_on_the_partial_path_moves_only_the_new_tokens_kv():
    """Turn 1: 100 prompt + 11 reply; the card holds 110 tokens, the GPU the 100-token prompt. Turn 2 (116
    tokens): the GPU computes the 16 it lacks, only the KV of tokens 110..116 (6) goes to the card."""
    node = _run_partial(True)
    first, second = node.records
    assert [first.path, second.path] == [PATH_TRANSFER, PATH_TRANSFER_PARTIAL]
    assert (second.prefill_device, second.decode_device) == ("gpu0", "fpga0")
    assert (second.reused_tokens, second.card_held_tokens) == (100, 110)
    summary = reuse_summary(node)
    assert summary["kv_bytes_moved"] == (100 + 6) * 1000.0  # turn 1 whole, turn 2 the 6 new tokens x 1,000 B
    assert summary["gpu_prefill_tokens"] == 100 + 16
    assert summary["paths"] == {"transfer": 1, "transfer-partial": 1, "extend": 0, "fresh": 0}
    # the card adopted its prefix, then holds turn 2's prompt + reply but the last; the GPU turn 2's prompt
    card, gpu = node.devices["fpga0"], node.devices["gpu0"]
    assert (card.cache.held("c", 10_000), gpu.cache.held("c", 10_000)) == (116 + 10 - 1, 116)
    assert second.first_token_s - second.arrival_s == pytest.approx(1.0)  # ConstantTiming: a prefill is 1 s
    without = _run_partial(True, partial=False).records[1]  # the live --no-kv-reuse-partial: the whole prompt
    assert (without.path, without.card_held_tokens) == (PATH_TRANSFER, 0)


def test_partial_transfer_streams_only_the_missing_kv_over_the_link():
    """A slow link (1,000 B/token at 1e-5 GB/s = 1e4 B/s): the exposed transfer is the moved tokens' bytes only."""
    config = replace(node_config(1, 1, link_gb_per_s=1e-5), kv_reuse=True, reuse_costs=PARTIAL_COSTS)
    node = simulate_node(config, TWO_TURNS["shapes"], arrivals_s=TWO_TURNS["arrivals_s"],
                         conversations=TWO_TURNS["conversations"])
    first, second = node.records
    assert second.path == PATH_TRANSFER_PARTIAL
    # one layer: the send starts when the 1 s prefill ends, so all of it is exposed
    assert (first.exposed_kv_s, second.exposed_kv_s) == (pytest.approx(10.0), pytest.approx(0.6))


def test_a_batching_gpu_computes_only_the_tokens_its_cache_lacks():
    """GPU only, continuous batching, priced by a step model (1 s per step + 0.01 s per prefill token
    + 0.001 s per context token): turn 2 prefills its 16 new tokens over the 100 cached
    (1 + 0.16 + 0.1 = 1.26 s) instead of all 116 (2.16 s); turn 1 decodes by GPU assist, so the GPU
    holds its prompt + reply too (110 tokens) and turn 2 reuses them: 1 + 0.06 + 0.11."""
    from glitches.sim.step_model import StepModel

    class Stepped:  # a prefill of n tokens alone is one step
        model = StepModel(overhead_s=1.0, per_prefill_token_s=0.01, per_decode_row_s=0.0, per_context_token_s=0.001)
        step_s = model.step_s

        def prefill_s(self, prompt_tokens: int) -> float:
            return self.model.seconds(prompt_tokens, 0, 0)

        def decode_step_s(self, context_tokens: int) -> float:
            return self.model.seconds(0, 1, context_tokens)

    gpu = replace(fixed("gpu", 1.0, 0.1), timing=Stepped())
    results = {}
    for on in (True, False):
        config = replace(node_config(1, 0, gpu=gpu), gpu_batching=True, kv_reuse=on, reuse_costs=COSTS)
        node = simulate_node(config, TWO_TURNS["shapes"], arrivals_s=TWO_TURNS["arrivals_s"],
                             conversations=TWO_TURNS["conversations"])
        results[on] = node.records[1]
        summary = reuse_summary(node)
        assert summary["gpu_prefill_tokens"] == (100 + 6 if on else 216)
    assert results[True].reused_tokens == 110 and results[False].reused_tokens == 0
    assert results[True].first_token_s - results[True].arrival_s == pytest.approx(1.0 + 0.06 + 0.11)
    assert results[False].first_token_s - results[False].arrival_s == pytest.approx(1.0 + 1.16)


def test_reuse_off_is_priced_as_before_reuse_was_modelled():
    """Regression: a seeded chat trace with reuse off gives the figures of the simulator before the
    transfer-partial path and the batching GPU's cache existed (commit 2d24ce7), paper profiles."""
    workload = conversation_trace(12, seed=5, rate_per_s=0.2)
    expected = {  # (gpu_batching, fpgas): (summed TTFT s, last token s, GPU prefill tokens, KV bytes moved)
        (False, 2): (6.528702843336836, 278.4737802426574, 25591, 5705039872.0),
        (False, 0): (2932.2552551801427, 333.49149718618094, 25591, 0.0),
        (True, 2): (6.585715145730662, 278.47378024265737, 25591, 5705039872.0),
        (True, 0): (2934.137136446844, 333.6102350343026, 25591, 0.0),
    }
    for (batching, fpgas), (ttft_sum_s, end_s, prefill_tokens, kv_bytes) in expected.items():
        config = replace(build_config(1, "a100", fpgas, "u280", "llama-2-7b"), gpu_batching=batching)
        node = simulate_node(config, workload.shapes, arrivals_s=workload.arrivals_s,
                             conversations=workload.conversations)
        summary = reuse_summary(node)
        assert sum(r.first_token_s - r.arrival_s for r in node.records) == pytest.approx(ttft_sum_s, rel=1e-9)
        assert max(r.token_times_s[-1] for r in node.records) == pytest.approx(end_s, rel=1e-9)
        assert (summary["gpu_prefill_tokens"], summary["kv_bytes_moved"]) == (prefill_tokens, kv_bytes)
