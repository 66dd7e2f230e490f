"""Structured output: a grammar that masks the logits so only tokens that keep the answer valid JSON
(any object, or one that validates against a JSON Schema) can be sampled.

The grammar engine is llguidance (Rust, abi3 wheel, no dependencies): `Sampling.response_format`
and `Sampling.json_schema` compile to an llguidance grammar; a `Constraint` wraps one matcher.

Protocol, identical on every worker so a request can move between them:
- the worker that samples a token builds `constraint_for(sampling, tokenizer, generated)`: the
  matcher is rebuilt from the schema and advanced over the tokens generated so far (prefill's
  first token onwards, plus any produced before a migration); nothing of the grammar's state
  travels but the schema and the token ids;
- each step: `logits = constraint.mask(logits)` before `sample_token`, then `constraint.advance(token)`;
- the request finishes with `Finish.STOP` once `constraint.done` (the JSON value is complete),
  else at max_new_tokens as usual.

Without a response format no constraint exists, and logits are untouched (greedy output stays
identical to transformers').
"""

from __future__ import annotations

import json
import threading

import numpy as np
import torch

from glitches.services.runtime.errors import REASON_INVALID_RESPONSE_FORMAT, InvalidArgument
from glitches.services.generation.sampling import Sampling

# Compact JSON with one space after "," and ":" and no other whitespace: llguidance's default
# (any run of whitespace anywhere) lets a small model emit newlines forever inside an object.
_JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_ANY_OBJECT = {"type": "object"}  # OpenAI's json_object: some JSON object

_tokenizers: dict[int, object] = {}  # id(transformers tokenizer) -> llguidance.LLTokenizer (~0.5 s to build)
_tokenizers_lock = threading.Lock()


def _invalid(message: str) -> InvalidArgument:
    return InvalidArgument(message, field="response_format", reason=REASON_INVALID_RESPONSE_FORMAT)


def grammar_text(sampling: Sampling) -> str | None:
    """The llguidance grammar of a request's response format; None for free text.

    Raises InvalidArgument (field response_format) for a schema that is not a JSON object or
    that the compiler refuses; needs no tokenizer, so the scheduler checks requests with it.
    """
    import llguidance

    if sampling.response_format == "":
        if sampling.json_schema:
            raise _invalid("json_schema is set but response_format is not json_schema")
        return None
    if sampling.response_format == "json_object":
        schema = _ANY_OBJECT
    elif sampling.response_format == "json_schema":
        try:
            schema = json.loads(sampling.json_schema)
        except ValueError as error:
            raise _invalid(f"response_format json_schema: the schema is not valid JSON ({error})") from None
        if not isinstance(schema, dict):
            raise _invalid(f"response_format json_schema: the schema must be a JSON object, "
                           f"got {type(schema).__name__}")
    else:
        raise _invalid(f"unknown response_format {sampling.response_format!r}; use json_object or json_schema")
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(schema), overrides=_JSON_OPTIONS)
    except ValueError as error:
        raise _invalid(f"response_format json_schema: {error}") from None
    problem = llguidance.LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise _invalid(f"response_format json_schema is not a schema GLITCHES can enforce: {problem}")
    return grammar


def check_format(sampling: Sampling) -> None:
    """Refuse (INVALID_ARGUMENT, field response_format) a response format that cannot be compiled."""
    grammar_text(sampling)


def _ll_tokenizer(tokenizer):
    """The llguidance view of a transformers fast tokenizer, built once per tokenizer object."""
    import llguidance.hf

    key = id(tokenizer)
    with _tokenizers_lock:
        cached = _tokenizers.get(key)
        if cached is None:
            cached = _tokenizers[key] = (tokenizer, llguidance.hf.from_tokenizer(tokenizer))
    return cached[1]  # the tuple keeps the tokenizer alive so its id is never reused


class Constraint:
    """One request's grammar state on the worker that samples its tokens."""

    def __init__(self, matcher, vocab_size: int):
        self._matcher = matcher
        self._vocab = vocab_size  # tokens the grammar knows; logits beyond it are always masked

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [vocab] with every token the grammar forbids at -inf (a new tensor)."""
        bits = np.frombuffer(self._matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.zeros(logits.shape[0], dtype=bool)
        known = min(self._vocab, logits.shape[0])
        allowed[:known] = np.unpackbits(bits, bitorder="little")[:known].astype(bool)
        if not allowed.any():  # the matcher is stuck (error state): nothing can continue the answer
            raise InvalidArgument(f"the response_format grammar allows no next token "
                                  f"({self._matcher.get_error() or 'no continuation'})", field="response_format")
        return logits.masked_fill(torch.from_numpy(~allowed).to(logits.device), float("-inf"))

    def advance(self, token_id: int) -> None:
        """Feed the sampled token to the grammar."""
        if not self._matcher.consume_token(token_id):
            raise InvalidArgument(f"token {token_id} does not follow the response_format grammar "
                                  f"({self._matcher.get_error()})", field="response_format")

    @property
    def done(self) -> bool:
        """The JSON value is complete and nothing but EOS could follow (an object's closing brace). A value
        that is complete but could go on (a number at the root: "12" may become "123") is not done: the
        mask then also allows EOS, and the request ends with EOS when the model picks it."""
        return self._matcher.is_stopped()


def constraint_for(sampling: Sampling, tokenizer, generated: list[int] = ()) -> Constraint | None:
    """The constraint of `sampling` (None for free text), advanced over the tokens `generated` so far.

    Raises InvalidArgument when the format does not compile or `generated` does not follow it.
    """
    grammar = grammar_text(sampling)
    if grammar is None:
        return None
    import llguidance

    ll_tokenizer = _ll_tokenizer(tokenizer)
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
    if matcher.is_error():
        raise _invalid(f"response_format: {matcher.get_error()}")
    constraint = Constraint(matcher, ll_tokenizer.vocab_size)
    for token in generated:
        constraint.advance(token)
    return constraint
