"""The shared host CPU (glitches/sim/host_cpu.py): known answers, and devices sharing it in a node."""

import json
from dataclasses import asdict, replace

import pytest
import simpy

from glitches.scheduler.placement import PATH_EXTEND
from glitches.scheduler.reuse_cost import ReuseCosts
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.cli import simulate
from glitches.sim.host_cpu import HostCpu
from glitches.sim.measured import load_measured
from glitches.sim.run import build_config, simulate_node
from tests.sim_helpers import fixed, node_config


def _ends(cores: float, jobs: list[tuple[float, int, float]]) -> list[float]:
    """Each job's end time; jobs are (start s, threads, work s)."""
    env = simpy.Environment()
    cpu = HostCpu(env, cores)
    ends = [float("nan")] * len(jobs)

    def job(i, start_s, threads, work_s):
        yield env.timeout(start_s)
        yield cpu.run(threads, work_s)
        ends[i] = env.now

    for i, spec in enumerate(jobs):
        env.process(job(i, *spec))
    env.run()
    return ends


def test_a_job_alone_takes_its_work():
    assert _ends(2, [(0.0, 1, 0.3)]) == [0.3]
    assert _ends(2, [(0.0, 2, 0.3)]) == [0.3]
    assert _ends(2, [(0.0, 4, 0.3)]) == [0.3]  # more threads than cores: it was measured that way
    assert _ends(8, [(0.0, 1, 1.0), (0.0, 2, 0.5), (0.2, 3, 0.1)]) == pytest.approx([1.0, 0.5, 0.3])  # fit


def test_two_one_thread_jobs_on_one_core_end_together():
    assert _ends(1, [(0.0, 1, 1.0), (0.0, 1, 1.0)]) == [2.0, 2.0]


def test_the_short_job_ends_then_the_long_one_runs_alone():
    # 3 threads on 2 cores: rate 2/3; the 0.5 s job ends at 0.75, the 1 s job has 0.5 left, alone
    assert _ends(2, [(0.0, 2, 1.0), (0.0, 1, 0.5)]) == pytest.approx([1.25, 0.75])


def test_an_arrival_mid_job_slows_the_running_one():
    # A alone for 0.5 s, then both at 1/2: A's last 0.5 s ends at 1.5; B did 0.5 by then, ends at 2.0
    assert _ends(1, [(0.0, 1, 1.0), (0.5, 1, 1.0)]) == pytest.approx([1.5, 2.0])


def test_simultaneous_ends_despite_rounding_and_zero_work():
    ends = _ends(1, [(0.0, 1, 0.1), (0.0, 1, 0.1), (0.0, 1, 0.1), (0.05, 1, 0.0)])
    assert ends[:3] == pytest.approx([0.3] * 3) and len(set(ends[:3])) == 1
    assert ends[3] == 0.05


def test_bad_jobs_and_cores_are_rejected():
    env = simpy.Environment()
    for cores in (0, -1.0):
        with pytest.raises(InvalidArgument, match="cores"):
            HostCpu(env, cores)
    cpu = HostCpu(env, 2)
    with pytest.raises(InvalidArgument, match="thread"):
        cpu.run(0, 1.0)
    with pytest.raises(InvalidArgument, match="work"):
        cpu.run(1, -1.0)


# A node: the CPU stand-in GPU (2 threads) and two emulated cards (1 thread each) on a 2-core host.
P, F = 1.0, 0.05  # GPU prefill s, card decode step s


def _node(host_cores: float, threads: tuple[int, int] = (2, 1), **config):
    gpu = replace(fixed("gpu", P, 0.1), host_threads=threads[0])
    card = replace(fixed("fpga", 10.0, F), host_threads=threads[1])
    return replace(node_config(1, 2, gpu=gpu, fpga=card, gpu_decode_slots=0), host_cores=host_cores, **config)


def _tpots(node) -> list[float]:
    return [(r.token_times_s[-1] - r.first_token_s) / (r.output_tokens - 1) for r in node.records]


