"""Decode tokens/s of the emulated kernels beside transformers' generate, same CPU, same run.

Usage: python benchmarks/emu_speed.py [--tokens 32] [--rounds 3] [--threads N]
Kernels: the W4A8 kernel in Python (the specification), the kernel source C-simulated
(g++, `make setup`; same bits), both stepped through the emulated card (W4A8EmulatedCard),
and the float32 reference kernel. All run on the host CPU: the figures are for the EMULATOR
(no card), not for a U280. Rounds interleave them so a busy machine slows all alike; ratios
(kernel / transformers, csim / Python W4A8) are taken within each round and the median reported.
Rates are given on wall time and on this process's CPU time (the latter is less
disturbed when other jobs share the cores; with 1 thread it is the better figure).
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


def w4a8_image():
    from glitches.fpga_worker.weight_image import build_from_gguf
    from glitches.services.generation.models import default_gguf_path

    return build_from_gguf(default_gguf_path())


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(tokens: int, start: tuple[float, float], end: tuple[float, float]) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second)."""
    return tokens / (end[0] - start[0]), tokens / (end[1] - start[1])


@torch.inference_mode()
def card_tokens_per_s(model, card, ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    """Greedy decode through an emulated card (reserve, prefill KV written in, seal, step); steps only are timed."""
    prompt = ids.shape[1]
    card.reserve("bench", prompt + tokens)
    out = model(ids[:, :-1], use_cache=True)
    for layer, cached in enumerate(out.past_key_values.layers):
        card.write_kv("bench", layer, 0, cached.keys, cached.values)
    card.seal("bench", prompt - 1)
    token, start = int(ids[0, -1]), _clocks()
    for i in range(tokens):
        token = int(card.step("bench", token, prompt - 1 + i).argmax())
    end = _clocks()
    card.release("bench")
    return _rates(tokens, start, end)


def kernel_tokens_per_s(model, kernel, ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    """Greedy decode `tokens` steps after a transformers prefill of ids[:, :-1]; steps only are timed."""
    prompt = ids.shape[1]
    region = prefill_into(model, kernel, ids[:, :-1], prompt + tokens)
    token, start = int(ids[0, -1]), _clocks()
    for i in range(tokens):
        token = int(kernel.step(region, token, prompt - 1 + i).argmax())
    return _rates(tokens, start, _clocks())


@torch.inference_mode()
def transformers_tokens_per_s(model, ids: torch.Tensor, tokens: int) -> tuple[float, float]:
    """Decode rate of generate: tokens / (time for 1 + tokens new tokens - time for 1), greedy, KV cache on."""
    def run(n):
        start = _clocks()
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=model.config.eos_token_id)
        end = _clocks()
        return end[0] - start[0], end[1] - start[1]
    (wall_long, cpu_long), (wall_short, cpu_short) = run(1 + tokens), run(1)
    return tokens / (wall_long - wall_short), tokens / (cpu_long - cpu_short)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from glitches.fpga_worker.abi import HBM_CHANNELS
    from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard

    model, tokenizer, w4a8, reference, _ = load_all()
    image = w4a8_image()
    hbm = HBM_CHANNELS * (image.kv_base + 8 * 1024 * 1024)
    cards = {numerics: W4A8EmulatedCard(image, hbm, numerics=numerics) for numerics in ("w4a8", "csim")}
    ids = tokenizer(PROMPTS[0], return_tensors="pt").input_ids
    names = ("transformers generate (float32)", "emu card w4a8 (Python kernel)", "emu card csim (kernel source, g++)",
             "emu kernel reference (float32)")
    rates = {clock: {name: [] for name in names} for clock in ("wall", "cpu")}
    for _ in range(args.rounds):
        results = (transformers_tokens_per_s(model, ids, args.tokens),
                   card_tokens_per_s(model, cards["w4a8"], ids, args.tokens),
                   card_tokens_per_s(model, cards["csim"], ids, args.tokens),
                   kernel_tokens_per_s(model, reference, ids, args.tokens))
        for name, (wall, cpu) in zip(names, results):
            rates["wall"][name].append(wall)
            rates["cpu"][name].append(cpu)
    print(f"SmolLM2-135M decode on this host CPU ({torch.get_num_threads()} torch threads), prompt "
          f"{ids.shape[1]} tokens, {args.tokens} greedy steps, {args.rounds} interleaved rounds (median):")
    for clock, table in rates.items():
        base = table[names[0]]
        for name, values in table.items():
            print(f"  [{clock:4s}] {name:34s} {statistics.median(values):7.1f} tokens/s   rounds: "
                  + ", ".join(f"{v:.1f}" for v in values))
        for name in names[1:]:
            ratios = [a / b for a, b in zip(table[name], base)]
            print(f"  [{clock:4s}] {name} / transformers: {statistics.median(ratios):.2f}x (per round: "
                  + ", ".join(f"{r:.2f}" for r in ratios) + ")")
        ratios = [a / b for a, b in zip(table[names[2]], table[names[1]])]
        print(f"  [{clock:4s}] csim step / Python W4A8 step speed: {statistics.median(ratios):.2f}x (per round: "
              + ", ".join(f"{r:.2f}" for r in ratios) + ")")
    print("  (emulated: software kernel on the CPU, not a U280; see benchmarks/fpga_timing_table.py for modeled card time)")


if __name__ == "__main__":
    main()
