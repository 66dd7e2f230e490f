"""The Redis registry: who is alive, what each worker is, and who holds which slot.

Keys, all under one prefix P (so tests and clusters can share a Redis):
    P:workers           SET   ids of registered workers (an id whose record expired is dropped by workers())
    P:worker:{id}       HASH  the worker's record (WorkerRecord fields); expires DEAD_RECORD_TTL_FACTOR heartbeat
                              TTLs after the last beat: a dead worker is listed unhealthy that long, then nothing
                              of it is left in Redis
    P:alive:{id}        STR   heartbeat; expires after heartbeat_ttl_s unless renewed
    P:active            HASH  id -> requests the worker holds now
    P:claims            HASH  "{request_id}:{role}" -> id; one entry per held slot
    P:lease:{claim}     STR   the claim's lease; expires after lease_ttl_s unless renewed
    P:held:{id}         SET   hex chain hashes (kv_plane/prefix_index.py) of the KV blocks the worker holds
                              as reusable cache; expires with P:alive:{id} (each beat renews both)

Occupancy changes only through the Lua scripts below, so concurrent schedulers
never over-fill a worker and a release is counted once however often it is called.
Every claim is a lease: the scheduler running the request renews it; when that
scheduler dies, the lease expires and the next sweep (by any scheduler or any
worker's heartbeat) releases the slot.

The client comes from glitches/services/cluster/redis_connect.py (one Redis, or a primary found through
Sentinel), whose retries may run a command twice when a reply was lost (a failover, a
timeout). So every command here is idempotent: register/deregister/renew write the same
values again; reads are reads; release and sweep find nothing left to undo the second time;
a claim finds its own field already held and returns where it is held, instead of claiming
twice (claim fields are unique per attempt: "{request_id}:{role}", see glitches/scheduler/orchestrator.py).
A script that meets a demoted primary (its writes fail READONLY inside Lua, which redis-py does
not see as a failover) is retried here after dropping the pooled connections.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import redis
from redis.exceptions import ReadOnlyError, ResponseError

from glitches.services.runtime.errors import Unavailable
from glitches.services.cluster.redis_connect import connect, retry_policy
from glitches.services.cluster.worker_caps import Capabilities, SkipLog, capabilities_of

log = logging.getLogger(__name__)
DEAD_RECORD_TTL_FACTOR = 10  # a dead worker's record outlives its heartbeat this many TTLs (status shows it dead)

# Claim the first candidate that is alive and below its slot count.
# ARGV: prefix, claim field, lease ms, candidate ids...   Returns the claimed id or false.
# Idempotent: a claim already held (this same call, retried after its reply was lost) returns its holder.
_CLAIM_FIRST_FREE = """
local prefix, field, lease_ms = ARGV[1], ARGV[2], ARGV[3]
local holder = redis.call('HGET', prefix .. ':claims', field)
if holder then return holder end
for i = 4, #ARGV do
  local id = ARGV[i]
  if redis.call('EXISTS', prefix .. ':alive:' .. id) == 1 then
    local slots = tonumber(redis.call('HGET', prefix .. ':worker:' .. id, 'slots') or '0')
    local active = tonumber(redis.call('HGET', prefix .. ':active', id) or '0')
    if active < slots then
      redis.call('HINCRBY', prefix .. ':active', id, 1)
      redis.call('HSET', prefix .. ':claims', field, id)
      redis.call('SET', prefix .. ':lease:' .. field, id, 'PX', lease_ms)
      return id
    end
  end
end
return false
"""

# Count a request on a worker regardless of slots (GPU prefill queues on the device).
# ARGV: prefix, claim field, lease ms, worker id.   Idempotent like _CLAIM_FIRST_FREE: held on this
# worker already, it returns the id; held on another one, it is an error (a caller's bug).
_CLAIM_ALIVE = """
local prefix, field, lease_ms, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local holder = redis.call('HGET', prefix .. ':claims', field)
if holder == id then return id end
if holder then
  return redis.error_reply('claim ' .. field .. ' is already held on ' .. holder)
