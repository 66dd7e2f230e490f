"""Prometheus metric definitions for every daemon (prometheus-client).

Each role has its own CollectorRegistry, so a worker's /metrics carries no empty
scheduler histograms and vice versa; COMMON metrics (gRPC status codes, requests
in flight, migrations) are registered in every role's registry, the workers' common ones
(slots, held KV, power) in every worker's. A device package's own role (any name but
the three built in, e.g. "npu-worker") gets its registry on first use, `registry(role)`,
with every common and worker metric in it: a new kind of worker needs nothing here. Daemons record a
metric where the thing happens (e.g. TTFT in glitches/scheduler/orchestrator.py); gauges
that mirror state read it at scrape time (Gauge.set_function or a collector).

Units are in the names, Prometheus style: *_seconds, *_bytes, *_watts, *_celsius.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

ROLES = ("scheduler", "gpu-worker", "fpga-worker")

# Latency buckets, seconds: 1 ms .. 5 min (a CPU prefill of a long prompt takes minutes).
_LATENCY_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Inter-token latency buckets, seconds: a U280 step is ~10-50 ms, the emulator's ~5-500 ms.
_ITL_S = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
# KV per request, bytes: 64 KiB .. 16 GiB
_KV_BYTES = tuple(float(64 * 1024 * 4**i) for i in range(10))


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


REGISTRIES = {role: _registry() for role in ROLES}
_SCHEDULER = (REGISTRIES["scheduler"],)
_GPU = (REGISTRIES["gpu-worker"],)
_FPGA = (REGISTRIES["fpga-worker"],)


_SCOPE_ALL, _SCOPE_WORKERS = "all", "workers"


class _Shared:
    """One metric name in several role registries; a daemon records into its own role's.

    scope "all": every role's registry; "workers": every role but the scheduler's. A role first named
    by `of` or `registry` (a device package's own) gets an instance of every _Shared of its scope."""

    instances: list[_Shared] = []

    def __init__(self, kind, name: str, doc: str, scope: str, **kwargs):
        self._make = lambda registry: kind(name, doc, registry=registry, **kwargs)
        self.scope = scope
        self._per_registry = {r: self._make(r) for role, r in REGISTRIES.items() if self._covers(role)}
        _Shared.instances.append(self)

    def _covers(self, role: str) -> bool:
        return self.scope == _SCOPE_ALL or role != "scheduler"

    def add(self, role: str, registry: CollectorRegistry) -> None:
        if self._covers(role):
            self._per_registry[registry] = self._make(registry)

    def of(self, role: str):
        return self._per_registry[registry(role)]


_NEW_ROLE = threading.Lock()  # two threads naming a new role at once make one registry, not two


def registry(role: str) -> CollectorRegistry:
    """The registry of `role`, made (with every shared metric of its scope) the first time a new role asks."""
    with _NEW_ROLE:
        if role not in REGISTRIES:
            REGISTRIES[role] = new = _registry()
            for shared in _Shared.instances:
                shared.add(role, new)
        return REGISTRIES[role]


# --- every daemon ---------------------------------------------------------------
GRPC_REQUESTS = _Shared(Counter, "glitches_grpc_requests", "gRPC calls handled, by method and status code",
                        _SCOPE_ALL, labelnames=("method", "code"))
IN_FLIGHT = _Shared(Gauge, "glitches_grpc_in_flight_requests",
                    "gRPC calls received and not yet answered (queued or running): the queue depth",
                    _SCOPE_ALL, labelnames=("method",))
ACTIVE_REQUESTS = _Shared(Gauge, "glitches_active_requests",
                          "Requests this daemon holds now (scheduler: generating; worker: holding KV)", _SCOPE_ALL)
MIGRATIONS = _Shared(Counter, "glitches_migrations",
                     "Requests moved to another decode device after theirs failed mid-generation (--max-migrations)",
                     _SCOPE_ALL)

# --- scheduler ------------------------------------------------------------------
TTFT = Histogram("glitches_ttft_seconds", "Time to first token: request arrival to the first token sent, seconds",
                 registry=_SCHEDULER[0], buckets=_LATENCY_S)
INTER_TOKEN = Histogram("glitches_inter_token_latency_seconds",
                        "Time between consecutive tokens sent to the client, seconds",
                        registry=_SCHEDULER[0], buckets=_ITL_S)
REQUESTS_FINISHED = Counter("glitches_generate_finished", "Generate requests completed, by decode device kind",
                            ("decode_device",), registry=_SCHEDULER[0])
REUSE_PATHS = Counter("glitches_reuse_paths", "Attempts placed, by KV-reuse path (transfer, extend, fresh; "
                      "scheduler/placement.py)", ("path",), registry=_SCHEDULER[0])
STALE_HOLDS = Counter("glitches_reuse_stale_holds", "Extend attempts a card refused: it no longer held the prefix "
                      "it published (placed again without reuse; not a migration)", registry=_SCHEDULER[0])

# --- GPU worker -----------------------------------------------------------------
PREFILL = Histogram("glitches_prefill_seconds", "Prefill forward pass, seconds", registry=_GPU[0],
                    buckets=_LATENCY_S)
KV_SENT_BYTES = Counter("glitches_kv_sent_bytes", "KV bytes streamed to decode workers", registry=_GPU[0])
KV_TRANSFER = Histogram("glitches_kv_transfer_seconds", "KV transfer of one request, first send to last ack, seconds",
                        registry=_GPU[0], buckets=_LATENCY_S)
KV_EXPOSED = Histogram("glitches_kv_exposed_seconds",
                       "KV transfer time left after prefill ended (not hidden behind prefill), seconds",
                       registry=_GPU[0], buckets=_LATENCY_S)
KV_REQUEST_BYTES = Histogram("glitches_kv_request_bytes", "KV bytes of one request", registry=_GPU[0],
                             buckets=_KV_BYTES)

# Per step of the GPU worker's batching loop (glitches/gpu_worker/step_loop.py): one forward pass each.
GPU_STEP = Histogram("glitches_gpu_step_seconds",
                     "One batched forward pass of the GPU worker, seconds, by what it held: decode (GPU-assist "
                     "tokens only), prefill (prompt chunks only) or mixed", ("phase",), registry=_GPU[0],
                     buckets=_LATENCY_S)
GPU_STEP_DECODES = Histogram("glitches_gpu_step_decode_requests", "GPU-assist requests decoded together in one step",
                             registry=_GPU[0], buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256))
