"""A KV sink: a place where a request's prefill KV lands, whichever device then decodes from it.

Every decode device is one (glitches/decode_contract/device.py extends it with stepping); the decode-role
GPU worker's intake is one and nothing more. The intake RPCs (kv_intake_rpcs.py, kv_receiver.py)
and the wrappers (wrappers.py) talk only to this interface.

Protocol, per request: reserve(id, prompt + max_new_tokens) -> KV arrives, either write_kv (the
receiver copies each chunk in: transport grpc) or placement + the sender writes kv_memory() itself +
mark_written per span (shm, nixl) -> layer_landed per complete layer -> seal(id, prompt) -> the
request holds KV until release(id) (idempotent). Any failure before seal releases.

Shapes: K and V chunks are transformers' layout [1, kv_heads, seq, head_dim] for one layer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from glitches.kv_plane.kv_types import KvGeometry, KvMemory, KvPlacement
from glitches.services.runtime.errors import FailedPrecondition


class KvSink(ABC):
    @abstractmethod
    def geometry(self) -> KvGeometry: ...

    @abstractmethod
    def kv_free_bytes(self) -> int: ...

    def kv_cached_bytes(self) -> int:
        """Of kv_free_bytes, the bytes kept as evictable cache of finished requests (0: the sink keeps none)."""
        return 0

    def kv_granularity_tokens(self) -> int:
        """A reservation of n tokens takes the KV of n rounded up to a multiple of this (1: exact)."""
        return 1

    @abstractmethod
    def reserve(self, request_id: str, max_tokens: int) -> None:
        """Set aside KV room for `max_tokens` (prompt + new tokens).

        Raises ResourceExhausted when it does not fit, AlreadyExists for a known id.
        """

    @abstractmethod
    def write_kv(self, request_id: str, layer: int, seq_start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store one chunk of one layer's prefill KV ([1, kv_heads, seq, head_dim]) at token `seq_start`."""

    @abstractmethod
    def seal(self, request_id: str, prompt_tokens: int) -> None:
        """Every layer's KV for `prompt_tokens` tokens has arrived; the request can decode."""

    @abstractmethod
    def release(self, request_id: str) -> bool:
        """Free the request's KV. Returns False when the id was unknown (already released)."""

    @abstractmethod
    def active_requests(self) -> list[str]: ...

    # --- placed KV (TransferKVPlaced); a sink without shareable memory keeps these defaults ---
    def kv_memory(self) -> KvMemory | None:
        """The memory senders write KV into directly, or None: this sink takes KV only through write_kv."""
        return None

    def placement(self, request_id: str) -> KvPlacement:
        """Where the reserved request's region lies in kv_memory()."""
        raise FailedPrecondition("this card takes KV only through TransferKV (transport grpc)")

    def mark_written(self, request_id: str, layer: int, seq_start: int, tokens: int) -> None:
        """A sender wrote tokens [seq_start, seq_start + tokens) of `layer` into the region itself.

        Raises InvalidArgument outside the reservation or over tokens already written.
        """
        raise FailedPrecondition("this card takes KV only through TransferKV (transport grpc)")

    def layer_landed(self, request_id: str, layer: int, tokens: int) -> None:
        """Tokens [0, tokens) of `layer` are all in place (before seal); a sink may start using them."""
