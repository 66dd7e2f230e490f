"""One request from prompt to last token: validate, place, prefill, decode, release.

The scheduler holds no state that Redis does not also hold: slots are claims in
the registry, released on finish, on error and when the client goes away. This module
is the attempt/migration state machine; it talks to workers only through
services.worker_client (domain calls, domain errors) and leaves request checks and
tokenization to glitches/scheduler/validation.py.

KV reuse (--kv-reuse): placement reads how many leading blocks of the prompt's chain
(kv_plane/prefix_index.py, rooted at the model's name and the tenant's salt, DEFAULT_SALT for
requests without one: the salt cards are sent, so they name blocks the same way) each worker
published (Registry.held_overlap). On the "extend" path the card that holds the prefix serves
the request alone (WorkerClient.decode_from_held). A card that no longer holds it answers
FAILED_PRECONDITION before any token (HeldKvGone): the request is placed again at once without
reuse, which is no migration (a stale hint costs time, never correctness). A card lost
mid-extend is a migration as on the other paths. On "transfer-partial" the GPU prefills and only the
KV of [held, prompt) goes to the holding card (DecodeTarget.held_prefix_tokens, bound into the KV
token); its "prefix no longer held" during the transfer is the same HeldKvGone.

Prompt logprobs on a card (--prompt-logprobs-on card, to evaluate a card's numerics): a request asking
for prompt logprobs, until its prompt is scored, claims an FPGA worker's decode slot only (no GPU) and
calls DecodeFromHeld with min_held_tokens 0: the card steps the whole prompt with its own numerics,
returns the prompt's logprobs with the first token, and decodes (serve path PATH_CARD_PROMPT). With no
FPGA worker registered the request fails UNAVAILABLE (never scored by the GPU in its place).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from glitches.scheduler.admission import Admission
from glitches.scheduler.detokenizer import Detokenizer
from glitches.scheduler.leases import LeaseKeeper
from glitches.scheduler.progress_watchdog import ProgressWatchdog
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.kv_plane.prefix_index import DEFAULT_SALT, block_hashes, root_hash
from glitches.scheduler.placement import (PATH_EXTEND, PATH_TRANSFER, PATH_TRANSFER_PARTIAL, ClusterSnapshot,
                                          NoWorkerAvailable, Placement, PlacementRequest, WorkerView, place)
from glitches.scheduler.settings import SchedulerSettings
from glitches.scheduler.validation import MAX_STOP_CHARS, GenerateInput, ModelInfo, validate
from glitches.services.runtime import metrics
from glitches.services.generation.decoding import Finish
from glitches.services.runtime.errors import GlitchesError, KvRefused, ResourceExhausted, Unavailable, WorkerFull, WorkerLost
from glitches.services.auth.kv_token import KvTokenIssuer
from glitches.services.generation.logprobs import TokenLogprob
from glitches.services.auth.request_auth import RequestAuthIssuer
from glitches.services.cluster.registry import Registry, WorkerState
from glitches.services.generation.sampling import Sampling
from glitches.services.cluster.worker_caps import (ROLE_ASSIST, ROLE_DECODE, ROLE_PREFILL, SkipLog,
                                                   unusable_reason)
from glitches.services.cluster.worker_client import DecodeStream, HeldKvGone, PrefillResult, WorkerClient

__all__ = ["MAX_STOP_CHARS", "Delta", "Final", "GenerateInput", "ModelInfo", "Orchestrator", "kv_bytes_needed"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token id, with sampling.logprobs
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)  # first delta only, with prompt_logprobs
    prompt_token_ids: list[int] = field(default_factory=list)  # first delta only, with prompt_logprobs


class _NoRoomYet(Exception):
    """The GPU refused GPU assist (no slot or KV free there now): place the request again shortly."""


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
    prefills: list[PrefillResult] = field(default_factory=list)  # one per attempt
    first_out: float | None = None
    last_out: float = 0.0
    device_decode_s: float = 0.0
    modeled_s: float = 0.0
    decode_device: str = ""
    decode_worker: str = ""
    prefill_worker: str = ""
    cancelled: object = lambda: False  # the client went away
    refused_since: float | None = None  # monotonic time a GPU first refused this request's GPU assist
    cache_salt: bytes = b""  # the tenant's prefix-cache salt (GenerateInput.cache_salt)
    reuse_routing: bool = True  # route by held KV; off after a stale hint (HeldKvGone) and with prompt logprobs
    serve_path: str = PATH_TRANSFER  # placement's path for the attempt that gave the first token
    reused_tokens: int = 0  # prompt tokens a card reused on the extend and transfer-partial paths


@dataclass
class _Attempt:
    claim_id: str  # request id + attempt number: names the claims and the KV on the workers
    decoder: WorkerState | None = None
    decode_call: DecodeStream | None = None
    lost: bool = False  # the decoder died or froze: release there without waiting for it
    placement: Placement | None = None  # placement's decision for this attempt


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
    timings: dict[str, float | str] = field(default_factory=dict)  # serve_path is a str (placement.PATH_*)
    migrations: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens whose KV the first prefill reused from the GPU's prefix cache


def kv_bytes_needed(workers, tokens: int, role: str = ROLE_DECODE) -> int:
    """KV bytes `tokens` take on the most demanding live worker with `role`, with its reservation rounding."""
    needs = [-(-tokens // w.record.kv_granularity_tokens) * w.record.kv_granularity_tokens
             * w.record.kv_bytes_per_token for w in workers if role in w.record.capabilities.roles]
    return max(needs, default=0)


_PLACE_POLL_S = (0.02, 0.5)  # first and longest pause between placement tries while no device has room
PATH_CARD_PROMPT = "card_prompt"  # serve path: a card scored the prompt itself (--prompt-logprobs-on card)
PATH_ASSIST = "assist"  # serve path: placement's transfer with the decoder the prefill GPU (GPU assist: no KV moves)


class Orchestrator:
    def __init__(self, settings: SchedulerSettings, registry: Registry, model: ModelInfo,
                 leases: LeaseKeeper | None = None):
        self.settings = settings
        self.registry = registry
        self.leases = leases or LeaseKeeper(registry)
        self.admission = Admission(settings.max_active, settings.max_queued, settings.queue_wait_s)
        self.model = model
        # one token per KV transfer (per attempt: migrations get fresh ones); None: transfers carry none
        self.kv_tokens = (KvTokenIssuer(settings.kv_token_secret, settings.kv_token_ttl_s)
                          if settings.kv_token_secret else None)
        # per-call authorisation of Prefill, Decode, Release, RenewKvHolds (same secret); None: calls carry none
        self.request_auth = (RequestAuthIssuer(settings.kv_token_secret, settings.kv_token_ttl_s)
                             if settings.kv_token_secret else None)
        self.workers = WorkerClient(settings.tls(), self._auth, settings.prefill_timeout_s, settings.release_timeout_s)
        self.leases.renew_holds = self.workers.renew_holds
        self.watchdog = ProgressWatchdog()  # FPGA decode streams without progress count as a dead worker
        self.active = 0
        self._active_lock = threading.Lock()
        self._unusable = SkipLog(log, "worker")  # records placement cannot use, logged once per worker

    def _auth(self, purpose: str, request_id: str, worker_id: str) -> str:
        return self.request_auth.issue(purpose, request_id, worker_id) if self.request_auth else ""

    def validate(self, request: GenerateInput) -> tuple[list[int], Sampling]:
        """glitches.scheduler.validation.validate against this cluster's model and limits."""
        return validate(request, self.model, self.settings)

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

    def _held_tokens(self, workers: dict[str, WorkerState], hashes: list[bytes]) -> dict[str, int]:
        """worker id -> leading prompt tokens whose KV it published as held (16 per block, `hashes` the prompt's
        chain names); {} when Redis fails."""
        if not hashes or not workers:
            return {}
        try:
            blocks = self.registry.held_overlap(list(workers), hashes)
        except Unavailable as error:  # a hint only: place without it
            log.warning("could not read held KV for routing: %s", error)
            return {}
        return {worker_id: n * KV_BLOCK_TOKENS for worker_id, n in blocks.items()}

    def _place(self, claim_id: str, prompt_ids: list[int], sampling: Sampling, excluded: set[str],
               cancelled=lambda: False, wait_s: float | None = None, reuse_salt: bytes | None = None):
        """Claim a decode slot (a decode-role worker such as an FPGA, else GPU assist) and the prefill GPU;
        returns (gpu, decoder, placement); gpu is None on the extend path (the decoder serves it alone).

        reuse_salt: the tenant's salt to route by held KV (None: reuse routing off for this attempt).

        A GPU-assist request holds one claim on its GPU (decode), so it counts once there. When
        neither an FPGA nor a GPU has room, the request waits here (up to `wait_s`, by default
        --queue-wait-s) instead of overfilling a device; then RESOURCE_EXHAUSTED with a retry hint.
        """
        wait_s = self.settings.queue_wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + wait_s
        pause, vanished = _PLACE_POLL_S[0], 0
        tokens = len(prompt_ids) + sampling.max_new_tokens
        # the prompt's chain names, once: the loop below may poll for room many times
        hashes = (block_hashes(prompt_ids, root_hash(self.model.name, reuse_salt or DEFAULT_SALT))
                  if reuse_salt is not None else [])
        while True:
            workers = self._live_workers(excluded)
            held = self._held_tokens(workers, hashes)  # {} without reuse (no names)
            snapshot = ClusterSnapshot(tuple(
                WorkerView(w.record.worker_id, w.record.kind, w.record.slots, w.active, w.record.kv_free_bytes,
                           w.record.assist_active, w.record.capabilities.roles, w.record.capabilities.decode_class,
                           cached_tokens=held.get(w.record.worker_id, 0),
                           prefill_tokens_per_s=w.record.prefill_tokens_per_s,
                           prefill_overhead_s=w.record.prefill_overhead_s, decode_step_s=w.record.decode_step_s)
                for w in workers.values()))
            request = PlacementRequest(len(prompt_ids), sampling.max_new_tokens,
                                       kv_bytes_needed(workers.values(), tokens),
                                       kv_bytes_needed(workers.values(), tokens, ROLE_ASSIST),
                                       reuse=reuse_salt is not None,
                                       partial=reuse_salt is not None and self.settings.kv_reuse_partial)
            try:
                decision = place(snapshot, request, self.settings.reuse_costs)
            except NoWorkerAvailable as error:
                raise Unavailable(f"{error}; start a gpu-worker (glitches gpu-worker) or wait for one") from None
            if decision.path == PATH_EXTEND and self.registry.claim_first_free(
                    claim_id, "decode", [decision.extend_worker]) is not None:
                return None, workers[decision.extend_worker], decision
            if decision.path == PATH_TRANSFER_PARTIAL and self.registry.claim_first_free(
                    claim_id, "decode", [decision.extend_worker]) is not None:  # the holder, sent only the rest
                if self.registry.claim_alive(claim_id, "prefill", decision.prefill_worker):
                    return workers[decision.prefill_worker], workers[decision.extend_worker], decision
                self.registry.release(claim_id, "decode")
            if decision.path in (PATH_EXTEND, PATH_TRANSFER_PARTIAL):
                decision = replace(decision, path=PATH_TRANSFER)
            decoder_id = self.registry.claim_first_free(claim_id, "decode", list(decision.decode_candidates))
            if decoder_id is not None:
                gpu = workers[decision.prefill_worker]
                if self.registry.claim_alive(claim_id, "prefill", gpu.record.worker_id):
                    return gpu, workers[decoder_id], decision
                self.registry.release(claim_id, "decode")
                vanished += 1
            elif decision.gpu_assist_worker is not None:
                gpu = workers[decision.gpu_assist_worker]
                if self.registry.claim_alive(claim_id, "decode", gpu.record.worker_id):
                    return gpu, gpu, decision
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
        run = _Run(uuid.uuid4().hex, *self.validate(request), arrived=time.monotonic(), cancelled=cancelled,
                   cache_salt=request.cache_salt)
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
                except (WorkerLost, KvRefused) as lost:
                    attempt.lost = True
                    self._on_lost(run, lost)
                except HeldKvGone as stale:  # a stale hint: place again at once, without reuse routing
                    run.reuse_routing = False
                    metrics.STALE_HOLDS.inc()
                    log.info("request %s: %s; placing it again without reuse", run.request_id, stale)
                except _NoRoomYet:  # another replica took the GPU's last slot first: place again
                    time.sleep(_PLACE_POLL_S[0])
                finally:
                    self._end_attempt(attempt)
            tail = run.detok.finish()
            if tail:
                yield Delta(tail, [])
            self._warm_reply(run)
            yield self._final(run)
        finally:
            with self._active_lock:
                self.active -= 1

    def _on_lost(self, run: _Run, lost: WorkerLost | KvRefused) -> None:
        run.excluded.add(lost.worker_id)
        if isinstance(lost, KvRefused):  # a card refused the KV: try elsewhere, nothing moved
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
        if self._card_scores_prompt(run):
            yield from self._score_on_card(run, attempt, wait_s)
            return
        gpu, decoder, attempt.placement = self._place(attempt.claim_id, run.prompt_ids, run.sampling, run.excluded,
                                                      run.cancelled, wait_s, self._reuse_salt(run))
        attempt.decoder = decoder
        metrics.REUSE_PATHS.labels(attempt.placement.path).inc()
        self.leases.hold_on(attempt.claim_id, decoder.record.address, decoder.record.worker_id)
        if not run.tokens:
            run.serve_path = attempt.placement.path
        if gpu is None:
            yield from self._extend(run, attempt, decoder)
            return
        remote = decoder is not gpu  # the KV goes to a decode-role worker (else GPU assist: it stays on the GPU)
        if not remote and not run.tokens and attempt.placement.path == PATH_TRANSFER:
            run.serve_path = PATH_ASSIST
        log.info("request %s: %d prompt + %d generated tokens, prefill on %s, decode on %s", attempt.claim_id,
                 len(run.prompt_ids), len(run.tokens), gpu.record.worker_id, decoder.record.worker_id)
        held = attempt.placement.held_tokens if attempt.placement.path == PATH_TRANSFER_PARTIAL else 0
        prefill = self._prefill(gpu, decoder if remote else None, attempt.claim_id, run, held)
        if held:  # the card kept these; only the rest's KV moved
            run.reused_tokens = held
        run.refused_since = None
        self._release_claim(attempt.claim_id, "prefill")
        run.prefills.append(prefill)
        run.decode_device, run.decode_worker, run.prefill_worker = (
            decoder.record.kind, decoder.record.worker_id, gpu.record.worker_id)
        prompt_logprobs = None
        if run.prompt_logprobs is None and run.sampling.prompt_logprobs:  # the first prefill's scores
            run.prompt_logprobs = prompt_logprobs = prefill.prompt_logprobs
        yield self._emit(run, prefill.first_token_id, prefill.first_logprob, prompt_logprobs)
        run.finish = prefill.finish
        if run.finish is not None:
            return
        attempt.decode_call = self.workers.decode(
            decoder.record, attempt.claim_id, run.tokens[-1], len(run.prompt_ids) + len(run.tokens) - 1, run.sampling,
            run.tokens, timeout_s=self.settings.decode_token_timeout_s * run.sampling.max_new_tokens,
            keep_prompt_ids=run.prompt_ids if self.settings.kv_reuse and remote else [],
            cache_salt=run.cache_salt or DEFAULT_SALT)
        yield from self._stream(run, attempt, decoder, remote)

    def _reuse_salt(self, run: _Run) -> bytes | None:
        """The salt to route this attempt by held KV, or None: reuse off (the cluster's --no-kv-reuse, a stale
        hint before, prompt logprobs asked for: cached KV is never read for them, or tokens generated already)."""
        if not self.settings.kv_reuse or not run.reuse_routing or run.tokens or run.sampling.prompt_logprobs:
            return None
        return run.cache_salt

    def _card_scores_prompt(self, run: _Run) -> bool:
        """--prompt-logprobs-on card, prompt logprobs asked for and not scored yet (a migration after the first
        token goes the normal way: the prompt is scored once)."""
        return (self.settings.prompt_logprobs_on == "card" and run.sampling.prompt_logprobs
                and run.prompt_logprobs is None)

    def _score_on_card(self, run: _Run, attempt: _Attempt, wait_s: float) -> Iterator[Delta]:
        """Claim an FPGA worker's decode slot (waiting up to wait_s for one), then DecodeFromHeld with nothing
        held: the card steps the whole prompt, scores it, and decodes; _stream takes the scores."""
        tokens = len(run.prompt_ids) + run.sampling.max_new_tokens
        deadline, pause = time.monotonic() + wait_s, _PLACE_POLL_S[0]
        while True:
            workers = self._live_workers(run.excluded)
            cards = [w for w in workers.values() if w.record.kind == "fpga"]
            if not cards:
                raise Unavailable("--prompt-logprobs-on card: no FPGA worker is registered to score the prompt")
            need = kv_bytes_needed(cards, tokens)
            card_id = self.registry.claim_first_free(attempt.claim_id, "decode", [
                w.record.worker_id for w in sorted(cards, key=lambda w: w.active) if w.record.kv_free_bytes >= need])
            if card_id is not None:
                break
            if time.monotonic() >= deadline or run.cancelled():
                raise ResourceExhausted(f"no FPGA worker had a free slot to score the prompt within {wait_s:.0f} s "
                                        "(--prompt-logprobs-on card); retry", retry_after_s=max(1.0, wait_s / 2))
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, _PLACE_POLL_S[1])
        card = attempt.decoder = workers[card_id]
        self.leases.hold_on(attempt.claim_id, card.record.address, card.record.worker_id)
        run.serve_path = PATH_CARD_PROMPT
        run.decode_device, run.decode_worker, run.prefill_worker = card.record.kind, card.record.worker_id, ""
        log.info("request %s: %d prompt tokens scored and decoded on %s", attempt.claim_id, len(run.prompt_ids),
                 card_id)
        attempt.decode_call = self.workers.decode_from_held(
            card.record, attempt.claim_id, run.prompt_ids, run.sampling, run.cache_salt or DEFAULT_SALT, 0,
            timeout_s=self.settings.decode_token_timeout_s * run.sampling.max_new_tokens)
        try:
            yield from self._stream(run, attempt, card, remote=True)
        except HeldKvGone as refused:  # a card that cannot step a whole prompt (no DecodeFromHeld): try another
            run.excluded.add(card.record.worker_id)
            log.warning("request %s: %s; scoring the prompt on another card", run.request_id, refused)

    def _extend(self, run: _Run, attempt: _Attempt, card: WorkerState) -> Iterator[Delta]:
        """The extend path: the card holding the prompt's prefix forces the rest of the prompt and decodes."""
        held = attempt.placement.held_tokens
        log.info("request %s: %d prompt tokens, extend on %s (holds at least %d)", attempt.claim_id,
                 len(run.prompt_ids), card.record.worker_id, held)
        run.decode_device, run.decode_worker, run.prefill_worker = card.record.kind, card.record.worker_id, ""
        attempt.decode_call = self.workers.decode_from_held(
            card.record, attempt.claim_id, run.prompt_ids, run.sampling, run.cache_salt or DEFAULT_SALT, held,
            timeout_s=self.settings.decode_token_timeout_s * run.sampling.max_new_tokens)
        try:
            yield from self._stream(run, attempt, card, remote=True)
        finally:
            if run.tokens:  # the card reports what it reused with its first token; it reused at least `held`
                run.reused_tokens = attempt.decode_call.reused_tokens or held

    def _stream(self, run: _Run, attempt: _Attempt, decoder: WorkerState, remote: bool) -> Iterator[Delta]:
        """Emit attempt.decode_call's tokens until the request ends; WorkerLost when the decoder dies or stalls."""
        # GPU assist is not watched: its steps queue behind other requests' prefills, of any length
        ticket = (self.watchdog.watch(attempt.decode_call, self.settings.decode_stall_s,
                                      alive=lambda: self.registry.is_registered(decoder.record.worker_id))
                  if remote else None)
        try:
            for step in attempt.decode_call:
                if ticket is not None:
                    self.watchdog.progress(ticket, step.step_s)
                run.device_decode_s += step.step_s
                run.modeled_s += step.modeled_step_s
                scored = None
                if run.sampling.prompt_logprobs and run.prompt_logprobs is None:  # a card scored it (_score_on_card)
                    run.prompt_logprobs = scored = list(step.prompt_logprobs)
                yield self._emit(run, step.token_id, step.logprob, scored)
                if ticket is not None:  # a slow client reading the stream is no stall of the worker
                    self.watchdog.progress(ticket)
                run.finish = step.finish
        except GlitchesError as error:  # WorkerLost, or the failure the worker answered
            if ticket is not None and ticket.stalled:
                raise WorkerLost(f"decode on {decoder.record.worker_id} made no progress for {ticket.limit_s():.1f} s "
                                 "(--decode-stall-s); treating the worker as dead",
                                 worker_id=decoder.record.worker_id) from error
            raise
        finally:
            if ticket is not None:
                self.watchdog.unwatch(ticket)
        if run.finish is None:
            raise WorkerLost(f"decode on {decoder.record.worker_id} ended early", worker_id=decoder.record.worker_id)

    def _emit(self, run: _Run, token: int, logprob: TokenLogprob | None = None,
              prompt_logprobs: list[TokenLogprob] | None = None) -> Delta:
        """Record one generated token (and its log-probability, if any) and return its Delta."""
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
            run.logprobs.append(logprob)
            logprobs = [run.logprobs[-1]]
        if prompt_logprobs is None:
            return Delta(run.detok.add(token), [token], logprobs)
        return Delta(run.detok.add(token), [token], logprobs, prompt_logprobs, run.prompt_ids)

    def _warm_reply(self, run: _Run) -> None:
        """Reply warming (--warm-replies, with --kv-reuse): a card decoded this reply, so no GPU holds its KV and the
        next turn's prefill would compute it again. WarmPrefix (not waited for) has the GPU that prefilled the request
        (extend path: the least loaded live GPU) cache prompt + reply except the last token (whose KV was never
        computed) under the tenant's salt. Not after a GPU-assist decode (the GPU cached it), prompt logprobs
        (cached KV is never read for them), a cancel or a failure (this runs only after a normal finish)."""
        settings = self.settings
        if (not settings.warm_replies or not settings.kv_reuse or run.finish is None or run.cancelled()
                or run.sampling.prompt_logprobs or not run.decode_worker or run.decode_worker == run.prefill_worker):
            return
        try:
            gpus = [w for w in self._live_workers(set()).values() if ROLE_PREFILL in w.record.capabilities.roles]
        except Unavailable as error:
            log.warning("request %s: not warming its reply: %s", run.request_id, error)
            return
        gpu = next((w for w in gpus if w.record.worker_id == run.prefill_worker), None)
        if gpu is None and gpus:
            gpu = min(gpus, key=lambda w: w.active)
        if gpu is not None:
            self.workers.warm_prefix(gpu.record, run.request_id, run.prompt_ids + run.tokens[:-1], run.cache_salt)

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
            self.workers.release(attempt.decoder.record, attempt.claim_id, wait=not attempt.lost)
        self.leases.discard(attempt.claim_id)
        try:
            self.registry.release(attempt.claim_id, "prefill")
            self.registry.release(attempt.claim_id, "decode")
        except Unavailable as error:  # Redis is down: the claims' leases expire and are swept later
            log.warning("could not release the claims of %s now: %s", attempt.claim_id, error)

    def _final(self, run: _Run) -> Final:
        done = time.monotonic()
        decode_s = done - run.first_out
        last = run.prefills[-1] if run.prefills else PrefillResult(0, None)  # extend: no prefill ran
        timings = dict(
            ttft_s=run.first_out - run.arrived, prefill_s=sum(p.prefill_s for p in run.prefills),
            kv_bytes=sum(p.kv_bytes for p in run.prefills), kv_exposed_s=sum(p.kv_exposed_s for p in run.prefills),
            decode_s=decode_s,
            tokens_per_s=(len(run.tokens) - 1) / decode_s if decode_s > 0 and len(run.tokens) > 1 else 0.0,
            device_decode_s=run.device_decode_s, modeled_decode_s=run.modeled_s,
            layers_received_before_prefill_end=last.layers_received_before_prefill_end,
            num_layers=last.num_layers, total_s=done - run.arrived, kv_transport=last.kv_transport,
            kv_gbps=_gbps(sum(p.kv_bytes for p in run.prefills), sum(p.kv_transfer_s for p in run.prefills)),
            serve_path=run.serve_path, reused_tokens=run.reused_tokens)
        metrics.REQUESTS_FINISHED.labels(run.decode_device).inc()
        return Final(run.request_id, run.prompt_ids, run.tokens, run.detok.text, run.finish, run.decode_device,
                     run.decode_worker, run.prefill_worker, timings, run.migrations, run.logprobs,
                     run.prompt_logprobs or [], min(self._cached_tokens(run), len(run.prompt_ids)))

    @staticmethod
    def _cached_tokens(run: _Run) -> int:
        """Prompt tokens not computed for the first token: the card's reused prefix (extend), else the GPU's hits."""
        if run.serve_path == PATH_EXTEND:
            return run.reused_tokens
        return run.prefills[0].cached_tokens if run.prefills else 0

    def _prefill(self, gpu: WorkerState, decoder: WorkerState | None, claim_id: str, run: _Run,
                 held: int = 0) -> PrefillResult:
        """Prefill on `gpu`, the KV streaming to `decoder` (None: GPU assist). A GPU refusing GPU assist is
        asked again (_NoRoomYet) until --queue-wait-s has passed since its first refusal. held > 0: the
        decoder holds that prefix, only the rest's KV goes (a card that lost it: HeldKvGone)."""
        # prompt logprobs come from the first prefill only: a re-prefill after a migration need not score again
        sampling = replace(run.sampling, prompt_logprobs=run.sampling.prompt_logprobs and run.prompt_logprobs is None)
        token = ""
        if decoder is not None and self.kv_tokens:
            token = self.kv_tokens.issue(claim_id, decoder.record.worker_id, held)
        try:
            return self.workers.prefill(gpu.record, claim_id, run.prompt_ids, sampling, run.tokens,
                                        target=decoder.record if decoder is not None else None, kv_token=token,
                                        cache_salt=run.cache_salt, held_prefix_tokens=held)
        except WorkerFull as error:  # GPU assist refused by the GPU
            run.refused_since = run.refused_since or time.monotonic()
            if time.monotonic() - run.refused_since < self.settings.queue_wait_s and not run.cancelled():
                raise _NoRoomYet() from error
            raise


def _gbps(kv_bytes: int, seconds: float) -> float:
    """KV bytes over the transfers' wall time, GB/s (0 without a transfer)."""
    return kv_bytes / seconds / 1e9 if kv_bytes and seconds > 0 else 0.0
