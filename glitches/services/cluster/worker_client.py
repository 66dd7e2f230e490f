"""The scheduler's client of the Worker service: typed calls in, domain results and domain errors out.

The orchestrator calls `prefill`, `decode`, `release`, `renew_holds` and `info`/`answers` with domain
objects (registry records, Sampling, token ids) and gets domain objects back (PrefillResult, DecodeStep);
it never builds a protobuf message or reads a status code. Failed calls become services.errors classes:

    Prefill  RESOURCE_EXHAUSTED, no decode target (GPU assist refused)  -> WorkerFull
             RESOURCE_EXHAUSTED / PERMISSION_DENIED with a decode target -> KvRefused (the target's id)
             UNAVAILABLE -> WorkerLost: the prefill worker if it no longer answers Info (or there is no
                            target), else the decode target
    Decode   UNAVAILABLE -> WorkerLost (the decode worker)
    DecodeFromHeld  UNAVAILABLE -> WorkerLost (the card); FAILED_PRECONDITION -> HeldKvGone (the card no
             longer holds the prefix it published: a stale routing hint, not a lost worker); UNIMPLEMENTED
             (a worker that publishes held KV but cannot serve from it) -> HeldKvGone too; RESOURCE_EXHAUSTED
             (no region for the request beside or instead of the held one) -> KvRefused (the card: try another)
    any other failure -> from_rpc_error(error, "<call> on <worker> failed") (a downstream DEADLINE_EXCEEDED
                         becomes Unavailable: the worker was slow, not the caller's deadline)

Release, RenewKvHolds and WarmPrefix are best effort: failures are logged, never raised (a lost worker's KV hold
expires by itself). Each call carries the per-request authorisation `auth(purpose, request_id, worker_id)`
returns ("" when the cluster has no request-auth secret).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc

from glitches.services.runtime.channels import WorkerStubs
from glitches.services.generation.decoding import Finish
from glitches.services.runtime.errors import FailedPrecondition, KvRefused, WorkerFull, WorkerLost, from_rpc_error
from glitches.services.generation.logprobs import TokenLogprob
from glitches.services.generation.proto_convert import FINISH_FROM_PROTO, logprob_from_proto
from glitches.services.cluster.registry import WorkerRecord
from glitches.services.generation.sampling import Sampling
from glitches.services.stubs.glitches.v1 import common_pb2, worker_pb2
from glitches.services.auth.tls import PLAINTEXT, TlsConfig

log = logging.getLogger(__name__)
ANSWER_TIMEOUT_S = 1.0  # `answers`: a worker silent this long counts as gone


def _no_auth(purpose: str, request_id: str, worker_id: str) -> str:
    return ""


@dataclass(frozen=True)
class PrefillResult:
    """What one Prefill did: the first token and where the time and the KV went (seconds, bytes)."""

    first_token_id: int
    finish: Finish | None  # the first token already ended the request (EOS, stop, max_new_tokens 1)
    first_logprob: TokenLogprob | None = None  # with sampling.logprobs
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # with sampling.prompt_logprobs
    prefill_s: float = 0.0
    kv_bytes: int = 0  # KV sent to the decode target (0 for GPU assist)
    kv_exposed_s: float = 0.0  # KV transfer time left after prefill ended
    kv_transfer_s: float = 0.0  # first send to last ack
    kv_transport: str = ""  # "shm", "nixl", "grpc"; "" for GPU assist
    layers_received_before_prefill_end: int = 0
    num_layers: int = 0
    cached_tokens: int = 0  # leading prompt tokens the GPU reused from its prefix cache (not computed)


@dataclass(frozen=True)
class DecodeStep:
    """One token of a Decode stream."""

    token_id: int
    step_s: float  # the worker's own time for the step, seconds
    modeled_step_s: float  # modeled accelerator time (emulated FPGAs; 0 otherwise), seconds
    finish: Finish | None  # set on the last step
    logprob: TokenLogprob | None = None  # with sampling.logprobs
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # DecodeFromHeld with sampling.prompt_logprobs: first step only


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says of itself in Info (the subset the scheduler reads)."""

    worker_id: str
    kind: str
    roles: tuple[str, ...]
    decode_class: int
    slots: int
    active_requests: int
    kv_free_bytes: int


