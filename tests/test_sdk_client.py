"""The SDK against an in-process fake scheduler: retries with backoff on UNAVAILABLE (never after the
first message), one deadline across retries, cancellation, typed errors."""

from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

import glitches
from glitches import AsyncClient, Client, Completion, RetryPolicy
from glitches.services.runtime.grpc_server import start_server
from glitches.services.stubs.glitches.v1 import scheduler_pb2, scheduler_pb2_grpc

FAST = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


class FakeScheduler(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self):
        self.calls = 0
        self.fail_first = 0  # abort this many calls with `code` before any message
        self.code = grpc.StatusCode.UNAVAILABLE
        self.fail_after_first = False  # abort UNAVAILABLE after one delta
        self.delay_s = 0.0  # before the first message
        self.slow_tokens = False  # one delta every 50 ms, for a long time
        self.cancelled = threading.Event()

    def Generate(self, request, context):
        self.calls += 1
        context.add_callback(lambda: self.cancelled.set() if context.is_active() is False and
                             not self._ok else None)
        self._ok = False
        if self.calls <= self.fail_first:
            context.abort(self.code, f"{self.code.name} on try {self.calls}")
        time.sleep(self.delay_s)
        yield scheduler_pb2.GenerateResponse(delta=scheduler_pb2.TextDelta(text="Hi", token_ids=[1]))
        if self.fail_after_first:
            context.abort(grpc.StatusCode.UNAVAILABLE, "decode worker went away")
        for _ in range(200 if self.slow_tokens else 0):
            time.sleep(0.05)
            yield scheduler_pb2.GenerateResponse(delta=scheduler_pb2.TextDelta(text=".", token_ids=[2]))
        self._ok = True
        yield scheduler_pb2.GenerateResponse(final=scheduler_pb2.GenerateFinal(request_id="r", text="Hi",
                                                                               token_ids=[1]))

    def Status(self, request, context):
        self.calls += 1
        if self.calls <= self.fail_first:
            context.abort(self.code, "not yet")
        return scheduler_pb2.StatusResponse(model="fake")


@pytest.fixture
def fake():
    servicer = FakeScheduler()
    server = start_server("127.0.0.1", 0, [(scheduler_pb2_grpc.add_SchedulerServicer_to_server, servicer)],
                          ("glitches.v1.Scheduler",))
    servicer.address = f"127.0.0.1:{server.port}"
    yield servicer
    server.stop(0)


def test_unavailable_is_retried_then_succeeds(fake):
    fake.fail_first = 2
    with Client(fake.address, retry=FAST) as client:
        assert client.generate("x").text == "Hi"
    assert fake.calls == 3


def test_retries_are_bounded(fake):
    fake.fail_first = 10
    with Client(fake.address, retry=FAST) as client, pytest.raises(glitches.UnavailableError, match="try 3"):
        client.generate("x")
    assert fake.calls == 3


def test_no_retry_after_the_first_message(fake):
    fake.fail_after_first = True
    pieces = []
    with Client(fake.address, retry=FAST) as client, pytest.raises(glitches.UnavailableError, match="went away"):
        for piece in client.stream("x"):
            pieces.append(piece)
    assert fake.calls == 1 and [p.text for p in pieces] == ["Hi"]


def test_other_codes_are_not_retried_and_typed(fake):
    for code, cls in [(grpc.StatusCode.INVALID_ARGUMENT, glitches.InvalidArgumentError),
                      (grpc.StatusCode.UNAUTHENTICATED, glitches.UnauthenticatedError),
                      (grpc.StatusCode.PERMISSION_DENIED, glitches.PermissionDeniedError),
                      (grpc.StatusCode.NOT_FOUND, glitches.NotFoundError),
                      (grpc.StatusCode.RESOURCE_EXHAUSTED, glitches.ResourceExhaustedError),
                      (grpc.StatusCode.CANCELLED, glitches.CancelledError)]:
        fake.calls, fake.fail_first, fake.code = 0, 1, code
        with Client(fake.address, retry=FAST) as client, pytest.raises(cls) as caught:
            client.generate("x")
        assert fake.calls == 1 and caught.value.code == code.name


