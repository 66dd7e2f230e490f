"""Settings of one scheduler replica, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from glitches.scheduler.reuse_cost import DEFAULT_REUSE_COSTS, ReuseCosts
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.runtime.settings import DaemonSettings


CONTROL_THREADS = 16  # gRPC threads beyond admission's bounds: health, Status, refusals answer in them


@dataclass(frozen=True)
class SchedulerSettings(DaemonSettings):
    max_new_tokens_limit: int = 4096  # largest max_new_tokens a request may ask for
    prefill_timeout_s: float = 300.0
    decode_token_timeout_s: float = 120.0  # longest wait for the next token
    decode_stall_s: float = 5.0  # an FPGA decode stream without a token this long (+ 4 x its slowest step) is a dead worker
    release_timeout_s: float = 5.0
    max_active: int = 24  # requests this replica runs at once (more devices: raise it, the pool follows)
    max_queued: int = 8  # requests that may wait for a place; beyond: RESOURCE_EXHAUSTED
    queue_wait_s: float = 30.0  # longest wait for a place
    max_migrations: int = 2  # how often one request may move after a worker dies
    lease_ttl_s: float = 5.0  # a claim outlives a dead scheduler by at most this long
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # empty: the Scheduler service is open; never logged
    # (key, tenant) of the keys the keys file puts in a named tenant: they share one prefix-cache salt
    api_key_tenants: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    requests_per_minute_per_key: float = 0.0  # with API keys: Generate/Status calls per key per minute; 0 = no limit
    max_prompt_tokens: int = 0  # longest prompt accepted, tokens; 0 = the model's context
    kv_token_secret: bytes = field(default=b"", repr=False)  # shared with KV receivers; b"": no tokens issued
    kv_token_ttl_s: float = 60.0  # how long a KV-transfer token stays valid after it is issued, seconds
    max_top_logprobs: int = 20  # largest top_logprobs a request may ask for (OpenAI's chat limit)
    max_stop_strings: int = 16  # most stop strings one request may give
    kv_reuse: bool = True  # route by the KV workers hold (placement's extend/fresh paths); False: never read it
    kv_reuse_partial: bool = True  # with kv_reuse: placement may send only the KV a holding card lacks
    # with kv_reuse: after a card decoded a reply, WarmPrefix has the GPU cache prompt + reply for the next turn
    warm_replies: bool = True
    # reuse_cost.ReuseCosts; None: each worker's measured figure, the paper default for one that has none; a value
    # pins the figure for every worker (measurements ignored)
    reuse_gpu_prefill_tokens_per_s: float | None = None  # GPU prefill, tokens/s
    reuse_card_forced_step_s: float | None = None  # s per prompt token forced on a card
    reuse_transfer_bytes_per_s: float = DEFAULT_REUSE_COSTS.transfer_bytes_per_s  # GPU -> card KV, bytes/s
    reuse_queued_request_s: float = DEFAULT_REUSE_COSTS.queued_request_s  # delay per request a device runs, s
    # who scores prompts for prompt logprobs: "gpu" (prefill, float) or "card" (a decode card steps the whole
    # prompt with its own numerics, DecodeFromHeld; for evaluating a card's numerics, e.g. lm-eval)
    prompt_logprobs_on: str = "gpu"

    @property
    def reuse_costs(self) -> ReuseCosts:
        """The routing's cost model (glitches/scheduler/reuse_cost.py) from the --reuse-* settings."""
        prefill, step = self.reuse_gpu_prefill_tokens_per_s, self.reuse_card_forced_step_s
        return ReuseCosts(DEFAULT_REUSE_COSTS.gpu_prefill_tokens_per_s if prefill is None else prefill,
                          DEFAULT_REUSE_COSTS.card_forced_step_s if step is None else step,
                          self.reuse_transfer_bytes_per_s, self.reuse_queued_request_s,
                          prefill_pinned=prefill is not None, step_pinned=step is not None)

    @property
    def grpc_threads(self) -> int:
        """The gRPC server's thread budget: one per running or queued Generate, plus CONTROL_THREADS for
        health, Status, reflection and the refusals, so admission engages before the pool fills."""
        return self.max_active + self.max_queued + CONTROL_THREADS

    def __post_init__(self):
        super().__post_init__()
        if self.max_new_tokens_limit < 1:
            raise InvalidArgument(f"--max-new-tokens-limit must be at least 1, got {self.max_new_tokens_limit}")
        if self.max_active < 1 or self.max_queued < 0 or self.queue_wait_s < 0 or self.max_migrations < 0:
            raise InvalidArgument("--max-active must be >= 1; --max-queued, --queue-wait-s and --max-migrations >= 0")
        if self.requests_per_minute_per_key < 0 or self.max_prompt_tokens < 0:
            raise InvalidArgument("--requests-per-minute-per-key and --max-prompt-tokens must be >= 0 (0: no limit)")
        if self.max_top_logprobs < 0 or self.max_stop_strings < 0:
            raise InvalidArgument("--max-top-logprobs and --max-stop-strings must be >= 0")
        if self.decode_stall_s <= 0:
            raise InvalidArgument(f"--decode-stall-s must be positive, got {self.decode_stall_s}")
        if self.kv_token_ttl_s <= 0:
            raise InvalidArgument(f"--kv-token-ttl-s must be positive, got {self.kv_token_ttl_s}")
        try:
            self.reuse_costs
        except ValueError as error:
            raise InvalidArgument(f"--reuse-* costs: {error}") from None
        if self.prompt_logprobs_on not in ("gpu", "card"):
            raise InvalidArgument(f"--prompt-logprobs-on must be gpu or card, got {self.prompt_logprobs_on!r}")
        if any(key not in self.api_keys for key, _ in self.api_key_tenants):
            raise InvalidArgument("api_key_tenants names a key that api_keys lacks; give both from one keys file")
        if self.lease_ttl_s <= 1.0:
            raise InvalidArgument(f"--lease-ttl-s must be above the 1 s renewal interval, got {self.lease_ttl_s}")
