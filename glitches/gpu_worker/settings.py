"""Settings of one GPU worker daemon, validated on construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from glitches.kv_plane import kv_copy_threads
from glitches.kv_plane.kv_stream_limits import check_limits
from glitches.services.runtime.errors import InvalidArgument
from glitches.services.cluster.kv_holds import DEFAULT_TTL_S as DEFAULT_HOLD_TTL_S
from glitches.services.runtime.settings import DaemonSettings
from glitches.services.cluster.worker_caps import ROLE_ASSIST, ROLE_PREFILL, ROLES

_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class GpuWorkerSettings(DaemonSettings):
    device: str = "auto"  # "auto" (cuda when present, else cpu), "cpu", "cuda", "cuda:N"
    dtype: str = "auto"  # "auto" (float32 on CPU, float16 on CUDA) or one of _DTYPES
    slots: int = 0  # concurrent GPU-assist decodes it accepts (RESOURCE_EXHAUSTED beyond); 0 = from the KV
    # budget (glitches/gpu_worker/assist_slots.py); the engine's settings carry the resolved number
    kv_transfer_timeout_s: float = 120.0
    kv_transport: str = "auto"  # auto: shm on the target's host, else nixl, else grpc; or force one
    kv_token_secret: bytes = field(default=b"", repr=False)  # the cluster's secret: checks request auth; b"": open
    kv_hold_ttl_s: float = DEFAULT_HOLD_TTL_S  # GPU-assist KV not decoding is freed this long after its last renewal
    kv_memory_fraction: float = 0.9  # of the device memory free after the weights (host RAM on CPU), for KV
    kv_cache_gib: float = 0.0  # KV budget in GiB; 0 = from kv_memory_fraction
    kv_wait_s: float = 60.0  # how long a prefill streaming to an FPGA waits for KV blocks, seconds
    max_batch_tokens: int = 512  # tokens per forward pass: decodes + prefill chunks (long prompts are chunked)
    compile_decode: bool = False  # torch.compile the decode-only steps (for CUDA; untested there)
    roles: str = "prefill,assist"  # comma-separated services.worker_caps roles; "decode": takes KV from other GPUs
    kv_staging_gib: float = 2.0  # decode role: host staging segment for KV arriving, GiB (sparse: only what is written)
    kv_header_timeout_s: float = 2.0  # decode role: a KV stream's header must arrive within this, seconds
    kv_stall_timeout_s: float = 30.0  # decode role: longest gap between two messages of one KV stream, seconds
    max_kv_streams: int = 64  # decode role: KV streams served at once
    kv_copy_threads: int = kv_copy_threads.DEFAULT_THREADS  # threads of one KV relayout (K and V side by side)
    prefix_cache: bool = True  # keep finished requests' full KV blocks as evictable cache and reuse them

    def __post_init__(self):
        super().__post_init__()
        if self.dtype not in ("auto", *_DTYPES):
            raise InvalidArgument(f"--dtype must be auto or one of {', '.join(_DTYPES)}, got {self.dtype!r}")
        if self.slots < 0:
            raise InvalidArgument(f"--slots must be >= 0 (0 = from the KV budget), got {self.slots}")
        if self.kv_transport not in ("auto", "shm", "nixl", "grpc"):
            raise InvalidArgument(f"--kv-transport must be one of auto, shm, nixl, grpc, got {self.kv_transport!r}")
        if not 2.0 <= self.kv_hold_ttl_s <= 3600.0:
            raise InvalidArgument(f"--kv-hold-ttl-s must be in [2, 3600] s (renewals come every second), "
                                  f"got {self.kv_hold_ttl_s}")
        if not 0.0 < self.kv_memory_fraction <= 1.0:
            raise InvalidArgument(f"--kv-memory-fraction must be in (0, 1], got {self.kv_memory_fraction}")
        if self.kv_cache_gib < 0:
            raise InvalidArgument(f"--kv-cache-gib must be >= 0 (0 = from --kv-memory-fraction), got {self.kv_cache_gib}")
        roles = self.role_set()
        if not roles or roles - set(ROLES):
            raise InvalidArgument(f"--roles must be a comma-separated subset of {', '.join(ROLES)}, got {self.roles!r}")
        if ROLE_ASSIST in roles and ROLE_PREFILL not in roles:
            raise InvalidArgument("--roles: assist (decoding what this worker prefilled) needs prefill too")
        if self.kv_staging_gib <= 0:
            raise InvalidArgument(f"--kv-staging-gib must be positive, got {self.kv_staging_gib}")
        check_limits(self.kv_header_timeout_s, self.kv_stall_timeout_s, self.max_kv_streams)
        kv_copy_threads.check(self.kv_copy_threads)
        if self.max_batch_tokens < 1:
            raise InvalidArgument(f"--max-batch-tokens must be at least 1, got {self.max_batch_tokens}")

    def role_set(self) -> frozenset[str]:
        return frozenset(r.strip() for r in self.roles.split(",") if r.strip())

    def resolved_device(self) -> str:
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise InvalidArgument(f"--device {self.device}: no CUDA device is available here; use --device cpu")
        return self.device

    def resolved_dtype(self, device: str) -> str:
        if self.dtype != "auto":
            return self.dtype
        return "float32" if device == "cpu" else "float16"
