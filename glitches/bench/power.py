"""What a worker's device draws and costs, where that is known; never invented.

An emulated U280 (backend "emu") gets the paper's figures for the card it stands in for
(46 W while decoding, $8000), labelled as such. The host CPU standing in for a GPU, and real
cards without a power reading here, are "unknown": any efficiency that needs them is None.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from glitches.types import WorkerStatus

PAPER_U280_POWER_W = 46.0  # GLITCHES slides, U280 running FlightLLM decode
PAPER_U280_PRICE_USD = 8000.0  # GLITCHES slides
PAPER_SOURCE = "paper figures for an emulated card"


@dataclass(frozen=True)
class DevicePower:
    kind: str  # "gpu" or "fpga"
    backend: str
    device_name: str
    power_w: float | None  # None: unknown
    price_usd: float | None  # None: unknown
    source: str  # where power_w / price_usd come from, or why they are unknown

    def to_dict(self) -> dict:
        return asdict(self)


def device_power(worker: WorkerStatus) -> DevicePower:
    if worker.kind == "fpga" and worker.backend == "emu":
        return DevicePower(worker.kind, worker.backend, worker.device_name, PAPER_U280_POWER_W,
                           PAPER_U280_PRICE_USD, PAPER_SOURCE)
    why = "unknown: host CPU standing in for a GPU" if worker.backend == "cpu" else "unknown: no power reading"
    return DevicePower(worker.kind, worker.backend, worker.device_name, None, None, why)


def efficiency(throughput_tokens_per_s: float, devices: dict[str, DevicePower]) -> dict:
    """tokens/s/W and tokens/s/$ over every device, or None with the reason when any figure is unknown."""
    unknown_power = sorted(w for w, d in devices.items() if d.power_w is None)
    unknown_price = sorted(w for w, d in devices.items() if d.price_usd is None)
    total_w = sum(d.power_w for d in devices.values() if d.power_w is not None)
    total_usd = sum(d.price_usd for d in devices.values() if d.price_usd is not None)
    ok_power = devices and not unknown_power and total_w > 0
    ok_price = devices and not unknown_price and total_usd > 0
    return {
        "power_w": total_w if ok_power else None,
        "price_usd": total_usd if ok_price else None,
        "tokens_per_s_per_w": throughput_tokens_per_s / total_w if ok_power else None,
        "tokens_per_s_per_usd": throughput_tokens_per_s / total_usd if ok_price else None,
        "efficiency_note": ("; ".join(f"{w}: {devices[w].source}" for w in sorted(set(unknown_power) |
                                                                            set(unknown_price)))
                            if unknown_power or unknown_price else
                            "; ".join(sorted({d.source for d in devices.values()}))),
    }
