"""A Llama-2-7B-shaped model (its config, random weights, float16) through the GPU worker's step loop, on CUDA.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/gpu_llama7b.py [--prompt-tokens 1536] [--batches 1 8 32]

Prefill of --prompt-tokens (one chunk), then decode ms/token at each batch size, every request holding
--prompt-tokens of context, with the HBM bandwidth each step implies: (weights + every request's KV)
bytes read per step / step time, against --hbm-tb-per-s (an H200: 4.8 TB/s). The paper's A100 figures
(prefill 175.85 ms; decode 24.26 ms/token at batch 1, 30% of HBM bandwidth) are printed beside.
Needs CUDA: the CPU stand-in cannot hold or run a 7B model in reasonable time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from glitches.gpu_worker.kv_pool import blocks_for
from glitches.gpu_worker.packed_attention import ATTN_IMPLEMENTATION
from glitches.gpu_worker.kv_pool import KvPool
from glitches.gpu_worker.request_kv import RequestKv
from glitches.gpu_worker.step_loop import DecodeJob, PrefillJob, StepLoop
from glitches.services.generation.sampling import Sampling

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
PAPER_A100 = dict(prefill_1536_ms=175.85, decode_b1_ms=24.26, decode_b1_hbm_util=0.30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=1536)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--hbm-tb-per-s", type=float, default=4.8)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs CUDA")
    device, dtype = "cuda", torch.float16
    config = LlamaConfig(**LLAMA2_7B)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype).eval()
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * 128 * 2
    loop = StepLoop(model, device, max_batch_tokens=args.prompt_tokens)
    n = args.prompt_tokens
    tokens = torch.randint(0, config.vocab_size, (n,)).tolist()

    # one pool for every request, as the worker's (so a step's decodes attend as one batch)
    most = max(args.batches) + 1
    pool = KvPool(most * blocks_for(n + args.decode_steps + 2), config.num_hidden_layers, config.num_key_value_heads,
                  128, dtype, device)

    def new_kv(extra: int) -> RequestKv:
        return RequestKv(blocks_for(n + extra), config.num_hidden_layers, config.num_key_value_heads, 128, dtype,
                         device, pool)

    def prefill(kv) -> tuple[int, float]:
        job = PrefillJob(kv, tokens, Sampling(max_new_tokens=args.decode_steps + 2), 0, None, lambda: False)
        started = time.perf_counter()
        first, _ = loop.submit_prefill(job).result()
        return first, time.perf_counter() - started

    def timed_prefill() -> float:
        kv = new_kv(0)
        seconds = prefill(kv)[1]
        kv.free()
        return seconds

    timed_prefill()  # warm-up
    times = [timed_prefill() for _ in range(3)]
    result = dict(model="Llama-2-7B-shaped, random weights, float16", device=torch.cuda.get_device_name(),
                  weights_gb=weight_bytes / 1e9, prefill_tokens=n, prefill_ms=1000 * statistics.median(times),
                  paper_a100=PAPER_A100, decode=[])
    for batch in args.batches:
        jobs = []
        for _ in range(batch):
            kv = new_kv(args.decode_steps + 2)
            first, _ = prefill(kv)
            jobs.append(DecodeJob(kv, [first], n, Sampling(max_new_tokens=args.decode_steps + 1), lambda ids: "",
                                  lambda: False))
        for job in jobs:
            loop.submit_decode(job)
        steps = [[job.out.get(timeout=600) for _ in range(args.decode_steps)] for job in jobs]
        step_s = statistics.median(s.step_s for s in steps[0][4:])  # every job sees the same batched steps
        read_bytes = weight_bytes + batch * (n + args.decode_steps // 2) * kv_per_token
        result["decode"].append(dict(batch=batch, ms_per_step=1000 * step_s,
                                     tokens_per_s=batch / step_s,
                                     hbm_utilisation=read_bytes / step_s / (args.hbm_tb_per_s * 1e12)))
        for job in jobs:
            job.kv.free()
        del jobs, steps
    loop.stop()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
