"""A metadata-only xclbin for the decode kernel: what XRT reads to open `glitches_decode`, and no bitstream.

Built from the project's own U280 link config (glitches/fpga_worker/kernel/vitis/u280_link.cfg, its `sp=` lines), so
the ports and banks here are the ones `v++ --link` would connect. Layout (XRT's xclbin.h, "axlf"):

    [0, 496)       struct axlf: magic "xclbin2\\0", header (152 bytes, inline), first section header
    [496, ...)     further section headers, 40 bytes each
    then           section bodies, each on an 8-byte boundary:
                   MEM_TOPOLOGY      int32 count + mem_data[40 bytes] (DDR[0], HBM[0..31])
                   IP_LAYOUT         int32 count (+4 pad) + ip_data[80 bytes] (one kernel CU)
                   CONNECTIVITY      int32 count + connection[12 bytes] (arg -> CU -> memory bank)
                   EMBEDDED_METADATA the kernel's arguments as XML (name, id, control-register offset)

It holds no BITSTREAM section: only XRT's no-op shim (XCL_EMULATION_MODE=noop) can "load" it. A card needs the
xclbin `v++` builds (docs/fpga-host.md). Numbers little-endian, as on every host XRT supports.
"""

from __future__ import annotations

import re
import struct
import time
import uuid as uuid_module
from dataclasses import dataclass
from pathlib import Path

from glitches.fpga_worker.abi import HBM_CHANNELS
from glitches.services.runtime.errors import InvalidArgument

KERNEL_NAME = "glitches_decode"
CU_NAME = f"{KERNEL_NAME}:{KERNEL_NAME}_1"  # ip_data name: "kernel:instance", as v++ writes it
LINK_CONFIG = Path(__file__).resolve().parent / "kernel" / "vitis" / "u280_link.cfg"
PORTS = ("args", *(f"hbm{pc}" for pc in range(HBM_CHANNELS)), "result")  # kernel argument order (index = arg id)

# xclbin.h enums and sizes
MEM_DDR4, MEM_HBM = 1, 6
IP_KERNEL = 1
AP_CTRL_HS = 0
SECTION_MEM_TOPOLOGY, SECTION_CONNECTIVITY, SECTION_IP_LAYOUT, SECTION_EMBEDDED_METADATA = 6, 7, 8, 2
AXLF_BYTES, SECTION_HEADER_BYTES = 496, 40
CU_BASE_ADDRESS = 0x1800000  # the CU's control registers on the AXI-lite bus (a typical U280 address)
FIRST_ARG_OFFSET = 0x10  # after ap_ctrl (0x0), GIE (0x4), IER (0x8), ISR (0xc): HLS's s_axilite layout
BANK_BYTES = {"DDR": 16 << 30, "HBM": 256 << 20}  # U280: 16 GiB per DDR4 bank, 256 MiB per HBM pseudo-channel
BANK_BASE = {"DDR": 0x0, "HBM": 0x4000000000}


@dataclass(frozen=True)
class Bank:
    kind: str  # "DDR" or "HBM"
    index: int

    @property
    def tag(self) -> str:  # XRT's bank tag, as xbutil and `sp=` name it: "DDR[0]", "HBM[7]"
        return f"{self.kind}[{self.index}]"


def port_banks(link_config: Path = LINK_CONFIG) -> dict[str, Bank]:
    """{port: bank} from the `sp=glitches_decode_1.<port>:<KIND>[<n>]` lines; every kernel port must have one."""
    found: dict[str, Bank] = {}
    for line in link_config.read_text().splitlines():
        match = re.fullmatch(r"\s*sp=\w+\.(\w+):(DDR|HBM)\[(\d+)\]\s*", line)
        if match:
            found[match.group(1)] = Bank(match.group(2), int(match.group(3)))
    missing = [p for p in PORTS if p not in found]
    if missing:
        raise InvalidArgument(f"{link_config} has no sp= bank for kernel port(s) {missing}")
    return {port: found[port] for port in PORTS}


def memory_banks(banks: dict[str, Bank]) -> list[Bank]:
    """The MEM_TOPOLOGY entries: every bank a port uses, DDR first, then HBM, each by index."""
    return sorted(set(banks.values()), key=lambda b: (b.kind != "DDR", b.index))


def _mem_topology(memory: list[Bank]) -> bytes:
    body = struct.pack("<i4x", len(memory))  # m_count, then 8-byte-aligned mem_data[]
    for bank in memory:
        size_kb = BANK_BYTES[bank.kind] // 1024  # m_size is in KiB
        base = BANK_BASE[bank.kind] + bank.index * BANK_BYTES[bank.kind]
        body += struct.pack("<BB6xQQ16s", MEM_HBM if bank.kind == "HBM" else MEM_DDR4, 1, size_kb, base,
                            bank.tag.encode())
    return body


def _ip_layout() -> bytes:
    properties = AP_CTRL_HS << 8  # m_ip_control in bits 8..15; no interrupt (the no-op shim polls)
    return struct.pack("<i4x", 1) + struct.pack("<IIQ64s", IP_KERNEL, properties, CU_BASE_ADDRESS, CU_NAME.encode())


def _connectivity(banks: dict[str, Bank], memory: list[Bank]) -> bytes:
    body = struct.pack("<i", len(PORTS))
    for arg, port in enumerate(PORTS):
        body += struct.pack("<iii", arg, 0, memory.index(banks[port]))  # arg, ip_layout index, mem_data index
    return body


