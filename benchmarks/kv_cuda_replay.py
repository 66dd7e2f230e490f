"""The shm transport's CUDA path (issue #15): GPU tensors -> a card's HBM segment, checked and timed.

    PYTHONPATH=$PWD python3 benchmarks/kv_cuda_replay.py [--device cuda|cpu] [--repeats 3]

glitches/kv_plane/shm_writer.ShmLayerWriter as the GPU worker runs it, against a real segment
(glitches/kv_plane/hbm_segment.HbmSegment in /dev/shm, as an emulated card makes it), no cluster:
1. correctness: small layers (odd token counts, partial blocks) and one Llama-2-7B-shaped layer are
   written from `--device` tensors; every token read back from the segment (KvRegion.read) equals the
   source bit for bit;
2. bulk: 32 Llama-2-7B-shaped layers (32 KV heads x 128 x 1,536 tokens, float16: 25.2 MB of K + V per
   layer, 805 MB) written back to back: GB/s (the first transfer, which pins the segment on CUDA, is
   timed apart);
3. A100-paced replay: layer i is released at (i + 1) x 175.85 ms / 32 (the paper's A100 prefill of 1,536
   tokens) and written at once; exposed = the last write's end - 175.85 ms; exposed / prefill.
On CUDA the writer arranges each layer's blocks on the device and copies them device-to-host into the
pinned segment on its own stream; on the CPU it is the same scatter the bench kv_dataplane measures. Prints
one JSON object. Needs no Redis, gRPC server or model weights (the device machines have none of them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from glitches.fpga_worker.abi import HBM_CHANNELS
from glitches.kv_plane.hbm_segment import HbmSegment
from glitches.kv_plane.kv_layout import KvPlan, KvRegion, region_view
from glitches.kv_plane.shm_writer import ShmLayerWriter
from glitches.services.stubs.glitches.v1 import worker_pb2

A100_PREFILL_S = 0.17585  # Llama-2-7B, 1,536 tokens, one A100 (the paper's slides)
MiB = 1 << 20


def placement(segment: HbmSegment, channel_bytes: int, plan: KvPlan, kv_offset: int) -> worker_pb2.KvPlacement:
    return worker_pb2.KvPlacement(
        kv_transport="shm", kv_offset=kv_offset, channel_bytes=channel_bytes,
        region_bytes_per_channel=plan.region_bytes_per_channel, capacity_tokens=plan.capacity_tokens,
        num_layers=plan.num_layers, kv_heads=plan.kv_heads, head_dim=plan.head_dim, dtype="float16",
        shm_path=str(segment.path), shm_bytes=segment.size)


def segment_for(plan: KvPlan, kv_offset: int) -> tuple[HbmSegment, int]:
    """A sparse segment of 32 PCs just large enough for the region at kv_offset (whole MiB per PC)."""
    channel_bytes = -(-(kv_offset + plan.region_bytes_per_channel) // MiB) * MiB
    return HbmSegment(HBM_CHANNELS * channel_bytes, "kv-cuda-replay"), channel_bytes


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def check_layout(device: str) -> list[str]:
    """Write random K/V from `device` through the writer; every token read back must be bit-equal."""
    cases = [(2, 3, 64, 37, 40), (3, 5, 64, 100, 129), (1, 2, 128, 16, 16), (1, 32, 128, 1536, 1537)]
    results = []
    for layers, heads, dim, tokens, capacity in cases:
        plan = KvPlan(layers, heads, dim, capacity, 2)
        segment, channel_bytes = segment_for(plan, 4096)
        try:
            writer = ShmLayerWriter(placement(segment, channel_bytes, plan, 4096))
            sources = []
            for layer in range(layers):
                key, value = (torch.randn(1, heads, tokens, dim, device=device).to(torch.float16) for _ in range(2))
                ready = torch.cuda.Event() if device.startswith("cuda") else None
                if ready is not None:
                    ready.record()
                writer.write(layer, key, value, ready)
                sources.append((key.cpu(), value.cpu()))
            synchronize(device)
            readback = KvRegion(plan, torch.float16, region_view(segment.memory, channel_bytes, 4096, plan,
                                                                 torch.float16))
            for layer, (key, value) in enumerate(sources):
                got_k, got_v = readback.read(layer, tokens)  # float32 of the stored float16: exact
                if not (torch.equal(got_k, key[0].float()) and torch.equal(got_v, value[0].float())):
                    raise AssertionError(f"layer {layer} of {layers}x{heads}x{dim}, {tokens} tokens: bytes differ")
            results.append(f"{layers} layers x {heads} heads x {dim}, {tokens} tokens: equal")
        finally:
            segment.close()
    return results


def llama_layers(device: str, layers: int, tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    return [tuple(torch.randn(1, 32, tokens, 128, device=device).to(torch.float16) for _ in range(2))
            for _ in range(layers)]


def send(writer: ShmLayerWriter, kv, device: str, pace_s: float = 0.0) -> tuple[float, float]:
    """Write every layer (released every pace_s when pacing); (seconds from start to the last write, exposed)."""
    synchronize(device)
    started = time.perf_counter()
    for layer, (key, value) in enumerate(kv):
        if pace_s:
            time.sleep(max(0.0, started + (layer + 1) * pace_s - time.perf_counter()))
        ready = None
        if device.startswith("cuda"):
            ready = torch.cuda.Event()
            ready.record()
        writer.write(layer, key, value, ready)  # returns once the layer's bytes are in the segment
    done = time.perf_counter()
    return done - started, max(0.0, done - (started + len(kv) * pace_s))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=1536)
    args = parser.parse_args()
    out: dict = dict(device=args.device, torch=torch.__version__)
    if args.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
    out["layout"] = check_layout(args.device)
    plan = KvPlan(args.layers, 32, 128, args.tokens + 1, 2)
    kv = llama_layers(args.device, args.layers, args.tokens)
    payload = sum(2 * k.numel() * k.element_size() for k, _ in kv)
    segment, channel_bytes = segment_for(plan, 0)
    try:
        writer = ShmLayerWriter(placement(segment, channel_bytes, plan, 0))
        first, _ = send(writer, kv, args.device)  # CUDA: pins the segment (cudaHostRegister) and warms up
        bulk = [send(writer, kv, args.device)[0] for _ in range(args.repeats)]
        pace = A100_PREFILL_S / 32
        paced = [send(writer, kv, args.device, pace)[1] for _ in range(args.repeats)]
    finally:
        segment.close()
    prefill_s = A100_PREFILL_S * args.layers / 32
    exposed = statistics.median(paced)
    out.update(payload_mb=round(payload / 1e6, 1), segment_gib=round(segment.size / 2**30, 3),
               first_transfer_s=round(first, 4),
               bulk_gbps=[round(payload / s / 1e9, 2) for s in bulk],
               bulk_gbps_median=round(payload / statistics.median(bulk) / 1e9, 2),
               replay_exposed_ms=[round(e * 1e3, 2) for e in paced],
               replay_exposed_over_prefill=round(exposed / prefill_s, 4), goal="<= 0.05 with shm")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
