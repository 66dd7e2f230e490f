"""Bank checks of the decode kernel's buffers, before any run (docs/fpga-host.md, "Banks").

XRT does not refuse a buffer in the wrong memory bank: it warns and runs the kernel on a copy in the right
one, so every step would copy 256 MiB per pseudo-channel and the KV the kernel writes would land in the copy
and be lost. The worker refuses instead:
- check_placement: the xclbin connects args and result to DDR banks and hbm<p> to HBM[p] (ABI v2);
- check_buffers: each buffer's memory group is the group xrtKernelArgGroupId gives its argument.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from glitches.fpga_worker.xclbin_meta import PORTS
from glitches.services.runtime.errors import FailedPrecondition


def _tag(tags: Sequence[str], group: int) -> str:
    return f"{tags[group]} (memory group {group})" if 0 <= group < len(tags) else f"memory group {group}"


def check_placement(group_of: Callable[[int], int], tags: Sequence[str], xclbin: str) -> None:
    """FailedPrecondition unless args and result sit in DDR and hbm<p> in HBM[p] (tags: MEM_TOPOLOGY by group)."""
    for arg, port in enumerate(PORTS):
        group = group_of(arg)
        tag = tags[group] if 0 <= group < len(tags) else "?"
        want = f"HBM[{port[3:]}]" if port.startswith("hbm") else "DDR[*]"
        ok = tag == want if port.startswith("hbm") else tag.startswith("DDR[")
        if not ok:
            raise FailedPrecondition(f"--xclbin {xclbin}: kernel argument {arg} ({port}) is connected to "
                                     f"{_tag(tags, group)}; ABI v2 wants {want}: link it with "
                                     "glitches/fpga_worker/kernel/vitis/u280_link.cfg")


def check_buffers(group_of: Callable[[int], int], buffer_groups: Sequence[int], tags: Sequence[str]) -> None:
    """FailedPrecondition naming the argument and both banks when a buffer is not in its argument's bank."""
    if len(buffer_groups) != len(PORTS):
        raise FailedPrecondition(f"glitches_decode takes {len(PORTS)} buffers, got {len(buffer_groups)}")
    for arg, group in enumerate(buffer_groups):
        want = group_of(arg)
        if group != want:
            raise FailedPrecondition(
                f"kernel argument {arg} ({PORTS[arg]}) is connected to {_tag(tags, want)}, but its buffer is in "
                f"{_tag(tags, group)}; refusing to run (XRT would run the kernel on a copy, and the KV it "
                "writes would be lost)")