def _metadata_xml() -> bytes:
    """The kernel's signature as XRT's xclbin parser reads it (project.platform.device.core.kernel.arg)."""
    args = "\n".join(
        f'        <arg name="{port}" addressQualifier="1" id="{arg}" port="m_axi_{port}" size="0x8" '
        f'offset="{hex(FIRST_ARG_OFFSET + 8 * arg)}" hostOffset="0x0" hostSize="0x8" type="void*"/>'
        for arg, port in enumerate(PORTS))
    ports = "\n".join(f'        <port name="m_axi_{port}" mode="master" range="0xFFFFFFFFFFFFFFFF" dataWidth="512" '
                      f'portType="addressable" base="0x0"/>' for port in PORTS)
    text = f"""<?xml version="1.0" encoding="UTF-8"?>
<project name="glitches_decode_metadata_only">
  <platform vendor="xilinx" boardid="u280" name="metadata-only (no bitstream)" featureRomTime="0">
    <device name="fpga0" fpgaDevice="virtexuplushbm" addrWidth="0">
      <core name="OCL_REGION_0" target="bitstream" type="clc_region" clockFreq="0MHz" numComputeUnits="1">
      <kernel name="{KERNEL_NAME}" language="c" vlnv="glitches:kernel:{KERNEL_NAME}:1.0" preferredWorkGroupSizeMultiple="0" workGroupSize="1" interrupt="false" hwControlProtocol="ap_ctrl_hs">
        <port name="S_AXI_CONTROL" mode="slave" range="0x1000" dataWidth="32" portType="addressable" base="0x0"/>
{ports}
{args}
        <instance name="{KERNEL_NAME}_1">
          <addrRemap base="{hex(CU_BASE_ADDRESS)}" range="0x1000" port="S_AXI_CONTROL"/>
        </instance>
      </kernel>
      </core>
    </device>
  </platform>
</project>
"""
    return text.encode()


def build_xclbin(link_config: Path = LINK_CONFIG, xclbin_uuid: uuid_module.UUID | None = None) -> bytes:
    """The whole metadata-only xclbin (bytes); `xclbin_uuid` fixed for reproducible files, else random."""
    banks = port_banks(link_config)
    memory = memory_banks(banks)
    sections = [(SECTION_MEM_TOPOLOGY, "MEM_TOPOLOGY", _mem_topology(memory)),
                (SECTION_IP_LAYOUT, "IP_LAYOUT", _ip_layout()),
                (SECTION_CONNECTIVITY, "CONNECTIVITY", _connectivity(banks, memory)),
                (SECTION_EMBEDDED_METADATA, "EMBEDDED_METADATA", _metadata_xml())]
    headers_end = AXLF_BYTES + SECTION_HEADER_BYTES * (len(sections) - 1)
    offset, headers, bodies = _align8(headers_end), b"", b""
    for kind, name, body in sections:
        headers += struct.pack("<I16s4xQQ", kind, name.encode(), offset, len(body))
        padded = body + b"\0" * (_align8(len(body)) - len(body))
        bodies += padded
        offset += len(padded)
    total = _align8(headers_end) + len(bodies)
    the_uuid = (xclbin_uuid or uuid_module.uuid4()).bytes
    header = struct.pack("<QQQHBBHH16s64s16s16sI4x", total, int(time.time()), 0, 0, 2, 1, 0, 0, b"\0" * 16,
                         b"xilinx_u280_metadata_only", the_uuid, b"", len(sections))
    prefix = b"xclbin2\0" + struct.pack("<i", -1) + b"\xff" * 28 + b"\0" * 256 + struct.pack("<Q", 0)
    blob = prefix + header + headers
    return blob + b"\0" * (_align8(headers_end) - len(blob)) + bodies


def _align8(value: int) -> int:
    return (value + 7) // 8 * 8


def write_xclbin(path: Path, link_config: Path = LINK_CONFIG) -> Path:
    """Write the metadata-only xclbin to `path` (tests generate it; it is never committed)."""
    path.write_bytes(build_xclbin(link_config))
    return path


def read_bank_tags(path: str) -> list[str]:
    """The MEM_TOPOLOGY bank tags of any xclbin file (v++'s or this module's), by memory group index:
    ["DDR[0]", "HBM[0]", ...]. Used to name banks in errors; InvalidArgument for a file that is not an xclbin."""
    blob = Path(path).read_bytes()
    if len(blob) < AXLF_BYTES or blob[:8] != b"xclbin2\0":
        raise InvalidArgument(f"{path} is not an xclbin (no 'xclbin2' magic)")
    # m_numSections sits 8 bytes before the first section header (4 bytes, then 4 pad bytes)
    sections = struct.unpack_from("<I", blob, AXLF_BYTES - SECTION_HEADER_BYTES - 8)[0]
    for i in range(sections):
        kind, _, offset, size = struct.unpack_from("<I16s4xQQ", blob, AXLF_BYTES - SECTION_HEADER_BYTES
                                                   + i * SECTION_HEADER_BYTES)
        if kind == SECTION_MEM_TOPOLOGY:
            count = struct.unpack_from("<i", blob, offset)[0]
            return [struct.unpack_from("<BB6xQQ16s", blob, offset + 8 + 40 * m)[4].split(b"\0")[0].decode()
                    for m in range(count)]
    raise InvalidArgument(f"{path} has no MEM_TOPOLOGY section")
