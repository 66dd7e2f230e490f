"""What a worker can do, as its registry record and Info say it: the vocabulary placement works from.

A worker's kind is a free-form name ("gpu", "fpga", or any other a device package chooses); the
scheduler never branches on it. It works from the worker's roles and its decode preference class:

    prefill   runs prefill over the prompt and streams the KV to a decode target
    decode    accepts KV from another worker's prefill (through one of its kv_transports) and decodes it
    assist    decodes the requests it prefilled itself, the KV staying where it is (GPU assist)

A GPU worker today is prefill + assist, an FPGA worker is decode. Among the workers with the decode
role, placement prefers the lowest decode class (DECODE_CLASS_*; the paper's choice, a dedicated decode
device, comes first), and falls back to GPU assist when none has room.

Records published before these fields existed carry no roles: BUILTIN_CAPABILITIES gives the two
built-in kinds theirs. A record of another kind without roles says nothing placement can use, and
`unusable_reason` names what is wrong with it so the scheduler can skip it (and log it once).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLE_PREFILL = "prefill"
ROLE_DECODE = "decode"
ROLE_ASSIST = "assist"
ROLES = (ROLE_PREFILL, ROLE_DECODE, ROLE_ASSIST)

# Decode preference classes, lower first; 0 = "no decode role" (proto3's unset value).
DECODE_CLASS_DEDICATED = 10  # a decode device with its own memory for KV (the paper's FPGA)
DECODE_CLASS_GPU = 20  # a GPU decoding KV that another worker's prefill sent it


@dataclass(frozen=True)
class Capabilities:
    roles: frozenset[str]
    decode_class: int = 0  # DECODE_CLASS_*, with ROLE_DECODE; 0 otherwise


BUILTIN_CAPABILITIES = {
    "gpu": Capabilities(frozenset({ROLE_PREFILL, ROLE_ASSIST})),
    "fpga": Capabilities(frozenset({ROLE_DECODE}), DECODE_CLASS_DEDICATED),
}


def parse_roles(text: str) -> frozenset[str]:
    """A comma-separated role list ("prefill,assist") as a set; names this scheduler does not know are dropped
    (a newer worker may have more), so a record with only unknown ones has no roles."""
    return frozenset(r.strip() for r in text.split(",") if r.strip() in ROLES)


def ordered_roles(roles) -> list[str]:
    """A role set in ROLES order (for the wire and for records)."""
    return [r for r in ROLES if r in roles]


def capabilities_of(kind: str, roles_text: str, decode_class: int) -> Capabilities:
    """The capabilities a record states, or for a record without roles those of its built-in kind (none for others)."""
    roles = parse_roles(roles_text)
    if not roles_text and kind in BUILTIN_CAPABILITIES:
        return BUILTIN_CAPABILITIES[kind]
    return Capabilities(roles, decode_class)


def unusable_reason(record) -> str:
    """Why placement cannot use a registry record (services.registry.WorkerRecord), "" when it can."""
    caps = record.capabilities
    if not record.kind:
        return "it names no kind"
    if not record.address:
        return "it has no address"
    if not caps.roles:
        return (f"kind {record.kind!r} publishes no roles this scheduler knows (one of {', '.join(ROLES)}); "
                "its worker must say what it can do")
    if ROLE_DECODE in caps.roles and caps.decode_class <= 0:
        return f"it has the decode role but decode class {caps.decode_class} (must be > 0)"
    if record.kv_granularity_tokens < 1:
        return f"kv_granularity_tokens is {record.kv_granularity_tokens} (must be >= 1)"
    negative = [name for name in ("slots", "kv_free_bytes", "kv_bytes_per_token", "assist_active")
                if getattr(record, name) < 0]
    if negative:
        return f"{', '.join(negative)} negative"
    return ""


class SkipLog:
    """Logs a skipped worker record once per worker id and reason, not on every registry read."""

    def __init__(self, logger, what: str):
        self._logger = logger
        self._what = what
        self._reported: dict[str, str] = {}  # worker id -> reason last logged

    def skip(self, worker_id: str, reason: str) -> None:
        if self._reported.get(worker_id) != reason:
            self._reported[worker_id] = reason
            self._logger.warning("skipping %s %s: %s", self._what, worker_id, reason)

    def usable(self, worker_id: str) -> None:
        """The worker's record is fine again: a later fault is logged afresh."""
        self._reported.pop(worker_id, None)
