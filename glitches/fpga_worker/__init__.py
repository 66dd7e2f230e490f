"""The FPGA card, one daemon per card: its ABI, weight image and numerics, the kernel source, the emu/w4a8/xrt
backends (decode devices of decode_contract), sensors and timing model. KV arrives through kv_plane and
decode_contract's intake RPCs; no other device package is imported."""
