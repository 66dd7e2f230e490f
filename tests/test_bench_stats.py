"""glitches.bench statistics on synthetic request records with known answers."""

from __future__ import annotations

import math

import pytest

from glitches.bench.power import DevicePower
from glitches.bench.records import RequestResult
from glitches.bench.stats import distribution, summarise
from glitches.bench.timeline import intervals
from glitches.types import Timings


def timings(prefill_s=0.5, kv_bytes=1000, kv_exposed_s=0.0, device_decode_s=1.0) -> Timings:
    return Timings(ttft_s=0.0, prefill_s=prefill_s, kv_bytes=kv_bytes, kv_exposed_s=kv_exposed_s, decode_s=0.0,
                   tokens_per_s=0.0, device_decode_s=device_decode_s, modeled_decode_s=0.0,
                   layers_received_before_prefill_end=0, num_layers=30, total_s=0.0)


def request(index, start_s, token_times_s, requested=None, decode_worker="fpga-0", **kw) -> RequestResult:
    return RequestResult(index, requested or len(token_times_s), start_s, list(token_times_s), prompt_tokens=10,
                         finish_reason="length", prefill_worker="gpu-0", decode_worker=decode_worker,
                         decode_device="gpu" if decode_worker.startswith("gpu") else "fpga", timings=timings(**kw))


def test_distribution_matches_numpy_linear_percentiles():
    d = distribution([1.0, 2.0, 3.0, 4.0, 5.0])
    assert d == {"mean": 3.0, "p50": 3.0, "p90": pytest.approx(4.6), "p99": pytest.approx(4.96)}
    assert all(math.isnan(v) for v in distribution([]).values())


def test_latency_throughput_and_goodput():
    # A: sent 0, tokens at 1, 2, 3 -> TTFT 1, TPOT 1, E2E 3; B: sent 1, tokens at 1.5, 2.0 -> TTFT 0.5, TPOT 0.5
    a = request(0, 0.0, [1.0, 2.0, 3.0])
    b = request(1, 1.0, [1.5, 2.0], requested=4, decode_worker="fpga-1")
    r = summarise([a, b], slo_ttft_s=0.8)
    assert r["duration_s"] == 3.0
    assert r["output_tokens"] == 5 and r["requested_output_tokens"] == 7 and r["stopped_early"] == 1
    assert r["throughput_tokens_per_s"] == pytest.approx(5 / 3)
    assert r["requests_per_s"] == pytest.approx(2 / 3)
    assert r["total_tokens_per_s"] == pytest.approx(25 / 3)
    assert r["ttft_s"]["mean"] == 0.75 and r["ttft_s"]["p50"] == 0.75
    assert r["tpot_s"]["mean"] == 0.75
    assert r["itl_s"]["mean"] == pytest.approx(2.5 / 3)  # gaps 1, 1, 0.5
    assert r["e2e_s"]["p50"] == 2.0  # E2E 3 and 1
    assert r["good_requests"] == 1  # only B meets TTFT <= 0.8 s
    assert r["goodput_requests_per_s"] == pytest.approx(1 / 3)
    assert r["goodput_tokens_per_s"] == pytest.approx(2 / 3)
    no_slo = summarise([a, b])
    assert no_slo["good_requests"] == 2


def test_tpot_slo_and_failed_requests():
    fast = request(0, 0.0, [0.1, 0.2, 0.3])  # TPOT 0.1
    slow = request(1, 0.0, [0.1, 0.5, 0.9])  # TPOT 0.4
    failed = RequestResult(2, 4, 0.0, error="Unavailable: no GPU")
    r = summarise([fast, slow, failed], slo_tpot_s=0.2)
    assert r["completed"] == 2 and r["failed"] == 1 and r["good_requests"] == 1
    with pytest.raises(ValueError, match="all 1 requests failed"):
        summarise([failed])


