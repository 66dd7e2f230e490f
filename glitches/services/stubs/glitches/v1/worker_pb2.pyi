from glitches.services.stubs.glitches.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("worker_id", "kind", "kind_name", "roles", "decode_class", "backend", "emulated", "device_name", "model", "slots", "active_requests", "kv_capacity_bytes", "kv_free_bytes", "kv_bytes_per_token", "pid", "http_address", "kv_tokens_required", "kv_transports", "host_identity", "shm_segment", "nixl_agent", "kv_held_bytes", "expiring_requests", "kv_cached_bytes", "kv_hold_ttl_s", "request_auth_required", "gpu_assist_requests", "kv_free_blocks", "kv_block_tokens", "prefill_tokens_per_s", "prefill_overhead_s", "decode_step_s")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    KIND_NAME_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    DECODE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    EMULATED_FIELD_NUMBER: _ClassVar[int]
    DEVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_CAPACITY_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_PER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KV_TOKENS_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSPORTS_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    SHM_SEGMENT_FIELD_NUMBER: _ClassVar[int]
    NIXL_AGENT_FIELD_NUMBER: _ClassVar[int]
    KV_HELD_BYTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRING_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_CACHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_HOLD_TTL_S_FIELD_NUMBER: _ClassVar[int]
    REQUEST_AUTH_REQUIRED_FIELD_NUMBER: _ClassVar[int]
    GPU_ASSIST_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    KV_FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_PER_S_FIELD_NUMBER: _ClassVar[int]
    PREFILL_OVERHEAD_S_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEP_S_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    kind: _common_pb2.DeviceKind
    kind_name: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    decode_class: int
    backend: str
    emulated: bool
    device_name: str
    model: str
    slots: int
    active_requests: int
    kv_capacity_bytes: int
    kv_free_bytes: int
    kv_bytes_per_token: int
    pid: int
    http_address: str
    kv_tokens_required: bool
    kv_transports: _containers.RepeatedScalarFieldContainer[str]
    host_identity: str
    shm_segment: str
    nixl_agent: str
    kv_held_bytes: int
    expiring_requests: int
    kv_cached_bytes: int
    kv_hold_ttl_s: float
    request_auth_required: bool
    gpu_assist_requests: int
    kv_free_blocks: int
    kv_block_tokens: int
    prefill_tokens_per_s: float
    prefill_overhead_s: float
    decode_step_s: float
    def __init__(self, worker_id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.DeviceKind, str]] = ..., kind_name: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., decode_class: _Optional[int] = ..., backend: _Optional[str] = ..., emulated: _Optional[bool] = ..., device_name: _Optional[str] = ..., model: _Optional[str] = ..., slots: _Optional[int] = ..., active_requests: _Optional[int] = ..., kv_capacity_bytes: _Optional[int] = ..., kv_free_bytes: _Optional[int] = ..., kv_bytes_per_token: _Optional[int] = ..., pid: _Optional[int] = ..., http_address: _Optional[str] = ..., kv_tokens_required: _Optional[bool] = ..., kv_transports: _Optional[_Iterable[str]] = ..., host_identity: _Optional[str] = ..., shm_segment: _Optional[str] = ..., nixl_agent: _Optional[str] = ..., kv_held_bytes: _Optional[int] = ..., expiring_requests: _Optional[int] = ..., kv_cached_bytes: _Optional[int] = ..., kv_hold_ttl_s: _Optional[float] = ..., request_auth_required: _Optional[bool] = ..., gpu_assist_requests: _Optional[int] = ..., kv_free_blocks: _Optional[int] = ..., kv_block_tokens: _Optional[int] = ..., prefill_tokens_per_s: _Optional[float] = ..., prefill_overhead_s: _Optional[float] = ..., decode_step_s: _Optional[float] = ...) -> None: ...

