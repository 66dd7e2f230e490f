"""The receiving side of transport nixl: the card's KV memory through a NIXL agent (UCX backend).

Per transfer (TransferKVPlaced with kv_transport "nixl"), after the token check and the
reservation: `register(request_id, ...)` registers exactly the request's region (its 32
per-PC ranges) and returns this agent's metadata, which travels to the sender in the
KvPlacement; the sender WRITEs each layer there with the notification "<request id>:<layer>".
A KvWritten notice is accepted only once that notification arrived (`wait_written`), so a
notice for bytes that were never written is refused. `deregister` runs when the stream ends,
whatever the outcome: no registration outlives its transfer.

The agent has no progress thread (glitches/kv_plane/nixl_loader.new_agent: it would spin a core forever).
Instead, while at least one region is registered, one poller thread calls get_new_notifs every
POLL_S and wakes the waiters of what arrived (a condition, no sleep-and-retry in wait_written);
it also keeps UCX's connection set-up moving, which a sender's first WRITE waits for. With no
registration the thread ends: an idle worker spends nothing on NIXL.
"""

from __future__ import annotations

import os
import threading
import time

from glitches.kv_plane import nixl_loader
from glitches.kv_plane.kv_abi import HBM_CHANNELS
from glitches.kv_plane.kv_types import KvMemory
from glitches.services.runtime.errors import InvalidArgument

POLL_S = 0.0001  # seconds between two get_new_notifs while a transfer is registered


class NixlKvReceiver:
    def __init__(self, memory: KvMemory, worker_tag: str):
        self.memory = memory
        self.name = f"glitches-{worker_tag}-{os.getpid()}"
        self.agent = nixl_loader.new_agent(self.name)
        self._registered: dict[str, object] = {}  # request id -> nixlRegDList
        self._arrived: set[bytes] = set()  # notifications not yet matched to a notice
        self._lock = threading.Lock()  # guards the agent and the two fields above
        self._changed = threading.Condition(self._lock)  # notified when notifications arrive
        self._poller: threading.Thread | None = None

    @property
    def base_address(self) -> int:
        return self.memory.memory.data_ptr()

    def register(self, request_id: str, kv_offset: int, region_bytes: int) -> bytes:
        """Register the request's region; returns the agent metadata the sender needs."""
        base, channel = self.base_address, self.memory.channel_bytes
        descs = [(base + pc * channel + kv_offset, region_bytes, 0, "") for pc in range(HBM_CHANNELS)]
        with self._lock:
            self._registered[request_id] = self.agent.register_memory(descs, "DRAM")
            if self._poller is None:
                self._poller = threading.Thread(target=self._poll, name="nixl-notifications", daemon=True)
                self._poller.start()
            return self.agent.get_agent_metadata()

    def _poll(self) -> None:
        while True:
            with self._lock:
                if not self._registered:
                    self._poller = None  # the next register starts a new one
                    return
                fresh = [m for messages in self.agent.get_new_notifs().values() for m in messages]
                if fresh:
                    self._arrived.update(fresh)
                    self._changed.notify_all()
            time.sleep(POLL_S)

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
        with self._lock:
            while key not in self._arrived:
                left = deadline - time.monotonic()
                if left <= 0 or request_id not in self._registered:
                    raise InvalidArgument(f"KV notice for layer {layer}, but no NIXL write of it arrived within "
                                          f"{timeout_s:g} s; notice a layer only after its WRITE completed")
                self._changed.wait(left)
            self._arrived.discard(key)
