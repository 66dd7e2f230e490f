"""Attention over a packed batch: many requests' new tokens in one forward pass.

The step loop runs the model on input_ids [1, T]: the new tokens of every request in the step
laid end to end (a decode contributes 1 token, a prefill chunk n). Everything but attention is
per token, so it batches as is; attention is per request. This module registers an attention
implementation with transformers (ATTN_IMPLEMENTATION) that, given `glitches_batch` (a
PackedBatch) in the forward's kwargs, for each segment:

1. writes the segment's fresh K/V into its request's own buffer (gpu_worker/request_kv.py);
2. when the segment is the last chunk of a prefill with a layer hook, calls
   hook(layer, key [1, H_kv, S, D], value [1, H_kv, S, D]) with the request's whole prompt KV
   of that layer, the moment the layer is computed (the KV sender's put_layer); a hook that
   raises stops streaming for that request only and is recorded on the segment;
3. runs torch SDPA of its queries against its K/V so far (causal inside the chunk).

Without `glitches_batch` it is transformers' own SDPA attention, so the same model object still
serves `generate` (the tests' reference) unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from gpu_worker.request_kv import RequestKv

ATTN_IMPLEMENTATION = "glitches_packed"

# hook(layer_idx, key [1, H_kv, S, D], value [1, H_kv, S, D]); may raise to stop this request's stream
LayerHook = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class Segment:
    """One request's slice of a packed step: tokens q_start..q_start+q_len at positions past..past+q_len."""

    kv: RequestKv
    q_start: int
    q_len: int
    past: int  # tokens of this request already in kv before this step
    hook: LayerHook | None = None  # set on the last chunk of a prefill that streams its KV
    hook_error: BaseException | None = None  # what the hook raised, if it did
    _mask: torch.Tensor | None = field(default=None, repr=False)

    def causal_mask(self, device) -> torch.Tensor | None:
        """[q_len, past + q_len] bool (True = attend) for a chunk after earlier ones; None when SDPA needs none."""
        if self.q_len == 1 or self.past == 0:
            return None
        if self._mask is None:
            self._mask = torch.ones(self.q_len, self.past + self.q_len, dtype=torch.bool, device=device).tril(self.past)
        return self._mask


@dataclass
class PackedBatch:
    segments: list[Segment]


def _packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, glitches_batch=None,
                      **kwargs):
    """query [1, H, T, D], key/value [1, H_kv, T, D] -> (output [1, T, H, D], None)."""
    if glitches_batch is None:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                               dropout=dropout, **kwargs)
    layer = module.layer_idx
    out = torch.empty_like(query)
    gqa = query.shape[1] != key.shape[1]
    for seg in glitches_batch.segments:
        end = seg.q_start + seg.q_len
        total = seg.past + seg.q_len
        seg.kv.write(layer, seg.past, key[:, :, seg.q_start:end], value[:, :, seg.q_start:end])
        keys, values = seg.kv.keys(layer)[:, :, :total], seg.kv.values(layer)[:, :, :total]
        if seg.hook is not None:
            try:
                seg.hook(layer, keys.contiguous(), values.contiguous())
            except Exception as error:  # this request's stream failed: the others' forward goes on
                seg.hook_error, seg.hook = error, None
        mask = seg.causal_mask(query.device)
        out[:, :, seg.q_start:end] = F.scaled_dot_product_attention(
            query[:, :, seg.q_start:end], keys, values, attn_mask=mask,
            is_causal=seg.q_len > 1 and seg.past == 0, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def _mask(*args, **kwargs):
    """The causal mask transformers builds before the layers: SDPA's (the packed path ignores it)."""
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(ATTN_IMPLEMENTATION, _packed_attention)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _mask)
