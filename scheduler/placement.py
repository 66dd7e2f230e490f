"""Placement policy as a pure function: cluster snapshot + request -> decision.

The live scheduler and the simulator both call `place`, so what the simulator
predicts is what the scheduler does. Nothing here touches Redis, gRPC or time.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class DeviceKind(str, Enum):
    GPU = "gpu"
    FPGA = "fpga"


@dataclass(frozen=True)
class WorkerView:
    """What the policy knows of one live worker at decision time."""

    worker_id: str
    kind: DeviceKind
    slots: int  # concurrent decode requests it accepts
    active: int  # requests it holds now (prefill or decode)
    kv_free_bytes: int  # KV capacity still free on the device, bytes
    assist_active: int = 0  # GPUs: GPU-assist decodes it holds now (`slots` is their limit)


@dataclass(frozen=True)
class ClusterSnapshot:
    workers: tuple[WorkerView, ...]

    def of_kind(self, kind: DeviceKind) -> list[WorkerView]:
        return [w for w in self.workers if w.kind == kind]


@dataclass(frozen=True)
class PlacementRequest:
    prompt_tokens: int
    max_new_tokens: int
    kv_bytes_needed: int  # KV for prompt + max_new_tokens on the decode device, bytes
    gpu_kv_bytes_needed: int = 0  # KV for prompt + max_new_tokens on a GPU (GPU assist), bytes


@dataclass(frozen=True)
class Placement:
    """Where one request runs.

    `fpga_candidates` is ordered best first; the scheduler tries to claim them in
    that order (claims are atomic in Redis, so the first may already be gone).
    When it is empty, or every claim fails, the request is prefilled and decoded on
    `gpu_assist_worker` (GPU assist), a GPU with a free GPU-assist slot and room for its KV;
    when that is None too, no device can take the request now and it waits in admission.
    """

    prefill_worker: str
    fpga_candidates: tuple[str, ...]
    gpu_assist_worker: str | None = None


class NoWorkerAvailable(Exception):
    """No GPU worker is registered, so nothing can run prefill."""


def place(snapshot: ClusterSnapshot, request: PlacementRequest) -> Placement:
    """Pick a GPU for prefill (least loaded), rank the FPGAs that can decode, and a GPU for GPU assist.

    An FPGA is a candidate when it has a free slot and room for the request's
    KV; candidates are ranked by fewest active requests, then most free KV,
    then id (so ties resolve the same way in every replica). The GPU-assist
    worker is a GPU with a free GPU-assist slot (assist_active < slots) and
    room for the request's GPU KV, fewest GPU-assist decodes first, then most
    free KV, then id.
    """
    gpus = snapshot.of_kind(DeviceKind.GPU)
    if not gpus:
        raise NoWorkerAvailable("no GPU worker is registered to run prefill")
    prefill = min(gpus, key=lambda w: (w.active, w.worker_id))
    fpgas = [
        w
        for w in snapshot.of_kind(DeviceKind.FPGA)
        if w.active < w.slots and w.kv_free_bytes >= request.kv_bytes_needed
    ]
    fpgas.sort(key=lambda w: (w.active, -w.kv_free_bytes, w.worker_id))
    assist = [w for w in gpus if w.assist_active < w.slots and w.kv_free_bytes >= request.gpu_kv_bytes_needed]
    assist.sort(key=lambda w: (w.assist_active, -w.kv_free_bytes, w.worker_id))
    return Placement(prefill_worker=prefill.worker_id, fpga_candidates=tuple(w.worker_id for w in fpgas),
                     gpu_assist_worker=assist[0].worker_id if assist else None)
