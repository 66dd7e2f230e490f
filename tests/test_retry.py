"""The one retry policy of both clients (glitches.retry), without a network: which codes retry, the
backoff and its jitter, the attempt bound, the deadline budget, and no retry once a stream has streamed."""

from __future__ import annotations

import grpc
import pytest

from glitches.retry import NO_RETRY, Attempts, Deadline, RetryPolicy

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


class Clock:
    """A settable monotonic clock, in seconds."""

    def __init__(self):
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def test_backoff_doubles_to_its_cap_with_jitter_in_half_to_full():
    policy = RetryPolicy(initial_backoff_s=0.2, max_backoff_s=1.0, multiplier=2.0)
    assert [policy.backoff_s(k, jitter=1.0) for k in (1, 2, 3, 4, 5)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert policy.backoff_s(2, jitter=0.5) == 0.2
    drawn = [policy.backoff_s(2) for _ in range(200)]
    assert all(0.2 <= wait_s <= 0.4 for wait_s in drawn) and len(set(drawn)) > 1


def test_only_retry_codes_retry_and_attempts_are_bounded():
    attempts = Attempts(RetryPolicy(max_attempts=3), Deadline(None))
    attempts.start()
    assert attempts.wait_before_retry_s(grpc.StatusCode.INVALID_ARGUMENT, streamed=False) is None
    assert attempts.wait_before_retry_s(UNAVAILABLE, streamed=False) is not None
    attempts.start()
    assert attempts.wait_before_retry_s(UNAVAILABLE, streamed=False) is not None
    attempts.start()
    assert attempts.wait_before_retry_s(UNAVAILABLE, streamed=False) is None  # the third attempt was the last
    no_retry = Attempts(NO_RETRY, Deadline(None))
    no_retry.start()
    assert no_retry.wait_before_retry_s(UNAVAILABLE, streamed=False) is None
    custom = Attempts(RetryPolicy(retry_codes=(grpc.StatusCode.RESOURCE_EXHAUSTED,)), Deadline(None))
    custom.start()
    assert custom.wait_before_retry_s(grpc.StatusCode.RESOURCE_EXHAUSTED, streamed=False) is not None
    assert custom.wait_before_retry_s(UNAVAILABLE, streamed=False) is None


def test_a_stream_that_has_streamed_is_never_retried():
    attempts = Attempts(RetryPolicy(max_attempts=10), Deadline(None))
    attempts.start()
    assert attempts.wait_before_retry_s(UNAVAILABLE, streamed=True) is None


def test_the_deadline_is_one_budget_for_all_attempts():
    clock = Clock()
    policy = RetryPolicy(max_attempts=100, initial_backoff_s=0.4, max_backoff_s=0.4)
    attempts = Attempts(policy, Deadline(1.0, clock))
    assert attempts.start() == pytest.approx(1.0)
    clock.now_s += 0.3
    wait_s = attempts.wait_before_retry_s(UNAVAILABLE, streamed=False)
    assert 0.2 <= wait_s <= 0.4
    clock.now_s += wait_s
    assert attempts.start() == pytest.approx(0.7 - wait_s)  # the next attempt gets what is left
    clock.now_s = 100.0 + 0.99
    assert attempts.wait_before_retry_s(UNAVAILABLE, streamed=False) is None  # no time left to wait
    assert Deadline(None, clock).remaining_s() is None


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
