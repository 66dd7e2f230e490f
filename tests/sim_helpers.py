"""Fixed-time device profiles for closed-form simulator tests."""

from __future__ import annotations

from glitches.scheduler.placement import DeviceKind
from glitches.sim.node import NodeConfig
from glitches.sim.profiles import ConstantTiming, DeviceProfile


def fixed(kind: str, prefill_s: float, decode_s: float, *, layers: int = 1, kv_capacity_bytes: float = 1e12,
          kv_bytes_per_token: float = 1000.0, power_w: float = 100.0, idle_w: float = 10.0,
          price_usd: float = 1000.0) -> DeviceProfile:  # fmt: skip
    return DeviceProfile(
        name=f"fixed-{kind}",
        kind=DeviceKind(kind),
        timing=ConstantTiming(prefill_s, decode_s),
        price_usd=price_usd,
        prefill_w=power_w,
        decode_w=power_w,
        idle_w=idle_w,
        kv_bytes_per_token=kv_bytes_per_token,
        kv_capacity_bytes=kv_capacity_bytes,
        layers=layers,
    )


def node_config(gpus: int, fpgas: int, gpu: DeviceProfile | None = None, fpga: DeviceProfile | None = None,
                link_gb_per_s: float = 1e9, gpu_decode_slots: int = 1) -> NodeConfig:  # fmt: skip
    """Default link is so fast that the KV transfer takes ~0 s."""
    return NodeConfig(gpu or fixed("gpu", 1.0, 0.1), gpus, fpga or fixed("fpga", 10.0, 0.05), fpgas,
                      link_gb_per_s, gpu_decode_slots)  # fmt: skip
