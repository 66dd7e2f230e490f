"""gRPC channel and server options shared by every daemon."""

from __future__ import annotations

import grpc

# A KV chunk is at most 4 MiB of K + V plus a small header; leave headroom.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

MESSAGE_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]


def insecure_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=MESSAGE_OPTIONS)
