"""The receiving side of transport nixl: the card's KV memory through a NIXL agent (UCX backend).

Per transfer (TransferKVPlaced with kv_transport "nixl"), after the token check and the
reservation: `register(request_id, ...)` registers exactly the request's region (its 32
per-PC ranges) and returns this agent's metadata, which travels to the sender in the
KvPlacement; the sender WRITEs each layer there with the notification "<request id>:<layer>".
A KvWritten notice is accepted only once that notification arrived (`wait_written`), so a
notice for bytes that were never written is refused. `deregister` runs when the stream ends,
whatever the outcome: no registration outlives its transfer.
"""

from __future__ import annotations

import os
import threading
import time

from fpga_worker.abi import HBM_CHANNELS
from fpga_worker.backend import KvMemory
from services import nixl_loader
from services.errors import InvalidArgument


class NixlKvReceiver:
    def __init__(self, memory: KvMemory, worker_tag: str):
        self.memory = memory
        self.name = f"glitches-{worker_tag}-{os.getpid()}"
        self.agent = nixl_loader.new_agent(self.name)
        self._registered: dict[str, object] = {}  # request id -> nixlRegDList
        self._arrived: set[bytes] = set()  # notifications not yet matched to a notice
        self._lock = threading.Lock()

    @property
    def base_address(self) -> int:
        return self.memory.memory.data_ptr()

    def register(self, request_id: str, kv_offset: int, region_bytes: int) -> bytes:
        """Register the request's region; returns the agent metadata the sender needs."""
        base, channel = self.base_address, self.memory.channel_bytes
        descs = [(base + pc * channel + kv_offset, region_bytes, 0, "") for pc in range(HBM_CHANNELS)]
        with self._lock:
            self._registered[request_id] = self.agent.register_memory(descs, "DRAM")
            return self.agent.get_agent_metadata()

    def deregister(self, request_id: str) -> None:
        with self._lock:
            registered = self._registered.pop(request_id, None)
            if registered is not None:
                self.agent.deregister_memory(registered)
            prefix = f"{request_id}:".encode()
            self._arrived = {n for n in self._arrived if not n.startswith(prefix)}

    def registrations(self) -> int:
        with self._lock:
            return len(self._registered)

    def wait_written(self, request_id: str, layer: int, timeout_s: float = 5.0) -> None:
        """Return once the sender's WRITE of this layer notified us; INVALID_ARGUMENT if it never does."""
        key = f"{request_id}:{layer}".encode()
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                for messages in self.agent.get_new_notifs().values():
                    self._arrived.update(messages)
                if key in self._arrived:
                    self._arrived.discard(key)
                    return
            if time.monotonic() > deadline:
                raise InvalidArgument(f"KV notice for layer {layer}, but no NIXL write of it arrived within "
                                      f"{timeout_s:g} s; notice a layer only after its WRITE completed")
            time.sleep(0.0002)
