"""The one place a worker's registry record is built from its Info.

Every worker kind publishes the same WorkerRecord (glitches/services/cluster/registry.py): what its Info RPC answers,
plus where it is reached (gRPC and HTTP side port addresses) and its KV block geometry, which Info
does not carry for every kind. A field one kind does not have (a GPU's shm segment, an FPGA's
GPU-assist count) is Info's default: empty or 0, as the record's own default.
"""

from __future__ import annotations

from dataclasses import dataclass

from glitches.services.cluster.registry import WorkerRecord
from glitches.services.stubs.glitches.v1 import worker_pb2


@dataclass(frozen=True)
class KvBlocks:
    """A worker's KV allocation unit, as placement counts it."""

    granularity_tokens: int  # a reservation of n tokens takes KV for n rounded up to a multiple of this
    block_bytes: int  # bytes of one KV block
    free_blocks: int  # KV blocks free on the device now


def record_from_info(info: worker_pb2.InfoResponse, kind: str, address: str, http_address: str,
                     blocks: KvBlocks) -> WorkerRecord:
    """The record a worker publishes each beat. kind: the record's kind ("gpu", "fpga");
    address: gRPC host:port peers dial; http_address: its HTTP side port's host:port."""
    return WorkerRecord(worker_id=info.worker_id, kind=kind, backend=info.backend, emulated=int(info.emulated),
                        device_name=info.device_name, address=address, pid=info.pid, model=info.model,
                        slots=info.slots, kv_capacity_bytes=info.kv_capacity_bytes,
                        kv_free_bytes=info.kv_free_bytes, kv_bytes_per_token=info.kv_bytes_per_token,
                        http_address=http_address, kv_granularity_tokens=blocks.granularity_tokens,
                        kv_block_bytes=blocks.block_bytes, kv_free_blocks=blocks.free_blocks,
                        kv_tokens_required=int(info.kv_tokens_required),
                        kv_transports=",".join(info.kv_transports), host_identity=info.host_identity,
                        shm_segment=info.shm_segment, nixl_agent=info.nixl_agent,
                        worker_active_requests=info.active_requests, kv_held_bytes=info.kv_held_bytes,
                        kv_cached_bytes=info.kv_cached_bytes,
                        expiring_requests=info.expiring_requests, assist_active=info.gpu_assist_requests,
                        roles=",".join(info.roles), decode_class=info.decode_class,
                        prefill_tokens_per_s=info.prefill_tokens_per_s,
                        prefill_overhead_s=info.prefill_overhead_s, decode_step_s=info.decode_step_s)
