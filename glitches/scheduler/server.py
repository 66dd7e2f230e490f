"""The scheduler's gRPC servicer: protobuf in, orchestrator call, protobuf out."""

from __future__ import annotations

import logging

from glitches.scheduler.leases import LeaseKeeper
from glitches.scheduler.orchestrator import Delta, Orchestrator
from glitches.scheduler.settings import SchedulerSettings
from glitches.scheduler.validation import GenerateInput, ModelInfo
from glitches.services.generation import models
from glitches.services.auth.api_keys import METADATA_KEY, ApiKeyInterceptor, bearer_key, tenant_salt
from glitches.services.auth.rate_limit import KeyRateLimiter
from glitches.services.runtime.daemon import configure_logging, run_until_signalled
from glitches.services.runtime.errors import Unavailable
from glitches.services.runtime.grpc_server import start_server
from glitches.services.auth.kv_token import SECRET_ENV
from glitches.services.runtime.metrics import ACTIVE_REQUESTS, REGISTRIES
from glitches.services.runtime.observability import DaemonHttp, OccupancyCollector, scheduler_ready_check
from glitches.services.generation.proto_convert import FINISH_TO_PROTO, logprob_to_proto
from glitches.services.cluster.registry import Registry, WorkerState
from glitches.services.generation.sampling import Sampling
from glitches.services.stubs.glitches.v1 import common_pb2, scheduler_pb2, scheduler_pb2_grpc
from glitches.services.cluster.worker_caps import ordered_roles

log = logging.getLogger(__name__)
SERVICE_NAME = scheduler_pb2.DESCRIPTOR.services_by_name["Scheduler"].full_name
# The wire enum of the built-in kinds, for clients older than WorkerStatus.kind_name; other kinds send UNSPECIFIED.
_KINDS = {"gpu": common_pb2.DEVICE_KIND_GPU, "fpga": common_pb2.DEVICE_KIND_FPGA}


class SchedulerServicer(scheduler_pb2_grpc.SchedulerServicer):
    def __init__(self, orchestrator: Orchestrator):
        self.orchestrator = orchestrator
        self.tenants = dict(orchestrator.settings.api_key_tenants)  # key -> the tenant the operator put it in

    def Generate(self, request, context):
        key = bearer_key(dict(context.invocation_metadata() or ()).get(METADATA_KEY))
        generate = GenerateInput(prompt=request.prompt, chat=request.chat,
                                 sampling=Sampling.from_proto(request.sampling), model=request.model,
                                 prompt_token_ids=tuple(request.prompt_token_ids),
                                 cache_salt=tenant_salt(key, self.orchestrator.settings.api_keys, self.tenants))
        for event in self.orchestrator.generate(generate, cancelled=lambda: not context.is_active(),
                                                time_remaining=context.time_remaining):
            if isinstance(event, Delta):
                yield scheduler_pb2.GenerateResponse(delta=scheduler_pb2.TextDelta(
                    text=event.text, token_ids=event.token_ids, logprobs=[logprob_to_proto(r) for r in event.logprobs],
                    prompt_logprobs=[logprob_to_proto(r) for r in event.prompt_logprobs],
                    prompt_token_ids=event.prompt_token_ids))
                continue
            t = event.timings
            yield scheduler_pb2.GenerateResponse(final=scheduler_pb2.GenerateFinal(
                request_id=event.request_id, prompt_token_ids=event.prompt_token_ids, token_ids=event.token_ids,
                text=event.text, finish_reason=FINISH_TO_PROTO[event.finish], decode_device=event.decode_device,
                decode_worker=event.decode_worker, prefill_worker=event.prefill_worker,
                usage=scheduler_pb2.Usage(prompt_tokens=len(event.prompt_token_ids),
                                          completion_tokens=len(event.token_ids),
                                          cached_tokens=event.cached_tokens),
                timings=scheduler_pb2.Timings(**t), migrations=event.migrations,
                logprobs=[logprob_to_proto(r) for r in event.logprobs],
                prompt_logprobs=[logprob_to_proto(r) for r in event.prompt_logprobs]))

    def Status(self, request, context):
        workers = []
        for w in self.orchestrator.registry.workers():
            try:
                workers.append(worker_status(w))
            except ValueError as error:  # a hand-written record with negative or huge numbers
                log.debug("status leaves out worker %s: %s", w.record.worker_id, error)
        return scheduler_pb2.StatusResponse(model=self.orchestrator.model.name, workers=workers,
                                            scheduler_active_requests=self.orchestrator.active,
                                            redis=redis_status(self.orchestrator.registry))


