"""Glue between a daemon and its HTTP side port: start it, say when the daemon is
ready, and publish the gauges that mirror state (occupancy, device power and
temperature) so they are read at scrape time rather than pushed."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client.core import GaugeMetricFamily

from glitches.services.runtime import metrics
from glitches.services.runtime.errors import Unavailable
from glitches.services.runtime.http_side import HttpSide, Readiness
from glitches.services.cluster.registry import Registry
from glitches.services.runtime.settings import DaemonSettings
from glitches.services.cluster.worker_caps import ROLE_DECODE

log = logging.getLogger(__name__)


class DaemonHttp:
    """The HTTP side port of one daemon and its readiness state."""

    def __init__(self, settings: DaemonSettings, role: str):
        self.role = role
        self.readiness = Readiness("loading the model")
        self.side = HttpSide(settings.host, settings.http_port, metrics.registry(role), self.readiness)
        self.address = settings.address_for(self.side.port)

    def stop(self) -> None:
        self.side.stop()


def worker_ready_check(registry: Registry, worker_id: str) -> Callable[[], str]:
    def check() -> str:
        try:
            return "" if registry.is_registered(worker_id) else f"worker {worker_id} is not registered in Redis"
        except Unavailable as error:
            return str(error)
    return check


def scheduler_ready_check(registry: Registry) -> Callable[[], str]:
    """The scheduler registers nothing: it is ready once its model is loaded and Redis answers."""
    def check() -> str:
        try:
            registry.ping()
        except Unavailable as error:
            return str(error)
        return ""
    return check


class OccupancyCollector:
    """Per-worker occupancy as the scheduler sees it in Redis, read at each scrape."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def describe(self):
        return []  # unknown label sets until scraped; prometheus-client then calls collect lazily

    def collect(self):
        labels = ("worker_id", "kind", "backend")
        active = GaugeMetricFamily("glitches_worker_active_requests", "Requests held on each worker (Redis claims)",
                                   labels=labels)
        slots = GaugeMetricFamily("glitches_worker_slots", "Slots of each worker", labels=labels)
        healthy = GaugeMetricFamily("glitches_worker_healthy", "1 while the worker's heartbeat is alive",
                                    labels=labels)
        kv_free = GaugeMetricFamily("glitches_worker_kv_free_bytes", "KV memory free on each worker, bytes",
                                    labels=labels)
        try:
            workers = self.registry.workers()
        except Unavailable as error:
            log.warning("occupancy scrape: %s", error)
            workers = []
        for w in workers:
            values = (w.record.worker_id, w.record.kind, w.record.backend)
            active.add_metric(values, w.active)
            slots.add_metric(values, w.record.slots)
            healthy.add_metric(values, 1 if w.healthy else 0)
            if ROLE_DECODE in w.record.capabilities.roles:  # the workers KV is sent to
                kv_free.add_metric(values, w.record.kv_free_bytes)
        return [active, slots, healthy, kv_free]


def watch_cuda_device(role: str, device: str) -> None:
    """Power and temperature of a CUDA device through NVML (nvidia-ml-py); left unset when NVML is absent."""
    if not device.startswith("cuda"):
        return  # the host CPU standing in for a GPU reports neither
    try:
        import pynvml

        pynvml.nvmlInit()
        index = int(device.split(":")[1]) if ":" in device else 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as error:  # noqa: BLE001 - no NVML library, no driver, ...: the gauges stay unset
        log.info("no NVML for %s (%s): power and temperature not exported", device, error)
        return
    # nvmlDeviceGetPowerUsage is milliwatts
    metrics.POWER.of(role).labels(device=device).set_function(lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3)
    metrics.TEMPERATURE.of(role).labels(device=device).set_function(
        lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU))
