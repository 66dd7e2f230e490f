"""KvRegion.write (16-byte-element index_put_) against a token-by-token reference of the ABI layout."""

import random

import pytest
import torch

from glitches.kv_plane import kv_copy_threads
from glitches.kv_plane.kv_layout import KV_BLOCK_TOKENS, KvPlan, KvRegion


@pytest.fixture(params=[1, 2], ids=["one-thread", "k-and-v-on-two-threads"])
def copy_threads(request, monkeypatch):
    """Every write either on the caller's thread or split K / V over two, whatever its size."""
    monkeypatch.setattr(kv_copy_threads, "MIN_SPLIT_BYTES", 0)
    before = kv_copy_threads.threads()
    kv_copy_threads.configure(request.param)
    yield request.param
    kv_copy_threads.configure(before)


def _reference_write(region: KvRegion, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
    """Every token's K and V row at the address KvPlan.address gives (docs/fpga-kernel-abi.md)."""
    plan = region.plan
    for kind, source in enumerate((key, value)):
        for head in range(plan.kv_heads):
            for t in range(key.shape[2]):
                token = seq_start + t
                u, b = plan.lane(layer, head, kind), token // KV_BLOCK_TOKENS
                region.data[(u + b) % 32, u * plan.slots_per_lane + b // 32, token % KV_BLOCK_TOKENS] = \
                    source[0, head, t].to(region.data.dtype)


@pytest.mark.parametrize("seed", range(12))
def test_write_puts_every_token_where_the_abi_says(seed, copy_threads):
    rng = random.Random(seed)
    heads, dim, capacity = rng.choice([1, 3, 5, 8]), rng.choice([4, 8, 16]), rng.randint(1, 300)
    plan = KvPlan(rng.randint(1, 3), heads, dim, capacity, 2)
    fast, slow = KvRegion(plan), KvRegion(plan)
    fast.data.normal_()
    slow.data.copy_(fast.data)
    layer = rng.randrange(plan.num_layers)
    start = min(rng.choice([0, 16 * rng.randint(0, capacity // 16), rng.randint(0, capacity - 1)]), capacity - 1)
    seq = rng.randint(1, min(capacity - start, 70))
    torch.manual_seed(seed)
    if seed % 3 == 0:  # a non-contiguous source, as a [1, seq, heads, dim] cache transposed
        key, value = (torch.randn(1, seq, heads, dim).transpose(1, 2) for _ in range(2))
    else:
        key, value = torch.randn(1, heads, seq, dim), torch.randn(1, heads, seq, dim)
    fast.write(layer, start, key, value)
    _reference_write(slow, layer, start, key, value)
    assert torch.equal(fast.data, slow.data)


def test_write_moves_float16_bits_unchanged_even_from_a_misaligned_source(copy_threads):
    plan = KvPlan(1, 2, 64, 64, 2)
    raw = torch.randint(-32768, 32767, (1 + 2 * 2 * 64 * 64,), dtype=torch.int16)  # NaNs, subnormals, all
    for offset in (0, 1):  # 1: the source starts 2 bytes off 16-byte alignment (no widening)
        bits = raw[offset: offset + 2 * 2 * 64 * 64].view(torch.float16).view(2, 1, 2, 64, 64)
        fast, slow = KvRegion(plan), KvRegion(plan)
        fast.write(0, 0, bits[0], bits[1])
        _reference_write(slow, 0, 0, bits[0], bits[1])
        assert torch.equal(fast.data.view(torch.int16), slow.data.view(torch.int16))


def test_run_pair_finishes_both_halves_and_raises_the_first_error(monkeypatch):
    monkeypatch.setattr(kv_copy_threads, "MIN_SPLIT_BYTES", 0)
    kv_copy_threads.configure(2)
    ran = []

    def failing():
        ran.append("k")
        raise ValueError("K half failed")

    with pytest.raises(ValueError, match="K half failed"):
        kv_copy_threads.run_pair(failing, lambda: ran.append("v"), 1)
    assert sorted(ran) == ["k", "v"]  # V still ran, and K had finished before run_pair returned


def test_copy_threads_setting_is_checked():
    from glitches.services.runtime.errors import InvalidArgument

    for bad in (0, 3):
        with pytest.raises(InvalidArgument, match="--kv-copy-threads"):
            kv_copy_threads.configure(bad)
    assert kv_copy_threads.threads() in (1, 2)
