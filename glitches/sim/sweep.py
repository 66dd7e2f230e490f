"""Which mix of N GPUs + M FPGAs to buy: enumerate mixes within a budget, find each
one's goodput under an SLO, recommend the best, plot them.

Goodput of a mix: the highest Poisson request rate (requests/s) at which the
p90 TTFT and p90 TPOT still meet the SLO, found by bisection between 0 and the
mix's saturated capacity (closed loop, two requests per card). Token
throughput, power and efficiencies are those of the simulation at that rate,
so idle power counts. The same seed is used at every rate (common random
numbers), which keeps the bisection steady.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.profiles import DeviceProfile
from glitches.sim.run import build_config, run_simulation

OBJECTIVES = ("throughput_tokens_per_s", "cost_efficiency", "energy_efficiency")
BISECTION_STEPS = 7  # capacity / 2^7: rate resolution under 1% of capacity


@dataclass(frozen=True)
class Slo:
    ttft_p90_s: float
    tpot_p90_s: float

    def met_by(self, result: dict) -> bool:
        return result["ttft_s"]["p90"] <= self.ttft_p90_s and result["tpot_s"]["p90"] <= self.tpot_p90_s


@dataclass(frozen=True)
class MixResult:
    gpus: int
    fpgas: int
    price_usd: float
    peak_power_w: float  # every card at its higher busy power
    meets_slo: bool  # at some rate > 0
    goodput_requests_per_s: float
    throughput_tokens_per_s: float  # at the goodput rate (0 when the SLO is never met)
    cost_efficiency: float  # token/s/$ at the goodput rate
    energy_efficiency: float  # token/s/W at the goodput rate
    ttft_p90_s: float
    tpot_p90_s: float

    @property
    def label(self) -> str:
        return f"{self.gpus}G+{self.fpgas}F"


def peak_power_w(profile: DeviceProfile | None, count: int) -> float:
    return count * max(profile.prefill_w, profile.decode_w) if profile and count else 0.0


def mixes_within(gpu: DeviceProfile, fpga: DeviceProfile, budget_usd: float | None, budget_w: float | None,
                 max_cards: int) -> list[tuple[int, int]]:  # fmt: skip
    """Every (GPUs, FPGAs) with 1..max_cards cards whose price and peak power fit the budget."""
    if budget_usd is None and budget_w is None:
        raise InvalidArgument("give a budget in dollars or in watts (or both)")
    mixes = []
    for g in range(max_cards + 1):
        for f in range(max_cards + 1 - g):
            price = g * gpu.price_usd + f * fpga.price_usd
            power = peak_power_w(gpu, g) + peak_power_w(fpga, f)
            if g + f and (budget_usd is None or price <= budget_usd) and (budget_w is None or power <= budget_w):
                mixes.append((g, f))
    return mixes


def evaluate_mix(config, shapes, slo: Slo, seed: int) -> MixResult:
    cards = config.gpus + config.fpgas
    saturated = run_simulation(config, shapes, concurrency=2 * cards)
    capacity = saturated["requests_per_s"]
    best, lo, hi = None, 0.0, capacity
    for _ in range(BISECTION_STEPS):
        rate = (lo + hi) / 2
        result = run_simulation(config, shapes, request_rate=rate, seed=seed)
        if slo.met_by(result):
            best, lo = result, rate
        else:
            hi = rate
    price = saturated["price_usd"]
    power = peak_power_w(config.gpu, config.gpus) + peak_power_w(config.fpga, config.fpgas)
    if best is None:
        return MixResult(config.gpus, config.fpgas, price, power, False, 0.0, 0.0, 0.0, 0.0,
                         float("nan"), float("nan"))  # fmt: skip
    return MixResult(config.gpus, config.fpgas, price, power, True, lo, best["throughput_tokens_per_s"],
                     best["cost_efficiency"], best["energy_efficiency"], best["ttft_s"]["p90"],
                     best["tpot_s"]["p90"])  # fmt: skip


def sweep(
    gpu: str,
    fpga: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    slo: Slo,
    budget_usd: float | None = None,
    budget_w: float | None = None,
    max_cards: int = 8,
    objective: str = "throughput_tokens_per_s",
    num_requests: int = 200,
    profile_path: str | None = None,
    seed: int = 0,
) -> dict:
    """Simulate every mix within budget; recommend the one with the best `objective` that meets the SLO."""
    if objective not in OBJECTIVES:
        raise InvalidArgument(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    probe = build_config(1, gpu, 1, fpga, model, profile_path)
    shapes = [(input_tokens, output_tokens)] * num_requests
    results = []
    for g, f in mixes_within(probe.gpu, probe.fpga, budget_usd, budget_w, max_cards):
        config = build_config(g, gpu, f, fpga, model, profile_path)
        results.append(evaluate_mix(config, shapes, slo, seed))
    feasible = [r for r in results if r.meets_slo]
    best = max(feasible, key=lambda r: (getattr(r, objective), -r.price_usd), default=None)
    return {
        "inputs": {"gpu": gpu, "fpga": fpga, "model": model, "input_tokens": input_tokens,
                   "output_tokens": output_tokens, "slo": asdict(slo), "budget_usd": budget_usd,
                   "budget_w": budget_w, "max_cards": max_cards, "objective": objective,
                   "num_requests": num_requests},  # fmt: skip
        "mixes": [asdict(r) | {"label": r.label} for r in results],
        "recommended": (asdict(best) | {"label": best.label}) if best else None,
    }
