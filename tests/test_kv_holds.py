"""glitches/services/cluster/kv_holds.py on a fake clock: holds expire ttl after their last renewal, never while decoding,
and a second concurrent decode of one request is refused."""

from __future__ import annotations

import pytest

from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument
from glitches.services.cluster.kv_holds import KvHolds


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _holds(ttl_s: float = 10.0):
    clock, released = Clock(), []
    return KvHolds(ttl_s, released.append, clock), clock, released


def test_a_hold_nobody_renews_expires_after_the_ttl():
    holds, clock, released = _holds()
    holds.hold("a", 1000)
    clock.now += 9.9
    assert holds.expire() == [] and holds.summary().requests == 1 and holds.summary().kv_bytes == 1000
    clock.now += 0.2
    assert holds.expire() == ["a"] and released == ["a"]
    assert holds.summary().requests == 0 and holds.expired_total == 1


def test_renewal_pushes_the_expiry_and_names_unknown_ids():
    holds, clock, released = _holds()
    holds.hold("a")
    clock.now += 8
    assert holds.renew(["a", "ghost"]) == ["ghost"]
    clock.now += 8
    assert holds.expire() == []
    clock.now += 3
    assert holds.expire() == ["a"]


def test_a_decoding_request_never_expires_and_counts_down_again_after():
    holds, clock, released = _holds()
    holds.hold("a")
    holds.begin_decode("a")
    assert holds.summary().expiring == 0
    clock.now += 100
    assert holds.expire() == []
    holds.end_decode("a")
    assert holds.summary().expiring == 1
    clock.now += 10.1
    assert holds.expire() == ["a"]


def test_one_decode_per_request_at_a_time():
    holds, _, _ = _holds()
    holds.begin_decode("a")
    with pytest.raises(FailedPrecondition, match="already decoding"):
        holds.begin_decode("a")
    holds.end_decode("a")
    holds.begin_decode("a")


def test_forget_and_bad_ttl():
    holds, clock, released = _holds()
    holds.hold("a")
    holds.forget("a")
    clock.now += 100
    assert holds.expire() == [] and released == []
    with pytest.raises(InvalidArgument):
        KvHolds(0, print)


def test_kv_still_arriving_does_not_expire_until_received():
    holds, clock, released = _holds()
    holds.hold("a", receiving=True)
    clock.now += 100
    assert holds.expire() == [] and holds.summary().expiring == 0
    holds.received("a")
    clock.now += 9
    assert holds.expire() == []
    clock.now += 2
    assert holds.expire() == ["a"]
