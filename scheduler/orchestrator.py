"""One request from prompt to last token: validate, place, prefill, decode, release.

The scheduler holds no state that Redis does not also hold: slots are claims in
the registry, released on finish, on error and when the client goes away.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import grpc

from scheduler.detokenizer import Detokenizer
from scheduler.leases import LeaseKeeper
from scheduler.placement import ClusterSnapshot, DeviceKind, NoWorkerAvailable, PlacementRequest, WorkerView, place
from scheduler.settings import SchedulerSettings
from services import metrics
from services.channels import WorkerStubs
from services.decoding import Finish
from services.errors import InvalidArgument, ResourceExhausted, Unavailable, from_rpc_error
from services.proto_convert import FINISH_FROM_PROTO
from services.registry import Registry, WorkerState
from services.sampling import Sampling
from services.stubs.glitches.v1 import common_pb2, worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerateInput:
    prompt: str
    chat: bool
    sampling: Sampling
    model: str = ""


@dataclass(frozen=True)
class Delta:
    text: str
    token_ids: list[int]


@dataclass
class Final:
    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish: Finish
    decode_device: str  # "fpga" or "gpu"
    decode_worker: str
    prefill_worker: str
    timings: dict[str, float] = field(default_factory=dict)


class ModelInfo:
    """What the scheduler needs of the model: tokenizer, EOS ids, context length."""

    def __init__(self, name: str, tokenizer, eos_token_ids: tuple[int, ...], max_context_tokens: int):
        self.name = name
        self.tokenizer = tokenizer
        self.eos_token_ids = eos_token_ids
        self.max_context_tokens = max_context_tokens

    def text_of(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def encode(self, prompt: str, chat: bool) -> list[int]:
        if chat:
            ids = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                     add_generation_prompt=True, tokenize=True)
            ids = ids["input_ids"] if hasattr(ids, "keys") else ids
            return [int(i) for i in ids]
        return list(self.tokenizer(prompt)["input_ids"])


def kv_bytes_needed(workers, tokens: int) -> int:
    """KV bytes `tokens` take on the most demanding live FPGA, with its reservation rounding (block units)."""
    needs = [-(-tokens // w.record.kv_granularity_tokens) * w.record.kv_granularity_tokens
             * w.record.kv_bytes_per_token for w in workers if w.record.kind == "fpga"]
    return max(needs, default=0)


class Orchestrator:
    def __init__(self, settings: SchedulerSettings, registry: Registry, model: ModelInfo,
                 leases: LeaseKeeper | None = None):
        self.settings = settings
        self.registry = registry
        self.leases = leases or LeaseKeeper(registry)
        self.model = model
        self._stubs = WorkerStubs()
        self.active = 0
        self._active_lock = threading.Lock()

    def _stub(self, address: str) -> worker_pb2_grpc.WorkerStub:
        return self._stubs.get(address)

    # --- validation ----------------------------------------------------------
    def validate(self, request: GenerateInput) -> tuple[list[int], Sampling]:
        s = request.sampling
        if request.model and request.model != self.model.name:
            raise InvalidArgument(f"unknown model {request.model!r}: this cluster serves {self.model.name!r}")
        if not request.prompt:
            raise InvalidArgument("the prompt is empty; give some text")
        if s.max_new_tokens < 1:
            raise InvalidArgument(f"max_new_tokens must be at least 1, got {s.max_new_tokens}")
        if s.max_new_tokens > self.settings.max_new_tokens_limit:
            raise InvalidArgument(f"max_new_tokens {s.max_new_tokens} is above this cluster's limit of "
                                  f"{self.settings.max_new_tokens_limit}")
        if not s.temperature >= 0.0:  # also rejects NaN
            raise InvalidArgument(f"temperature must be >= 0 (0 = greedy), got {s.temperature}")
        if not 0.0 < s.top_p <= 1.0:
            raise InvalidArgument(f"top_p must be in (0, 1], got {s.top_p}")
        prompt_ids = self.model.encode(request.prompt, request.chat)
        if not prompt_ids:
            raise InvalidArgument("the prompt tokenizes to nothing; give some text")
        context = self.model.max_context_tokens
        if len(prompt_ids) + s.max_new_tokens > context:
            raise InvalidArgument(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({s.max_new_tokens}) exceeds "
                                  f"the model's context of {context} tokens; shorten the prompt or ask for fewer tokens")
        eos = s.eos_token_ids or self.model.eos_token_ids
        sampling = Sampling(s.temperature, s.top_p, s.seed, s.max_new_tokens, s.stop, tuple(eos))
        return prompt_ids, sampling

    # --- placement -------------------------------------------------------------
    def _live_workers(self) -> dict[str, WorkerState]:
        return {w.record.worker_id: w for w in self.registry.workers()
                if w.healthy and w.record.model == self.model.name}

    def _place(self, request_id: str, prompt_ids: list[int], sampling: Sampling):
        """Claim a prefill GPU and, when one is free, an FPGA decode slot; returns (gpu, decoder)."""
        for _ in range(3):  # a worker may vanish between reading the registry and claiming it
            workers = self._live_workers()
            snapshot = ClusterSnapshot(tuple(
                WorkerView(w.record.worker_id, DeviceKind(w.record.kind), w.record.slots, w.active,
                           w.record.kv_free_bytes) for w in workers.values()))
            need = kv_bytes_needed(workers.values(), len(prompt_ids) + sampling.max_new_tokens)
            try:
                decision = place(snapshot, PlacementRequest(len(prompt_ids), sampling.max_new_tokens, need))
            except NoWorkerAvailable as error:
                raise Unavailable(f"{error}; start a gpu-worker (glitches gpu-worker) or wait for one") from None
            gpu = workers[decision.prefill_worker]
            if not self.registry.claim_alive(request_id, "prefill", gpu.record.worker_id):
                continue
            fpga_id = self.registry.claim_first_free(request_id, "decode", list(decision.fpga_candidates))
            if fpga_id is not None:
                return gpu, workers[fpga_id]
            if self.registry.claim_alive(request_id, "decode", gpu.record.worker_id):
                return gpu, gpu
            self.registry.release(request_id, "prefill")
        raise Unavailable("workers kept disappearing while placing the request; retry")

    # --- the request -----------------------------------------------------------
    def generate(self, request: GenerateInput) -> Iterator[Delta | Final]:
        arrived = time.monotonic()
        prompt_ids, sampling = self.validate(request)
        request_id = uuid.uuid4().hex
        with self._active_lock:
            self.active += 1
        self.leases.add(request_id)
        decode_call = None
        decoder = None
        try:
            gpu, decoder = self._place(request_id, prompt_ids, sampling)
            on_fpga = decoder is not gpu
            log.info("request %s: %d prompt tokens, prefill on %s, decode on %s", request_id, len(prompt_ids),
                     gpu.record.worker_id, decoder.record.worker_id)
            try:
                prefill = self._prefill(gpu, decoder if on_fpga else None, request_id, prompt_ids, sampling)
            except ResourceExhausted as error:
                if not on_fpga:
                    raise
                # the card's free KV changed after our placement read it: decode on the GPU instead
                log.warning("request %s: %s refused the KV (%s); decoding on %s", request_id,
                            decoder.record.worker_id, error, gpu.record.worker_id)
                self._release_on_worker(decoder, request_id)
                self.registry.release(request_id, "decode")
                decoder, on_fpga = None, False
                if not self.registry.claim_alive(request_id, "decode", gpu.record.worker_id):
                    raise Unavailable(f"{gpu.record.worker_id} vanished while falling back to GPU assist; retry")
                decoder = gpu
                prefill = self._prefill(gpu, None, request_id, prompt_ids, sampling)
            self.registry.release(request_id, "prefill")
            first = prefill.first_token_id
            detok = Detokenizer(self.model.text_of, sampling.stop)
            tokens = [first]
            yield Delta(detok.add(first), [first])
            first_out = last_out = time.monotonic()
            metrics.TTFT.observe(first_out - arrived)
            finish = FINISH_FROM_PROTO[prefill.finish_reason]
            device_decode_s = modeled_s = 0.0
            if finish is None:
                decode_call = self._stub(decoder.record.address).Decode(
                    worker_pb2.DecodeRequest(request_id=request_id, first_token_id=first, position=len(prompt_ids),
                                             sampling=sampling.to_proto(common_pb2.SamplingParams),
                                             generated_token_ids=tokens),
                    timeout=self.settings.decode_token_timeout_s * sampling.max_new_tokens)
                try:
                    for step in decode_call:
                        tokens.append(step.token_id)
                        device_decode_s += step.step_s
                        modeled_s += step.modeled_step_s
                        yield Delta(detok.add(step.token_id), [step.token_id])
                        now = time.monotonic()
                        metrics.INTER_TOKEN.observe(now - last_out)
                        last_out = now
                        finish = FINISH_FROM_PROTO[step.finish_reason]
                except grpc.RpcError as error:
                    raise from_rpc_error(error, f"decode on {decoder.record.worker_id} failed") from error
            tail = detok.finish()
            if tail:
                yield Delta(tail, [])
            done = time.monotonic()
            decode_s = done - first_out
            timings = dict(
                ttft_s=first_out - arrived, prefill_s=prefill.prefill_s, kv_bytes=prefill.kv_bytes,
                kv_exposed_s=prefill.kv_exposed_s, decode_s=decode_s,
                tokens_per_s=(len(tokens) - 1) / decode_s if decode_s > 0 and len(tokens) > 1 else 0.0,
                device_decode_s=device_decode_s, modeled_decode_s=modeled_s,
                layers_received_before_prefill_end=prefill.layers_received_before_prefill_end,
                num_layers=prefill.num_layers, total_s=done - arrived)
            metrics.REQUESTS_FINISHED.labels("fpga" if on_fpga else "gpu").inc()
            yield Final(request_id, prompt_ids, tokens, detok.text, finish or Finish.LENGTH,
                        "fpga" if on_fpga else "gpu", decoder.record.worker_id, gpu.record.worker_id, timings)
        finally:
            if decode_call is not None:
                decode_call.cancel()
            if decoder is not None:
                self._release_on_worker(decoder, request_id)
            self.registry.release(request_id, "prefill")
            self.registry.release(request_id, "decode")
            self.leases.discard(request_id)
            with self._active_lock:
                self.active -= 1

    def _prefill(self, gpu: WorkerState, fpga: WorkerState | None, request_id: str, prompt_ids: list[int],
                 sampling: Sampling) -> worker_pb2.PrefillResponse:
        target = worker_pb2.DecodeTarget(address=fpga.record.address, worker_id=fpga.record.worker_id) if fpga \
            else worker_pb2.DecodeTarget()
        try:
            return self._stub(gpu.record.address).Prefill(
                worker_pb2.PrefillRequest(request_id=request_id, prompt_token_ids=prompt_ids,
                                          sampling=sampling.to_proto(common_pb2.SamplingParams), target=target),
                timeout=self.settings.prefill_timeout_s)
        except grpc.RpcError as error:
            raise from_rpc_error(error, f"prefill on {gpu.record.worker_id} failed") from error

    def _release_on_worker(self, worker: WorkerState, request_id: str) -> None:
        try:
            self._stub(worker.record.address).Release(worker_pb2.ReleaseRequest(request_id=request_id),
                                                      timeout=self.settings.release_timeout_s)
        except grpc.RpcError as error:
            log.warning("release of %s on %s failed: %s", request_id, worker.record.worker_id, error.code())

