"""Request-path benchmarks, all measured in one run on one machine (ratios, since it is shared and noisy).

    .venv/bin/python -m benchmarks.request_path [--prompt-tokens 1536] [--repeats 3] [--quick]

--quick: a short run (128-token prompt, 1 repeat, 8 decode tokens) that tests/e2e/test_benchmarks_run.py uses.

1. kv_exposed_s / prefill_s on a long prompt (how much of the KV transfer prefill fails to hide).
2. TransferKV throughput into a live FPGA worker beside raw loopback TCP to another process.
3. Inter-token latency through the whole service path beside the same backend's decode step in-process.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import socket
import statistics
import time

import torch
from transformers import AutoConfig

from glitches import Client, Completion
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.kv_plane import kv_wire
from glitches.services.generation import models
from glitches.services.runtime.channels import insecure_channel, open_channel
from glitches.services.auth.kv_token import SECRET_ENV, KvTokenIssuer
from glitches.services.auth.request_auth import RequestAuthIssuer
from glitches.services.auth.tls import PLAINTEXT, TlsConfig
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc


def long_prompt(tokenizer, n_tokens: int) -> str:
    base = ("Heterogeneous serving puts prefill on GPUs and decode on FPGAs with high-bandwidth memory, "
            "streaming the KV cache between them while prefill is still running. ")
    ids = tokenizer(base * (n_tokens // 20 + 10))["input_ids"][:n_tokens]
    return tokenizer.decode(ids)


def kv_overlap(client: Client, prompt: str, repeats: int) -> dict:
    rows = []
    for _ in range(repeats):
        r = client.generate(prompt, max_tokens=4)
        rows.append((r.timings.kv_exposed_s / r.timings.prefill_s, r.timings.prefill_s, r.timings.kv_exposed_s,
                     r.timings.kv_bytes, len(r.prompt_token_ids), r.timings.layers_received_before_prefill_end))
    rows.sort()
    ratio, prefill_s, exposed_s, kv_bytes, tokens, layers = rows[len(rows) // 2]  # the median run
    return dict(ratio=ratio, prefill_s=prefill_s, exposed_s=exposed_s, kv_bytes=kv_bytes, tokens=tokens,
                layers_in_time=layers, all_ratios=[round(r[0], 4) for r in rows])


def _kv_messages(request_id: str, tokens: int, layers: int, heads: int, dim: int, kv_token: str = ""):
    k = torch.randn(1, heads, tokens, dim)
    chunks = [c for layer in range(layers) for c in kv_wire.layer_chunks(layer, k, k)]
    header = worker_pb2.KvHeader(request_id=request_id, prompt_tokens=tokens, reserve_tokens=tokens + 1,
                                 num_layers=layers, kv_token=kv_token)
    messages = [worker_pb2.KvChunk(header=header)] + [worker_pb2.KvChunk(layer=c) for c in chunks]
    messages.append(worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=layers)))
    payload = sum(len(c.key) + len(c.value) for c in chunks)
    return messages, payload, [len(c.key) + len(c.value) for c in chunks]


def transfer_kv_gbps(address: str, tokens: int, layers: int, heads: int, dim: int, repeats: int,
                     token_for=lambda request_id: "", release_auth_for=lambda request_id: "") -> tuple:
    """TransferKV straight into the worker; token_for(request_id) is the KV token the worker requires,
    release_auth_for(request_id) the scheduler's authorisation of the Release that frees it."""
    stub = worker_pb2_grpc.WorkerStub(insecure_channel(address))
    rates = []
    for i in range(repeats):
        messages, payload, sizes = _kv_messages(f"bench-{i}", tokens, layers, heads, dim, token_for(f"bench-{i}"))
        started = time.perf_counter()
        stub.TransferKV(iter(messages))
        rates.append(payload / (time.perf_counter() - started) / 1e9)
        stub.Release(worker_pb2.ReleaseRequest(request_id=f"bench-{i}", auth_token=release_auth_for(f"bench-{i}")))
    return statistics.median(rates), payload, sizes


