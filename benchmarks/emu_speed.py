"""Decode tokens/s of the software W4A8 kernel (both numerics) beside transformers' generate, same CPU, same run.

Usage: python benchmarks/emu_speed.py [--tokens 32] [--rounds 3] [--threads N]
All three run on the host CPU: the kernel figures are for the EMULATOR (no card),
not for a U280. Rounds interleave the three so a busy machine slows all alike; the
ratio kernel/transformers is taken within each round and the median reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.smollm2_setup import PROMPTS, load_all, prefill_into  # noqa: E402


def kernel_tokens_per_s(model, kernel, ids: torch.Tensor, tokens: int) -> float:
    """Greedy decode `tokens` steps after a transformers prefill of ids[:, :-1]; steps only are timed."""
    prompt = ids.shape[1]
    region = prefill_into(model, kernel, ids[:, :-1], prompt + tokens)
    token, start = int(ids[0, -1]), time.perf_counter()
    for i in range(tokens):
        token = int(kernel.step(region, token, prompt - 1 + i).argmax())
    return tokens / (time.perf_counter() - start)


@torch.inference_mode()
def transformers_tokens_per_s(model, ids: torch.Tensor, tokens: int) -> float:
    """Decode rate of generate: (time for 1 + tokens new tokens - time for 1) / tokens, greedy, KV cache on."""
    def run(n):
        start = time.perf_counter()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=model.config.eos_token_id)
        return time.perf_counter() - start
    return tokens / (run(1 + tokens) - run(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, w4a8, reference, _ = load_all()
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    rates = {"transformers generate (float32)": [], "emu kernel w4a8": [], "emu kernel reference (float32)": []}
    ratios = {"w4a8": [], "reference": []}
    for _ in range(args.rounds):
        hf = transformers_tokens_per_s(model, ids, args.tokens)
        w4 = kernel_tokens_per_s(model, w4a8, ids, args.tokens)
        ref = kernel_tokens_per_s(model, reference, ids, args.tokens)
        for name, rate in zip(rates, (hf, w4, ref)):
            rates[name].append(rate)
        ratios["w4a8"].append(w4 / hf)
        ratios["reference"].append(ref / hf)
    print(f"SmolLM2-135M decode on this host CPU ({torch.get_num_threads()} torch threads), prompt "
          f"{ids.shape[1]} tokens, {args.tokens} greedy steps, {args.rounds} interleaved rounds (median):")
    for name, values in rates.items():
        print(f"  {name:36s} {statistics.median(values):7.1f} tokens/s   rounds: "
              + ", ".join(f"{v:.1f}" for v in values))
    for name, values in ratios.items():
        print(f"  emu kernel {name} / transformers: {statistics.median(values):.2f}x (per round: "
              + ", ".join(f"{v:.2f}" for v in values) + ")")
    print("  (emulated: software kernel on the CPU, not a U280; see benchmarks/fpga_timing_table.py for modeled card time)")


if __name__ == "__main__":
    main()
