"""Find the node's accelerators: NVIDIA GPUs through NVML (nvidia-ml-py) and Alveo cards through sysfs.

An Alveo card shows up as two PCI functions of vendor 0x10ee: the management function (driver
xclmgmt, node /dev/xclmgmt<instance>) and the user function (driver xocl, a DRM render node
/dev/dri/renderD*). The xclmgmt driver numbers its node (domain << 16) | (bus << 8) | devfn of the
management function, which is the user function's BDF with function 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
XILINX_VENDOR = "0x10ee"


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    uuid: str


@dataclass(frozen=True)
class AlveoCard:
    bdf: str  # the user function, e.g. 0000:3b:00.1
    render_node: str  # /dev/dri/renderD129
    mgmt_node: str  # /dev/xclmgmt15104, "" when not found
    device_id: str  # PCI device id, e.g. 0x500d (U280)


def discover_gpus() -> list[Gpu]:
    """Every GPU NVML sees; none when nvidia-ml-py or the driver is absent."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as error:  # noqa: BLE001 - no library, no driver: no GPUs
        log.info("no NVML (%s): no GPUs found", error)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name, uuid = pynvml.nvmlDeviceGetName(handle), pynvml.nvmlDeviceGetUUID(handle)
            gpus.append(Gpu(index, name.decode() if isinstance(name, bytes) else name,
                            uuid.decode() if isinstance(uuid, bytes) else uuid))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _mgmt_instance(bdf: str) -> int:
    domain, bus, rest = bdf.split(":")
    device, _function = rest.split(".")
    return (int(domain, 16) << 16) | (int(bus, 16) << 8) | (int(device, 16) << 3)  # function 0


def discover_alveo(sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> list[AlveoCard]:
    """Every Xilinx PCI function with a DRM render node (the xocl user function), sorted by BDF."""
    cards = []
    pci = sys_root / "bus" / "pci" / "devices"
    for function in sorted(pci.glob("*")) if pci.is_dir() else []:
        try:
            if (function / "vendor").read_text().strip() != XILINX_VENDOR:
                continue
            device_id = (function / "device").read_text().strip()
        except OSError:
            continue
        renders = sorted((function / "drm").glob("renderD*")) if (function / "drm").is_dir() else []
        if not renders:
            continue  # the management function, or a card without xocl loaded
        mgmt = dev_root / f"xclmgmt{_mgmt_instance(function.name)}"
        cards.append(AlveoCard(function.name, str(dev_root / "dri" / renders[0].name),
                               str(mgmt) if mgmt.exists() else "", device_id))
    return cards