def _tcp_sink(port_queue, total_bytes: int, repeats: int) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port_queue.put(server.getsockname()[1])
        for _ in range(repeats):
            conn, _ = server.accept()
            with conn:
                buf = bytearray(4 * 1024 * 1024)
                got = 0
                while got < total_bytes:
                    n = conn.recv_into(buf)
                    if n == 0:
                        break
                    got += n
                conn.sendall(b"k")


def raw_tcp_gbps(sizes: list[int], repeats: int) -> float:
    """Same chunk sizes over a plain loopback TCP socket to another process (which reads every byte)."""
    total = sum(sizes)
    chunks = [bytes(n) for n in set(sizes)]
    by_size = {len(c): c for c in chunks}
    ports = multiprocessing.Queue()
    sink = multiprocessing.Process(target=_tcp_sink, args=(ports, total, repeats), daemon=True)
    sink.start()
    port = ports.get(timeout=30)
    rates = []
    for _ in range(repeats):
        with socket.create_connection(("127.0.0.1", port)) as conn:
            started = time.perf_counter()
            for n in sizes:
                conn.sendall(by_size[n])
            conn.recv(1)
            rates.append(total / (time.perf_counter() - started) / 1e9)
    sink.join(timeout=10)
    return statistics.median(rates)


def _bytes_sink_server(port_queue, tls: TlsConfig = PLAINTEXT) -> None:
    """A bare gRPC server whose one client-streaming method takes raw bytes (no protobuf at all)."""
    import grpc
    from concurrent import futures

    from glitches.services.runtime.channels import MESSAGE_OPTIONS

    def consume(requests, _context):
        return sum(len(r) for r in requests).to_bytes(8, "little")

    server = grpc.server(futures.ThreadPoolExecutor(4), options=MESSAGE_OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "bench.Sink", {"Take": grpc.stream_unary_rpc_method_handler(consume)}),))
    bound = (server.add_secure_port("127.0.0.1:0", tls.server_credentials()) if tls.enabled
             else server.add_insecure_port("127.0.0.1:0"))
    port_queue.put(bound)
    server.start()
    server.wait_for_termination()


def raw_grpc_gbps(sizes: list[int], repeats: int, server_tls: TlsConfig = PLAINTEXT,
                  client_tls: TlsConfig = PLAINTEXT) -> float:
    """The same chunk sizes as bare bytes through gRPC Python to another process: the transport's ceiling
    (over TLS/mTLS when given the two sides' settings)."""
    ports = multiprocessing.Queue()
    sink = multiprocessing.Process(target=_bytes_sink_server, args=(ports, server_tls), daemon=True)
    sink.start()
    call = open_channel(f"127.0.0.1:{ports.get(timeout=30)}", client_tls).stream_unary("/bench.Sink/Take")
    payload = [bytes(n) for n in sizes]
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        call(iter(payload))
        rates.append(sum(sizes) / (time.perf_counter() - started) / 1e9)
    sink.kill()
    return statistics.median(rates)


def service_itl(client: Client, n_tokens: int) -> tuple[float, str]:
    arrivals, final = [], None
    for item in client.stream("Write a long story about a cat who learns to program FPGAs.", max_tokens=n_tokens,
                              chat=True):
        if isinstance(item, Completion):
            final = item
        elif item.token_ids:
            arrivals.extend([time.perf_counter()] * len(item.token_ids))
    gaps = [b - a for a, b in zip(arrivals[1:], arrivals[2:])]  # skip the gap after the first token
    return statistics.mean(gaps), final.decode_device


