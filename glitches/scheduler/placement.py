"""Placement policy as a pure function: cluster snapshot + request -> decision.

The live scheduler and the simulator both call `place`, so what the simulator
predicts is what the scheduler does. Nothing here touches Redis, gRPC or time.

The policy works from what each worker can do (roles and decode class, glitches/services/cluster/worker_caps.py),
never from its kind's name: a new kind of decode device needs no change here.

KV reuse (issue #27): each WorkerView says how many leading tokens of this request's prompt the
worker holds (`cached_tokens`, from the workers' published block hashes; 0 when unknown). The
policy then chooses a path by estimated time to the first token (glitches/scheduler/reuse_cost.py):
"transfer" (GPU prefill + KV stream, the GPU with the best cached overlap against its load),
"extend" (the decode card holding the prefix forces the rest through its decode step: no GPU, no
transfer) or "fresh" (a card holds the prefix but is busy or full: transfer elsewhere). With
`PlacementRequest.partial` also "transfer-partial" (the GPU prefills the rest from its cache and streams
only the KV the holding card lacks). With no worker holding anything the decision is exactly the one
before reuse. A worker's own measured speeds (WorkerView.prefill_tokens_per_s, decode_step_s; 0 = not
measured) replace the cluster figures of ReuseCosts in the path estimates of that worker (the chosen GPU's
prefill, a holding card's forced steps: ReuseCosts.with_measured); the prefill GPU is still ranked with the
cluster figure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum

from glitches.scheduler.reuse_cost import DEFAULT_REUSE_COSTS, ReuseCosts
from glitches.services.cluster.worker_caps import BUILTIN_CAPABILITIES, ROLE_ASSIST, ROLE_DECODE, ROLE_PREFILL

PATH_TRANSFER = "transfer"  # GPU prefill (of what its cache lacks), the KV streams to a decode card
PATH_EXTEND = "extend"  # the card holding the prefix extends its own KV (DecodeFromHeld)
PATH_FRESH = "fresh"  # a card holds the prefix but cannot take the request: transfer to another
PATH_TRANSFER_PARTIAL = "transfer-partial"  # GPU prefill, only the KV the holding card lacks streams to it


class DeviceKind(str, Enum):
    """The two built-in kinds (the simulator's device profiles name them); any other string is a kind too."""

    GPU = "gpu"
    FPGA = "fpga"


@dataclass(frozen=True)
class WorkerView:
    """What the policy knows of one live worker at decision time.

    `roles` empty: those of the built-in kind (services.worker_caps.BUILTIN_CAPABILITIES), so the
    simulator and older callers that name only the kind keep working; another kind without roles does nothing.
    """

    worker_id: str
    kind: str  # free-form ("gpu", "fpga", ...); only for the caller: the policy reads roles and decode_class
    slots: int  # concurrent decode requests it accepts
    active: int  # requests it holds now (prefill or decode)
    kv_free_bytes: int  # KV capacity still free on the device, bytes
    assist_active: int = 0  # assist-role workers: GPU-assist decodes it holds now (`slots` is their limit)
    roles: frozenset[str] = frozenset()  # services.worker_caps.ROLE_*
    decode_class: int = 0  # with ROLE_DECODE: preference, lower first
    cached_tokens: int = 0  # leading tokens of this request's prompt whose KV the worker holds (published)
    prefill_tokens_per_s: float = 0.0  # its measured prefill speed (prefill role), tokens/s; 0: not measured
    prefill_overhead_s: float = 0.0  # its measured fixed seconds per prefill pass (with prefill_tokens_per_s)
    decode_step_s: float = 0.0  # its measured decode step (a forced prompt token costs one), s; 0: not measured

    def __post_init__(self):
        if not self.roles and self.kind in BUILTIN_CAPABILITIES:
            builtin = BUILTIN_CAPABILITIES[self.kind]
            object.__setattr__(self, "roles", builtin.roles)
            object.__setattr__(self, "decode_class", builtin.decode_class)


@dataclass(frozen=True)
class ClusterSnapshot:
    workers: tuple[WorkerView, ...]

    def with_role(self, role: str) -> list[WorkerView]:
        return [w for w in self.workers if role in w.roles]


@dataclass(frozen=True)
class PlacementRequest:
    prompt_tokens: int
    max_new_tokens: int
    kv_bytes_needed: int  # KV for prompt + max_new_tokens on a decode-role worker, bytes
    gpu_kv_bytes_needed: int = 0  # KV for prompt + max_new_tokens on an assist-role worker (GPU assist), bytes
    reuse: bool = True  # False: ignore cached_tokens (reuse routing off for this cluster or this request)
    partial: bool = False  # True: PATH_TRANSFER_PARTIAL may be chosen (live: --kv-reuse-partial; sim: kv_reuse_partial)


@dataclass(frozen=True)
class Placement:
    """Where one request runs.

    `decode_candidates` (decode-role workers, which take the KV from `prefill_worker`) is
    ordered best first; the scheduler tries to claim them in that order (claims are atomic
    in Redis, so the first may already be gone). When it is empty, or every claim fails,
    the request is prefilled and decoded on `gpu_assist_worker` (GPU assist), an assist-role
    worker with a free GPU-assist slot and room for its KV; when that is None too, no device
    can take the request now and it waits in admission.
    """

    prefill_worker: str  # "" only on the extend path with no prefill worker registered (nothing to fall back on)
    decode_candidates: tuple[str, ...]
    gpu_assist_worker: str | None = None
    path: str = PATH_TRANSFER  # PATH_*; with PATH_EXTEND the fields above are the fallback (a stale hint)
    extend_worker: str | None = None  # PATH_EXTEND, PATH_TRANSFER_PARTIAL: the card that holds the prefix
    held_tokens: int = 0  # PATH_EXTEND: prompt tokens the card holds (it forces the rest); partial: it is sent the rest
    estimated_ttft_s: float = 0.0  # the chosen path's estimate, seconds (reuse_cost)

    @property
    def fpga_candidates(self) -> tuple[str, ...]:
        """The name of `decode_candidates` from when only FPGAs decoded."""
        return self.decode_candidates


class NoWorkerAvailable(Exception):
    """No worker with the prefill role is registered, so nothing can run prefill."""


def _own(costs: ReuseCosts, w: WorkerView) -> ReuseCosts:
    """The costs of `w`'s terms: its measured speeds where it published them, else the cluster's."""
    return costs.with_measured(w.prefill_tokens_per_s, w.decode_step_s, w.prefill_overhead_s)


def _extend_without_prefill(snapshot: ClusterSnapshot, request: PlacementRequest, costs: ReuseCosts,
                            held: Callable[[WorkerView], int]) -> Placement:
    """place() with no prefill worker: the cheapest decode-only card that holds a prefix and can take the request
    extends it alone; else NoWorkerAvailable."""
    prompt = request.prompt_tokens
    usable = [w for w in snapshot.with_role(ROLE_DECODE) if ROLE_PREFILL not in w.roles and min(held(w), prompt - 1) > 0
              and w.active < w.slots and w.kv_free_bytes >= request.kv_bytes_needed]
    if not usable:
        raise NoWorkerAvailable("no GPU worker (no worker with the prefill role) is registered to run prefill")
    best = min(usable, key=lambda w: (_own(costs, w).extend_s(w.active, prompt, held(w)), w.decode_class,
                                      w.worker_id))
    return Placement(prefill_worker="", decode_candidates=(), path=PATH_EXTEND, extend_worker=best.worker_id,
                     held_tokens=min(held(best), prompt - 1),
                     estimated_ttft_s=_own(costs, best).extend_s(best.active, prompt, held(best)))


def place(snapshot: ClusterSnapshot, request: PlacementRequest, costs: ReuseCosts = DEFAULT_REUSE_COSTS) -> Placement:
    """Pick a prefill worker (least loaded), rank the decode-role workers, and an assist-role worker for GPU assist;
    then, if a decode card holds a prefix of the prompt, choose between extending there and the transfer.

    A decode-role worker is a candidate when it has a free slot and room for the
    request's KV; candidates are ranked by decode class (lower first: a dedicated
    decode device such as an FPGA before a GPU, as in the paper), then fewest active
    requests, then most free KV, then id (so ties resolve the same way in every
    replica). The GPU-assist worker is a worker with both the prefill and the assist
    role, a free GPU-assist slot (assist_active < slots) and room for the request's
    GPU KV, fewest GPU-assist decodes first, then most free KV, then id (with reuse: the least estimated
    prefill time first, its GPU-assist load against the prompt tokens its prefix cache holds).

    Reuse: the prefill worker is the one with the least estimated prefill time (its load against the
    prompt tokens it holds; with no overlap anywhere: fewest active, then id, as before). A decode-only
    worker holding a prefix (`cached_tokens` > 0) with a free slot and room for the whole request's KV is an
    extend candidate (room for all of it: the held prefix is evictable cache, already counted in the card's
    free bytes, and adopting it takes it out of them); the cheapest one is chosen when its estimate beats the transfer's (ties: transfer).
    A holder that cannot take the request makes the path "fresh". With no prefill worker at all (the GPU died)
    an extend candidate still serves the request: path extend, prefill_worker "" and no fallback.
    The estimates use each worker's measured speeds where it published them (module docstring).
    """
    prefillers = snapshot.with_role(ROLE_PREFILL)
    prompt = request.prompt_tokens

    def held(w: WorkerView) -> int:
        return min(w.cached_tokens, prompt) if request.reuse else 0

    if not prefillers:  # the extend path needs no GPU: a card holding the prompt forces the rest and decodes
        return _extend_without_prefill(snapshot, request, costs, held)

    # ranked with the cluster figure (a GPU's measured speed only estimates the paths below), so with nothing held
    # the choice is the one before reuse, and equal GPUs are not told apart by measurement noise
    prefill = min(prefillers, key=lambda w: (costs.gpu_prefill_s(w.active, prompt, held(w)), w.active, w.worker_id))
    decoders = [
        w
        for w in snapshot.with_role(ROLE_DECODE)
        if w.active < w.slots and w.kv_free_bytes >= request.kv_bytes_needed
    ]
    decoders.sort(key=lambda w: (w.decode_class, w.active, -w.kv_free_bytes, w.worker_id))
    assist = [w for w in prefillers if ROLE_ASSIST in w.roles and w.assist_active < w.slots
              and w.kv_free_bytes >= request.gpu_kv_bytes_needed]
    # a GPU-only conversation sticks to the GPU whose prefix cache holds it, while that beats the others' load
    assist.sort(key=lambda w: (costs.gpu_prefill_s(w.assist_active, prompt, held(w)), w.assist_active,
                               -w.kv_free_bytes, w.worker_id))
    fallback = Placement(prefill_worker=prefill.worker_id, decode_candidates=tuple(w.worker_id for w in decoders),
                         gpu_assist_worker=assist[0].worker_id if assist else None)
    holders = [w for w in snapshot.with_role(ROLE_DECODE) if ROLE_PREFILL not in w.roles and min(held(w), prompt - 1) > 0]
    if not holders:
        return fallback
    kv_per_token = request.kv_bytes_needed / max(1, prompt + request.max_new_tokens)  # bytes/token, rounded up
    gpu_s = _own(costs, prefill).gpu_prefill_s(prefill.active, prompt, held(prefill))
    transfer_s = gpu_s + costs.transfer_s(prompt, kv_per_token)
    usable = [w for w in holders if w.active < w.slots and w.kv_free_bytes >= request.kv_bytes_needed]
    if not usable:
        return replace(fallback, path=PATH_FRESH, estimated_ttft_s=transfer_s)
    best = min(usable, key=lambda w: (_own(costs, w).extend_s(w.active, prompt, held(w)), w.decode_class,
                                      w.worker_id))
    extend_s = _own(costs, best).extend_s(best.active, prompt, held(best))
    if request.partial:  # the GPU computes the rest, only the KV the holder lacks moves (ties: the holder extends)
        part = min(usable, key=lambda w: (costs.partial_transfer_s(w.active, prompt, min(held(w), prompt - 1),
                                                                   kv_per_token), w.decode_class, w.worker_id))
        part_held = min(held(part), prompt - 1)
        partial_s = gpu_s + costs.partial_transfer_s(part.active, prompt, part_held, kv_per_token)
        if partial_s < min(extend_s, transfer_s):
            return replace(fallback, path=PATH_TRANSFER_PARTIAL, extend_worker=part.worker_id, held_tokens=part_held,
                           estimated_ttft_s=partial_s)
    if extend_s >= transfer_s:
        return replace(fallback, estimated_ttft_s=transfer_s)
    return replace(fallback, path=PATH_EXTEND, extend_worker=best.worker_id, held_tokens=min(held(best), prompt - 1),
                   estimated_ttft_s=extend_s)
