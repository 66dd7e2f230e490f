"""KV data-plane benchmarks (issue #15), every figure a ratio of things measured in the same run.

    .venv/bin/python -m benchmarks.kv_dataplane [--quick] [--repeats 3] [--transports shm,nixl,grpc] [--no-smollm]

1. Bulk rate per transport into a live FPGA worker (emulated card, W4A8 numerics: float16 KV at the ABI's
   offsets) with Llama-2-7B-shaped layers (32 layers x 32 KV heads x 128 x 1,536 tokens, float16: 25.2 MB of
   K + V per layer, 805 MB per request), sent by the GPU worker's own senders (glitches/kv_plane/transport.py open_sender),
   beside a plain memcpy of the same bytes, the ABI relayout alone (KvRegion.write in one process), raw
   loopback TCP to another process, and NIXL's own two-process WRITE rate (UCX, host memory; both agents
   with and without NIXL's progress thread; the goal is against the faster), all in this run: each
   baseline is the median of samples taken before and after the transports, inside the same cluster.
2. A100-paced replay: the same sender releases layer i at (i + 1) x 175.85 ms / 32 (an A100's prefill of
   1,536 tokens, the paper's figure) into the live worker; exposed = reply - 175.85 ms; exposed / prefill.
3. kv_exposed_s / prefill_s on a 1,536-token SmolLM2-135M prompt through a whole cluster, per transport.

The live card's model is a random Llama with Llama-2-7B's KV geometry (hidden 256: its weights are not
the point, its KV shape is), so the card has room: 8 GiB of emulated HBM hold one 2,048-token region
(1.07 GB). --quick shrinks everything (4 layers, 256 tokens, 1 repeat, 128-token prompt, shm only for 3)
so that tests/e2e/test_benchmarks_run.py can run it.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.request_path import kv_overlap, long_prompt, raw_tcp_gbps
from glitches import Client
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.kv_plane import kv_copy_threads
from glitches.kv_plane.transport import open_sender
from glitches.services.generation import models
from glitches.services.runtime.channels import insecure_channel
from glitches.services.auth.kv_token import SECRET_ENV, KvTokenIssuer
from glitches.services.auth.request_auth import RequestAuthIssuer
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

A100_PREFILL_S = 0.17585  # Llama-2-7B, 1,536 tokens, one A100 (the paper's slides)


def llama7b_kv_model(directory: Path, layers: int) -> Path:
    """A random Llama whose KV per layer is Llama-2-7B's (32 KV heads x 128), saved with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=256, intermediate_size=256, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                         max_position_embeddings=4096, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(directory)
    default = models.resolve_model(models.DEFAULT_MODEL).path
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (default / name).exists():
            shutil.copy(default / name, directory / name)
    return directory


class LiveCard:
    """One FPGA worker (its own process) and what a sender needs to reach it: address, id, token issuer."""

    def __init__(self, cluster: LocalCluster):
        with Client(cluster.address) as client:
            worker = next(w for w in client.status().workers if w.kind == "fpga")
        self.address, self.worker_id = worker.address, worker.worker_id
        self.stub = worker_pb2_grpc.WorkerStub(insecure_channel(self.address))
        self.issuer = KvTokenIssuer(cluster.daemon_env[SECRET_ENV].encode())
        self.auth = RequestAuthIssuer(cluster.daemon_env[SECRET_ENV].encode())  # the Release's authorisation

    def send(self, transport: str, request_id: str, key: torch.Tensor, layers: int,
             pace_s: float = 0.0) -> tuple[float, float]:
        """Send `layers` layers (key as K and V); returns (GB/s over first put -> reply, exposed s past the pace)."""
        tokens = key.shape[2]
        header = worker_pb2.KvHeader(request_id=request_id, prompt_tokens=tokens, reserve_tokens=tokens + 1,
                                     num_layers=layers, kv_token=self.issuer.issue(request_id, self.worker_id))
        sender = open_sender(self.stub, header, 300.0, transport)
        started = time.perf_counter()
        for layer in range(layers):
            if pace_s:
                time.sleep(max(0.0, started + (layer + 1) * pace_s - time.perf_counter()))
            sender.put_layer(layer, key, key)
        sender.finish()
        done = time.perf_counter()
        self.stub.Release(worker_pb2.ReleaseRequest(
            request_id=request_id, auth_token=self.auth.issue("release", request_id, self.worker_id)))
        payload = 2 * key.numel() * key.element_size() * layers
        return payload / (done - started) / 1e9, max(0.0, done - (started + layers * pace_s))


def memcpy_gbps(key: torch.Tensor, layers: int, repeats: int, threads: int = 1) -> list[float]:
    """The same bytes copied by one plain memcpy per layer's K and V into a buffer already faulted in; with
    threads=2, K and V side by side as the relayout runs them (glitches/kv_plane/kv_copy_threads.run_pair)."""
    dst = torch.empty(layers * 2, *key.shape[1:], dtype=key.dtype)
    dst.zero_()
    nbytes = 2 * key.numel() * key.element_size()
    rates = []
    kv_copy_threads.configure(threads)
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for i in range(layers):
            kv_copy_threads.run_pair(lambda: dst[2 * i].copy_(key[0]), lambda: dst[2 * i + 1].copy_(key[0]), nbytes)
        rates.append(dst.numel() * dst.element_size() / (time.perf_counter() - started) / 1e9)
    return rates[1:]


