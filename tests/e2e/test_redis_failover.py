"""The Redis primary dies under load and no request is lost (issue #14 item 6), with real processes:
`glitches.cluster` with `redis_sentinels=3` (a primary, one replica, three sentinels, down-after 1 s; the
daemons get a redis+sentinel:// URL), a scheduler, one GPU worker and two emulated FPGA cards.

Greedy streaming requests run at once; once several are decoding, the primary is SIGKILLed, and more
requests arrive during the failover. Every request must finish with the tokens transformers' greedy
decode gives for its prompt (tests/greedy_reference.py: exact, or parting only at a near-tie), the
sentinels must promote the replica (Status and `glitches status` name it), no card may hold more
requests than its slots at any time (what the workers say they hold, sampled throughout), requests
after the failover succeed, and the registry drains back to no claims on the new primary."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from glitches import Client, Completion, TextChunk
from glitches.cluster import SENTINEL_LEASE_TTL_S, SENTINEL_SERVICE, ClusterSpec, LocalCluster
from glitches.services.cluster.registry import Registry
from tests.e2e.conftest import assert_idle
from tests.greedy_reference import compare, greedy

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # its own cluster with five Redis processes, and a failover

MAX_TOKENS = 24  # the kill lands at 2-3 tokens: most of each decode runs across and after the failover
FPGA_SLOTS = 2
PROMPTS = ["The history of the river began", "Write a short note about bread:", "Seven facts about owls:",
           "Dear diary, today the weather", "A recipe for tomato soup:", "The rules of chess are"]


@pytest.fixture(scope="module")
def sentinel_cluster():
    spec = ClusterSpec(gpu_workers=1, fpga_workers=2, port=0, threads_per_worker=1, fpga_slots=FPGA_SLOTS,
                       gpu_slots=4, redis_sentinels=3, scheduler_args=("--queue-wait-s", "300"))
    cluster = LocalCluster(spec)
    try:
        cluster.start()
        cluster.wait_ready()
        with Client(cluster.address, timeout_s=600) as client:
            yield cluster, client
    finally:
        pids = [p.pid for p in cluster.processes.values()]
        cluster.stop()
        time.sleep(0.2)
        left = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert left == [], f"processes left behind: {left}"


class _Stream(threading.Thread):
    """One greedy streaming request, read to its end in its own thread."""

    def __init__(self, address: str, prompt: str):
        super().__init__()
        self.address, self.prompt = address, prompt
        self.tokens: list[int] = []
        self.final: Completion | None = None
        self.error: Exception | None = None
        self.started = time.monotonic()

    def run(self) -> None:
        try:
            with Client(self.address, timeout_s=600) as client:
                for item in client.stream(self.prompt, max_tokens=MAX_TOKENS, ignore_eos=True):
                    if isinstance(item, TextChunk):
                        self.tokens.extend(item.token_ids)
                    else:
                        self.final = item
        except Exception as error:  # noqa: BLE001 -- asserted on below
            self.error = error


class _CardWatch(threading.Thread):
    """The most requests each FPGA worker said it held (Status: its own Info, whatever Redis says)."""

    def __init__(self, address: str):
        super().__init__(daemon=True)
        self.address = address
        self.most: dict[str, int] = {}
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with Client(self.address, timeout_s=30) as client:
            while not self.stop.is_set():
                try:
                    for w in client.status().workers:
                        if w.kind == "fpga":
                            self.most[w.worker_id] = max(self.most.get(w.worker_id, 0), w.worker_active_requests)
                    self.samples += 1
                except Exception:  # noqa: BLE001 -- Status waits out the failover like everything else
                    pass
                time.sleep(0.25)


def _check(streams: list[_Stream], reference, references: dict) -> list[str]:
    verdicts = []
    for s in streams:
        assert s.error is None, f"{s.prompt!r} failed: {s.error}"
        assert s.final is not None and list(s.final.token_ids) == s.tokens and len(s.tokens) == MAX_TOKENS
        key = tuple(s.final.prompt_token_ids)
        if key not in references:
            references[key] = greedy(reference["model"], list(key), MAX_TOKENS)
        verdicts.append(compare(s.tokens, references[key], reference["tolerance"]))
    return verdicts


def test_the_primarys_death_under_load_loses_no_request(sentinel_cluster, reference):
    cluster, client = sentinel_cluster
    primary = f"127.0.0.1:{cluster.redis_nodes['redis']}"
    replica = f"127.0.0.1:{cluster.redis_nodes['redis-replica']}"
    before = client.status().redis
    assert before.primary == primary and before.sentinel_service == SENTINEL_SERVICE and len(before.sentinels) == 3

    watch = _CardWatch(cluster.address)
    watch.start()
    in_flight = [_Stream(cluster.address, p) for p in PROMPTS]
    for s in in_flight:
        s.start()
    deadline = time.monotonic() + 300
    while sum(len(s.tokens) >= 3 for s in in_flight) < 3:  # several are decoding: kill mid-load
        assert time.monotonic() < deadline, "the load never got going"
        assert all(s.error is None for s in in_flight), [s.error for s in in_flight]
        time.sleep(0.02)
    tokens_at_kill = sorted(len(s.tokens) for s in in_flight)
    cluster.processes["redis"].send_signal(signal.SIGKILL)
    killed = time.monotonic()
    during = [_Stream(cluster.address, p) for p in PROMPTS[:3]]  # arriving while there is no primary
    for s in during:
        s.start()
    for s in in_flight + during:
        s.join(timeout=600)
    finished_s = time.monotonic() - killed

    references: dict = {}
    checked = time.monotonic()
    verdicts = _check(in_flight + during, reference, references)
    reference_s = time.monotonic() - checked
    promoted = client.status().redis
    assert promoted.primary == replica and cluster.redis_primary() == replica  # the sentinels promoted it
    shown = subprocess.run([sys.executable, "-m", "glitches", "status", "--address", cluster.address],
                           capture_output=True, text=True, timeout=60)
    assert f"redis primary {replica} (sentinel service {SENTINEL_SERVICE} via" in shown.stdout

    after = [_Stream(cluster.address, p) for p in PROMPTS[3:5]]
    for s in after:
        s.start()
    for s in after:
        s.join(timeout=600)
    verdicts += _check(after, reference, references)
    watch.stop.set()
    watch.join(timeout=60)
    assert watch.samples > 0 and all(n <= FPGA_SLOTS for n in watch.most.values()), watch.most
    migrations = [s.final.migrations for s in in_flight + during + after]
    # released or, if a release reached only the dead primary, swept once its lease expires
    assert_idle(Registry(cluster.redis_url, cluster.spec.redis_prefix), timeout_s=SENTINEL_LEASE_TTL_S + 5)
    print(f"\ntokens per in-flight request at the kill: {tokens_at_kill}; all {len(in_flight) + len(during)} "
          f"requests done {finished_s:.1f} s after it; verdicts {verdicts}; migrations {migrations}; "
          f"most held per card {watch.most} over {watch.samples} samples; greedy references took {reference_s:.0f} s")
