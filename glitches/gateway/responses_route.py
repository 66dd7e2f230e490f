"""The /v1/responses handler: one scheduler request per response (no `n`).

Streaming sends server-sent events `event: <type>` + `data: {...}` in OpenAI's order:
response.created, response.in_progress, then per output item response.output_item.added,
(text) response.content_part.added, response.output_text.delta..., response.output_text.done,
response.content_part.done / (call) response.function_call_arguments.delta,
response.function_call_arguments.done, then response.output_item.done, and last
response.completed (or response.incomplete when max_output_tokens cut it). Text without tools is
streamed as it is generated; with tools the whole output is generated first (whether it is a call
is known at its end) and then sent as the same events. An error after the stream started is an
`error` event. A client that goes away cancels the scheduler request (nothing stays held).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from glitches.errors import GlitchesError
from glitches.gateway.errors import RequestError, error_body, from_request_error, from_sdk_error
from glitches.gateway.metrics import TokenClock
from glitches.gateway.rate_limit import check_user
from glitches.gateway.request_body import _disconnected, _parse, _read_body
from glitches.gateway.responses_api import ResponseShape, ResponsesRequest, usage_body
from glitches.types import Completion

ROUTE = "/v1/responses"
PARAMS = {"prompt": "input", "max_new_tokens": "max_output_tokens", "response_format": "text.format"}


def _sse(event: dict) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n".encode()


def _parse_request(gateway, raw: bytes):
    """Runs in a worker thread: validation and the chat template are CPU work."""
    body = _parse(raw, ResponsesRequest)
    body.check()
    plan = body.plan()
    response_format = body.response_format()
    if gateway.chat_template is None:
        raise RequestError("this gateway has no chat template; use /v1/completions", status=404)
    messages = body.messages()
    gateway._check_fits(sum(len(m["content"] or "") for m in messages), len(messages), "input")
    prompt = gateway.chat_template.render_with_tools(messages, plan)
    kwargs = dict(max_tokens=body.max_output_tokens or gateway.default_max_tokens,
                  temperature=1.0 if body.temperature is None else body.temperature,
                  top_p=1.0 if body.top_p is None else body.top_p, seed=body.seed or 0, model=body.model)
    schema = plan.schema() if plan.active else None
    if schema is not None or response_format is not None:
        kwargs["response_format"] = schema if schema is not None else response_format
    return body, plan, prompt, kwargs


async def _whole(stream, clock: TokenClock) -> Completion:
    async for item in stream:
        clock.token()
        if isinstance(item, Completion):
            return item
    raise StopAsyncIteration


async def handle_responses(gateway, request: Request) -> Response:
    arrived = time.monotonic()
    try:
        raw = await _read_body(request, gateway.max_body_bytes)
        body, plan, prompt, kwargs = await asyncio.to_thread(_parse_request, gateway, raw)
    except RequestError as error:
        return from_request_error(error)
    if refused := check_user(gateway.user_limiter, request.scope, bool(gateway.api_keys), body.user):
        return refused
    shape = ResponseShape(body, plan, body.model or gateway.served_model)
    clock = TokenClock(gateway.metrics, ROUTE, arrived)
    stream = gateway.open_stream(request, prompt, **kwargs)
    whole = not body.stream or plan.active  # the first thing awaited: the Completion, or the first piece
    work = asyncio.ensure_future(_whole(stream, clock) if whole else anext(stream))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():  # the client went away: cancel the scheduler request
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
    if not work.done() or work.cancelled():
        await stream.aclose()
        return Response(status_code=499)
    try:
        first = work.result()
    except GlitchesError as error:
        await stream.aclose()
        return from_sdk_error(error, PARAMS)
    except StopAsyncIteration:
        await stream.aclose()
        return JSONResponse(error_body("the scheduler ended the stream without an answer", "server_error"),
                            status_code=502)
    if not whole:
        clock.token()
        return StreamingResponse(_text_events(shape, first, stream, clock), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    await stream.aclose()
    output = shape.output(first.text)
    status, incomplete = _status(first)
    final = shape.response(status, output, _usage(first), incomplete)
    if not body.stream:
        return JSONResponse(final)
    return StreamingResponse(_whole_events(shape, final), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


def _usage(completion: Completion) -> dict:
    return usage_body(completion.prompt_tokens, completion.completion_tokens, completion.cached_tokens)


def _status(completion: Completion) -> tuple[str, str | None]:
    if completion.finish_reason == "length":
        return "incomplete", "max_output_tokens"
    return "completed", None


def _opening(shape: ResponseShape):
    started = shape.response("in_progress", [])
    yield shape.event("response.created", response=started)
    yield shape.event("response.in_progress", response=started)


def _item_events(shape: ResponseShape, index: int, item: dict):
    """The events of one finished output item (a message's text in one delta)."""
    if item["type"] == "message":
        text = item["content"][0]["text"]
        yield shape.event("response.output_item.added", output_index=index,
                          item={**item, "status": "in_progress", "content": []})
        yield from _part_events(shape, index, item["id"], [text], text, item)
        return
    yield shape.event("response.output_item.added", output_index=index,
                      item={**item, "arguments": "", "status": "in_progress"})
    yield shape.event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                      delta=item["arguments"])
    yield shape.event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                      arguments=item["arguments"], name=item["name"])
    yield shape.event("response.output_item.done", output_index=index, item=item)


