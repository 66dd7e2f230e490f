"""The KV data plane (issue #15) on real in-process gRPC servers with a tiny random Llama: transport shm
(the GPU worker writes into the emulated card's HBM segment), TransferKVPlaced's checks, and the
bounds on every KV stream (issue #14 item 2: header deadline, stall limit, stream budget)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

from glitches.kv_plane import hbm_segment
from glitches.fpga_worker.emu_backend import EmulatedCard
from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.gpu_worker.engine import GpuEngine
from glitches.kv_plane.transport import TransportChooser
from glitches.gpu_worker.server import GpuWorkerServicer
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.services.generation import models
from glitches.kv_plane.host_identity import host_identity
from glitches.services.auth.kv_token import KvTokenIssuer, KvTokenVerifier
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from tests.worker_helpers import greedy_tokens, serve_worker

SECRET = b"k" * 32


@pytest.fixture(scope="module")
def cluster(tiny_source):
    engine = GpuEngine(GpuWorkerSettings(model=str(tiny_source.path), kv_transport="shm"), tiny_source)
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2, tag="fpga-dp")
    tokenizer = models.load_tokenizer(tiny_source)
    gpu_server, gpu = serve_worker(GpuWorkerServicer(engine, "gpu-dp", tiny_source.name))
    others = {}  # the same engine behind servicers that force the other transports
    for transport in ("nixl", "grpc"):
        servicer = GpuWorkerServicer(engine, f"gpu-{transport}", tiny_source.name)
        servicer.transports = TransportChooser(transport)
        others[transport] = serve_worker(servicer)
    fpga = FpgaWorkerServicer(card, tokenizer, "fpga-dp", tiny_source.name, 1, limits=(2.0, 3.0, 64))
    fpga_server, fpga_stub = serve_worker(fpga, max_workers=32 + 64)  # as fpga_worker.daemon sizes its pool
    yield dict(engine=engine, card=card, gpu=gpu, fpga=fpga_stub, servicer=fpga, tokenizer=tokenizer,
               fpga_address=f"127.0.0.1:{fpga_server.port}", shm=gpu, **{t: stub for t, (_, stub) in others.items()})
    gpu_server.stop(0)
    for server, _ in others.values():
        server.stop(0)
    fpga_server.stop(0)
    card.kv.close()


def _generate(cluster, rid, prompt, n, transport="shm"):
    target = worker_pb2.DecodeTarget(address=cluster["fpga_address"], worker_id="fpga-dp")
    pre = cluster[transport].Prefill(worker_pb2.PrefillRequest(
        request_id=rid, prompt_token_ids=prompt, sampling=common_pb2.SamplingParams(max_new_tokens=n),
        target=target))
    steps = cluster["fpga"].Decode(worker_pb2.DecodeRequest(
        request_id=rid, first_token_id=pre.first_token_id, position=len(prompt),
        sampling=common_pb2.SamplingParams(max_new_tokens=n)))
    return pre, [pre.first_token_id] + [s.token_id for s in steps]


def test_info_lists_transports_and_the_segment_is_private(cluster):
    info = cluster["fpga"].Info(worker_pb2.InfoRequest())
    assert list(info.kv_transports) == ["shm", "nixl", "grpc"] and info.host_identity == host_identity()
    assert info.nixl_agent.startswith("glitches-fpga-dp-")
    mode = os.stat(info.shm_segment).st_mode
    assert stat.S_IMODE(mode) == 0o600 and f"-{os.getpid()}-" in info.shm_segment
    assert list(cluster["gpu"].Info(worker_pb2.InfoRequest()).kv_transports) == ["shm"]


@pytest.mark.parametrize("transport, length", [("shm", 5), ("shm", 40), ("shm", 300), ("nixl", 7), ("nixl", 300),
                                               ("grpc", 300)])
def test_each_transport_then_fpga_decode_equals_transformers(cluster, transport, length):
    prompt = [(7 * i + 3) % 49000 + 10 for i in range(length)]
    pre, tokens = _generate(cluster, f"{transport}-{length}", prompt, 8, transport)
    assert pre.kv_transport == transport
    assert pre.kv_bytes == 2 * 2 * 2 * 16 * 4 * length  # K+V, 2 layers, 2 kv heads, head_dim 16, float32 on card
    assert tokens == greedy_tokens(cluster["engine"], prompt, 8)
    assert cluster["card"].active_requests() == [] and cluster["card"].kv_free_bytes() == cluster["card"].kv.capacity_bytes
    assert cluster["servicer"].nixl.registrations() == 0  # nothing stays registered with NIXL


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile
            pass
    return count


def _own_threads() -> int:
    """Threads besides the gRPC servers' pools (those grow to their max_workers as RPCs overlap: bounded, not a leak)."""
    return sum(not t.name.startswith("ThreadPoolExecutor") for t in threading.enumerate())


