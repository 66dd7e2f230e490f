"""Chat messages -> prompt text, with the model's own chat template (transformers' tokenizer).

The scheduler applies the template itself only to one user message (GenerateRequest.chat), so the
gateway renders whole conversations here and sends the text with chat=false. The scheduler then
tokenizes that text; the template's special tokens (e.g. `<|im_start|>`) are matched as such.
"""

from __future__ import annotations

from glitches.gateway.errors import RequestError


class ChatTemplate:
    def __init__(self, tokenizer):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("the model's tokenizer has no chat template; /v1/chat/completions needs one")
        self._tokenizer = tokenizer

    def render(self, messages: list[dict]) -> str:
        """The conversation as the model expects it, ending with the assistant's turn opened."""
        try:
            return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as error:  # jinja raises its own errors for conversations a template refuses
            raise RequestError(f"the model's chat template refused these messages: {error}",
                               param="messages") from None


    def render_with_tools(self, messages: list[dict], plan) -> str:
        """The conversation with the request's tools (glitches.gateway.tools.ToolPlan): through the
        template's own tool format when it has one, else the documented fallback (tools in the system
        message, calls as <tool_call> blocks, results as <tool_response> user messages)."""
        from glitches.gateway.tools import fallback_messages, native_messages, template_has_tools

        has_tool_messages = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
        if not plan.active and not has_tool_messages:
            return self.render(messages)
        if not template_has_tools(self._tokenizer):
            return self.render(fallback_messages(messages, plan))
        try:
            return self._tokenizer.apply_chat_template(native_messages(messages),
                                                       tools=plan.openai_tools() if plan.active else None,
                                                       tokenize=False, add_generation_prompt=True)
        except Exception as error:
            raise RequestError(f"the model's chat template refused these messages or tools: {error}",
                               param="messages") from None


def load_chat_template(model: str) -> ChatTemplate:
    """The chat template of `model` (a name, a transformers directory or a .gguf file)."""
    from glitches.services.generation import models

    return ChatTemplate(models.load_tokenizer(models.resolve_model(model)))


def model_limits(model: str) -> tuple[int, int]:
    """(the model's context in tokens, the most characters one token of its tokenizer decodes to, at most)."""
    from transformers import AutoConfig

    from glitches.services.generation import models

    source = models.resolve_model(model)
    tokenizer = models.load_tokenizer(source)
    # a vocabulary entry's string has one character per byte (byte-level BPE) or more: an upper bound
    longest = max((len(piece) for piece in tokenizer.get_vocab()), default=1)
    return AutoConfig.from_pretrained(source.path).max_position_embeddings, longest
