"""How far the service's logprobs are from transformers' own: prompt logprobs from prefill, generated ones
from decode on the FPGA emulator (reference numerics) and on the GPU worker (GPU assist).

Usage: python benchmarks/logprob_gap.py [--tokens 24]
Real gRPC servers in this process (a GPU worker on the host CPU, float32, and an emulated FPGA worker), the
default model (SmolLM2-135M-Instruct), greedy; the reference is one float32 forward pass of transformers
over prompt + generated tokens, log_softmax of its logits. Prints the largest absolute difference (nats)
of the chosen tokens' logprobs (prompt and generated) and of the top-5 entries. This justifies the 1e-3
tolerance of tests/e2e/test_gateway_logprobs.py and tests/e2e/test_lm_eval.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from glitches.fpga_worker.emu_backend import EmulatedCard  # noqa: E402
from glitches.fpga_worker.server import FpgaWorkerServicer  # noqa: E402
from glitches.gpu_worker.engine import GpuEngine  # noqa: E402
from glitches.gpu_worker.server import GpuWorkerServicer  # noqa: E402
from glitches.gpu_worker.settings import GpuWorkerSettings  # noqa: E402
from glitches.services.generation import models  # noqa: E402
from glitches.services.runtime.channels import insecure_channel  # noqa: E402
from glitches.services.runtime.grpc_server import start_server  # noqa: E402
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc  # noqa: E402

PROMPTS = ["The capital of France is", "Once upon a time, in a data center far away, a small FPGA"]


def _serve(servicer):
    server = start_server("127.0.0.1", 0, [(worker_pb2_grpc.add_WorkerServicer_to_server, servicer)],
                          ("glitches.v1.Worker",))
    return server, worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{server.port}"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=24)
    args = parser.parse_args()
    source = models.resolve_model(models.DEFAULT_MODEL)
    engine = GpuEngine(GpuWorkerSettings(model=str(source.path)), source)
    card = EmulatedCard(source, hbm_bytes=2 * 1024**3)
    gpu_server, gpu = _serve(GpuWorkerServicer(engine, "gpu-b", source.name))
    fpga_server, fpga = _serve(FpgaWorkerServicer(card, engine.tokenizer, "fpga-b", source.name, 1))
    sampling = common_pb2.SamplingParams(max_new_tokens=args.tokens, logprobs=True, top_logprobs=5,
                                         prompt_logprobs=True)
    try:
        for n, text in enumerate(PROMPTS):
            prompt = engine.tokenizer(text)["input_ids"]
            for on_fpga in (True, False):
                rid = f"gap-{n}-{on_fpga}"
                target = (worker_pb2.DecodeTarget(address=f"127.0.0.1:{fpga_server.port}", worker_id="fpga-b")
                          if on_fpga else None)
                pre = gpu.Prefill(worker_pb2.PrefillRequest(request_id=rid, prompt_token_ids=prompt,
                                                            sampling=sampling, target=target))
                steps = list((fpga if on_fpga else gpu).Decode(worker_pb2.DecodeRequest(
                    request_id=rid, first_token_id=pre.first_token_id, position=len(prompt), sampling=sampling)))
                tokens = [pre.first_token_id] + [s.token_id for s in steps]
                with torch.inference_mode():
                    expected = torch.log_softmax(engine.model(torch.tensor([prompt + tokens])).logits[0].float(), -1)
                records = [*pre.prompt_logprobs, pre.first_token_logprobs, *(s.logprobs for s in steps)]
                diffs = [abs(r.chosen.logprob - expected[i, r.chosen.token_id].item()) for i, r in enumerate(records)]
                top = max(abs(e.logprob - expected[i, e.token_id].item()) for i, r in enumerate(records) for e in r.top)
                where = "fpga (emulator, reference numerics)" if on_fpga else "gpu assist (host CPU, float32)"
                print(f"{len(prompt):3d} prompt + {len(tokens)} generated tokens, decode on {where}: max |diff| "
                      f"prompt {max(diffs[:len(prompt) - 1], default=0):.1e}, generated "
                      f"{max(diffs[len(prompt) - 1:]):.1e}, top-5 {top:.1e} nats")
    finally:
        gpu_server.stop(0)
        fpga_server.stop(0)


if __name__ == "__main__":
    main()
