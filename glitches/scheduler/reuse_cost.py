"""The reuse routing's cost model: estimated time to the first token of each way to serve a request.

Pure arithmetic, no I/O; glitches/scheduler/placement.py uses it to choose a path:

- transfer: a GPU prefills the prompt tokens its prefix cache lacks, the whole prompt's KV streams to a card.
      estimate_s = gpu_wait_s + gpu_prefill_overhead_s + (prompt - gpu_cached) / gpu_prefill_tokens_per_s
                   + prompt * kv_bytes_per_token / transfer_bytes_per_s
  (the transfer counted whole, not overlapped with the prefill's layers: an upper bound, and the card
  cannot decode token 2 before the KV is in).
- extend: the card holding `held` leading prompt tokens forces the other tokens through its decode step
  (no GPU, no transfer); the last forced step's logits give the first token.
      estimate_s = card_wait_s + (prompt - held) * card_forced_step_s
- fresh: the transfer path on another card, when the holder is busy or full.
- transfer-partial: the GPU prefills what its cache lacks and streams only the KV of [held, prompt) to the
  card that holds the rest (it adopts its held KV at reserve).
      estimate_s = gpu_wait_s + gpu_prefill_overhead_s + (prompt - gpu_cached) / gpu_prefill_tokens_per_s
                   + card_wait_s + (prompt - held) * kv_bytes_per_token / transfer_bytes_per_s

A device's wait is `active x queued_request_s` (each request it already runs delays this one by about
that much: batching shares forward passes, so it is less than a whole prefill).

Defaults come from the simulator's device profiles (glitches/sim/profiles/devices.json, paper-calibrated,
Llama-2-7B): A100 prefill 1,536 tokens in 0.17585 s (8,735 tokens/s); U280 decode step 0.0215 s at a
1,792-token context (a forced step costs one decode step); PCIe Gen3 x16 at 12 GB/s effective
(glitches/sim/kv_transfer.py). glitches/sim/reuse.py builds the same figures from any profile pair.
Live clusters override them (glitches scheduler --reuse-* flags) with their own devices' speeds.

Per worker, measured (issue #27 item 3): each worker publishes its own speeds in its registry record (a GPU its
prefill as an affine fit, fixed seconds per pass + tokens / rate (the CPU stand-in's pass costs ~0.06 s before its
first token: a rate alone misjudges short and long prefills both), a card its decode step seconds;
glitches/services/runtime/speed_meter.py), placement passes them
in WorkerView, and `with_measured` puts them in place of the cluster figures above for that worker's terms (the
GPU's prefill, the card's forced steps). A worker that has measured nothing yet publishes 0 and is estimated
with the cluster figure. A figure the operator pins (`prefill_pinned`, `step_pinned`: the scheduler's
--reuse-gpu-prefill-tokens-per-s / --reuse-card-forced-step-s given) holds for every worker, measured or not.
The KV transfer rate and queued_request_s stay cluster-wide.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

A100_PREFILL_TOKENS_PER_S = 1536 / 0.17585  # tokens/s, devices.json a100 calibration
U280_DECODE_STEP_S = 0.0215  # s per token, devices.json u280 calibration
PCIE_GEN3_X16_BYTES_PER_S = 12e9  # bytes/s, glitches/sim/kv_transfer.PCIE_GEN3_X16_GB_PER_S


@dataclass(frozen=True)
class ReuseCosts:
    """Per-device speeds the routing compares paths with (units in the names)."""

    gpu_prefill_tokens_per_s: float = A100_PREFILL_TOKENS_PER_S
    card_forced_step_s: float = U280_DECODE_STEP_S  # one prompt token forced through a card's decode step
    transfer_bytes_per_s: float = PCIE_GEN3_X16_BYTES_PER_S  # GPU -> card KV stream
    queued_request_s: float = 0.03  # delay each request a device already runs adds to a new one
    prefill_pinned: bool = False  # True: gpu_prefill_tokens_per_s for every GPU, measured speeds ignored
    step_pinned: bool = False  # True: card_forced_step_s for every card, measured steps ignored
    gpu_prefill_overhead_s: float = 0.0  # fixed seconds per prefill pass (the A100 figure is a whole prefill's rate)

    def __post_init__(self):
        if min(self.gpu_prefill_tokens_per_s, self.card_forced_step_s, self.transfer_bytes_per_s) <= 0 \
                or self.queued_request_s < 0:
            raise ValueError(f"reuse costs must be positive (queued_request_s >= 0), got {self}")

    def with_measured(self, prefill_tokens_per_s: float = 0.0, forced_step_s: float = 0.0,
                      prefill_overhead_s: float = 0.0) -> ReuseCosts:
        """These costs with one worker's measured speeds in place of the cluster figures; 0 (or less): not
        measured, the cluster figure stays; so does a pinned one. A measured prefill rate brings its own fixed
        seconds per pass (prefill_overhead_s, 0 when the fit has none)."""
        own_prefill = prefill_tokens_per_s > 0 and not self.prefill_pinned
        own_step = forced_step_s > 0 and not self.step_pinned
        if not own_prefill and not own_step:
            return self
        return replace(self, gpu_prefill_tokens_per_s=prefill_tokens_per_s if own_prefill
                       else self.gpu_prefill_tokens_per_s,
                       gpu_prefill_overhead_s=max(0.0, prefill_overhead_s) if own_prefill
                       else self.gpu_prefill_overhead_s,
                       card_forced_step_s=forced_step_s if own_step else self.card_forced_step_s)

    def gpu_prefill_s(self, active: int, prompt_tokens: int, cached_tokens: int) -> float:
        """Seconds until a GPU with `active` requests has prefilled what its cache lacks."""
        computed = max(0, prompt_tokens - cached_tokens)
        return active * self.queued_request_s + (self.gpu_prefill_overhead_s if computed else 0.0) \
            + computed / self.gpu_prefill_tokens_per_s

    def transfer_s(self, prompt_tokens: int, kv_bytes_per_token: float) -> float:
        """Seconds to stream a whole prompt's KV to a card."""
        return prompt_tokens * kv_bytes_per_token / self.transfer_bytes_per_s

    def partial_transfer_s(self, card_active: int, prompt_tokens: int, held_tokens: int,
                           kv_bytes_per_token: float) -> float:
        """Seconds the card adds on the partial path: its wait, then the KV of the tokens it lacks streamed in
        (add gpu_prefill_s for the GPU's part)."""
        return card_active * self.queued_request_s + self.transfer_s(prompt_tokens - held_tokens, kv_bytes_per_token)

    def extend_s(self, active: int, prompt_tokens: int, held_tokens: int) -> float:
        """Seconds until a card holding `held_tokens` has forced the rest of the prompt (at least one token)."""
        return active * self.queued_request_s + max(1, prompt_tokens - held_tokens) * self.card_forced_step_s


DEFAULT_REUSE_COSTS = ReuseCosts()
