"""Receives one TransferKV stream into a decode backend.

Protocol: one header (authorised, then reserves KV room), layer chunks in any
order, one end marker. Any error releases what the request reserved, so a bad
stream leaks nothing and the card keeps serving the others; a header that is not
authorised is refused before anything is reserved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fpga_worker.backend import DecodeBackend
from services import kv_wire
from services.errors import InvalidArgument
from services.stubs.glitches.v1 import worker_pb2


@dataclass(frozen=True)
class Received:
    request_id: str
    kv_bytes: int
    layer_received_unix_s: list[float]  # when each layer's last token arrived


def receive(backend: DecodeBackend, messages: Iterable[worker_pb2.KvChunk],
            authorize: Callable[[worker_pb2.KvHeader], None] | None = None) -> Received:
    """Receive one stream; `authorize(header)` raises (PERMISSION_DENIED) to refuse it before any reservation."""
    messages = iter(messages)
    first = next(messages, None)
    if first is None or first.WhichOneof("body") != "header":
        raise InvalidArgument("a TransferKV stream must start with a header chunk")
    header = first.header
    if authorize is not None:
        authorize(header)
    if not header.request_id:
        raise InvalidArgument("KV header: request_id is empty")
    layers = backend.geometry().num_layers
    if header.num_layers != layers:
        raise InvalidArgument(f"KV header: {header.num_layers} layers announced, the model has {layers}")
    if not 0 < header.prompt_tokens <= header.reserve_tokens:
        raise InvalidArgument(f"KV header: need 0 < prompt_tokens ({header.prompt_tokens}) <= reserve_tokens "
                              f"({header.reserve_tokens})")
    backend.reserve(header.request_id, header.reserve_tokens)
    try:
        return _receive_layers(backend, header, messages)
    except BaseException:
        backend.release(header.request_id)
        raise


def _receive_layers(backend: DecodeBackend, header: worker_pb2.KvHeader, messages) -> Received:
    layers = header.num_layers
    tokens_seen = [0] * layers
    received_at = [0.0] * layers
    kv_bytes = 0
    for message in messages:
        kind = message.WhichOneof("body")
        if kind == "layer":
            chunk = message.layer
            key, value = kv_wire.decode_chunk(chunk)
            backend.write_kv(header.request_id, chunk.layer, chunk.seq_start, key, value)
            kv_bytes += len(chunk.key) + len(chunk.value)
            tokens_seen[chunk.layer] += key.shape[2]
            if tokens_seen[chunk.layer] > header.prompt_tokens:
                raise InvalidArgument(f"layer {chunk.layer}: more than the {header.prompt_tokens} prompt tokens sent")
            if tokens_seen[chunk.layer] == header.prompt_tokens:
                received_at[chunk.layer] = time.time()
        elif kind == "end":
            missing = [i for i, n in enumerate(tokens_seen) if n != header.prompt_tokens]
            if missing:
                raise InvalidArgument(f"KV end marker before layers {missing[:8]} were complete")
            backend.seal(header.request_id, header.prompt_tokens)
            _expect_no_more(messages)
            return Received(header.request_id, kv_bytes, received_at)
        else:
            raise InvalidArgument("a second KV header in one TransferKV stream; send one header per stream")
    raise InvalidArgument("TransferKV stream ended without an end marker")


def _expect_no_more(messages) -> None:
    extra = next(messages, None)
    if extra is not None:
        raise InvalidArgument(f"a {extra.WhichOneof('body')} chunk after the end marker; the end marker comes last")
