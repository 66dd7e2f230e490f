"""Reading and validating a request body (size and time limits, UTF-8 JSON, a pydantic model), and
waiting for the HTTP client to go away; shared by the gateway's routes."""

from __future__ import annotations

import asyncio
import json

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from glitches.gateway.errors import RequestError

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # larger bodies are 413: no prompt that big fits the context
DEFAULT_BODY_TIMEOUT_S = 30.0  # a body that takes longer to arrive is 408 (a slow-upload connection is freed)


async def _read_body(request: Request, limit_bytes: int, timeout_s: float = DEFAULT_BODY_TIMEOUT_S) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit_bytes:
        raise RequestError(f"the body is {declared} bytes; the limit is {limit_bytes}", status=413)
    body = bytearray()

    async def read():
        async for piece in request.stream():
            body.extend(piece)
            if len(body) > limit_bytes:
                raise RequestError(f"the body is over the limit of {limit_bytes} bytes", status=413)

    try:
        await asyncio.wait_for(read(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(f"the body did not arrive within {timeout_s:g} s", status=408) from None
    return bytes(body)


async def _disconnected(request: Request) -> None:
    """Returns once the HTTP client has gone away (call only after the body has been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _parse(body: bytes, model: type[BaseModel], precheck=None):
    """`body` validated as `model`; `precheck(data)` first sees the decoded JSON (a cheap size check
    that spares validating, say, 110k messages)."""
    try:
        data = json.loads(body)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # refuses lone surrogates ("\ud800")
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError/-EncodeError are ValueErrors
        raise RequestError(f"the body is not valid UTF-8 JSON: {str(error)[:200]}") from None
    if not isinstance(data, dict):
        raise RequestError(f"the body must be a JSON object, got {type(data).__name__}")
    if precheck is not None:
        precheck(data)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or None
        raise RequestError(f"{where}: {first['msg']}" if where else first["msg"], param=where) from None
