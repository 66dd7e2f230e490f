"""Where weights come from: the default alias, a transformers directory, a GGUF path, or a clear error."""

import pytest

from glitches.services.generation import models
from glitches.services.runtime.errors import InvalidArgument


def test_unknown_model_says_what_to_give():
    with pytest.raises(InvalidArgument, match="transformers directory"):
        models.resolve_model("llama-9000")


def test_a_transformers_directory_is_used_as_is(tiny_source):
    assert models.resolve_model(str(tiny_source.path)).path == tiny_source.path


def test_a_gguf_file_is_converted_once_into_the_cache(tmp_path):
    gguf = models.default_gguf_path()
    source = models.resolve_model(str(gguf), cache_dir=tmp_path)
    assert source.gguf_file == gguf and (source.path / "model.safetensors").is_file()
    assert models.resolve_model(str(gguf), cache_dir=tmp_path).path == source.path  # cached, no second conversion


def test_cache_kwargs_follows_the_forward_signature():
    """transformers 5.24 takes `cache`; earlier releases take `past_key_values` and ignore `cache`."""
    class Old:
        def forward(self, input_ids=None, past_key_values=None, **kwargs): ...

    class New:
        def forward(self, input_ids=None, cache=None, **kwargs): ...

    assert models.cache_kwargs(Old(), "c") == {"past_key_values": "c"}
    assert models.cache_kwargs(New(), "c") == {"cache": "c"}
