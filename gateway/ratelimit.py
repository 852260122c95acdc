"""Per-key rate limits: token buckets behind a small store protocol.

A bucket holds up to `burst` tokens and refills at `requests_per_minute / 60` per second; each
request takes one. `MemoryRateLimitStore` serves one process: N replicas with it admit N times a
caller's limit. `RedisRateLimitStore` keeps the buckets in Redis, so every replica on that Redis
takes from the same bucket and the limit holds across them.

Redis layout: one hash per bucket, ``<namespace>{<key>}`` (default namespace
``sigroute:ratelimit:``; the braces are a Redis Cluster hash tag, so the bucket is one slot, the
same on one Redis and on a ``redis+cluster://`` URL) with
fields ``t`` (tokens left) and ``u`` (when they were counted, Redis server time in seconds). One
Lua script per check (sent by EVALSHA, loaded again when Redis answers NOSCRIPT) refills, takes
and writes back atomically, reading the clock with ``TIME`` inside the script, so replicas'
clocks do not matter. Each bucket expires once it would be full again (time to refill from empty
plus a second), so idle callers leave nothing behind.

Redis down: `take` raises `RateLimitStoreUnavailable` naming the URL (never its password); the
pipeline then admits or refuses as `server.rate_limit_store_failure` says. As in the other Redis
stores, a timed-out command makes the store fail fast for `hung_hold_s`, then one check at a time
tries Redis again until one is answered; a refused connection fails fast by itself.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Protocol
from sigroute._redis import HungRedis, is_redis_url, open_client, redacted_url
from sigroute.policies.schema import RateLimit

REDIS_NAMESPACE = "sigroute:ratelimit:"


def bucket_size(limit: RateLimit) -> float:
    return float(limit.burst if limit.burst is not None else max(1.0, limit.requests_per_minute))


class RateLimitStoreUnavailable(RuntimeError):
    """The rate-limit store's backend (Redis) cannot be reached; the message names the URL and the cause."""


class RateLimitStore(Protocol):
    async def take(self, key: str, rate_per_s: float, burst: float) -> float:
        """Take one token. Returns 0 if allowed, else the seconds until a token is available."""

    async def aclose(self) -> None:
        """Release connections."""


class MemoryRateLimitStore:
    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, updated_at)

    async def take(self, key: str, rate_per_s: float, burst: float) -> float:
        now = self.clock()
        tokens, updated = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + (now - updated) * rate_per_s)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            allowed = 0.0
        else:
            self._buckets[key] = (tokens, now)
            allowed = (1.0 - tokens) / rate_per_s
        if len(self._buckets) > self.max_keys:  # forget the fullest buckets' history
            for stale in list(self._buckets)[: len(self._buckets) - self.max_keys]:
                del self._buckets[stale]
        return allowed

    async def aclose(self) -> None:
        return None


# KEYS[1]: the bucket; ARGV: rate per second, burst. Returns the seconds to wait ("0": allowed) as
# a string (a Lua number would come back truncated to an integer).
_TAKE_LUA = r"""
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local held = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens = tonumber(held[1])
local updated = tonumber(held[2])
if tokens == nil or updated == nil then
  tokens = burst
  updated = now
end
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
return string.format('%.17g', wait)
"""


class RedisRateLimitStore:
    """Token buckets in Redis, shared by every replica that uses the same Redis and namespace."""

    shared = True

    def __init__(self, url: str, namespace: str = REDIS_NAMESPACE, *, socket_timeout: float = 0.5,
                 connect_timeout: float = 0.5, retries: int = 1, hung_hold_s: float = 1.0) -> None:
        if not is_redis_url(url):
            raise ValueError(f"not a Redis URL: {redacted_url(url)!r}; use redis://[:password@]host[:port][/db], "
                             f"rediss://..., unix:///path/to/redis.sock or redis+cluster://host:port[,host:port...]")
        self.url = url
        self.namespace = namespace
        self.description = redacted_url(url)
        self._options = dict(socket_timeout=socket_timeout, connect_timeout=connect_timeout, retries=retries)
        self._hung = HungRedis(hung_hold_s)
        self._client = None
        self._take_script: Any = None

    def bucket_key(self, key: str) -> str:
        return f"{self.namespace}{{{key}}}"

    @property
    def _redis(self):
        if self._client is None:  # created lazily: binds to the event loop that first uses it
            # Retry only connection errors (a stale pooled connection after a restart, a cluster node
            # gone), never timeouts: a timed-out take may have run, and a slow Redis must not slow
            # requests more.
            self._client = open_client(self.url, decode_responses=True, **self._options)
            self._take_script = self._client.register_script(_TAKE_LUA)   # EVALSHA, reloaded on NOSCRIPT
        return self._client

    def _guard(self):
        return self._hung.guard(RateLimitStoreUnavailable, f"Redis at {self.description} is unavailable (rate limit)")

    async def take(self, key: str, rate_per_s: float, burst: float) -> float:
        if not (rate_per_s > 0 and math.isfinite(rate_per_s)) or not burst >= 1:
            raise ValueError(f"a bucket needs a positive rate and a burst of at least 1 (got {rate_per_s}, {burst})")
        with self._guard():
            client = self._redis
            wait = await self._take_script(keys=[self.bucket_key(key)], args=[repr(float(rate_per_s)),
                                                                              repr(float(burst))], client=client)
        return float(wait)

    async def aclose(self) -> None:
        if self._client is not None:
            close = getattr(self._client, "aclose", None) or self._client.close
            await close()
            self._client = None

    def __repr__(self) -> str:
        return f"RedisRateLimitStore({self.description!r}, namespace={self.namespace!r})"


def open_rate_limit_store(url: str | None, **options: Any) -> RateLimitStore:
    """Memory for None/"memory", else a Redis store at `url` (the same URLs as the other stores)."""
    if url is None or url.strip().lower() in ("", "memory", "memory://"):
        return MemoryRateLimitStore()
    return RedisRateLimitStore(url, **options)


class RateLimiter:
    def __init__(self, store: RateLimitStore | None = None):
        self.store = store or MemoryRateLimitStore()

    async def check(self, key: str, limit: RateLimit | None) -> float:
        """0 when the request may go ahead, else seconds to wait. Raises `RateLimitStoreUnavailable`
        when a shared store cannot be reached (the caller decides: fail open or closed)."""
        if limit is None:
            return 0.0
        return await self.store.take(key, limit.requests_per_minute / 60.0, bucket_size(limit))
