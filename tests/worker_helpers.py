"""What the worker tests share (instead of importing private helpers from one another's files):
an in-process gRPC server around a servicer (port 0), TransferKV messages, transformers' greedy
tokens as the reference a distributed path must equal, reading a daemon's HTTP side port, and registering
in-process workers in a real Redis registry (heartbeats)."""

from __future__ import annotations

import urllib.error
import urllib.request

import torch
from prometheus_client.parser import text_string_to_metric_families

from glitches.kv_plane import kv_wire
from glitches.services.cluster.registry import Heartbeat, Registry, WorkerRecord
from glitches.services.runtime.channels import insecure_channel
from glitches.services.runtime.grpc_server import RunningServer, start_server
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

WORKER_SERVICE = "glitches.v1.Worker"


def serve(servicer, add=worker_pb2_grpc.add_WorkerServicer_to_server, service: str = WORKER_SERVICE,
          max_workers: int = 32) -> RunningServer:
    """`servicer` on 127.0.0.1 at a free port (server.port); the caller stops it (server.stop(0))."""
    return start_server("127.0.0.1", 0, [(add, servicer)], (service,), max_workers=max_workers)


def serve_worker(servicer, max_workers: int = 32) -> tuple[RunningServer, worker_pb2_grpc.WorkerStub]:
    """A Worker servicer served as by serve(), and a stub on a plaintext channel to it."""
    server = serve(servicer, max_workers=max_workers)
    return server, worker_pb2_grpc.WorkerStub(insecure_channel(f"127.0.0.1:{server.port}"))


def kv_header(rid: str = "bad", prompt: int = 4, reserve: int = 8, layers: int = 2) -> worker_pb2.KvChunk:
    """A TransferKV header (no KV token) for `prompt` tokens, reserving `reserve`."""
    return worker_pb2.KvChunk(header=worker_pb2.KvHeader(request_id=rid, prompt_tokens=prompt,
                                                         reserve_tokens=reserve, num_layers=layers))


def kv_layer(layer: int, seq: int = 4, start: int = 0, heads: int = 2, dim: int = 16,
             dtype: torch.dtype = torch.float32) -> worker_pb2.KvChunk:
    """One TransferKV chunk of zero K and V [1, heads, seq, dim] for `layer`, at token `start`."""
    k = torch.zeros(1, heads, seq, dim, dtype=dtype)
    chunk = next(kv_wire.layer_chunks(layer, k, k))
    chunk.seq_start = start
    return worker_pb2.KvChunk(layer=chunk)


KV_END = worker_pb2.KvChunk(end=worker_pb2.KvEnd(num_layers=2))  # the end marker of a 2-layer model's stream


def transfer(stub: worker_pb2_grpc.WorkerStub, messages) -> worker_pb2.TransferKVResponse:
    return stub.TransferKV(iter(messages))


def greedy_tokens(engine, prompt: list[int], n: int) -> list[int]:
    """Exactly `n` tokens of transformers' greedy generate on the engine's own model (the reference)."""
    with torch.inference_mode():
        out = engine.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                    attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def get(url: str) -> tuple[int, str]:
    """(HTTP status, body) of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text -> {(sample name, sorted label pairs): value}."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def beat_workers(registry: Registry, servicers, addresses, kinds, interval_s: float = 0.5) -> list[Heartbeat]:
    """Register in-process workers (servicer, gRPC address, record kind) in `registry` and keep them beating
    every `interval_s`; the caller stops each Heartbeat after the test."""
    beats = []
    for servicer, address, kind in zip(servicers, addresses, kinds):
        def record(servicer=servicer, address=address, kind=kind):
            info = servicer.info()
            return WorkerRecord(worker_id=info.worker_id, kind=kind, backend=info.backend, emulated=1,
                                device_name=info.device_name, address=address, pid=info.pid, model=info.model,
                                slots=info.slots, kv_capacity_bytes=info.kv_capacity_bytes,
                                kv_free_bytes=info.kv_free_bytes, kv_bytes_per_token=info.kv_bytes_per_token,
                                kv_tokens_required=int(info.kv_tokens_required))
        beats.append(Heartbeat(registry, record, interval_s))
        beats[-1].start()
    return beats


def serve_gpu(tiny_source, prefix_cache: bool):
    """A GPU worker on the tiny model (4 slots, 64 tokens a step, 10 MiB of KV), prefix cache on or off, served
    in process: (engine, server, stub)."""
    from glitches.gpu_worker.engine import GpuEngine
    from glitches.gpu_worker.server import GpuWorkerServicer
    from glitches.gpu_worker.settings import GpuWorkerSettings

    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path), slots=4, max_batch_tokens=64,
                                         kv_cache_gib=0.01, prefix_cache=prefix_cache), tiny_source)
    server, stub = serve_worker(GpuWorkerServicer(engine, f"gpu-{prefix_cache}", tiny_source.name))
    return engine, server, stub
