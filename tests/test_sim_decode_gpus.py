"""Decode-role GPUs in the simulator (glitches/sim/decode_gpu.py) and in `glitches plan`'s search: known answers
on fixed-time devices.

Devices (tests/sim_helpers.fixed): a GPU that prefills in 1 s and decodes a step in 0.1 s (ConstantTiming: a
batched step of decode rows costs one decode step), or one whose batched step is a StepModel's (0.05 s + 0.01 s
per decode row), so a step of N rows has a known time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import pytest
import simpy
from click.testing import CliRunner

from glitches.cli import main
from glitches.scheduler.placement import DeviceKind
from glitches.services.cluster.worker_caps import DECODE_CLASS_GPU, ROLE_DECODE
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim import decode_gpu
from glitches.sim.catalogue import CatalogueEntry
from glitches.sim.cli import simulate
from glitches.sim.kv_transfer import exposed_transfer_s
from glitches.sim.node import Node, NodeConfig, RequestRecord
from glitches.sim.plan import Limits, PlanSlo, candidate_mixes, plan
from glitches.sim.plan_workload import Workload
from glitches.sim.run import run_simulation, simulate_node
from glitches.sim.step_model import StepModel
from tests.sim_helpers import fixed

KV_BYTES_PER_TOKEN = 1000.0
SLOW_LINK_GB_PER_S = 1e-4  # 1e5 bytes/s: a 100-token prompt's KV (1e5 bytes) takes 1 s
FAST_LINK_GB_PER_S = float("inf")  # the transfer takes 0 s


@dataclass(frozen=True)
class RowsTiming:
    """Prefill 1 s, a decode step alone 0.06 s; a batched pass is the StepModel's (prefill tokens cost 0 there)."""

    step_model: StepModel = StepModel(overhead_s=0.05, per_prefill_token_s=0.0, per_decode_row_s=0.01,
                                      per_context_token_s=0.0)

    def prefill_s(self, prompt_tokens: int) -> float:
        return 1.0

    def decode_step_s(self, context_tokens: int) -> float:
        return 0.06

    def step_s(self, chunks, decode_contexts, streamed_chunks=0) -> float:
        return self.step_model.step_s(chunks, decode_contexts)


def test_one_request_ttft_is_prefill_plus_transfer_and_tpot_the_decode_gpus_step():
    """One layer: nothing of the 1 s transfer hides behind the 1 s prefill, so TTFT = 2 s (the live first token
    waits for the KV); 10 more tokens at the decode GPU's 0.1 s step."""
    gpu = fixed("gpu", 1.0, 0.1, layers=1)
    node = simulate_node(NodeConfig(gpu, 1, None, 0, SLOW_LINK_GB_PER_S, decode_gpus=1), [(100, 11)])
    rec = node.records[0]
    assert (rec.prefill_device, rec.decode_device) == ("gpu0", "dgpu0")
    assert rec.first_token_s == pytest.approx(2.0) and rec.exposed_kv_s == pytest.approx(1.0)
    assert rec.token_times_s[-1] == pytest.approx(3.0)  # TPOT 0.1 s
    assert node.decode_gpus[0].loop.steps == 10 and node.gpus[0].busy_decode_s == 0.0


def test_a_layered_transfer_is_partly_hidden_by_the_prefill():
    gpu = fixed("gpu", 1.0, 0.1, layers=4)
    node = simulate_node(NodeConfig(gpu, 1, None, 0, SLOW_LINK_GB_PER_S, decode_gpus=1), [(100, 2)])
    assert node.records[0].first_token_s == pytest.approx(1.0 + exposed_transfer_s(1.0, 4, 1.0))  # 1.25 s


@pytest.mark.parametrize("rows", [1, 4, 8])
def test_concurrent_requests_batch_on_the_decode_gpu(rows):
    """N requests at once: one batched prefill pass (0.05 s), the KV arrives at once, then every decode step
    carries all N rows: TPOT = the step model's 0.05 + 0.01 x N s, output - 1 steps in all."""
    gpu = replace(fixed("gpu", 1.0, 0.06), timing=RowsTiming())
    config = NodeConfig(gpu, 1, None, 0, FAST_LINK_GB_PER_S, gpu_decode_slots=1, gpu_batching=True, decode_gpus=1)
    result = run_simulation(config, [(16, 21)] * rows)
    assert result["ttft_s"]["p99"] == pytest.approx(0.05)
    assert result["tpot_s"]["p50"] == pytest.approx(0.05 + 0.01 * rows)
    assert result["tpot_s"]["p99"] == pytest.approx(0.05 + 0.01 * rows)
    assert result["gpu_assist_requests"] == 0


