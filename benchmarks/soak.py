"""Soak: many requests while workers are killed (SIGKILL) and restarted at random.

    .venv/bin/python -m benchmarks.soak [--requests 1000] [--concurrency 8] [--fault-every-s 4] [--seed 0]

Reports completed requests, failures by status code, migrations, and what leaked
afterwards: Redis claims and occupancy, and KV held on each FPGA worker (Info's
active requests and free KV against capacity). Goal: no request lost without an
error, nothing leaked.
"""

from __future__ import annotations

import argparse
import collections
import os
import concurrent.futures
import random
import threading
import time

from glitches import Client, GlitchesError
from glitches.cluster import ClusterSpec, LocalCluster
from services.channels import insecure_channel
from services.registry import Registry
from services.stubs.glitches.v1 import worker_pb2, worker_pb2_grpc

PROMPTS = ["Name a color.", "What is 2 + 3?", "Say hello in French.", "List two planets.", "Name a fruit."]


def inject_faults(cluster: LocalCluster, every_s: float, stop: threading.Event, done: threading.Event,
                  rng: random.Random, log: list):
    """Every `every_s` seconds SIGKILL one random worker and start it again with the same flags.

    The thread lives until `done`: children get PR_SET_PDEATHSIG, which fires when the
    *thread* that started them ends, so restarted workers would die with it.
    """
    while not stop.wait(every_s):
        name = rng.choice([n for n in cluster.processes if n.startswith(("gpu-", "fpga-"))])
        proc = cluster.processes[name]
        argv = proc.command
        proc.kill()
        proc.wait()
        cluster._spawn(name, list(argv), env=cluster.daemon_env)
        log.append((time.monotonic(), name))
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
        info = worker_pb2_grpc.WorkerStub(insecure_channel(worker.address)).Info(worker_pb2.InfoRequest(), timeout=10)
        held[worker.worker_id] = dict(active_requests=info.active_requests,
                                      kv_free_bytes=info.kv_free_bytes, kv_capacity_bytes=info.kv_capacity_bytes)
    return dict(claims=len(registry.claims()), occupancy=registry.occupancy(), workers=held)


def main() -> None:
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")  # fork() from a gRPC process logs a notice each restart
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--fault-every-s", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    spec = ClusterSpec(gpu_workers=2, fpga_workers=3, port=0, threads_per_worker=1,
                       scheduler_args=("--queue-wait-s", "600", "--lease-ttl-s", "3", "--max-migrations", "3"))
    outcomes, migrations, faults, examples = collections.Counter(), collections.Counter(), [], {}
    with LocalCluster(spec) as cluster, Client(cluster.address, timeout_s=120) as client:
        registry = Registry(cluster.redis_url, spec.redis_prefix)
        stop, done = threading.Event(), threading.Event()
        injector = threading.Thread(target=inject_faults,
                                    args=(cluster, args.fault_every_s, stop, done, rng, faults))
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
    print(f"requests {args.requests}, answered {total} (lost without an answer: {args.requests - total}), "
          f"{elapsed:.0f} s, {len(faults)} worker kills+restarts")
    print(f"outcomes by status: {dict(outcomes)}")
    for code, message in examples.items():
        print(f"  e.g. {code}: {message}")
    print(f"migrations per completed request: {dict(sorted(migrations.items()))}")
    print(f"after the run: claims {leaked['claims']}, occupancy {leaked['occupancy']}")
    for worker_id, held in sorted(leaked["workers"].items()):
        print(f"  {worker_id}: active {held['active_requests']}, KV free {held['kv_free_bytes']} of "
              f"{held['kv_capacity_bytes']} bytes")


if __name__ == "__main__":
    main()
