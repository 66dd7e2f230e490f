"""`glitches plan`: the cheapest device mix that meets a latency SLO on a workload, found with the simulator.

Search. A mix is (GPU kind, GPUs, decode GPUs, FPGA kind, FPGAs) from the catalogue (glitches/sim/catalogue.py)
within the limits: at most `max_cards` cards, `max_nodes` nodes (a node takes cards_per_node cards of a kind,
so a mix needs ceil((GPUs + decode GPUs) / gpu cards_per_node + FPGAs / fpga cards_per_node) nodes), a price
and a peak-power ceiling. Decode GPUs (glitches/sim/decode_gpu.py: GPUs of the mix's GPU kind with the decode
role only, taking the KV the prefill GPUs send) are searched only up to `max_decode_gpus` (default 0: none,
the mixes as before), and only beside at least one prefill GPU: with C cards and D decode GPUs at most the
mixes per kind pair are those of g + d + f <= C with d <= D (g >= 1 where d >= 1). Mixes are simulated in
increasing price; the first price at which some mix meets the SLO is the cheapest, and among the mixes at
that price the one with the most tokens/s wins.
With `explore_all` every mix is simulated (for the cost-vs-goodput front); the answer is the same.

Each mix runs the whole workload through sim.run.simulate_node: admission by
glitches/scheduler/placement.py, unchanged; GPUs at batch size 1 (the paper's setting) or, with gpu_batching,
batching continuously as the GPU worker now does (glitches/sim/gpu_batching.py). Batching GPUs get GPU-assist
slots by the GPU worker's own default (glitches/gpu_worker/assist_slots.py: what their KV budget holds at a
2048-token context, at most 256); batch-1 GPUs one slot, as in the paper. Decode GPUs always batch (the
worker has only its batching loop) with the worker's default slots from their KV budget.

SLO: TTFT and TPOT at a percentile (50, 90 or 99), each met when the simulated percentile is at most
the target. Margin to an SLO: (target - simulated) / target (0.2 = 20% headroom).
Goodput (for the front): output tokens/s of the requests that met both targets themselves.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from glitches.gpu_worker.assist_slots import default_assist_slots
from glitches.scheduler.placement import DeviceKind
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim import decode_gpu
from glitches.sim.catalogue import CatalogueEntry
from glitches.sim.kv_transfer import PCIE_GEN3_X16_GB_PER_S
from glitches.sim.metrics import summarise
from glitches.sim.node import NodeConfig
from glitches.sim.plan_workload import Workload
from glitches.sim.run import simulate_node

PERCENTILES = (50, 90, 99)
KV_BLOCK_TOKENS = 16  # the GPU worker's KV block (kv_plane.kv_abi.KV_BLOCK_TOKENS)
GPU_MAX_BATCH_TOKENS = 512  # the GPU worker's default --max-batch-tokens


@dataclass(frozen=True)
class PlanSlo:
    ttft_s: float
    tpot_s: float
    percentile: int = 90

    def __post_init__(self):
        if self.percentile not in PERCENTILES:
            raise InvalidArgument(f"SLO percentile must be one of {PERCENTILES}, got {self.percentile}")
        if self.ttft_s <= 0 or self.tpot_s <= 0:
            raise InvalidArgument("SLO targets must be positive seconds")


@dataclass(frozen=True)
class Limits:
    max_cards: int = 8
    max_nodes: int = 1
    max_price_usd: float | None = None
    max_power_w: float | None = None
    max_decode_gpus: int = 0  # decode-role GPUs a mix may have (0: mixes of prefill GPUs and FPGAs only)

    def __post_init__(self):
        if self.max_decode_gpus < 0:
            raise InvalidArgument(f"max_decode_gpus must be >= 0, got {self.max_decode_gpus}")


@dataclass(frozen=True)
class Mix:
    gpu: CatalogueEntry | None
    gpus: int
    fpga: CatalogueEntry | None
    fpgas: int
    decode_gpus: int = 0  # more GPUs of `gpu`'s kind with the decode role only

    @property
    def label(self) -> str:
        parts = ([f"{self.gpus}x{self.gpu.name}"] if self.gpus else []) + \
                ([f"{self.decode_gpus}x{self.gpu.name}(decode)"] if self.decode_gpus else []) + \
                ([f"{self.fpgas}x{self.fpga.name}"] if self.fpgas else [])
        return " + ".join(parts)

    @property
    def cards(self) -> int:
        return self.gpus + self.decode_gpus + self.fpgas

    @property
    def price_usd(self) -> float:
        return ((self.gpus + self.decode_gpus) * self.gpu.profile.price_usd if self.gpus else 0.0) + \
               (self.fpgas * self.fpga.profile.price_usd if self.fpgas else 0.0)

    @property
    def peak_power_w(self) -> float:
        return ((self.gpus + self.decode_gpus) * self.gpu.peak_power_w if self.gpus else 0.0) + \
               (self.fpgas * self.fpga.peak_power_w if self.fpgas else 0.0)

    @property
    def nodes(self) -> int:
        used = ((self.gpus + self.decode_gpus) / self.gpu.cards_per_node if self.gpus else 0.0) + \
               (self.fpgas / self.fpga.cards_per_node if self.fpgas else 0.0)
        return math.ceil(used - 1e-9)


def gpu_assist_slots(gpu: CatalogueEntry) -> int:
    """The GPU worker's default slots (glitches/gpu_worker/assist_slots.py) for this GPU's KV budget."""
    blocks = int(gpu.profile.kv_capacity_bytes // (KV_BLOCK_TOKENS * gpu.profile.kv_bytes_per_token))
    return default_assist_slots(blocks, 4096, GPU_MAX_BATCH_TOKENS)


def candidate_mixes(catalogue: dict[str, CatalogueEntry], limits: Limits) -> list[Mix]:
    """Every distinct mix within the limits, cheapest first (ties: fewer cards, then label)."""
    gpus = [e for e in catalogue.values() if e.kind == DeviceKind.GPU]
    fpgas = [e for e in catalogue.values() if e.kind == DeviceKind.FPGA]
    seen, mixes = set(), []
    for gpu in gpus or [None]:
        for fpga in fpgas or [None]:
            for g in range(limits.max_cards + 1 if gpu else 1):
                for d in range(min(limits.max_decode_gpus, limits.max_cards - g) + 1 if g else 1):
                    for f in range(limits.max_cards + 1 - g - d if fpga else 1):
                        mix = Mix(gpu if g else None, g, fpga if f else None, f, d)
                        if g + f == 0 or mix.label in seen:
                            continue
                        seen.add(mix.label)
                        if (mix.nodes <= limits.max_nodes
                                and (limits.max_price_usd is None or mix.price_usd <= limits.max_price_usd)
                                and (limits.max_power_w is None or mix.peak_power_w <= limits.max_power_w)):
                            mixes.append(mix)
    return sorted(mixes, key=lambda m: (m.price_usd, m.cards, m.label))


def evaluate(mix: Mix, workload: Workload, slo: PlanSlo, link_gb_per_s: float, seed: int,
             gpu_batching: bool = False) -> dict:
    """Simulate the workload on one mix: the figures `plan` prints for it."""
    # batch 1: one GPU-assist decode per GPU (the paper's setting; more would only alternate token by token)
    slots = (gpu_assist_slots(mix.gpu) if gpu_batching else 1) if mix.gpus else 0
    config = NodeConfig(mix.gpu.profile if mix.gpus else None, mix.gpus, mix.fpga.profile if mix.fpgas else None,
                        mix.fpgas, link_gb_per_s, slots, gpu_batching, GPU_MAX_BATCH_TOKENS,
                        decode_gpus=mix.decode_gpus)  # their slots: the worker's default from their KV budget
    try:
        node = simulate_node(config, workload.shapes, seed=seed, **workload.run_kwargs())
    except InvalidArgument as error:  # e.g. requests whose KV fits no FPGA and no GPU to assist
        return {"label": mix.label, "price_usd": mix.price_usd, "meets_slo": False, "error": str(error)}
    summary = summarise(node)
    key = f"p{slo.percentile}"
    ttft, tpot = summary["ttft_s"][key], summary["tpot_s"][key]
    if math.isnan(tpot):  # every request a single token: no TPOT to miss
        tpot = 0.0
    good_tokens = sum(r.output_tokens for r in node.records
                      if r.first_token_s - r.arrival_s <= slo.ttft_s
                      and (r.output_tokens < 2 or (r.token_times_s[-1] - r.first_token_s) / (r.output_tokens - 1)
                           <= slo.tpot_s))
    return {
        "label": mix.label, "gpu": mix.gpu.name if mix.gpus else None, "gpus": mix.gpus,
        "fpga": mix.fpga.name if mix.fpgas else None, "fpgas": mix.fpgas, "decode_gpus": mix.decode_gpus,
        "nodes": mix.nodes, "price_usd": mix.price_usd, "peak_power_w": mix.peak_power_w, "gpu_assist_slots": slots,
        "decode_gpu_slots": decode_gpu.slots(config) if mix.decode_gpus else 0,
        "meets_slo": bool(ttft <= slo.ttft_s and tpot <= slo.tpot_s),
        "ttft_s": ttft, "tpot_s": tpot,
        "ttft_margin": (slo.ttft_s - ttft) / slo.ttft_s, "tpot_margin": (slo.tpot_s - tpot) / slo.tpot_s,
        "tokens_per_s": summary["throughput_tokens_per_s"],
        "goodput_tokens_per_s": good_tokens / summary["duration_s"] if summary["duration_s"] > 0 else 0.0,
        "tokens_per_s_per_usd": summary["cost_efficiency"], "tokens_per_s_per_w": summary["energy_efficiency"],
        "avg_power_w": summary["avg_power_w"],
        "gpu_assist_share": summary["gpu_assist_requests"] / summary["num_requests"],
    }


def plan(catalogue: dict[str, CatalogueEntry], workload: Workload, slo: PlanSlo, limits: Limits = Limits(),
         link_gb_per_s: float = PCIE_GEN3_X16_GB_PER_S, seed: int = 0, explore_all: bool = False,
         gpu_batching: bool = False) -> dict:
    """Search the mixes (module docstring); returns {"best": figures or None, "evaluated": [...], ...}."""
    mixes = candidate_mixes(catalogue, limits)
    if not mixes:
        raise InvalidArgument("no mix of the catalogue fits the limits (cards, nodes, price, power)")
    evaluated, best, best_price = [], None, None
    for mix in mixes:
        if best_price is not None and mix.price_usd > best_price and not explore_all:
            break
        result = evaluate(mix, workload, slo, link_gb_per_s, seed, gpu_batching)
        evaluated.append(result)
        if result["meets_slo"] and (best_price is None or mix.price_usd <= best_price):
            if best is None or result["tokens_per_s"] > best["tokens_per_s"]:
                best, best_price = result, mix.price_usd
    return {
        "inputs": {"slo": asdict(slo), "limits": asdict(limits), "workload": workload.label(),
                   "requests": len(workload.shapes), "link_gb_per_s": link_gb_per_s, "seed": seed,
                   "gpu_batching": gpu_batching,
                   "mean_input_tokens": float(np.mean([s[0] for s in workload.shapes])),
                   "mean_output_tokens": float(np.mean([s[1] for s in workload.shapes]))},
        "catalogue": {name: {"profile_basis": e.basis, "price_usd": e.profile.price_usd,
                             "cards_per_node": e.cards_per_node} for name, e in catalogue.items()},
        "best": best,
        "evaluated": evaluated,
        "mixes_within_limits": len(mixes),
        "model_note": ("simulated (glitches/sim/): GPUs batching continuously (GPU-assist rows + prefill chunks per pass, "
                       f"{GPU_MAX_BATCH_TOKENS} tokens)" if gpu_batching else
                       "simulated (glitches/sim/): GPUs at batch size 1 (the paper's HuggingFace setting)")
                      + (", decode-role GPUs batching continuously" if limits.max_decode_gpus else "")
                      + ", one FPGA decode at a time; not a measurement",
    }


def pareto_front(evaluated: list[dict]) -> list[dict]:
    """The mixes no other beats on both price (lower) and goodput (higher), cheapest first."""
    rows = sorted((r for r in evaluated if "goodput_tokens_per_s" in r),
                  key=lambda r: (r["price_usd"], -r["goodput_tokens_per_s"]))
    front, best = [], -1.0
    for r in rows:
        if r["goodput_tokens_per_s"] > best:
            front.append(r)
            best = r["goodput_tokens_per_s"]
    return front
