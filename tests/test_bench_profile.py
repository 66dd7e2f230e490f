"""The profile writer's output loads through the simulator's own reader (sim.measured)."""

from __future__ import annotations

import pytest

from glitches.bench.profile_doc import DeviceSamples, kv_link_gb_per_s, profile_document, write_profile
from glitches.scheduler.placement import DeviceKind
from glitches.sim.cli import simulate
from glitches.sim.measured import load_measured


def samples() -> dict[str, DeviceSamples]:
    gpu = DeviceSamples("gpu", "cpu", "host CPU", 24_000_000_000, None, None, "unknown: host CPU")
    gpu.prefill = {32: [0.20, 0.22, 0.18], 128: [0.5], 512: [1.6, 1.7]}
    gpu.decode = {40: [0.12]}
    gpu.kv_bytes_per_token = [46080.0, 46080.0]
    gpu.kv_gb_per_s = [0.1, 0.3, 0.2]
    fpga = DeviceSamples("fpga", "emu", "emulated U280", 8_000_000_000, 46.0, 8000.0, "paper figures")
    fpga.decode = {40: [0.08, 0.09], 264: [0.094]}
    fpga.kv_bytes_per_token = [46080.0]
    return {"gpu-cpu": gpu, "fpga-emu": fpga}


def test_profile_round_trips_through_the_simulators_loader(tmp_path):
    path = tmp_path / "profile.json"
    write_profile(profile_document("smollm2-135m-instruct", 30, samples(), ["test"]), path)
    loaded = load_measured(path)
    gpu, fpga = loaded["gpu-cpu"], loaded["fpga-emu"]
    assert gpu.profile.kind == DeviceKind.GPU and fpga.profile.kind == DeviceKind.FPGA
    assert gpu.profile.timing.prefill_s(32) == pytest.approx(0.20)  # median of the samples
    assert gpu.profile.timing.prefill_s(512) == pytest.approx(1.65)
    assert fpga.profile.timing.decode_step_s(40) == pytest.approx(0.085)
    assert gpu.kv_transfer_gb_per_s == pytest.approx(0.2) and fpga.kv_transfer_gb_per_s is None
    assert gpu.profile.prefill_w == 0.0 and fpga.profile.decode_w == 46.0 and fpga.profile.price_usd == 8000.0
    assert gpu.profile.layers == 30 and fpga.profile.kv_bytes_per_token == 46080.0
    # an FPGA never prefills behind a scheduler: filled token by token from its decode step
    assert fpga.profile.timing.prefill_s(32) == pytest.approx(32 * 0.085)
    result = simulate(1, "gpu-cpu", 2, "fpga-emu", "llama-2-7b", 32, 8, 4, None, 2, str(path))
    assert result["num_requests"] == 4 and result["ttft_s"]["p50"] > 0


def test_kv_link_from_exposed_time():
    assert kv_link_gb_per_s(30_000_000, 30, 0.01) == pytest.approx(0.1)  # 1 MB per layer in 10 ms
    assert kv_link_gb_per_s(0, 30, 0.01) is None and kv_link_gb_per_s(1000, 30, 0.0) is None
