"""The simulator's FPGA decode step is the kernel's timing model: `glitches simulate` and `glitches fpga-timing`
give the same modeled ms/token for the same model, context and prefetch ratio (issue #24 item 6)."""

import json

import pytest
from click.testing import CliRunner

from glitches.cli import main as glitches_cli
from glitches.fpga_worker.timing_cli import timing_report
from glitches.fpga_worker.timing_model import PAPER_CONTEXTS_7B, PAPER_MS_PER_TOKEN_7B
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.cli import simulate
from glitches.sim.profiles import DEVICES_FILE, load_device_profile

# simulator model name -> the same shape's `glitches fpga-timing` preset
MODELS = {"llama-2-7b": "llama-2-7b", "smollm2-135m": "smollm2-135m-instruct"}


@pytest.mark.parametrize("sim_model", sorted(MODELS))
@pytest.mark.parametrize("ratio", [1, 4, 8])
def test_the_simulated_step_is_fpga_timings_ms_per_token(sim_model, ratio):
    timing = load_device_profile("u280", sim_model, fpga_prefetch_ratio=ratio).timing
    for context in (2, 128, 1792, 4096):
        report = timing_report(MODELS[sim_model], context, ratio)
        assert timing.decode_step_s(context) * 1e3 == pytest.approx(report["ms_per_token"], rel=1e-12)


def test_glitches_simulate_decodes_at_the_fpga_timing_figures_and_follows_the_prefetch_ratio():
    prompt, outputs = 1024, 9  # 8 decode steps on the card, contexts 1025..1032
    tpot = {}
    for ratio in (1, 4):
        result = simulate(1, "a100", 1, "u280", "llama-2-7b", prompt, outputs, 1, None, None, None,
                          fpga_prefetch_ratio=ratio)
        steps_ms = [timing_report("llama-2-7b", prompt + j, ratio)["ms_per_token"] for j in range(1, outputs)]
        tpot[ratio] = result["tpot_s"]["mean"] * 1e3
        assert tpot[ratio] == pytest.approx(sum(steps_ms) / (outputs - 1), rel=1e-9)  # exposed KV: in TTFT
        assert result["inputs"]["fpga_prefetch_ratio"] == ratio
    assert tpot[4] < tpot[1] / 1.1  # the kernel's load merging shortens the simulated step


def test_the_simulate_command_takes_the_kernels_prefetch_ratio():
    args = ["simulate", "--gpus", "1", "--fpgas", "1", "--input", "128", "--output", "5", "--num-requests", "1",
            "--json"]
    runs = {}
    for ratio in ("1", "4"):
        out = CliRunner().invoke(glitches_cli, args + ["--fpga-prefetch-ratio", ratio])
        assert out.exit_code == 0, out.output
        runs[ratio] = json.loads(out.output)
    assert runs["4"]["tpot_s"]["mean"] < runs["1"]["tpot_s"]["mean"]
    bad = CliRunner().invoke(glitches_cli, args + ["--fpga-prefetch-ratio", "0"])
    assert bad.exit_code != 0 and "prefetch ratio" in bad.output


def test_the_default_is_the_papers_card_and_its_calibration_figure_is_the_profiles():
    spec = json.loads(DEVICES_FILE.read_text())["u280"]["calibration"]
    assert spec["decode_s_per_token"] * 1e3 == PAPER_MS_PER_TOKEN_7B
    assert spec["decode_context_tokens"] in PAPER_CONTEXTS_7B
    default = load_device_profile("u280", "llama-2-7b").timing
    ratio_1 = load_device_profile("u280", "llama-2-7b", fpga_prefetch_ratio=1).timing
    assert default.decode_step_s(1792) == ratio_1.decode_step_s(1792)
    # the 511 steps of a [1536, 512] request average the paper's figure (the fit), prefill stays the roofline
    mean_s = sum(default.decode_step_s(c) for c in PAPER_CONTEXTS_7B) / len(PAPER_CONTEXTS_7B)
    assert mean_s * 1e3 == pytest.approx(PAPER_MS_PER_TOKEN_7B, rel=1e-9)
    assert default.prefill_s(1536) == pytest.approx(spec["prefill_s"], rel=1e-9)


def test_other_cards_keep_the_u280_constants_with_their_own_hbm_bandwidth():
    steps = {d: load_device_profile(d, "llama-2-7b").timing.decode_step_s(1792) for d in ("u280", "u55c", "v80")}
    assert steps["u55c"] == pytest.approx(steps["u280"], rel=0.01)  # same HBM (460 GB/s), same peak
    assert steps["v80"] < steps["u280"]  # 820 GB/s: the transfer part shrinks, the fixed costs do not
    assert steps["v80"] > steps["u280"] * 460 / 820


def test_a_bad_prefetch_ratio_is_refused():
    with pytest.raises(InvalidArgument, match="prefetch ratio"):
        load_device_profile("u280", "llama-2-7b", fpga_prefetch_ratio=0)