def test_utilisation_kv_and_gpu_assist():
    a = request(0, 0.0, [1.0, 4.0], prefill_s=0.5, kv_bytes=2_000_000_000, kv_exposed_s=0.5, device_decode_s=3.0)
    b = request(1, 0.0, [2.0, 4.0], decode_worker="gpu-0", prefill_s=1.0, kv_bytes=0, device_decode_s=1.0)
    r = summarise([a, b])
    assert r["duration_s"] == 4.0
    gpu, fpga = r["workers"]["gpu-0"], r["workers"]["fpga-0"]
    # gpu-0 prefilled a in [0, 0.5] and b in [1, 2] (first token at 2 s), decoded b in [2, 4]: union 3.5 s
    assert gpu["prefill_utilisation"] == pytest.approx(1.5 / 4) and gpu["decode_utilisation"] == pytest.approx(0.5)
    assert gpu["utilisation"] == pytest.approx(3.5 / 4) and gpu["busy_sum_s"] == pytest.approx(2.5)
    assert fpga["utilisation"] == pytest.approx(0.75) and fpga["requests_decoded"] == 1
    assert r["gpu_assist_requests"] == 1
    assert r["kv"]["requests"] == 1 and r["kv"]["gb_per_s"] == pytest.approx(2.0)  # 2 GB over 0.5 + 0.5 s
    assert r["kv"]["exposed_s"]["p50"] == 0.5


def test_efficiency_unknown_for_cpu_stand_in_known_for_emulated_cards():
    a = request(0, 0.0, [1.0, 2.0, 3.0])
    emu = DevicePower("fpga", "emu", "emu", 46.0, 8000.0, "paper figures for an emulated card")
    cpu = DevicePower("gpu", "cpu", "host CPU", None, None, "unknown: host CPU standing in for a GPU")
    only_cards = summarise([a], {"fpga-0": emu, "fpga-1": emu})
    assert only_cards["tokens_per_s_per_w"] == pytest.approx(1.0 / 92)
    assert only_cards["tokens_per_s_per_usd"] == pytest.approx(1.0 / 16000)
    assert "paper figures" in only_cards["efficiency_note"]
    mixed = summarise([a], {"gpu-0": cpu, "fpga-0": emu})
    assert mixed["tokens_per_s_per_w"] is None and mixed["tokens_per_s_per_usd"] is None
    assert "gpu-0: unknown" in mixed["efficiency_note"]
    assert mixed["workers"]["gpu-0"]["power_w"] is None


def test_overlapping_requests_count_once_in_utilisation():
    a = request(0, 0.0, [1.0, 2.0], prefill_s=1.0)
    b = request(1, 0.0, [1.0, 2.0], prefill_s=1.0)
    r = summarise([a, b])
    assert r["workers"]["gpu-0"]["prefill_utilisation"] == 0.5 and r["workers"]["gpu-0"]["busy_sum_s"] == 2.0


def test_timeline_intervals_from_client_times_and_timings():
    a = request(0, 0.0, [1.0, 3.0], prefill_s=0.5, kv_exposed_s=0.1)
    spans = {(w, p): (s, e) for w, p, s, e, _ in intervals([a])}
    assert spans[("gpu-0", "prefill")] == pytest.approx((0.4, 0.9))
    assert spans[("fpga-0", "kv")] == pytest.approx((0.4, 1.0))
    assert spans[("fpga-0", "decode")] == (1.0, 3.0)


def test_a_gpu_decoding_another_gpus_prefill_is_not_gpu_assist():
    """A GPU worker with the decode role reports decode_device "gpu" too; GPU assist is decoding where it prefilled."""
    moved = request(0, 0.0, [1.0, 2.0], decode_worker="gpu-decode-0")
    assist = request(1, 0.0, [1.0, 2.0], decode_worker="gpu-0", kv_bytes=0)
    assert summarise([moved, assist])["gpu_assist_requests"] == 1
