"""Shared fixtures: a tiny seeded random Llama (unit tests), Redis prefixes, the default model."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
import redis
import torch

from glitches.services.generation import models

REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture(scope="session")
def default_source() -> models.ModelSource:
    """SmolLM2-135M-Instruct, converted from its GGUF once and cached."""
    return models.resolve_model(models.DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, default_source) -> models.ModelSource:
    """A 2-layer random Llama (seed 0) with SmolLM2's tokenizer, saved as a transformers directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (default_source.path / name).exists():
            shutil.copy(default_source.path / name, path / name)
    return models.ModelSource("tiny-llama", Path(path), None)


@pytest.fixture
def redis_prefix():
    """A registry prefix of this test's own on the shared Redis; its keys are deleted afterwards."""
    prefix = f"glitches-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