def test_a_card_slows_while_the_gpu_prefills_and_not_when_alone():
    node = simulate_node(_node(2.0), [(10, 11)] * 3)
    # r0 prefills alone [0, 1]; then card0 (1 thread) decodes while the GPU (2) prefills r1: 3 threads on 2
    # cores, rate 2/3: card0's 10 steps take 0.75 s, r1's prefill is half done, ends alone at 2.25; the same
    # for r1 on card1 while r2 prefills (r2 was admitted at 1.75, when card0 freed): r2 ready at 3.5, decodes
    # alone on card0
    assert _tpots(node) == pytest.approx([F * 1.5, F * 1.5, F])
    assert [r.first_token_s for r in node.records] == pytest.approx([1.0, 2.25, 3.5])
    assert [r.decode_device for r in node.records] == ["fpga0", "fpga1", "fpga0"]
    plain = simulate_node(_node(0.0), [(10, 11)] * 3)
    assert _tpots(plain) == pytest.approx([F] * 3)
    assert [r.first_token_s for r in plain.records] == pytest.approx([1.0, 2.0, 3.0])


def test_two_cards_fit_two_cores_and_four_threads_share_them():
    # out 41: card0 decodes r0's 40 steps (2 s alone) from t=1 while r1 prefills (3 threads, rate 2/3) until
    # 2.5, card0 1 s done; from 2.5 card0 (1 s left) and card1 (2 s) are 2 threads on 2 cores: full speed
    node = simulate_node(_node(2.0), [(10, 41)] * 2)
    assert node.records[1].first_token_s == pytest.approx(2.5)
    assert [r.token_times_s[-1] for r in node.records] == pytest.approx([3.5, 4.5])
    # cards with 2 threads: from 1, 4 threads at rate 1/2: r1's prefill ends at 3, card0 1 s done; from 3 the
    # cards are 4 threads, rate 1/2: card0 ends at 5, card1 then has 1 s left, alone: 6
    four = simulate_node(_node(2.0, threads=(2, 2)), [(10, 41)] * 2)
    assert four.records[1].first_token_s == pytest.approx(3.0)
    assert [r.token_times_s[-1] for r in four.records] == pytest.approx([5.0, 6.0])


def _records(node) -> list[dict]:
    return [asdict(r) for r in node.records]


@pytest.mark.parametrize("batching", [False, True])
def test_no_host_cores_gives_exactly_the_records_of_before(batching):
    shapes = [(10 + 7 * i, 5 + 3 * (i % 4)) for i in range(30)]
    gpu, card = fixed("gpu", P, 0.1), fixed("fpga", 10.0, F)
    before = node_config(1, 2, gpu=gpu, fpga=card, gpu_decode_slots=1)
    before = replace(before, gpu_batching=batching)
    expected = _records(simulate_node(before, shapes, request_rate=3.0, seed=7))
    with_fields = replace(before, gpu=replace(gpu, host_threads=2), fpga=replace(card, host_threads=1))
    assert _records(simulate_node(with_fields, shapes, request_rate=3.0, seed=7)) == expected  # host_cores 0
    not_on_host = replace(before, host_cores=2.0)  # a host CPU, but no device computes on it
    assert _records(simulate_node(not_on_host, shapes, request_rate=3.0, seed=7)) == expected


def test_a_batching_gpu_step_and_gpu_assist_slow_under_sharing():
    shapes = [(10, 21)] * 4
    plain = simulate_node(_node(0.0, gpu_batching=True, gpu_decode_slots=1), shapes)
    shared = simulate_node(_node(2.0, gpu_batching=True, gpu_decode_slots=1), shapes)
    assert max(r.token_times_s[-1] for r in shared.records) > max(r.token_times_s[-1] for r in plain.records)
    unbatched = simulate_node(_node(2.0, gpu_decode_slots=1), shapes)  # GPU assist, step by step
    assert all(r.done for r in unbatched.records)


def test_negative_host_cores_are_rejected():
    with pytest.raises(InvalidArgument, match="host cores"):
        simulate_node(_node(-1.0), [(10, 2)])


def _doc(**overrides):
    device = {
        "kind": "gpu", "price_usd": 0, "power_w": {"prefill": 0, "decode": 0, "idle": 0},
        "kv_bytes_per_token": 1000, "kv_capacity_bytes": 1e10,
        "prefill": {"prompt_tokens": [100], "seconds": [1.0]},
        "decode": {"context_tokens": [100], "seconds_per_token": [0.1]},
        "host_threads": 2,
    }  # fmt: skip
    card = dict(device, kind="fpga", decode={"context_tokens": [100], "seconds_per_token": [0.05]}, host_threads=1)
    doc = {"format": "glitches.profile.v1", "model": "toy", "layers": 1, "host_cores": 2,
           "devices": {"g": device, "f": card, "own": dict(card)}}  # fmt: skip
    del doc["devices"]["own"]["host_threads"]
    doc.update(overrides)
    return doc


