"""The GPU worker's engine: prefill with layer-by-layer KV streaming, and GPU-assist decode, batched.

Every forward pass runs in the step loop (glitches/gpu_worker/step_loop.py), which batches the next token
of every GPU-assist decode with new prefill chunks. RPC threads admit a request
(glitches/gpu_worker/request_table.py: slots and KV blocks), hand it to the loop and wait for its tokens.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch

from glitches.gpu_worker.assist_slots import default_assist_slots
from glitches.gpu_worker.kv_pool import KvPool
from glitches.gpu_worker.packed_attention import ATTN_IMPLEMENTATION
from glitches.kv_plane.prefix_index import DEFAULT_SALT, block_hashes, root_hash
from glitches.gpu_worker.request_kv import RequestKv
from glitches.gpu_worker.request_table import RequestTable
from glitches.gpu_worker.settings import GpuWorkerSettings
from glitches.gpu_worker.step_loop import DecodeJob, PrefillJob, StepLoop
from glitches.kv_plane.kv_abi import KV_BLOCK_TOKENS
from glitches.kv_plane.sender import KvTransferFailed, LayerSender
from glitches.services.generation import grammar, models
from glitches.services.generation.decoding import Finish, Step, finish_reason
from glitches.services.runtime.errors import AlreadyExists, InvalidArgument, NotFound, ResourceExhausted, Unavailable
from glitches.services.generation.logprobs import TokenLogprob
from glitches.services.generation.sampling import Sampling

log = logging.getLogger(__name__)
_POLL_S = 0.05  # how often an RPC thread waiting on the loop checks for its client's cancel
MAX_WARM_JOBS = 1  # WarmPrefix jobs running at once on one worker; more are dropped (WarmResult.dropped)


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
    cached_tokens: int = 0  # leading prompt tokens whose KV came from the prefix cache (not computed)


@dataclass(frozen=True)
class WarmResult:
    """What one WarmPrefix did (tokens): found cached, computed and cached, or nothing at all (dropped)."""

    cached_tokens: int = 0
    warmed_tokens: int = 0
    dropped: bool = False


def kv_budget_bytes(settings: GpuWorkerSettings, device: str) -> int:
    """Bytes for KV: --kv-cache-gib, else --kv-memory-fraction of the memory free now (after the weights)."""
    if settings.kv_cache_gib > 0:
        return int(settings.kv_cache_gib * 2**30)
    if device.startswith("cuda"):
        free, _total = torch.cuda.mem_get_info(torch.device(device))
    else:
        import psutil

        free = psutil.virtual_memory().available
    return int(free * settings.kv_memory_fraction)


class GpuEngine:
    def __init__(self, settings: GpuWorkerSettings, source: models.ModelSource):
        self.settings = settings
        self.device = settings.resolved_device()
        self.dtype = settings.resolved_dtype(self.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.model = models.load_causal_lm(source, self.device, self.dtype)
        self.model.set_attn_implementation(ATTN_IMPLEMENTATION)  # plain SDPA unless a packed batch is passed
        self.tokenizer = models.load_tokenizer(source)
        self.config = self.model.config
        self.num_layers = self.config.num_hidden_layers
        self.head_dim = getattr(self.config, "head_dim", None) or self.config.hidden_size // self.config.num_attention_heads
        torch_dtype = getattr(torch, self.dtype)
        # K and V, all layers, all KV heads, in the model's dtype, bytes per token
        self.kv_bytes_per_token = (2 * self.num_layers * self.config.num_key_value_heads * self.head_dim
                                   * torch.finfo(torch_dtype).bits // 8)
        self.max_context_tokens = self.config.max_position_embeddings
        block_bytes = KV_BLOCK_TOKENS * self.kv_bytes_per_token
        # every request's KV in one tensor of blocks, and the one allocator of them (allocated once; on the
        # CPU stand-in only the pages written are backed), so a step's decodes read and write it with one op per layer
        self.pool = KvPool(max(1, kv_budget_bytes(settings, self.device) // block_bytes), self.num_layers,
                           self.config.num_key_value_heads, self.head_dim, torch_dtype, self.device,
                           prefix_cache=settings.prefix_cache)
        if not settings.slots:  # --slots 0: as many as the KV budget holds at a typical context
            settings = self.settings = replace(settings, slots=default_assist_slots(
                self.pool.total_blocks, self.max_context_tokens, settings.max_batch_tokens))
            log.info("GPU-assist slots from the KV budget (%d blocks): %d", self.pool.total_blocks, settings.slots)
        # the hash chain's model: the name the cluster routes by (the scheduler and the cards root the same chain;
        # path and dtype are fixed within this process, whose cache is its own)
        self._model_key = source.name
        self.requests = RequestTable(self.pool, settings.slots, lambda block_ids: RequestKv(
            len(block_ids), self.num_layers, self.config.num_key_value_heads, self.head_dim, torch_dtype, self.device,
            self.pool, block_ids))
        self.loop = StepLoop(self.model, self.device, settings.max_batch_tokens, self._compiled_decode(),
                             threads=settings.threads)
        self._warm_jobs = 0  # WarmPrefix jobs running (at most MAX_WARM_JOBS)
        self._warm_lock = threading.Lock()

    def _compiled_decode(self):
        """torch.compile of the model for decode-only steps (--compile-decode), or None.

        Attention stays eager (a graph break: its per-request loop is data dependent); the
        projections, norms, RoPE and MLP between are compiled with dynamic shapes, so a
        batch size seen once is not recompiled. Written for CUDA and untested there.
        """
        if not self.settings.compile_decode:
            return None
        return torch.compile(self.model, dynamic=True)

    def close(self) -> None:
        self.loop.stop()

    # --- text --------------------------------------------------------------
    def text_of(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    # --- prefill -----------------------------------------------------------
    def prefill(self, request_id: str, prompt: list[int], sampling: Sampling,
                open_kv: Callable[[int, int], LayerSender] | None, generated: list[int] = (),
                cancelled: Callable[[], bool] = lambda: False, cache_salt: bytes = b"") -> PrefillResult:
        """Prefill `prompt` + `generated`; stream its KV out through `open_kv`, or keep it here (GPU assist) when None.

        `generated` holds tokens the request produced before a migration; the returned
        token is generated token number len(generated). `open_kv(prompt_tokens, reserve_tokens)`
        (built by the servicer with kv_plane.transport.kv_target) starts the transfer once this
        worker has admitted the request; its sender's put_layer runs in the cache hook.
        With sampling.prompt_logprobs the loop keeps every prompt position's logits and scores
        prompt[1:]; with a response format the first token is sampled under its grammar. GPU assist is refused with RESOURCE_EXHAUSTED when no slot or KV is free.

        Prefix cache (--prefix-cache): the cached full blocks of `prompt` + `generated` under `cache_salt`
        (the tenant, set by the scheduler from the authenticated API key; b"": the default tenant) are
        reused and only the rest is computed (never the last token, whose logits are needed); a prefill
        asking for prompt logprobs reads nothing from the cache. A streaming prefill still sends every
        layer's whole KV (cached + computed), so the decode target sees no difference.
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
        self._check_ids(tokens)
        gpu_assist = open_kv is None
        root = root_hash(self._model_key, cache_salt or DEFAULT_SALT) if self.settings.prefix_cache else None
        # names of the full blocks before the last token (that one is always computed, for its logits)
        reusable = block_hashes(tokens[:-1], root) if root is not None and not sampling.prompt_logprobs else []
        held = self.requests.admit(request_id, len(prompt) + sampling.max_new_tokens if gpu_assist else len(tokens),
                                   gpu_assist, wait_s=self.settings.kv_wait_s, cancelled=cancelled, prefix=reusable)
        held.kv.root, held.kv.tokens = root, list(tokens)
        cached = held.kv.cached_tokens
        sender = None
        try:
            if not gpu_assist:
                sender = open_kv(len(tokens), len(prompt) + sampling.max_new_tokens)
            job = PrefillJob(held.kv, tokens, sampling, len(generated), sender.put_layer if sender else None,
                             cancelled, prompt_len=len(prompt), constraint=constraint, done_tokens=cached)
            started = time.monotonic()
            first, first_logprob, scored, prefill_end = self._wait(self.loop.submit_prefill(job), cancelled)
        except KvTransferFailed:
            error = sender.failure() or Unavailable("the decode worker ended the KV transfer early")
            sender.abort()
            self.requests.release(request_id)
            raise error from None
        except BaseException:
            if sender:
                sender.abort()
            self.requests.release(request_id)
            raise
        prefill_end_unix = time.time() - (time.monotonic() - prefill_end)
        finish = finish_reason(generated + [first], sampling, self.text_of, constraint)  # constraint advanced
        if gpu_assist:
            if finish is not None:  # nothing left to decode: the KV is not needed
                self.requests.release(request_id)
            return PrefillResult(first, prefill_end - started, 0, 0.0, 0.0, self.num_layers, self.num_layers, finish,
                                 first_logprob, scored, cached_tokens=cached)
        self.requests.release(request_id)  # the sender holds copies of every layer
        transfer = sender.finish()
        received_in_time = sum(1 for t in transfer.layer_received_unix_s if t <= prefill_end_unix)
        return PrefillResult(
            first_token_id=first, prefill_s=prefill_end - started, kv_bytes=transfer.kv_bytes,
            kv_transfer_s=transfer.done_monotonic - transfer.first_send_monotonic,
            kv_exposed_s=max(0.0, transfer.done_monotonic - prefill_end),
            layers_received_before_prefill_end=received_in_time, num_layers=self.num_layers, finish=finish,
            first_logprob=first_logprob, prompt_logprobs=scored, kv_transport=sender.transport, cached_tokens=cached)

    def _check_ids(self, tokens: list[int]) -> None:
        """INVALID_ARGUMENT for a token id outside the model's vocabulary."""
        vocab = self.config.vocab_size
        if max(tokens) >= vocab or min(tokens) < 0:
            raise InvalidArgument(f"token id {max(tokens)} is outside the vocabulary (size {vocab})")

    # --- reply warming (WarmPrefix) ----------------------------------------
    def warm(self, request_id: str, tokens: list[int], cache_salt: bytes = b"",
             cancelled: Callable[[], bool] = lambda: False) -> WarmResult:
        """Compute the KV of the full blocks of `tokens` this worker's prefix cache lacks and keep them as cache.

        For a reply a card decoded: the next turn's prefill then finds prompt + reply cached. The loop runs it
        after every real prefill and decode of a step, WARM_CHUNK_TOKENS at most per step, with no logits;
        the blocks are released as a finished request's (evictable, named by the chain under `cache_salt`).
        Dropped, with nothing held, when MAX_WARM_JOBS run already, the KV is not free now (no eviction wait)
        or the worker has no prefix cache.
        """
        if not tokens:
            raise InvalidArgument("token_ids is empty; send the prompt and the reply's tokens")
        self._check_ids(tokens)
        if len(tokens) > self.max_context_tokens:
            raise InvalidArgument(f"{len(tokens)} tokens exceed the model's context of {self.max_context_tokens}")
        tokens = tokens[:len(tokens) // KV_BLOCK_TOKENS * KV_BLOCK_TOKENS]  # only full blocks are cached
        if not self.settings.prefix_cache:
            return WarmResult(dropped=True)
        if not tokens:
            return WarmResult()
        with self._warm_lock:
            if self._warm_jobs >= MAX_WARM_JOBS:
                return WarmResult(dropped=True)
            self._warm_jobs += 1
        try:
            return self._warm(f"warm/{request_id}", tokens, cache_salt, cancelled)
        finally:
            with self._warm_lock:
                self._warm_jobs -= 1

    def _warm(self, warm_id: str, tokens: list[int], cache_salt: bytes, cancelled: Callable[[], bool]) -> WarmResult:
        root = root_hash(self._model_key, cache_salt or DEFAULT_SALT)
        try:
            held = self.requests.admit(warm_id, len(tokens), False, prefix=block_hashes(tokens, root))
        except (ResourceExhausted, AlreadyExists):
            return WarmResult(dropped=True)
        held.kv.root, held.kv.tokens = root, list(tokens)
        cached = held.kv.cached_tokens
        try:
            if cached < len(tokens):
                job = PrefillJob(held.kv, tokens, Sampling(max_new_tokens=1), 0, None, cancelled,
                                 prompt_len=len(tokens), done_tokens=cached, warm=True)
                self._wait(self.loop.submit_prefill(job), cancelled)
        finally:
            self.requests.release(warm_id)  # its full computed blocks stay as cache, as a finished request's
        return WarmResult(cached, len(tokens) - cached)

    @staticmethod
    def _wait(future, cancelled: Callable[[], bool]):
        """The loop's result for one prefill; a cancelled client stops waiting (the loop drops the job)."""
        while True:
            try:
                return future.result(timeout=_POLL_S)
            except TimeoutError:
                if cancelled():
                    from glitches.services.runtime.errors import Cancelled

                    raise Cancelled("the prefill was cancelled") from None

    # --- GPU-assist decode -------------------------------------------------
    def decode(self, request_id: str, generated: list[int], position: int, sampling: Sampling,
               cancelled: Callable[[], bool]) -> Iterator[Step]:
        """Decode from KV kept here by a local prefill, batched with every other request in the loop.

        The KV is freed when the stream ends, however it ends.
        """
        constraint = grammar.constraint_for(sampling, self.tokenizer, generated)  # None without response_format
        held = self.requests.start_decode(request_id)
        if held is None:
            raise NotFound(f"request {request_id} holds no KV on this worker; run Prefill with an empty target first")
        try:
            if position != held.kv.length:
                raise InvalidArgument(f"position {position} does not follow the {held.kv.length} tokens of KV "
                                      f"request {request_id} holds")
            if position + sampling.max_new_tokens - len(generated) > held.kv.capacity:
                raise InvalidArgument(f"max_new_tokens {sampling.max_new_tokens} needs more KV than the "
                                      f"{held.kv.capacity} tokens reserved at prefill")
            job = DecodeJob(held.kv, list(generated), position, sampling, self.text_of, cancelled, constraint)
            self.loop.submit_decode(job)
            try:
                while True:
                    try:
                        item = job.out.get(timeout=_POLL_S)
                    except queue.Empty:
                        if cancelled():
                            return
                        continue
                    if isinstance(item, BaseException):
                        raise item
                    yield item
                    if item.finish is not None:
                        return
            finally:
                job.dropped = True
        finally:
            self.release(request_id)

    def release(self, request_id: str) -> bool:
        """Free a held request's KV blocks (Release RPC, end of its Decode, or an expired KvHold); False when
        it is not held, so calling it twice is safe."""
        return self.requests.release(request_id)

    def active_requests(self) -> int:
        return self.requests.active()