end
if redis.call('EXISTS', prefix .. ':alive:' .. id) == 0 then return false end
redis.call('HINCRBY', prefix .. ':active', id, 1)
redis.call('HSET', prefix .. ':claims', field, id)
redis.call('SET', prefix .. ':lease:' .. field, id, 'PX', lease_ms)
return id
"""

# Release a claim once. ARGV: prefix, claim field. Returns the id it was held on, or false.
_RELEASE = """
local prefix, field = ARGV[1], ARGV[2]
local id = redis.call('HGET', prefix .. ':claims', field)
if not id then return false end
redis.call('HDEL', prefix .. ':claims', field)
redis.call('DEL', prefix .. ':lease:' .. field)
if redis.call('HINCRBY', prefix .. ':active', id, -1) <= 0 then
  redis.call('HDEL', prefix .. ':active', id)
end
return id
"""

# Release every claim whose lease has expired. ARGV: prefix. Returns the released claim fields.
_SWEEP_EXPIRED = """
local prefix = ARGV[1]
local claims = redis.call('HGETALL', prefix .. ':claims')
local released = {}
for i = 1, #claims, 2 do
  local field, id = claims[i], claims[i + 1]
  if redis.call('EXISTS', prefix .. ':lease:' .. field) == 0 then
    redis.call('HDEL', prefix .. ':claims', field)
    if redis.call('HINCRBY', prefix .. ':active', id, -1) <= 0 then
      redis.call('HDEL', prefix .. ':active', id)
    end
    released[#released + 1] = field
  end
end
return released
"""

# Drop from P:workers the ids whose record has expired (and was not written again since). ARGV: prefix, ids...
_DROP_EXPIRED = """
local prefix = ARGV[1]
for i = 2, #ARGV do
  if redis.call('EXISTS', prefix .. ':worker:' .. ARGV[i]) == 0 then
    redis.call('SREM', prefix .. ':workers', ARGV[i])
  end
end
return 0
"""


class _ScriptReadOnly(ReadOnlyError):
    """A script's write refused READONLY (redis-py reports it as a plain ResponseError)."""


_FIELD_PARSERS = {"int": int, int: int, "float": float, float: float}  # a record field's type -> its parser


@dataclass
class WorkerRecord:
    """What a worker publishes about itself (strings, ints and floats only: it is a Redis hash).

    `kind` is a free-form name; what the worker can do is in `roles` and `decode_class`
    (glitches/services/cluster/worker_caps.py), with slots, KV geometry, free KV and the KV transports.
    """

    worker_id: str
    kind: str  # free-form: "gpu", "fpga", or another device package's name
    backend: str  # "cuda", "cpu", "emu", "xrt"
    emulated: int  # 1 when no real accelerator is behind it
    device_name: str
    address: str  # gRPC host:port
    pid: int
    model: str
    slots: int
    kv_capacity_bytes: int
    kv_free_bytes: int
    kv_bytes_per_token: int
    http_address: str = ""
    kv_granularity_tokens: int = 1  # a reservation of n tokens takes KV for n rounded up to a multiple of this
    kv_block_bytes: int = 0  # bytes of one KV block (FPGA: 16 tokens of one layer/head/K-or-V lane; GPU: 16 tokens, all layers, K and V)
    kv_free_blocks: int = 0  # free KV blocks on the device (kv_free_bytes // kv_block_bytes)
    kv_tokens_required: int = 0  # 1 when the worker accepts KV only with a scheduler-issued token
    kv_transports: str = ""  # comma-separated, best first: FPGA workers what they accept, GPU workers what they send
    host_identity: str = ""  # kv_plane.host_identity: transport shm needs the sender's to be equal
    shm_segment: str = ""  # the card's HBM segment on that host (transport shm), "" without one
    nixl_agent: str = ""  # the worker's NIXL agent name (transport nixl), "" without one
    worker_active_requests: int = 0  # requests the worker itself holds KV for (its Info), whatever the claims say
    kv_held_bytes: int = 0  # KV bytes it holds for requests
    kv_cached_bytes: int = 0  # KV bytes it keeps as evictable cache (prefix cache / kept regions)
    expiring_requests: int = 0  # held requests not decoding: freed unless renewed (glitches/services/cluster/kv_holds.py)
    assist_active: int = 0  # GPU workers: GPU-assist requests held now (at most `slots`)
    roles: str = ""  # comma-separated, services.worker_caps.ROLES; "" (an older worker): its built-in kind's
    decode_class: int = 0  # with the decode role: preference, lower first (worker_caps.DECODE_CLASS_*); else 0
    prefill_tokens_per_s: float = 0.0  # measured prefill speed (its Info), tokens/s; 0: not measured yet
    prefill_overhead_s: float = 0.0  # measured fixed seconds per prefill pass (its Info); 0: none measured
    decode_step_s: float = 0.0  # measured seconds per decode step (cards, its Info); 0: not measured yet

    @property
    def capabilities(self) -> Capabilities:
        return capabilities_of(self.kind, self.roles, self.decode_class)

    @classmethod
    def from_hash(cls, raw: dict[bytes, bytes]) -> WorkerRecord:
        """The record of a registry hash; ValueError, TypeError or UnicodeDecodeError for a malformed one."""
        values = {k.decode(): v.decode() for k, v in raw.items()}
        kwargs = {}
        for f in fields(cls):
            if f.name in values:
                kwargs[f.name] = _FIELD_PARSERS.get(f.type, str)(values[f.name])
        return cls(**kwargs)


@dataclass(frozen=True)
class WorkerState:
    record: WorkerRecord
    healthy: bool  # heartbeat key alive
    active: int  # requests counted on it


class Registry:
    """Typed access to the registry keys; one instance per daemon."""

    def __init__(self, url: str, prefix: str = "glitches", heartbeat_ttl_s: float = 3.0, lease_ttl_s: float = 5.0):
        self.prefix = prefix
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.lease_ttl_s = lease_ttl_s
        self.link = connect(url)  # InvalidArgument for a bad URL
        self.redis = self.link.client
        # a Lua write on a demoted primary: drop the connections, ask again (redis_connect's window)
        self._script_retry = retry_policy(self.link.retry_s, errors=(_ScriptReadOnly,))
        self._claim_first_free = self.redis.register_script(_CLAIM_FIRST_FREE)
        self._claim_alive = self.redis.register_script(_CLAIM_ALIVE)
        self._release = self.redis.register_script(_RELEASE)
        self._sweep_expired = self.redis.register_script(_SWEEP_EXPIRED)
        self._drop_expired = self.redis.register_script(_DROP_EXPIRED)
        self._malformed = SkipLog(log, "malformed registry record")

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def _call(self, what: str, fn: Callable):
        def attempt():
            try:
                return fn()
            except ResponseError as error:
                if "-READONLY" in str(error) and not isinstance(error, ReadOnlyError):
                    raise _ScriptReadOnly(str(error)) from error
                raise

        try:
            return self._script_retry.call_with_retry(attempt, lambda error: self.link.reconnect())
        except redis.exceptions.ConnectionError as error:
            raise Unavailable(f"Redis is unreachable ({what}): {error}") from error
        except redis.exceptions.TimeoutError as error:
            raise Unavailable(f"Redis timed out ({what}): {error}") from error
        except ReadOnlyError as error:
            raise Unavailable(f"Redis answers read-only ({what}): a replica, not the primary; {error}") from error

    def redis_primary(self) -> str:
        """host:port of the Redis primary in use now; raises Unavailable when no sentinel names one."""
        return self._call("find the primary", self.link.primary)

    def close(self) -> None:
        self.link.close()

    # --- worker side -------------------------------------------------------
    def register(self, record: WorkerRecord) -> None:
        """Publish the record and renew the heartbeat (idempotent; called every beat)."""
        def write():
            pipe = self.redis.pipeline()
            pipe.hset(self._key("worker", record.worker_id), mapping={k: str(v) for k, v in asdict(record).items()})
            pipe.pexpire(self._key("worker", record.worker_id), self._record_ttl_ms)
            pipe.sadd(self._key("workers"), record.worker_id)
            pipe.set(self._key("alive", record.worker_id), "1", px=int(self.heartbeat_ttl_s * 1000))
            pipe.pexpire(self._key("held", record.worker_id), self._held_ttl_ms)  # no-op without the key
            pipe.execute()
        self._call("register", write)

    def deregister(self, worker_id: str) -> None:
        def delete():
            pipe = self.redis.pipeline()
            pipe.srem(self._key("workers"), worker_id)
            pipe.delete(self._key("worker", worker_id), self._key("alive", worker_id),
                        self._key("held", worker_id))
            pipe.execute()
        self._call("deregister", delete)

    @property
    def _record_ttl_ms(self) -> int:
        return int(self.heartbeat_ttl_s * 1000 * DEAD_RECORD_TTL_FACTOR)

    @property
    def _held_ttl_ms(self) -> int:
        return int(self.heartbeat_ttl_s * 1000)

    def publish_held(self, worker_id: str, added: list[bytes], removed: list[bytes]) -> None:
        """Record chain hashes the worker now holds (`added`) and no longer holds (`removed`).

        P:held:{id} is a SET of hex hashes; it expires with the heartbeat (register renews it),
        so a dead worker's hints vanish with its liveness. Idempotent: SADD/SREM of the same
        members again changes nothing. A hash in both lists ends up removed (removals run last).
        """
        if not added and not removed:
            return
        key = self._key("held", worker_id)

        def write():
            pipe = self.redis.pipeline()
            if added:
                pipe.sadd(key, *(h.hex() for h in added))
            if removed:
                pipe.srem(key, *(h.hex() for h in removed))
            pipe.pexpire(key, self._held_ttl_ms)
            pipe.execute()
        self._call("publish held KV", write)

    def clear_held(self, worker_id: str) -> None:
        """Forget everything the worker published as held (a restarted worker holds nothing yet)."""
        self._call("clear held KV", lambda: self.redis.delete(self._key("held", worker_id)))

    def held_overlap(self, worker_ids: list[str], hashes: list[bytes]) -> dict[str, int]:
        """worker id -> how many leading entries of `hashes` (a chain, first block first) it holds.

        0 for a worker that holds none of the first, publishes nothing, or is not alive. A hint
        only: the worker verifies token ids before it reuses anything. One pipelined round trip
        (EXISTS alive + SMISMEMBER per worker).
        """
        if not worker_ids:
            return {}
        if not hashes:
            return {worker_id: 0 for worker_id in worker_ids}
        members = [h.hex() for h in hashes]

        def read():
            pipe = self.redis.pipeline()
            for worker_id in worker_ids:
                pipe.exists(self._key("alive", worker_id))
                pipe.smismember(self._key("held", worker_id), members)
            return pipe.execute(raise_on_error=False)

        results = self._call("read held KV", read)
        overlap = {}
        for i, worker_id in enumerate(worker_ids):
            alive, flags = results[2 * i], results[2 * i + 1]
            count = 0
            if alive and not isinstance(alive, Exception) and not isinstance(flags, Exception):
                for flag in flags:
                    if not flag:
                        break
                    count += 1
            overlap[worker_id] = count
        return overlap

    def is_registered(self, worker_id: str) -> bool:
        """The worker's record is published and its heartbeat is alive."""
        def check():
            pipe = self.redis.pipeline()
            pipe.exists(self._key("worker", worker_id))
            pipe.exists(self._key("alive", worker_id))
            return all(pipe.execute())
        return self._call("check registration", check)

    def ping(self) -> None:
        """Raises Unavailable when Redis does not answer."""
        self._call("ping", self.redis.ping)

    # --- scheduler side ----------------------------------------------------
    def workers(self) -> list[WorkerState]:
        """Every registered worker with liveness and occupancy, sorted by id."""
        def read():
            ids = sorted(i.decode() for i in self.redis.smembers(self._key("workers")))
            if not ids:
                return []
            pipe = self.redis.pipeline()
            for worker_id in ids:
                pipe.hgetall(self._key("worker", worker_id))
                pipe.exists(self._key("alive", worker_id))
            pipe.hgetall(self._key("active"))
            results = pipe.execute(raise_on_error=False)  # a key of the wrong type fails its command only
            active = self._active_counts(results[-1])
            states, expired = [], []
            for i, worker_id in enumerate(ids):
                raw, alive = results[2 * i], results[2 * i + 1]
                if not raw:
                    expired.append(worker_id)
                    continue
                try:
                    if isinstance(raw, Exception):  # e.g. WRONGTYPE: a string where the hash should be
                        raise ValueError(str(raw))
                    record = WorkerRecord.from_hash(raw)
                except (ValueError, TypeError, UnicodeDecodeError) as error:  # a stray or half-written record
                    self._malformed.skip(worker_id, str(error))
                    continue
                self._malformed.usable(worker_id)
                states.append(WorkerState(record, alive is True or alive == 1, active.get(worker_id, 0)))
            if expired:  # dead long enough that the record expired: its id goes too, unless it registered since
                try:
                    self._drop_expired(args=[self.prefix, *expired])
                except redis.exceptions.RedisError as error:  # a cleanup only: the next listing tries again
                    log.debug("could not drop expired worker ids %s: %s", expired, error)
            return states
        return self._call("list workers", read)

    def _active_counts(self, raw) -> dict[str, int]:
        """P:active as id -> count; a malformed entry (or hash) counts as 0, logged once."""
        if isinstance(raw, Exception):
            self._malformed.skip("P:active", str(raw))
            return {}
        counts = {}
        for key, value in raw.items():
            try:
                counts[key.decode()] = int(value)
            except (ValueError, UnicodeDecodeError) as error:
                self._malformed.skip(f"P:active[{key!r}]", str(error))
        return counts

    def claim_first_free(self, request_id: str, role: str, candidates: list[str]) -> str | None:
        """Atomically take a slot on the first alive candidate below its slot count."""
        if not candidates:
            return None
        field = f"{request_id}:{role}"
        result = self._call("claim", lambda: self._claim_first_free(
            args=[self.prefix, field, self._lease_ms, *candidates]))
        return result.decode() if result else None

    def claim_alive(self, request_id: str, role: str, worker_id: str) -> bool:
        """Count a request on a worker that has no slot limit for this role (GPU prefill)."""
        field = f"{request_id}:{role}"
        return bool(self._call("claim", lambda: self._claim_alive(args=[self.prefix, field, self._lease_ms,
                                                                          worker_id])))

    @property
    def _lease_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)

    def renew(self, request_id: str, roles: tuple[str, ...] = ("prefill", "decode")) -> None:
        """Extend the leases of a running request's claims (a released claim is not revived)."""
        def extend():
            pipe = self.redis.pipeline()
            for role in roles:
                pipe.pexpire(self._key("lease", f"{request_id}:{role}"), self._lease_ms)
            pipe.execute()
        self._call("renew", extend)

    def sweep_expired(self) -> list[str]:
        """Release the claims whose leases expired (their scheduler died); returns the claim fields."""
        result = self._call("sweep", lambda: self._sweep_expired(args=[self.prefix]))
        return [f.decode() for f in result]

    def release(self, request_id: str, role: str) -> str | None:
        """Give back a claim; safe to call more than once."""
        result = self._call("release", lambda: self._release(args=[self.prefix, f"{request_id}:{role}"]))
        return result.decode() if result else None

    def occupancy(self) -> dict[str, int]:
        """id -> requests held now (workers holding none are absent)."""
        raw = self._call("occupancy", lambda: self.redis.hgetall(self._key("active")))
        return {k.decode(): int(v) for k, v in raw.items()}

    def claims(self) -> dict[str, str]:
        raw = self._call("claims", lambda: self.redis.hgetall(self._key("claims")))
        return {k.decode(): v.decode() for k, v in raw.items()}


class Heartbeat:
    """Re-registers a worker every interval until stopped; survives Redis outages by retrying."""

    def __init__(self, registry: Registry, record_fn: Callable[[], WorkerRecord], interval_s: float = 1.0):
        self._registry = registry
        self._record_fn = record_fn
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._wake = threading.Event()  # poke(): publish now instead of at the next interval
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._registry.register(self._record_fn())  # fail fast at start-up if Redis is unreachable
        self._thread.start()

    def beat_now(self) -> None:
        try:
            self._registry.register(self._record_fn())
            # any live daemon frees the slots of schedulers that died mid-request
            for claim in self._registry.sweep_expired():
                log.warning("released claim %s: its lease expired", claim)
        except Unavailable as error:
            if not self._failing:
                log.warning("heartbeat failed, will retry: %s", error)
            self._failing = True
        else:
            if self._failing:
                log.info("heartbeat restored")
            self._failing = False

    def poke(self) -> None:
        """Re-publish the record soon (from the heartbeat thread), e.g. after the KV free space changed."""
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            self.beat_now()

    def stop(self, deregister: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if deregister:
            try:
                self._registry.deregister(self._record_fn().worker_id)
            except Unavailable as error:
                log.warning("could not deregister: %s", error)
