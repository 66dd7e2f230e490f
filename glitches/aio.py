"""The asyncio client.

    from glitches import AsyncClient
    async with AsyncClient("127.0.0.1:50051") as client:
        async for piece in client.stream("Hello", max_tokens=16):
            print(piece.text, end="")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import grpc

from glitches import convert
from glitches.client import DEFAULT_ADDRESS
from glitches.errors import from_rpc_error
from glitches.types import ClusterStatus, Completion, TextChunk
from services.channels import MESSAGE_OPTIONS
from services.stubs.glitches.v1 import scheduler_pb2, scheduler_pb2_grpc


class AsyncClient:
    def __init__(self, address: str = DEFAULT_ADDRESS, timeout_s: float | None = None):
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(address, options=MESSAGE_OPTIONS)
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    async def stream(self, prompt: str, *, max_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
                     seed: int = 0, stop: Sequence[str] = (), chat: bool = False,
                     model: str = "") -> AsyncIterator[TextChunk | Completion]:
        request = convert.generate_request(prompt, chat, model, max_tokens=max_tokens, temperature=temperature,
                                           top_p=top_p, seed=seed, stop=stop)
        call = self._stub.Generate(request, timeout=self.timeout_s)
        try:
            async for message in call:
                yield convert.event(message)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            call.cancel()

    async def generate(self, prompt: str, **kwargs) -> Completion:
        async for item in self.stream(prompt, **kwargs):
            if isinstance(item, Completion):
                return item
        raise RuntimeError("the scheduler ended the stream without a final message")

    async def status(self) -> ClusterStatus:
        try:
            return convert.status(await self._stub.Status(scheduler_pb2.StatusRequest(),
                                                          timeout=self.timeout_s or 10))
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
