"""The simulator's KV-reuse model: held-KV LRU by bytes, the extend path's times, the trace's conversations,
`glitches simulate`'s reuse on/off report."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from glitches.scheduler.placement import PATH_EXTEND, PATH_TRANSFER
from glitches.scheduler.reuse_cost import DEFAULT_REUSE_COSTS, ReuseCosts
from glitches.sim.cli import render_text, simulate
from glitches.sim.held_cache import HeldCache
from glitches.sim.plan_workload import read_trace, write_trace
from glitches.sim.reuse import compare_reuse, conversation_trace, costs_from_profiles, reuse_summary
from glitches.sim.run import build_config, simulate_node
from tests.sim_helpers import node_config


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
    assert on["paths"] == {"transfer": 1, "extend": 1, "fresh": 0}
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
