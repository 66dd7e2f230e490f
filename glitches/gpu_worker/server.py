"""The GPU worker's gRPC servicer: protobuf in, engine call, protobuf out."""

from __future__ import annotations

import os

from glitches.decode_contract.sink import KvSink
from glitches.decode_contract.kv_intake_rpcs import KvIntakeRpcs
from glitches.gpu_worker.engine import GpuEngine
from glitches.kv_plane.host_identity import host_identity
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.kv_plane.prefix_index import DEFAULT_SALT
from glitches.kv_plane.transport import TransportChooser, kv_target, sender_transports
from glitches.services.runtime import metrics
from glitches.services.runtime.channels import WorkerStubs
from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument
from glitches.services.cluster.kv_holds import KvHolds, renew_rpc
from glitches.services.auth.kv_token import KvTokenVerifier
from glitches.services.generation.proto_convert import FINISH_TO_PROTO, logprob_to_proto, step_to_proto
from glitches.services.auth.request_auth import AuthBoundWorkerId, OpenAccess, RequestAuthVerifier
from glitches.services.generation.sampling import Sampling, check_sampling
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from glitches.services.auth.tls import PLAINTEXT, TlsConfig
from glitches.services.cluster.worker_caps import DECODE_CLASS_GPU, ROLE_ASSIST, ROLE_DECODE, ROLE_PREFILL, ordered_roles

MAX_CACHE_SALT_BYTES = 64  # PrefillRequest.cache_salt: the scheduler sends a 32-byte digest