def test_placement_sees_the_decode_gpu_as_the_scheduler_does_and_ranks_it_after_fpgas():
    gpu = fixed("gpu", 1.0, 0.1)
    node = simulate_node(NodeConfig(gpu, 1, fixed("fpga", 10.0, 0.05), 1, FAST_LINK_GB_PER_S, decode_gpus=1,
                                    decode_gpu_slots=3), [(16, 11)] * 3)
    view = node.decode_gpus[0].view()
    assert view.kind == DeviceKind.GPU and view.roles == frozenset({ROLE_DECODE})
    assert (view.decode_class, view.slots, view.active) == (DECODE_CLASS_GPU, 3, 0)
    assert view.kv_free_bytes == int(gpu.kv_capacity_bytes)  # every request has ended
    # the FPGA (decode class 10) first, then the decode GPU (20); the prefill GPU's assist slot stays free
    assert [r.decode_device for r in node.records] == ["fpga0", "dgpu0", "dgpu0"]


def test_a_decode_gpu_without_kv_room_is_not_chosen():
    """Its KV holds one request (27 tokens x 1000 B of 40 kB): the second goes to GPU assist on the prefill GPU,
    although the decode GPU has free slots."""
    gpu = fixed("gpu", 1.0, 0.1, kv_capacity_bytes=40_000.0)
    node = simulate_node(NodeConfig(gpu, 1, None, 0, FAST_LINK_GB_PER_S, gpu_decode_slots=1, decode_gpus=1,
                                    decode_gpu_slots=4), [(16, 11)] * 2)
    assert [r.decode_device for r in node.records] == ["dgpu0", "gpu0"]


def test_decode_gpu_slots_default_from_the_kv_budget():
    """As the GPU worker's --slots 0 (glitches/gpu_worker/assist_slots.py): the typical 2048-token requests its
    KV holds (16-token blocks), at most half of max_batch_tokens."""
    gpu = fixed("gpu", 1.0, 0.1, kv_capacity_bytes=3 * 2048 * KV_BYTES_PER_TOKEN)
    node = simulate_node(NodeConfig(gpu, 1, None, 0, FAST_LINK_GB_PER_S, decode_gpus=2), [(16, 2)])
    assert [d.decode_slots for d in node.decode_gpus] == [3, 3]
    big = simulate_node(NodeConfig(fixed("gpu", 1.0, 0.1), 1, None, 0, FAST_LINK_GB_PER_S, decode_gpus=1,
                                   gpu_max_batch_tokens=64), [(16, 2)])
    assert big.decode_gpus[0].decode_slots == 32


def test_decode_gpus_need_a_prefill_gpu():
    with pytest.raises(InvalidArgument, match="prefill"):
        simulate_node(NodeConfig(None, 0, fixed("fpga", 10.0, 0.05), 1, 1.0, decode_gpus=1), [(16, 2)])


def test_simulate_reports_the_decode_gpus_and_lets_the_prefill_gpu_only_prefill():
    """GPU assist off (gpu_decode_slots 0) and no FPGA: the decode GPU decodes everything (disaggregated)."""
    result = simulate(1, "a100", 0, "u280", "llama-2-7b", 512, 64, 8, None, 4, None, gpu_decode_slots=0,
                      decode_gpus=1)
    assert result["inputs"]["decode_gpus"] == 1
    assert set(result["devices"]) == {"gpu0", "dgpu0"} and result["gpu_assist_requests"] == 0
    assert result["devices"]["dgpu0"]["decode_utilisation"] > 0.5
    assert result["devices"]["gpu0"]["decode_utilisation"] == 0.0
    with pytest.raises(InvalidArgument, match="no decode GPU"):
        simulate(1, "a100", 0, "u280", "llama-2-7b", 512, 64, 8, None, 4, None, gpu_decode_slots=0)


def _catalogue(fpga_price_usd: float) -> dict[str, CatalogueEntry]:
    return {"g": CatalogueEntry("g", fixed("gpu", 1.0, 0.1, price_usd=1000.0), 8),
            "f": CatalogueEntry("f", fixed("fpga", 10.0, 0.05, price_usd=fpga_price_usd), 8)}


def _every_two_s() -> Workload:
    """5 requests of [16, 41] tokens, one every 2 s: each decodes 4 s, so the next prefill overlaps its decode."""
    return Workload(((16, 41),) * 5, arrivals_s=tuple(i * 2.0 for i in range(5)))


