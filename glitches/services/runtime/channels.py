"""gRPC channel and server options shared by every daemon."""

from __future__ import annotations

import threading

import grpc
import grpc.aio

from glitches.services.auth.tls import PLAINTEXT, TlsConfig

# A KV chunk is at most 4 MiB of K + V plus a small header; leave headroom.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def insecure_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=MESSAGE_OPTIONS)


def open_channel(address: str, tls: TlsConfig = PLAINTEXT) -> grpc.Channel:
    """A channel to address: TLS (and the process's client certificate) when tls is enabled."""
    if not tls.enabled:
        return insecure_channel(address)
    return grpc.secure_channel(address, tls.channel_credentials(), options=MESSAGE_OPTIONS + tls.channel_options())


def open_aio_channel(address: str, tls: TlsConfig = PLAINTEXT) -> grpc.aio.Channel:
    """open_channel for asyncio."""
    if not tls.enabled:
        return grpc.aio.insecure_channel(address, options=MESSAGE_OPTIONS)
    return grpc.aio.secure_channel(address, tls.channel_credentials(),
                                   options=MESSAGE_OPTIONS + tls.channel_options())


class WorkerStubs:
    """One Worker stub (and channel) per address, created on first use, shared by threads."""

    def __init__(self, tls: TlsConfig = PLAINTEXT):
        self._stubs: dict = {}
        self._lock = threading.Lock()
        self._tls = tls

    def get(self, address: str):
        from glitches.services.stubs.glitches.v1 import worker_pb2_grpc

        with self._lock:
            if address not in self._stubs:
                self._stubs[address] = worker_pb2_grpc.WorkerStub(open_channel(address, self._tls))
            return self._stubs[address]