class HeldKvGone(FailedPrecondition):
    """DecodeFromHeld refused: the card no longer holds `min_held_tokens` of the prompt (evicted since it
    published, or the held tokens differ). The request goes the normal way; nothing was lost."""

    def __init__(self, message: str, worker_id: str):
        super().__init__(message)
        self.worker_id = worker_id


class DecodeStream:
    """One Decode stream: iterate for DecodeSteps; `cancel()` (from any thread, e.g. the progress watchdog) ends it,
    and the iteration then raises Cancelled."""

    def __init__(self, call, worker_id: str, held: bool = False):
        self._call = call
        self.worker_id = worker_id
        self._held = held  # a DecodeFromHeld stream: FAILED_PRECONDITION means HeldKvGone
        self.reused_tokens = 0  # DecodeFromHeld: prompt tokens the card reused (from its first token)

    def cancel(self) -> None:
        self._call.cancel()

    def __iter__(self) -> Iterator[DecodeStep]:
        try:
            for msg in self._call:
                self.reused_tokens = max(self.reused_tokens, getattr(msg, "reused_prompt_tokens", 0))
                yield DecodeStep(msg.token_id, msg.step_s, msg.modeled_step_s, FINISH_FROM_PROTO[msg.finish_reason],
                                 logprob_from_proto(msg.logprobs) if msg.HasField("logprobs") else None,
                                 tuple(logprob_from_proto(m) for m in msg.prompt_logprobs))
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                raise WorkerLost(f"decode worker {self.worker_id} was lost ({error.details()})",
                                 worker_id=self.worker_id) from error
            if self._held and error.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.UNIMPLEMENTED):
                raise HeldKvGone(f"{self.worker_id} no longer holds the prefix ({error.details()})",
                                 worker_id=self.worker_id) from error
            if self._held and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # no region for it: try elsewhere
                raise KvRefused(f"{self.worker_id} had no room to extend its held prefix ({error.details()})",
                                worker_id=self.worker_id) from error
            raise from_rpc_error(error, f"decode on {self.worker_id} failed") from error


