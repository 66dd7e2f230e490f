"""Attention over a packed batch: many requests' new tokens in one forward pass.

The step loop runs the model on input_ids [1, T]: the new tokens of every request in the step
laid end to end (a decode contributes 1 token, a prefill chunk n), decodes first. Everything but
attention is per token, so it batches as is; attention is per request. This module registers an
attention implementation with transformers (ATTN_IMPLEMENTATION) that, given `glitches_batch` (a
PackedBatch) in the forward's kwargs:

- the leading decodes, when two or more share one KvPool (the worker's: glitches/gpu_worker/kv_pool.py), run
  as one batch (DecodePlan, built once per step): one scatter of their new K/V into the pool, one
  gather of every row's K/V padded to the longest, one SDPA with a length mask, per layer;
- every other segment (a prefill chunk, or a decode outside such a batch):
  1. writes the segment's fresh K/V into its request's blocks (glitches/gpu_worker/request_kv.py);
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

from glitches.gpu_worker.request_kv import RequestKv

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
    """One step's segments, decodes (q_len 1) first. When at least two decodes lead and all of them share one
    KvPool, their attention runs batched (`decode_plan`, built once per step and used by every layer)."""

    segments: list[Segment]
    _plan: object = field(default=None, repr=False)

    def decode_plan(self) -> DecodePlan | None:
        if self._plan is None:
            self._plan = DecodePlan.of(self.segments) or False
        return self._plan or None


@dataclass
class DecodePlan:
    """The leading decode segments of a step as one batch over their pool.

    write_slots [B]: the pool slot of each decode's new token; gather_slots [B, L]: each request's slots of
    tokens 0..L (L = the longest past + 1; shorter rows padded with the slot of their token 0);
    mask [B, 1, 1, L] bool (True = attend), None when every row has L tokens.
    """

    count: int  # B: segments[:count] are the decodes, their queries at packed tokens 0..B
    pool: object  # gpu_worker.kv_pool.KvPool
    write_slots: torch.Tensor
    gather_slots: torch.Tensor
    mask: torch.Tensor | None

    @staticmethod
    def of(segments: list[Segment]) -> DecodePlan | None:
        decodes = []
        for i, seg in enumerate(segments):
            if seg.q_len != 1 or seg.q_start != i or seg.hook is not None:
                break
            decodes.append(seg)
        if len(decodes) < 2 or any(seg.kv.pool is not decodes[0].kv.pool for seg in decodes):
            return None
        lengths = [seg.past + 1 for seg in decodes]
        width = max(lengths)
        device = decodes[0].kv.slots.device
        # padding repeats the row's token 0 (written, so finite): a masked position still multiplies its V by 0,
        # and 0 x NaN of an unwritten slot would be NaN
        positions = torch.arange(width, device=device)
        gather = torch.stack([
            torch.where(positions < length, seg.kv.slots[positions.clamp(max=seg.kv.capacity - 1)], seg.kv.slots[0])
            for seg, length in zip(decodes, lengths)])  # [B, width]
        write = torch.stack([seg.kv.slots[seg.past] for seg in decodes])  # [B]
        mask = None
        if min(lengths) != width:
            mask = (positions[None, :] < torch.tensor(lengths, device=device)[:, None]).view(len(decodes), 1, 1, width)
        return DecodePlan(len(decodes), decodes[0].kv.pool, write, gather, mask)

    def attend(self, layer: int, query, key, value, scaling, gqa: bool) -> torch.Tensor:
        """query [1, H, T, D], key/value [1, H_kv, T, D]: store the decodes' K/V, return their output [1, H, B, D]."""
        b = self.count
        keys, values = self.pool.keys(layer), self.pool.values(layer)  # [H_kv, slots, D]
        keys.index_copy_(1, self.write_slots, key[0, :, :b])
        values.index_copy_(1, self.write_slots, value[0, :, :b])
        width = self.gather_slots.shape[1]
        flat = self.gather_slots.view(-1)  # index_select: several times faster than advanced indexing here
        k = keys.index_select(1, flat).view(keys.shape[0], b, width, -1).transpose(0, 1)  # [B, H_kv, L, D]
        v = values.index_select(1, flat).view(values.shape[0], b, width, -1).transpose(0, 1)
        q = query[0, :, :b].transpose(0, 1).unsqueeze(2)  # [B, H, 1, D]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, scale=scaling, enable_gqa=gqa)
        return out.squeeze(2).transpose(0, 1).unsqueeze(0)  # [1, H, B, D]


def _packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, glitches_batch=None,
                      **kwargs):
    """query [1, H, T, D], key/value [1, H_kv, T, D] -> (output [1, T, H, D], None)."""
    if glitches_batch is None:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                               dropout=dropout, **kwargs)
    layer = module.layer_idx
    out = torch.empty_like(query)
    gqa = query.shape[1] != key.shape[1]
    segments = glitches_batch.segments
    plan = glitches_batch.decode_plan()
    if plan is not None:
        out[:, :, :plan.count] = plan.attend(layer, query, key, value, scaling, gqa)
        segments = segments[plan.count:]
    for seg in segments:
        end = seg.q_start + seg.q_len
        total = seg.past + seg.q_len
        seg.kv.write(layer, seg.past, key[:, :, seg.q_start:end], value[:, :, seg.q_start:end])
        keys, values = seg.kv.read(layer, total)
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
