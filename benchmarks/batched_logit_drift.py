"""Largest |logit| difference between the GPU step loop (alone and 8 requests packed) and transformers' own
forward of each prompt alone, SmolLM2-135M float32 on CPU: the measurement behind tests/greedy_reference.py.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/batched_logit_drift.py
"""
import torch
from glitches.services.generation import models
from glitches.gpu_worker.packed_attention import ATTN_IMPLEMENTATION, PackedBatch, Segment
from glitches.gpu_worker.request_kv import RequestKv
torch.set_num_threads(1)
src = models.resolve_model(models.DEFAULT_MODEL)
m = models.load_causal_lm(src, "cpu", "float32"); m.set_attn_implementation(ATTN_IMPLEMENTATION)
tok = models.load_tokenizer(src)
c = m.config; hd = c.hidden_size // c.num_attention_heads
texts = [f"Here is a long and detailed essay about topic {i}. " * (1 + i % 5) for i in range(8)]
prompts = [tok(t)["input_ids"] for t in texts]
def kv(): return RequestKv(16, c.num_hidden_layers, c.num_key_value_heads, hd, torch.float32, "cpu")
def step(items):
    ids, pos, segs, keep = [], [], [], []
    for cache, t, past in items:
        segs.append(Segment(cache, len(ids), len(t), past)); ids += t; pos += list(range(past, past + len(t))); keep.append(len(ids) - 1)
    with torch.inference_mode():
        return m(input_ids=torch.tensor([ids]), position_ids=torch.tensor([pos]), use_cache=False,
                 glitches_batch=PackedBatch(segs), logits_to_keep=torch.tensor(keep)).logits[0]
worst = 0.0
# reference: transformers' own forward (DynamicCache, SDPA) of prompt + one token, alone
for p in prompts:
    with torch.inference_mode():
        ref = m(input_ids=torch.tensor([p + [42]])).logits[0, -1]
    alone_kv = kv(); step([(alone_kv, p, 0)])
    a = step([(alone_kv, [42], len(p))])[0]
    worst = max(worst, float((a - ref).abs().max()))
caches = [kv() for _ in prompts]
step([(cc, p, 0) for cc, p in zip(caches, prompts)])
tog = step([(cc, [42], len(p)) for cc, p in zip(caches, prompts)])
for i, p in enumerate(prompts):
    with torch.inference_mode():
        ref = m(input_ids=torch.tensor([p + [42]])).logits[0, -1]
    worst = max(worst, float((tog[i] - ref).abs().max()))
    print(i, len(p), float((tog[i] - ref).abs().max()), float(ref.abs().max()))
print("worst", worst)
