"""Transport grpc: streams one request's prefill KV to a decode worker's TransferKV, layer by layer.

A `kv_plane.sender.LayerSender`.
The model thread calls put_layer() from the cache hook; gRPC's own request
thread pulls from the queue, so serialising and sending layer i overlaps the
computation of layer i + 1. A partial transfer (header.held_tokens = h > 0) sends only tokens
[h, prompt) of each layer, as chunks whose seq_start counts from token 0.
"""

from __future__ import annotations

import queue
import time

import grpc
import torch

from glitches.kv_plane import kv_wire
from glitches.kv_plane.sender import KvTransferFailed, TransferResult
from glitches.services.runtime.errors import from_rpc_error
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

_END = object()


class KvSender:
    """Transport grpc: the K/V bytes travel in TransferKV's KvLayerChunk messages."""

    transport = "grpc"

    def __init__(self, stub: worker_pb2_grpc.WorkerStub, header: worker_pb2.KvHeader, timeout_s: float):
        self._queue: queue.Queue = queue.Queue()
        self._num_layers = header.num_layers
        self._start = header.held_tokens  # first token sent (the receiver holds [0, start))
        self._first_send: float | None = None
        self._future = stub.TransferKV.future(self._messages(header), timeout=timeout_s)

    def _messages(self, header: worker_pb2.KvHeader):
        yield worker_pb2.KvChunk(header=header)
        while True:
            item = self._queue.get()
            if item is _END:
                yield worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=self._num_layers))
                return
            layer, key, value = item
            for chunk in kv_wire.layer_chunks(layer, key, value, first_token=self._start):
                if self._first_send is None:
                    self._first_send = time.monotonic()
                yield worker_pb2.KvChunk(layer=chunk)

    def put_layer(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Queue one layer's KV ([1, H_kv, prompt, D]; only [start:) goes); raises KvTransferFailed if the
        receiver already failed."""
        if self._future.done():
            raise KvTransferFailed(f"KV transfer ended early at layer {layer}")
        self._queue.put((layer, key[:, :, self._start:], value[:, :, self._start:]))

    def finish(self) -> TransferResult:
        """Send the end marker and wait for the receiver's reply."""
        self._queue.put(_END)
        try:
            response = self._future.result()
        except grpc.RpcError as error:
            raise from_rpc_error(error, "KV transfer to the decode worker failed") from error
        done = time.monotonic()
        return TransferResult(response.kv_bytes, self._first_send or done, done,
                              tuple(response.layer_received_unix_s))

    def failure(self):
        """The receiver's error as a domain error, if the call already failed."""
        if self._future.done() and self._future.exception() is not None:
            return from_rpc_error(self._future.exception(), "KV transfer to the decode worker failed")
        return None

    def abort(self) -> None:
        """Cancel the transfer (the receiver frees what it reserved) and unblock the send thread."""
        self._future.cancel()
        self._queue.put(_END)
