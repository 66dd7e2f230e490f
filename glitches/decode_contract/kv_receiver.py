"""Receives one request's KV into a decode backend: TransferKV (transport grpc) or TransferKVPlaced (shm, nixl).

TransferKV: one header (authorised, then reserves KV room), layer chunks in any order, one
end marker; the receiver copies each chunk into the card's region.

TransferKVPlaced: one header (authorised, then reserves), to which the receiver answers with the
region's placement; the sender writes the K/V bytes into the card's memory itself (shm: the
mapped segment; nixl: a NIXL WRITE) and sends one KvWritten notice per span it wrote; each
notice is bounds-checked against the reservation and the prompt and must not overlap an
earlier one; then one end marker, answered with the result.

Either way, any error releases what the request reserved, so a bad stream leaks nothing and
the card keeps serving the others; a header that is not authorised is refused before
anything is reserved or mapped.

Partial transfers (issue #27, KvHeader.held_tokens = held > 0): instead of reserving empty room the
receiver calls `adopt(header)`, which gives the request a region whose tokens [0, held) are the card's
kept KV of exactly prompt_token_ids[:held] (FAILED_PRECONDITION "prefix no longer held" otherwise,
nothing reserved) and returns `undo()`, which a failed stream calls instead of releasing (the card keeps
that prefix as cache again: the transfer never writes below `held`); every layer then takes KV only for [held, prompt_tokens): a chunk or notice
starting before `held` is INVALID_ARGUMENT (it would overwrite the held tokens), and the end marker
needs prompt_tokens - held tokens per layer. kv_bytes counts the bytes that travelled.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from glitches.decode_contract.sink import KvSink
from glitches.kv_plane import kv_wire
from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument
from glitches.services.stubs.glitches.v1 import worker_pb2


@dataclass(frozen=True)
class Received:
    request_id: str
    kv_bytes: int
    layer_received_unix_s: list[float]  # when each layer's last token arrived


def _checked_header(backend: KvSink, first, authorize, rpc: str) -> worker_pb2.KvHeader:
    if first is None or first.WhichOneof("body") != "header":
        raise InvalidArgument(f"a {rpc} stream must start with a header")
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
    if header.held_tokens and not (header.held_tokens < header.prompt_tokens
                                   and len(header.prompt_token_ids) == header.prompt_tokens):
        raise InvalidArgument(f"KV header: a partial transfer needs held_tokens ({header.held_tokens}) < "
                              f"prompt_tokens ({header.prompt_tokens}) and the prompt's {header.prompt_tokens} "
                              f"ids (got {len(header.prompt_token_ids)})")
    return header


def _reserve(backend: KvSink, header: worker_pb2.KvHeader, adopt) -> Callable[[], None]:
    """Empty room for reserve_tokens, or (held_tokens > 0) the kept prefix adopted: `adopt(header)`. Returns what
    frees it on a failed stream."""
    if not header.held_tokens:
        backend.reserve(header.request_id, header.reserve_tokens)
        return lambda: backend.release(header.request_id)
    if adopt is None:
        raise FailedPrecondition("prefix no longer held: this worker keeps no KV between requests; send the "
                                 "whole prompt's KV")
    return adopt(header)


def receive(backend: KvSink, messages: Iterable[worker_pb2.KvChunk],
            authorize: Callable[[worker_pb2.KvHeader], None] | None = None,
            adopt: Callable[[worker_pb2.KvHeader], None] | None = None) -> Received:
    """Receive one stream; `authorize(header)` raises (PERMISSION_DENIED) to refuse it before any reservation;
    `adopt(header)` reserves from kept KV for a partial transfer (module docstring)."""
    messages = iter(messages)
    header = _checked_header(backend, next(messages, None), authorize, "TransferKV")
    undo = _reserve(backend, header, adopt)
    try:
        return _receive_layers(backend, header, messages)
    except BaseException:
        undo()
        raise


def _receive_layers(backend: KvSink, header: worker_pb2.KvHeader, messages) -> Received:
    layers, held = header.num_layers, header.held_tokens
    expected = header.prompt_tokens - held  # tokens each layer receives
    tokens_seen = [0] * layers
    received_at = [0.0] * layers
    kv_bytes = 0
    for message in messages:
        kind = message.WhichOneof("body")
        if kind == "layer":
            chunk = message.layer
            key, value = kv_wire.decode_chunk(chunk)
            if chunk.seq_start < held:
                raise InvalidArgument(f"layer {chunk.layer}: KV from token {chunk.seq_start}, but this card holds "
                                      f"tokens [0, {held}); a partial transfer sends [{held}, {header.prompt_tokens})")
            backend.write_kv(header.request_id, chunk.layer, chunk.seq_start, key, value)
            kv_bytes += len(chunk.key) + len(chunk.value)
            tokens_seen[chunk.layer] += key.shape[2]
            if tokens_seen[chunk.layer] > expected:
                raise InvalidArgument(f"layer {chunk.layer}: more than the {expected} prompt tokens expected sent")
            if tokens_seen[chunk.layer] == expected:
                received_at[chunk.layer] = time.time()
                backend.layer_landed(header.request_id, chunk.layer, header.prompt_tokens)
        elif kind == "end":
            missing = [i for i, n in enumerate(tokens_seen) if n != expected]
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


def receive_placed(backend: KvSink, messages: Iterable[worker_pb2.KvPlacedControl],
                   authorize: Callable[[worker_pb2.KvHeader], None] | None,
                   place: Callable[[worker_pb2.KvHeader, str], worker_pb2.KvPlacement],
                   landed: Callable[[str, int, int], None] | None = None,
                   unplace: Callable[[str], None] | None = None,
                   adopt: Callable[[worker_pb2.KvHeader], None] | None = None) -> Iterator[worker_pb2.KvPlacedReply]:
    """Serve one TransferKVPlaced stream, yielding the placement and then the result.

    place(header, request_id) checks the transport (FAILED_PRECONDITION when this worker cannot
    take it from that sender) and returns the placement of the request just reserved; it runs
    after the reservation. landed(request_id, layer, tokens), if given, confirms the data plane
    delivered a span before its notice is accepted (nixl: its notification arrived).
    unplace(request_id), if given, closes the data plane's way into the region (nixl: deregisters it); on a
    failed stream it runs BEFORE the reservation is released, so a late write of this sender can never reach
    blocks that another request reserved since.
    """
    messages = iter(messages)
    header = _checked_header(backend, next(messages, None), authorize, "TransferKVPlaced")
    undo = _reserve(backend, header, adopt)
    try:
        yield worker_pb2.KvPlacedReply(placement=place(header, header.request_id))
        received = _receive_notices(backend, header, messages, landed)
    except BaseException:  # an error, or the sender went away (GeneratorExit)
        try:
            if unplace is not None:
                unplace(header.request_id)
        finally:
            undo()
        raise
    # sealed: the KV belongs to the request now (Decode or Release frees it), even if the sender hangs up
    yield worker_pb2.KvPlacedReply(done=worker_pb2.TransferKVResponse(
        kv_bytes=received.kv_bytes, layer_received_unix_s=received.layer_received_unix_s))


def _receive_notices(backend: KvSink, header: worker_pb2.KvHeader, messages, landed) -> Received:
    layers, prompt, held = header.num_layers, header.prompt_tokens, header.held_tokens
    tokens_seen = [0] * layers
    received_at = [0.0] * layers
    bytes_per_token_layer = backend.geometry().bytes_per_token // layers  # K + V of one token, one layer
    for message in messages:
        kind = message.WhichOneof("body")
        if kind == "written":
            note = message.written
            if not 0 <= note.layer < layers:
                raise InvalidArgument(f"KV notice for layer {note.layer}; the model has layers 0..{layers - 1}")
            if note.tokens < 1 or note.seq_start < held or note.seq_start + note.tokens > prompt:
                raise InvalidArgument(f"KV notice for layer {note.layer}: tokens [{note.seq_start}, "
                                      f"{note.seq_start + note.tokens}) lie outside the prompt tokens [{held}, "
                                      f"{prompt}) this transfer sends")
            if landed is not None:
                landed(header.request_id, note.layer, note.tokens)
            backend.mark_written(header.request_id, note.layer, note.seq_start, note.tokens)  # refuses overlaps
            tokens_seen[note.layer] += note.tokens
            if tokens_seen[note.layer] == prompt - held:
                received_at[note.layer] = time.time()
                backend.layer_landed(header.request_id, note.layer, prompt)
        elif kind == "end":
            missing = [i for i, n in enumerate(tokens_seen) if n != prompt - held]
            if missing:
                raise InvalidArgument(f"KV end marker before layers {missing[:8]} were written and noticed")
            backend.seal(header.request_id, prompt)
            _expect_no_more(messages)
            return Received(header.request_id, bytes_per_token_layer * layers * (prompt - held), received_at)
        else:
            raise InvalidArgument("a second KV header in one TransferKVPlaced stream; send one header per stream")
    raise InvalidArgument("TransferKVPlaced stream ended without an end marker")
