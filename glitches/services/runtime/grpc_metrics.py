"""A server interceptor that counts every gRPC call by method and final status code,
and keeps the number of calls in flight (services.metrics)."""

from __future__ import annotations

import grpc

from glitches.services.runtime import metrics


def _code_name(context: grpc.ServicerContext, default: grpc.StatusCode) -> str:
    code = context.code()
    return (code or default).name


class _Recorder:
    def __init__(self, role: str, method: str):
        self.requests = metrics.GRPC_REQUESTS.of(role)
        self.in_flight = metrics.IN_FLIGHT.of(role).labels(method=method)
        self.method = method

    def unary(self, behavior):
        def handler(request_or_iterator, context):
            self.in_flight.inc()
            code = grpc.StatusCode.UNKNOWN  # an exception the error interceptor did not map
            try:
                response = behavior(request_or_iterator, context)
                code = grpc.StatusCode.OK
                return response
            finally:
                self.requests.labels(self.method, _code_name(context, code)).inc()
                self.in_flight.dec()
        return handler

    def stream(self, behavior):
        def handler(request_or_iterator, context):
            self.in_flight.inc()
            code = grpc.StatusCode.UNKNOWN
            try:
                yield from behavior(request_or_iterator, context)
                code = grpc.StatusCode.OK
            except GeneratorExit:
                code = grpc.StatusCode.CANCELLED  # the client went away mid-stream
                raise
            finally:
                self.requests.labels(self.method, _code_name(context, code)).inc()
                self.in_flight.dec()
        return handler


class MetricsInterceptor(grpc.ServerInterceptor):
    """Put it first (outermost) so it sees the status the error-mapping interceptor set."""

    def __init__(self, role: str):
        self.role = role

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        recorder = _Recorder(self.role, handler_call_details.method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(recorder.unary(handler.unary_unary),
                                                       handler.request_deserializer, handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(recorder.unary(handler.stream_unary),
                                                        handler.request_deserializer, handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(recorder.stream(handler.unary_stream),
                                                        handler.request_deserializer, handler.response_serializer)
        return grpc.stream_stream_rpc_method_handler(recorder.stream(handler.stream_stream),
                                                     handler.request_deserializer, handler.response_serializer)
