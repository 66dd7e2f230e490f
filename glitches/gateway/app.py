"""The gateway's ASGI app (starlette): OpenAI's routes over the SDK's AsyncClient.

Streaming answers are server-sent events: one `data: {chunk}` per text delta, a last chunk with
`finish_reason`, a usage chunk when `stream_options.include_usage`, then `data: [DONE]`. An error
before the first token is a plain HTTP error; one after it (the status is already 200) is sent as a
`data: {"error": ...}` event, which OpenAI's clients raise as an APIError.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from glitches.aio import AsyncClient
from glitches.errors import GlitchesError
from glitches.gateway.auth import ApiKeyMiddleware
from glitches.gateway.chat import ChatTemplate
from glitches.gateway.choices import ChoiceRender, ChoiceSpec, chat_specs, completion_specs
from glitches.gateway.logprob_shapes import TokenStrings
from glitches.gateway.rate_limit import ClientRateLimitMiddleware, check_user
from glitches.gateway.errors import (RequestError, error_body, from_request_error, from_sdk_error,
                                     http_status_of)
from glitches.gateway.metrics import GatewayMetrics, RequestCountMiddleware, TokenClock
from glitches.gateway.responses import Shapes, finish_reason, sse, usage_of
from glitches.gateway.schemas import ChatRequest, CompletionRequest, Limits
from glitches.gateway.request_body import DEFAULT_MAX_BODY_BYTES, _disconnected, _parse, _read_body
from glitches.gateway.responses_route import handle_responses
from glitches.gateway.tool_stream import streamed_call_events, tool_choice_body, tool_events
from glitches.gateway.tools import ToolPlan, plan_tools
from glitches.types import Completion
from glitches.services.auth.api_keys import bearer_key
from glitches.services.auth.tls import TlsConfig
from glitches.services.auth.rate_limit import KeyRateLimiter

class Gateway:
    def __init__(self, scheduler_address: str, chat_template: ChatTemplate | None, served_model: str = "",
                 default_max_tokens: int = 256, completions_default_max_tokens: int = 16,
                 timeout_s: float | None = None, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 api_keys: tuple[str, ...] = (), scheduler_api_key: str | None = None, forward_api_key: bool = False,
                 scheduler_tls: TlsConfig | None = None, requests_per_minute_per_client: float = 0.0,
                 requests_per_minute_per_user: float = 0.0, clock=time.monotonic,
                 context_tokens: int | None = None, max_token_chars: int = 0, limits: Limits | None = None,
                 tokenizer=None):
        self.scheduler_address = scheduler_address
        self.chat_template = chat_template
        self.served_model = served_model
        self.default_max_tokens = default_max_tokens  # chat: OpenAI has no default, the context is the limit
        self.completions_default_max_tokens = completions_default_max_tokens  # OpenAI's default: 16
        self.timeout_s = timeout_s
        self.max_body_bytes = max_body_bytes
        self.api_keys = api_keys  # keys HTTP clients must send; empty: open
        self.scheduler_api_key = scheduler_api_key  # the key the gateway sends to the scheduler
        # send each client's own key instead (the scheduler checks it and salts that tenant's prefix cache);
        # needs api_keys, and the scheduler's keys to be the gateway's
        if forward_api_key and not api_keys:
            raise ValueError("forwarding the clients' API keys needs the gateway to require keys (--api-keys-file)")
        self.forward_api_key = forward_api_key
        self.scheduler_tls = scheduler_tls  # TLS/mTLS to the scheduler (None: GLITCHES_TLS_* or plaintext)
        # requests per minute per client (its key, or its address without keys) and per OpenAI `user`; None: no limit
        self.client_limiter = (KeyRateLimiter(requests_per_minute_per_client, clock)
                               if requests_per_minute_per_client else None)
        self.user_limiter = (KeyRateLimiter(requests_per_minute_per_user, clock)
                             if requests_per_minute_per_user else None)
        # the model's context (tokens) and its tokenizer's longest token (characters): a prompt over
        # context_tokens * max_token_chars characters, or a chat of more messages than context_tokens
        # (each renders to at least one token), cannot fit and is refused before rendering/tokenizing
        self.context_tokens = context_tokens
        self.max_token_chars = max_token_chars
        self.metrics = GatewayMetrics()
        self.limits = limits or Limits()
        # token texts for logprobs and echo of token-id prompts: the model's tokenizer (the chat template's)
        self.tokenizer = tokenizer if tokenizer is not None else getattr(chat_template, "_tokenizer", None)
        self._strings = TokenStrings(self.tokenizer) if self.tokenizer is not None else None
        self.client: AsyncClient | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        self.client = AsyncClient(self.scheduler_address, timeout_s=self.timeout_s,  # on the serving loop
                                  api_key=self.scheduler_api_key, tls=self.scheduler_tls)
        try:
            yield
        finally:
            await self.client.close()

    # --- routes ------------------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def models(self, request: Request) -> Response:
        try:
            status = await self.client.status()
        except GlitchesError as error:
            return from_sdk_error(error)
        entry = {"id": status.model, "object": "model", "created": 0, "owned_by": "glitches"}
        if "model" in request.path_params:
            if request.path_params["model"] != status.model:
                return from_request_error(RequestError(
                    f"model {request.path_params['model']!r} does not exist; this cluster serves {status.model!r}",
                    status=404, code="model_not_found"))
            return JSONResponse(entry)
        return JSONResponse({"object": "list", "data": [entry]})

    def _check_fits(self, characters: int, messages: int, param: str) -> None:
        """Refuse, without rendering or tokenizing it, a prompt that certainly exceeds the context."""
        if not self.context_tokens or not self.max_token_chars:
            return
        if messages > self.context_tokens or characters > self.context_tokens * self.max_token_chars:
            what = f"{messages} messages" if messages > self.context_tokens else f"{characters} characters"
            raise RequestError(f"{param}: {what} cannot fit the model's context of {self.context_tokens} tokens; "
                               "shorten it", param=param, code="context_length_exceeded")

    def _precheck_chat(self, data: dict) -> None:
        messages = data.get("messages")
        if isinstance(messages, list):
            contents = (m.get("content") if isinstance(m, dict) else None for m in messages)
            self._check_fits(sum(len(c) for c in contents if isinstance(c, str)), len(messages), "messages")

    def _precheck_completion(self, data: dict) -> None:
        if isinstance(data.get("prompt"), str):
            self._check_fits(len(data["prompt"]), 1, "prompt")

    def _parse_completion(self, raw: bytes) -> tuple[CompletionRequest, list[str | list[int]]]:
        """Runs in a worker thread: JSON parsing and validation of a large body take CPU time."""
        body = _parse(raw, CompletionRequest, self._precheck_completion)
        prompts = body.prompts(self.limits)
        body.response_format_value()  # a malformed response_format is a 400 here
        for prompt in prompts:
            if isinstance(prompt, str):
                self._check_fits(len(prompt), 1, "prompt")
        self._need_tokenizer(body.logprobs is not None or (bool(body.echo) and not all(isinstance(p, str)
                                                                                       for p in prompts)))
        return body, prompts

    def _parse_chat(self, raw: bytes) -> tuple[ChatRequest, str, ToolPlan]:
        """Runs in a worker thread: validation and the chat template (jinja) are CPU work."""
        body = _parse(raw, ChatRequest, self._precheck_chat)
        body.check(self.limits)
        body.response_format_value()
        plan = plan_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
        if plan.active and body.response_format is not None and body.response_format.type != "text":
            raise RequestError("response_format: cannot be combined with tools (tool calls are constrained "
                               "JSON already); leave one out", param="response_format")
        self._need_tokenizer(bool(body.logprobs))
        if self.chat_template is None:
            raise RequestError("this gateway has no chat template; use /v1/completions", status=404)
        messages = [m.as_template_message() for m in body.messages]
        self._check_fits(sum(len(m["content"]) for m in messages), len(messages), "messages")
        return body, self.chat_template.render_with_tools(messages, plan), plan

    async def completions(self, request: Request) -> Response:
        arrived = time.monotonic()
        try:
            raw = await _read_body(request, self.max_body_bytes)
            body, prompts = await asyncio.to_thread(self._parse_completion, raw)
        except RequestError as error:
            return from_request_error(error)
        if refused := check_user(self.user_limiter, request.scope, bool(self.api_keys), body.user):
            return refused
        max_tokens = self.completions_default_max_tokens if body.max_tokens is None else body.max_tokens
        kwargs = dict(body.sdk_kwargs(None, 1), max_tokens=max_tokens)
        specs = completion_specs(prompts, body.n or 1, kwargs, bool(body.echo), body.logprobs)
        params = {"prompt": "prompt", "max_new_tokens": "max_tokens"}
        return await self._answer(request, specs, Shapes(False, body.model or self.served_model), body,
                                  params, "/v1/completions", arrived)

    async def chat_completions(self, request: Request) -> Response:
        arrived = time.monotonic()
        try:
            raw = await _read_body(request, self.max_body_bytes)
            body, prompt, plan = await asyncio.to_thread(self._parse_chat, raw)
        except RequestError as error:
            return from_request_error(error)
        if refused := check_user(self.user_limiter, request.scope, bool(self.api_keys), body.user):
            return refused
        kwargs = body.sdk_kwargs(body.max_completion_tokens or body.max_tokens, self.default_max_tokens)
        if (schema := plan.schema()) is not None:  # "required" / a named function: constrained decoding
            kwargs["response_format"] = schema
        specs = chat_specs(prompt, body.n or 1, kwargs, bool(body.logprobs), body.top_logprobs or 0)
        params = {"prompt": "messages",
                  "max_new_tokens": "max_completion_tokens" if body.max_completion_tokens else "max_tokens"}
        return await self._answer(request, specs, Shapes(True, body.model or self.served_model), body,
                                  params, "/v1/chat/completions", arrived, plan if plan.active else None)

    async def responses(self, request: Request) -> Response:
        return await handle_responses(self, request)

    def open_stream(self, request: Request, prompt, **kwargs):
        """The scheduler stream of one choice of `request`; with forward_api_key it carries the client's own
        key (the middleware has checked it), else the gateway's scheduler_api_key."""
        if self.forward_api_key:
            kwargs["api_key"] = bearer_key(request.headers.get("authorization"))
        return self.client.stream(prompt, chat=False, **kwargs)

    def _need_tokenizer(self, needed: bool) -> None:
        if needed and self._strings is None:
            raise RequestError("this gateway has no tokenizer (--model) to show tokens; leave logprobs out",
                               param="logprobs")

    def _decode_prompt(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids)

    # --- one request: one scheduler stream per choice ---------------------------------
    async def _answer(self, request: Request, specs: list[ChoiceSpec], shapes: Shapes, body,
                      params: dict[str, str], route: str, arrived: float, plan: ToolPlan | None = None) -> Response:
        """Run every choice; until the response starts, a client that disconnects cancels them all on the
        scheduler (closing a stream cancels its gRPC call, and the scheduler releases the request's claims).
        With tools (`plan`), every choice is generated whole first (its text decides whether it is a tool
        call), then sent: as one body, or streamed as OpenAI's chunks (glitches.gateway.tool_stream)."""
        in_flight = self.limits.max_choices_in_flight
        # streamed as generated: text, or the calls of a "required" / named request of one choice
        incremental_calls = bool(body.stream) and plan is not None and plan.mode in ("required", "named") \
            and len(specs) == 1
        streaming = bool(body.stream) and (plan is None or incremental_calls)
        if body.stream and len(specs) > in_flight:
            return from_request_error(RequestError(
                f"a streamed response runs every choice at once, and this gateway runs at most {in_flight} of one "
                f"request at once (--max-choices-in-flight); this one asks for {len(specs)} (prompts x n): ask for "
                "fewer or leave stream out", param="n"))
        streams = [self.open_stream(request, spec.prompt, **spec.kwargs) for spec in specs]
        renders = [ChoiceRender(spec, shapes.chat, self._strings, self._decode_prompt) for spec in specs]
        clocks = [TokenClock(self.metrics, route, arrived) for _ in specs]
        gate = asyncio.Semaphore(in_flight)  # a choice's scheduler request starts inside it (the stream is lazy)
        work = asyncio.ensure_future(_all(_gated(gate, stream, streaming, clock)
                                          for stream, clock in zip(streams, clocks)))
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():  # the client went away (or this handler was cancelled): cancel the requests
                work.cancel()
                with contextlib.suppress(BaseException):
                    await work
                await _close(streams)
        if not work.done() or work.cancelled():
            return Response(status_code=499)  # nobody reads it; counted in /metrics as 499
        try:
            items = work.result()
        except GlitchesError as error:  # errors before any token keep their HTTP status
            await _close(streams)
            return from_sdk_error(error, params)
        except StopAsyncIteration:
            await _close(streams)
            return JSONResponse(error_body("the scheduler ended the stream without an answer", "server_error"),
                                status_code=502)
        except BaseException:  # anything else is a 500 (the app's handler); the gRPC calls go first
            await _close(streams)
            raise
        if incremental_calls:
            return StreamingResponse(streamed_call_events(shapes, items[0], streams[0], body.include_usage(),
                                                          clocks[0], finish_reason,
                                                          lambda final: _usage(renders, [final])),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        if streaming:
            return StreamingResponse(self._events(items, streams, renders, shapes, body.include_usage(), clocks),
                                     media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        await _close(streams)
        if plan is not None:
            choices = [tool_choice_body(r.spec.index, *r.whole(final), finish_reason(final), plan)
                       for r, final in zip(renders, items)]
            if body.stream:
                return StreamingResponse(tool_events(shapes, choices, _usage(renders, items), body.include_usage()),
                                         media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
            return JSONResponse(shapes.full_choices(choices, _usage(renders, items)))
        choices = [shapes.choice(r.spec.index, *r.whole(final), finish_reason(final))
                   for r, final in zip(renders, items)]
        return JSONResponse(shapes.full_choices(choices, _usage(renders, items)))

    async def _events(self, firsts: list, streams: list, renders: list[ChoiceRender], shapes: Shapes,
                      include_usage: bool, clocks: list[TokenClock]):
        extra = {"usage": None} if include_usage else {}
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int) -> None:  # one choice's items, in order, onto the shared queue
            try:
                item = firsts[i]
                while True:
                    await queue.put((i, item))
                    if isinstance(item, Completion):
                        return
                    item = await anext(streams[i])
                    if not isinstance(item, Completion):
                        clocks[i].token()
            except (GlitchesError, StopAsyncIteration) as error:
                await queue.put((i, error))

        pumps = [asyncio.create_task(pump(i)) for i in range(len(streams))]
        finals: list = [None] * len(streams)
        try:
            if shapes.chat:
                for r in renders:
                    yield sse({**shapes.chunk("", role=True, index=r.spec.index), **extra})
            while any(f is None for f in finals):
                i, item = await queue.get()
                index = renders[i].spec.index
                if isinstance(item, GlitchesError):
                    yield sse(error_body(item.message, http_status_of(item)[1], code=item.code.lower()))
                    break
                if isinstance(item, StopAsyncIteration):
                    yield sse(error_body("the scheduler ended the stream without a final message", "server_error"))
                    break
                if isinstance(item, Completion):
                    finals[i] = item
                    yield sse({**shapes.chunk(None, finish=finish_reason(item), index=index), **extra})
                    continue
                for text, logprobs in renders[i].stream_pieces(item):
                    yield sse({**shapes.chunk(text, index=index, logprobs=logprobs), **extra})
            else:
                if include_usage:
                    yield sse(shapes.usage_body_chunk(_usage(renders, finals)))
        finally:
            await _cancel(pumps)
            await _close(streams)  # cancels the gRPC calls when the HTTP client went away
        yield sse("[DONE]")


async def _first_or_final(stream: AsyncIterator, streaming: bool, clock: TokenClock):
    """The first item (streaming) or the Completion (not streaming); StopAsyncIteration if none came."""
    item = await anext(stream)
    clock.token()
    while not streaming and not isinstance(item, Completion):
        item = await anext(stream)
        if not isinstance(item, Completion):
            clock.token()
    return item


async def _gated(gate: asyncio.Semaphore, stream: AsyncIterator, streaming: bool, clock: TokenClock):
    """_first_or_final inside `gate`; not streaming, the stream is closed before the gate opens for the next."""
    async with gate:
        item = await _first_or_final(stream, streaming, clock)
        if not streaming:
            await stream.aclose()
        return item


async def _all(awaitables) -> list:
    """Await all concurrently; on the first error cancel the rest (and wait for them), then raise it."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        await _cancel(tasks)


async def _cancel(tasks) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _close(streams) -> None:
    for stream in streams:
        await stream.aclose()


def _usage(renders: list[ChoiceRender], finals: list[Completion]) -> dict:
    """Prompt tokens once per prompt (not per choice, as OpenAI counts n), completion tokens of every choice."""
    prompt_tokens = {r.spec.prompt_index: f.prompt_tokens for r, f in zip(renders, finals)}
    cached = {r.spec.prompt_index: f.cached_tokens for r, f in zip(renders, finals)}  # once per prompt
    return usage_of(sum(prompt_tokens.values()), sum(r.completion_tokens(f) for r, f in zip(renders, finals)),
                    sum(cached.values()))


async def _http_error(request: Request, error: HTTPException) -> Response:
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return JSONResponse(error_body(f"{request.method} {request.url.path}: {error.detail}", kind),
                        status_code=error.status_code)


async def _server_error(request: Request, error: Exception) -> Response:
    return JSONResponse(error_body(f"internal error: {type(error).__name__}: {error}", "server_error"),
                        status_code=500)


def create_app(gateway: Gateway) -> Starlette:
    routes = [
        Route("/healthz", gateway.healthz),
        Route("/health", gateway.healthz),  # the name load generators probe
        Route("/metrics", gateway.metrics.endpoint),
        Route("/v1/models", gateway.models),
        Route("/v1/models/{model:path}", gateway.models),
        Route("/v1/completions", gateway.completions, methods=["POST"]),
        Route("/v1/chat/completions", gateway.chat_completions, methods=["POST"]),
        Route("/v1/responses", gateway.responses, methods=["POST"]),
    ]
    middleware = [Middleware(RequestCountMiddleware, metrics=gateway.metrics)]
    if gateway.api_keys:
        middleware.append(Middleware(ApiKeyMiddleware, keys=gateway.api_keys))
    if gateway.client_limiter is not None:  # after the key check: only valid keys get a bucket
        middleware.append(Middleware(ClientRateLimitMiddleware, limiter=gateway.client_limiter,
                                     keyed=bool(gateway.api_keys)))
    return Starlette(routes=routes, lifespan=gateway.lifespan, middleware=middleware,
                     exception_handlers={HTTPException: _http_error, Exception: _server_error})