class DecodeTarget(_message.Message):
    __slots__ = ("address", "worker_id", "kv_token", "held_prefix_tokens")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    KV_TOKEN_FIELD_NUMBER: _ClassVar[int]
    HELD_PREFIX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    address: str
    worker_id: str
    kv_token: str
    held_prefix_tokens: int
    def __init__(self, address: _Optional[str] = ..., worker_id: _Optional[str] = ..., kv_token: _Optional[str] = ..., held_prefix_tokens: _Optional[int] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "target", "generated_token_ids", "cache_salt", "auth_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    target: DecodeTarget
    generated_token_ids: _containers.RepeatedScalarFieldContainer[int]
    cache_salt: bytes
    auth_token: str
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., target: _Optional[_Union[DecodeTarget, _Mapping]] = ..., generated_token_ids: _Optional[_Iterable[int]] = ..., cache_salt: _Optional[bytes] = ..., auth_token: _Optional[str] = ...) -> None: ...

class PrefillResponse(_message.Message):
    __slots__ = ("first_token_id", "prefill_s", "kv_bytes", "kv_exposed_s", "kv_transfer_s", "layers_received_before_prefill_end", "num_layers", "finish_reason", "first_token_logprobs", "prompt_logprobs", "kv_transport", "cached_tokens")
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_S_FIELD_NUMBER: _ClassVar[int]
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_EXPOSED_S_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSFER_S_FIELD_NUMBER: _ClassVar[int]
    LAYERS_RECEIVED_BEFORE_PREFILL_END_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    first_token_id: int
    prefill_s: float
    kv_bytes: int
    kv_exposed_s: float
    kv_transfer_s: float
    layers_received_before_prefill_end: int
    num_layers: int
    finish_reason: _common_pb2.FinishReason
    first_token_logprobs: _common_pb2.TokenLogprobs
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprobs]
    kv_transport: str
    cached_tokens: int
    def __init__(self, first_token_id: _Optional[int] = ..., prefill_s: _Optional[float] = ..., kv_bytes: _Optional[int] = ..., kv_exposed_s: _Optional[float] = ..., kv_transfer_s: _Optional[float] = ..., layers_received_before_prefill_end: _Optional[int] = ..., num_layers: _Optional[int] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., first_token_logprobs: _Optional[_Union[_common_pb2.TokenLogprobs, _Mapping]] = ..., prompt_logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprobs, _Mapping]]] = ..., kv_transport: _Optional[str] = ..., cached_tokens: _Optional[int] = ...) -> None: ...

