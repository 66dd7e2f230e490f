"""What the SDK returns: plain dataclasses, never protobuf messages."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Timings:
    """Where a request's time went, seconds unless named otherwise."""

    ttft_s: float  # arrival at the scheduler -> first token out
    prefill_s: float  # GPU forward pass over the prompt
    kv_bytes: int  # KV streamed GPU -> decode worker (0 for GPU assist)
    kv_exposed_s: float  # how long the KV transfer ran past the end of prefill
    decode_s: float  # first token -> last token
    tokens_per_s: float  # tokens after the first, per second of decode_s
    device_decode_s: float  # sum of the decode worker's own step times
    modeled_decode_s: float  # modeled accelerator time (emulated FPGAs only; 0 otherwise)
    layers_received_before_prefill_end: int
    num_layers: int
    total_s: float
    kv_transport: str = ""  # "shm", "nixl" or "grpc"; "" for GPU assist
    kv_gbps: float = 0.0  # KV bytes / transfer wall time, GB/s (0 without a transfer)
    serve_path: str = ""  # KV reuse: "transfer", "extend" (a card extended the KV it held), "transfer-partial" (only
    # the KV the card lacked moved), "fresh", "assist" (GPU assist: no KV moved) or "card_prompt"; "" older
    reused_tokens: int = 0  # prompt tokens a card reused on the extend and transfer-partial paths


@dataclass(frozen=True)
class Logprob:
    """A candidate token and its log-probability (natural log, under log_softmax of the raw logits)."""

    token_id: int
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A chosen token's log-probability and the most likely tokens at its position (most likely first)."""

    token_id: int
    logprob: float
    top: tuple[Logprob, ...] = ()


@dataclass(frozen=True)
class TextChunk:
    """A piece of streamed text and the token ids that produced it."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token id, when asked for (logprobs=True)
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # first chunk only, with prompt_logprobs=True
    prompt_token_ids: tuple[int, ...] = ()  # first chunk only, with prompt_logprobs=True


@dataclass(frozen=True)
class Completion:
    request_id: str
    text: str
    token_ids: tuple[int, ...]
    prompt_token_ids: tuple[int, ...]
    finish_reason: str  # "length", "eos" or "stop"
    decode_device: str  # "fpga" or "gpu" (GPU assist)
    decode_worker: str
    prefill_worker: str
    prompt_tokens: int
    completion_tokens: int
    timings: Timings
    migrations: int = 0  # times the request moved because a worker died mid-request
    logprobs: tuple[TokenLogprob, ...] = ()  # one per generated token, with logprobs=True
    # one per prompt token after the first (the first has no score), with prompt_logprobs=True
    prompt_logprobs: tuple[TokenLogprob, ...] = ()
    cached_tokens: int = 0  # of prompt_tokens, those whose KV the GPU reused from its prefix cache

    def to_dict(self) -> dict:
        out = asdict(self)
        out["token_ids"] = list(self.token_ids)
        out["prompt_token_ids"] = list(self.prompt_token_ids)
        return out


@dataclass(frozen=True)
class WorkerStatus:
    worker_id: str
    kind: str  # free-form: "gpu", "fpga", or another device package's name
    backend: str  # "cuda", "cpu", "emu" (software emulator, no card), "xrt"
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
    kv_tokens_required: bool = False  # FPGA workers: accepts KV only with a scheduler-issued token
    kv_transports: tuple[str, ...] = ()  # FPGA: KV transports accepted; GPU: sent with ("shm", "nixl", "grpc")
    worker_active_requests: int = 0  # requests the worker itself holds KV for (as of its last heartbeat)
    kv_held_bytes: int = 0  # KV bytes the worker holds
    kv_cached_bytes: int = 0  # KV bytes it keeps as evictable cache for reuse (prefix cache, kept regions)
    expiring_requests: int = 0  # held requests not decoding, freed unless the scheduler renews them
    roles: tuple[str, ...] = ()  # "prefill", "decode" (takes KV from a prefill), "assist" (GPU assist)
    decode_class: int = 0  # with the decode role: placement's preference, lower first (0 without it)


@dataclass(frozen=True)
class RedisStatus:
    """The Redis the scheduler's registry uses."""

    primary: str  # host:port of the primary in use now; "" when no sentinel named one (see error)
    sentinel_service: str = ""  # the service the sentinels monitor; "" for one Redis (no Sentinel)
    sentinels: tuple[str, ...] = ()  # host:port of each sentinel in the registry URL
    error: str = ""  # why primary is empty


@dataclass(frozen=True)
class ClusterStatus:
    model: str
    workers: tuple[WorkerStatus, ...]
    scheduler_active_requests: int
    redis: RedisStatus | None = None  # None from a scheduler too old to say

    def to_dict(self) -> dict:
        return asdict(self)
