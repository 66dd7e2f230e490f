"""Writes one request's K/V into a card's KV region with NIXL (transport nixl, any host the UCX backend reaches).

One NIXL agent per GPU-worker process (created on first use). Per transfer: the receiver's
metadata (KvPlacement.nixl_agent_metadata, which covers exactly the request's registered region)
is loaded with add_remote_agent; a local staging buffer shaped like the region (32 PCs x
region_bytes_per_channel) is registered; each layer is scattered into it at the ABI's
offsets (kv_layout.KvRegion), then WRITTEN as 32 runs (a layer's slots are contiguous in every
PC) with the notification "<request id>:<layer>", and the call returns when the WRITE is DONE.
NIXL refuses a WRITE outside what the receiver registered, so the sender cannot reach past its
reservation even by mistake. CUDA tensors are copied to the host staging first (registering GPU
memory with NIXL directly is possible but not done here: untested, no GPU in this session).
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import torch

from fpga_worker.abi import HBM_CHANNELS
from fpga_worker.kv_layout import KvPlan, KvRegion, region_view
from services import nixl_loader
from services.errors import InvalidArgument, Unavailable
from services.kv_wire import DTYPES

_agent = None
_agent_lock = threading.Lock()


def local_agent():
    global _agent
    with _agent_lock:
        if _agent is None:
            _agent = nixl_loader.new_agent(f"glitches-gpu-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        return _agent


class NixlLayerWriter:
    def __init__(self, placement, request_id: str, timeout_s: float = 30.0):
        dtype = DTYPES.get(placement.dtype)
        if dtype is None:
            raise InvalidArgument(f"placement dtype {placement.dtype!r} is not one of {sorted(DTYPES)}")
        self.plan = KvPlan(placement.num_layers, placement.kv_heads, placement.head_dim,
                           placement.capacity_tokens, torch.finfo(dtype).bits // 8)
        if self.plan.region_bytes_per_channel != placement.region_bytes_per_channel:
            raise InvalidArgument("placement: region size does not match its plan")
        self.placement, self.request_id, self.timeout_s = placement, request_id, timeout_s
        self.agent = local_agent()
        region = self.plan.region_bytes_per_channel
        self.staging = torch.empty(HBM_CHANNELS * region, dtype=torch.uint8)
        self.region = KvRegion(self.plan, dtype, region_view(self.staging, region, 0, self.plan, dtype))
        self._registered = self.agent.register_memory(self.staging)
        self.remote = self.agent.add_remote_agent(placement.nixl_agent_metadata)

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor, ready=None) -> None:
        if key.is_cuda:
            if ready is not None:
                ready.synchronize()
            key, value = key.cpu(), value.cpu()
        self.region.write(layer, 0, key, value)  # scatter into the staging buffer at the ABI's offsets
        first, stop = self.plan.layer_slots(layer)
        block, region, p = self.plan.block_bytes, self.plan.region_bytes_per_channel, self.placement
        length = (stop - first) * block
        local = [(self.staging.data_ptr() + pc * region + first * block, length, 0) for pc in range(HBM_CHANNELS)]
        remote = [(p.nixl_base_address + pc * p.channel_bytes + p.kv_offset + first * block, length, 0)
                  for pc in range(HBM_CHANNELS)]
        handle = self.agent.initialize_xfer("WRITE", self.agent.get_xfer_descs(local, "DRAM"),
                                            self.agent.get_xfer_descs(remote, "DRAM"), self.remote,
                                            f"{self.request_id}:{layer}".encode())
        try:
            state = self.agent.transfer(handle)
            deadline = time.monotonic() + self.timeout_s
            while state != "DONE":
                if state == "ERR" or time.monotonic() > deadline:
                    raise Unavailable(f"NIXL WRITE of layer {layer} failed ({state})")
                time.sleep(0.00005)
                state = self.agent.check_xfer_state(handle)
        finally:
            self.agent.release_xfer_handle(handle)

    def close(self) -> None:
        self.agent.deregister_memory(self._registered)
