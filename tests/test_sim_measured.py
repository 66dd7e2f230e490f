"""The glitches.profile.v1 loader: interpolation, extrapolation, validation, use in simulate()."""

import json

import pytest

from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.cli import simulate
from glitches.sim.measured import load_measured


def _doc(**overrides):
    gpu = {
        "kind": "gpu", "price_usd": 10000, "power_w": {"prefill": 200, "decode": 150, "idle": 50},
        "kv_bytes_per_token": 1000, "kv_capacity_bytes": 1e10,
        "prefill": {"prompt_tokens": [100, 200, 400], "seconds": [0.1 + 1e-6 * n * n for n in (100, 200, 400)]},
        "decode": {"context_tokens": [100, 1100], "seconds_per_token": [0.02, 0.03]},
        "kv_transfer_gb_per_s": 8.0,
    }  # fmt: skip
    fpga = dict(gpu, kind="fpga", price_usd=5000, kv_transfer_gb_per_s=None,
                prefill={"prompt_tokens": [100], "seconds": [2.0]},
                decode={"context_tokens": [100, 1100], "seconds_per_token": [0.01, 0.01]})  # fmt: skip
    doc = {"format": "glitches.profile.v1", "model": "toy", "layers": 4, "devices": {"g": gpu, "f": fpga}}
    doc.update(overrides)
    return doc


def _write(tmp_path, doc):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    return path


def test_interpolates_inside_and_fits_outside(tmp_path):
    devices = load_measured(_write(tmp_path, _doc()))
    timing = devices["g"].profile.timing
    assert timing.decode_step_s(600) == pytest.approx(0.025)  # halfway between samples
    assert timing.decode_step_s(2100) == pytest.approx(0.04)  # linear fit continues
    assert timing.prefill_s(800) == pytest.approx(0.1 + 1e-6 * 800 * 800)  # quadratic fit is exact here
    assert timing.prefill_s(300) == pytest.approx((0.14 + 0.26) / 2)  # linear between 200 and 400
    assert devices["g"].kv_transfer_gb_per_s == 8.0
    assert devices["f"].profile.timing.prefill_s(5000) == 2.0  # one sample: constant


@pytest.mark.parametrize(
    "overrides, message",
    [({"format": "v0"}, "format"), ({"layers": 0}, "layers")],
)
def test_bad_files_are_rejected(tmp_path, overrides, message):
    with pytest.raises(InvalidArgument, match=message):
        load_measured(_write(tmp_path, _doc(**overrides)))


def test_samples_must_increase_and_fields_must_exist(tmp_path):
    doc = _doc()
    doc["devices"]["g"]["decode"]["context_tokens"] = [1100, 100]
    with pytest.raises(InvalidArgument, match="increase"):
        load_measured(_write(tmp_path, doc))
    doc = _doc()
    del doc["devices"]["g"]["power_w"]
    with pytest.raises(InvalidArgument, match="power_w"):
        load_measured(_write(tmp_path, doc))


def test_simulate_uses_measured_devices_and_their_link(tmp_path):
    path = str(_write(tmp_path, _doc()))
    result = simulate(1, "g", 1, "f", "llama-2-7b", 100, 11, 1, None, None, path)
    assert result["inputs"]["link_gb_per_s"] == 8.0
    # 4 layers, 25 ms compute each; 100 tokens x 1000 B at 8 GB/s is far faster -> last layer's send shows
    exposed_s = 100 * 1000 / 8e9 / 4
    assert result["e2e_s"]["mean"] == pytest.approx(0.11 + exposed_s + 10 * 0.01)
