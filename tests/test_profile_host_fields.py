"""The shared host of `glitches profile` and `glitches simulate` (issue #25): --host-threads parsing, with_host
writing host_cores/host_threads into a profile the simulator then reads, the loaded phase's closed loops, and
`simulate --host-cores`."""

import asyncio
import json

import click
import pytest
from click.testing import CliRunner

from glitches.bench.command import _device_threads
from glitches.bench.profile_doc import DeviceSamples, profile_document, with_host, write_profile
from glitches.bench.profile_loaded import run_closed_loops
from glitches.cli_tools import simulate_cmd
from glitches.sim.measured import load_measured
from glitches.sim.run import build_config


def test_host_threads_parse_device_equals_threads():
    assert _device_threads("gpu-cpu=2,fpga-emu=1") == (("gpu-cpu", 2), ("fpga-emu", 1))
    assert _device_threads("") == ()
    for bad in ("gpu-cpu", "gpu-cpu=0", "gpu-cpu=x"):
        with pytest.raises(click.BadParameter):
            _device_threads(bad)


def _samples(kind: str, decode_s: float) -> DeviceSamples:
    """One device measured at one length: 1 s prefill of 100 tokens, `decode_s` per token at context 100."""
    return DeviceSamples(kind=kind, backend="cpu" if kind == "gpu" else "emu", device_name=kind,
                         kv_capacity_bytes=10**10, power_w=None, price_usd=None, power_source="none",
                         prefill={100: [1.0]}, decode={100: [decode_s]}, kv_bytes_per_token=[1000.0])


def _doc() -> dict:
    return profile_document("toy", 1, {"g": _samples("gpu", 0.1), "f": _samples("fpga", 0.05)}, [])


def test_with_host_zero_cores_leaves_the_document_as_it_is():
    doc = _doc()
    before = json.loads(json.dumps(doc))
    assert with_host(doc, 0, {"g": 2}) == before


def test_with_host_writes_the_fields_and_the_simulator_reads_them(tmp_path):
    doc = with_host(_doc(), 2.0, {"g": 2, "f": 1})
    assert doc["host_cores"] == 2.0
    assert (doc["devices"]["g"]["host_threads"], doc["devices"]["f"]["host_threads"]) == (2, 1)
    path = tmp_path / "profile.json"
    write_profile(doc, path)
    devices = load_measured(path)
    assert devices["g"].host_cores == 2.0
    assert (devices["g"].profile.host_threads, devices["f"].profile.host_threads) == (2, 1)
    assert build_config(1, "g", 1, "f", "llama-2-7b", str(path)).host_cores == 2.0


def test_with_host_rejects_a_device_the_profile_lacks():
    with pytest.raises(ValueError, match="fpga-emu"):
        with_host(_doc(), 2.0, {"g": 2, "fpga-emu": 1})


class _FakeClient:
    """Records each prompt and the most requests in flight at once; a request takes 0.01 s."""

    def __init__(self):
        self.prompts: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def generate(self, prompt, max_tokens, ignore_eos):
        self.prompts.append(prompt)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1


def test_closed_loops_send_distinct_prompts_with_c_in_flight():
    counter = iter(range(10**6))
    maxima = {}
    prompts = []
    for concurrency in (2, 3):  # one loop per client each, to see each concurrency's own maximum
        client = _FakeClient()
        done = asyncio.run(run_closed_loops(client, lambda: f"prompt {next(counter)}", (concurrency,), 4, rounds=2))
        assert done == len(client.prompts) == concurrency * 2
        maxima[concurrency] = client.max_in_flight
        prompts += client.prompts
    assert maxima == {2: 2, 3: 3}
    both = _FakeClient()
    assert asyncio.run(run_closed_loops(both, lambda: f"prompt {next(counter)}", (2, 3), 4, rounds=2)) == 10
    assert both.max_in_flight == 3
    prompts += both.prompts
    assert len(set(prompts)) == len(prompts) == 20


def test_simulate_rejects_negative_host_cores_and_passes_others_on():
    args = ["--gpus", "1", "--fpgas", "1", "--input", "128", "--output", "3", "--num-requests", "1", "--json"]
    bad = CliRunner().invoke(simulate_cmd, args + ["--host-cores", "-1"])
    assert bad.exit_code == 2 and "--host-cores" in bad.output
    good = CliRunner().invoke(simulate_cmd, args + ["--host-cores", "3"])
    assert good.exit_code == 0, good.output
    assert json.loads(good.output)["inputs"]["host_cores"] == 3.0


def test_the_threads_a_local_cluster_gives_its_workers():
    """ClusterSpec.worker_threads is the rule LocalCluster starts workers with and validate_sim_poisson states
    as host_threads: a prefill GPU worker every CPU, the others an even share (at least 1)."""
    from glitches.cluster import ClusterSpec

    assert ClusterSpec(gpu_workers=1, fpga_workers=2).worker_threads(2) == (2, 1)
    assert ClusterSpec(gpu_workers=1, fpga_workers=1).worker_threads(8) == (8, 4)
    assert ClusterSpec(gpu_workers=1, fpga_workers=0).worker_threads(2) == (2, 2)
    assert ClusterSpec(gpu_workers=1, fpga_workers=2, threads_per_worker=3).worker_threads(2) == (3, 3)
