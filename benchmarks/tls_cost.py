"""What TLS and mTLS cost on the request path, measured beside plaintext in one run (ratios: shared machine).

    .venv/bin/python -m benchmarks.tls_cost [--prompt-tokens 1536] [--repeats 5]

1. Bare bytes through gRPC Python to another process, the chunk sizes of one prompt's KV stream:
   plaintext vs mTLS GB/s (the transport's ceiling for the KV link).
2. Two local clusters (1 GPU + 1 emulated FPGA worker each), plaintext then mTLS on every link: the same
   long prompt, median TTFT, exposed KV / prefill, and decode tokens/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from transformers import AutoConfig

from benchmarks.request_path import _kv_messages, long_prompt, raw_grpc_gbps
from glitches import Client
from glitches.certs import make_certs
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.generation import models
from glitches.services.auth.tls import TlsConfig


def role(folder: Path, name: str) -> TlsConfig:
    return TlsConfig(ca=str(folder / "ca.pem"), cert=str(folder / f"{name}.pem"), key=str(folder / f"{name}-key.pem"))


def cluster_figures(tls_dir: str, prompt: str, repeats: int) -> dict:
    with LocalCluster(ClusterSpec(gpu_workers=1, fpga_workers=1, port=0, tls_dir=tls_dir)) as cluster, \
            Client(cluster.address, tls=cluster.client_tls()) as client:
        client.generate("warm up", max_tokens=4)
        runs = [client.generate(prompt, max_tokens=16) for _ in range(repeats)]
    assert all(r.decode_device == "fpga" for r in runs), [r.decode_device for r in runs]
    return dict(ttft_s=statistics.median(r.timings.ttft_s for r in runs),
                exposed=statistics.median(r.timings.kv_exposed_s / r.timings.prefill_s for r in runs),
                tokens_per_s=statistics.median(r.timings.tokens_per_s for r in runs),
                tokens=len(runs[0].prompt_token_ids), kv_mb=runs[0].timings.kv_bytes / 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    source = models.resolve_model(models.DEFAULT_MODEL)
    cfg = AutoConfig.from_pretrained(source.path)
    folder = Path(tempfile.mkdtemp(prefix="glitches-tls-bench-"))
    make_certs(folder, ("gpu-worker", "fpga-worker", "scheduler", "client"))
    _, payload, sizes = _kv_messages("sizes", args.prompt_tokens, cfg.num_hidden_layers, cfg.num_key_value_heads,
                                     cfg.head_dim)
    plain_gbps = raw_grpc_gbps(sizes, args.repeats)
    mtls_gbps = raw_grpc_gbps(sizes, args.repeats, role(folder, "fpga-worker"), role(folder, "gpu-worker"))
    prompt = long_prompt(models.load_tokenizer(source), args.prompt_tokens)
    plain = cluster_figures("", prompt, args.repeats)
    mtls = cluster_figures(str(folder), prompt, args.repeats)
    print(f"| bare bytes through gRPC Python, {payload / 1e6:.1f} MB in {len(sizes)} chunks (median of "
          f"{args.repeats}) | plaintext {plain_gbps:.2f} GB/s, mTLS {mtls_gbps:.2f} GB/s = "
          f"{mtls_gbps / plain_gbps:.2f} of plaintext |")
    print(f"| TTFT, {plain['tokens']}-token prompt, {plain['kv_mb']:.1f} MB of KV (median of {args.repeats}) | "
          f"plaintext {plain['ttft_s']:.3f} s, mTLS {mtls['ttft_s']:.3f} s = {mtls['ttft_s'] / plain['ttft_s']:.3f}x |")
    print(f"| kv_exposed_s / prefill_s | plaintext {plain['exposed']:.4f}, mTLS {mtls['exposed']:.4f} |")
    print(f"| decode tokens/s (emulated FPGA) | plaintext {plain['tokens_per_s']:.1f}, mTLS "
          f"{mtls['tokens_per_s']:.1f} = {mtls['tokens_per_s'] / plain['tokens_per_s']:.3f}x |")


if __name__ == "__main__":
    main()
