"""TransferKV and TransferKVPlaced for every worker that decodes from KV another worker's prefill sent it.

The FPGA worker and a GPU worker with the decode role serve the same two RPCs through this one
mixin, so every decode target takes KV by the same transports (grpc, shm, nixl) under the same
checks. The servicer supplies:

    self._intake()        the decode_contract.sink.KvSink the KV lands in (reserve, write_kv,
                          mark_written, layer_landed, seal, release, kv_memory, placement, geometry)
    self.kv_tokens        services.kv_token.KvTokenVerifier, or None (transfers unauthenticated)
    self.worker_id        what KV tokens are bound to
    self.model_name       (optional) the root of its kept KV's hash chain; partial transfers (KvHeader.held_tokens)
                          adopt the sink's kept prefix through `adopt` (a sink without it keeps nothing)

and calls `setup_kv_intake` once in its constructor. Protocols: glitches/decode_contract/kv_receiver.py.
"""

from __future__ import annotations

from collections.abc import Callable

from glitches.decode_contract import kv_receiver
from glitches.decode_contract.sink import KvSink
from glitches.decode_contract.wrappers import KvHeld
from glitches.kv_plane import nixl_loader
from glitches.kv_plane.host_identity import host_identity
from glitches.kv_plane.prefix_index import root_hash
from glitches.kv_plane.kv_stream_limits import HEADER_TIMEOUT_S, STALL_TIMEOUT_S, StreamBudget, deadline_messages
from glitches.services.runtime import metrics
from glitches.services.runtime.errors import FailedPrecondition
from glitches.services.stubs.glitches.v1 import worker_pb2


def accepted_transports(backend: KvSink, wanted: str) -> list[str]:
    """The KV transports a decode target takes, best first: grpc always; shm where its KV memory is a
    shared segment; nixl where it exposes its KV memory and NIXL imports."""
    memory = backend.kv_memory()
    available = ["shm"] if memory is not None and memory.shm_path else []
    if memory is not None and nixl_loader.available():
        available.append("nixl")
    if wanted == "auto":
        return available + ["grpc"]
    if wanted != "grpc" and wanted not in available:
        raise FailedPrecondition(f"--kv-transport {wanted}: this backend cannot take KV that way "
                                 f"(available: {', '.join(available + ['grpc'])})")
    return ([wanted] if wanted != "grpc" else []) + ["grpc"]


