"""One decode step of the GPU worker's step loop beside one decode step of transformers' static batch, same process.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/gpu_step.py --batch 8 32 --context 120

For each batch size B: B requests, each with `--context` tokens of KV already held,
- packed: one forward pass of the step loop's packed batch (glitches/gpu_worker/packed_attention.py: B one-token
  segments laid end to end, their KV in one KvPool as in the worker), logits at every row;
- static: one forward pass of transformers' SDPA model on input [B, 1] with a DynamicCache of B x context
  tokens (what batched `generate` runs per token, its cache growing by concatenation);
median milliseconds of `--repeats` steps each, alternating, and their ratio. No cluster, no gRPC: this separates
the engine's own step cost from the serving path that benchmarks/gpu_batching.py measures end to end.
The KV is random (only the cost is measured); SmolLM2-135M float32 on the host CPU, `--threads` intra-op threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import DynamicCache

from glitches.gpu_worker.kv_pool import blocks_for
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.gpu_worker.kv_pool import KvPool
from glitches.gpu_worker.packed_attention import ATTN_IMPLEMENTATION, PackedBatch, Segment
from glitches.gpu_worker.request_kv import RequestKv
from glitches.services.generation import models


def packed_step(model, kvs: list[RequestKv], context: int) -> float:
    batch = len(kvs)
    segments = [Segment(kv, i, 1, context) for i, kv in enumerate(kvs)]
    started = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=torch.full((1, batch), 5), position_ids=torch.full((1, batch), context),
              glitches_batch=PackedBatch(segments), use_cache=False, logits_to_keep=torch.arange(batch))
    return time.perf_counter() - started


def static_step(model, caches: list[tuple[torch.Tensor, torch.Tensor]], context: int) -> float:
    config = model.config
    cache = DynamicCache(config=config)
    for layer, (key, value) in enumerate(caches):
        cache.update(key.clone(), value.clone(), layer)  # a fresh cache per step: update() appends in place
    batch = caches[0][0].shape[0]
    started = time.perf_counter()
    with torch.inference_mode():
        model(input_ids=torch.full((batch, 1), 5), position_ids=torch.full((batch, 1), context),
              use_cache=True, logits_to_keep=1, **models.cache_kwargs(model, cache))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--context", type=int, default=120, help="tokens of KV each request holds")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    source = models.resolve_model(models.DEFAULT_MODEL)
    model = models.load_causal_lm(source, "cpu", "float32")
    config = model.config
    layers, heads = config.num_hidden_layers, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for batch in args.batch:
        blocks = blocks_for(args.context + 1)
        pool = KvPool(batch * blocks, layers, heads, head_dim, torch.float32, "cpu")  # as the engine's, shared
        pool.data.normal_()
        kvs = []
        for _ in range(batch):
            kv = RequestKv(blocks, layers, heads, head_dim, torch.float32, "cpu", pool)
            kv.length = args.context
            kvs.append(kv)
        caches = [(torch.randn(batch, heads, args.context, head_dim), torch.randn(batch, heads, args.context, head_dim))
                  for _ in range(layers)]
        packed, static = [], []
        for i in range(args.repeats + 1):  # the first of each: warm-up, not counted
            model.set_attn_implementation(ATTN_IMPLEMENTATION)
            p = packed_step(model, kvs, args.context)
            model.set_attn_implementation("sdpa")
            s = static_step(model, caches, args.context)
            if i:
                packed.append(p)
                static.append(s)
        p_ms, s_ms = statistics.median(packed) * 1e3, statistics.median(static) * 1e3
        print(f"B={batch} context={args.context} threads={args.threads}: packed step {p_ms:.1f} ms, "
              f"static step {s_ms:.1f} ms, static/packed {s_ms / p_ms:.2f}x "
              f"(KV blocks of {KV_BLOCK_TOKENS} tokens; median of {args.repeats})", flush=True)


if __name__ == "__main__":
    main()
