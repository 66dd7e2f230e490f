"""Limits on the client-facing scheduler: requests per key per minute, prompt tokens."""

import pytest

from glitches.scheduler.orchestrator import GenerateInput, ModelInfo, Orchestrator
from glitches.scheduler.settings import SchedulerSettings
from glitches.services.generation import models
from glitches.services.runtime.errors import InvalidArgument, ResourceExhausted
from glitches.services.auth.rate_limit import KeyRateLimiter
from glitches.services.cluster.registry import Registry
from glitches.services.generation.sampling import Sampling
from tests.conftest import REDIS_URL


def test_each_key_gets_its_rate_and_recovers_with_time():
    now = [0.0]
    limiter = KeyRateLimiter(requests_per_minute=2, clock=lambda: now[0])
    limiter.admit("a")
    limiter.admit("a")
    with pytest.raises(ResourceExhausted, match="retry in 30.0 s"):
        limiter.admit("a")
    limiter.admit("b")  # another key has its own bucket
    now[0] = 30.0  # half a minute refills one request
    limiter.admit("a")
    with pytest.raises(ResourceExhausted):
        limiter.admit("a")


def test_a_prompt_above_the_limit_is_invalid_argument(tiny_source):
    model = ModelInfo("tiny-llama", models.load_tokenizer(tiny_source), (2,), 512)
    orchestrator = Orchestrator(SchedulerSettings(max_prompt_tokens=5), Registry(REDIS_URL, "unused"), model)
    with pytest.raises(InvalidArgument, match="--max-prompt-tokens"):
        orchestrator.validate(GenerateInput("one two three four five six seven", False, Sampling(max_new_tokens=2)))
    prompt_ids, _ = orchestrator.validate(GenerateInput("one two", False, Sampling(max_new_tokens=2)))
    assert 0 < len(prompt_ids) <= 5


def test_the_key_interceptor_refuses_with_resource_exhausted_past_the_rate():
    import grpc

    from glitches.services.auth.api_keys import ApiKeyInterceptor

    class Details:
        method = "/glitches.v1.Scheduler/Status"
        invocation_metadata = (("authorization", "Bearer k1"),)

    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"ok")
    interceptor = ApiKeyInterceptor(("k1",), ("glitches.v1.Scheduler",), KeyRateLimiter(1))
    assert interceptor.intercept_service(lambda _: handler, Details()) is handler
    refused = interceptor.intercept_service(lambda _: handler, Details())
    assert refused is not handler

    class Context:
        trailing = ()

        def set_trailing_metadata(self, metadata):
            self.trailing = metadata

        def abort(self, code, message):
            raise RuntimeError((code, message))

    context = Context()
    with pytest.raises(RuntimeError) as info:
        refused.unary_unary(b"", context)
    assert info.value.args[0][0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "per minute" in info.value.args[0][1]
    assert 59_000 <= int(dict(context.trailing)["retry-after-ms"]) <= 60_000  # 1 per minute: the next in ~60 s


def test_the_retry_hint_reaches_the_sdk_and_the_gateway_as_retry_after(redis_prefix):
    """A real scheduler-side interceptor over a real gRPC server: the rate limit's wait travels as
    retry-after-ms trailing metadata into the SDK's error and out of the gateway as Retry-After."""
    import asyncio

    import grpc

    from glitches import Client
    from glitches.errors import ResourceExhaustedError
    from glitches.gateway.errors import from_sdk_error
    from glitches.services.auth.api_keys import ApiKeyInterceptor
    from glitches.services.runtime.grpc_server import start_server
    from glitches.services.stubs.glitches.v1 import scheduler_pb2, scheduler_pb2_grpc

    class Scheduler(scheduler_pb2_grpc.SchedulerServicer):
        def Status(self, request, context):
            return scheduler_pb2.StatusResponse(model="m")

    server = start_server("127.0.0.1", 0, [(scheduler_pb2_grpc.add_SchedulerServicer_to_server, Scheduler())],
                          ("glitches.v1.Scheduler",),
                          auth=ApiKeyInterceptor(("k1",), ("glitches.v1.Scheduler",), KeyRateLimiter(2)))
    try:
        with Client(f"127.0.0.1:{server.port}", api_key="k1", timeout_s=10) as client:
            client.status()
            client.status()
            with pytest.raises(ResourceExhaustedError) as refused:
                client.status()
        assert 25 <= refused.value.retry_after_s <= 30  # one request per 30 s at 2 per minute
        reply = from_sdk_error(refused.value)
        assert reply.status_code == 429 and 25 <= int(reply.headers["Retry-After"]) <= 30
        assert int(reply.headers["retry-after-ms"]) == pytest.approx(refused.value.retry_after_s * 1000, abs=1)

        async def refused_async():
            from glitches.aio import AsyncClient

            async with AsyncClient(f"127.0.0.1:{server.port}", api_key="k1", timeout_s=10) as aclient:
                with pytest.raises(ResourceExhaustedError) as info:
                    await aclient.status()
                return info.value.retry_after_s

        assert 25 <= asyncio.run(refused_async()) <= 30
        assert grpc.StatusCode.RESOURCE_EXHAUSTED.name == refused.value.code
    finally:
        server.stop(0)


def test_admission_refusals_carry_their_retry_hint():
    from glitches.scheduler.admission import Admission

    admission = Admission(max_active=1, max_queued=0, queue_wait_s=8)
    with admission.slot():
        with pytest.raises(ResourceExhausted) as full:
            with admission.slot():
                pass
    assert full.value.retry_after_s == 4.0 and "retry in about 4 s" in str(full.value)
