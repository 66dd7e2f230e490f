"""The synchronous client.

    from glitches import Client
    with Client("127.0.0.1:50051") as client:
        for piece in client.stream("Why is the sky blue?", max_tokens=32):
            print(piece.text, end="", flush=True)
        print(client.generate("Hello", max_tokens=8).timings.ttft_s)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import grpc

from glitches import convert
from glitches.errors import from_rpc_error
from glitches.types import ClusterStatus, Completion, TextChunk
from services.channels import MESSAGE_OPTIONS
from services.stubs.glitches.v1 import scheduler_pb2, scheduler_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, timeout_s: float | None = None):
        """`timeout_s` is the deadline of each call (None: no deadline)."""
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.insecure_channel(address, options=MESSAGE_OPTIONS)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    def stream(self, prompt: str, *, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0, stop: Sequence[str] = (), chat: bool = False,
               model: str = "") -> Iterator[TextChunk | Completion]:
        """Yield TextChunk pieces as tokens arrive, then one Completion. Closing the iterator cancels."""
        request = convert.generate_request(prompt, chat, model, max_tokens=max_tokens, temperature=temperature,
                                           top_p=top_p, seed=seed, stop=stop)
        call = self._stub.Generate(request, timeout=self.timeout_s)
        try:
            for message in call:
                yield convert.event(message)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    def generate(self, prompt: str, **kwargs) -> Completion:
        """Run a request to the end and return its Completion (same arguments as stream)."""
        for item in self.stream(prompt, **kwargs):
            if isinstance(item, Completion):
                return item
        raise RuntimeError("the scheduler ended the stream without a final message")

    def status(self) -> ClusterStatus:
        try:
            return convert.status(self._stub.Status(scheduler_pb2.StatusRequest(), timeout=self.timeout_s or 10))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