def _best(fpga_price_usd: float, max_decode_gpus: int) -> dict:
    result = plan(_catalogue(fpga_price_usd), _every_two_s(), PlanSlo(1.5, 0.11, 99),
                  Limits(max_cards=4, max_decode_gpus=max_decode_gpus), link_gb_per_s=1e9, gpu_batching=True)
    return result["best"]


def test_the_planner_picks_a_decode_gpu_when_it_is_the_cheapest_mix():
    """FPGA $3000. 1 g ($1000): the next prompt's 1 s prefill step carries the decode rows, a 1.1 s token gap
    (TPOT p99 0.18 s). 2 g ($2000): the least loaded prefill GPU is still decoding (0.13 s). 1 g + 1 decode g
    ($2000): the prefill GPU only prefills, the decode GPU steps every 0.1 s (a joining row waits at most one
    step: 0.1025 s). Without decode GPUs the cheapest is 3 g ($3000)."""
    best = _best(3000.0, max_decode_gpus=2)
    assert (best["label"], best["price_usd"], best["decode_gpus"]) == ("1xg + 1xg(decode)", 2000.0, 1)
    assert best["tpot_s"] == pytest.approx(0.1025) and best["gpu_assist_share"] == 0.0
    assert _best(3000.0, max_decode_gpus=0)["label"] == "3xg"


def test_the_planner_leaves_decode_gpus_out_when_fpgas_are_cheaper():
    """FPGA $300: 1 g + 2 f ($1600) meets the SLO (a free card for each overlapping request) below 1 g + 1 decode g."""
    best = _best(300.0, max_decode_gpus=2)
    assert (best["label"], best["price_usd"], best["decode_gpus"]) == ("1xg + 2xf", 1600.0, 0)


def test_decode_gpu_mixes_are_bounded_and_need_a_prefill_gpu():
    """Per kind pair: (g, f) with 1 <= g + f <= 4: 14 mixes; with up to 2 decode GPUs (g >= 1, g + d + f <= 4)
    9 more."""
    catalogue = _catalogue(300.0)
    assert len(candidate_mixes(catalogue, Limits(max_cards=4))) == 14
    mixes = candidate_mixes(catalogue, Limits(max_cards=4, max_decode_gpus=2))
    assert len(mixes) == 23
    assert all(m.gpus >= 1 and m.cards <= 4 and m.decode_gpus <= 2 for m in mixes if m.decode_gpus)
    with pytest.raises(InvalidArgument):
        Limits(max_decode_gpus=-1)


def test_the_commands_take_decode_gpus():
    out = CliRunner().invoke(main, ["simulate", "--gpus", "1", "--fpgas", "0", "--decode-gpus", "1", "--input", "256",
                                    "--output", "16", "--num-requests", "4", "--concurrency", "2"])
    assert out.exit_code == 0, out.output
    assert "1 x a100 + 1 x a100 (decode role) + 0 x u280" in out.output and "dgpu0 (a100)" in out.output
    out = CliRunner().invoke(main, ["plan", "--devices", "a100", "--max-cards", "2", "--max-decode-gpus", "1",
                                    "--num-requests", "6", "--concurrency", "2", "--input", "256", "--output", "16",
                                    "--slo-ttft", "5", "--slo-tpot", "0.5", "--all", "--json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.output)
    assert [r["label"] for r in result["evaluated"]] == ["1xa100", "1xa100 + 1xa100(decode)", "2xa100"]
    assert "decode-role GPUs" in result["model_note"]


def test_placement_needs_the_most_demanding_kv_and_each_decoder_reserves_its_own():
    """An FPGA at 500 B/token beside a decode GPU at 1000 B/token: placement asks every decoder for the GPU's
    1000 B/token (the live scheduler's kv_bytes_needed: the most demanding decode-role worker), the FPGA then
    reserves only its own 500 B/token."""
    env = simpy.Environment()
    node = Node(env, NodeConfig(fixed("gpu", 1.0, 0.1), 1, fixed("fpga", 10.0, 0.05, kv_bytes_per_token=500.0), 1,
                                FAST_LINK_GB_PER_S, decode_gpus=1))
    node.submit(RequestRecord(0, 16, 11, 0.0))
    env.run(until=0.5)  # admitted, prefilling
    assert node.records[0].decode_device == "fpga0"
    assert node.fpgas[0].kv_used_bytes == 27 * 500.0 and node.decode_gpus[0].kv_used_bytes == 0.0
    assert decode_gpu.placement_kv_bytes(node.config, 27, 27 * 500.0) == 27 * 1000.0
