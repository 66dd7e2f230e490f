"""The GPU worker's engine: prefill with layer-by-layer KV streaming, and GPU-assist decode.

One forward pass runs at a time on the device (a lock); GPU-assist decode takes
the lock per step, so other requests' prefills interleave with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gpu_worker.kv_sender import KvTransferFailed, open_sender
from gpu_worker.settings import GpuWorkerSettings
from gpu_worker.streaming_cache import LayerStreamingCache
from services import grammar, models
from services.decoding import Finish, Step, decode_loop, finish_reason
from services.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from services.logprobs import TokenLogprob, prompt_logprobs
from services.sampling import Sampling, sample
from services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrefillResult:
    first_token_id: int
    prefill_s: float
    kv_bytes: int
    kv_transfer_s: float
    kv_exposed_s: float
    layers_received_before_prefill_end: int
    num_layers: int
    finish: Finish | None
    first_logprob: TokenLogprob | None = None  # with sampling.logprobs
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # with sampling.prompt_logprobs: prompt[1:], in order
    kv_transport: str = ""  # "grpc", "shm" or "nixl"; "" when decoding locally


@dataclass
class _LocalRequest:
    cache: LayerStreamingCache
    lock: threading.Lock  # one decode stream per request at a time


class GpuEngine:
    def __init__(self, settings: GpuWorkerSettings, source: models.ModelSource):
        self.settings = settings
        self.device = settings.resolved_device()
        self.dtype = settings.resolved_dtype(self.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.model = models.load_causal_lm(source, self.device, self.dtype)
        self.tokenizer = models.load_tokenizer(source)
        self.config = self.model.config
        self.num_layers = self.config.num_hidden_layers
        head_dim = getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads
        # K and V, all layers, all KV heads, in the model's dtype, bytes per token
        self.kv_bytes_per_token = (2 * self.num_layers * self.config.num_key_value_heads * head_dim
                                   * torch.finfo(getattr(torch, self.dtype)).bits // 8)
        self.max_context_tokens = self.config.max_position_embeddings
        self._device_lock = threading.Lock()
        self._local: dict[str, _LocalRequest] = {}
        self._local_lock = threading.Lock()

    # --- text --------------------------------------------------------------
    def text_of(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # --- prefill -----------------------------------------------------------
    def _forward(self, input_ids: list[int], position: int, cache, every_position: bool = False) -> torch.Tensor:
        """Run the model over input_ids starting at `position`; logits of the last position [vocab] float32,
        or with every_position those of every position [len(input_ids), vocab] (for prompt logprobs)."""
        ids = torch.tensor([input_ids], dtype=torch.long, device=self.device)
        positions = torch.arange(position, position + len(input_ids), device=self.device).unsqueeze(0)
        with self._device_lock, torch.inference_mode():
            out = self.model(input_ids=ids, position_ids=positions, cache=cache, use_cache=True,
                             logits_to_keep=0 if every_position else 1)
            return out.logits[0].float() if every_position else out.logits[0, -1].float()

    def prefill(self, request_id: str, prompt: list[int], sampling: Sampling,
                target: worker_pb2_grpc.WorkerStub | None, generated: list[int] = (),
                kv_token: str = "", kv_transport: str = "grpc") -> PrefillResult:
        """Prefill `prompt` + `generated`; stream its KV to `target`, or keep it here (GPU assist) when None.

        `generated` holds tokens the request produced before a migration; the returned
        token is generated token number len(generated). `kv_token` (the scheduler's
        authorisation of this transfer) is forwarded to the target in the KV header;
        `kv_transport` (gpu_worker/kv_transport.py) is how the KV bytes travel.
        """
        generated = list(generated)
        if not prompt:
            raise InvalidArgument("prompt_token_ids is empty; send at least one token")
        if len(generated) >= sampling.max_new_tokens:
            raise InvalidArgument(f"{len(generated)} tokens already generated: nothing left of max_new_tokens "
                                  f"({sampling.max_new_tokens})")
        if len(prompt) + sampling.max_new_tokens > self.max_context_tokens:
            raise InvalidArgument(f"prompt ({len(prompt)} tokens) + max_new_tokens ({sampling.max_new_tokens}) "
                                  f"exceeds the model's context of {self.max_context_tokens} tokens")
        tokens = prompt + generated  # the forward pass covers both
        constraint = grammar.constraint_for(sampling, self.tokenizer, generated)  # None without response_format
        vocab = self.config.vocab_size
        if max(tokens) >= vocab:
            raise InvalidArgument(f"token id {max(tokens)} is outside the vocabulary (size {vocab})")
        sender = None
        if target is not None:
            header = worker_pb2.KvHeader(request_id=request_id, prompt_tokens=len(tokens),
                                         reserve_tokens=len(prompt) + sampling.max_new_tokens,
                                         num_layers=self.num_layers, kv_token=kv_token)
            sender = open_sender(target, header, self.settings.kv_transfer_timeout_s, kv_transport)
        elif request_id in self._local:
            raise AlreadyExists(f"request {request_id} already holds KV on this worker")
        cache = LayerStreamingCache(self.config, sender.put_layer if sender else None)
        started = time.monotonic()
        try:
            logits = self._forward(tokens, 0, cache, every_position=sampling.prompt_logprobs)
        except KvTransferFailed:
            error = sender.failure() or Unavailable("the decode worker ended the KV transfer early")
            sender.abort()
            raise error from None
        except BaseException:
            if sender:
                sender.abort()
            raise
        prefill_end = time.monotonic()
        prefill_end_unix = time.time()
        cache.stop_streaming()
        scored: tuple[TokenLogprob, ...] = ()
        if sampling.prompt_logprobs:  # logits [len(tokens), vocab]: row i scores token i + 1
            scored = tuple(prompt_logprobs(logits, prompt, sampling.top_logprobs))
            logits = logits[-1]
        masked = constraint.mask(logits) if constraint is not None else logits
        first, first_logprob = sample(masked, sampling, len(generated), raw_logits=logits)
        if constraint is not None:
            constraint.advance(first)
        finish = finish_reason(generated + [first], sampling, self.text_of, constraint)
        if sender is None:
            with self._local_lock:
                self._local[request_id] = _LocalRequest(cache, threading.Lock())
            return PrefillResult(first, prefill_end - started, 0, 0.0, 0.0, self.num_layers, self.num_layers, finish,
                                 first_logprob, scored)
        transfer = sender.finish()
        received_in_time = sum(1 for t in transfer.layer_received_unix_s if t <= prefill_end_unix)
        return PrefillResult(
            first_token_id=first, prefill_s=prefill_end - started, kv_bytes=transfer.kv_bytes,
            kv_transfer_s=transfer.done_monotonic - transfer.first_send_monotonic,
            kv_exposed_s=max(0.0, transfer.done_monotonic - prefill_end),
            layers_received_before_prefill_end=received_in_time, num_layers=self.num_layers, finish=finish,
            first_logprob=first_logprob, prompt_logprobs=scored, kv_transport=sender.transport)

    # --- GPU-assist decode -------------------------------------------------
    def decode(self, request_id: str, generated: list[int], position: int, sampling: Sampling,
               cancelled: Callable[[], bool]) -> Iterator[Step]:
        """Decode from KV kept here by a local prefill; the KV is freed when the stream ends."""
        with self._local_lock:
            local = self._local.get(request_id)
        if local is None:
            raise NotFound(f"request {request_id} holds no KV on this worker; run Prefill with an empty target first")
        constraint = grammar.constraint_for(sampling, self.tokenizer, generated)  # None without response_format
        if not local.lock.acquire(blocking=False):
            raise AlreadyExists(f"request {request_id} is already decoding on this worker")
        try:
            yield from decode_loop(lambda token, pos: self._forward([token], pos, local.cache), generated, position,
                                   sampling, self.text_of, cancelled, constraint=constraint)
        finally:
            local.lock.release()
            self.release(request_id)

    def release(self, request_id: str) -> bool:
        with self._local_lock:
            return self._local.pop(request_id, None) is not None

    def active_requests(self) -> int:
        with self._local_lock:
            return len(self._local)
