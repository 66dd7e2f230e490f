"""Run a daemon until SIGTERM or SIGINT, then drain: NOT_SERVING, finish in-flight work,
deregister, exit 0. Shared by every daemon's entry point."""

from __future__ import annotations

import logging
import signal
import threading

from glitches.services.runtime.grpc_server import RunningServer
from glitches.services.cluster.registry import Heartbeat

log = logging.getLogger(__name__)


def configure_logging(name: str) -> None:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")


def wait_for_signal(ready_message: str) -> None:
    """Print ready_message, then return on the first SIGTERM or SIGINT (the caller drains)."""
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(ready_message, flush=True)
    stop.wait()


def run_until_signalled(server: RunningServer, heartbeat: Heartbeat | None, grace_s: float,
                        ready_message: str) -> None:
    """wait_for_signal, then deregister (when given a heartbeat) and stop the server. The worker daemons drain
    through RunningWorker.drain instead (services/runtime/worker_runtime.py), which also withdraws held KV."""
    wait_for_signal(ready_message)
    if heartbeat is not None:
        heartbeat.stop(deregister=True)  # no new work is routed here
    server.stop(grace_s)
    log.info("stopped")
