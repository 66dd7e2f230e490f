"""The requests a bench sends: fixed [input, output] lengths, or a JSONL file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from glitches.bench.records import BenchRequest

# Plain English words: their token ids decode and re-encode stably, unlike random vocabulary ids.
_WORDS = ("the of and to in is was for on that with as by at from his her an were are which this be "
          "or has had not but first one their its new after who they have two been other when there all "
          "during into school time may years more most only over city some world would where later up "
          "such used many can state about national out known university united then made").split()


def load_tokenizer_for(model_name: str):
    """The served model's tokenizer (the scheduler counts prompt tokens with the same one)."""
    from glitches.services.generation.models import load_tokenizer, resolve_model

    return load_tokenizer(resolve_model(model_name))


def exact_length_prompt(tokenizer, tokens: int, rng: np.random.Generator) -> str:
    """Text that the tokenizer turns into exactly `tokens` ids (as the scheduler encodes it, chat off)."""
    if tokens < 1:
        raise ValueError(f"prompt length must be at least 1 token, got {tokens}")
    words = list(rng.choice(_WORDS, size=tokens + 8))
    text = " ".join(words).capitalize()
    for _ in range(20):
        ids = list(tokenizer(text)["input_ids"])
        if len(ids) == tokens:
            return text
        if len(ids) > tokens:
            text = tokenizer.decode(ids[:tokens], skip_special_tokens=True)
        else:
            text = text + " " + " ".join(rng.choice(_WORDS, size=tokens - len(ids)))
    raise ValueError(f"could not build a prompt of exactly {tokens} tokens with this tokenizer")


def fixed_length_requests(tokenizer, input_tokens: int, output_tokens: int, count: int,
                          seed: int) -> list[BenchRequest]:
    if output_tokens < 1:
        raise ValueError(f"--output must be at least 1 token, got {output_tokens}")
    rng = np.random.default_rng(seed)
    return [BenchRequest(exact_length_prompt(tokenizer, input_tokens, rng), output_tokens, input_tokens)
            for _ in range(count)]


def jsonl_requests(path: str | Path, count: int | None) -> list[BenchRequest]:
    """{"prompt": str, "max_tokens": int} per line; cycles the file when count exceeds its lines."""
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            prompt, max_tokens = row["prompt"], int(row["max_tokens"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: need {{\"prompt\": str, \"max_tokens\": int}}: {exc}") from None
        if not isinstance(prompt, str) or not prompt or max_tokens < 1:
            raise ValueError(f"{path}:{number}: prompt must be non-empty text and max_tokens >= 1")
        rows.append(BenchRequest(prompt, max_tokens))
    if not rows:
        raise ValueError(f"{path}: no requests in the file")
    count = count or len(rows)
    return [rows[i % len(rows)] for i in range(count)]