def _part_events(shape: ResponseShape, index: int, item_id: str, deltas, text: str, item: dict,
                 added: bool = False):
    """A text part's events after output_item.added; added: content_part.added was already sent."""
    empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    if not added:
        yield shape.event("response.content_part.added", item_id=item_id, output_index=index, content_index=0,
                          part=empty)
    for delta in deltas:
        if delta:
            yield shape.event("response.output_text.delta", item_id=item_id, output_index=index, content_index=0,
                              delta=delta, logprobs=[])
    yield shape.event("response.output_text.done", item_id=item_id, output_index=index, content_index=0,
                      text=text, logprobs=[])
    yield shape.event("response.content_part.done", item_id=item_id, output_index=index, content_index=0,
                      part={**empty, "text": text})
    yield shape.event("response.output_item.done", output_index=index, item=item)


def _closing(shape: ResponseShape, final: dict) -> dict:
    kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
    return shape.event(kind, response=final)


async def _whole_events(shape: ResponseShape, final: dict):
    for event in _opening(shape):
        yield _sse(event)
    for index, item in enumerate(final["output"]):
        for event in _item_events(shape, index, item):
            yield _sse(event)
    yield _sse(_closing(shape, final))


async def _text_events(shape: ResponseShape, first, stream, clock: TokenClock):
    """Text streamed as it is generated (no tools)."""
    try:
        for event in _opening(shape):
            yield _sse(event)
        item = shape.message_item("")
        yield _sse(shape.event("response.output_item.added", output_index=0,
                               item={**item, "status": "in_progress", "content": []}))
        yield _sse(shape.event("response.content_part.added", item_id=item["id"], output_index=0, content_index=0,
                               part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
        piece, text = first, ""
        while not isinstance(piece, Completion):
            if piece.text:
                text += piece.text
                yield _sse(shape.event("response.output_text.delta", item_id=item["id"], output_index=0,
                                       content_index=0, delta=piece.text, logprobs=[]))
            piece = await anext(stream)
            clock.token()
        text = piece.text  # the whole text, as the scheduler saw it
        done = {**item, "content": [{**item["content"][0], "text": text}]}
        for event in _part_events(shape, 0, item["id"], [], text, done, added=True):
            yield _sse(event)
        status, incomplete = _status(piece)
        yield _sse(_closing(shape, shape.response(status, [done], _usage(piece), incomplete)))
    except GlitchesError as error:
        yield _sse(shape.event("error", code=error.code.lower(), message=error.message, param=None))
    except StopAsyncIteration:
        yield _sse(shape.event("error", code="server_error", message="the scheduler ended the stream early",
                               param=None))
    finally:
        await stream.aclose()
