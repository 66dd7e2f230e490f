"""One server interceptor that turns domain errors into gRPC statuses.

Servicers raise `services.errors.GlitchesError` subclasses; this sets the code and
message for every kind of RPC (unary or streaming, either side). Anything else
escaping a handler is logged with its traceback and becomes INTERNAL. A request that does not
parse as its protobuf message (random bytes, a string field that is not UTF-8) is INVALID_ARGUMENT:
grpc itself would answer INTERNAL ("Exception deserializing request").
"""

from __future__ import annotations

import logging

import grpc

from glitches.services.runtime.errors import GlitchesError, InvalidArgument, error_metadata, retry_after_metadata
from glitches.services.runtime.handlers import replace_behaviour

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, error: Exception, method: str):
    if context.code() is not None:  # the handler already aborted with its own status
        raise error
    if isinstance(error, GlitchesError):
        log.info("%s -> %s: %s", method, error.code, error.message)
        trailing = retry_after_metadata(error.retry_after_s) + error_metadata(error)
        if trailing:
            context.set_trailing_metadata(trailing)
        context.abort(error.status_code, error.message)
    if not context.is_active():  # the caller cancelled or went away (e.g. a TransferKV sender that gave up)
        log.info("%s: the caller cancelled (%s)", method, type(error).__name__)
        context.abort(grpc.StatusCode.CANCELLED, f"{method}: cancelled by the caller")
    log.exception("%s failed unexpectedly", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}: {error}")


class _Malformed:
    """Stands in for a request message that failed to parse; the handler refuses it."""

    def __init__(self, error: Exception):
        self.error = error

    def refuse(self, method: str) -> InvalidArgument:
        return InvalidArgument(f"{method}: the request is not a valid protobuf message of this method "
                               f"({type(self.error).__name__}: {self.error}); string fields must be UTF-8")


def _tolerant(deserializer):
    def parse(data: bytes):
        try:
            return deserializer(data) if deserializer else data
        except Exception as error:  # noqa: BLE001 - refused by the handler with INVALID_ARGUMENT
            return _Malformed(error)
    return parse


def _checked(request_or_iterator, method):
    """The request, or for client-streaming calls an iterator that raises at a malformed message."""
    if isinstance(request_or_iterator, _Malformed):
        raise request_or_iterator.refuse(method)
    if hasattr(request_or_iterator, "DESCRIPTOR") or not hasattr(request_or_iterator, "__next__"):
        return request_or_iterator

    def messages():
        for message in request_or_iterator:
            if isinstance(message, _Malformed):
                raise message.refuse(method)
            yield message
    return messages()


def _wrap_unary_response(behavior, method):
    def handler(request_or_iterator, context):
        try:
            return behavior(_checked(request_or_iterator, method), context)
        except Exception as error:  # noqa: BLE001 - mapped to a status, never swallowed
            _abort(context, error, method)
    return handler


def _wrap_stream_response(behavior, method):
    def handler(request_or_iterator, context):
        try:
            yield from behavior(_checked(request_or_iterator, method), context)
        except GeneratorExit:
            raise
        except Exception as error:  # noqa: BLE001
            _abort(context, error, method)
    return handler


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method

        def wrap(behaviour, kind):
            streams_out = kind.endswith("_stream")
            return (_wrap_stream_response if streams_out else _wrap_unary_response)(behaviour, method)

        return replace_behaviour(handler, wrap, _tolerant(handler.request_deserializer))
