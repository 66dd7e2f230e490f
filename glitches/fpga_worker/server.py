"""The FPGA worker's gRPC servicer: protobuf in, backend call, protobuf out."""

from __future__ import annotations

import os

from glitches.decode_contract.device import DecodeBackend
from glitches.decode_contract.kv_intake_rpcs import KvIntakeRpcs
from glitches.fpga_worker.settings import FpgaWorkerSettings
from glitches.kv_plane.host_identity import host_identity
from glitches.kv_plane.kv_stream_limits import HEADER_TIMEOUT_S, STALL_TIMEOUT_S
from glitches.services.generation import grammar, models
from glitches.services.generation.decoding import decode_loop
from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument
from glitches.services.cluster.kv_holds import KvHolds, renew_rpc
from glitches.services.auth.kv_token import KvTokenVerifier
from glitches.services.generation.proto_convert import step_to_proto
from glitches.services.auth.request_auth import AuthBoundWorkerId, OpenAccess, RequestAuthVerifier
from glitches.services.generation.sampling import Sampling, check_sampling
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from glitches.services.cluster.worker_caps import DECODE_CLASS_DEDICATED, ROLE_DECODE


class FpgaWorkerServicer(AuthBoundWorkerId, KvIntakeRpcs, worker_pb2_grpc.WorkerServicer):
    def __init__(self, backend: DecodeBackend, tokenizer, worker_id: str, model_name: str, slots: int,
                 kv_tokens: KvTokenVerifier | None = None, kv_transport: str = "auto",
                 limits: tuple[float, float, int] = (HEADER_TIMEOUT_S, STALL_TIMEOUT_S, 64),
                 holds: KvHolds | None = None, auth: RequestAuthVerifier | OpenAccess | None = None,
                 vocab_size: int = 0):
        """limits: (header deadline s, stall limit s, KV streams at once) of every KV stream."""
        self.holds = holds or KvHolds(3600.0, lambda request_id: None)  # the worker's record of what it holds
        self.backend = backend
        self.setup_kv_intake(backend, worker_id or "fpga", kv_transport, limits)
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.slots = slots
        self.kv_tokens = kv_tokens  # None: KV transfers are unauthenticated (no secret configured)
        self.auth = auth or OpenAccess()  # per-request authorisation of Decode, Release, RenewKvHolds
        self.vocab_size = vocab_size or len(tokenizer)  # token ids a Decode may name: [0, vocab_size)
        self.worker_id = worker_id


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
            host_identity=host_identity(), shm_segment=self.shm_path(),
            nixl_agent=self.nixl.name if self.nixl is not None else "",
            kv_held_bytes=facts.kv_capacity_bytes - self.backend.kv_free_bytes(),
            expiring_requests=self.holds.summary().expiring, kv_hold_ttl_s=self.holds.ttl_s,
            request_auth_required=isinstance(self.auth, RequestAuthVerifier))

    def _intake(self) -> DecodeBackend:
        return self.backend  # already wrapped by the daemon (glitches/decode_contract/wrappers.py) before construction

    def Info(self, request, context):
        return self.info()

    def Prefill(self, request, context):
        raise FailedPrecondition("FPGA workers do not run prefill; send Prefill to a GPU worker")

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
        self._unplace(request.request_id)  # a transfer still streaming loses its way in before the blocks go
        return worker_pb2.ReleaseResponse(released=self.backend.release(request.request_id))

    def RenewKvHolds(self, request, context):
        return renew_rpc(self.holds, self.auth, request)


def backend_vocab(backend: DecodeBackend, tokenizer) -> int:
    """Token ids the card's logits cover: the model's vocab_size (emu: its config; w4a8/csim/xrt: the weight image)."""
    model, image = getattr(backend, "model", None), getattr(backend, "image", None)
    if model is not None:
        return int(model.config.vocab_size)
    if image is not None:
        return int(image.dims.vocab)
    return len(tokenizer)


def build_backend(settings: FpgaWorkerSettings, source: models.ModelSource) -> DecodeBackend:
    if settings.backend == "xrt":  # a card or a clear error; never the emulator in its place
        from glitches.fpga_worker.xrt_backend import XrtCard, weight_image_for

        return XrtCard(weight_image_for(source), settings.device, settings.xclbin, settings.hbm_bytes,
                       tag=settings.worker_id or "xrt", run_timeout_s=settings.run_timeout_s)
    if settings.numerics in ("w4a8", "csim"):
        import torch

        from glitches.fpga_worker.w4a8_backend import W4A8EmulatedCard

        if settings.threads:
            torch.set_num_threads(settings.threads)
        return W4A8EmulatedCard.from_source(source, settings.hbm_bytes, tag=settings.worker_id or "fpga",
                                            numerics=settings.numerics)
    from glitches.fpga_worker.emu_backend import EmulatedCard

    return EmulatedCard(source, settings.hbm_bytes, settings.threads, tag=settings.worker_id or "fpga")
