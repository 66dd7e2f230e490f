"""A transformers cache that hands each layer's K/V on the moment the layer produced it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import DynamicCache

# on_layer(layer_idx, key [1, H_kv, S, D], value [1, H_kv, S, D])
LayerHook = Callable[[int, torch.Tensor, torch.Tensor], None]


class LayerStreamingCache(DynamicCache):
    """DynamicCache whose update() also calls `on_layer` with the new states.

    During prefill each attention layer calls update() once, before the next
    layer starts, so a hook that enqueues the tensors lets a sender ship layer i
    while layer i + 1 computes. The hook may raise to abort the forward pass
    (for example when the receiver refused the transfer).
    """

    def __init__(self, config, on_layer: LayerHook | None):
        super().__init__(config=config)
        self._on_layer = on_layer

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        out = super().update(key_states, value_states, layer_idx, *args, **kwargs)
        if self._on_layer is not None:
            self._on_layer(layer_idx, key_states, value_states)
        return out

    def stop_streaming(self) -> None:
        self._on_layer = None
