"""protobuf -> SDK dataclasses (the only SDK module that reads scheduler messages)."""

from __future__ import annotations

import json

from glitches.types import (ClusterStatus, Completion, Logprob, RedisStatus, TextChunk, Timings, TokenLogprob,
                            WorkerStatus)
from glitches.services.stubs.glitches.v1 import common_pb2, scheduler_pb2

_FINISH = {common_pb2.FINISH_REASON_LENGTH: "length", common_pb2.FINISH_REASON_EOS: "eos",
           common_pb2.FINISH_REASON_STOP: "stop"}
# kinds as the enum names them, for schedulers older than WorkerStatus.kind_name
_KIND = {common_pb2.DEVICE_KIND_GPU: "gpu", common_pb2.DEVICE_KIND_FPGA: "fpga"}


def sampling_params(max_tokens: int, temperature: float, top_p: float, seed: int, stop, logprobs: bool = False,
                    top_logprobs: int = 0, prompt_logprobs: bool = False, ignore_eos: bool = False,
                    min_tokens: int = 0, response_format: str | dict | None = None) -> common_pb2.SamplingParams:
    """`response_format`: None or "text" (free text), "json_object" (any JSON object), or a JSON Schema (a dict)."""
    if response_format in (None, "text"):
        kind, schema = common_pb2.RESPONSE_FORMAT_KIND_UNSPECIFIED, ""
    elif response_format == "json_object":
        kind, schema = common_pb2.RESPONSE_FORMAT_KIND_JSON_OBJECT, ""
    elif isinstance(response_format, dict):
        kind, schema = common_pb2.RESPONSE_FORMAT_KIND_JSON_SCHEMA, json.dumps(response_format)
    else:
        raise ValueError(f"response_format must be None, 'text', 'json_object' or a JSON Schema dict, "
                         f"got {response_format!r}")
    return common_pb2.SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                     stop=list(stop), logprobs=logprobs, top_logprobs=top_logprobs,
                                     prompt_logprobs=prompt_logprobs, ignore_eos=ignore_eos, min_tokens=min_tokens,
                                     response_format=kind, json_schema=schema)


def generate_request(prompt, chat: bool, model: str, **sampling) -> scheduler_pb2.GenerateRequest:
    """`prompt` is text, or token ids (a sequence of ints) sent as prompt_token_ids."""
    if isinstance(prompt, str):
        return scheduler_pb2.GenerateRequest(prompt=prompt, chat=chat, model=model,
                                             sampling=sampling_params(**sampling))
    if any(isinstance(t, bool) or not isinstance(t, int) for t in prompt):
        raise TypeError("a prompt is text or a sequence of token ids (ints)")
    return scheduler_pb2.GenerateRequest(prompt_token_ids=list(prompt), chat=chat, model=model,
                                         sampling=sampling_params(**sampling))


def logprobs(messages) -> tuple[TokenLogprob, ...]:
    return tuple(TokenLogprob(m.chosen.token_id, m.chosen.logprob, tuple(Logprob(e.token_id, e.logprob) for e in m.top))
                 for m in messages)


def event(message: scheduler_pb2.GenerateResponse) -> TextChunk | Completion:
    if message.WhichOneof("body") == "delta":
        d = message.delta
        return TextChunk(d.text, tuple(d.token_ids), logprobs(d.logprobs), logprobs(d.prompt_logprobs),
                         tuple(d.prompt_token_ids))
    f = message.final
    t = f.timings
    timings = Timings(**{name: getattr(t, name) for name in Timings.__dataclass_fields__})
    return Completion(request_id=f.request_id, text=f.text, token_ids=tuple(f.token_ids),
                      prompt_token_ids=tuple(f.prompt_token_ids), finish_reason=_FINISH.get(f.finish_reason, ""),
                      decode_device=f.decode_device, decode_worker=f.decode_worker, prefill_worker=f.prefill_worker,
                      prompt_tokens=f.usage.prompt_tokens, completion_tokens=f.usage.completion_tokens,
                      timings=timings, migrations=f.migrations, logprobs=logprobs(f.logprobs),
                      prompt_logprobs=logprobs(f.prompt_logprobs), cached_tokens=f.usage.cached_tokens)


def status(message: scheduler_pb2.StatusResponse) -> ClusterStatus:
    workers = tuple(WorkerStatus(
        worker_id=w.worker_id, kind=w.kind_name or _KIND.get(w.kind, "unknown"), backend=w.backend,
        emulated=w.emulated, roles=tuple(w.roles), decode_class=w.decode_class,
        device_name=w.device_name, address=w.address, pid=w.pid, healthy=w.healthy, slots=w.slots,
        active_requests=w.active_requests, kv_capacity_bytes=w.kv_capacity_bytes, kv_free_bytes=w.kv_free_bytes,
        model=w.model, http_address=w.http_address, kv_tokens_required=w.kv_tokens_required,
        kv_transports=tuple(w.kv_transports),
        worker_active_requests=w.worker_active_requests, kv_held_bytes=w.kv_held_bytes,
        kv_cached_bytes=w.kv_cached_bytes,
        expiring_requests=w.expiring_requests)
        for w in message.workers)
    r = message.redis
    redis = RedisStatus(r.primary, r.sentinel_service, tuple(r.sentinels), r.error) if message.HasField("redis") \
        else None
    return ClusterStatus(message.model, workers, message.scheduler_active_requests, redis)