class KvIntakeRpcs:
    def setup_kv_intake(self, backend: KvSink, nixl_tag: str, kv_transport: str = "auto",
                        limits: tuple[float, float, int] = (HEADER_TIMEOUT_S, STALL_TIMEOUT_S, 64),
                        metrics_role: str = "fpga-worker") -> None:
        """limits: (header deadline s, stall limit s, KV streams at once) of every KV stream; metrics_role: the
        services.metrics registry its KV gauges go to (the daemon's own, which its /metrics serves)."""
        self.header_s, self.stall_s, max_streams = limits
        self._kv_received = metrics.KV_RECEIVED_BYTES.of(metrics_role)
        self.kv_streams = StreamBudget(max_streams)
        self.kv_transports = accepted_transports(backend, kv_transport)
        self.nixl = None  # kv_plane.nixl_receiver.NixlKvReceiver when nixl is accepted
        if "nixl" in self.kv_transports:
            from glitches.kv_plane.nixl_receiver import NixlKvReceiver

            self.nixl = NixlKvReceiver(backend.kv_memory(), nixl_tag)
        self._placed_via: dict[str, str] = {}  # request id -> transport, while its TransferKVPlaced runs

    def _intake(self) -> KvSink:
        raise NotImplementedError

    def shm_path(self) -> str:
        """The segment a sender on this host maps (Info.shm_segment); "" when shm is not accepted."""
        memory = self._intake().kv_memory() if "shm" in self.kv_transports else None
        return memory.shm_path if memory is not None else ""

    def _authorize(self, header: worker_pb2.KvHeader) -> None:
        if self.kv_tokens is not None:
            self.kv_tokens.check(header.kv_token, header.request_id, self.worker_id, header.held_tokens)

    def _adopt_held(self, header: worker_pb2.KvHeader) -> Callable[[], None]:
        """A partial transfer's reservation: the kept KV of exactly prompt_token_ids[:held_tokens], else
        FAILED_PRECONDITION "prefix no longer held" with nothing reserved (kv_receiver.py). Returns the undo of a
        failed stream: the prefix is kept as cache again (released where the sink cannot keep it)."""
        backend, held = self._intake(), header.held_tokens
        adopt, model = getattr(backend, "adopt", None), getattr(self, "model_name", "")
        if adopt is None or not model or not getattr(self, "kv_retention", True):
            raise FailedPrecondition("prefix no longer held: this worker keeps no KV between requests; send the "
                                     "whole prompt's KV")
        # the lookup ends one token past the prefix, so adopt finds at most `held` and refuses fewer
        hold = {"receiving": True} if isinstance(backend, KvHeld) else {}  # held until sealed, as a reserve
        prefix, root = list(header.prompt_token_ids[:held + 1]), root_hash(model, header.cache_salt)
        adopt(header.request_id, prefix, root, header.reserve_tokens, held, **hold)

        def undo() -> None:
            give_back = getattr(backend, "return_adopted", None)
            if give_back is None or not give_back(header.request_id, prefix[:held], root):
                backend.release(header.request_id)

        return undo

    def TransferKV(self, request_iterator, context):
        backend = self._intake()
        with self.kv_streams.slot():  # RESOURCE_EXHAUSTED at once beyond the budget
            messages = deadline_messages(request_iterator, self.header_s, self.stall_s)
            received = kv_receiver.receive(backend, messages, self._authorize, self._adopt_held)
        self._kv_received.inc(received.kv_bytes)
        return worker_pb2.TransferKVResponse(kv_bytes=received.kv_bytes,
                                             layer_received_unix_s=received.layer_received_unix_s)

    def _place(self, header: worker_pb2.KvHeader, request_id: str) -> worker_pb2.KvPlacement:
        transport = header.kv_transport
        if transport not in self.kv_transports or transport == "grpc":
            raise FailedPrecondition(f"this worker takes KV by {', '.join(self.kv_transports)}; "
                                     f"TransferKVPlaced needs shm or nixl, got {transport or 'none'!r}")
        if transport == "shm" and header.host_identity != host_identity():
            raise FailedPrecondition("transport shm needs the sender on this worker's host (and /dev/shm); "
                                     "the sender's host identity differs: use nixl or grpc")
        backend = self._intake()
        memory, where = backend.kv_memory(), backend.placement(request_id)
        plan = where.plan
        placement = worker_pb2.KvPlacement(
            kv_transport=transport, kv_offset=where.kv_offset, channel_bytes=memory.channel_bytes,
            region_bytes_per_channel=plan.region_bytes_per_channel, capacity_tokens=plan.capacity_tokens,
            num_layers=plan.num_layers, kv_heads=plan.kv_heads, head_dim=plan.head_dim,
            dtype=str(where.dtype).removeprefix("torch."), shm_path=memory.shm_path,
            shm_bytes=memory.memory.numel())
        self._placed_via[request_id] = transport
        if transport == "nixl":  # exactly the request's region: NIXL refuses WRITEs anywhere else
            placement.nixl_agent_metadata = self.nixl.register(request_id, where.kv_offset,
                                                               plan.region_bytes_per_channel)
            placement.nixl_agent_name, placement.nixl_base_address = self.nixl.name, self.nixl.base_address
        return placement

    def _unplace(self, request_id: str) -> None:
        """Close the data plane's way into the request's region (idempotent): its NIXL registration goes."""
        self._placed_via.pop(request_id, None)
        if self.nixl is not None:
            self.nixl.deregister(request_id)

    def _landed(self, request_id: str, layer: int, tokens: int) -> None:
        if self._placed_via.get(request_id) == "nixl":
            self.nixl.wait_written(request_id, layer)  # its WRITE's notification, or INVALID_ARGUMENT

    def TransferKVPlaced(self, request_iterator, context):
        backend = self._intake()
        with self.kv_streams.slot():
            placed: list[str] = []  # the request id, once reserved and placed

            def place(header: worker_pb2.KvHeader, request_id: str) -> worker_pb2.KvPlacement:
                placed.append(request_id)
                return self._place(header, request_id)

            messages = deadline_messages(request_iterator, self.header_s, self.stall_s)
            replies = kv_receiver.receive_placed(backend, messages, self._authorize, place, self._landed,
                                                 self._unplace, self._adopt_held)
            try:
                for reply in replies:
                    if reply.WhichOneof("body") == "done":
                        self._kv_received.inc(reply.done.kv_bytes)
                    yield reply
            finally:
                # Whatever the outcome, no NIXL registration outlives its stream, and it goes first: once the
                # reservation is released its blocks can be reserved again, and a late WRITE of this sender
                # must not reach another request's KV. (A stream that failed inside the receiver already
                # unplaced before releasing: receive_placed's `unplace`.)
                for request_id in placed:
                    self._unplace(request_id)
                replies.close()  # a sender that went away: the receiver releases the reservation
