"""The GPU worker's step loop: schedule -> run -> postprocess, one forward pass per step.

One thread owns the model. Each step it:

1. **schedules**: every decoding request contributes its next token (one each); prefills then
   fill the rest of the step's token budget (`max_batch_tokens`, at least MIN_PREFILL_TOKENS), in
   arrival order, a long GPU-assist prompt in chunks across steps so it never stalls the decodes.
   A prefill whose KV streams to an FPGA runs whole in one step (its sender takes each layer
   whole, so only then does layer i travel while layer i + 1 computes). A warm job (WarmPrefix:
   KV computed only to be cached) comes last, one chunk of at most WARM_CHUNK_TOKENS from the budget
   left, so it delays a real request's step by at most that one chunk;
2. **runs** them as one packed forward pass (glitches/gpu_worker/packed_attention.py), asking for logits
   only at each decode token and at the last token of each prefill's final chunk (at every
   token of every chunk of a prefill that asked for prompt logprobs);
3. **postprocesses**: refuses a decode row of NaN/+Inf logits (InvalidArgument, that request
   only), masks it with the request's grammar Constraint (glitches/services/generation/grammar.py) when it has a
   response format, samples it with services.sampling.sample under its own request's Sampling
   (temperature, top-p, seed, the token's index, min_tokens; the TokenLogprob when asked),
   advances the Constraint, checks its end (services.decoding.finish_reason: max tokens, EOS,
   stop strings, ignore_eos/min_tokens, a complete grammar) and hands the token to the waiting
   RPC thread (a queue per decode, a Future per prefill).

Each step that ran goes to `self.steps` (glitches/gpu_worker/step_log.py: its decode rows' contexts, its
prefill chunks, and its schedule / forward / postprocess seconds), served on the HTTP side port as /steps.

A cancelled request is dropped at the next schedule; the others go on. A failure of the
forward pass fails the requests of that step only; a KV hook failure fails its own request only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from glitches.gpu_worker.packed_attention import LayerHook, PackedBatch, Segment
from glitches.gpu_worker.request_kv import RequestKv
from glitches.gpu_worker.step_log import StepLog
from glitches.services.runtime import metrics
from glitches.services.runtime.speed_meter import AffineSpeedMeter
from glitches.services.generation.decoding import Step, finish_reason
from glitches.services.runtime.errors import Cancelled, InvalidArgument, Unavailable
from glitches.services.generation.logprobs import TokenLogprob, prompt_logprobs
from glitches.services.generation.sampling import Sampling, sample

log = logging.getLogger(__name__)
MIN_PREFILL_TOKENS = 64  # prefill tokens per step even when decodes fill the budget, so prefills always advance
WARM_CHUNK_TOKENS = 128  # most tokens of a warm job (WarmPrefix) in one step: what it may add to a real step


@dataclass
class PrefillJob:
    """Prefill of `tokens` into `kv`; `future` gets (first token, its TokenLogprob or None, prompt logprobs
    (a tuple, empty unless sampling.prompt_logprobs), prefill end monotonic) or an exception."""

    kv: RequestKv
    tokens: list[int]
    sampling: Sampling
    index: int  # generated-token index of the token this prefill produces
    hook: LayerHook | None
    cancelled: Callable[[], bool]
    prompt_len: int = 0  # tokens[:prompt_len] is the prompt (the rest: tokens generated before a migration)
    constraint: object = None  # services.grammar.Constraint of a response format, or None
    future: Future = field(default_factory=Future)
    done_tokens: int = 0  # prompt tokens already in kv
    scored: list[TokenLogprob] = field(default_factory=list)  # prompt logprobs of the chunks so far
    warm: bool = False  # WarmPrefix: lowest priority, no logits; the future gets None when all is in kv


@dataclass
class DecodeJob:
    """GPU-assist decode: feeds generated[-1] at `position`, then each new token; Steps go to `out`."""

    kv: RequestKv
    generated: list[int]
    position: int
    sampling: Sampling
    text_of: Callable[[list[int]], str]
    cancelled: Callable[[], bool]
    constraint: object = None  # services.grammar.Constraint (advanced over `generated`), or None
    out: queue.Queue = field(default_factory=queue.Queue)  # Step, or an exception that ends the stream
    dropped: bool = False  # set by the RPC side when its stream ends


class StepLoop:
    def __init__(self, model, device: str, max_batch_tokens: int, compiled_decode=None, threads: int = 0):
        self.model = model
        self.threads = threads  # intra-op CPU threads of the loop thread (0: torch's default)
        self.device = device
        self.max_batch_tokens = max_batch_tokens
        self._decode_model = compiled_decode or model  # torch.compile'd model for decode-only steps, if any
        self.prefill_speed = AffineSpeedMeter()  # tokens per forward second of steps that prefill (the registry record's)
        self.steps = StepLog()  # the last steps run, by composition and seconds (GET /steps)
        self._prefills: list[PrefillJob] = []
        self._decodes: list[DecodeJob] = []
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpu-step-loop", daemon=True)
        self._thread.start()

    # --- RPC side ------------------------------------------------------------
    def submit_prefill(self, job: PrefillJob) -> Future:
        with self._cond:
            if self._stopping:
                raise Unavailable("the GPU worker is stopping")
            self._prefills.append(job)
            self._cond.notify()
        return job.future

    def submit_decode(self, job: DecodeJob) -> None:
        with self._cond:
            if self._stopping:
                raise Unavailable("the GPU worker is stopping")
            self._decodes.append(job)
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def pending(self) -> tuple[int, int]:
        """(prefills, decodes) waiting or running."""
        with self._cond:
            return len(self._prefills), len(self._decodes)

    # --- the loop --------------------------------------------------------------
    def _run(self) -> None:
        if self.threads:  # OpenMP's thread count is per calling thread: set it in the one that runs the model
            torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                while not self._stopping and not self._prefills and not self._decodes:
                    self._cond.wait()
                if self._stopping:
                    self._fail_all(Unavailable("the GPU worker stopped"))
                    return
                started = time.monotonic()
                decodes, chunks = self._schedule()
            if decodes or chunks:
                self._step(decodes, chunks, started, time.monotonic() - started)

    def _schedule(self) -> tuple[list[DecodeJob], list[tuple[PrefillJob, int]]]:
        """Under the lock: drop cancelled work, pick this step's decodes and prefill chunks (job, tokens)."""
        for job in [j for j in self._decodes if j.dropped or j.cancelled()]:
            self._decodes.remove(job)
            job.out.put(Cancelled("the decode was cancelled"))
        for job in [j for j in self._prefills if j.cancelled()]:
            self._prefills.remove(job)
            job.future.set_exception(Cancelled("the prefill was cancelled"))
        decodes = []
        for job in list(self._decodes):
            if job.position + 1 > job.kv.capacity:  # would write past the reserved KV: this request alone fails
                self._decodes.remove(job)
                job.out.put(InvalidArgument(f"decode past the {job.kv.capacity} tokens of KV reserved at prefill"))
            else:
                decodes.append(job)
        budget = max(self.max_batch_tokens - len(decodes), MIN_PREFILL_TOKENS)
        chunks = []
        # real prefills in arrival order, then warm jobs (a chunk each, from what the real ones left)
        for job in sorted(self._prefills, key=lambda j: j.warm):
            if budget <= 0:
                break
            if job.warm:
                n = min(len(job.tokens) - job.done_tokens, budget, WARM_CHUNK_TOKENS)
                chunks.append((job, n))
                budget -= n
                continue
            remaining = len(job.tokens) - job.done_tokens
            # a prefill that streams its KV runs whole: the sender takes each layer whole (put_layer), so
            # only an unchunked pass lets layer i travel while layer i + 1 computes
            n = remaining if job.hook is not None else min(remaining, budget)
            chunks.append((job, n))
            budget -= n
        return decodes, chunks

    def _step(self, decodes: list[DecodeJob], chunks: list[tuple[PrefillJob, int]], started: float = 0.0,
              schedule_s: float = 0.0) -> None:
        """started: time.monotonic() when the schedule began; schedule_s: its seconds (both for the step log)."""
        decode_contexts = [job.position for job in decodes]  # tokens in KV each row's attention reads
        chunk_sizes = [(n, job.done_tokens) for job, n in chunks]  # (new tokens, tokens already in KV)
        ids, positions, segments, keep = [], [], [], []
        for job in decodes:
            segments.append(Segment(job.kv, len(ids), 1, job.position))
            ids.append(job.generated[-1])
            positions.append(job.position)
            keep.append(len(ids) - 1)
        finals = []
        for job, n in chunks:
            final = job.done_tokens + n == len(job.tokens)
            segments.append(Segment(job.kv, len(ids), n, job.done_tokens, hook=job.hook if final else None))
            ids.extend(job.tokens[job.done_tokens:job.done_tokens + n])
            positions.extend(range(job.done_tokens, job.done_tokens + n))
            if job.sampling.prompt_logprobs:  # every position's logits: row j scores token done_tokens + j + 1
                keep.extend(range(len(ids) - n, len(ids)))
            elif final and not job.warm:
                keep.append(len(ids) - 1)
            if final:
                finals.append(job)
        prefill_tokens = sum(n for _, n in chunks)
        started = time.perf_counter()
        try:
            logits = self._forward(ids, positions, segments, keep, decode_only=not chunks)
        except Exception as error:  # e.g. device out of memory: fail this step's requests, keep serving
            log.exception("step of %d decodes and %d prefill tokens failed", len(decodes), prefill_tokens)
            self._fail_step(decodes, chunks, Unavailable(f"the GPU forward pass failed: {error}"))
            return
        elapsed = time.perf_counter() - started
        ended = time.monotonic()
        phase = "mixed" if decodes and chunks else ("decode" if decodes else "prefill")
        metrics.GPU_STEP.labels(phase).observe(elapsed)
        metrics.GPU_STEP_DECODES.observe(len(decodes))
        metrics.GPU_STEP_PREFILL_TOKENS.observe(prefill_tokens)
        if chunks:  # every token the pass fed (a decode's one too: it shares the pass), over the pass's seconds
            self.prefill_speed.add(len(ids), elapsed)
        self._postprocess(decodes, chunks, finals, segments[len(decodes):], logits, elapsed, ended)
        done = time.monotonic()
        streamed = sum(1 for seg in segments[len(decodes):] if seg.hook is not None)  # KV sent layer by layer
        self.steps.add(started or ended - elapsed, done, decode_contexts, chunk_sizes, schedule_s, elapsed,
                       done - ended, streamed)

    def _forward(self, ids, positions, segments, keep, decode_only: bool) -> torch.Tensor:
        """One packed forward pass; logits [len(keep), vocab] float32."""
        model = self._decode_model if decode_only else self.model
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([ids], device=self.device),
                        position_ids=torch.tensor([positions], device=self.device),
                        glitches_batch=PackedBatch(segments), use_cache=False,
                        logits_to_keep=torch.tensor(keep, dtype=torch.long, device=self.device))
            logits = out.logits[0].float()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)  # so the step's time is the device's, not the launch's
        return logits

    def _postprocess(self, decodes, chunks, finals, prefill_segments, logits, elapsed: float, ended: float) -> None:
        row = 0
        done = []
        for job in decodes:
            if len(job.kv.tokens) == job.position:  # the fed token's KV is now at `position` (names cache blocks)
                job.kv.tokens.append(job.generated[-1])
            job.kv.length = job.position + 1
            row_logits = logits[row]  # [vocab]
            row += 1
            try:
                token, logprob = self._sample(row_logits, job.sampling, len(job.generated), job.constraint,
                                              refuse_non_finite=job.position)
            except Exception as error:  # NaN/+Inf logits or a grammar failure: this request alone fails
                job.out.put(error if isinstance(error, InvalidArgument) else Unavailable(f"sampling failed: {error}"))
                done.append(job)
                continue
            job.generated.append(token)
            job.position += 1
            finish = finish_reason(job.generated, job.sampling, job.text_of, job.constraint)
            job.out.put(Step(token, len(job.generated) - 1, elapsed, finish, logprobs=logprob))
            if finish is not None:
                done.append(job)
        finished_prefills = []
        for (job, n), seg in zip(chunks, prefill_segments):
            start = job.done_tokens
            job.done_tokens += n
            job.kv.length = job.done_tokens
            final = job.done_tokens == len(job.tokens)
            rows = n if job.sampling.prompt_logprobs else (1 if final and not job.warm else 0)
            chunk_logits = logits[row:row + rows]  # [rows, vocab]
            row += rows
            if job.sampling.prompt_logprobs:  # rows score tokens start+1 .. start+n; only prompt ones count
                job.scored.extend(prompt_logprobs(chunk_logits, job.tokens[start:job.prompt_len][:n + 1],
                                                  job.sampling.top_logprobs))
            if not final:
                continue
            finished_prefills.append(job)
            if seg.hook_error is not None:
                job.future.set_exception(seg.hook_error)
                continue
            if job.warm:
                job.future.set_result(None)
                continue
            try:
                first, first_logprob = self._sample(chunk_logits[-1], job.sampling, job.index, job.constraint)
            except Exception as error:
                job.future.set_exception(error)
                continue
            job.future.set_result((first, first_logprob, tuple(job.scored), ended))
        with self._cond:
            for job in done:
                self._decodes.remove(job)
            for job in finished_prefills:
                self._prefills.remove(job)

    @staticmethod
    def _sample(logits: torch.Tensor, sampling: Sampling, index: int, constraint,
                refuse_non_finite: int | None = None) -> tuple[int, TokenLogprob | None]:
        """One row's token: logits [vocab] float32, masked by `constraint` (then advanced) when set.

        With refuse_non_finite (the row's position), NaN or +Inf logits raise InvalidArgument, as the
        single-request decode loop (glitches/services/generation/decoding.py) does; -Inf is a token ruled out, fine.
        """
        if refuse_non_finite is not None and bool(torch.isnan(logits).any() or torch.isposinf(logits).any()):
            raise InvalidArgument(f"the logits at position {refuse_non_finite} hold NaN or +Inf: the request's KV "
                                  "holds NaN or Inf values; send finite KV")
        masked = constraint.mask(logits) if constraint is not None else logits
        token, logprob = sample(masked, sampling, index, raw_logits=logits)
        if constraint is not None:
            constraint.advance(token)
        return token, logprob

    def _fail_step(self, decodes, chunks, error: Exception) -> None:
        with self._cond:
            for job in decodes:
                self._decodes.remove(job)
                job.out.put(error)
            for job, _ in chunks:
                self._prefills.remove(job)
                job.future.set_exception(error)

    def _fail_all(self, error: Exception) -> None:
        for job in self._decodes:
            job.out.put(error)
        for job in self._prefills:
            job.future.set_exception(error)
        self._decodes.clear()
        self._prefills.clear()
