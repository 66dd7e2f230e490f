import pytest
import torch

from glitches.kv_plane import kv_wire
from glitches.services.runtime.errors import InvalidArgument


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_keeps_every_bit(dtype):
    key = torch.randn(1, 3, 17, 64).to(dtype)
    value = torch.randn(1, 3, 17, 64).to(dtype)
    chunks = list(kv_wire.layer_chunks(5, key, value))
    assert len(chunks) == 1 and chunks[0].layer == 5 and chunks[0].seq_start == 0
    k, v = kv_wire.decode_chunk(chunks[0])
    assert torch.equal(k, key) and torch.equal(v, value)


def test_large_layers_split_along_seq_within_4_mib():
    key = torch.randn(1, 8, 3000, 128)  # 12 MiB of K alone
    value = torch.randn(1, 8, 3000, 128)
    chunks = list(kv_wire.layer_chunks(0, key, value))
    assert len(chunks) > 1
    assert all(len(c.key) + len(c.value) <= kv_wire.MAX_CHUNK_BYTES for c in chunks)
    parts = [kv_wire.decode_chunk(c) for c in chunks]
    assert [c.seq_start for c in chunks] == sorted(c.seq_start for c in chunks)
    assert torch.equal(torch.cat([p[0] for p in parts], dim=2), key)
    assert torch.equal(torch.cat([p[1] for p in parts], dim=2), value)


def test_bad_chunks_are_invalid_argument():
    good = next(kv_wire.layer_chunks(0, torch.zeros(1, 2, 4, 8), torch.zeros(1, 2, 4, 8)))
    wrong_dtype = type(good)(); wrong_dtype.CopyFrom(good); wrong_dtype.dtype = "int8"
    wrong_shape = type(good)(); wrong_shape.CopyFrom(good); wrong_shape.shape[:] = [1, 2, 5, 8]
    short = type(good)(); short.CopyFrom(good); short.key = good.key[:-1]
    for chunk in (wrong_dtype, wrong_shape, short):
        with pytest.raises(InvalidArgument):
            kv_wire.decode_chunk(chunk)
