"""Rebuilding a gRPC method handler around a new behaviour, whatever its kind (the interceptors' one tool)."""

from __future__ import annotations

from collections.abc import Callable

import grpc

_BUILDERS = {"unary_unary": grpc.unary_unary_rpc_method_handler,
             "unary_stream": grpc.unary_stream_rpc_method_handler,
             "stream_unary": grpc.stream_unary_rpc_method_handler,
             "stream_stream": grpc.stream_stream_rpc_method_handler}


def replace_behaviour(handler: grpc.RpcMethodHandler, wrap: Callable[[Callable, str], Callable],
                      request_deserializer: Callable | None = None) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behaviour is wrap(old behaviour, kind), e.g. kind "unary_stream";
    request_deserializer replaces the handler's own when given."""
    for kind, build in _BUILDERS.items():
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            return build(wrap(behaviour, kind), request_deserializer or handler.request_deserializer,
                         handler.response_serializer)
    raise ValueError("a method handler of no known kind")
