"""One request's KV on the GPU worker: a buffer for every layer's K and V, filled in place.

Layout: one tensor [layers, 2 (K, V), 1, kv_heads, capacity, head_dim] in the model's dtype on
the model's device, so layer i's keys are `keys(i)[:, :, :length]` ([1, H_kv, length, D]) with
no concatenation per step (transformers' DynamicCache re-allocates on every token).
`capacity` is the request's reserved blocks x BLOCK_TOKENS.
"""

from __future__ import annotations

import torch

from gpu_worker.kv_budget import BLOCK_TOKENS


class RequestKv:
    def __init__(self, blocks: int, num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: str):
        self.capacity = blocks * BLOCK_TOKENS  # tokens
        self.buffer = torch.empty(num_layers, 2, 1, kv_heads, self.capacity, head_dim, dtype=dtype, device=device)
        self.length = 0  # tokens written and complete in every layer

    def keys(self, layer: int) -> torch.Tensor:
        return self.buffer[layer, 0]

    def values(self, layer: int) -> torch.Tensor:
        return self.buffer[layer, 1]

    def write(self, layer: int, start: int, key: torch.Tensor, value: torch.Tensor) -> None:
        """Store key/value [1, H_kv, n, D] at token positions start..start+n of `layer`."""
        end = start + key.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"KV write up to token {end} past the reserved {self.capacity}")
        self.buffer[layer, 0, :, :, start:end] = key
        self.buffer[layer, 1, :, :, start:end] = value
