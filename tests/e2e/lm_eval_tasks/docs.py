"""The documents of the tiny lm-eval tasks beside this file (no download: lm-eval calls these through
each task's `custom_dataset`)."""

from __future__ import annotations

import datasets

MULTIPLE_CHOICE = [
    {"question": "The capital of France is", "choices": [" Paris", " Berlin", " Madrid"], "answer": 0},
    {"question": "Two plus two equals", "choices": [" four", " seven", " ten", " one"], "answer": 0},
    {"question": "The opposite of hot is", "choices": [" cold", " warm"], "answer": 0},
    {"question": "Water freezes at zero degrees", "choices": [" Celsius", " Kelvin", " pounds"], "answer": 0},
]

GENERATE = [
    {"question": "Question: What is the capital of France?\nAnswer:", "answer": "Paris"},
    {"question": "Question: How many legs does a cat have?\nAnswer:", "answer": "4"},
    {"question": "Question: What colour is the sky on a clear day?\nAnswer:", "answer": "blue"},
]


def multiple_choice(**kwargs) -> dict[str, datasets.Dataset]:
    return {"test": datasets.Dataset.from_list(MULTIPLE_CHOICE)}


def generate(**kwargs) -> dict[str, datasets.Dataset]:
    return {"test": datasets.Dataset.from_list(GENERATE)}
