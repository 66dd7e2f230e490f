"""Checks every decode backend makes on a request, in one place so their messages agree."""

from __future__ import annotations

import threading

import torch

from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted


def lookup(requests: dict, lock: threading.Lock, request_id: str):
    """The request's entry, or NOT_FOUND."""
    with lock:
        request = requests.get(request_id)
    if request is None:
        raise NotFound(f"request {request_id} holds no KV on this card")
    return request


def forget(requests: dict, lock: threading.Lock, request_id: str) -> bool:
    """Drop the request's entry; False when there was none (already released)."""
    with lock:
        return requests.pop(request_id, None) is not None


def request_ids(requests: dict, lock: threading.Lock) -> list[str]:
    with lock:
        return list(requests)


def check_sealable(written: torch.Tensor, prompt_tokens: int, capacity_tokens: int) -> None:
    """Every layer's KV for tokens [0, prompt_tokens) arrived; written is bool [layers, capacity_tokens]."""
    if not 0 < prompt_tokens <= capacity_tokens:
        raise InvalidArgument(f"prompt of {prompt_tokens} tokens does not fit the {capacity_tokens} tokens reserved")
    missing = ~written[:, :prompt_tokens]
    if missing.any():
        layer, token = (int(i) for i in missing.nonzero()[0])
        raise InvalidArgument(f"layer {layer}: KV for token {token} never arrived (expected {prompt_tokens} tokens)")


def check_steppable(request_id: str, sealed: bool, position: int, capacity_tokens: int) -> None:
    """The KV transfer finished and `position` lies inside the reserved tokens."""
    if not sealed:
        raise FailedPrecondition(f"request {request_id}: its KV transfer has not finished")
    if position >= capacity_tokens:
        raise ResourceExhausted(f"request {request_id}: position {position} is beyond the "
                                f"{capacity_tokens} tokens of KV reserved")
