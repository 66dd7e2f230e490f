"""gRPC channel and server options shared by every daemon."""

from __future__ import annotations

import threading

import grpc

# A KV chunk is at most 4 MiB of K + V plus a small header; leave headroom.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def insecure_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=MESSAGE_OPTIONS)


class WorkerStubs:
    """One Worker stub (and channel) per address, created on first use, shared by threads."""

    def __init__(self):
        self._stubs: dict = {}
        self._lock = threading.Lock()

    def get(self, address: str):
        from services.stubs.glitches.v1 import worker_pb2_grpc

        with self._lock:
            if address not in self._stubs:
                self._stubs[address] = worker_pb2_grpc.WorkerStub(insecure_channel(address))
            return self._stubs[address]
