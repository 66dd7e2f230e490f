"""Bad TransferKV streams against the W4A8 emulated card and the xrt backend (real XRT, no-op shim):
the same status codes as the reference emulator (tests/test_worker_rpcs.py), the request's blocks released,
and the card still serving a good stream afterwards."""

from __future__ import annotations

import os

import grpc
import pytest

from glitches.fpga_worker.server import FpgaWorkerServicer
from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard
from glitches.fpga_worker.xclbin_meta import write_xclbin
from glitches.fpga_worker.xrt_backend import XrtCard, weight_image_for
from glitches.services.generation import models
from glitches.services.stubs.glitches.v1 import worker_pb2
from tests.worker_helpers import KV_END, kv_header, kv_layer, serve_worker, transfer
from tests.xrt_noop_env import noop_environment, require_xrt

HBM = 32 * 1024 * 1024
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.fixture(scope="module", params=["w4a8", "xrt"])
def card(request, tiny_source, tmp_path_factory):
    image = weight_image_for(tiny_source)
    saved = dict(os.environ)
    if request.param == "w4a8":
        backend = W4A8EmulatedCard(image, HBM)
    else:
        require_xrt()
        os.environ.update(noop_environment(tmp_path_factory.mktemp("xilinx_xrt")))  # XRT reads it once a process
        xclbin = write_xclbin(tmp_path_factory.mktemp("xclbin") / "decode.xclbin")
        backend = XrtCard(image, "0", str(xclbin), HBM)
    server, stub = serve_worker(FpgaWorkerServicer(backend, models.load_tokenizer(tiny_source), "fpga-t",
                                             tiny_source.name, 1))
    yield dict(backend=backend, stub=stub)
    server.stop(0)
    if request.param == "xrt":
        backend.close()  # XRT buffers, kernel, device and the staging segment
    os.environ.clear()
    os.environ.update(saved)


def _raw_layer(layer, dtype="float64"):
    chunk = kv_layer(layer)
    chunk.layer.dtype = dtype
    return chunk


@pytest.mark.parametrize("messages, code", [
    ([kv_layer(0)], INVALID),  # a chunk for no (unknown) request: no header
    ([kv_header(layers=3)], INVALID),  # wrong layer count
    ([kv_header(), kv_layer(5)], INVALID),  # layer out of range
    ([kv_header(), kv_layer(0, heads=3)], INVALID),  # wrong shape
    ([kv_header(), _raw_layer(0)], INVALID),  # wrong dtype
    ([kv_header(), kv_layer(0, start=6)], INVALID),  # beyond the reserved tokens
    ([kv_header(), kv_layer(0), kv_layer(1), KV_END, KV_END], INVALID),  # second end marker
    ([kv_header(), kv_layer(0), KV_END], INVALID),  # layer 1 missing
    ([kv_header(), kv_header()], INVALID),  # second header
    ([kv_header(), kv_layer(0), kv_layer(1)], INVALID),  # no end marker
    ([kv_header(reserve=10**9)], EXHAUSTED),  # does not fit in HBM
])
def test_bad_kv_streams_get_their_status_and_free_their_blocks(card, messages, code):
    backend, stub = card["backend"], card["stub"]
    capacity = backend.facts().kv_capacity_bytes
    with pytest.raises(grpc.RpcError) as info:
        transfer(stub, messages)
    assert info.value.code() == code, info.value.details()
    assert backend.active_requests() == [] and backend.kv_free_bytes() == capacity
    transfer(stub, [kv_header(rid="good"), kv_layer(0), kv_layer(1), KV_END])  # still serving
    assert backend.kv_free_bytes() < capacity
    assert stub.Release(worker_pb2.ReleaseRequest(request_id="good")).released
    assert backend.kv_free_bytes() == capacity
