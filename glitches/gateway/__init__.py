"""An OpenAI-compatible HTTP gateway in front of the scheduler (`glitches gateway`).

`/v1/models`, `/v1/completions`, `/v1/chat/completions` (with tool calling), `/v1/responses`
(server-sent events with `stream: true`),
served by starlette + uvicorn over the SDK's AsyncClient. Chat templates are rendered here, with
the model's own tokenizer, and the rendered text goes to the scheduler with `chat=false`.
"""
