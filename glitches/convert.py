"""protobuf -> SDK dataclasses (the only SDK module that reads scheduler messages)."""

from __future__ import annotations

from glitches.types import ClusterStatus, Completion, TextChunk, Timings, WorkerStatus
from services.stubs.glitches.v1 import common_pb2, scheduler_pb2

_FINISH = {common_pb2.FINISH_REASON_LENGTH: "length", common_pb2.FINISH_REASON_EOS: "eos",
           common_pb2.FINISH_REASON_STOP: "stop"}
_KIND = {common_pb2.DEVICE_KIND_GPU: "gpu", common_pb2.DEVICE_KIND_FPGA: "fpga"}


def sampling_params(max_tokens: int, temperature: float, top_p: float, seed: int, stop) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                                     stop=list(stop))


def generate_request(prompt: str, chat: bool, model: str, **sampling) -> scheduler_pb2.GenerateRequest:
    return scheduler_pb2.GenerateRequest(prompt=prompt, chat=chat, model=model, sampling=sampling_params(**sampling))


def event(message: scheduler_pb2.GenerateResponse) -> TextChunk | Completion:
    if message.WhichOneof("body") == "delta":
        return TextChunk(message.delta.text, tuple(message.delta.token_ids))
    f = message.final
    t = f.timings
    timings = Timings(**{name: getattr(t, name) for name in Timings.__dataclass_fields__})
    return Completion(request_id=f.request_id, text=f.text, token_ids=tuple(f.token_ids),
                      prompt_token_ids=tuple(f.prompt_token_ids), finish_reason=_FINISH.get(f.finish_reason, ""),
                      decode_device=f.decode_device, decode_worker=f.decode_worker, prefill_worker=f.prefill_worker,
                      prompt_tokens=f.usage.prompt_tokens, completion_tokens=f.usage.completion_tokens,
                      timings=timings, migrations=f.migrations)


def status(message: scheduler_pb2.StatusResponse) -> ClusterStatus:
    workers = tuple(WorkerStatus(
        worker_id=w.worker_id, kind=_KIND.get(w.kind, "unknown"), backend=w.backend, emulated=w.emulated,
        device_name=w.device_name, address=w.address, pid=w.pid, healthy=w.healthy, slots=w.slots,
        active_requests=w.active_requests, kv_capacity_bytes=w.kv_capacity_bytes, kv_free_bytes=w.kv_free_bytes,
        model=w.model, http_address=w.http_address, kv_tokens_required=w.kv_tokens_required,
        worker_active_requests=w.worker_active_requests, kv_held_bytes=w.kv_held_bytes,
        expiring_requests=w.expiring_requests)
        for w in message.workers)
    return ClusterStatus(message.model, workers, message.scheduler_active_requests)