class GpuWorkerServicer(AuthBoundWorkerId, KvIntakeRpcs, worker_pb2_grpc.WorkerServicer):
    """roles (services.worker_caps): prefill, assist (GPU assist) and decode (KV from another worker's prefill,
    through `intake`, glitches/gpu_worker/kv_intake.py, which the decode role needs)."""

    def __init__(self, engine: GpuEngine, worker_id: str, model_name: str, tls: TlsConfig = PLAINTEXT,
                 holds: KvHolds | None = None, auth: RequestAuthVerifier | OpenAccess | None = None,
                 roles: frozenset[str] = frozenset({ROLE_PREFILL, ROLE_ASSIST}), intake: KvSink | None = None,
                 kv_tokens: KvTokenVerifier | None = None):
        self.engine = engine
        self.roles = roles
        self.intake = intake  # with ROLE_DECODE: where received KV lands (may be wrapped for holds by the daemon)
        self.kv_tokens = kv_tokens  # None: KV transfers into this worker are unauthenticated
        if ROLE_DECODE in roles and intake is None:
            raise FailedPrecondition("a GPU worker with the decode role needs a KV intake")
        if intake is not None:
            settings = engine.settings
            self.setup_kv_intake(intake, "gpu", settings.kv_transport,
                                 (settings.kv_header_timeout_s, settings.kv_stall_timeout_s, settings.max_kv_streams),
                                 "gpu-worker")
        else:
            self.kv_transports, self.nixl = [], None
        # GPU-assist KV: freed when no scheduler renews it; the reaper releases through the engine
        self.holds = holds or KvHolds(3600.0, engine.release)
        self.auth = auth or OpenAccess()  # per-request authorisation of Prefill, Decode, Release, RenewKvHolds
        self.worker_id = worker_id
        self.model_name = model_name
        self._stubs = WorkerStubs(tls)  # to decode targets: mTLS when the worker has a certificate
        self.transports = TransportChooser(engine.settings.kv_transport, tls=tls.enabled)


    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        return self._stubs.get(address)

    def info(self) -> worker_pb2.InfoResponse:
        engine = self.engine
        held = self.holds.summary()
        pool = engine.pool
        return worker_pb2.InfoResponse(
            worker_id=self.worker_id, kind=common_pb2.DEVICE_KIND_GPU, backend=engine.device.split(":")[0],
            kind_name="gpu", roles=ordered_roles(self.roles),
            decode_class=DECODE_CLASS_GPU if ROLE_DECODE in self.roles else 0,
            emulated=engine.device == "cpu", device_name=_device_name(engine.device), model=self.model_name,
            slots=engine.settings.slots, active_requests=engine.active_requests(),
            kv_bytes_per_token=engine.kv_bytes_per_token, pid=os.getpid(),
            kv_transports=self.kv_transports or self._sends(),
            host_identity=host_identity(), shm_segment=self.shm_path(),
            nixl_agent=self.nixl.name if self.nixl is not None else "",
            kv_tokens_required=self.intake is not None and self.kv_tokens is not None, kv_held_bytes=held.kv_bytes,
            expiring_requests=held.expiring, kv_hold_ttl_s=self.holds.ttl_s,
            request_auth_required=isinstance(self.auth, RequestAuthVerifier),
            kv_capacity_bytes=pool.total_blocks * pool.block_bytes,
            kv_free_bytes=pool.free_blocks * pool.block_bytes, kv_free_blocks=pool.free_blocks,
            kv_cached_bytes=pool.evictable_blocks * pool.block_bytes,
            kv_block_tokens=KV_BLOCK_TOKENS, gpu_assist_requests=engine.requests.assist_active(),
            **_prefill_speed(engine.loop.prefill_speed.fit()))

    def _sends(self) -> list[str]:
        """What this worker sends KV with (its --kv-transport, or every one it can); Info lists it when the
        worker takes no KV (with the decode role Info lists what it accepts, which senders read)."""
        wanted = self.engine.settings.kv_transport
        return list(sender_transports()) if wanted == "auto" else [wanted]

    def Info(self, request, context):
        return self.info()

    def Prefill(self, request, context):
        if not request.request_id:
            raise InvalidArgument("request_id is empty")
        self.auth.check(request.auth_token, "prefill", request.request_id)
        if ROLE_PREFILL not in self.roles:
            raise FailedPrecondition(f"worker {self.worker_id} runs without the prefill role (--roles "
                                     f"{','.join(ordered_roles(self.roles))}); send Prefill to another GPU worker")
        if not request.target.address and ROLE_ASSIST not in self.roles:
            raise FailedPrecondition(f"worker {self.worker_id} runs without the assist role: it prefills only for "
                                     "a decode target (Prefill needs target.address)")
        if len(request.cache_salt) > MAX_CACHE_SALT_BYTES:
            raise InvalidArgument(f"cache_salt is {len(request.cache_salt)} bytes; at most {MAX_CACHE_SALT_BYTES}")
        sampling = Sampling.from_proto(request.sampling)
        check_sampling(sampling)
        if sampling.max_new_tokens < 1:
            raise InvalidArgument("sampling.max_new_tokens must be at least 1")
        held = request.target.held_prefix_tokens  # a partial transfer: the target holds KV of tokens [0, held)
        if held and held >= len(request.prompt_token_ids) + len(request.generated_token_ids):
            raise InvalidArgument(f"target.held_prefix_tokens ({held}) must be fewer than the prompt's tokens "
                                  "(prompt + generated): the last token's KV always goes")
        if held and not request.target.address:
            raise InvalidArgument("target.held_prefix_tokens needs a decode target (target.address)")
        target = self._stub(request.target.address) if request.target.address else None
        open_kv = None
        if target is not None:
            open_kv = kv_target(target, request.request_id, self.engine.num_layers, request.target.kv_token,
                                self.transports.choose(target), self.engine.settings.kv_transfer_timeout_s,
                                held,  # partial: only the KV the card lacks goes
                                list(request.prompt_token_ids) + list(request.generated_token_ids),
                                request.cache_salt or DEFAULT_SALT)  # as the engine's prefix cache and the cards
        result = self.engine.prefill(request.request_id, list(request.prompt_token_ids), sampling, open_kv,
                                     list(request.generated_token_ids), cancelled=lambda: not context.is_active(),
                                     cache_salt=request.cache_salt)
        if target is None and result.finish is None:  # GPU assist: the KV stays here, held until Decode or expiry
            tokens = len(request.prompt_token_ids) + len(request.generated_token_ids)
            self.holds.hold(request.request_id, tokens * self.engine.kv_bytes_per_token)
        metrics.PREFILL.observe(result.prefill_s)
        if target is not None:
            metrics.KV_SENT_BYTES.inc(result.kv_bytes)
            metrics.KV_REQUEST_BYTES.observe(result.kv_bytes)
            metrics.KV_TRANSFER.observe(result.kv_transfer_s)
            metrics.KV_EXPOSED.observe(result.kv_exposed_s)
        return worker_pb2.PrefillResponse(
            first_token_id=result.first_token_id, prefill_s=result.prefill_s, kv_bytes=result.kv_bytes,
            kv_exposed_s=result.kv_exposed_s, kv_transfer_s=result.kv_transfer_s,
            layers_received_before_prefill_end=result.layers_received_before_prefill_end,
            num_layers=result.num_layers, finish_reason=FINISH_TO_PROTO[result.finish],
            first_token_logprobs=logprob_to_proto(result.first_logprob) if result.first_logprob else None,
            prompt_logprobs=[logprob_to_proto(r) for r in result.prompt_logprobs],
            kv_transport=result.kv_transport, cached_tokens=result.cached_tokens)

    def WarmPrefix(self, request, context):
        if not request.request_id:
            raise InvalidArgument("request_id is empty")
        self.auth.check(request.auth_token, "warm", request.request_id)
        if ROLE_PREFILL not in self.roles:
            raise FailedPrecondition(f"worker {self.worker_id} runs without the prefill role; it keeps no prefix cache "
                                     "to warm")
        if len(request.cache_salt) > MAX_CACHE_SALT_BYTES:
            raise InvalidArgument(f"cache_salt is {len(request.cache_salt)} bytes; at most {MAX_CACHE_SALT_BYTES}")
        result = self.engine.warm(request.request_id, list(request.token_ids), request.cache_salt,
                                  cancelled=lambda: not context.is_active())
        return worker_pb2.WarmPrefixResponse(cached_tokens=result.cached_tokens, warmed_tokens=result.warmed_tokens,
                                             dropped=result.dropped)

    def _intake(self) -> KvSink:
        if self.intake is None:
            raise FailedPrecondition(f"worker {self.worker_id} runs without the decode role, so it takes no KV; "
                                     "send it to a decode worker (an FPGA, or a GPU worker with --roles decode)")
        return self.intake

    def Decode(self, request, context):
        self.auth.check(request.auth_token, "decode", request.request_id)
        sampling = Sampling.from_proto(request.sampling)
        check_sampling(sampling)
        generated = list(request.generated_token_ids) or [request.first_token_id]
        vocab = self.engine.config.vocab_size
        if max(generated) >= vocab:
            raise InvalidArgument(f"token id {max(generated)} (first_token_id / generated_token_ids) is outside "
                                  f"the vocabulary (size {vocab})")
        self.holds.begin_decode(request.request_id)  # FAILED_PRECONDITION when another Decode of it runs
        try:
            steps = self.engine.decode(request.request_id, generated, request.position, sampling,
                                       cancelled=lambda: not context.is_active())
            for step in steps:
                yield step_to_proto(step)
        finally:
            self.holds.end_decode(request.request_id)
            self.holds.forget(request.request_id)  # engine.decode frees the KV whenever its stream ends

    def Release(self, request, context):
        self.auth.check(request.auth_token, "release", request.request_id)
        self.holds.forget(request.request_id)
        if self.intake is not None:  # a transfer still streaming loses its way in before the blocks go
            self._unplace(request.request_id)
        # the intake frees what a transfer staged and the request's blocks; without it, the blocks alone
        release = self.intake.release if self.intake is not None else self.engine.release
        return worker_pb2.ReleaseResponse(released=release(request.request_id))

    def RenewKvHolds(self, request, context):
        return renew_rpc(self.holds, self.auth, request)

    def EvictCache(self, request, context):
        self.auth.check(request.auth_token, "evict", "")
        pool = self.engine.pool
        evicted, in_use = pool.evict_cache()  # the held publisher sends the evicted names within its interval
        self.engine.requests.on_change()  # the registry record's cached bytes drop now, not at the next beat
        return worker_pb2.EvictCacheResponse(evicted_blocks=evicted, evicted_bytes=evicted * pool.block_bytes,
                                             in_use_cached_bytes=in_use * pool.block_bytes)


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return "host CPU standing in for a GPU (no CUDA device)"


def _prefill_speed(fit: tuple[float, float]) -> dict:
    """Info's measured prefill fields from AffineSpeedMeter.fit(): (overhead s, tokens/s)."""
    overhead_s, tokens_per_s = fit
    return dict(prefill_overhead_s=overhead_s, prefill_tokens_per_s=tokens_per_s)