def _write(tmp_path, doc) -> str:
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    return str(path)


def test_profiles_carry_host_cores_and_threads(tmp_path):
    devices = load_measured(_write(tmp_path, _doc()))
    assert devices["g"].host_cores == 2.0
    assert [devices[n].profile.host_threads for n in ("g", "f", "own")] == [2, 1, 0]
    doc = _doc()
    del doc["host_cores"]
    assert load_measured(_write(tmp_path, doc))["g"].host_cores is None


@pytest.mark.parametrize("value", [0, -2, "2", True])
def test_bad_host_cores_are_rejected(tmp_path, value):
    doc = _doc(host_cores=value)
    with pytest.raises(InvalidArgument, match="host_cores"):
        load_measured(_write(tmp_path, doc))


@pytest.mark.parametrize("value", [-1, 1.5, "2", True])
def test_bad_host_threads_are_rejected(tmp_path, value):
    doc = _doc()
    doc["devices"]["f"]["host_threads"] = value
    with pytest.raises(InvalidArgument, match="host_threads"):
        load_measured(_write(tmp_path, doc))


def test_build_config_takes_the_profile_host_cores_unless_overridden(tmp_path):
    path = _write(tmp_path, _doc())
    assert build_config(1, "g", 2, "f", "llama-2-7b", path).host_cores == 2.0
    assert build_config(1, "g", 2, "f", "llama-2-7b", path, host_cores=0).host_cores == 0.0
    assert build_config(1, "g", 2, "f", "llama-2-7b", path, host_cores=4).host_cores == 4.0
    assert build_config(1, "a100", 2, "u280", "llama-2-7b", path).host_cores == 0.0  # none from the file
    with pytest.raises(InvalidArgument, match="host cores"):
        build_config(1, "g", 2, "f", "llama-2-7b", path, host_cores=-1)


def test_simulate_cards_tpot_grows_with_the_shared_host(tmp_path):
    path = _write(tmp_path, _doc())
    args = (1, "g", 2, "f", "llama-2-7b", 100, 21, 6, None, None, path)
    shared = simulate(*args, gpu_decode_slots=0)
    alone = simulate(*args, gpu_decode_slots=0, host_cores=0)
    assert shared["inputs"]["host_cores"] == 2.0 and alone["inputs"]["host_cores"] == 0.0
    assert shared["tpot_s"]["mean"] > alone["tpot_s"]["mean"] == pytest.approx(0.05)


def test_a_cards_forced_steps_share_the_host_too():
    # turn 2 of "c" extends on the card (6 forced steps, 0.3 s alone) while "x", arriving with it, prefills on
    # the GPU (GPU assist: the one card is taken): 3 threads on 2 cores, rate 2/3: the forcing takes 0.45 s and
    # the 9 decode steps 0.675 s, to 101.125; the GPU's prefill (0.75 s done) then ends alone at 101.375
    gpu, card = replace(fixed("gpu", P, 0.1), host_threads=2), replace(fixed("fpga", 10.0, F), host_threads=1)
    costs = ReuseCosts(gpu_prefill_tokens_per_s=10.0, card_forced_step_s=0.05, transfer_bytes_per_s=1e15,
                       queued_request_s=0.0)
    config = replace(node_config(1, 1, gpu=gpu, fpga=card), kv_reuse=True, reuse_costs=costs, host_cores=2.0)
    node = simulate_node(config, [(100, 11), (116, 10), (50, 2)], arrivals_s=[0.0, 100.0, 100.0],
                         conversations=[("c", 1), ("c", 2), ("x", 1)])
    second, other = node.records[1], node.records[2]
    assert (second.path, other.decode_device) == (PATH_EXTEND, "gpu0")
    assert second.first_token_s == pytest.approx(100.45)
    assert second.token_times_s[-1] == pytest.approx(100.45 + 0.675)
    assert other.first_token_s == pytest.approx(101.375)
