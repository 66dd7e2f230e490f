"""Limits on the client-facing scheduler: requests per key per minute, prompt tokens."""

import pytest

from scheduler.orchestrator import GenerateInput, ModelInfo, Orchestrator
from scheduler.settings import SchedulerSettings
from services import models
from services.errors import InvalidArgument, ResourceExhausted
from services.rate_limit import KeyRateLimiter
from services.registry import Registry
from services.sampling import Sampling
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

    from services.api_keys import ApiKeyInterceptor

    class Details:
        method = "/glitches.v1.Scheduler/Status"
        invocation_metadata = (("authorization", "Bearer k1"),)

    handler = grpc.unary_unary_rpc_method_handler(lambda request, context: b"ok")
    interceptor = ApiKeyInterceptor(("k1",), ("glitches.v1.Scheduler",), KeyRateLimiter(1))
    assert interceptor.intercept_service(lambda _: handler, Details()) is handler
    refused = interceptor.intercept_service(lambda _: handler, Details())
    assert refused is not handler

    class Context:
        def abort(self, code, message):
            raise RuntimeError((code, message))

    with pytest.raises(RuntimeError) as info:
        refused.unary_unary(b"", Context())
    assert info.value.args[0][0] == grpc.StatusCode.RESOURCE_EXHAUSTED and "per minute" in info.value.args[0][1]
