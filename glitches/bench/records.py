"""One benchmark request as the client saw it, plus the scheduler's per-request timings."""

from __future__ import annotations

from dataclasses import dataclass, field

from glitches.types import Timings


@dataclass(frozen=True)
class BenchRequest:
    prompt: str
    max_tokens: int  # tokens asked for; greedy decoding may stop earlier at EOS
    prompt_tokens: int = 0  # as the bench built it (0: unknown, e.g. from a JSONL file)


@dataclass
class RequestResult:
    index: int
    requested_tokens: int  # max_tokens asked for
    start_s: float  # client send time, seconds since the bench started
    token_times_s: list[float] = field(default_factory=list)  # client receive time of each output token, same clock
    prompt_tokens: int = 0  # as the scheduler counted them
    finish_reason: str = ""  # "length", "eos", "stop"
    prefill_worker: str = ""
    decode_worker: str = ""
    decode_device: str = ""  # the decoder's kind: "fpga", "gpu" (GPU assist, or a GPU with the decode role), ...
    timings: Timings | None = None
    error: str = ""  # non-empty: the request failed with this message

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.token_times_s)

    @property
    def output_tokens(self) -> int:
        return len(self.token_times_s)

    @property
    def ttft_s(self) -> float:
        return self.token_times_s[0] - self.start_s

    @property
    def e2e_s(self) -> float:
        return self.token_times_s[-1] - self.start_s

    @property
    def tpot_s(self) -> float | None:
        """(last token - first token) / (output tokens - 1); None for a single-token answer."""
        n = len(self.token_times_s)
        return (self.token_times_s[-1] - self.token_times_s[0]) / (n - 1) if n > 1 else None
