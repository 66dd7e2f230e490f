"""Soak: many requests while daemons fail at random.

    .venv/bin/python -m benchmarks.soak [--requests 1000] [--concurrency 8] [--fault-every-s 4] [--seed 0]
                                        [--faults kill,scheduler,freeze] [--freeze-s 8]

Faults, one every --fault-every-s, drawn from --faults:
  kill       SIGKILL a random worker and start it again with the same flags
  scheduler  SIGKILL the scheduler while a prefill runs (a claim is in prefill), start it again
  freeze     SIGSTOP a random worker for --freeze-s, then SIGCONT (a hung device)
Every fifth request has a ~300-token prompt, so prefills last long enough to be hit.
Reports completed requests, failures by status code, migrations, and what leaked
afterwards: Redis claims and occupancy, and what each worker holds by its own Info
(active requests, held KV bytes, free KV against capacity). Goal: no request lost
without an error, nothing leaked.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import os
import random
import signal
import threading
import time

from glitches import Client, GlitchesError, RetryPolicy
from glitches.cluster import ClusterSpec, LocalCluster
from glitches.services.runtime.channels import insecure_channel
from glitches.services.cluster.registry import Registry
from glitches.services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

PROMPTS = ["Name a color.", "What is 2 + 3?", "Say hello in French.", "List two planets.",
           "Summarise: " + "the quick brown fox jumps over the lazy dog " * 33]  # the last: ~300 tokens
KV_HOLD_TTL_S = 10.0  # the soak cluster's workers free unrenewed KV after this long


def _kill_and_restart(cluster: LocalCluster, name: str) -> None:
    proc = cluster.processes[name]
    proc.kill()
    proc.wait()
    cluster.restart(name)


def _scheduler_kill_during_prefill(cluster: LocalCluster, registry: Registry) -> None:
    deadline = time.monotonic() + 5  # wait (briefly) for a prefill to be under way
    while time.monotonic() < deadline and not any(c.endswith(":prefill") for c in registry.claims()):
        time.sleep(0.02)
    _kill_and_restart(cluster, "scheduler")


def _freeze(cluster: LocalCluster, name: str, freeze_s: float) -> None:
    pid = cluster.processes[name].pid
    os.kill(pid, signal.SIGSTOP)
    time.sleep(freeze_s)
    os.kill(pid, signal.SIGCONT)


def inject_faults(cluster: LocalCluster, registry: Registry, kinds: list[str], every_s: float, freeze_s: float,
                  stop: threading.Event, done: threading.Event, rng: random.Random, log: list):
    """Every `every_s` seconds one fault of a kind drawn from `kinds` (see the module docstring).

    The thread lives until `done`: children get PR_SET_PDEATHSIG, which fires when the
    *thread* that started them ends, so restarted daemons would die with it.
    """
    while not stop.wait(every_s):
        kind = rng.choice(kinds)
        workers = [n for n in cluster.processes if n.startswith(("gpu-", "fpga-"))]
        name = "scheduler" if kind == "scheduler" else rng.choice(workers)
        if kind == "kill":
            _kill_and_restart(cluster, name)
        elif kind == "scheduler":
            _scheduler_kill_during_prefill(cluster, registry)
        else:
            _freeze(cluster, name, freeze_s)
        log.append((time.monotonic(), kind, name))
    done.wait()


def leaks(cluster: LocalCluster, client: Client, registry: Registry, settle_s: float) -> dict:
    """What is still held once every restarted worker is back and expired leases were swept."""
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:
        if registry.claims() == {} and registry.occupancy() == {}:
            break
        time.sleep(0.2)
    held = {}
    for worker in client.status().workers:
        stub = worker_pb2_grpc.WorkerStub(insecure_channel(worker.address))
        deadline = time.monotonic() + KV_HOLD_TTL_S + 5  # KV of requests a killed scheduler ran expires
        while True:
            info = stub.Info(worker_pb2.InfoRequest(), timeout=10)
            if (info.active_requests == 0 and info.kv_held_bytes == 0) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        held[worker.worker_id] = dict(active_requests=info.active_requests, kv_held_bytes=info.kv_held_bytes,
                                      kv_free_bytes=info.kv_free_bytes, kv_capacity_bytes=info.kv_capacity_bytes)
    return dict(claims=len(registry.claims()), occupancy=registry.occupancy(), workers=held)


def main() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # fork() from a gRPC process logs a notice each restart
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fault-every-s", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--faults", default="kill", help="Comma-separated fault kinds: kill, scheduler, freeze.")
    parser.add_argument("--freeze-s", type=float, default=8.0, help="How long a frozen worker stays stopped, s.")
    args = parser.parse_args()
    kinds = [k for k in args.faults.split(",") if k]
    if not kinds or set(kinds) - {"kill", "scheduler", "freeze"}:
        parser.error("--faults takes kill, scheduler and freeze")
    rng = random.Random(args.seed)
    spec = ClusterSpec(gpu_workers=2, fpga_workers=3, port=0, threads_per_worker=1,
                       extra_env={"GLITCHES_KV_HOLD_TTL_S": str(KV_HOLD_TTL_S)},
                       scheduler_args=("--queue-wait-s", "600", "--lease-ttl-s", "3", "--max-migrations", "3"))
    outcomes, migrations, faults, examples = collections.Counter(), collections.Counter(), [], {}
    # a patient client: a killed scheduler takes tens of seconds to load again on a small machine
    retry = RetryPolicy(max_attempts=10, initial_backoff_s=1.0, max_backoff_s=10.0)
    with LocalCluster(spec) as cluster, Client(cluster.address, timeout_s=300, retry=retry) as client:
        registry = Registry(cluster.redis_url, spec.redis_prefix)
        stop, done = threading.Event(), threading.Event()
        injector = threading.Thread(target=inject_faults, args=(cluster, registry, kinds, args.fault_every_s,
                                                                args.freeze_s, stop, done, rng, faults))
        started = time.monotonic()
        injector.start()

        def one(i: int) -> None:
            try:
                result = client.generate(PROMPTS[i % len(PROMPTS)], max_tokens=8, chat=True)
                outcomes["OK"] += 1
                migrations[result.migrations] += 1
            except GlitchesError as error:
                outcomes[error.code] += 1
                examples.setdefault(error.code, error.message)

        with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, range(args.requests)))
        stop.set()
        elapsed = time.monotonic() - started
        cluster.wait_ready(timeout_s=300)  # every restarted worker registered again
        leaked = leaks(cluster, client, registry, settle_s=10)
        done.set()
        injector.join()
    total = sum(outcomes.values())
    by_kind = collections.Counter(kind for _, kind, _ in faults)
    print(f"requests {args.requests}, answered {total} (lost without an answer: {args.requests - total}), "
          f"{elapsed:.0f} s, faults {dict(by_kind)}")
    print(f"outcomes by status: {dict(outcomes)}")
    for code, message in examples.items():
        print(f"  e.g. {code}: {message}")
    print(f"migrations per completed request: {dict(sorted(migrations.items()))}")
    print(f"after the run: claims {leaked['claims']}, occupancy {leaked['occupancy']}")
    for worker_id, held in sorted(leaked["workers"].items()):
        print(f"  {worker_id}: active {held['active_requests']}, KV held {held['kv_held_bytes']} bytes, KV free "
              f"{held['kv_free_bytes']} of {held['kv_capacity_bytes']} bytes")


if __name__ == "__main__":
    main()
