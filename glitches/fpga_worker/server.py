"""The FPGA worker's gRPC servicer: protobuf in, backend call, protobuf out.

KV reuse (issue #27): a decode that finishes normally (a finish reason, not a cancel or an error)
leaves its KV on the card as cache when the card knows the token ids it covers (DecodeFromHeld always;
Decode when DecodeRequest.prompt_token_ids is given) and `kv_retention` is on; the ids are the prompt's
followed by every token the card stepped (the last generated token is sampled, never stepped). Its
blocks are named by prefix_index.root_hash(model name, cache_salt). DecodeFromHeld serves a request
from that cache (glitches/fpga_worker/held_decode.py). With sampling.prompt_logprobs it adopts nothing and
steps the whole prompt, so the card's own numerics score every prompt token (the first token's
DecodeToken.prompt_logprobs): how a cluster evaluates a card (`glitches up --prompt-logprobs-on card`).
"""

from __future__ import annotations

import os
import time

from glitches.decode_contract.device import DecodeBackend
from glitches.decode_contract.kv_intake_rpcs import KvIntakeRpcs
from glitches.fpga_worker.settings import FpgaWorkerSettings
from glitches.fpga_worker.held_decode import decode_from_held
from glitches.kv_plane.host_identity import host_identity
from glitches.kv_plane.prefix_index import root_hash
from glitches.kv_plane.kv_stream_limits import HEADER_TIMEOUT_S, STALL_TIMEOUT_S
from glitches.services.generation import grammar, models
from glitches.services.generation.decoding import decode_loop
from glitches.services.runtime.errors import FailedPrecondition, InvalidArgument
from glitches.services.runtime.speed_meter import SpeedMeter
from glitches.services.cluster.kv_holds import KvHolds, renew_rpc
from glitches.services.auth.kv_token import KvTokenVerifier
from glitches.services.generation.proto_convert import logprob_to_proto, step_to_proto
from glitches.services.auth.request_auth import AuthBoundWorkerId, OpenAccess, RequestAuthVerifier
from glitches.services.generation.sampling import Sampling, check_sampling
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from glitches.services.cluster.worker_caps import DECODE_CLASS_DEDICATED, ROLE_DECODE