def test_deadline_is_typed_and_covers_retries(fake):
    fake.delay_s = 2.0
    with Client(fake.address, timeout_s=0.3, retry=FAST) as client:
        started = time.monotonic()
        with pytest.raises(glitches.DeadlineExceededError):
            client.generate("x")
        assert time.monotonic() - started < 1.5
    fake.delay_s, fake.fail_first = 0.0, 100
    slow_retries = RetryPolicy(max_attempts=100, initial_backoff_s=0.1, max_backoff_s=0.1)
    with Client(fake.address, timeout_s=0.5, retry=slow_retries) as client:
        started = time.monotonic()
        with pytest.raises(glitches.GlitchesError):
            client.generate("x")
        assert time.monotonic() - started < 1.0 and fake.calls < 10


def test_status_retries(fake):
    fake.fail_first = 2
    with Client(fake.address, retry=FAST) as client:
        assert client.status().model == "fake"
    with Client(fake.address, retry=glitches.NO_RETRY) as client:
        fake.calls, fake.fail_first = 0, 1
        with pytest.raises(glitches.UnavailableError):
            client.status()


def test_closing_the_stream_cancels_the_call(fake):
    fake.slow_tokens = True
    with Client(fake.address) as client:
        stream = client.stream("x")
        assert next(stream).text == "Hi"
        stream.close()
    assert fake.cancelled.wait(5)


def test_request_that_cannot_be_encoded_is_invalid_argument(fake):
    with Client(fake.address) as client, pytest.raises(glitches.InvalidArgumentError, match="encoded"):
        client.generate("x", max_tokens=2**40)
    assert fake.calls == 0


def test_async_client_retries_deadline_and_cancellation(fake):
    async def main():
        fake.fail_first = 2
        async with AsyncClient(fake.address, retry=FAST) as client:
            assert isinstance(await client.generate("x"), Completion)
        assert fake.calls == 3
        fake.delay_s = 2.0
        async with AsyncClient(fake.address, timeout_s=0.3, retry=FAST) as client:
            with pytest.raises(glitches.DeadlineExceededError):
                await client.generate("x")
        fake.delay_s, fake.slow_tokens = 0.0, True
        async with AsyncClient(fake.address) as client:
            async def consume():
                async for _ in client.stream("x"):
                    pass
            task = asyncio.create_task(consume())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    asyncio.run(main())
    assert fake.cancelled.wait(5)


def test_async_client_shares_the_retry_policy(fake):
    """The async client's Generate and Status retry the first N UNAVAILABLE failures, stop at max_attempts,
    and never retry a stream that has streamed, exactly as the sync client (one policy, glitches.retry)."""
    async def main():
        async with AsyncClient(fake.address, retry=FAST) as client:
            fake.calls, fake.fail_first = 0, 2
            assert (await client.status()).model == "fake" and fake.calls == 3
            fake.calls, fake.fail_first = 0, 10
            with pytest.raises(glitches.UnavailableError, match="try 3"):
                await client.generate("x")
            assert fake.calls == 3
            fake.calls, fake.fail_first = 0, 10
            with pytest.raises(glitches.UnavailableError, match="not yet"):
                await client.status()
            assert fake.calls == 3
            fake.calls, fake.fail_first, fake.fail_after_first = 0, 0, True
            pieces = []
            with pytest.raises(glitches.UnavailableError, match="went away"):
                async for piece in client.stream("x"):
                    pieces.append(piece.text)
            assert fake.calls == 1 and pieces == ["Hi"]
        async with AsyncClient(fake.address, retry=glitches.NO_RETRY) as client:
            fake.calls, fake.fail_first, fake.fail_after_first = 0, 1, False
            with pytest.raises(glitches.UnavailableError):
                await client.status()
            assert fake.calls == 1
    asyncio.run(main())
