"""The synchronous client.

    from glitches import Client
    with Client("127.0.0.1:50051") as client:
        for piece in client.stream("Why is the sky blue?", max_tokens=32):
            print(piece.text, end="", flush=True)
        print(client.generate("Hello", max_tokens=8).timings.ttft_s)

Errors are typed (glitches.errors): InvalidArgumentError, UnavailableError, DeadlineExceededError, ...
UNAVAILABLE is retried with exponential backoff (RetryPolicy) until the first message has arrived.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import closing

from glitches import convert
from glitches.errors import invalid_argument
from glitches.retry import RetryPolicy, retrying
from glitches.types import ClusterStatus, Completion, TextChunk
from glitches.services.runtime.channels import open_channel
from glitches.services.auth.tls import TlsConfig
from glitches.services.auth.tls import from_env as tls_from_env
from glitches.services.stubs.glitches.v1 import scheduler_pb2, scheduler_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
STATUS_TIMEOUT_S = 10.0  # Status's deadline (retries included) when the client has no timeout_s


def _encode(prompt, chat: bool, model: str, **sampling):
    try:
        return convert.generate_request(prompt, chat, model, **sampling)
    except (ValueError, TypeError) as error:  # protobuf refuses out-of-range numbers and bad strings
        raise invalid_argument(error) from None


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...] | None:
    """gRPC metadata carrying the API key; `None` reads GLITCHES_API_KEY (unset or empty: no key)."""
    key = os.environ.get("GLITCHES_API_KEY", "") if api_key is None else api_key
    return (("authorization", f"Bearer {key}"),) if key else None


def client_tls(tls: TlsConfig | None) -> TlsConfig:
    """`tls`, or the GLITCHES_TLS_* environment's settings when None (InvalidArgumentError when they are
    half-given or unreadable)."""
    return tls_from_env(os.environ) if tls is None else tls


class Client:
    def __init__(self, address: str = DEFAULT_ADDRESS, timeout_s: float | None = None,
                 retry: RetryPolicy | None = None, api_key: str | None = None, tls: TlsConfig | None = None):
        """`timeout_s` is the deadline of each call, retries included (None: no deadline); `retry` bounds
        retries on UNAVAILABLE (default RetryPolicy(): 3 attempts; glitches.retry.NO_RETRY: none);
        `api_key` is sent as `authorization: Bearer <key>` (None: GLITCHES_API_KEY, if set);
        `tls` (services.tls.TlsConfig: CA, and a client certificate for mTLS) secures the channel
        (None: GLITCHES_TLS_CA / _CERT / _KEY / _SERVER_NAME if set, else plaintext)."""
        self._metadata = auth_metadata(api_key)
        self.address = address
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._channel = open_channel(address, client_tls(tls))
        self._stub = scheduler_pb2_grpc.SchedulerStub(self._channel)

    def stream(self, prompt: str | Sequence[int], *, max_tokens: int = 64, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (), chat: bool = False, model: str = "",
               logprobs: bool = False, top_logprobs: int = 0, prompt_logprobs: bool = False,
               ignore_eos: bool = False, min_tokens: int = 0,
               response_format: str | dict | None = None) -> Iterator[TextChunk | Completion]:
        """Yield TextChunk pieces as tokens arrive, then one Completion. Closing the iterator cancels.

        `prompt` is text or token ids (used as is; `chat` then has no effect). `logprobs` returns each
        generated token's TokenLogprob (with the `top_logprobs` most likely tokens), `prompt_logprobs`
        those of the prompt's tokens after the first; `ignore_eos` never stops on EOS; `min_tokens` masks
        EOS and ignores stop strings until that many tokens are generated.
        `response_format`: "json_object" (any JSON object) or a JSON Schema dict constrains the text
        by token masking (the request ends once the JSON is complete); None or "text": free text.

        UNAVAILABLE before the first piece is retried per `self.retry`; never after it."""
        request = _encode(prompt, chat, model, max_tokens=max_tokens, temperature=temperature,
                          top_p=top_p, seed=seed, stop=stop, logprobs=logprobs, top_logprobs=top_logprobs,
                          prompt_logprobs=prompt_logprobs, ignore_eos=ignore_eos, min_tokens=min_tokens,
                          response_format=response_format)
        with closing(retrying(self.retry, self.timeout_s, lambda timeout_s: self._stub.Generate(
                request, timeout=timeout_s, metadata=self._metadata))) as messages:  # closing cancels the call
            for message in messages:
                yield convert.event(message)

    def generate(self, prompt: str | Sequence[int], **kwargs) -> Completion:
        """Run a request to the end and return its Completion (same arguments as stream).

        The stream is read to its very end (not left at the Completion), so the server finishes the
        call with OK instead of seeing a cancel."""
        final = None
        for item in self.stream(prompt, **kwargs):
            if isinstance(item, Completion):
                final = item
        if final is None:
            raise RuntimeError("the scheduler ended the stream without a final message")
        return final

    def status(self) -> ClusterStatus:
        """Every worker and its occupancy (deadline: timeout_s, or STATUS_TIMEOUT_S when None)."""
        (response,) = retrying(self.retry, self.timeout_s or STATUS_TIMEOUT_S, lambda timeout_s: (
            self._stub.Status(scheduler_pb2.StatusRequest(), timeout=timeout_s, metadata=self._metadata),))
        return convert.status(response)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
