"""One error hierarchy for servers and SDK: a server's domain error crosses a real gRPC call (the error
interceptor) and comes back from from_rpc_error as the same class with its message, field, reason and
retry-after; the SDK's public names are the same classes."""

from __future__ import annotations

import grpc
import pytest

import glitches
from glitches import errors as sdk_errors
from glitches.services.runtime import errors
from glitches.services.runtime.grpc_server import start_server
from glitches.services.stubs.glitches.v1 import scheduler_pb2, scheduler_pb2_grpc

MAPPED = [(grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument, glitches.InvalidArgumentError),
          (grpc.StatusCode.NOT_FOUND, errors.NotFound, glitches.NotFoundError),
          (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists, sdk_errors.AlreadyExistsError),
          (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition, sdk_errors.FailedPreconditionError),
          (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied, glitches.PermissionDeniedError),
          (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted, glitches.ResourceExhaustedError),
          (grpc.StatusCode.UNAVAILABLE, errors.Unavailable, glitches.UnavailableError),
          (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded, glitches.DeadlineExceededError),
          (grpc.StatusCode.CANCELLED, errors.Cancelled, glitches.CancelledError),
          (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated, glitches.UnauthenticatedError)]


class Raising(scheduler_pb2_grpc.SchedulerServicer):
    """Status raises whatever error the test put in `self.error`."""

    error: Exception = errors.Unavailable("nothing set")

    def Status(self, request, context):
        raise self.error


@pytest.fixture(scope="module")
def server():
    servicer = Raising()
    running = start_server("127.0.0.1", 0, [(scheduler_pb2_grpc.add_SchedulerServicer_to_server, servicer)],
                           ("glitches.v1.Scheduler",))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = scheduler_pb2_grpc.SchedulerStub(channel)

    def call(error: Exception) -> grpc.RpcError:
        servicer.error = error
        with pytest.raises(grpc.RpcError) as caught:
            stub.Status(scheduler_pb2.StatusRequest(), timeout=10)
        return caught.value
    yield call
    channel.close()
    running.stop(0)


@pytest.mark.parametrize("code, server_cls, sdk_cls", MAPPED)
def test_every_mapped_code_round_trips_as_its_class(server, code, server_cls, sdk_cls):
    assert server_cls is sdk_cls and server_cls.status_code == code
    rpc_error = server(server_cls("what to change", field="max_new_tokens", reason="some_reason"))
    assert rpc_error.code() == code and rpc_error.details() == "what to change"  # no code prefix on the wire
    error = errors.from_rpc_error(rpc_error)
    assert type(error) is server_cls and isinstance(error, glitches.GlitchesError)
    assert (error.code, error.message, str(error)) == (code.name, "what to change", "what to change")
    assert (error.field, error.reason) == ("max_new_tokens", "some_reason")


def test_retry_after_crosses_the_wire(server):
    error = errors.from_rpc_error(server(errors.ResourceExhausted("full; retry in about 4 s", retry_after_s=4.0)))
    assert isinstance(error, glitches.ResourceExhaustedError) and error.retry_after_s == 4.0
    assert errors.from_rpc_error(server(errors.InvalidArgument("bad"))).retry_after_s is None


def test_an_unexpected_exception_is_internal_of_the_base_class(server):
    error = errors.from_rpc_error(server(RuntimeError("boom")))
    assert type(error) is errors.GlitchesError and error.code == "INTERNAL" and "boom" in error.message


def test_a_subclass_with_its_own_code_keeps_it(server):
    """A server error subclass (like fpga_worker's KernelError) may choose its code per instance; the
    mapping back is by code, never to that subclass."""
    class Special(errors.GlitchesError):
        pass
    rpc_error = server(Special("odd", status_code=grpc.StatusCode.OUT_OF_RANGE))
    assert rpc_error.code() == grpc.StatusCode.OUT_OF_RANGE
    error = errors.from_rpc_error(rpc_error)
    assert type(error) is errors.GlitchesError and error.code == "OUT_OF_RANGE"


def test_downstream_context_prefixes_and_deadline_becomes_unavailable(server):
    error = errors.from_rpc_error(server(errors.DeadlineExceeded("too slow")), "decode on fpga-0 failed")
    assert type(error) is errors.Unavailable and error.message == "decode on fpga-0 failed: too slow"
    error = errors.from_rpc_error(server(errors.NotFound("no request r", field="request_id")), "release on fpga-0")
    assert type(error) is errors.NotFound and error.field == "request_id"


def test_error_for_picks_the_class_or_the_base():
    assert type(errors.error_for(grpc.StatusCode.UNAVAILABLE, "down")) is glitches.UnavailableError
    internal = errors.error_for(grpc.StatusCode.INTERNAL, "bug")
    assert type(internal) is errors.GlitchesError and internal.status_code == grpc.StatusCode.INTERNAL
    exhausted = errors.error_for(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", retry_after_s=2.0, reason="r")
    assert (exhausted.retry_after_s, exhausted.reason) == (2.0, "r")


def test_an_error_raised_before_any_call_carries_no_metadata():
    class Bare(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.UNAVAILABLE

        def details(self):
            return "connection refused"

        def trailing_metadata(self):
            raise ValueError("no call")
    error = errors.from_rpc_error(Bare())
    assert type(error) is errors.Unavailable and (error.field, error.reason, error.retry_after_s) == (None, None, None)
