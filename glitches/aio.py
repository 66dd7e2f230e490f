"""The asyncio client.

    from glitches import AsyncClient
    async with AsyncClient("127.0.0.1:50051") as client:
        async for piece in client.stream("Hello", max_tokens=16):
            print(piece.text, end="")
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from glitches import convert
from glitches.client import DEFAULT_ADDRESS, STATUS_TIMEOUT_S, _encode, auth_metadata, client_tls
from glitches.retry import RetryPolicy, retrying_async
from glitches.types import ClusterStatus, Completion, TextChunk
from glitches.services.runtime.channels import open_aio_channel
from glitches.services.auth.tls import TlsConfig
from glitches.services.stubs.glitches.v1 import scheduler_pb2, scheduler_pb2_grpc


class AsyncClient:
    def __init__(self, address: str = DEFAULT_ADDRESS, timeout_s: float | None = None,
                 retry: RetryPolicy | None = None, api_key: str | None = None, tls: TlsConfig | None = None):
        """As Client: `timeout_s` covers a call and its retries; `retry` bounds retries on UNAVAILABLE;
        `api_key` is sent as `authorization: Bearer <key>` (None: GLITCHES_API_KEY, if set); `tls` as Client's.
        Cancelling the task that iterates a stream (or closing the iterator) cancels the call."""
        self._metadata = auth_metadata(api_key)
        self.address = address
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._channel = open_aio_channel(address, client_tls(tls))
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    async def stream(self, prompt: str | Sequence[int], *, max_tokens: int = 64, temperature: float = 0.0,
                     top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (), chat: bool = False,
                     model: str = "", logprobs: bool = False, top_logprobs: int = 0,
                     prompt_logprobs: bool = False, ignore_eos: bool = False, min_tokens: int = 0,
                     response_format: str | dict | None = None,
                     api_key: str | None = None) -> AsyncIterator[TextChunk | Completion]:
        """Yield TextChunk pieces, then one Completion; UNAVAILABLE is retried only before the first piece.
        Arguments as Client.stream's (a prompt as text or token ids, logprobs, ignore_eos, min_tokens,
        response_format...); `api_key` is sent for this call instead of the client's (a gateway
        forwarding each of its clients' keys)."""
        request = _encode(prompt, chat, model, max_tokens=max_tokens, temperature=temperature,
                          top_p=top_p, seed=seed, stop=stop, logprobs=logprobs, top_logprobs=top_logprobs,
                          prompt_logprobs=prompt_logprobs, ignore_eos=ignore_eos, min_tokens=min_tokens,
                          response_format=response_format)
        metadata = self._metadata if api_key is None else auth_metadata(api_key)
        async with aclosing(retrying_async(self.retry, self.timeout_s, lambda timeout_s: self._stub.Generate(
                request, timeout=timeout_s, metadata=metadata))) as messages:  # closing cancels the call
            async for message in messages:
                yield convert.event(message)

    async def generate(self, prompt: str | Sequence[int], **kwargs) -> Completion:
        """Run a request to the end (reading the stream to its very end) and return its Completion."""
        final = None
        async for item in self.stream(prompt, **kwargs):
            if isinstance(item, Completion):
                final = item
        if final is None:
            raise RuntimeError("the scheduler ended the stream without a final message")
        return final

    async def status(self) -> ClusterStatus:
        """As Client.status: every worker and its occupancy."""
        async def one_status(timeout_s):
            yield await self._stub.Status(scheduler_pb2.StatusRequest(), timeout=timeout_s, metadata=self._metadata)

        (response,) = [message async for message in retrying_async(self.retry, self.timeout_s or STATUS_TIMEOUT_S,
                                                                     one_status)]
        return convert.status(response)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
