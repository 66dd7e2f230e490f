"""The KV region's part of the card ABI (docs/fpga-kernel-abi.md, "KV region").

Every sender lays KV out by these numbers and every decode device that takes placed KV
reads by them, so they live below the device packages. `glitches/fpga_worker/abi.py` (the whole card's
ABI) imports them from here, so they are stated once.
"""

HBM_CHANNELS = 32  # U280 HBM2 pseudo-channels (PCs); a lane's blocks rotate over all of them
KV_BLOCK_TOKENS = 16  # tokens per KV block (the unit of one KV load), on the card and in the GPU's pool
KV_ELEMENT_BYTES = 2  # KV is IEEE float16, little-endian
KV_ALIGN = 4096  # the KV region starts on a 4 KiB boundary inside a PC, bytes