class KvChunk(_message.Message):
    __slots__ = ("header", "layer", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: KvHeader
    layer: KvLayerChunk
    end: KvEnd
    def __init__(self, header: _Optional[_Union[KvHeader, _Mapping]] = ..., layer: _Optional[_Union[KvLayerChunk, _Mapping]] = ..., end: _Optional[_Union[KvEnd, _Mapping]] = ...) -> None: ...

class KvHeader(_message.Message):
    __slots__ = ("request_id", "prompt_tokens", "reserve_tokens", "num_layers", "kv_token", "kv_transport", "host_identity", "held_tokens", "prompt_token_ids", "cache_salt")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    RESERVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    KV_TOKEN_FIELD_NUMBER: _ClassVar[int]
    KV_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    HOST_IDENTITY_FIELD_NUMBER: _ClassVar[int]
    HELD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_tokens: int
    reserve_tokens: int
    num_layers: int
    kv_token: str
    kv_transport: str
    host_identity: str
    held_tokens: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    cache_salt: bytes
    def __init__(self, request_id: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., reserve_tokens: _Optional[int] = ..., num_layers: _Optional[int] = ..., kv_token: _Optional[str] = ..., kv_transport: _Optional[str] = ..., host_identity: _Optional[str] = ..., held_tokens: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., cache_salt: _Optional[bytes] = ...) -> None: ...

class KvPlacedControl(_message.Message):
    __slots__ = ("header", "written", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    WRITTEN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: KvHeader
    written: KvWritten
    end: KvEnd
    def __init__(self, header: _Optional[_Union[KvHeader, _Mapping]] = ..., written: _Optional[_Union[KvWritten, _Mapping]] = ..., end: _Optional[_Union[KvEnd, _Mapping]] = ...) -> None: ...

class KvWritten(_message.Message):
    __slots__ = ("layer", "seq_start", "tokens")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SEQ_START_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    layer: int
    seq_start: int
    tokens: int
    def __init__(self, layer: _Optional[int] = ..., seq_start: _Optional[int] = ..., tokens: _Optional[int] = ...) -> None: ...

class KvPlacedReply(_message.Message):
    __slots__ = ("placement", "done")
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    placement: KvPlacement
    done: TransferKVResponse
    def __init__(self, placement: _Optional[_Union[KvPlacement, _Mapping]] = ..., done: _Optional[_Union[TransferKVResponse, _Mapping]] = ...) -> None: ...

class KvPlacement(_message.Message):
    __slots__ = ("kv_transport", "kv_offset", "channel_bytes", "region_bytes_per_channel", "capacity_tokens", "num_layers", "kv_heads", "head_dim", "dtype", "shm_path", "shm_bytes", "nixl_agent_metadata", "nixl_agent_name", "nixl_base_address")
    KV_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    KV_OFFSET_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_BYTES_FIELD_NUMBER: _ClassVar[int]
    REGION_BYTES_PER_CHANNEL_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_TOKENS_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    HEAD_DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHM_PATH_FIELD_NUMBER: _ClassVar[int]
    SHM_BYTES_FIELD_NUMBER: _ClassVar[int]
    NIXL_AGENT_METADATA_FIELD_NUMBER: _ClassVar[int]
    NIXL_AGENT_NAME_FIELD_NUMBER: _ClassVar[int]
    NIXL_BASE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    kv_transport: str
    kv_offset: int
    channel_bytes: int
    region_bytes_per_channel: int
    capacity_tokens: int
    num_layers: int
    kv_heads: int
    head_dim: int
    dtype: str
    shm_path: str
    shm_bytes: int
    nixl_agent_metadata: bytes
    nixl_agent_name: str
    nixl_base_address: int
    def __init__(self, kv_transport: _Optional[str] = ..., kv_offset: _Optional[int] = ..., channel_bytes: _Optional[int] = ..., region_bytes_per_channel: _Optional[int] = ..., capacity_tokens: _Optional[int] = ..., num_layers: _Optional[int] = ..., kv_heads: _Optional[int] = ..., head_dim: _Optional[int] = ..., dtype: _Optional[str] = ..., shm_path: _Optional[str] = ..., shm_bytes: _Optional[int] = ..., nixl_agent_metadata: _Optional[bytes] = ..., nixl_agent_name: _Optional[str] = ..., nixl_base_address: _Optional[int] = ...) -> None: ...

class KvLayerChunk(_message.Message):
    __slots__ = ("layer", "seq_start", "dtype", "shape", "key", "value")
    LAYER_FIELD_NUMBER: _ClassVar[int]
    SEQ_START_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    layer: int
    seq_start: int
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    key: bytes
    value: bytes
    def __init__(self, layer: _Optional[int] = ..., seq_start: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class KvEnd(_message.Message):
    __slots__ = ("num_layers",)
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    num_layers: int
    def __init__(self, num_layers: _Optional[int] = ...) -> None: ...

class TransferKVResponse(_message.Message):
    __slots__ = ("kv_bytes", "layer_received_unix_s")
    KV_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAYER_RECEIVED_UNIX_S_FIELD_NUMBER: _ClassVar[int]
    kv_bytes: int
    layer_received_unix_s: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, kv_bytes: _Optional[int] = ..., layer_received_unix_s: _Optional[_Iterable[float]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("request_id", "first_token_id", "position", "sampling", "generated_token_ids", "prompt_token_ids", "cache_salt", "auth_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    first_token_id: int
    position: int
    sampling: _common_pb2.SamplingParams
    generated_token_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    cache_salt: bytes
    auth_token: str
    def __init__(self, request_id: _Optional[str] = ..., first_token_id: _Optional[int] = ..., position: _Optional[int] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., generated_token_ids: _Optional[_Iterable[int]] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., cache_salt: _Optional[bytes] = ..., auth_token: _Optional[str] = ...) -> None: ...

class DecodeFromHeldRequest(_message.Message):
    __slots__ = ("request_id", "prompt_token_ids", "sampling", "cache_salt", "min_held_tokens", "auth_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    MIN_HELD_TOKENS_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    sampling: _common_pb2.SamplingParams
    cache_salt: bytes
    min_held_tokens: int
    auth_token: str
    def __init__(self, request_id: _Optional[str] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., cache_salt: _Optional[bytes] = ..., min_held_tokens: _Optional[int] = ..., auth_token: _Optional[str] = ...) -> None: ...

class DecodeToken(_message.Message):
    __slots__ = ("token_id", "index", "step_s", "finish_reason", "modeled_step_s", "logprobs", "reused_prompt_tokens", "prompt_logprobs")
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STEP_S_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    MODELED_STEP_S_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    REUSED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    token_id: int
    index: int
    step_s: float
    finish_reason: _common_pb2.FinishReason
    modeled_step_s: float
    logprobs: _common_pb2.TokenLogprobs
    reused_prompt_tokens: int
    prompt_logprobs: _containers.RepeatedCompositeFieldContainer[_common_pb2.TokenLogprobs]
    def __init__(self, token_id: _Optional[int] = ..., index: _Optional[int] = ..., step_s: _Optional[float] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., modeled_step_s: _Optional[float] = ..., logprobs: _Optional[_Union[_common_pb2.TokenLogprobs, _Mapping]] = ..., reused_prompt_tokens: _Optional[int] = ..., prompt_logprobs: _Optional[_Iterable[_Union[_common_pb2.TokenLogprobs, _Mapping]]] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("request_id", "auth_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    auth_token: str
    def __init__(self, request_id: _Optional[str] = ..., auth_token: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: bool
    def __init__(self, released: _Optional[bool] = ...) -> None: ...

class KvHoldRenewal(_message.Message):
    __slots__ = ("request_id", "auth_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    auth_token: str
    def __init__(self, request_id: _Optional[str] = ..., auth_token: _Optional[str] = ...) -> None: ...

class RenewKvHoldsRequest(_message.Message):
    __slots__ = ("renewals",)
    RENEWALS_FIELD_NUMBER: _ClassVar[int]
    renewals: _containers.RepeatedCompositeFieldContainer[KvHoldRenewal]
    def __init__(self, renewals: _Optional[_Iterable[_Union[KvHoldRenewal, _Mapping]]] = ...) -> None: ...

class EvictCacheRequest(_message.Message):
    __slots__ = ("auth_token",)
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    auth_token: str
    def __init__(self, auth_token: _Optional[str] = ...) -> None: ...

class EvictCacheResponse(_message.Message):
    __slots__ = ("evicted_blocks", "evicted_bytes", "evicted_regions", "in_use_cached_bytes")
    EVICTED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    EVICTED_BYTES_FIELD_NUMBER: _ClassVar[int]
    EVICTED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    IN_USE_CACHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    evicted_blocks: int
    evicted_bytes: int
    evicted_regions: int
    in_use_cached_bytes: int
    def __init__(self, evicted_blocks: _Optional[int] = ..., evicted_bytes: _Optional[int] = ..., evicted_regions: _Optional[int] = ..., in_use_cached_bytes: _Optional[int] = ...) -> None: ...

class WarmPrefixRequest(_message.Message):
    __slots__ = ("request_id", "token_ids", "cache_salt", "auth_token")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    CACHE_SALT_FIELD_NUMBER: _ClassVar[int]
    AUTH_TOKEN_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    cache_salt: bytes
    auth_token: str
    def __init__(self, request_id: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., cache_salt: _Optional[bytes] = ..., auth_token: _Optional[str] = ...) -> None: ...

class WarmPrefixResponse(_message.Message):
    __slots__ = ("cached_tokens", "warmed_tokens", "dropped")
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WARMED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    cached_tokens: int
    warmed_tokens: int
    dropped: bool
    def __init__(self, cached_tokens: _Optional[int] = ..., warmed_tokens: _Optional[int] = ..., dropped: _Optional[bool] = ...) -> None: ...

class RenewKvHoldsResponse(_message.Message):
    __slots__ = ("unknown_request_ids",)
    UNKNOWN_REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    unknown_request_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, unknown_request_ids: _Optional[_Iterable[str]] = ...) -> None: ...
