"""The KV region's numbers are stated twice: kv_plane/kv_abi.py (what every sender and sink lays KV out by)
and fpga_worker/abi.py (the whole card's ABI). They must agree."""

from fpga_worker import abi
from kv_plane import kv_abi


def test_the_kv_plane_and_the_card_abi_agree():
    for name in ("HBM_CHANNELS", "KV_BLOCK_TOKENS", "KV_ELEMENT_BYTES", "KV_ALIGN"):
        assert getattr(kv_abi, name) == getattr(abi, name), name
