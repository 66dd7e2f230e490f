"""The one place that turns a registry URL into a redis-py client (every daemon, `glitches up`, the tools).

Two URL forms:

    redis://[[user]:password@]host:port[/db]     one Redis (also rediss:// and unix://), parsed by
                                                 redis-py's own from_url, query options included
    redis+sentinel://[[user]:password@]host1:port1[,host2:port2...]/service[/db][?options]
                                                 a primary found through Redis Sentinel (redis.sentinel)

In the sentinel form the hosts are the sentinels (port 26379 when left out; IPv6 as [::1]:26379),
`service` is the name the sentinels monitor (`sentinel monitor <service> ...`), `db` the database
number (0). The user and password are the primary's (and its replicas', which a failover promotes).
Options (the only ones taken; anything else is an error):
    sentinel_username, sentinel_password   what the sentinels themselves require (their `requirepass`),
                                           if anything; unset, the sentinels are asked without AUTH
    retry_s                                how long a command keeps retrying while no primary answers,
                                           seconds (default 10): set it above the sentinels'
                                           down-after-milliseconds + the failover's own time
Percent-encode reserved characters in passwords (`%40` for @), as in any URL.

Retries (redis-py's Retry on every connection): ConnectionError, TimeoutError and ReadOnlyError are retried
with equal-jitter exponential backoff (50 ms doubling, capped at 0.5 s) for about retry_s (sentinel form)
or 0.5 s (one Redis: a blip; an outage fails fast, as before). A retried command may already have run once,
so every command the registry sends must be idempotent; glitches/services/cluster/registry.py says how each one is. With
sentinels every (re)connect asks the sentinels for the primary first (RediscoveringConnection), so a retry
after a failover reaches the new one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

import redis
from redis.backoff import EqualJitterBackoff, NoBackoff
from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection

from glitches.services.runtime.errors import InvalidArgument

SENTINEL_SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_SENTINEL_RETRY_S = 10.0  # the sentinel form's retry window, seconds
SINGLE_RETRY_S = 0.5  # one Redis: a blip; an outage still fails a call within about a second
MAX_RETRY_S = 600.0
SOCKET_TIMEOUT_S = 2.0  # each command to the primary, and each connect
SENTINEL_SOCKET_TIMEOUT_S = 0.5  # each question to one sentinel (a dead one costs this much, then the next)
BACKOFF_BASE_S, BACKOFF_CAP_S = 0.05, 0.5
_OPTIONS = ("sentinel_username", "sentinel_password", "retry_s")
_URL_FORMS = ("redis://[[user]:password@]host:port[/db], rediss://..., unix://... or "
              "redis+sentinel://[[user]:password@]host1:port1,host2:port2/<service>[/db]")
_HOST_PORT = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]/@,]+))(?::(?P<port>[^:]*))?$")


@dataclass(frozen=True)
class SentinelTarget:
    """A parsed redis+sentinel:// URL."""

    sentinels: tuple[tuple[str, int], ...]  # (host, port) of each sentinel, as given
    service: str  # the monitored primary's name
    db: int = 0
    username: str | None = None  # the primary's ACL user (None: the default user)
    password: str | None = field(default=None, repr=False)  # the primary's password
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    retry_s: float = DEFAULT_SENTINEL_RETRY_S


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(SENTINEL_SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelTarget:
    """Parse the sentinel form; InvalidArgument naming what is wrong and the form expected."""
    def bad(why: str) -> InvalidArgument:
        return InvalidArgument(f"bad Redis URL {redact(url)!r}: {why}; expected {_URL_FORMS}")

    if not is_sentinel_url(url):
        raise bad(f"the scheme must be {SENTINEL_SCHEME}://")
    rest = url.strip()[len(SENTINEL_SCHEME) + 3:]
    netloc, _, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    if "#" in query or "#" in path:
        raise bad("a fragment (#...) is not allowed")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if password is None and username is not None:
            raise bad("give the password as :password@ or user:password@ (a user without one is not supported)")
    sentinels = []
    for part in hosts.split(","):
        match = _HOST_PORT.match(part.strip())
        if not part.strip() or not match:
            raise bad(f"sentinel address {part!r} is not host:port")
        port_text = match["port"]
        if port_text is not None and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise bad(f"sentinel port {port_text!r} is not a number in 1..65535")
        port = int(port_text) if port_text is not None else DEFAULT_SENTINEL_PORT
        sentinels.append((match["v6"] or match["host"], port))
    segments = [unquote(s) for s in path.split("/")] if path else []
    if segments and segments[-1] == "":
        segments.pop()  # one trailing slash
    if not segments or not segments[0]:
        raise bad("the service name is missing (the name after `sentinel monitor`)")
    if len(segments) > 2:
        raise bad("the path must be /<service> or /<service>/<db>")
    db = 0
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise bad(f"the database {segments[1]!r} is not a number >= 0")
        db = int(segments[1])
    try:
        options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise bad(f"the query {redact_query(query)!r} is not name=value&...") from None
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise bad(f"unknown option(s) {', '.join(unknown)} (known: {', '.join(_OPTIONS)})")
    for name, values in options.items():
        if len(values) > 1:
            raise bad(f"option {name} is given {len(values)} times")
    retry_s = DEFAULT_SENTINEL_RETRY_S
    if "retry_s" in options:
        try:
            retry_s = float(options["retry_s"][0])
        except ValueError:
            raise bad(f"retry_s={options['retry_s'][0]!r} is not a number of seconds") from None
        if not 0 < retry_s <= MAX_RETRY_S:
            raise bad(f"retry_s must be in (0, {MAX_RETRY_S:.0f}] seconds, got {options['retry_s'][0]}")
    return SentinelTarget(tuple(sentinels), segments[0], db, username, password,
                          options.get("sentinel_username", [None])[0] or None,
                          options.get("sentinel_password", [None])[0] or None, retry_s)


def check_url(url: str) -> None:
    """InvalidArgument unless `url` is one of the two forms (nothing is connected)."""
    if url.strip().lower().startswith("rediss+sentinel://"):
        raise InvalidArgument(f"bad Redis URL {redact(url)!r}: TLS to sentinels is not supported; use "
                              "redis+sentinel:// on a trusted network, or rediss:// to one Redis")
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return
    try:
        redis.connection.parse_url(url)
        parts = urlsplit(url)
        if parts.scheme != "unix":
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as error:
        raise InvalidArgument(f"bad Redis URL {redact(url)!r}: {error}; expected {_URL_FORMS}") from None


class RediscoveringConnection(SentinelManagedConnection):
    """A primary's connection that asks the sentinels for the address on every connect.

    redis-py's SentinelManagedConnection does so only when the pool hands out a connection; a retry
    inside a command reconnects to the address the connection had, the dead primary, until its retries
    run out (redis-py issue #3874, open in 8.1.0). Here each reconnect, retried or not, asks again, and
    connects without a socket-level retry of its own (the command's Retry is the only loop)."""

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        if self.connection_pool.is_master:
            self.host, self.port = self.connection_pool.get_master_address()
        super(SentinelManagedConnection, self).connect_check_health(check_health=check_health,
                                                                    retry_socket_connect=False)

    def connect_to(self, address) -> None:  # the pool's connect(): the address was just asked for
        self.host, self.port = address
        super(SentinelManagedConnection, self).connect_check_health(
            check_health=self.connection_pool.check_connection, retry_socket_connect=False)


def retry_policy(window_s: float, errors: tuple[type[Exception], ...] = (ConnectionError, TimeoutError,
                                                                       ReadOnlyError)) -> Retry:
    """redis-py's Retry on `errors`: enough attempts that the backoff sleeps alone add up to window_s on
    average (equal jitter: each sleep is 1/2 to 1 of its capped exponential step, 3/4 on average; so the
    whole wait is 2/3 to 4/3 of window_s, plus the attempts' own time)."""
    backoff = EqualJitterBackoff(cap=BACKOFF_CAP_S, base=BACKOFF_BASE_S)
    retries, slept_s = 0, 0.0
    while slept_s < window_s:
        retries += 1
        slept_s += min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** retries) * 3 / 4
    return Retry(backoff, retries, supported_errors=errors)


