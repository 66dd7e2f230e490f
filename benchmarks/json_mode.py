"""JSON mode through a live gateway with the official `openai` client: N prompts with response_format
json_object and N with json_schema, greedy and sampled; every answer must parse (and validate).

    glitches up --gpu-workers 1 --fpga-workers 2 --port 0 --gateway-port 8000 &
    python -m benchmarks.json_mode --base-url http://127.0.0.1:8000/v1 --prompts 20

Prints one line per answer and a summary (answers parsed / validated, finish reasons, seconds).
"""

from __future__ import annotations

import argparse
import json
import time

import jsonschema
import openai

THINGS = ["an apple", "a cat", "a car", "a book", "a river", "a dog", "a house", "a phone", "a tree", "a song",
          "a city", "a chair", "a star", "a shoe", "a lamp", "a bird", "a cake", "a boat", "a clock", "a flower"]
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 30},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120},
                                           "city": {"type": "string", "maxLength": 30}},
          "required": ["name", "age", "city"], "additionalProperties": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--prompts", type=int, default=20, help="prompts per mode (json_object, json_schema)")
    parser.add_argument("--max-tokens", type=int, default=160)
    args = parser.parse_args()
    oai = openai.OpenAI(base_url=args.base_url, api_key="unused", max_retries=0, timeout=600)
    results = {"json_object": [], "json_schema": []}
    started = time.monotonic()
    for i in range(args.prompts):
        thing = THINGS[i % len(THINGS)]
        temperature = 0.0 if i % 2 == 0 else 0.8  # greedy and sampled, alternately
        reply = oai.chat.completions.create(
            model=args.model, max_tokens=args.max_tokens, temperature=temperature, seed=i,
            response_format={"type": "json_object"},
            messages=[{"role": "user", "content": f"Give {thing} as a JSON object with exactly the keys \"name\" "
                                                  "and \"color\", nothing else."}])
        results["json_object"].append(_check(reply.choices[0], None, temperature))
        reply = oai.chat.completions.create(
            model=args.model, max_tokens=args.max_tokens, temperature=temperature, seed=i,
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON,
                                                                    "strict": True}},
            messages=[{"role": "user", "content": f"Invent a person who owns {thing}."}])
        results["json_schema"].append(_check(reply.choices[0], PERSON, temperature))
    elapsed = time.monotonic() - started
    for mode, rows in results.items():
        ok = sum(1 for r in rows if r)
        print(f"{mode}: {ok}/{len(rows)} answers parse{' and validate' if mode == 'json_schema' else ''}")
    print(f"{2 * args.prompts} requests in {elapsed:.1f} s")


def _check(choice, schema, temperature) -> bool:
    text = choice.message.content
    try:
        value = json.loads(text)
        if schema is not None:
            jsonschema.validate(value, schema)
        good = isinstance(value, dict)
    except (ValueError, jsonschema.ValidationError) as error:
        good = False
        text += f"   <- {type(error).__name__}"
    print(f"T={temperature} finish={choice.finish_reason} ok={good} {text}")
    return good


if __name__ == "__main__":
    main()