def relayout_gbps(key: torch.Tensor, layers: int, repeats: int) -> list[float]:
    """The ABI relayout alone: every layer written by KvRegion.write into a private region (faulted in)."""
    from glitches.kv_plane.kv_layout import KvPlan, KvRegion

    region = KvRegion(KvPlan(layers, key.shape[1], key.shape[3], key.shape[2] + 1, key.element_size()), key.dtype)
    rates = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for layer in range(layers):
            region.write(layer, 0, key, key)
        rates.append(2 * key.numel() * key.element_size() * layers / (time.perf_counter() - started) / 1e9)
    return rates[1:]


def _nixl_target(queue, size: int, count: int, progress_thread: bool) -> None:
    from glitches.kv_plane import nixl_loader

    agent = nixl_loader.new_agent("bench-target", progress_thread)
    buf = torch.zeros(size, dtype=torch.uint8)
    agent.register_memory(buf)
    queue.put((agent.get_agent_metadata(), buf.data_ptr()))
    got = 0
    while got < count:
        got += sum(len(m) for m in agent.get_new_notifs().values())
        time.sleep(0.0005)
    queue.put("done")


def nixl_two_process_gbps(layer_bytes: int, layers: int, repeats: int, progress_thread: bool) -> list[float]:
    """NIXL's own WRITE rate between two processes here: one registered buffer, one WRITE per layer, a spinning
    poll; both agents with or without NIXL's progress thread."""
    from glitches.kv_plane import nixl_loader

    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    target = ctx.Process(target=_nixl_target, args=(queue, layer_bytes * layers, layers * (repeats + 1),
                                                    progress_thread))
    target.start()
    metadata, address = queue.get(timeout=120)
    agent = nixl_loader.new_agent(f"bench-initiator-{int(progress_thread)}", progress_thread)
    src = torch.ones(layer_bytes * layers, dtype=torch.uint8)
    agent.register_memory(src)
    remote = agent.add_remote_agent(metadata)
    rates = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        for i in range(layers):
            local = agent.get_xfer_descs([(src.data_ptr() + i * layer_bytes, layer_bytes, 0)], "DRAM")
            far = agent.get_xfer_descs([(address + i * layer_bytes, layer_bytes, 0)], "DRAM")
            handle = agent.initialize_xfer("WRITE", local, far, remote, b"layer")
            state = agent.transfer(handle)
            while state != "DONE":
                if state == "ERR":
                    raise RuntimeError("NIXL WRITE failed")
                state = agent.check_xfer_state(handle)
            agent.release_xfer_handle(handle)
        rates.append(layer_bytes * layers / (time.perf_counter() - started) / 1e9)
    queue.get(timeout=60)
    target.join(timeout=30)
    return rates[1:]


