"""Structured output (glitches/services/generation/grammar.py): llguidance masks with SmolLM2's real tokenizer, in the decode
loop, greedy and sampled, and rebuilt mid-request from the tokens so far (what a migration does)."""

from __future__ import annotations

import json

import jsonschema
import pytest
import torch

from glitches.services.generation import grammar, models
from glitches.services.generation.decoding import Finish, decode_loop
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.generation.sampling import Sampling

# every field bounded, so even random logits reach the end of the object
SCHEMA = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]}, "ok": {"type": "boolean"},
                                           "size": {"type": "integer", "minimum": 0, "maximum": 99}},
          "required": ["color", "ok", "size"], "additionalProperties": False}


@pytest.fixture(scope="module")
def tokenizer(default_source):
    return models.load_tokenizer(default_source)


def _random_step(seed: int):
    generator = torch.Generator().manual_seed(seed)
    return lambda token, position: torch.randn(49152, generator=generator)


def _run(tokenizer, sampling: Sampling, seed: int = 0, generated=None):
    """Decode from random logits with the constraint; (text, finish)."""
    first = grammar.constraint_for(sampling, tokenizer)
    logits = first.mask(torch.randn(49152, generator=torch.Generator().manual_seed(seed + 1000)))
    start = generated or [int(torch.argmax(logits))]
    constraint = grammar.constraint_for(sampling, tokenizer, start)
    text_of = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    steps = list(decode_loop(_random_step(seed), start, 10, sampling, text_of, constraint=constraint))
    return text_of(start + [s.token_id for s in steps]), steps[-1].finish


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_json_schema_answers_validate_greedy_and_sampled(tokenizer, temperature):
    sampling = Sampling(temperature=temperature, seed=5, max_new_tokens=200, response_format="json_schema",
                        json_schema=json.dumps(SCHEMA))
    for seed in range(3):
        text, finish = _run(tokenizer, sampling, seed)
        jsonschema.validate(json.loads(text), SCHEMA)
        assert finish is Finish.STOP  # the grammar completed before max_new_tokens


def test_json_object_mask_allows_only_an_opening_brace_first(tokenizer):
    constraint = grammar.constraint_for(Sampling(response_format="json_object"), tokenizer)
    allowed = torch.isfinite(constraint.mask(torch.zeros(49152))).nonzero().flatten().tolist()
    assert allowed and all(tokenizer.decode([t]).lstrip().startswith("{") for t in allowed)


def test_rebuilt_constraint_continues_where_the_tokens_left_off(tokenizer):
    """A worker that gets the tokens so far (migration, or the decode worker after prefill) masks the same."""
    sampling = Sampling(response_format="json_schema", json_schema=json.dumps(SCHEMA))
    prefix = tokenizer('{"color": "gr', add_special_tokens=False)["input_ids"]
    live = grammar.constraint_for(sampling, tokenizer)
    for token in prefix:
        live.mask(torch.zeros(49152))
        live.advance(token)
    rebuilt = grammar.constraint_for(sampling, tokenizer, prefix)
    logits = torch.randn(49152)
    assert torch.equal(live.mask(logits), rebuilt.mask(logits))
    assert tokenizer.decode([int(torch.argmax(rebuilt.mask(logits)))]).startswith("een")


def test_no_format_means_no_constraint(tokenizer):
    assert grammar.constraint_for(Sampling(), tokenizer) is None


@pytest.mark.parametrize("kind, schema", [
    ("json_schema", "not json"),
    ("json_schema", "[1, 2]"),
    ("json_schema", json.dumps({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}})),
    ("json_schema", json.dumps({"type": "no-such-type"})),
    ("", json.dumps({"type": "object"})),
    ("xml", ""),
])
def test_bad_formats_are_invalid_argument_naming_response_format(kind, schema):
    with pytest.raises(InvalidArgument) as caught:
        grammar.check_format(Sampling(response_format=kind, json_schema=schema))
    assert caught.value.field == "response_format"


def test_tokens_off_the_grammar_are_refused(tokenizer):
    sampling = Sampling(response_format="json_object")
    with pytest.raises(InvalidArgument, match="does not follow"):
        grammar.constraint_for(sampling, tokenizer, tokenizer("hello", add_special_tokens=False)["input_ids"])


def test_sdk_encodes_response_format():
    from glitches import convert
    from glitches.services.stubs.glitches.v1 import common_pb2

    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    encoded = convert.sampling_params(4, 0.0, 1.0, 0, (), response_format=schema)
    assert encoded.response_format == common_pb2.RESPONSE_FORMAT_KIND_JSON_SCHEMA
    decoded = Sampling.from_proto(encoded)
    assert (decoded.response_format, json.loads(decoded.json_schema)) == ("json_schema", schema)
    assert Sampling.from_proto(convert.sampling_params(4, 0.0, 1.0, 0, (), response_format="json_object")).response_format == \
        "json_object"
    assert Sampling.from_proto(convert.sampling_params(4, 0.0, 1.0, 0, (), response_format="text")).response_format == ""
    assert decoded.to_proto(common_pb2.SamplingParams) == encoded
    with pytest.raises(ValueError):
        convert.sampling_params(4, 0.0, 1.0, 0, (), response_format="yaml")


def test_a_number_at_the_root_is_not_cut_at_its_first_digit(tokenizer):
    constraint = grammar.constraint_for(Sampling(response_format="json_schema", json_schema='{"type": "integer"}'),
                                        tokenizer, tokenizer("12", add_special_tokens=False)["input_ids"])
    assert not constraint.done  # "12" could go on to "123"
    allowed = torch.isfinite(constraint.mask(torch.zeros(49152)))
    assert allowed[tokenizer.eos_token_id] and allowed.sum() > 1  # EOS or more digits
    constraint.advance(tokenizer.eos_token_id)
    assert constraint.done
