"""A decoder-only transformer's shape, and what one prefill or decode step costs.

Counts assume a Llama-style block: attention with separate Q, K, V, O
projections (K and V sized by the KV heads), a SwiGLU MLP (gate, up, down),
RMSNorm. Norm weights and biases are ignored (< 0.01% of the FLOPs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from glitches.services.runtime.errors import InvalidArgument

MODELS_FILE = Path(__file__).with_name("profiles") / "models.json"


@dataclass(frozen=True)
class ModelShape:
    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def layer_params(self) -> int:
        """Weights of one block's matrices (attention + MLP), parameters."""
        kv_width = self.kv_heads * self.head_dim
        attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv_width  # Q, O + K, V
        mlp = 3 * self.hidden * self.intermediate  # gate, up, down
        return attention + mlp

    @property
    def matmul_params(self) -> int:
        """Weights every token multiplies through: all blocks + LM head, parameters.

        The embedding table is a lookup (one row per token), so it is left out.
        """
        return self.layers * self.layer_params + self.vocab * self.hidden

    @property
    def total_params(self) -> int:
        embedding = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.matmul_params + embedding

    def weight_bytes(self, bits_per_weight: float) -> float:
        """Bytes one decode step streams from memory for the weights."""
        return self.matmul_params * bits_per_weight / 8

    def kv_bytes_per_token(self, bits_per_value: float) -> float:
        """K and V of every layer for one token, bytes (Llama-2-7B fp16: 524288)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * bits_per_value / 8

    def prefill_flops(self, prompt_tokens: int) -> float:
        """FLOPs of a prefill of `prompt_tokens`: linear in the weights, quadratic in attention.

        Weights: 2 FLOPs (multiply + add) per parameter per token.
        Attention: Q K^T and P V each cost 2 * head_dim * heads FLOPs per
        (query, key) pair; causal masking leaves n (n + 1) / 2 pairs per layer.
        """
        n = prompt_tokens
        linear = 2.0 * self.matmul_params * n
        attention = self.layers * 2 * (2.0 * self.hidden) * n * (n + 1) / 2
        return linear + attention

    def decode_flops(self, context_tokens: int) -> float:
        """FLOPs of one decode step attending over `context_tokens` keys."""
        return 2.0 * self.matmul_params + self.layers * 2 * (2.0 * self.hidden) * context_tokens

    def decode_bytes(self, context_tokens: int, weight_bits: float, kv_bits: float) -> float:
        """Bytes one decode step reads: every weight once plus the whole KV cache."""
        return self.weight_bytes(weight_bits) + self.kv_bytes_per_token(kv_bits) * context_tokens


def load_model_shape(name: str, path: Path = MODELS_FILE) -> ModelShape:
    table = json.loads(path.read_text())
    if name not in table or name.startswith("_"):
        known = ", ".join(k for k in table if not k.startswith("_"))
        raise InvalidArgument(f"unknown model {name!r} for the simulator; known: {known} (add it to {path})")
    return ModelShape(name=name, **table[name])
