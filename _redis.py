"""Opening Redis for the shared stores: one Redis or a Redis Cluster, from one URL.

Every shared store (bandit state and pending feedback in `sigroute.bandits.store`, cache documents
in `sigroute.cache.store`, rate-limit buckets in `sigroute.gateway.ratelimit`, stored Responses in
`sigroute.gateway.response_store`) opens its client here, so they agree on which URLs they take,
how a URL is shown (never with its password), which failures mean "Redis is unavailable", and how a
hung Redis is failed fast (`LazyRedisStore` is that set-up as a base class). It lives beside the
packages rather than in one of them because `bandits` and `cache` must not import each other.

URLs:

* ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS), ``unix:///path.sock[?db=N]``:
  one Redis (or Valkey) server, through redis-py's asyncio ``Redis``;
* ``redis+cluster://[[user]:password@]host:port[,host:port…]`` (``rediss+cluster://`` for TLS): a
  Redis (or Valkey) Cluster through redis-py's asyncio ``RedisCluster``. The hosts are seed nodes:
  the client learns the whole topology from whichever answers first. Database 0 only (a cluster has
  no other); query options (``?ssl_cert_reqs=none`` …) are passed on as for a single Redis.

The cluster client follows MOVED and ASK redirections itself (a slot being resharded costs a
redirect, not an error). A connection error — a primary killed, before its replica is promoted —
makes the next attempt (``retries`` of them) and the next command re-read the topology from another
node, so once the cluster has promoted the replica the same client uses it. Timeouts are never
retried (as for one Redis: a timed-out ``add`` or ``take`` may have run). While a slot has no
reachable primary its commands fail with `unavailable_errors()`; the stores turn those into their
``StoreUnavailable``, which the gateway handles as for a Redis that is down (fail open, counted).
(With Redis's default ``cluster-require-full-coverage yes``, once the cluster has marked the primary
failed every slot refuses commands until the replica is promoted: about a second in the tests.)
Each store holds one client for the whole cluster, so its fail-fast rule for a hung Redis
(`HungRedis`) applies to the cluster as a whole: a timeout from one node makes the store fail fast
for ``hung_hold_s`` on every slot.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

SINGLE_SCHEMES = ("redis", "rediss", "unix")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
# default connect/command timeout of the stores a request waits on (cache, rate limits, served
# answers, stored responses): `sigroute serve --redis-timeout`, `create_app(redis_timeout_s=)`
REQUEST_PATH_TIMEOUT_S = 0.5
ACCEPTED_URLS = ("None or 'memory' (in-process), 'redis://[:password@]host[:port][/db]', "
                 "'rediss://...' (TLS), 'unix:///path/to/redis.sock[?db=N]', or a Redis Cluster as "
                 "'redis+cluster://[:password@]host:port[,host:port...]' ('rediss+cluster://...' for TLS)")


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def url_kind(url: str | None) -> str:
    """"memory", "redis" (one server) or "cluster"; ValueError (without the URL's secrets) otherwise."""
    if url is None or url.strip().lower() in ("", "memory", "memory://"):
        return "memory"
    scheme = _scheme(url)
    if scheme in SINGLE_SCHEMES:
        return "redis"
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    raise ValueError(f"unsupported store URL {redacted_url(url)!r}: use {ACCEPTED_URLS}")


def is_redis_url(url: str) -> bool:
    """True for a single-Redis or a Redis Cluster URL (the forms `open_client` takes)."""
    return _scheme(url) in SINGLE_SCHEMES + CLUSTER_SCHEMES


def hash_tag(key: str) -> str:
    """The part of `key` Redis Cluster hashes to pick its slot: the text between the first ``{``
    and the first ``}`` after it when that is not empty, else the whole key."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


def tagged_prefix(namespace: str) -> str:
    """A key prefix that puts every key under `namespace` in one Redis Cluster slot: `namespace`
    itself when it starts with a ``{tag}``, else the namespace wrapped in braces
    (``"sigroute:cache:"`` -> ``"{sigroute:cache}:"``). The tag comes first, so nothing appended
    after it (a document id, a category name, even one holding braces) can move a key elsewhere."""
    if namespace.startswith("{") and hash_tag(namespace) != namespace:
        return namespace
    core = namespace.rstrip(":") or "sigroute"
    if "{" in core or "}" in core:
        raise ValueError(f"a namespace either starts with a {{hash tag}} or holds no braces, got {namespace!r}")
    return "{" + core + "}:"


def _host_port(text: str) -> str:
    """``host[:port]`` as written, or ``<bad address>`` when it is not one (never echo odd text)."""
    host, sep, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not sep:
        host, port = text, ""
    if port and not port.isdigit():
        return "<bad address>"
    if not host or any(c.isspace() or c in "@/?#" for c in host):
        return "<bad address>"
    return host.lower() + (f":{port}" if port else "")


def redacted_url(url: str) -> str:
    """`url` without credentials (user info and a `password` query parameter are dropped); text
    that is not a URL at all is not repeated (it may be a secret pasted in the wrong place)."""
    if "://" not in url:
        return "<not a URL>"
    parts = urlsplit(url)
    query = urlencode([(k, v) for k, v in parse_qsl(parts.query) if k.lower() != "password"])
    if _scheme(url) in CLUSTER_SCHEMES:
        hosts = parts.netloc.rpartition("@")[2]
        netloc = ",".join(_host_port(h) for h in hosts.split(",") if h)
    else:
        netloc = parts.hostname or ""
        if ":" in netloc:  # IPv6
            netloc = f"[{netloc}]"
        try:
            port = parts.port
        except ValueError:   # a port that is not a number
            port = None
        if port is not None:
            netloc += f":{port}"
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def cluster_seed_nodes(url: str) -> list[tuple[str, int]]:
    """The (host, port) seed nodes of a ``redis+cluster://`` URL; ValueError when there are none
    or one is malformed (the message shows the URL redacted)."""
    hosts = urlsplit(url).netloc.rpartition("@")[2]
    nodes = []
    for item in hosts.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):                      # [IPv6]:port
            host, _, port = item[1:].partition("]:")
        else:
            host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"invalid Redis Cluster URL {redacted_url(url)!r}: each seed node must be "
                             "host:port (the port is required), separated by commas")
        nodes.append((host, int(port)))
    if not nodes:
        raise ValueError(f"invalid Redis Cluster URL {redacted_url(url)!r}: name at least one seed node, "
                         "as redis+cluster://host:port[,host:port...]")
    return nodes


def open_client(url: str, *, decode_responses: bool, socket_timeout: float, connect_timeout: float,
                retries: int, backoff_cap: float = 0.2, backoff_base: float = 0.02) -> Any:
    """A redis-py asyncio client for `url`: ``Redis`` for one server, ``RedisCluster`` for a cluster.

    Nothing is connected yet (the first command connects), so the client binds to the event loop
    that first uses it. Connection errors are retried `retries` times (with backoff for one Redis;
    after a topology refresh for a cluster); timeouts never are. A malformed URL raises ValueError
    naming the URL redacted."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    kind = url_kind(url)
    retry = Retry(ExponentialBackoff(cap=backoff_cap, base=backoff_base), retries,
                  supported_errors=(RedisConnectionError,))
    try:
        if kind == "redis":
            return aioredis.from_url(url, decode_responses=decode_responses, socket_timeout=socket_timeout,
                                     socket_connect_timeout=connect_timeout, retry=retry)
        return _open_cluster(url, decode_responses=decode_responses, socket_timeout=socket_timeout,
                             connect_timeout=connect_timeout, retry=retry)
    except ValueError as exc:  # malformed URL (bad port, bad db, bad option ...)
        message = str(exc)
        if "invalid Redis" in message:
            raise
        raise ValueError(f"invalid Redis URL {redacted_url(url)!r}: {_scrub(message, url)}") from None


def _scrub(message: str, url: str) -> str:
    """`message` with any credential from `url` cut out (redis-py errors can quote URL parts)."""
    parts = urlsplit(url)
    for secret in (parts.password, unquote(parts.password or ""),
                   *(v for k, v in parse_qsl(parts.query) if k.lower() == "password")):
        if secret:
            message = message.replace(secret, "***")
    return message


def _open_cluster(url: str, *, decode_responses: bool, socket_timeout: float, connect_timeout: float,
                  retry: Any) -> Any:
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import SSLConnection, parse_url
    from redis.exceptions import ClusterDownError, SlotNotCoveredError
    from redis.exceptions import ConnectionError as RedisConnectionError

    class _Cluster(RedisCluster):
        # redis-py retries these after re-reading the topology. Not TimeoutError (it would be by
        # default): a timed-out script may have run, and a slow cluster must not slow requests more.
        ERRORS_ALLOW_RETRY = (RedisConnectionError, ClusterDownError, SlotNotCoveredError)

        async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
            # Learn the topology before the first command. redis-py 8.1 lets concurrent first
            # commands of a fresh client race its start-up (connections closed under them); one
            # `initialize` awaited here first, by every task alike (it is locked), avoids that.
            if self._initialize:
                await self.initialize()
            return await super().execute_command(*args, **kwargs)

    nodes = cluster_seed_nodes(url)
    parts = urlsplit(url)
    single = "rediss" if _scheme(url) == "rediss+cluster" else "redis"
    userinfo = parts.netloc.rpartition("@")[0]
    # Let redis-py read credentials, path and query exactly as it does for one Redis.
    options = parse_url(f"{single}://{userinfo + '@' if userinfo else ''}{nodes[0][0]}:{nodes[0][1]}"
                        f"{parts.path}{'?' + parts.query if parts.query else ''}")
    if int(options.pop("db", 0) or 0) != 0:
        raise ValueError("a Redis Cluster has only database 0; drop the /db part of the URL")
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    return _Cluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                    decode_responses=decode_responses, socket_timeout=socket_timeout,
                    socket_connect_timeout=connect_timeout, retry=retry, **options)


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean "this Redis (or this cluster slot) cannot be used right now": lost
    or refused connections, timeouts, a cluster that is down or resharding past the client's
    redirect budget, a slot no primary serves (a failover in progress), a read-only replica
    (a URL naming a replica, or a primary a failover demoted, answers READONLY to writes), a
    replica cut off from its primary (MASTERDOWN), a full Redis that may not evict (OOM) and an ACL
    user without the right to a command the stores need (NOPERM)."""
    from redis.exceptions import (
        BusyLoadingError,
        ClusterDownError,
        ClusterError,
        MasterDownError,
        NoPermissionError,
        OutOfMemoryError,
        ReadOnlyError,
        RedisClusterException,
        SlotNotCoveredError,
        TryAgainError,
    )
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return (RedisConnectionError, RedisTimeoutError, OSError, ClusterDownError, ClusterError,
            RedisClusterException, SlotNotCoveredError, TryAgainError, BusyLoadingError, ReadOnlyError,
            MasterDownError, OutOfMemoryError, NoPermissionError)


def unavailable_detail(exc: BaseException) -> str:
    """What an unavailable-Redis error says, in words an operator can act on."""
    from redis.exceptions import MasterDownError, NoPermissionError, OutOfMemoryError, ReadOnlyError

    if isinstance(exc, OutOfMemoryError):
        return ("it is full (used memory > maxmemory) and its maxmemory-policy forbids evicting, so it "
                "refuses writes; raise maxmemory or use an evicting policy such as allkeys-lru for a cache")
    if isinstance(exc, NoPermissionError):
        return (f"its ACL user has no permission for a command the gateway needs ({exc}); grant the "
                f"user +@all (or at least scripting, hashes, sorted sets, streams and keyspace) on the keys")
    if isinstance(exc, ReadOnlyError):
        return ("it is a read-only replica and refuses writes (the URL names a replica, or a failover "
                "demoted this primary); point the URL at the primary, or at the cluster")
    if isinstance(exc, MasterDownError):
        return "it is a replica that lost its primary and serves no data until the link is back"
    return str(exc) or type(exc).__name__


def is_timeout(exc: BaseException) -> bool:
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return isinstance(exc, (RedisTimeoutError, TimeoutError))


async def run_script_many(client: Any, script: Any, calls: list[tuple[list, list]], *, batch: int = 500) -> list:
    """Run `script` (a redis-py ``Script``) once per ``(keys, args)`` in `calls`; the replies in order.

    One Redis: pipelined, `batch` calls per round trip (the script is loaded first: a pipelined
    EVALSHA cannot recover from NOSCRIPT by itself). A cluster refuses scripts in pipelines, so
    there they run as concurrent single calls, `batch` at a time, each routed to its key's slot
    (and each reloading the script where a node answers NOSCRIPT: a promoted replica, a node a slot
    moved to)."""
    import asyncio

    from redis.asyncio.cluster import RedisCluster

    replies: list = []
    if isinstance(client, RedisCluster):
        for start in range(0, len(calls), batch):
            replies += await asyncio.gather(*(script(keys=keys, args=args, client=client)
                                              for keys, args in calls[start:start + batch]))
        return replies
    if calls:
        script.sha = await client.script_load(script.script)
    for start in range(0, len(calls), batch):
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls[start:start + batch]:
                await script(keys=keys, args=args, client=pipe)
            replies += await pipe.execute()
    return replies


class HungRedis:
    """Fail fast while Redis does not answer: after a timeout, commands fail at once for `hold_s`;
    then one command at a time (the probe) tries Redis again until one is answered."""

    def __init__(self, hold_s: float) -> None:
        if hold_s < 0:
            raise ValueError(f"hung_hold_s must be at least 0, got {hold_s}")
        self.hold_s = hold_s
        self.timed_out_at: float | None = None   # time.monotonic() of the last timeout; None: answering
        self.probing = False

    def admit(self) -> bool | None:
        """False: send the command; True: send it as the probe; None: fail at once."""
        if self.timed_out_at is None:
            return False
        if self.probing or time.monotonic() - self.timed_out_at < self.hold_s:
            return None
        self.probing = True
        return True

    @contextlib.contextmanager
    def guard(self, error: type[Exception], where: str, hint: str = "") -> Iterator[None]:
        """Run Redis commands inside: while Redis is held as hung they fail at once, and any error
        that means Redis is unavailable (a timeout marks it hung) is raised as `error`, saying
        `where` ("Redis at HOST is unavailable (WHAT)") and `hint` (what to check)."""
        probe = self.admit()
        if probe is None:
            ago = time.monotonic() - (self.timed_out_at or 0.0)
            raise error(f"{where}: it did not answer within its timeout {ago:.1f}s ago, so commands fail at once "
                        f"until it answers again" + (f"; {hint}" if hint else ""))
        try:
            yield
        except unavailable_errors() as exc:
            if is_timeout(exc):
                self.timed_out_at = time.monotonic()
            raise error(f"{where}: {unavailable_detail(exc)}" + (f"; {hint}" if hint else "")) from exc
        else:
            self.timed_out_at = None
        finally:
            if probe:
                self.probing = False


class LazyRedisStore:
    """What a Redis-backed store (the rate limits, stored Responses, served answers of implicit
    feedback and the semantic cache's documents) shares: its URL (checked, shown redacted as `description`), its `namespace`, the connection
    options, the `HungRedis` fail-fast rule and a client opened on first use.

    The client (``_redis``) is created lazily, so it binds to the event loop that first uses it; it
    is a cluster client for a cluster URL, and retries connection errors only (a stale pooled
    connection after a restart, a cluster node gone), never timeouts: a timed-out command may have
    run, and a slow Redis must not slow requests more.
    A subclass sets `_decode_responses` and may override `_opened` to register scripts on a fresh
    client."""

    shared = True
    _decode_responses = False

    def __init__(self, url: str, namespace: str, *, socket_timeout: float, connect_timeout: float,
                 retries: int, hung_hold_s: float) -> None:
        if not is_redis_url(url):
            raise ValueError(f"not a Redis URL: {redacted_url(url)!r}; use redis://[:password@]host[:port][/db], "
                             f"rediss://..., unix:///path/to/redis.sock or redis+cluster://host:port[,host:port...]")
        self.url = url
        self.namespace = namespace
        self.description = redacted_url(url)
        self._options = dict(socket_timeout=socket_timeout, connect_timeout=connect_timeout, retries=retries)
        self._hung = HungRedis(hung_hold_s)
        self._client: Any = None

    @property
    def _redis(self) -> Any:
        if self._client is None:
            self._client = open_client(self.url, decode_responses=self._decode_responses, **self._options)
            self._opened(self._client)
        return self._client

    def _opened(self, client: Any) -> None:
        """Called once per client `_redis` opens (a subclass registers its scripts here)."""

    async def aclose(self) -> None:
        if self._client is not None:
            close = getattr(self._client, "aclose", None) or self._client.close
            await close()
            self._client = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r}, namespace={self.namespace!r})"
