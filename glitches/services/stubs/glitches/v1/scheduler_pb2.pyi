from glitches.services.stubs.glitches.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "chat", "sampling", "model", "prompt_token_ids")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    chat: bool
    sampling: _common_pb2.SamplingParams
    model: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, prompt: _Optional[str] = ..., chat: _Optional[bool] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., model: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("delta", "final")
    DELTA_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    delta: TextDelta
    final: GenerateFinal
    def __init__(self, delta: _Optional[_Union[TextDelta, _Mapping]] = ..., final: _Optional[_Union[GenerateFinal, _Mapping]] = ...) -> None: ...

class TextDelta(_message.Message):
    __slots__ = ("text", "token_ids", "logprobs", "prompt_logprobs", "prompt_token_ids")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprobs]
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprobs]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprobs, _Mapping]]] = ..., prompt_logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprobs, _Mapping]]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "cached_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("ttft_s", "prefill_s", "kv_bytes", "kv_exposed_s", "decode_s", "tokens_per_s", "device_decode_s", "modeled_decode_s", "layers_received_before_prefill_end", "num_layers", "total_s", "kv_transport", "kv_gbps", "serve_path", "reused_tokens")
    TTFT_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_S_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_EXPOSED_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_S_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    DEVICE_DECODE_S_FIELD_NUMBER: _ClassVar[int]
    MODELED_DECODE_S_FIELD_NUMBER: _ClassVar[int]
    LAYERS_RECEIVED_BEFORE_PREFILL_END_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_S_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    KV_GBPS_FIELD_NUMBER: _ClassVar[int]
    SERVE_PATH_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ttft_s: float
    prefill_s: float
    kv_bytes: int
    kv_exposed_s: float
    decode_s: float
    tokens_per_s: float
    device_decode_s: float
    modeled_decode_s: float
    layers_received_before_prefill_end: int
    num_layers: int
    total_s: float
    kv_transport: str
    kv_gbps: float
    serve_path: str
    reused_tokens: int
    def __init__(self, ttft_s: _Optional[float] = ..., prefill_s: _Optional[float] = ..., kv_bytes: _Optional[int] = ..., kv_exposed_s: _Optional[float] = ..., decode_s: _Optional[float] = ..., tokens_per_s: _Optional[float] = ..., device_decode_s: _Optional[float] = ..., modeled_decode_s: _Optional[float] = ..., layers_received_before_prefill_end: _Optional[int] = ..., num_layers: _Optional[int] = ..., total_s: _Optional[float] = ..., kv_transport: _Optional[str] = ..., kv_gbps: _Optional[float] = ..., serve_path: _Optional[str] = ..., reused_tokens: _Optional[int] = ...) -> None: ...

class GenerateFinal(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "token_ids", "text", "finish_reason", "decode_device", "decode_worker", "prefill_worker", "usage", "timings", "migrations", "logprobs", "prompt_logprobs")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    DECODE_DEVICE_FIELD_NUMBER: _ClassVar[int]
    DECODE_WORKER_FIELD_NUMBER: _ClassVar[int]
    PREFILL_WORKER_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    MIGRATIONS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    text: str
    finish_reason: _common_pb2.FinishReason
    decode_device: str
    decode_worker: str
    prefill_worker: str
    usage: Usage
    timings: Timings
    migrations: int
    logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprobs]
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprobs]
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., token_ids: _Optional[_Iterable[int]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., decode_device: _Optional[str] = ..., decode_worker: _Optional[str] = ..., prefill_worker: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., migrations: _Optional[int] = ..., logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprobs, _Mapping]]] = ..., prompt_logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprobs, _Mapping]]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WorkerStatus(_message.Message):
    __slots__ = ("worker_id", "kind", "kind_name", "roles", "decode_class", "backend", "emulated", "device_name", "address", "pid", "healthy", "slots", "active_requests", "kv_capacity_bytes", "kv_free_bytes", "model", "http_address", "kv_tokens_required", "kv_transports", "host_identity", "worker_active_requests", "kv_held_bytes", "expiring_requests", "kv_cached_bytes")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KIND_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    DECODE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    EMULATED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KV_TOKENS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    WORKER_ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    kind: _common_pb2.DeviceKind
    kind_name: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    decode_class: int
    backend: str
    emulated: bool
    device_name: str
    address: str
    pid: int
    healthy: bool
    slots: int
    active_requests: int
    kv_capacity_bytes: int
    kv_free_bytes: int
    model: str
    http_address: str
    kv_tokens_required: bool
    kv_transports: _containers.RepeatedScalarFieldContainer[str]
    host_identity: str
    worker_active_requests: int
    kv_held_bytes: int
    expiring_requests: int
    kv_cached_bytes: int
    def __init__(self, worker_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.DeviceKind, str]] = ..., kind_name: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., decode_class: _Optional[int] = ..., backend: _Optional[str] = ..., emulated: _Optional[bool] = ..., device_name: _Optional[str] = ..., address: _Optional[str] = ..., pid: _Optional[int] = ..., healthy: _Optional[bool] = ..., slots: _Optional[int] = ..., active_requests: _Optional[int] = ..., kv_capacity_bytes: _Optional[int] = ..., kv_free_bytes: _Optional[int] = ..., model: _Optional[str] = ..., http_address: _Optional[str] = ..., kv_tokens_required: _Optional[bool] = ..., kv_transports: _Optional[_Iterable[str]] = ..., host_identity: _Optional[str] = ..., worker_active_requests: _Optional[int] = ..., kv_held_bytes: _Optional[int] = ..., expiring_requests: _Optional[int] = ..., kv_cached_bytes: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("model", "workers", "scheduler_active_requests", "redis")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    REDIS_FIELD_NUMBER: _ClassVar[int]
    model: str
    workers: _containers.RepeatedCompositeFieldContainer[WorkerStatus]
    scheduler_active_requests: int
    redis: RedisStatus
    def __init__(self, model: _Optional[str] = ..., workers: _Optional[_Iterable[_Union[WorkerStatus, _Mapping]]] = ..., scheduler_active_requests: _Optional[int] = ..., redis: _Optional[_Union[RedisStatus, _Mapping]] = ...) -> None: ...

class RedisStatus(_message.Message):
    __slots__ = ("primary", "sentinel_service", "sentinels", "error")
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    SENTINEL_SERVICE_FIELD_NUMBER: _ClassVar[int]
    SENTINELS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    primary: str
    sentinel_service: str
    sentinels: _containers.RepeatedScalarFieldContainer[str]
    error: str
    def __init__(self, primary: _Optional[str] = ..., sentinel_service: _Optional[str] = ..., sentinels: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ...) -> None: ...
