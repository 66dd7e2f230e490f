"""One server interceptor that turns domain errors into gRPC statuses.

Servicers raise `services.errors.GlitchesError` subclasses; this sets the code and
message for every kind of RPC (unary or streaming, either side). Anything else
escaping a handler is logged with its traceback and becomes INTERNAL.
"""

from __future__ import annotations

import logging

import grpc

from services.errors import GlitchesError

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, error: Exception, method: str):
    if context.code() is not None:  # the handler already aborted with its own status
        raise error
    if isinstance(error, GlitchesError):
        log.info("%s -> %s: %s", method, error.code.name, error)
        context.abort(error.code, str(error))
    log.exception("%s failed unexpectedly", method)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(error).__name__}: {error}")


def _wrap_unary_response(behavior, method):
    def handler(request_or_iterator, context):
        try:
            return behavior(request_or_iterator, context)
        except Exception as error:  # noqa: BLE001 - mapped to a status, never swallowed
            _abort(context, error, method)
    return handler


def _wrap_stream_response(behavior, method):
    def handler(request_or_iterator, context):
        try:
            yield from behavior(request_or_iterator, context)
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
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(handler.unary_unary, method),
                handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(handler.stream_unary, method),
                handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream_response(handler.unary_stream, method),
                handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(
            _wrap_stream_response(handler.stream_stream, method),
            handler.request_deserializer, handler.response_serializer)