def worker_status(w: WorkerState) -> scheduler_pb2.WorkerStatus:
    """One worker's registry record and occupancy as Status reports them; ValueError for out-of-range numbers."""
    caps = w.record.capabilities
    return scheduler_pb2.WorkerStatus(
        worker_id=w.record.worker_id, kind=_KINDS.get(w.record.kind, common_pb2.DEVICE_KIND_UNSPECIFIED),
        kind_name=w.record.kind, roles=ordered_roles(caps.roles), decode_class=caps.decode_class,
        backend=w.record.backend, emulated=bool(w.record.emulated), device_name=w.record.device_name,
        address=w.record.address, pid=w.record.pid, healthy=w.healthy, slots=w.record.slots,
        active_requests=w.active, kv_capacity_bytes=w.record.kv_capacity_bytes,
        kv_free_bytes=w.record.kv_free_bytes, model=w.record.model, http_address=w.record.http_address,
        kv_tokens_required=bool(w.record.kv_tokens_required),
        kv_transports=[t for t in w.record.kv_transports.split(",") if t],
        host_identity=w.record.host_identity,
        worker_active_requests=w.record.worker_active_requests, kv_held_bytes=w.record.kv_held_bytes,
        kv_cached_bytes=w.record.kv_cached_bytes,
        expiring_requests=w.record.expiring_requests)


def redis_status(registry: Registry) -> scheduler_pb2.RedisStatus:
    """Which Redis primary the registry writes to now (asked of the sentinels, with Sentinel)."""
    link = registry.link
    status = scheduler_pb2.RedisStatus(sentinel_service=link.sentinel_service, sentinels=link.sentinel_addresses)
    try:
        status.primary = registry.redis_primary()
    except Unavailable as error:
        status.error = str(error)
    return status


def load_model_info(spec: str) -> ModelInfo:
    from transformers import AutoConfig, GenerationConfig

    source = models.resolve_model(spec)
    config = AutoConfig.from_pretrained(source.path)
    try:
        eos = GenerationConfig.from_pretrained(source.path).eos_token_id
    except OSError:
        eos = config.eos_token_id
    eos_ids = tuple(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    return ModelInfo(source.name, models.load_tokenizer(source), eos_ids, config.max_position_embeddings,
                     config.vocab_size)


def serve(settings: SchedulerSettings) -> None:
    configure_logging("scheduler")
    http = DaemonHttp(settings, "scheduler")
    registry = Registry(settings.redis_url, settings.redis_prefix, settings.heartbeat_ttl_s, settings.lease_ttl_s)
    leases = LeaseKeeper(registry)
    leases.start()
    orchestrator = Orchestrator(settings, registry, load_model_info(settings.model), leases)
    if orchestrator.kv_tokens is None:
        log.warning("no KV token secret is set: KV transfers carry no token, so FPGA workers that have one refuse "
                    "them; set the same %s (or --kv-token-secret-file) on the scheduler and the workers",
                    SECRET_ENV)
    limiter = KeyRateLimiter(settings.requests_per_minute_per_key) if settings.requests_per_minute_per_key else None
    server = start_server(settings.host, settings.port,
                          [(scheduler_pb2_grpc.add_SchedulerServicer_to_server, SchedulerServicer(orchestrator))],
                          (SERVICE_NAME,), metrics_role="scheduler", max_workers=settings.grpc_threads,
                          max_concurrent_rpcs=settings.grpc_threads,
                          auth=ApiKeyInterceptor(settings.api_keys, (SERVICE_NAME,), limiter) if settings.api_keys else None,
                          tls=settings.tls())
    address = settings.address_for(server.port)
    ACTIVE_REQUESTS.of("scheduler").set_function(lambda: orchestrator.active)
    REGISTRIES["scheduler"].register(OccupancyCollector(registry))
    http.readiness.serving(scheduler_ready_check(registry))
    run_until_signalled(server, None, settings.drain_grace_s, f"scheduler ready {address} http={http.address}")
