"""One request from prompt to last token: validate, place, prefill, decode, release.

The scheduler holds no state that Redis does not also hold: slots are claims in
the registry, released on finish, on error and when the client goes away.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import grpc

from scheduler.admission import Admission
from scheduler.detokenizer import Detokenizer
from scheduler.leases import LeaseKeeper
from scheduler.progress_watchdog import ProgressWatchdog
from scheduler.placement import ClusterSnapshot, NoWorkerAvailable, PlacementRequest, WorkerView, place
from scheduler.settings import SchedulerSettings
from services import grammar, metrics
from services.channels import WorkerStubs
from services.decoding import Finish
from services.errors import (REASON_CONTEXT_LENGTH_EXCEEDED, REASON_MODEL_NOT_FOUND, REASON_PROMPT_TOO_LONG,
                             InvalidArgument, ResourceExhausted, Unavailable, from_rpc_error)
from services.kv_token import KvTokenIssuer
from services.logprobs import TokenLogprob
from services.proto_convert import FINISH_FROM_PROTO, logprob_from_proto
from services.request_auth import RequestAuthIssuer
from services.registry import Registry, WorkerState
from services.sampling import Sampling, check_sampling
from services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc
from services.worker_caps import ROLE_ASSIST, ROLE_DECODE, SkipLog, unusable_reason

log = logging.getLogger(__name__)
MAX_STOP_CHARS = 1000  # characters of one stop string


@dataclass(frozen=True)
class GenerateInput:
    prompt: str
    chat: bool
    sampling: Sampling
    model: str = ""
    prompt_token_ids: tuple[int, ...] = ()  # the prompt as token ids (then `prompt` is empty, `chat` ignored)


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token id, with sampling.logprobs
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # first delta only, with prompt_logprobs
    prompt_token_ids: list[int] = field(default_factory=list)  # first delta only, with prompt_logprobs


class _NoRoomYet(Exception):
    """The GPU refused GPU assist (no slot or KV free there now): place the request again shortly."""


class _WorkerLost(Exception):
    """A worker died (or refused the KV) mid-request; the request can continue elsewhere."""

    def __init__(self, worker_id: str, message: str, counts_as_migration: bool = True):
        super().__init__(message)
        self.worker_id = worker_id
        self.counts_as_migration = counts_as_migration


@dataclass
class _Run:
    """One request's progress across attempts (an attempt = one placement, prefill and decode)."""

    request_id: str
    prompt_ids: list[int]
    sampling: Sampling
    arrived: float  # time.monotonic() at arrival
    tokens: list[int] = field(default_factory=list)  # generated so far, across attempts
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token, with sampling.logprobs
    prompt_logprobs: list[TokenLogprob] | None = None  # from the first prefill, with sampling.prompt_logprobs
    detok: Detokenizer | None = None
    finish: Finish | None = None
    attempts: int = 0
    migrations: int = 0
    excluded: set[str] = field(default_factory=set)  # workers lost during this request
    prefills: list = field(default_factory=list)  # PrefillResponse of each attempt
    first_out: float | None = None
    last_out: float = 0.0
    device_decode_s: float = 0.0
    modeled_s: float = 0.0
    decode_device: str = ""
    decode_worker: str = ""
    prefill_worker: str = ""
    cancelled: object = lambda: False  # the client went away
    refused_since: float | None = None  # monotonic time a GPU first refused this request's GPU assist


@dataclass
class _Attempt:
    claim_id: str  # request id + attempt number: names the claims and the KV on the workers
    decoder: WorkerState | None = None
    decode_call: object = None
    lost: bool = False  # the decoder died or froze: release there without waiting for it


@dataclass
class Final:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish: Finish
    decode_device: str  # the decoder's kind: "fpga", "gpu" (GPU assist), or another kind's name
    decode_worker: str
    prefill_worker: str
    timings: dict[str, float] = field(default_factory=dict)
    migrations: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)


