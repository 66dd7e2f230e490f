"""The FPGA worker's gRPC servicer: protobuf in, backend call, protobuf out."""

from __future__ import annotations

import os

from fpga_worker import kv_receiver
from fpga_worker.backend import DecodeBackend
from fpga_worker.kv_stream_limits import HEADER_TIMEOUT_S, STALL_TIMEOUT_S, StreamBudget, deadline_messages
from fpga_worker.settings import FpgaWorkerSettings
from services import grammar, metrics, models, nixl_loader
from services.decoding import decode_loop
from services.errors import FailedPrecondition, InvalidArgument
from services.host_identity import host_identity
from services.kv_holds import KvHolds, renew_rpc
from services.kv_token import KvTokenVerifier
from services.request_auth import OpenAccess, RequestAuthVerifier
from services.proto_convert import step_to_proto
from services.worker_caps import DECODE_CLASS_DEDICATED, ROLE_DECODE
from services.sampling import Sampling, check_sampling
from services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc


class FpgaWorkerServicer(worker_pb2_grpc.WorkerServicer):
    def __init__(self, backend: DecodeBackend, tokenizer, worker_id: str, model_name: str, slots: int,
                 kv_tokens: KvTokenVerifier | None = None, kv_transport: str = "auto",
                 limits: tuple[float, float, int] = (HEADER_TIMEOUT_S, STALL_TIMEOUT_S, 64),
                 holds: KvHolds | None = None, auth: RequestAuthVerifier | OpenAccess | None = None,
                 vocab_size: int = 0):
        """limits: (header deadline s, stall limit s, KV streams at once) of every KV stream."""
        self.holds = holds or KvHolds(3600.0, lambda request_id: None)  # the worker's record of what it holds
        self.backend = backend
        self.header_s, self.stall_s, max_streams = limits
        self.kv_streams = StreamBudget(max_streams)
        self.kv_transports = accepted_transports(backend, kv_transport)
        self.nixl = None  # fpga_worker.kv_nixl.NixlKvReceiver when nixl is accepted
        if "nixl" in self.kv_transports:
            from fpga_worker.kv_nixl import NixlKvReceiver

            self.nixl = NixlKvReceiver(backend.kv_memory(), worker_id or "fpga")
        self._placed_via: dict[str, str] = {}  # request id -> transport, while its TransferKVPlaced runs
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.slots = slots
        self.kv_tokens = kv_tokens  # None: KV transfers are unauthenticated (no secret configured)
        self.auth = auth or OpenAccess()  # per-request authorisation of Decode, Release, RenewKvHolds
        self.vocab_size = vocab_size or len(tokenizer)  # token ids a Decode may name: [0, vocab_size)
        self.worker_id = worker_id

    @property
    def worker_id(self) -> str:
        return self._worker_id

    @worker_id.setter
    def worker_id(self, value: str) -> None:
        self._worker_id = value
        self.auth.worker_id = value  # tokens are bound to this id

    def text_of(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def info(self) -> worker_pb2.InfoResponse:
        facts = self.backend.facts()
        return worker_pb2.InfoResponse(
            worker_id=self.worker_id, kind=common_pb2.DEVICE_KIND_FPGA, backend=facts.backend,
            kind_name="fpga", roles=[ROLE_DECODE], decode_class=DECODE_CLASS_DEDICATED,
            emulated=facts.emulated, device_name=facts.device_name, model=self.model_name, slots=self.slots,
            active_requests=len(self.backend.active_requests()), kv_capacity_bytes=facts.kv_capacity_bytes,
            kv_free_bytes=self.backend.kv_free_bytes(), kv_bytes_per_token=self.backend.geometry().bytes_per_token,
            pid=os.getpid(), kv_tokens_required=self.kv_tokens is not None, kv_transports=self.kv_transports,
            host_identity=host_identity(), shm_segment=self._shm_path(),
            nixl_agent=self.nixl.name if self.nixl is not None else "",
            kv_held_bytes=facts.kv_capacity_bytes - self.backend.kv_free_bytes(),
            expiring_requests=self.holds.summary().expiring, kv_hold_ttl_s=self.holds.ttl_s,
            request_auth_required=isinstance(self.auth, RequestAuthVerifier))

    def _shm_path(self) -> str:
        memory = self.backend.kv_memory() if "shm" in self.kv_transports else None
        return memory.shm_path if memory is not None else ""

    def Info(self, request, context):
        return self.info()

    def Prefill(self, request, context):
        raise FailedPrecondition("FPGA workers do not run prefill; send Prefill to a GPU worker")

    def _authorize(self, header: worker_pb2.KvHeader) -> None:
        if self.kv_tokens is not None:
            self.kv_tokens.check(header.kv_token, header.request_id, self.worker_id)

    def TransferKV(self, request_iterator, context):
        with self.kv_streams.slot():  # RESOURCE_EXHAUSTED at once beyond the budget
            messages = deadline_messages(request_iterator, self.header_s, self.stall_s)
            received = kv_receiver.receive(self.backend, messages, self._authorize)
        metrics.KV_RECEIVED_BYTES.inc(received.kv_bytes)
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
        memory, where = self.backend.kv_memory(), self.backend.placement(request_id)
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

    def _landed(self, request_id: str, layer: int, tokens: int) -> None:
        if self._placed_via.get(request_id) == "nixl":
            self.nixl.wait_written(request_id, layer)  # its WRITE's notification, or INVALID_ARGUMENT

    def TransferKVPlaced(self, request_iterator, context):
        with self.kv_streams.slot():
            placed: list[str] = []  # the request id, once reserved and placed

            def place(header: worker_pb2.KvHeader, request_id: str) -> worker_pb2.KvPlacement:
                placed.append(request_id)
                return self._place(header, request_id)

            messages = deadline_messages(request_iterator, self.header_s, self.stall_s)
            replies = kv_receiver.receive_placed(self.backend, messages, self._authorize, place, self._landed)
            try:
                for reply in replies:
                    if reply.WhichOneof("body") == "done":
                        metrics.KV_RECEIVED_BYTES.inc(reply.done.kv_bytes)
                    yield reply
            finally:
                replies.close()  # a sender that went away: the receiver releases the reservation
                for request_id in placed:  # whatever the outcome, no NIXL registration outlives its stream
                    self._placed_via.pop(request_id, None)
                    if self.nixl is not None:
                        self.nixl.deregister(request_id)

    def Decode(self, request, context):
        self.auth.check(request.auth_token, "decode", request.request_id)
        sampling = Sampling.from_proto(request.sampling)
        check_sampling(sampling)
        if sampling.max_new_tokens < 1:
            raise InvalidArgument("sampling.max_new_tokens must be at least 1")
        generated = list(request.generated_token_ids) or [request.first_token_id]
        if max(generated) >= self.vocab_size:
            raise InvalidArgument(f"token id {max(generated)} (first_token_id / generated_token_ids) is outside "
                                  f"the vocabulary (size {self.vocab_size})")
        request_id = request.request_id
        self.holds.begin_decode(request_id)  # FAILED_PRECONDITION when another Decode of it runs
        try:
            yield from self._decode(request, context, sampling, generated)
        finally:
            self.holds.end_decode(request_id)

    def _decode(self, request, context, sampling: Sampling, generated: list[int]):
        request_id = request.request_id
        latest = {"position": request.position}

        def step(token: int, position: int):
            latest["position"] = position
            return self.backend.step(request_id, token, position)

        try:
            constraint = grammar.constraint_for(sampling, self.tokenizer, generated)  # None without response_format
            # modeled: the card time the U280 timing model gives for a step over position + 1 tokens
            steps = decode_loop(step, generated, request.position, sampling, self.text_of,
                                cancelled=lambda: not context.is_active(),
                                modeled_s=lambda: self.backend.modeled_step_s(latest["position"] + 1),
                                constraint=constraint)
            for step in steps:
                yield step_to_proto(step)
        finally:
            self.backend.release(request_id)  # finished, failed or cancelled: the KV goes

    def Release(self, request, context):
        self.auth.check(request.auth_token, "release", request.request_id)
        return worker_pb2.ReleaseResponse(released=self.backend.release(request.request_id))

    def RenewKvHolds(self, request, context):
        return renew_rpc(self.holds, self.auth, request)


def backend_vocab(backend: DecodeBackend, tokenizer) -> int:
    """Token ids the card's logits cover: the model's vocab_size (emu: its config; w4a8/xrt: the weight image)."""
    model, image = getattr(backend, "model", None), getattr(backend, "image", None)
    if model is not None:
        return int(model.config.vocab_size)
    if image is not None:
        return int(image.dims.vocab)
    return len(tokenizer)


def accepted_transports(backend: DecodeBackend, wanted: str) -> list[str]:
    """The KV transports this worker takes, best first: grpc always; shm where the card's memory is a
    shared segment; nixl where the card exposes its KV memory and NIXL imports."""
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


def build_backend(settings: FpgaWorkerSettings, source: models.ModelSource) -> DecodeBackend:
    if settings.backend == "xrt":  # a card or a clear error; never the emulator in its place
        from fpga_worker.xrt_backend import XrtCard, open_pyxrt, weight_image_for

        pyxrt = open_pyxrt(settings.xilinx_xrt or None)
        return XrtCard(weight_image_for(source), pyxrt, settings.device, settings.xclbin, settings.hbm_bytes,
                       tag=settings.worker_id or "xrt")
    if settings.numerics == "w4a8":
        import torch

        from fpga_worker.w4a8_backend import W4A8EmulatedCard

        if settings.threads:
            torch.set_num_threads(settings.threads)
        return W4A8EmulatedCard.from_source(source, settings.hbm_bytes, tag=settings.worker_id or "fpga")
    from fpga_worker.emu_backend import EmulatedCard

    return EmulatedCard(source, settings.hbm_bytes, settings.threads, tag=settings.worker_id or "fpga")