class WorkerClient:
    """Calls workers at their registry records' addresses, over one channel per address."""

    def __init__(self, tls: TlsConfig = PLAINTEXT, auth: Callable[[str, str, str], str] = _no_auth,
                 prefill_timeout_s: float = 600.0, release_timeout_s: float = 5.0, stubs: WorkerStubs | None = None):
        self._stubs = stubs or WorkerStubs(tls)
        self._auth = auth
        self.prefill_timeout_s = prefill_timeout_s
        self.release_timeout_s = release_timeout_s

    def _stub(self, address: str):
        return self._stubs.get(address)

    def prefill(self, worker: WorkerRecord, request_id: str, prompt_ids: list[int], sampling: Sampling,
                generated: list[int], target: WorkerRecord | None = None, kv_token: str = "",
                cache_salt: bytes = b"", held_prefix_tokens: int = 0) -> PrefillResult:
        """Prefill prompt + `generated` on `worker`, streaming the KV to `target` (None: GPU assist, the KV stays);
        cache_salt: the tenant's prefix-cache salt (b"": the default tenant)."""
        decode_target = worker_pb2.DecodeTarget()
        if target is not None:
            decode_target = worker_pb2.DecodeTarget(address=target.address, worker_id=target.worker_id,
                                                    kv_token=kv_token, held_prefix_tokens=held_prefix_tokens)
        request = worker_pb2.PrefillRequest(request_id=request_id, prompt_token_ids=prompt_ids,
                                            sampling=sampling.to_proto(common_pb2.SamplingParams),
                                            target=decode_target, generated_token_ids=generated, cache_salt=cache_salt,
                                            auth_token=self._auth("prefill", request_id, worker.worker_id))
        try:
            done = self._stub(worker.address).Prefill(request, timeout=self.prefill_timeout_s)
        except grpc.RpcError as error:
            raise self._prefill_error(error, worker, target, request_id) from error
        return PrefillResult(
            first_token_id=done.first_token_id, finish=FINISH_FROM_PROTO[done.finish_reason],
            first_logprob=logprob_from_proto(done.first_token_logprobs) if done.HasField("first_token_logprobs")
            else None,
            prompt_logprobs=[logprob_from_proto(m) for m in done.prompt_logprobs], prefill_s=done.prefill_s,
            kv_bytes=done.kv_bytes, kv_exposed_s=done.kv_exposed_s, kv_transfer_s=done.kv_transfer_s,
            kv_transport=done.kv_transport, layers_received_before_prefill_end=done.layers_received_before_prefill_end,
            num_layers=done.num_layers, cached_tokens=done.cached_tokens)

    def _prefill_error(self, error: grpc.RpcError, worker: WorkerRecord, target: WorkerRecord | None,
                       request_id: str) -> Exception:
        code = error.code()
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and target is None:
            full = from_rpc_error(error, f"prefill on {worker.worker_id} failed")
            return WorkerFull(full.message, retry_after_s=full.retry_after_s, field=full.field, reason=full.reason)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            return KvRefused(f"{target.worker_id} had no room for the KV ({error.details()})",
                             worker_id=target.worker_id, status_code=code)
        if code == grpc.StatusCode.PERMISSION_DENIED and target is not None:  # a KV token it would not take
            log.error("request %s: %s refused the KV transfer (%s); give the scheduler and every FPGA worker "
                      "the same KV token secret", request_id, target.worker_id, error.details())
            return KvRefused(f"{target.worker_id} refused the KV transfer ({error.details()})",
                             worker_id=target.worker_id, status_code=code)
        if code == grpc.StatusCode.FAILED_PRECONDITION and target is not None and "prefix no longer held" in (
                error.details() or ""):  # a partial transfer's card evicted the prefix: send the whole KV
            return HeldKvGone(f"{target.worker_id} no longer holds the prefix ({error.details()})", target.worker_id)
        if code == grpc.StatusCode.UNAVAILABLE:
            lost = worker if target is None or not self.answers(worker) else target
            return WorkerLost(f"worker {lost.worker_id} was lost during prefill ({error.details()})",
                              worker_id=lost.worker_id)
        return from_rpc_error(error, f"prefill on {worker.worker_id} failed")

    def decode(self, worker: WorkerRecord, request_id: str, first_token_id: int, position: int, sampling: Sampling,
               generated: list[int], timeout_s: float, keep_prompt_ids: list[int] = (),
               cache_salt: bytes = b"") -> DecodeStream:
        """Start decoding on `worker` the request whose KV it holds; `position` is first_token_id's (0-based).
        keep_prompt_ids (KV reuse): the prompt's ids; a card given them keeps the KV as cache under `cache_salt`
        when the request finishes normally."""
        call = self._stub(worker.address).Decode(
            worker_pb2.DecodeRequest(request_id=request_id, first_token_id=first_token_id, position=position,
                                     sampling=sampling.to_proto(common_pb2.SamplingParams),
                                     generated_token_ids=generated, prompt_token_ids=keep_prompt_ids,
                                     cache_salt=cache_salt,
                                     auth_token=self._auth("decode", request_id, worker.worker_id)),
            timeout=timeout_s)
        return DecodeStream(call, worker.worker_id)

    def decode_from_held(self, worker: WorkerRecord, request_id: str, prompt_ids: list[int], sampling: Sampling,
                         cache_salt: bytes, min_held_tokens: int, timeout_s: float) -> DecodeStream:
        """Serve the request on the card that holds its prompt's first `min_held_tokens` tokens: it forces the rest
        of the prompt through its decode step, then decodes (the first step's token is the first token)."""
        call = self._stub(worker.address).DecodeFromHeld(
            worker_pb2.DecodeFromHeldRequest(
                request_id=request_id, prompt_token_ids=prompt_ids,
                sampling=sampling.to_proto(common_pb2.SamplingParams), cache_salt=cache_salt,
                min_held_tokens=min_held_tokens, auth_token=self._auth("decode", request_id, worker.worker_id)),
            timeout=timeout_s)
        return DecodeStream(call, worker.worker_id, held=True)

    def release(self, worker: WorkerRecord, request_id: str, wait: bool = True) -> None:
        """Free what `worker` holds for the request. wait=False (a lost worker) sends it without waiting: a frozen
        worker must not hold up a migration, and its KV hold expires anyway. Failures are logged."""
        message = worker_pb2.ReleaseRequest(request_id=request_id,
                                            auth_token=self._auth("release", request_id, worker.worker_id))
        release = self._stub(worker.address).Release
        if not wait:
            release.future(message, timeout=self.release_timeout_s)
            return
        try:
            release(message, timeout=self.release_timeout_s)
        except grpc.RpcError as error:
            log.warning("release of %s on %s failed: %s", request_id, worker.worker_id, error.code())

    def warm_prefix(self, worker: WorkerRecord, request_id: str, token_ids: list[int], cache_salt: bytes) -> None:
        """WarmPrefix on a GPU worker, not waited for (a hint for the next turn: failures are logged only)."""
        message = worker_pb2.WarmPrefixRequest(request_id=request_id, token_ids=token_ids, cache_salt=cache_salt,
                                               auth_token=self._auth("warm", request_id, worker.worker_id))
        future = self._stub(worker.address).WarmPrefix.future(message, timeout=self.prefill_timeout_s)
        future.add_done_callback(lambda f, w=worker.worker_id: _log_warm(f, w, request_id))

    def renew_holds(self, groups: dict[tuple[str, str], list[str]]) -> None:
        """One RenewKvHolds per (address, worker id), not waited for (a frozen worker must not hold up the others)."""
        for (address, worker_id), request_ids in groups.items():
            renewals = [worker_pb2.KvHoldRenewal(request_id=r, auth_token=self._auth("renew", r, worker_id))
                        for r in request_ids]
            future = self._stub(address).RenewKvHolds.future(worker_pb2.RenewKvHoldsRequest(renewals=renewals),
                                                              timeout=self.release_timeout_s)
            future.add_done_callback(lambda f, w=worker_id: _log_renewal(f, w))

    def info(self, worker: WorkerRecord, timeout_s: float = ANSWER_TIMEOUT_S) -> WorkerInfo:
        """The worker's own account of itself; WorkerLost when it does not answer."""
        try:
            msg = self._stub(worker.address).Info(worker_pb2.InfoRequest(), timeout=timeout_s)
        except grpc.RpcError as error:
            if error.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise WorkerLost(f"worker {worker.worker_id} does not answer ({error.details()})",
                                 worker_id=worker.worker_id) from error
            raise from_rpc_error(error, f"info on {worker.worker_id} failed") from error
        return WorkerInfo(msg.worker_id, msg.kind_name, tuple(msg.roles), msg.decode_class, msg.slots,
                          msg.active_requests, msg.kv_free_bytes)

    def answers(self, worker: WorkerRecord, timeout_s: float = ANSWER_TIMEOUT_S) -> bool:
        """Whether the worker still answers Info within `timeout_s` (tells a dead GPU from a dead FPGA)."""
        try:
            self._stub(worker.address).Info(worker_pb2.InfoRequest(), timeout=timeout_s)
            return True
        except grpc.RpcError:
            return False


def _log_renewal(future, worker_id: str) -> None:
    error = future.exception()
    if error is not None:
        log.warning("renewing KV holds on %s failed: %s", worker_id, getattr(error, "code", lambda: error)())


def _log_warm(future, worker_id: str, request_id: str) -> None:
    error = future.exception()
    if error is not None:
        log.warning("warming the reply of %s on %s failed: %s", request_id, worker_id,
                    getattr(error, "code", lambda: error)())
    elif future.result().dropped:
        log.debug("warming the reply of %s on %s was dropped (the worker was busy warming)", request_id, worker_id)