def baselines(samples: dict[str, list[float]], key: torch.Tensor, layers: int, repeats: int, nixl: bool) -> None:
    """Add one round of every baseline's samples (GB/s); run before and after the transports, so that the
    load other processes put on the machine weighs on both sides of each ratio alike."""
    layer_bytes = 2 * key.numel() * key.element_size()
    threads = kv_copy_threads.threads()
    samples.setdefault("memcpy", []).extend(memcpy_gbps(key, layers, repeats, 1))
    samples.setdefault("memcpy-2", []).extend(memcpy_gbps(key, layers, repeats, 2))
    kv_copy_threads.configure(threads)
    samples.setdefault("relayout", []).extend(relayout_gbps(key, layers, repeats))
    samples.setdefault("tcp", []).append(raw_tcp_gbps([layer_bytes] * layers, repeats))
    for thread in (False, True) if nixl else ():
        samples.setdefault(f"nixl-{thread}", []).extend(nixl_two_process_gbps(layer_bytes, layers, repeats, thread))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a short run (tests): small layers, 1 repeat")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--transports", default="shm,nixl,grpc")
    parser.add_argument("--prompt-tokens", type=int, default=1536)
    parser.add_argument("--copy-threads", type=int, default=kv_copy_threads.DEFAULT_THREADS,
                        help="threads of the senders' relayout (the workers' --kv-copy-threads), 1 or 2")
    parser.add_argument("--no-smollm", action="store_true", help="skip part 3 (one SmolLM2 cluster per transport)")
    args = parser.parse_args()
    # One intra-op thread, as the senders' writer threads effectively run: with two, every large copy on this
    # thread is split over an OpenMP team, and on 2 cores shared with other load that team waits on its
    # preempted half (measured: memcpy 1.0-1.1 GB/s with two threads on the main thread, 6.8-7.2 with one).
    torch.set_num_threads(1)
    kv_copy_threads.configure(args.copy_threads)
    transports = args.transports.split(",")
    layers, tokens, repeats = (4, 256, 1) if args.quick else (32, 1536, args.repeats)
    prompt_tokens = 128 if args.quick else args.prompt_tokens
    key = torch.randn(1, 32, tokens, 128).to(torch.float16)  # one layer's K (sent as K and V): 25.2 MB of K + V
    layer_bytes = 2 * key.numel() * key.element_size()
    rows = []
    with tempfile.TemporaryDirectory(prefix="kv-bench-") as tmp:
        model_dir = llama7b_kv_model(Path(tmp) / "llama7b-kv", layers)
        spec = ClusterSpec(gpu_workers=0, fpga_workers=1, model=str(model_dir), port=0, fpga_numerics="w4a8",
                           fpga_hbm_bytes=8 * 1024**3,
                           extra_env={"GLITCHES_KV_COPY_THREADS": str(args.copy_threads)})
        with LocalCluster(spec) as cluster:
            card = LiveCard(cluster)
            samples: dict[str, list[float]] = {}  # baseline -> GB/s, measured before and after the transports
            baselines(samples, key, layers, repeats, "nixl" in transports)
            bulk, replay = {}, {}
            for transport in transports:
                card.send(transport, f"warm-{transport}", key, layers)  # maps, registers, faults pages once
                bulk[transport] = statistics.median(
                    card.send(transport, f"bulk-{transport}-{i}", key, layers)[0] for i in range(repeats))
                pace = A100_PREFILL_S / 32
                replay[transport] = statistics.median(
                    card.send(transport, f"paced-{transport}-{i}", key, layers, pace)[1] for i in range(repeats))
            baselines(samples, key, layers, repeats, "nixl" in transports)
        copy, copy2, relayout, tcp = (statistics.median(samples[name])
                                      for name in ("memcpy", "memcpy-2", "relayout", "tcp"))
        own = {thread: statistics.median(samples[f"nixl-{thread}"]) for thread in (False, True)
               if f"nixl-{thread}" in samples}
        nixl_own = max(own.values(), default=0.0)  # the goal is measured against NIXL's better configuration
    size = f"{layers} layers x {layer_bytes / 1e6:.1f} MB"
    rows.append(f"| plain memcpy, same bytes ({size}), one thread | {copy:.2f} GB/s | - |")
    rows.append(f"| plain memcpy, K and V on two threads | {copy2:.2f} GB/s = {copy2 / copy:.2f} of memcpy | - |")
    rows.append(f"| ABI relayout alone (KvRegion.write, one process, {args.copy_threads} thread(s)) | {relayout:.2f} GB/s "
                f"= {relayout / copy:.2f} of memcpy, {relayout / copy2:.2f} of two-thread memcpy | - |")
    rows.append(f"| raw loopback TCP to another process, same bytes | {tcp:.2f} GB/s = {tcp / copy:.2f} of memcpy | - |")
    for thread, rate in own.items():
        rows.append(f"| NIXL's own two-process WRITE (UCX), same bytes, progress thread {'on' if thread else 'off'} "
                    f"| {rate:.2f} GB/s = {rate / copy:.2f} of memcpy | - |")
    for transport in transports:
        rate = bulk[transport]
        extra = f"; {rate / nixl_own:.2f} of NIXL's own (faster config)" if transport == "nixl" and nixl_own else ""
        goal = {"shm": ">= 0.5 of memcpy", "nixl": ">= 0.8 of NIXL's own"}.get(transport, "-")
        rows.append(f"| bulk `{transport}` into a live FPGA worker | {rate:.2f} GB/s = {rate / copy:.2f} of memcpy, "
                    f"{rate / copy2:.2f} of two-thread memcpy, "
                    f"{rate / relayout:.2f} of the relayout, {rate / tcp:.2f} of raw TCP{extra} | {goal} |")
    for transport in transports:
        exposed = replay[transport]
        rows.append(f"| A100-paced replay ({layers} layers every {A100_PREFILL_S / 32 * 1e3:.2f} ms), `{transport}`: "
                    f"exposed / prefill | {exposed / (A100_PREFILL_S * layers / 32):.3f} (exposed "
                    f"{exposed * 1e3:.1f} ms) | <= 0.05 with shm |")
    smol = [] if args.no_smollm else transports if not args.quick else ["shm"]
    source = models.resolve_model(models.DEFAULT_MODEL)
    tokenizer = models.load_tokenizer(source)
    for transport in smol:
        with LocalCluster(ClusterSpec(gpu_workers=1, fpga_workers=1, port=0, kv_transport=transport)) as cluster, \
                Client(cluster.address, timeout_s=600) as client:
            client.generate("warm up", max_tokens=2)
            o = kv_overlap(client, long_prompt(tokenizer, prompt_tokens), repeats)
        rows.append(f"| SmolLM2 {o['tokens']}-token prompt, `{transport}`: kv_exposed_s / prefill_s (median of "
                    f"{repeats}) | {o['ratio']:.4f} (prefill {o['prefill_s']:.3f} s, exposed "
                    f"{o['exposed_s'] * 1e3:.2f} ms, {o['kv_bytes'] / 1e6:.1f} MB) | <= 0.05 |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