GPU_STEP_PREFILL_TOKENS = Histogram("glitches_gpu_step_prefill_tokens", "Prompt tokens prefilled in one step",
                                    registry=_GPU[0], buckets=(0, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192))
GPU_KV_FREE_BLOCKS = Gauge("glitches_gpu_kv_free_blocks", "Free KV blocks of the GPU worker's budget (16 tokens each)",
                           registry=_GPU[0])
GPU_ASSIST_ACTIVE = Gauge("glitches_gpu_assist_requests", "GPU-assist requests held (KV kept on this GPU)",
                          registry=_GPU[0])
# The GPU worker's prefix cache (glitches/kv_plane/prefix_index.py); all 0 with --no-prefix-cache
GPU_PREFIX_CACHED_BLOCKS = Gauge("glitches_gpu_prefix_cached_blocks",
                                 "KV blocks named in the prefix cache (16 tokens each), used by requests or evictable",
                                 registry=_GPU[0])
GPU_PREFIX_EVICTABLE_BLOCKS = Gauge("glitches_gpu_prefix_evictable_blocks",
                                    "Prefix-cache blocks no request uses (counted as free: evicted when needed)",
                                    registry=_GPU[0])
GPU_PREFIX_EVICTIONS = Gauge("glitches_gpu_prefix_evictions", "Prefix-cache blocks evicted since the worker started",
                             registry=_GPU[0])
GPU_PREFIX_LOOKUP_BLOCKS = Gauge("glitches_gpu_prefix_lookup_blocks",
                                 "Full prompt blocks looked up in the prefix cache since the worker started",
                                 registry=_GPU[0])
GPU_PREFIX_HIT_BLOCKS = Gauge("glitches_gpu_prefix_hit_blocks",
                              "Of the blocks looked up, those found cached (reused, not computed)", registry=_GPU[0])
GPU_PREFIX_HIT_RATE = Gauge("glitches_gpu_prefix_hit_rate",
                            "Prefix-cache hit rate since the worker started: hit blocks / looked-up blocks (0 before "
                            "any lookup)", registry=_GPU[0])

# --- every worker that receives KV (FPGA workers, decode-role GPU workers: glitches/decode_contract/kv_intake_rpcs.py) ---
KV_RECEIVED_BYTES = _Shared(Counter, "glitches_kv_received_bytes", "KV bytes received into device memory",
                            _SCOPE_WORKERS)
KV_STREAMS = _Shared(Gauge, "glitches_kv_streams", "KV streams (TransferKV, TransferKVPlaced) being received now",
                     _SCOPE_WORKERS)