def test_many_nixl_transfers_leave_no_socket_thread_or_registration_behind(cluster):
    """The sender keeps one connection per receiver (a reconnect per transfer left 2 sockets open each time)."""
    _generate(cluster, "nixl-warm", list(range(10, 60)), 2, "nixl")
    sockets, threads = _open_sockets(), _own_threads()
    for i in range(12):
        prompt = list(range(10, 40 + 7 * i))
        assert _generate(cluster, f"nixl-many-{i}", prompt, 2, "nixl")[1] == greedy_tokens(cluster["engine"], prompt, 2)
    assert _open_sockets() <= sockets and _own_threads() <= threads
    assert cluster["servicer"].nixl.registrations() == 0 and cluster["card"].active_requests() == []


def test_concurrent_nixl_transfers_to_one_card_equal_transformers(cluster):
    """Four prefills stream to the same card at once, each loading the card's metadata for its own region."""
    prompts = [[(11 * i + j) % 400 + 10 for i in range(60 + 30 * j)] for j in range(4)]
    results: dict[int, list[int]] = {}

    def run(j):
        results[j] = _generate(cluster, f"nixl-concurrent-{j}", prompts[j], 4, "nixl")[1]

    threads = [threading.Thread(target=run, args=(j,)) for j in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [results.get(j) for j in range(4)] == [greedy_tokens(cluster["engine"], p, 4) for p in prompts]
    assert cluster["servicer"].nixl.registrations() == 0 and cluster["card"].active_requests() == []


def test_a_failed_nixl_write_fails_the_prefill_and_leaks_nothing(cluster, monkeypatch):
    from glitches.kv_plane import nixl_writer

    real = nixl_writer.NixlLayerWriter._write

    def fail_layer_1(self, layer, index, span):
        if layer == 1:
            raise nixl_writer.Unavailable("NIXL WRITE of layer 1 failed (test)")
        real(self, layer, index, span)

    monkeypatch.setattr(nixl_writer.NixlLayerWriter, "_write", fail_layer_1)
    with pytest.raises(grpc.RpcError) as info:
        _generate(cluster, "nixl-fails", list(range(10, 50)), 4, "nixl")
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE and "layer 1" in info.value.details()
    card = cluster["card"]
    deadline = time.monotonic() + 10
    while ((card.active_requests() or cluster["servicer"].nixl.registrations())
           and time.monotonic() < deadline):  # the receiver unplaces, then frees, once the stream ends
        time.sleep(0.05)
    assert card.active_requests() == [] and card.kv_free_bytes() == card.kv.capacity_bytes
    assert cluster["servicer"].nixl.registrations() == 0
    assert not [t for t in threading.enumerate() if t.name == "kv-nixl-poster"]  # the writer's poster ended
    assert all(len(idle) <= nixl_writer.POOL_IDLE for idle in nixl_writer._pool.values())
    monkeypatch.undo()
    prompt = [5, 6, 7, 8, 9]
    assert _generate(cluster, "nixl-after-fail", prompt, 4, "nixl")[1] == greedy_tokens(cluster["engine"], prompt, 4)


def test_a_failed_placed_stream_drops_its_way_in_before_its_blocks(cluster):
    """receive_placed's protocol: when a stream fails inside the receiver (here a WRITE that never landed),
    `unplace` (the NIXL deregistration) runs while the reservation is still held, and the release after it."""
    from glitches.decode_contract import kv_receiver
    from glitches.services.runtime.errors import InvalidArgument

    card, seen = cluster["card"], []

    def never_landed(request_id, layer, tokens):
        raise InvalidArgument("the WRITE never landed (test)")

    messages = iter([_header(rid="unplace-order", layers=card.geometry().num_layers), _note(0)])
    replies = kv_receiver.receive_placed(card, messages, None, lambda header, rid: worker_pb2.KvPlacement(),
                                         never_landed, lambda rid: seen.append(rid in card.active_requests()))
    assert next(replies).WhichOneof("body") == "placement"
    with pytest.raises(InvalidArgument):
        next(replies)
    assert seen == [True] and "unplace-order" not in card.active_requests()


def _header(rid="bad", prompt=4, reserve=8, layers=2, transport="shm", identity=None, token=""):
    return worker_pb2.KvPlacedControl(header=worker_pb2.KvHeader(
        request_id=rid, prompt_tokens=prompt, reserve_tokens=reserve, num_layers=layers, kv_token=token,
        kv_transport=transport, host_identity=host_identity() if identity is None else identity))


def _note(layer, start=0, tokens=4):
    return worker_pb2.KvPlacedControl(written=worker_pb2.KvWritten(layer=layer, seq_start=start, tokens=tokens))


END = worker_pb2.KvPlacedControl(end=worker_pb2.KvEnd(num_layers=2))
INVALID, PRECONDITION = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("messages, code", [
    ([_note(0)], INVALID),  # no header
    ([_header(transport="grpc")], PRECONDITION),  # grpc goes through TransferKV
    ([_header(transport="carrier-pigeon")], PRECONDITION),
    ([_header(identity="another-host")], PRECONDITION),  # shm from another host
    ([_header(), _note(2)], INVALID),  # layer out of range
    ([_header(), _note(0, start=2, tokens=4)], INVALID),  # beyond the prompt
    ([_header(prompt=4, reserve=4), _note(0, start=0, tokens=600)], INVALID),  # beyond the reservation
    ([_header(), _note(0, tokens=0)], INVALID),  # empty span
    ([_header(), _note(0), _note(0)], INVALID),  # the same tokens twice
    ([_header(), _note(0), END], INVALID),  # end before layer 1 was noticed (its bytes never written)
    ([_header(), _note(0), _note(1), END, END], INVALID),  # second end
    ([_header(), _header()], INVALID),  # second header
    ([_header(), _note(0), _note(1)], INVALID),  # no end marker
    ([_header(reserve=10**9)], grpc.StatusCode.RESOURCE_EXHAUSTED),  # does not fit the card
    ([_header(transport="nixl"), _note(0)], INVALID),  # a nixl notice whose WRITE never came
])
def test_bad_placed_streams_get_their_status_and_free_the_reservation(cluster, messages, code):
    card = cluster["card"]
    with pytest.raises(grpc.RpcError) as info:
        list(cluster["fpga"].TransferKVPlaced(iter(messages), timeout=10))
    assert info.value.code() == code, info.value.details()
    assert card.active_requests() == [] and card.kv_free_bytes() == card.kv.capacity_bytes
    assert cluster["servicer"].nixl.registrations() == 0
    _, tokens = _generate(cluster, "after-bad", [5, 6, 7, 8, 9], 4)  # the card serves the next request
    assert tokens == greedy_tokens(cluster["engine"], [5, 6, 7, 8, 9], 4)


def test_a_wrong_token_is_refused_before_anything_is_reserved(tiny_source):
    card = EmulatedCard(tiny_source, hbm_bytes=64 * 1024**2, tag="fpga-tok")
    servicer = FpgaWorkerServicer(card, models.load_tokenizer(tiny_source), "fpga-tok", tiny_source.name, 1,
                                  KvTokenVerifier(SECRET))
    server, stub = serve_worker(servicer)
    try:
        forged = KvTokenIssuer(b"x" * 32).issue("t1", "fpga-tok")
        for token in ("", forged, KvTokenIssuer(SECRET).issue("t1", "another-worker")):
            with pytest.raises(grpc.RpcError) as info:
                list(stub.TransferKVPlaced(iter([_header(rid="t1", token=token), _note(0), _note(1), END]),
                                           timeout=10))
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert card.active_requests() == [] and card.kv_free_bytes() == card.kv.capacity_bytes
        good = KvTokenIssuer(SECRET).issue("t1", "fpga-tok")
        replies = stub.TransferKVPlaced(iter([_header(rid="t1", token=good)]), timeout=10)
        assert next(replies).placement.shm_path == str(card.kv.segment.path)  # placed only once authorised
    finally:
        server.stop(0)
        card.kv.close()


def _idle_stream(stub, rpc, until: threading.Event):
    def nothing():
        until.wait()
        return
        yield  # a generator that sends no message until told to stop

    call = getattr(stub, rpc)
    try:
        result = call(nothing(), timeout=30)
        if rpc == "TransferKVPlaced":
            list(result)
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        return error.code()


def test_idle_streams_end_at_the_header_deadline_and_info_keeps_answering(cluster):
    """Issue #14: 40 idle TransferKV streams (no header) must not starve Info, and a real request completes."""
    stub, stop = cluster["fpga"], threading.Event()
    codes: list = []
    threads = [threading.Thread(target=lambda r=rpc: codes.append(_idle_stream(stub, r, stop)))
               for rpc in ["TransferKV", "TransferKVPlaced"] * 20]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    stub.Info(worker_pb2.InfoRequest(), timeout=5)
    assert time.monotonic() - t0 < 1.0
    pre, tokens = _generate(cluster, "beside-idle", [11, 12, 13, 14], 4)  # may wait out the budget, then runs
    assert tokens == greedy_tokens(cluster["engine"], [11, 12, 13, 14], 4)
    for thread in threads:
        thread.join(10)
    stop.set()
    assert time.monotonic() - started < 8
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 40  # each ended at the 2 s header deadline
    assert cluster["servicer"].kv_streams.active == 0 and cluster["card"].active_requests() == []


def test_streams_beyond_the_budget_are_refused_at_once(cluster, tiny_source):
    small = FpgaWorkerServicer(cluster["card"], cluster["tokenizer"], "fpga-dp", tiny_source.name, 1,
                               limits=(2.0, 0.5, 2))
    server, stub = serve_worker(small, max_workers=34)
    stop = threading.Event()
    try:
        holders = [threading.Thread(target=_idle_stream, args=(stub, "TransferKV", stop)) for _ in range(2)]
        for thread in holders:
            thread.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        assert _idle_stream(stub, "TransferKVPlaced", stop) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert time.monotonic() - t0 < 1.0
        for thread in holders:
            thread.join(10)
    finally:
        stop.set()
        server.stop(0)


def test_a_stream_that_stalls_after_its_header_is_ended_and_freed(cluster):
    gate = threading.Event()

    def stalls():
        yield _header(rid="stall")
        gate.wait(8)  # longer than the 3 s stall limit of this servicer

    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        list(cluster["fpga"].TransferKVPlaced(stalls(), timeout=10))
    gate.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "stalled" in info.value.details()
    assert time.monotonic() - started < 6
    assert cluster["card"].active_requests() == []


def test_dead_workers_segments_are_removed_at_start(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"glitches-hbm-{dead.pid}-0-fpga-0"
    live = tmp_path / f"glitches-hbm-{os.getpid()}-99-fpga-1"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    segment = hbm_segment.HbmSegment(1 << 20, "fpga-2", tmp_path)
    assert not stale.exists() and live.exists() and segment.path.exists()
    segment.close()
    assert not segment.path.exists()
