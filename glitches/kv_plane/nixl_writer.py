"""Writes one request's K/V into a card's KV region with NIXL (transport nixl, any host the UCX backend reaches).

One NIXL agent per GPU-worker process (created on first use, no progress thread: see
glitches/kv_plane/nixl_loader.new_agent). Per transfer: the receiver's metadata (KvPlacement.nixl_agent_metadata,
which covers exactly the request's registered region) is loaded with add_remote_agent. Per layer:
- the layer is scattered at the ABI's offsets (kv_layout.KvRegion.write) into a staging buffer that
  holds ONE layer's slots of all 32 PCs (a layer's slots are one contiguous run per PC), taken from a
  per-process pool and registered with NIXL once, not per transfer;
- the 32 runs are WRITTEN in one transfer with the notification "<request id>:<layer>", by the
  writer's own poster thread, polling its state without a fixed sleep (a yield per poll, bounded by
  timeout_s);
- two staging buffers alternate, so the relayout of layer i + 1 (the caller's thread) overlaps the
  WRITE of layer i (the poster; UCX copies a host WRITE inside transfer(), with the GIL released).
write() returns the layers whose WRITE is DONE by then (their notices may go), flush() waits for
the rest; close() ends the poster and gives the buffers back to the pool, whatever happened.
The staging buffer is a one-layer KvRegion whose PCs are rotated: the layer's lane u lands in PC
(u + b) % 32, a one-layer plan puts it in PC (u - first_lane + b) % 32, so staging PC q is region PC
(q + first_lane) % 32.

Why a staging copy rather than WRITEs straight from the model's K/V: a 16-token block is the unit the
ABI rotates over PCs, so a direct WRITE needs one 4 KiB descriptor per block (6,144 per Llama-2-7B
layer); measured here that ran at 0.23 of NIXL's own one-descriptor rate, the staged, pipelined path
at 0.42-0.62 (docs/benchmarks.md, KV data plane Run 3). The staged runs also carry the region's unused
slots (room for decode's tokens): stale bytes of an earlier layer land there, which no reader sees
(reads stop at the tokens written, KvRegion.read) before decode writes those tokens. NIXL refuses a WRITE outside what the receiver had
registered when its metadata was loaded; loading it again for a later request merges the new regions into
what this agent holds (measured with nixl-cu12 1.5.1: a region the receiver deregistered still took a WRITE
afterwards), so NIXL bounds this sender by every region it was ever shown, not by the current reservation:
the descriptors come from the placement alone (_descriptors), and the receiver checks each notice against the
reservation. The receiver's metadata is loaded once per transfer and never removed: remove_remote_agent +
add_remote_agent left 2 sockets open per reconnect here (measured; nixl issue #2025 reports that
remove_remote_agent does not free UCX resources), so one connection per receiver lives as long as this process. CUDA tensors are copied to the host
first (registering GPU memory with NIXL directly is possible but not done here: untested, no GPU).

A partial transfer (write(..., start=h > 0): the card's region holds tokens [0, h) already, issue #27) must
not touch those tokens, so it cannot WRITE the layer's whole runs. The new tokens [h, stop) go into the
staging buffer at their own slots, and one descriptor per (PC, lane) covers exactly them: in one PC a lane's
blocks b, b + 32, b + 64... lie in consecutive slots, so its share of the span is one byte run, starting at
token h's row in the first block (a block the card holds in part) and ending after the last token's row
(`span_runs`). That is up to 32 x 2 x kv_heads descriptors per layer, and exactly the new tokens' bytes.
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid

import torch

from glitches.kv_plane import nixl_loader
from glitches.kv_plane.kv_abi import HBM_CHANNELS, KV_BLOCK_TOKENS
from glitches.kv_plane.kv_layout import K_KIND, KvPlan, KvRegion, region_view
from glitches.kv_plane.kv_wire import DTYPES
from glitches.services.runtime.errors import InvalidArgument, Unavailable

SPIN_S = 0.002  # seconds a WRITE's state is polled back to back (a GIL yield each) before polls sleep
POLL_S = 0.00005  # seconds slept per poll after that
POOL_IDLE = 4  # staging buffers of one size kept registered while unused (a writer uses 2)
_STOP = object()

_agent = None
_agent_lock = threading.Lock()
_pool: dict[int, list[tuple[torch.Tensor, object]]] = {}  # bytes -> idle (buffer, its registration)


def span_runs(plan: KvPlan, start: int, stop: int) -> list[tuple[int, int, int]]:
    """Tokens [start, stop) of one layer as (staging PC q, byte offset from the layer's first slot, bytes) runs,
    one per (PC, lane) that holds any of them; together exactly those tokens' K and V bytes, nothing else.

    Local lane l's block b lies in staging PC (l + b) % 32 at slot l * slots_per_lane + b // 32, so in one PC
    its blocks of the span (b, b + 32, ...) are consecutive slots: one run from the first one's row (start %
    16 in the span's first block) to the end of the last one's last row of the span."""
    row, spl = plan.head_dim * plan.element_bytes, plan.slots_per_lane
    first_block, last_block = start // KV_BLOCK_TOKENS, (stop - 1) // KV_BLOCK_TOKENS
    runs = []
    for lane in range(2 * plan.kv_heads):
        for block in range(first_block, min(last_block, first_block + HBM_CHANNELS - 1) + 1):
            last = block + (last_block - block) // HBM_CHANNELS * HBM_CHANNELS  # its last block of the span
            head_rows = start % KV_BLOCK_TOKENS if block == first_block else 0
            tail_rows = (stop - 1) % KV_BLOCK_TOKENS + 1 if last == last_block else KV_BLOCK_TOKENS
            begin = (lane * spl + block // HBM_CHANNELS) * plan.block_bytes + head_rows * row
            end = (lane * spl + last // HBM_CHANNELS) * plan.block_bytes + tail_rows * row
            runs.append(((lane + block) % HBM_CHANNELS, begin, end - begin))
    return runs


def local_agent():
    global _agent
    with _agent_lock:
        if _agent is None:
            _agent = nixl_loader.new_agent(f"glitches-gpu-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        return _agent


def _take_staging(size: int) -> tuple[torch.Tensor, object]:
    """A registered uint8 [size] buffer: an idle one of the pool, else a new one (registered once)."""
    with _agent_lock:
        idle = _pool.get(size)
        if idle:
            return idle.pop()
    buffer = torch.zeros(size, dtype=torch.uint8)  # zeros: its pages exist before the first WRITE
    return buffer, local_agent().register_memory(buffer)


def _give_staging(size: int, buffer: torch.Tensor, registration) -> None:
    with _agent_lock:
        idle = _pool.setdefault(size, [])
        if len(idle) < POOL_IDLE:
            idle.append((buffer, registration))
            return
    local_agent().deregister_memory(registration)


class NixlLayerWriter:
    def __init__(self, placement, request_id: str, timeout_s: float = 30.0):
        dtype = DTYPES.get(placement.dtype)
        if dtype is None:
            raise InvalidArgument(f"placement dtype {placement.dtype!r} is not one of {sorted(DTYPES)}")
        element = torch.finfo(dtype).bits // 8
        self.plan = KvPlan(placement.num_layers, placement.kv_heads, placement.head_dim,
                           placement.capacity_tokens, element)
        if self.plan.region_bytes_per_channel != placement.region_bytes_per_channel:
            raise InvalidArgument("placement: region size does not match its plan")
        self.placement, self.request_id, self.timeout_s = placement, request_id, timeout_s
        self.agent = local_agent()
        one_layer = KvPlan(1, placement.kv_heads, placement.head_dim, placement.capacity_tokens, element)
        self._run_bytes = one_layer.region_bytes_per_channel  # one layer's slots in one PC
        self._size = HBM_CHANNELS * self._run_bytes
        self._staging = [_take_staging(self._size) for _ in range(2)]  # (uint8 buffer, its registration)
        try:
            self._regions = [KvRegion(one_layer, dtype, region_view(buffer, self._run_bytes, 0, one_layer, dtype))
                             for buffer, _ in self._staging]
            with _agent_lock:  # one load at a time: concurrent loads of one peer have crashed UCX (LightLLM #1470)
                self.remote = self.agent.add_remote_agent(placement.nixl_agent_metadata)
        except BaseException:
            for buffer, registration in self._staging:
                _give_staging(self._size, buffer, registration)
            raise
        self.region = self._regions[0]
        self._free: queue.Queue = queue.Queue()  # staging indices no WRITE is using
        for index in range(2):
            self._free.put(index)
        self._posts: queue.Queue = queue.Queue()  # (layer, staging index, token span), then _STOP
        self._done: queue.Queue = queue.Queue()  # layers whose WRITE is DONE
        self._error: BaseException | None = None
        self._poster = threading.Thread(target=self._post_loop, name="kv-nixl-poster", daemon=True)
        self._poster.start()

    def _descriptors(self, layer: int, index: int, span: tuple[int, int] | None):
        """(local, remote) transfer lists: staging PC q's run -> region PC (q + first lane) % 32; the whole
        layer's runs (one per PC), or with `span` = (start, stop) only those tokens' runs (span_runs)."""
        first, _ = self.plan.layer_slots(layer)
        shift = self.plan.lane(layer, 0, K_KIND) % HBM_CHANNELS
        p, run, start = self.placement, self._run_bytes, self._staging[index][0].data_ptr()
        runs = [(q, 0, run) for q in range(HBM_CHANNELS)] if span is None else span_runs(self.plan, *span)
        layer_base = p.nixl_base_address + p.kv_offset + first * self.plan.block_bytes
        local = [(start + q * run + offset, size, 0) for q, offset, size in runs]
        remote = [(layer_base + (q + shift) % HBM_CHANNELS * p.channel_bytes + offset, size, 0)
                  for q, offset, size in runs]
        return self.agent.get_xfer_descs(local, "DRAM"), self.agent.get_xfer_descs(remote, "DRAM")

    def write(self, layer: int, key: torch.Tensor, value: torch.Tensor, ready=None, start: int = 0) -> list[int]:
        """Relayout one layer (key, value [1, kv_heads, seq, head_dim]: tokens [start, start + seq)) and queue its
        WRITE; returns the layers whose WRITE is DONE so far.

        start > 0 (a partial transfer: the card holds [0, start)) WRITEs only the given tokens' bytes (module
        docstring), never a byte of the held ones."""
        if not 0 <= layer < self.plan.num_layers:
            raise InvalidArgument(f"layer {layer} out of range 0..{self.plan.num_layers - 1}")
        if key.is_cuda:
            if ready is not None:
                ready.synchronize()
            key, value = key.cpu(), value.cpu()
        index = self._free.get()  # the poster always gives a buffer back, error or not
        self._raise()
        self._regions[index].write(0, start, key, value)  # the layer at the ABI's offsets, PCs rotated
        self._posts.put((layer, index, (start, start + key.shape[2]) if start else None))
        return self._finished()

    def flush(self) -> list[int]:
        """Wait for every queued WRITE; returns the layers finished since the last call."""
        self._posts.put(_STOP)
        self._poster.join()
        return self._finished()

    def _finished(self) -> list[int]:
        self._raise()
        layers = []
        while not self._done.empty():
            layers.append(self._done.get())
        return layers

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _post_loop(self) -> None:
        while True:
            item = self._posts.get()
            if item is _STOP:
                return
            layer, index, span = item
            try:
                if self._error is None:
                    self._write(layer, index, span)
                    self._done.put(layer)
            except BaseException as error:  # noqa: BLE001 - raised to the sender by write()/flush()
                self._error = error if isinstance(error, Unavailable) else Unavailable(
                    f"NIXL WRITE of layer {layer} failed: {error}")
            finally:
                self._free.put(index)

    def _write(self, layer: int, index: int, span: tuple[int, int] | None) -> None:
        local, remote = self._descriptors(layer, index, span)
        handle = self.agent.initialize_xfer("WRITE", local, remote, self.remote, f"{self.request_id}:{layer}".encode())
        try:
            state = self.agent.transfer(handle)  # UCX cma: the bytes are copied inside this call
            started = time.monotonic()
            while state != "DONE":
                waited = time.monotonic() - started
                if state == "ERR" or waited > self.timeout_s:
                    raise Unavailable(f"NIXL WRITE of layer {layer} failed ({state} after {waited:.3f} s)")
                time.sleep(0 if waited < SPIN_S else POLL_S)
                state = self.agent.check_xfer_state(handle)
        finally:
            self.agent.release_xfer_handle(handle)

    def close(self) -> None:
        """End the poster (after the WRITE in flight, if any) and give the staging buffers back."""
        if self._poster.is_alive():
            self._posts.put(_STOP)
            self._poster.join()
        for buffer, registration in self._staging:
            _give_staging(self._size, buffer, registration)
        self._staging = []
