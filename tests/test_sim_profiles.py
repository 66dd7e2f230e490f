"""Model shape arithmetic and device profiles against the paper's Llama-2-7B figures."""

import json

import pytest

from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.model_shape import load_model_shape
from glitches.sim.profiles import load_device_profile

PAPER = {  # device: (prefill 1536 tokens s, decode per token s, averaged over 512 outputs)
    "a100": (0.17585, 0.02426),
    "v100s": (0.39880, 0.02952),
    "u280": (5.00120, 0.02150),
}


def test_llama2_7b_shape_matches_the_papers_counts():
    m = load_model_shape("llama-2-7b")
    assert m.total_params == pytest.approx(6.74e9, rel=1e-3)
    assert m.kv_bytes_per_token(16) == 2 * 32 * 4096 * 2  # 512 KiB per token in fp16
    assert m.prefill_flops(1536) == pytest.approx(21137.01e9, rel=0.02)  # paper: 21137.01 GFLOP
    assert m.decode_flops(1792) == pytest.approx(14.16e9, rel=0.01)  # paper: 14.16 GFLOP
    assert m.decode_bytes(1792, 16, 16) == pytest.approx(14.08e9, rel=0.01)  # paper: 14.08 GB on GPU


@pytest.mark.parametrize("device", sorted(PAPER))
def test_calibrated_profiles_reproduce_the_paper_at_the_measured_point(device):
    prefill_s, decode_s = PAPER[device]
    timing = load_device_profile(device, "llama-2-7b").timing
    assert timing.prefill_s(1536) == pytest.approx(prefill_s, rel=1e-9)
    mean_step_s = sum(timing.decode_step_s(1536 + j) for j in range(1, 512)) / 511  # contexts 1537..2047
    assert mean_step_s == pytest.approx(decode_s, rel=1e-9)


def test_prefill_grows_faster_than_linearly_and_decode_grows_with_context():
    timing = load_device_profile("v100s", "llama-2-7b").timing
    assert timing.prefill_s(3072) > 2 * timing.prefill_s(1536)
    assert timing.decode_step_s(4096) > timing.decode_step_s(128)


def test_short_prompts_are_bounded_below_by_reading_the_weights_once():
    timing = load_device_profile("a100", "llama-2-7b").timing
    assert timing.prefill_s(1) == pytest.approx(timing.decode_step_s(0), rel=1e-9)


def test_roofline_profile_for_an_unmeasured_device_and_model():
    prof = load_device_profile("h100-pcie", "llama-3-8b")
    assert prof.kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # GQA: 8 KV heads
    assert 0 < prof.timing.prefill_s(512) < prof.timing.prefill_s(2048)


def test_unknown_names_are_rejected_with_the_known_ones(tmp_path):
    with pytest.raises(InvalidArgument, match="v100s"):
        load_device_profile("tpu", "llama-2-7b")
    with pytest.raises(InvalidArgument, match="llama-2-7b"):
        load_device_profile("a100", "gpt-5")
    bad = tmp_path / "devices.json"
    bad.write_text(json.dumps({"x": {"kind": "gpu", "peak_tflops": 1, "bandwidth_gb_per_s": 1, "memory_gb": 1,
                                     "price_usd": 1, "power_w": {"prefill": 1, "decode": 1, "idle": 1},
                                     "weight_bits": 16, "kv_bits": 16}}))  # fmt: skip
    with pytest.raises(InvalidArgument, match="calibration"):
        load_device_profile("x", "llama-2-7b", bad)