def in_process_step_s(source: models.ModelSource, threads: int, n_tokens: int) -> float:
    """The emu backend's decode step, called directly (no gRPC, no scheduler), after a local prefill."""
    from glitches.fpga_worker.emu_backend import EmulatedCard
    from transformers import DynamicCache

    card = EmulatedCard(source, 8 * 1024**3, threads)
    prompt = list(range(1000, 1040))
    cache = DynamicCache(config=card.model.config)
    with torch.inference_mode():
        logits = card.model(input_ids=torch.tensor([prompt]), use_cache=True,
                            **models.cache_kwargs(card.model, cache)).logits[0, -1]
    card.reserve("r", len(prompt) + n_tokens + 1)
    for layer in range(card.geometry().num_layers):
        card.write_kv("r", layer, 0, cache.layers[layer].keys, cache.layers[layer].values)
    card.seal("r", len(prompt))
    token, times = int(logits.argmax()), []
    for i in range(n_tokens):
        started = time.perf_counter()
        token = int(card.step("r", token, len(prompt) + i).argmax())
        times.append(time.perf_counter() - started)
    return statistics.mean(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-tokens", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="a short run: 128-token prompt, 1 repeat, 8 tokens")
    args = parser.parse_args()
    if args.quick:
        args.prompt_tokens, args.repeats, args.decode_tokens = 128, 1, 8
    source = models.resolve_model(models.DEFAULT_MODEL)
    tokenizer = models.load_tokenizer(source)
    # the TransferKV path's figures; no prefix cache: kv_overlap repeats one prompt and times its whole prefill
    spec = ClusterSpec(gpu_workers=1, fpga_workers=1, port=0, kv_transport="grpc", prefix_cache=False)
    # the same split LocalCluster gives each FPGA worker, so both sides of the ITL ratio use equal threads
    fpga_threads = max(1, (os.cpu_count() or 1) // (spec.gpu_workers + spec.fpga_workers))
    with LocalCluster(spec) as cluster, Client(cluster.address) as client:
        client.generate("warm up", max_tokens=4)
        overlap = kv_overlap(client, long_prompt(tokenizer, args.prompt_tokens), args.repeats)
        fpga = next(w for w in client.status().workers if w.kind == "fpga")
        cfg = AutoConfig.from_pretrained(source.path)
        secret = cluster.daemon_env[SECRET_ENV].encode()
        issuer = KvTokenIssuer(secret)  # the worker requires the scheduler's tokens
        auth = RequestAuthIssuer(secret)  # and its authorisation of the Release
        grpc_gbps, payload, sizes = transfer_kv_gbps(
            fpga.address, args.prompt_tokens, cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim,
            args.repeats, lambda request_id: issuer.issue(request_id, fpga.worker_id),
            lambda request_id: auth.issue("release", request_id, fpga.worker_id))
        tcp_gbps = raw_tcp_gbps(sizes, args.repeats)
        bare_grpc_gbps = raw_grpc_gbps(sizes, args.repeats)
        itl_s, device = service_itl(client, args.decode_tokens)
    step_s = in_process_step_s(source, fpga_threads, args.decode_tokens)
    print(f"| kv_exposed_s / prefill_s, {overlap['tokens']}-token prompt (median of {args.repeats}) | "
          f"{overlap['ratio']:.4f} (prefill {overlap['prefill_s']:.3f} s, exposed {overlap['exposed_s'] * 1e3:.2f} ms, "
          f"{overlap['kv_bytes'] / 1e6:.1f} MB, {overlap['layers_in_time']}/{cfg.num_hidden_layers} layers received "
          f"before prefill ended; all runs {overlap['all_ratios']}) | goal <= 0.05 |")
    print(f"| TransferKV GB/s beside raw loopback TCP ({payload / 1e6:.1f} MB, {len(sizes)} chunks) | "
          f"{grpc_gbps:.2f} vs {tcp_gbps:.2f} GB/s = {grpc_gbps / tcp_gbps:.2f} of raw | goal >= 0.5 |")
    print(f"| bare bytes through gRPC Python (no protobuf, no KV store), same chunks: the transport's ceiling | "
          f"{bare_grpc_gbps:.2f} GB/s = {bare_grpc_gbps / tcp_gbps:.2f} of raw TCP; TransferKV reaches "
          f"{grpc_gbps / bare_grpc_gbps:.2f} of it | - |")
    print(f"| inter-token latency via scheduler ({device} worker) beside in-process emu step "
          f"({fpga_threads} thread(s)) | {itl_s * 1e3:.2f} ms vs {step_s * 1e3:.2f} ms = {itl_s / step_s:.3f}x | "
          f"goal <= 1.10x |")


if __name__ == "__main__":
    main()
