"""KV-transfer tokens (services.kv_token): issued by the scheduler, accepted once by the receiver
they name, for the request they name, before they expire, under the same secret."""

from __future__ import annotations

import pytest

from glitches.services.runtime.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from glitches.services.auth.kv_token import (MIN_SECRET_BYTES, SECRET_ENV, KvTokenIssuer, KvTokenVerifier, load_secret, new_secret,
                               secret_from_environment)

SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.fixture
def clock():
    now = [1_700_000_000.0]  # unix seconds
    return now


def _pair(clock, ttl_s=60.0, secret=SECRET, **kwargs):
    return (KvTokenIssuer(secret, ttl_s, clock=lambda: clock[0]),
            KvTokenVerifier(secret, clock=lambda: clock[0], **kwargs))


def test_a_token_is_accepted_once_for_its_request_and_worker(clock):
    issuer, verifier = _pair(clock)
    token = issuer.issue("req.0", "fpga-0")
    assert token.startswith("v1.")
    verifier.check(token, "req.0", "fpga-0")
    with pytest.raises(PermissionDenied, match="already used"):
        verifier.check(token, "req.0", "fpga-0")


def test_wrong_request_is_refused(clock):
    issuer, verifier = _pair(clock)
    with pytest.raises(PermissionDenied, match="not issued for this request and worker"):
        verifier.check(issuer.issue("req.0", "fpga-0"), "req.1", "fpga-0")


def test_wrong_worker_is_refused(clock):
    issuer, verifier = _pair(clock)
    with pytest.raises(PermissionDenied, match=r"not issued for this request and worker \(fpga-1\)"):
        verifier.check(issuer.issue("req.0", "fpga-0"), "req.0", "fpga-1")


def test_expired_token_is_refused(clock):
    issuer, verifier = _pair(clock, ttl_s=10)
    token = issuer.issue("req.0", "fpga-0")
    clock[0] += 12  # past expiry (issue time + 10 s, rounded up to the next whole second)
    with pytest.raises(PermissionDenied, match="expired"):
        verifier.check(token, "req.0", "fpga-0")


def test_token_still_valid_just_before_expiry(clock):
    issuer, verifier = _pair(clock, ttl_s=10)
    token = issuer.issue("req.0", "fpga-0")
    clock[0] += 10
    verifier.check(token, "req.0", "fpga-0")


@pytest.mark.parametrize("tamper", [
    lambda t: t[:-1] + ("0" if t[-1] != "0" else "1"),  # one hex digit of the mac
    lambda t: "v1." + str(int(t.split(".")[1]) + 3600) + "." + t.split(".")[2],  # a later expiry
    lambda t: "v2" + t[2:],  # another version
    lambda t: t.split(".")[0] + ".x." + t.split(".")[2],  # expiry not a number
    lambda t: t.rsplit(".", 1)[0],  # no mac
    lambda t: t + "\u00e9",  # not ASCII
    lambda t: "garbage",
])
def test_tampered_token_is_refused(clock, tamper):
    issuer, verifier = _pair(clock)
    with pytest.raises(PermissionDenied):
        verifier.check(tamper(issuer.issue("req.0", "fpga-0")), "req.0", "fpga-0")


def test_token_under_another_secret_is_refused(clock):
    issuer = KvTokenIssuer(b"another secret of enough bytes!!", clock=lambda: clock[0])
    _, verifier = _pair(clock)
    with pytest.raises(PermissionDenied, match=SECRET_ENV):
        verifier.check(issuer.issue("req.0", "fpga-0"), "req.0", "fpga-0")


def test_missing_token_is_refused(clock):
    _, verifier = _pair(clock)
    with pytest.raises(PermissionDenied, match="carries no token"):
        verifier.check("", "req.0", "fpga-0")


def test_fields_cannot_shift_between_request_and_worker(clock):
    """Length-prefixed fields: ("a|b", "c") and ("a", "b|c") sign differently."""
    issuer, verifier = _pair(clock)
    with pytest.raises(PermissionDenied):
        verifier.check(issuer.issue("r|x", "w"), "r", "x|w")


def test_used_tokens_are_forgotten_once_expired_and_memory_is_bounded(clock):
    issuer, verifier = _pair(clock, ttl_s=5, max_remembered=3)
    for i in range(3):
        verifier.check(issuer.issue(f"r{i}", "w"), f"r{i}", "w")
    assert verifier.remembered() == 3
    with pytest.raises(ResourceExhausted, match="unexpired KV tokens"):
        verifier.check(issuer.issue("r3", "w"), "r3", "w")
    clock[0] += 7  # every remembered token has expired
    verifier.check(issuer.issue("r4", "w"), "r4", "w")
    assert verifier.remembered() == 1


def test_secret_loading(tmp_path, monkeypatch):
    assert load_secret() == b""
    path = tmp_path / "secret"
    path.write_text(new_secret() + "\n")
    assert len(load_secret(str(path))) == 64
    with pytest.raises(InvalidArgument, match=f"fewer than {MIN_SECRET_BYTES}"):
        load_secret(value="short")
    with pytest.raises(InvalidArgument, match="given twice"):
        load_secret(str(path), "x" * 32)
    with pytest.raises(InvalidArgument, match="cannot read"):
        load_secret(str(tmp_path / "missing"))
    monkeypatch.setenv(SECRET_ENV, "y" * 32)
    assert secret_from_environment() == b"y" * 32
    monkeypatch.delenv(SECRET_ENV)
    assert secret_from_environment() == b""
    with pytest.raises(InvalidArgument):
        KvTokenIssuer(b"short")