class RedisLink:
    """A client (`.client`, a redis.Redis) and what it is connected through."""

    def __init__(self, url: str, socket_timeout_s: float = SOCKET_TIMEOUT_S):
        check_url(url)
        self.url = url
        self.target = parse_sentinel_url(url) if is_sentinel_url(url) else None
        timeouts = dict(socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        if self.target is None:
            self.retry_s = SINGLE_RETRY_S
            self.sentinel = None
            self.client = redis.Redis.from_url(url, retry=retry_policy(SINGLE_RETRY_S),
                                               retry_on_error=[ReadOnlyError], **timeouts)
            return
        t = self.target
        self.retry_s = t.retry_s
        # the sentinels: one try each per discovery (discover_master walks the list), no redis-py retries
        sentinel_kwargs = dict(socket_timeout=SENTINEL_SOCKET_TIMEOUT_S,
                               socket_connect_timeout=SENTINEL_SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
                               username=t.sentinel_username, password=t.sentinel_password)
        self.sentinel = Sentinel(list(t.sentinels), sentinel_kwargs=sentinel_kwargs)
        # RediscoveringConnection asks the sentinels for the primary on every (re)connect; its base class turns
        # a READONLY reply (the old primary, demoted) into a ConnectionError that the retry handles
        self.client = self.sentinel.master_for(t.service, db=t.db, username=t.username, password=t.password,
                                               retry=retry_policy(t.retry_s), retry_on_error=[ReadOnlyError],
                                               connection_class=RediscoveringConnection, **timeouts)

    @property
    def sentinel_service(self) -> str:
        """The monitored service, or "" for one Redis."""
        return self.target.service if self.target else ""

    @property
    def sentinel_addresses(self) -> list[str]:
        return [_host_port(h, p) for h, p in self.target.sentinels] if self.target else []

    def primary(self) -> str:
        """host:port of the primary this client writes to now (with sentinels: what they say at this call;
        raises redis ConnectionError when none of them names one)."""
        if self.sentinel is None:
            kwargs = self.client.connection_pool.connection_kwargs
            return kwargs.get("path") or _host_port(kwargs.get("host", "localhost"), kwargs.get("port", 6379))
        host, port = self.sentinel.discover_master(self.target.service)
        return _host_port(host, port)

    def reconnect(self) -> None:
        """Drop every pooled connection: the next command connects again (with sentinels: to the primary
        they name now). For errors redis-py does not see as a failover (a script's READONLY)."""
        self.client.connection_pool.disconnect()

    def close(self) -> None:
        self.client.close()
        if self.sentinel is not None:
            self.sentinel.close()


def connect(url: str, socket_timeout_s: float = SOCKET_TIMEOUT_S) -> RedisLink:
    """A RedisLink for either URL form; InvalidArgument for a bad URL (nothing is contacted yet)."""
    return RedisLink(url, socket_timeout_s)


def sentinel_url(sentinels: list[tuple[str, int]], service: str, db: int = 0, password: str | None = None,
                 sentinel_password: str | None = None, retry_s: float | None = None) -> str:
    """Build a redis+sentinel:// URL (what `glitches up --redis-sentinels` hands its daemons)."""
    auth = f":{quote(password, safe='')}@" if password else ""
    hosts = ",".join(_host_port(h, p) for h, p in sentinels)
    options = []
    if sentinel_password:
        options.append(f"sentinel_password={quote(sentinel_password, safe='')}")
    if retry_s is not None:
        options.append(f"retry_s={retry_s:g}")
    return f"{SENTINEL_SCHEME}://{auth}{hosts}/{quote(service, safe='')}/{db}" + ("?" + "&".join(options)
                                                                                 if options else "")


def redact(url: str) -> str:
    """`url` with every password (the userinfo's, sentinel_password=) replaced by ***, for printing."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{hosts}"
    path, question, query = tail.partition("?")
    if question:
        tail = f"{path}?{redact_query(query)}"
    return f"{scheme}://{netloc}{slash}{tail}"


def redact_query(query: str) -> str:
    pairs = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        pairs.append(f"{name}=***" if eq and "password" in name.lower() else pair)
    return "&".join(pairs)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