KV_NIXL_REGISTRATIONS = _Shared(Gauge, "glitches_kv_nixl_registrations",
                                "KV regions registered with this worker's NIXL agent now (one per transfer in flight)",
                                _SCOPE_WORKERS)

# --- FPGA worker ----------------------------------------------------------------
KV_FREE_BYTES = Gauge("glitches_kv_free_bytes", "Device memory free for KV, bytes", registry=_FPGA[0])
KV_CAPACITY_BYTES = Gauge("glitches_kv_capacity_bytes", "Device memory for KV after the weights, bytes",
                          registry=_FPGA[0])
# KV the card keeps after requests finish (glitches/decode_contract/emu_kv.py; 0 with --no-kv-retention)
CARD_KV_CACHED_BYTES = Gauge("glitches_card_kv_cached_bytes",
                             "KV bytes kept after finished requests as evictable cache (counted in free bytes)",
                             registry=_FPGA[0])
CARD_KV_CACHED_REGIONS = Gauge("glitches_card_kv_cached_regions", "Finished requests whose KV the card keeps now",
                               registry=_FPGA[0])
CARD_KV_EVICTIONS = Gauge("glitches_card_kv_evictions", "Kept KV regions evicted since the worker started",
                          registry=_FPGA[0])
CARD_HELD_LOOKUPS = Gauge("glitches_card_held_lookups", "DecodeFromHeld requests since the worker started",
                          registry=_FPGA[0])
CARD_HELD_HITS = Gauge("glitches_card_held_hits", "Of those, the ones that reused a kept prefix", registry=_FPGA[0])
CARD_HELD_HIT_RATE = Gauge("glitches_card_held_hit_rate", "held hits / held lookups since start (0 before any)",
                           registry=_FPGA[0])
CARD_HELD_REUSED_TOKENS = Gauge("glitches_card_held_reused_tokens",
                                "Prompt tokens served from kept KV (not prefilled, not transferred) since start",
                                registry=_FPGA[0])

# --- workers: device facts, set only where the device reports them (never for emu / cpu; an emulated
# card's modeled power has its own name) ---
SLOTS = _Shared(Gauge, "glitches_slots", "Concurrent requests this worker accepts", _SCOPE_WORKERS)
POWER = _Shared(Gauge, "glitches_device_power_watts", "Device power draw, watts", _SCOPE_WORKERS,
                labelnames=("device",))
TEMPERATURE = _Shared(Gauge, "glitches_device_temperature_celsius", "Device temperature, degrees Celsius",
                      _SCOPE_WORKERS, labelnames=("device",))
EMULATED_POWER = Gauge("glitches_emulated_device_power_watts",
                       "MODELED, not measured: the board power an emulated U280 would draw, watts (35 W idle, "
                       "assumed, to 46 W decoding, the paper's, by the share of the last second spent stepping)",
                       labelnames=("device",), registry=_FPGA[0])

# --- workers: what they hold (glitches/services/cluster/kv_holds.py) -------------------------------
KV_HELD_BYTES = _Shared(Gauge, "glitches_kv_held_bytes", "KV bytes this worker holds for requests now",
                        _SCOPE_WORKERS)
KV_EXPIRING = _Shared(Gauge, "glitches_kv_expiring_requests",
                      "Requests holding KV here that are not decoding (freed unless the scheduler renews them)",
                      _SCOPE_WORKERS)
KV_EXPIRED = _Shared(Gauge, "glitches_kv_holds_expired",
                     "Requests whose KV this worker freed because no scheduler renewed it (since start)",
                     _SCOPE_WORKERS)


def publish_holds(role: str, holds, held_bytes) -> None:
    """Mirror a worker's KvHolds at scrape time; held_bytes() -> KV bytes held now."""
    KV_HELD_BYTES.of(role).set_function(held_bytes)
    KV_EXPIRING.of(role).set_function(lambda: holds.summary().expiring)
    KV_EXPIRED.of(role).set_function(lambda: holds.expired_total)


def publish_kv_intake(role: str, servicer) -> None:
    """Read a KV-receiving servicer's (glitches/decode_contract/kv_intake_rpcs.KvIntakeRpcs) streams and NIXL
    registrations into `role`'s gauges at scrape time."""
    KV_STREAMS.of(role).set_function(lambda: servicer.kv_streams.active)
    KV_NIXL_REGISTRATIONS.of(role).set_function(lambda: servicer.nixl.registrations() if servicer.nixl else 0)
