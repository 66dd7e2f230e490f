"""Build a node from device names and run one workload through it."""

from __future__ import annotations

from collections.abc import Sequence

import simpy

from glitches.scheduler.placement import DeviceKind
from glitches.services.runtime.errors import InvalidArgument
from glitches.sim.kv_transfer import PCIE_GEN3_X16_GB_PER_S
from glitches.sim.measured import load_measured
from glitches.sim.metrics import summarise
from glitches.sim.node import Node, NodeConfig
from glitches.sim.profiles import DeviceProfile, load_device_profile
from glitches.sim.workload import Shape, all_at_once, closed_loop, poisson, trace


def build_config(
    gpus: int,
    gpu: str,
    fpgas: int,
    fpga: str,
    model: str,
    profile_path: str | None = None,
    link_gb_per_s: float | None = None,
    gpu_decode_slots: int = 1,
    fpga_prefetch_ratio: int | None = None,
    decode_gpus: int = 0,
    decode_gpu_slots: int = 0,
    host_cores: float | None = None,
) -> NodeConfig:
    """Device profiles from a measured file (if given) or devices.json (roofline, paper-calibrated; an FPGA's
    decode step from the kernel's timing model at `fpga_prefetch_ratio`, sim.fpga_kernel_timing).

    decode_gpus more GPUs of `gpu` take the decode role (glitches/sim/decode_gpu.py), decode_gpu_slots each
    (0: from their KV budget). The link speed is, in order: the argument, the GPU's measured
    kv_transfer_gb_per_s, PCIe Gen3 x16 effective (12 GB/s). The shared host CPU's cores (NodeConfig.host_cores,
    glitches/sim/host_cpu.py) are `host_cores` when given (0 turns the model off), else the measured file's
    "host_cores" when a device in use comes from it, else 0 (not modelled).
    """
    if gpus < 0 or fpgas < 0 or gpus + fpgas == 0:
        raise InvalidArgument(f"need at least one device and no negative counts, got {gpus} GPUs + {fpgas} FPGAs")
    if gpu_decode_slots < 0:
        raise InvalidArgument(f"gpu_decode_slots must be >= 0, got {gpu_decode_slots}")
    if gpus > 0 and fpgas == 0 and decode_gpus == 0 and gpu_decode_slots == 0:
        raise InvalidArgument("with no FPGA and no decode GPU the GPUs must decode: gpu_decode_slots must be >= 1")
    measured = load_measured(profile_path) if profile_path else {}
    gpu_profile = _profile(gpu, model, measured, DeviceKind.GPU) if gpus else None
    fpga_profile = _profile(fpga, model, measured, DeviceKind.FPGA, fpga_prefetch_ratio) if fpgas else None
    if link_gb_per_s is None:
        measured_link = measured[gpu].kv_transfer_gb_per_s if gpu in measured else None
        link_gb_per_s = measured_link or PCIE_GEN3_X16_GB_PER_S
    if link_gb_per_s <= 0:
        raise InvalidArgument(f"link bandwidth must be positive GB/s, got {link_gb_per_s}")
    if host_cores is None:
        in_use = ((gpu, gpus + decode_gpus), (fpga, fpgas))
        used = [measured[name] for name, count in in_use if count and name in measured]
        host_cores = next((m.host_cores for m in used if m.host_cores is not None), 0.0)
    if host_cores < 0:
        raise InvalidArgument(f"host cores must be >= 0 (0: devices share no host CPU), got {host_cores}")
    return NodeConfig(gpu_profile, gpus, fpga_profile, fpgas, link_gb_per_s, gpu_decode_slots,
                      decode_gpus=decode_gpus, decode_gpu_slots=decode_gpu_slots, host_cores=float(host_cores))


def _profile(name: str, model: str, measured: dict, kind: DeviceKind, fpga_prefetch_ratio: int | None = None
             ) -> DeviceProfile:
    if name in measured:
        profile = measured[name].profile
    else:
        profile = load_device_profile(name, model, fpga_prefetch_ratio=fpga_prefetch_ratio)
    if profile.kind != kind:
        raise InvalidArgument(f"device {name!r} is a {profile.kind.value}, not a {kind.value}")
    return profile


def run_simulation(
    config: NodeConfig,
    shapes: Sequence[Shape],
    request_rate: float | None = None,
    concurrency: int | None = None,
    seed: int = 0,
    arrivals_s: Sequence[float] | None = None,
    conversations: Sequence[tuple[str, int]] | None = None,
) -> dict:
    """Run every request to completion and summarise (see sim.metrics for the fields).

    No rate, no concurrency and no arrival times: all requests arrive at t = 0.
    """
    return summarise(simulate_node(config, shapes, request_rate, concurrency, seed, arrivals_s, conversations))


def simulate_node(
    config: NodeConfig,
    shapes: Sequence[Shape],
    request_rate: float | None = None,
    concurrency: int | None = None,
    seed: int = 0,
    arrivals_s: Sequence[float] | None = None,
    conversations: Sequence[tuple[str, int]] | None = None,
) -> Node:
    """Run every request to completion; the finished node (its `records` hold every request's times).

    arrivals_s: each request's arrival time in seconds (a trace), in the order of `shapes`; conversations:
    each request's (conversation id, turn) with a trace (KV reuse, NodeConfig.kv_reuse)."""
    if not shapes:
        raise InvalidArgument("need at least one request")
    if any(p < 1 or o < 1 for p, o in shapes):
        raise InvalidArgument("every request needs >= 1 prompt token and >= 1 output token")
    if sum(x is not None for x in (request_rate, concurrency, arrivals_s)) > 1:
        raise InvalidArgument("give one of a request rate (open loop), a concurrency (closed loop) or arrival "
                              "times (a trace), not both")
    env = simpy.Environment()
    node = Node(env, config)
    if arrivals_s is not None:
        if len(arrivals_s) != len(shapes) or any(a < 0 for a in arrivals_s):
            raise InvalidArgument("a trace needs one arrival time >= 0 s per request")
        trace(node, shapes, arrivals_s, conversations)
    elif request_rate is not None:
        if request_rate <= 0:
            raise InvalidArgument(f"request rate must be positive requests/s, got {request_rate}")
        poisson(node, shapes, request_rate, seed)
    elif concurrency is not None:
        if concurrency < 1:
            raise InvalidArgument(f"concurrency must be >= 1, got {concurrency}")
        closed_loop(node, shapes, concurrency)
    else:
        all_at_once(node, shapes)
    env.run()
    stuck = [r.rid for r in node.records if not r.done]
    if stuck or len(node.records) != len(shapes):
        raise InvalidArgument(
            f"{len(stuck)} requests never ran: their KV does not fit any FPGA and GPU assist is off "
            "(raise gpu_decode_slots or shorten the requests)"
        )
    return node
