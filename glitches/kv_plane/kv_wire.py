"""The KV wire format: one layer's K and V tensors <-> KvLayerChunk messages.

A layer's K and V are [1, kv_heads, seq, head_dim]. A chunk carries a slice of
the seq axis so that K + V bytes stay within MAX_CHUNK_BYTES (4 MiB); small
layers travel in one chunk. Bytes are the tensor's raw little-endian memory in
C order, so no element is converted on the way.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator

import torch

from glitches.services.runtime.errors import InvalidArgument
from glitches.services.stubs.glitches.v1 import worker_pb2

MAX_CHUNK_BYTES = 4 * 1024 * 1024  # K + V payload of one message, bytes
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_NAMES = {v: k for k, v in DTYPES.items()}


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw bytes of a tensor (any device, any of DTYPES), C order."""
    t = t.detach().to("cpu").contiguous()
    return t.view(torch.uint8).numpy().tobytes()


def layer_chunks(layer: int, key: torch.Tensor, value: torch.Tensor, max_bytes: int = MAX_CHUNK_BYTES,
                 first_token: int = 0) -> Iterator[worker_pb2.KvLayerChunk]:
    """Split one layer's K/V ([1, H_kv, S, D]: tokens [first_token, first_token + S)) along S into chunks of
    at most max_bytes of K + V."""
    if key.shape != value.shape or key.dim() != 4 or key.shape[0] != 1:
        raise InvalidArgument(f"layer {layer}: K and V must both be [1, kv_heads, seq, head_dim], "
                              f"got {tuple(key.shape)} and {tuple(value.shape)}")
    _, heads, seq, dim = key.shape
    bytes_per_token = 2 * heads * dim * key.element_size()
    tokens_per_chunk = max(1, max_bytes // bytes_per_token)
    for start in range(0, seq, tokens_per_chunk):
        stop = min(seq, start + tokens_per_chunk)
        k = key[:, :, start:stop, :]
        yield worker_pb2.KvLayerChunk(
            layer=layer, seq_start=first_token + start, dtype=_NAMES[key.dtype], shape=list(k.shape),
            key=tensor_bytes(k), value=tensor_bytes(value[:, :, start:stop, :]))


def decode_chunk(chunk: worker_pb2.KvLayerChunk) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V tensors of a chunk, checked against its declared dtype and shape.

    The tensors are read-only views on the message's bytes: copy them before keeping them.
    """
    dtype = DTYPES.get(chunk.dtype)
    if dtype is None:
        raise InvalidArgument(f"layer {chunk.layer}: unknown KV dtype {chunk.dtype!r}; use one of {sorted(DTYPES)}")
    shape = tuple(chunk.shape)
    if len(shape) != 4 or shape[0] != 1 or 0 in shape:
        raise InvalidArgument(f"layer {chunk.layer}: KV shape must be [1, kv_heads, seq, head_dim], got {list(shape)}")
    expected = math.prod(shape) * torch.finfo(dtype).bits // 8  # Python ints: no overflow for any uint32 shape
    if len(chunk.key) != expected or len(chunk.value) != expected:
        raise InvalidArgument(f"layer {chunk.layer}: shape {list(shape)} of {chunk.dtype} needs {expected} bytes "
                              f"each for K and V, got {len(chunk.key)} and {len(chunk.value)}")
    # Views on the message's own bytes (read-only, no copy): the receiver copies them once, into its KV store.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given buffer is not writable")
        key = torch.frombuffer(chunk.key, dtype=dtype).reshape(shape)
        value = torch.frombuffer(chunk.value, dtype=dtype).reshape(shape)
    return key, value
