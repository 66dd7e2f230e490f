"""The engine <-> sender interface: what a prefill sees of the KV data plane, whatever the transport.

Protocol (one sender per request, made by `kv_plane.transport.open_sender`):
- `put_layer(layer, key, value)` from the model thread's cache hook, once per layer, as soon as it is
  computed; key/value: [1, kv_heads, seq, head_dim]. Raises `KvTransferFailed` when the receiver
  has already failed, which aborts the forward pass.
- `finish()` once the forward pass is done: sends the end marker, waits for the receiver, returns
  the `TransferResult`; raises the receiver's error as a domain error.
- `failure()`: the receiver's error (a domain error) if the transfer already failed, else None.
- `abort()`: cancel (the receiver frees what it reserved); safe to call more than once.
- `transport`: "grpc", "shm" or "nixl".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass(frozen=True)
class TransferResult:
    kv_bytes: int
    first_send_monotonic: float  # when the first chunk was handed to gRPC (or the first layer write began)
    done_monotonic: float  # when the receiver's reply arrived
    layer_received_unix_s: tuple[float, ...]  # per layer, on the receiver's clock


class KvTransferFailed(Exception):
    """Raised inside the forward pass to abort prefill when the receiver has failed."""


class LayerSender(Protocol):
    transport: str

    def put_layer(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None: ...

    def finish(self) -> TransferResult: ...

    def failure(self) -> Exception | None: ...

    def abort(self) -> None: ...