class ModelInfo:
    """What the scheduler needs of the model: tokenizer, EOS ids, context length."""

    def __init__(self, name: str, tokenizer, eos_token_ids: tuple[int, ...], max_context_tokens: int,
                 vocab_size: int = 0):
        self.name = name
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_context_tokens = max_context_tokens
        self.vocab_size = vocab_size or len(tokenizer)  # token ids must be below it

    def text_of(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def encode(self, prompt: str, chat: bool) -> list[int]:
        if chat:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            return [int(i) for i in ids]
        return list(self.tokenizer(prompt)["input_ids"])


def _log_renewal(future, worker_id: str) -> None:
    error = future.exception()
    if error is not None:
        log.warning("renewing KV holds on %s failed: %s", worker_id, getattr(error, "code", lambda: error)())


def kv_bytes_needed(workers, tokens: int, role: str = ROLE_DECODE) -> int:
    """KV bytes `tokens` take on the most demanding live worker with `role`, with its reservation rounding."""
    needs = [-(-tokens // w.record.kv_granularity_tokens) * w.record.kv_granularity_tokens
             * w.record.kv_bytes_per_token for w in workers if role in w.record.capabilities.roles]
    return max(needs, default=0)


_PLACE_POLL_S = (0.02, 0.5)  # first and longest pause between placement tries while no device has room


class Orchestrator:
    def __init__(self, settings: SchedulerSettings, registry: Registry, model: ModelInfo,
                 leases: LeaseKeeper | None = None):
        self.settings = settings
        self.registry = registry
        self.leases = leases or LeaseKeeper(registry)
        self.admission = Admission(settings.max_active, settings.max_queued, settings.queue_wait_s)
        self.model = model
        self._stubs = WorkerStubs(settings.tls())
        # one token per KV transfer (per attempt: migrations get fresh ones); None: transfers carry none
        self.kv_tokens = (KvTokenIssuer(settings.kv_token_secret, settings.kv_token_ttl_s)
                          if settings.kv_token_secret else None)
        # per-call authorisation of Prefill, Decode, Release, RenewKvHolds (same secret); None: calls carry none
        self.request_auth = (RequestAuthIssuer(settings.kv_token_secret, settings.kv_token_ttl_s)
                             if settings.kv_token_secret else None)
        self.leases.renew_holds = self._renew_holds
        self.watchdog = ProgressWatchdog()  # FPGA decode streams without progress count as a dead worker
        self.active = 0
        self._active_lock = threading.Lock()
        self._unusable = SkipLog(log, "worker")  # records placement cannot use, logged once per worker

    def _auth(self, purpose: str, request_id: str, worker_id: str) -> str:
        return self.request_auth.issue(purpose, request_id, worker_id) if self.request_auth else ""

    def _renew_holds(self, groups: dict[tuple[str, str], list[str]]) -> None:
        """One RenewKvHolds per worker, not waited for (a frozen worker must not hold up the others)."""
        for (address, worker_id), request_ids in groups.items():
            renewals = [worker_pb2.KvHoldRenewal(request_id=r, auth_token=self._auth("renew", r, worker_id))
                        for r in request_ids]
            future = self._stub(address).RenewKvHolds.future(worker_pb2.RenewKvHoldsRequest(renewals=renewals),
                                                              timeout=self.settings.release_timeout_s)
            future.add_done_callback(lambda f, w=worker_id: _log_renewal(f, w))

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        return self._stubs.get(address)

    # --- validation ----------------------------------------------------------
    def validate(self, request: GenerateInput) -> tuple[list[int], Sampling]:
        """The prompt's token ids and the request's sampling with EOS filled in; INVALID_ARGUMENT otherwise.

        Each error names its field (GenerateRequest/SamplingParams field names) and, where a client
        acts on it, a reason (services.errors.REASON_*), as trailing metadata.
        """
        s = request.sampling
        if request.model and request.model != self.model.name:
            raise InvalidArgument(f"unknown model {request.model!r}: this cluster serves {self.model.name!r}",
                                  field="model", reason=REASON_MODEL_NOT_FOUND)
        if request.prompt and request.prompt_token_ids:
            raise InvalidArgument("give the prompt as text or as token ids, not both", field="prompt")
        if not request.prompt and not request.prompt_token_ids:
            raise InvalidArgument("the prompt is empty; give some text", field="prompt")
        if s.max_new_tokens < 1:
            raise InvalidArgument(f"max_new_tokens must be at least 1, got {s.max_new_tokens}", field="max_new_tokens")
        if s.max_new_tokens > self.settings.max_new_tokens_limit:
            raise InvalidArgument(f"max_new_tokens {s.max_new_tokens} is above this cluster's limit of "
                                  f"{self.settings.max_new_tokens_limit}", field="max_new_tokens")
        if not s.temperature >= 0.0:  # also rejects NaN
            raise InvalidArgument(f"temperature must be >= 0 (0 = greedy), got {s.temperature}", field="temperature")
        if not 0.0 < s.top_p <= 1.0:
            raise InvalidArgument(f"top_p must be in (0, 1], got {s.top_p}", field="top_p")
        if s.top_logprobs > self.settings.max_top_logprobs:
            raise InvalidArgument(f"top_logprobs {s.top_logprobs} is above this cluster's limit of "
                                  f"{self.settings.max_top_logprobs} (--max-top-logprobs)", field="top_logprobs")
        if len(s.stop) > self.settings.max_stop_strings:
            raise InvalidArgument(f"{len(s.stop)} stop strings are more than this cluster's limit of "
                                  f"{self.settings.max_stop_strings} (--max-stop-strings)", field="stop")
        if any(len(x) > MAX_STOP_CHARS for x in s.stop):
            raise InvalidArgument(f"stop strings have at most {MAX_STOP_CHARS} characters each, got one of "
                                  f"{max(map(len, s.stop))}", field="stop")
        if s.min_tokens > s.max_new_tokens:
            raise InvalidArgument(f"min_tokens ({s.min_tokens}) must not be above max_new_tokens "
                                  f"({s.max_new_tokens})", field="min_tokens")
        check_sampling(s)
        grammar.check_format(s)  # a schema the grammar compiler refuses: field response_format
        if request.prompt_token_ids:
            prompt_ids = list(request.prompt_token_ids)
            if max(prompt_ids) >= self.model.vocab_size:
                raise InvalidArgument(f"prompt token id {max(prompt_ids)} is outside the vocabulary "
                                      f"(ids 0..{self.model.vocab_size - 1})", field="prompt")
        else:
            prompt_ids = self.model.encode(request.prompt, request.chat)
        if not prompt_ids:
            raise InvalidArgument("the prompt tokenizes to nothing; give some text", field="prompt")
        limit = self.settings.max_prompt_tokens
        if limit and len(prompt_ids) > limit:
            raise InvalidArgument(f"the prompt has {len(prompt_ids)} tokens, above this cluster's limit of {limit} "
                                  "(--max-prompt-tokens); shorten it", field="prompt", reason=REASON_PROMPT_TOO_LONG)
        context = self.model.max_context_tokens
        if len(prompt_ids) + s.max_new_tokens > context:
            raise InvalidArgument(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({s.max_new_tokens}) exceeds "
                                  f"the model's context of {context} tokens; shorten the prompt or ask for fewer tokens",
                                  field="prompt", reason=REASON_CONTEXT_LENGTH_EXCEEDED)
        eos = s.eos_token_ids or self.model.eos_token_ids
        sampling = dataclasses.replace(s, eos_token_ids=tuple(eos))
        return prompt_ids, sampling

    # --- placement -------------------------------------------------------------
    def _live_workers(self, excluded: set[str]) -> dict[str, WorkerState]:
        """Healthy workers of this model, by id; a record that does not say what it can do is skipped (logged once)."""
        live = {}
        for w in self.registry.workers():
            reason = unusable_reason(w.record)
            if reason:
                self._unusable.skip(w.record.worker_id, reason)
                continue
            self._unusable.usable(w.record.worker_id)
            if w.healthy and w.record.model == self.model.name and w.record.worker_id not in excluded:
                live[w.record.worker_id] = w
        return live

    def _place(self, claim_id: str, prompt_ids: list[int], sampling: Sampling, excluded: set[str],
               cancelled=lambda: False, wait_s: float | None = None):
        """Claim a decode slot (an FPGA, else GPU assist) and the prefill GPU; returns (gpu, decoder).

        A GPU-assist request holds one claim on its GPU (decode), so it counts once there. When
        neither an FPGA nor a GPU has room, the request waits here (up to `wait_s`, by default
        --queue-wait-s) instead of overfilling a device; then RESOURCE_EXHAUSTED with a retry hint.
        """
        wait_s = self.settings.queue_wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        pause, vanished = _PLACE_POLL_S[0], 0
        tokens = len(prompt_ids) + sampling.max_new_tokens
        while True:
            workers = self._live_workers(excluded)
            snapshot = ClusterSnapshot(tuple(
                WorkerView(w.record.worker_id, w.record.kind, w.record.slots, w.active, w.record.kv_free_bytes,
                           w.record.assist_active, w.record.capabilities.roles, w.record.capabilities.decode_class)
                for w in workers.values()))
            request = PlacementRequest(len(prompt_ids), sampling.max_new_tokens,
                                       kv_bytes_needed(workers.values(), tokens),
                                       kv_bytes_needed(workers.values(), tokens, ROLE_ASSIST))
            try:
                decision = place(snapshot, request)
            except NoWorkerAvailable as error:
                raise Unavailable(f"{error}; start a gpu-worker (glitches gpu-worker) or wait for one") from None
            fpga_id = self.registry.claim_first_free(claim_id, "decode", list(decision.decode_candidates))
            if fpga_id is not None:
                gpu = workers[decision.prefill_worker]
                if self.registry.claim_alive(claim_id, "prefill", gpu.record.worker_id):
                    return gpu, workers[fpga_id]
                self.registry.release(claim_id, "decode")
                vanished += 1
            elif decision.gpu_assist_worker is not None:
                gpu = workers[decision.gpu_assist_worker]
                if self.registry.claim_alive(claim_id, "decode", gpu.record.worker_id):
                    return gpu, gpu
                vanished += 1
            if vanished >= 3:  # a worker may vanish between reading the registry and claiming it
                raise Unavailable("workers kept disappearing while placing the request; retry")
            if decision.gpu_assist_worker is None and not decision.decode_candidates:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or cancelled():
                    hint = max(1.0, wait_s / 2)
                    raise ResourceExhausted(f"no FPGA and no GPU-assist slot had room for this request within "
                                            f"{wait_s:.0f} s; retry in about {hint:.0f} s", retry_after_s=hint)
                time.sleep(min(pause, remaining))
                pause = min(pause * 2, _PLACE_POLL_S[1])

    # --- the request -----------------------------------------------------------
    def generate(self, request: GenerateInput, cancelled=lambda: False,
                 time_remaining=lambda: None) -> Iterator[Delta | Final]:
        """Run one request to its end, moving it to other workers when one dies (at most max_migrations).

        time_remaining() -> seconds left of the caller's deadline (None: none); a queued request gives up
        in time to answer RESOURCE_EXHAUSTED rather than run into it.
        """
        run = _Run(uuid.uuid4().hex, *self.validate(request), arrived=time.monotonic(), cancelled=cancelled)
        run.detok = Detokenizer(self.model.text_of, run.sampling.stop, run.sampling.min_tokens)
        with self.admission.slot(cancelled, time_remaining):
            yield from self._run(run)

    def _run(self, run: _Run) -> Iterator[Delta | Final]:
        with self._active_lock:
            self.active += 1
        try:
            while run.finish is None:
                attempt_id = f"{run.request_id}.{run.attempts}"
                run.attempts += 1
                self.leases.add(attempt_id)
                attempt = _Attempt(attempt_id)
                try:
                    yield from self._attempt(run, attempt)
                except _WorkerLost as lost:
                    attempt.lost = True
                    self._on_lost(run, lost)
                except _NoRoomYet:  # another replica took the GPU's last slot first: place again
                    time.sleep(_PLACE_POLL_S[0])
                finally:
                    self._end_attempt(attempt)
            tail = run.detok.finish()
            if tail:
                yield Delta(tail, [])
            yield self._final(run)
        finally:
            with self._active_lock:
                self.active -= 1

    def _on_lost(self, run: _Run, lost: _WorkerLost) -> None:
        run.excluded.add(lost.worker_id)
        if not lost.counts_as_migration:  # a card refused the KV: try elsewhere, nothing moved
            log.info("request %s: %s", run.request_id, lost)
            return
        run.migrations += 1
        metrics.MIGRATIONS.of("scheduler").inc()
        log.warning("request %s: %s; migration %d after %d tokens", run.request_id, lost, run.migrations,
                    len(run.tokens))
        if run.migrations > self.settings.max_migrations:
            raise Unavailable(f"{lost}; the request already moved {self.settings.max_migrations} times "
                              "(--max-migrations), giving up")

    def _attempt(self, run: _Run, attempt: _Attempt) -> Iterator[Delta]:
        """Place, prefill (prompt + tokens so far), then stream decode until the end or a worker loss."""
        wait_s = self.settings.queue_wait_s
        if run.refused_since is not None:  # the GPU refused GPU assist before: the wait counts from then
            wait_s = max(0.0, wait_s - (time.monotonic() - run.refused_since))
        gpu, decoder = self._place(attempt.claim_id, run.prompt_ids, run.sampling, run.excluded, run.cancelled,
                                   wait_s)
        attempt.decoder = decoder
        on_fpga = decoder is not gpu
        self.leases.hold_on(attempt.claim_id, decoder.record.address, decoder.record.worker_id)
        log.info("request %s: %d prompt + %d generated tokens, prefill on %s, decode on %s", attempt.claim_id,
                 len(run.prompt_ids), len(run.tokens), gpu.record.worker_id, decoder.record.worker_id)
        prefill = self._prefill(gpu, decoder if on_fpga else None, attempt.claim_id, run)
        run.refused_since = None
        self._release_claim(attempt.claim_id, "prefill")
        run.prefills.append(prefill)
        run.decode_device, run.decode_worker, run.prefill_worker = (
            decoder.record.kind, decoder.record.worker_id, gpu.record.worker_id)
        first_logprob = prefill.first_token_logprobs if prefill.HasField("first_token_logprobs") else None
        prompt_logprobs = None
        if run.prompt_logprobs is None and run.sampling.prompt_logprobs:  # the first prefill's scores
            run.prompt_logprobs = prompt_logprobs = [logprob_from_proto(m) for m in prefill.prompt_logprobs]
        yield self._emit(run, prefill.first_token_id, first_logprob, prompt_logprobs)
        run.finish = FINISH_FROM_PROTO[prefill.finish_reason]
        if run.finish is not None:
            return
        attempt.decode_call = self._stub(decoder.record.address).Decode(
            worker_pb2.DecodeRequest(request_id=attempt.claim_id, first_token_id=run.tokens[-1],
                                     position=len(run.prompt_ids) + len(run.tokens) - 1,
                                     sampling=run.sampling.to_proto(common_pb2.SamplingParams),
                                     generated_token_ids=run.tokens,
                                     auth_token=self._auth("decode", attempt.claim_id, decoder.record.worker_id)),
            timeout=self.settings.decode_token_timeout_s * run.sampling.max_new_tokens)
        # GPU assist is not watched: its steps queue behind other requests' prefills, of any length
        ticket = (self.watchdog.watch(attempt.decode_call, self.settings.decode_stall_s,
                                      alive=lambda: self.registry.is_registered(decoder.record.worker_id))
                  if on_fpga else None)
        try:
            for step in attempt.decode_call:
                if ticket is not None:
                    self.watchdog.progress(ticket, step.step_s)
                run.device_decode_s += step.step_s
                run.modeled_s += step.modeled_step_s
                yield self._emit(run, step.token_id, step.logprobs if step.HasField("logprobs") else None)
                if ticket is not None:  # a slow client reading the stream is no stall of the worker
                    self.watchdog.progress(ticket)
                run.finish = FINISH_FROM_PROTO[step.finish_reason]
        except grpc.RpcError as error:
            if ticket is not None and ticket.stalled:
                raise _WorkerLost(decoder.record.worker_id, f"decode on {decoder.record.worker_id} made no progress "
                                  f"for {ticket.limit_s():.1f} s (--decode-stall-s); treating the worker as "
                                  "dead") from error
            if error.code() == grpc.StatusCode.UNAVAILABLE:
                raise _WorkerLost(decoder.record.worker_id, f"decode worker {decoder.record.worker_id} was lost "
                                  f"({error.details()})") from error
            raise from_rpc_error(error, f"decode on {decoder.record.worker_id} failed") from error
        finally:
            if ticket is not None:
                self.watchdog.unwatch(ticket)
        if run.finish is None:
            raise _WorkerLost(decoder.record.worker_id, f"decode on {decoder.record.worker_id} ended early")

    def _emit(self, run: _Run, token: int, logprob=None, prompt_logprobs: list[TokenLogprob] | None = None) -> Delta:
        """Record one generated token (and its common_pb2.TokenLogprobs, if any) and return its Delta."""
        now = time.monotonic()
        if run.first_out is None:
            run.first_out = now
            metrics.TTFT.observe(now - run.arrived)
        else:
            metrics.INTER_TOKEN.observe(now - run.last_out)
        run.last_out = now
        run.tokens.append(token)
        logprobs = []
        if logprob is not None:
            run.logprobs.append(logprob_from_proto(logprob))
            logprobs = [run.logprobs[-1]]
        if prompt_logprobs is None:
            return Delta(run.detok.add(token), [token], logprobs)
        return Delta(run.detok.add(token), [token], logprobs, prompt_logprobs, run.prompt_ids)

    def _release_claim(self, claim_id: str, role: str) -> None:
        """Best effort: the request goes on without Redis (a failover, an outage); a claim not released
        now is released again at the attempt's end, or its lease expires and a sweep frees it."""
        try:
            self.registry.release(claim_id, role)
        except Unavailable as error:
            log.warning("could not release the %s claim of %s now: %s", role, claim_id, error)

    def _end_attempt(self, attempt: _Attempt) -> None:
        if attempt.decode_call is not None:
            attempt.decode_call.cancel()
        if attempt.decoder is not None:
            self._release_on_worker(attempt.decoder, attempt.claim_id, wait=not attempt.lost)
        self.leases.discard(attempt.claim_id)
        try:
            self.registry.release(attempt.claim_id, "prefill")
            self.registry.release(attempt.claim_id, "decode")
        except Unavailable as error:  # Redis is down: the claims' leases expire and are swept later
            log.warning("could not release the claims of %s now: %s", attempt.claim_id, error)

    def _final(self, run: _Run) -> Final:
        done = time.monotonic()
        decode_s = done - run.first_out
        last = run.prefills[-1]
        timings = dict(
            ttft_s=run.first_out - run.arrived, prefill_s=sum(p.prefill_s for p in run.prefills),
            kv_bytes=sum(p.kv_bytes for p in run.prefills), kv_exposed_s=sum(p.kv_exposed_s for p in run.prefills),
            decode_s=decode_s,
            tokens_per_s=(len(run.tokens) - 1) / decode_s if decode_s > 0 and len(run.tokens) > 1 else 0.0,
            device_decode_s=run.device_decode_s, modeled_decode_s=run.modeled_s,
            layers_received_before_prefill_end=last.layers_received_before_prefill_end,
            num_layers=last.num_layers, total_s=done - run.arrived, kv_transport=last.kv_transport,
            kv_gbps=_gbps(sum(p.kv_bytes for p in run.prefills), sum(p.kv_transfer_s for p in run.prefills)))
        metrics.REQUESTS_FINISHED.labels(run.decode_device).inc()
        return Final(run.request_id, run.prompt_ids, run.tokens, run.detok.text, run.finish, run.decode_device,
                     run.decode_worker, run.prefill_worker, timings, run.migrations, run.logprobs,
                     run.prompt_logprobs or [])

    def _prefill(self, gpu: WorkerState, fpga: WorkerState | None, claim_id: str,
                 run: _Run) -> worker_pb2.PrefillResponse:
        target = worker_pb2.DecodeTarget()
        # prompt logprobs come from the first prefill only: a re-prefill after a migration need not score again
        sampling = replace(run.sampling, prompt_logprobs=run.sampling.prompt_logprobs and run.prompt_logprobs is None)
        if fpga is not None:
            token = self.kv_tokens.issue(claim_id, fpga.record.worker_id) if self.kv_tokens else ""
            target = worker_pb2.DecodeTarget(address=fpga.record.address, worker_id=fpga.record.worker_id,
                                             kv_token=token)
        try:
            return self._stub(gpu.record.address).Prefill(
                worker_pb2.PrefillRequest(request_id=claim_id, prompt_token_ids=run.prompt_ids,
                                          sampling=sampling.to_proto(common_pb2.SamplingParams), target=target,
                                          generated_token_ids=run.tokens,
                                          auth_token=self._auth("prefill", claim_id, gpu.record.worker_id)),
                timeout=self.settings.prefill_timeout_s)
        except grpc.RpcError as error:
            code = error.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and fpga is None:  # GPU assist refused by the GPU
                run.refused_since = run.refused_since or time.monotonic()
                if time.monotonic() - run.refused_since < self.settings.queue_wait_s and not run.cancelled():
                    raise _NoRoomYet() from error
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and fpga is not None:
                raise _WorkerLost(fpga.record.worker_id, f"{fpga.record.worker_id} had no room for the KV "
                                  f"({error.details()})", counts_as_migration=False) from error
            if code == grpc.StatusCode.PERMISSION_DENIED and fpga is not None:  # a KV token it would not take
                log.error("request %s: %s refused the KV transfer (%s); give the scheduler and every FPGA worker "
                          "the same KV token secret", claim_id, fpga.record.worker_id, error.details())
                raise _WorkerLost(fpga.record.worker_id, f"{fpga.record.worker_id} refused the KV transfer "
                                  f"({error.details()})", counts_as_migration=False) from error
            if code == grpc.StatusCode.UNAVAILABLE:
                lost = gpu if not self._answers(gpu) or fpga is None else fpga
                raise _WorkerLost(lost.record.worker_id, f"worker {lost.record.worker_id} was lost during "
                                  f"prefill ({error.details()})") from error
            raise from_rpc_error(error, f"prefill on {gpu.record.worker_id} failed") from error

    def _answers(self, worker: WorkerState) -> bool:
        """Whether a worker still answers Info within a second (tells a dead GPU from a dead FPGA)."""
        try:
            self._stub(worker.record.address).Info(worker_pb2.InfoRequest(), timeout=1.0)
            return True
        except grpc.RpcError:
            return False

    def _release_on_worker(self, worker: WorkerState, request_id: str, wait: bool = True) -> None:
        """Release on the worker; wait=False (a lost worker) sends it without waiting: a frozen worker must not
        hold up the migration, and its KV hold expires anyway."""
        message = worker_pb2.ReleaseRequest(request_id=request_id,
                                            auth_token=self._auth("release", request_id, worker.record.worker_id))
        release = self._stub(worker.record.address).Release
        if not wait:
            release.future(message, timeout=self.settings.release_timeout_s)
            return
        try:
            release(message, timeout=self.settings.release_timeout_s)
        except grpc.RpcError as error:
            log.warning("release of %s on %s failed: %s", request_id, worker.record.worker_id, error.code())


def _gbps(kv_bytes: int, seconds: float) -> float:
    """KV bytes over the transfers' wall time, GB/s (0 without a transfer)."""
    return kv_bytes / seconds / 1e9 if kv_bytes and seconds > 0 else 0.0