class FpgaWorkerServicer(AuthBoundWorkerId, KvIntakeRpcs, worker_pb2_grpc.WorkerServicer):
    def __init__(self, backend: DecodeBackend, tokenizer, worker_id: str, model_name: str, slots: int,
                 kv_tokens: KvTokenVerifier | None = None, kv_transport: str = "auto",
                 limits: tuple[float, float, int] = (HEADER_TIMEOUT_S, STALL_TIMEOUT_S, 64),
                 holds: KvHolds | None = None, auth: RequestAuthVerifier | OpenAccess | None = None,
                 vocab_size: int = 0, kv_retention: bool = True):
        """limits: (header deadline s, stall limit s, KV streams at once) of every KV stream.
        kv_retention: keep normally finished requests' KV as reusable cache (module docstring)."""
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
        self.kv_retention = kv_retention
        self.step_speed = SpeedMeter()  # wall s of the backend's decode steps, forced ones too (Info.decode_step_s)

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
            kv_cached_bytes=self.backend.kv_cached_bytes(),
            expiring_requests=self.holds.summary().expiring, kv_hold_ttl_s=self.holds.ttl_s,
            request_auth_required=isinstance(self.auth, RequestAuthVerifier),
            decode_step_s=self.step_speed.seconds_per())

    def _intake(self) -> DecodeBackend:
        return self.backend  # already wrapped by the daemon (glitches/decode_contract/wrappers.py) before construction

    def Info(self, request, context):
        return self.info()

    def Prefill(self, request, context):
        raise FailedPrecondition("FPGA workers do not run prefill; send Prefill to a GPU worker")

    def _checked(self, request, tokens: list[int], field: str) -> Sampling:
        """A decode RPC's authorisation, sampling and token ids (from `field`) checked; its Sampling."""
        self.auth.check(request.auth_token, "decode", request.request_id)
        sampling = Sampling.from_proto(request.sampling)
        check_sampling(sampling)
        if sampling.max_new_tokens < 1:
            raise InvalidArgument("sampling.max_new_tokens must be at least 1")
        if tokens and max(tokens) >= self.vocab_size:
            raise InvalidArgument(f"token id {max(tokens)} ({field}) is outside the vocabulary "
                                  f"(size {self.vocab_size})")
        return sampling

    def Decode(self, request, context):
        generated = list(request.generated_token_ids) or [request.first_token_id]
        sampling = self._checked(request, generated, "first_token_id / generated_token_ids")
        request_id = request.request_id
        self.holds.begin_decode(request_id)  # FAILED_PRECONDITION when another Decode of it runs
        try:
            yield from self._decode(request, context, sampling, generated)
        finally:
            self.holds.end_decode(request_id)

    def _decode(self, request, context, sampling: Sampling, generated: list[int]):
        prompt = list(request.prompt_token_ids)
        # the ids of the KV before `position`, when known: the prompt, then the generated tokens stepped so far
        known = prompt + generated[:-1] if prompt and len(prompt) + len(generated) - 1 == request.position else None

        def steps_of(step, constraint, cancelled, modeled_s):
            return decode_loop(step, generated, request.position, sampling, self.text_of, cancelled=cancelled,
                               modeled_s=modeled_s, constraint=constraint)

        yield from self._stream(request.request_id, context, sampling, generated, steps_of, known, request.cache_salt)

    def _stream(self, request_id: str, context, sampling: Sampling, generated: list[int], steps_of,
                known: list[int] | None, salt: bytes, reused: int = 0, prompt_scores: list | None = None):
        """Run steps_of(step, constraint, cancelled, modeled_s) to the end, streaming DecodeTokens; then keep
        the KV as cache (a normal finish, `known` ids given) or free it (anything else). prompt_scores: the
        prompt's TokenLogprobs, filled by steps_of before its first Step, sent with the first token."""
        latest = {"position": 0}
        stepped = []  # token ids fed to the card, in order

        def step(token: int, position: int):
            latest["position"] = position
            started = time.perf_counter()
            logits = self.backend.step(request_id, token, position)
            self.step_speed.add(1, time.perf_counter() - started)
            stepped.append(token)
            return logits

        finished = False
        try:
            constraint = grammar.constraint_for(sampling, self.tokenizer, generated)  # None without response_format
            # modeled: the card time the U280 timing model gives for a step over position + 1 tokens
            steps = steps_of(step, constraint, lambda: not context.is_active(),
                             lambda: self.backend.modeled_step_s(latest["position"] + 1))
            for i, step_out in enumerate(steps):
                finished = step_out.finish is not None
                token = step_to_proto(step_out)
                if i == 0 and reused:
                    token.reused_prompt_tokens = reused
                if i == 0 and prompt_scores:
                    token.prompt_logprobs.extend(logprob_to_proto(record) for record in prompt_scores)
                yield token
            if finished and known is not None and self.kv_retention:
                retain = getattr(self.backend, "retain", None)  # cards that keep KV (emu, w4a8, xrt)
                if retain is not None:
                    retain(request_id, known + stepped, root_hash(self.model_name, salt))
        finally:
            self.backend.release(request_id)  # kept above, or failed or cancelled: the KV goes

    def DecodeFromHeld(self, request, context):
        prompt = list(request.prompt_token_ids)
        sampling = self._checked(request, prompt, "prompt_token_ids")
        if not prompt:
            raise InvalidArgument("prompt_token_ids is empty; DecodeFromHeld needs the whole prompt")
        adopt = getattr(self.backend, "adopt", None)
        if adopt is None or (not self.kv_retention and request.min_held_tokens > 0):
            raise FailedPrecondition("prefix no longer held: this card keeps no KV between requests "
                                     "(--no-kv-retention or a backend without retention); send the KV")
        if sampling.prompt_logprobs and request.min_held_tokens:
            raise InvalidArgument("prompt logprobs score the whole prompt on the card: min_held_tokens must be 0")
        request_id, salt = request.request_id, request.cache_salt
        # prompt logprobs: look up the first token alone, so nothing is adopted (the last token is always stepped)
        lookup = prompt[:1] if sampling.prompt_logprobs else prompt
        scores = [] if sampling.prompt_logprobs else None
        self.holds.begin_decode(request_id)  # FAILED_PRECONDITION when another decode of it runs
        try:
            # FAILED_PRECONDITION (too little held), RESOURCE_EXHAUSTED, ALREADY_EXISTS: nothing reserved
            held = adopt(request_id, lookup, root_hash(self.model_name, salt),
                         len(prompt) + sampling.max_new_tokens, request.min_held_tokens)

            def steps_of(step, constraint, cancelled, modeled_s):
                return decode_from_held(step, prompt, held, sampling, self.text_of, cancelled, modeled_s, constraint,
                                        prompt_scores=scores)

            yield from self._stream(request_id, context, sampling, [], steps_of, prompt[:held], salt, reused=held,
                                    prompt_scores=scores)
        finally:
            self.holds.end_decode(request_id)

    def Release(self, request, context):
        self.auth.check(request.auth_token, "release", request.request_id)
        self._unplace(request.request_id)  # a transfer still streaming loses its way in before the blocks go
        return worker_pb2.ReleaseResponse(released=self.backend.release(request.request_id))

    def RenewKvHolds(self, request, context):
        return renew_rpc(self.holds, self.auth, request)

    def EvictCache(self, request, context):
        self.auth.check(request.auth_token, "evict", "")
        evict = getattr(self.backend, "evict_cache", None)  # cards that keep KV (emu, w4a8, xrt)
        regions, blocks, nbytes = evict() if evict is not None else (0, 0, 0)
        return worker_pb2.EvictCacheResponse(evicted_blocks=blocks, evicted_bytes=nbytes, evicted_regions=regions)


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
