"""Sends one request's prefill KV through a data plane (TransferKVPlaced: transport shm or nixl).

A `kv_plane.sender.LayerSender` like grpc_sender.KvSender, so the engine does not care which
transport runs; the layer writer for the placement is made by `make_writer` (glitches/kv_plane/transport.py). Threads:
- the model thread calls put_layer(layer, key, value) from the cache hook and goes on computing;
- the writer thread waits for the receiver's placement, writes each layer into the card's memory
  (glitches/kv_plane/shm_writer.py or glitches/kv_plane/nixl_writer.py) and queues a KvWritten notice for each layer
  the writer reports finished (nixl: its WRITE is DONE, which may be after the next layer's relayout),
  then, after flush(), the end marker;
- gRPC's own thread sends the control messages as they are queued.
Layer i's write and notice thus overlap the computation of layer i + 1.
A partial transfer (header.held_tokens = h > 0) writes and notices only tokens [h, prompt) of each
layer: the card's region already holds [0, h) (the writer's `start`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import grpc
import torch

from glitches.kv_plane.host_identity import host_identity
from glitches.kv_plane.sender import KvTransferFailed, TransferResult
from glitches.services.runtime.errors import GlitchesError, Unavailable, from_rpc_error
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

_END = object()


class PlacedKvSender:
    transport = "shm"

    def __init__(self, stub: worker_pb2_grpc.WorkerStub, header: worker_pb2.KvHeader, timeout_s: float,
                 transport: str, make_writer: Callable[[worker_pb2.KvPlacement, str], object]):
        """make_writer(placement, request_id): the layer writer (write(layer, K, V, ready) -> layers done,
        flush(), optional close()) once the receiver has answered where the region lies."""
        self.transport, self._make_writer = transport, make_writer
        self._num_layers, self._request_id = header.num_layers, header.request_id
        self._start = header.held_tokens  # first token written (the receiver holds [0, start))
        self._control: queue.Queue = queue.Queue()
        self._layers: queue.Queue = queue.Queue()
        self._error: BaseException | None = None
        self._result: TransferResult | None = None
        self._first_write: float | None = None
        self._bytes = 0
        placed = worker_pb2.KvHeader()
        placed.CopyFrom(header)
        placed.kv_transport, placed.host_identity = transport, host_identity()
        self._call = stub.TransferKVPlaced(self._messages(placed), timeout=timeout_s)
        self._thread = threading.Thread(target=self._run, name=f"kv-{transport}-writer", daemon=True)
        self._thread.start()

    def _messages(self, header):
        yield worker_pb2.KvPlacedControl(header=header)
        while True:
            item = self._control.get()
            if item is _END:
                return
            yield item

    def _run(self) -> None:
        try:
            first = next(self._call)
            if first.WhichOneof("body") != "placement":
                raise Unavailable("the decode worker answered TransferKVPlaced without a placement")
            writer = self._make_writer(first.placement, self._request_id)
            try:
                self._write_layers(writer)
            finally:
                if hasattr(writer, "close"):
                    writer.close()
            last = next(self._call)
            done = time.monotonic()
            next(self._call, None)  # the call's status: the stream ends cleanly on both sides
            self._result = TransferResult(last.done.kv_bytes, self._first_write or done, done,
                                          tuple(last.done.layer_received_unix_s))
        except grpc.RpcError as error:
            self._error = from_rpc_error(error, "KV transfer to the decode worker failed")
        except GlitchesError as error:
            self._error = error
            self._call.cancel()
        except BaseException as error:  # noqa: BLE001 - reported to the engine, which fails the Prefill
            self._error = Unavailable(f"KV transfer ({self.transport}) failed: {error}")
            self._call.cancel()
        finally:
            self._control.put(_END)

    def _write_layers(self, writer) -> None:
        tokens: dict[int, int] = {}  # layer -> tokens written, until its notice went
        while True:
            item = self._layers.get()
            if item is _END:
                break
            layer, key, value, ready = item
            if self._first_write is None:
                self._first_write = time.monotonic()
            tokens[layer] = key.shape[2]
            self._notice(writer.write(layer, key, value, ready, self._start), tokens)  # layers whose bytes are there
            self._bytes += 2 * key.shape[1] * key.shape[2] * key.shape[3] * writer.region.data.element_size()
        self._notice(writer.flush(), tokens)
        self._control.put(worker_pb2.KvPlacedControl(end=worker_pb2.KvEnd(num_layers=self._num_layers)))
        self._control.put(_END)

    def _notice(self, layers: list[int], tokens: dict[int, int]) -> None:
        for layer in layers:
            self._control.put(worker_pb2.KvPlacedControl(
                written=worker_pb2.KvWritten(layer=layer, seq_start=self._start, tokens=tokens.pop(layer))))

    def put_layer(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Queue one layer's KV; raises KvTransferFailed if the transfer already failed."""
        if self._error is not None or not self._thread.is_alive() and self._result is None:
            raise KvTransferFailed(f"KV transfer ended early at layer {layer}")
        ready = None
        if key.is_cuda:  # the writer's stream waits for the compute stream that produced key/value
            ready = torch.cuda.Event()
            ready.record()
        self._layers.put((layer, key[:, :, self._start:], value[:, :, self._start:], ready))

    def finish(self) -> TransferResult:
        """Write the rest, send the end marker and wait for the receiver's result."""
        self._layers.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result

    def failure(self):
        return self._error

    def abort(self) -> None:
        self._call.cancel()
        self._layers.put(_END)
        self._control.put(_END)
