"""W4A8 kernel quality vs float32 on SmolLM2: top-1 agreement and mean absolute logit error.

Usage: python benchmarks/w4a8_quality.py [--steps 32]
For each of 8 fixed prompts, transformers (float32, the GGUF dequantized) prefills the
prompt and greedily generates `steps` tokens; both kernels are then teacher-forced on
those tokens, starting from transformers' prefill KV (as the GPU would send it), and
their logits are compared with transformers' at every step. The reference weights ARE
the dequantized Q4_1 weights, so the W4A8 error measured here is what INT8 activations,
integer group accumulation and FP16 KV add; weight quantization error vs the original
bf16 SmolLM2 is not measured (that model is not on this machine).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.smollm2_setup import PROMPTS, load_all, prefill_into  # noqa: E402


@torch.inference_mode()
def teacher_forced(model, kernel, prompt: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Kernel logits [steps, vocab] for positions prompt-1 .. len(ids)-2, fed the tokens of ids."""
    start = prompt.shape[1] - 1
    region = prefill_into(model, kernel, prompt[:, :-1], ids.shape[1])
    return torch.stack([kernel.step(region, int(ids[0, p]), p) for p in range(start, ids.shape[1] - 1)])


@torch.inference_mode()
def free_running(model, kernel, prompt: torch.Tensor, steps: int) -> list[int]:
    region = prefill_into(model, kernel, prompt[:, :-1], prompt.shape[1] + steps)
    token, out = int(prompt[0, -1]), []
    for i in range(steps):
        token = int(kernel.step(region, token, prompt.shape[1] - 1 + i).argmax())
        out.append(token)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--float-activations", action="store_true",
                        help="diagnostic: run the image's W4 weights with float activations instead of INT8")
    parser.add_argument("--float-input", choices=("qkv", "attn_output", "gate_up", "down", "lm_head"),
                        help="diagnostic: leave one operator family's input in float32, the rest of the kernel as is")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads; 1 avoids thread thrash on a shared machine, numerics do not change")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, tokenizer, w4a8, reference, build_s = load_all()
    label = "W4A8"
    if args.float_activations:
        from glitches.fpga_worker.w4a8_kernel import DecodeKernel
        from glitches.fpga_worker.weight_image import build_from_gguf
        from glitches.services.generation.models import default_gguf_path

        w4a8, label = DecodeKernel.from_image(build_from_gguf(default_gguf_path()), int8_activations=False), \
            "W4 + float activations (diagnostic)"
    if args.float_input:
        linears = [w4a8.lm_head] if args.float_input == "lm_head" else \
            [getattr(layer, "down" if args.float_input == "down" else args.float_input) for layer in w4a8.layers]
        for linear in linears:
            linear.int8_activations = False
        label = f"W4A8 with float input to {args.float_input} (diagnostic)"
    agree, abs_err, ref_err, match_prompts, first_diverge = [], [], 0.0, 0, []
    for text in PROMPTS:
        prompt = tokenizer(text, return_tensors="pt").input_ids
        with torch.inference_mode():
            ids = model.generate(prompt, max_new_tokens=args.steps, min_new_tokens=args.steps, do_sample=False,
                                 pad_token_id=model.config.eos_token_id)
            expected = model(ids).logits[0, prompt.shape[1] - 1: -1]  # [steps, vocab]
        got = teacher_forced(model, w4a8, prompt, ids)
        agree.append((got.argmax(-1) == expected.argmax(-1)).float())
        abs_err.append((got - expected).abs().mean(-1))
        ref_err = max(ref_err, (teacher_forced(model, reference, prompt, ids) - expected).abs().max().item())
        # free-running greedy of both kernels, no stop token (generate's ids above had EOS masked by min_new_tokens)
        tokens, want = free_running(model, w4a8, prompt, args.steps), free_running(model, reference, prompt, args.steps)
        same = [a == b for a, b in zip(tokens, want)]
        match_prompts += all(same)
        first_diverge.append(same.index(False) if not all(same) else args.steps)
    agree_all, err_all = torch.cat(agree), torch.cat(abs_err)
    logit_scale = expected.std().item()
    print(f"SmolLM2-135M, {len(PROMPTS)} prompts x {args.steps} steps, teacher-forced on transformers' greedy tokens "
          "(emulated kernel on the CPU, no card)")
    print(f"  weight image built from the GGUF in {build_s:.1f} s; Q4_1 / Q8_0 blocks copied exactly")
    print(f"  {label} vs float32: top-1 agreement {agree_all.mean().item():.2%} "
          f"(per prompt: {', '.join(f'{a.mean().item():.0%}' for a in agree)})")
    print(f"  {label} vs float32: mean |logit error| {err_all.mean().item():.4f} "
          f"(logit std {logit_scale:.2f}; max per-step mean {err_all.max().item():.4f})")
    print(f"  {label} vs reference kernel, free-running greedy: {match_prompts}/{len(PROMPTS)} prompts identical for "
          f"all {args.steps} tokens; first divergence steps {first_diverge}")
    print(f"  reference kernel (float32) vs transformers: max |logit diff| {ref_err:.2e}")
    print(f"  total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
