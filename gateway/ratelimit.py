"""Per-key rate limits on requests and on model tokens: token buckets behind a small store protocol.

A bucket holds up to `burst` units and refills at `per_minute / 60` per second. A request limit's
bucket (`requests_per_minute`) gives one unit per request. A token limit's bucket
(`tokens_per_minute`) is spent in two steps, so a limit holds for answers whose size is not known
in advance:

1. **reserve** before the call: the request's estimated tokens (its prompt, counted with the
   gateway's tokenizer, plus its `max_tokens`, or the limit's `completion_tokens_estimate` when it
   sets none). It is admitted when the bucket holds the estimate (a request larger than the whole
   bucket is admitted when the bucket is full), and the estimate is taken;
2. **settle** after the answer: the difference between what the model really spent (the answer's
   `usage`; for a stream without a usage chunk, the prompt estimate plus the streamed text counted)
   and the estimate is taken (more used) or given back (less). An answer no model produced (a cached
   answer, a blocked request, every candidate failed) gives the whole estimate back. Settling may
   leave the bucket below zero: the caller then waits until the debt has refilled.

`MemoryRateLimitStore` serves one process: N replicas with it admit N times a caller's limit.
`RedisRateLimitStore` keeps the buckets in Redis, so every replica on that Redis takes from the
same bucket and the limit holds across them.

Redis layout: one hash per bucket, ``<namespace>{<key>}`` (default namespace
``sigroute:ratelimit:``; the braces are a Redis Cluster hash tag, so the bucket is one slot, the
same on one Redis and on a ``redis+cluster://`` URL) with
fields ``t`` (units left) and ``u`` (when they were counted, Redis server time in seconds). A
caller's token bucket is the same with ``#tokens`` after its key id inside the tag
(``sigroute:ratelimit:{acme/1a2b3c4d5e6f#tokens}``). One Lua script per check or settlement (sent
by EVALSHA, loaded again when Redis answers NOSCRIPT) refills, takes and writes back atomically,
reading the clock with ``TIME`` inside the script, so replicas' clocks do not matter. Each bucket
expires once it would be full again (time to refill from where it is plus a second), so idle
callers leave nothing behind.

Redis down: `take` raises `RateLimitStoreUnavailable` naming the URL (never its password); the
pipeline then admits or refuses as `server.rate_limit_store_failure` says. As in the other Redis
stores, a timed-out command makes the store fail fast for `hung_hold_s`, then one check at a time
tries Redis again until one is answered; a refused connection fails fast by itself.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from sigroute._redis import LazyRedisStore
from sigroute.policies.schema import RateLimit

REDIS_NAMESPACE = "sigroute:ratelimit:"
TOKENS_SUFFIX = "#tokens"   # a caller's token bucket: its key id + this, in the same hash tag


def bucket_size(limit: RateLimit) -> float:
    """The request bucket's size: `burst`, default a minute's worth (at least 1)."""
    return float(limit.burst if limit.burst is not None else max(1.0, limit.requests_per_minute or 1.0))


def token_bucket_size(limit: RateLimit) -> float:
    """The token bucket's size: `token_burst`, default a minute's worth (at least 1)."""
    return float(limit.token_burst if limit.token_burst is not None else max(1.0, limit.tokens_per_minute or 1.0))


@dataclass(frozen=True, slots=True)
class Spent:
    """A bucket's answer: `wait` seconds until the units asked for are there (0: taken), the
    units `remaining` after this (below zero while the caller is in debt), and the bucket's
    `size` and `rate_per_s` (for the x-ratelimit-* headers)."""

    wait: float
    remaining: float
    size: float
    rate_per_s: float

    @property
    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.size - self.remaining) / self.rate_per_s)


class RateLimitStoreUnavailable(RuntimeError):
    """The rate-limit store's backend (Redis) cannot be reached; the message names the URL and the cause."""


class RateLimitStore(Protocol):
    async def spend(self, key: str, rate_per_s: float, burst: float, cost: float = 1.0) -> Spent:
        """Take `cost` units if the bucket holds them (or is full, when `cost` exceeds `burst`);
        else take nothing and say how long to wait."""

    async def settle(self, key: str, rate_per_s: float, burst: float, delta: float) -> float:
        """Take `delta` more units (a negative `delta` gives units back, up to a full bucket),
        whatever the bucket holds; returns the units remaining."""

    async def aclose(self) -> None:
        """Release connections."""


def _check_bucket(rate_per_s: float, burst: float) -> None:
    if not (rate_per_s > 0 and math.isfinite(rate_per_s)) or not (burst >= 1 and math.isfinite(burst)):
        raise ValueError(f"a bucket needs a positive rate and a burst of at least 1 (got {rate_per_s}, {burst})")


class MemoryRateLimitStore:
    shared = False

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000):
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (units, updated_at)

    async def take(self, key: str, rate_per_s: float, burst: float) -> float:
        """Take one unit: 0 if allowed, else the seconds until one is there."""
        return (await self.spend(key, rate_per_s, burst)).wait

    def _refilled(self, key: str, rate_per_s: float, burst: float) -> tuple[float, float]:
        now = self.clock()
        units, updated = self._buckets.pop(key, (burst, now))   # popped: re-inserted last (most recent)
        return min(burst, units + max(0.0, now - updated) * rate_per_s), now

    def _keep(self, key: str, units: float, now: float) -> None:
        self._buckets[key] = (units, now)
        if len(self._buckets) > self.max_keys:  # forget the least recently used buckets
            for stale in list(self._buckets)[: len(self._buckets) - self.max_keys]:
                del self._buckets[stale]

    async def spend(self, key: str, rate_per_s: float, burst: float, cost: float = 1.0) -> Spent:
        _check_bucket(rate_per_s, burst)
        units, now = self._refilled(key, rate_per_s, burst)
        need = min(cost, burst)
        wait = 0.0
        if units >= need:
            units -= cost
        else:
            wait = (need - units) / rate_per_s
        self._keep(key, units, now)
        return Spent(wait, units, burst, rate_per_s)

    async def settle(self, key: str, rate_per_s: float, burst: float, delta: float) -> float:
        _check_bucket(rate_per_s, burst)
        units, now = self._refilled(key, rate_per_s, burst)
        units = min(burst, units - delta)
        self._keep(key, units, now)
        return units

    async def aclose(self) -> None:
        return None


# KEYS[1]: the bucket; ARGV: rate per second, burst, mode ("spend" or "settle"), amount.
# spend: take `amount` if the bucket holds min(amount, burst), else take nothing; settle: take
# `amount` (negative: give back, up to full) whatever the bucket holds. Returns {wait, remaining}
# as strings (a Lua number would come back truncated to an integer).
_BUCKET_LUA = r"""
if redis.replicate_commands then redis.replicate_commands() end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local amount = tonumber(ARGV[4])
local held = redis.call('HMGET', KEYS[1], 't', 'u')
local units = tonumber(held[1])
local updated = tonumber(held[2])
if units == nil or updated == nil then
  units = burst
  updated = now
end
local elapsed = now - updated
if elapsed < 0 then elapsed = 0 end
units = math.min(burst, units + elapsed * rate)
local wait = 0
if ARGV[3] == 'settle' then
  units = math.min(burst, units - amount)
else
  local need = math.min(amount, burst)
  if units >= need then
    units = units - amount
  else
    wait = (need - units) / rate
  end
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', units), 'u', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - units) / rate * 1000) + 1000)
return {string.format('%.17g', wait), string.format('%.17g', units)}
"""


class RedisRateLimitStore(LazyRedisStore):
    """Token buckets in Redis, shared by every replica that uses the same Redis and namespace."""

    _decode_responses = True

    def __init__(self, url: str, namespace: str = REDIS_NAMESPACE, *, socket_timeout: float = 0.5,
                 connect_timeout: float = 0.5, retries: int = 1, hung_hold_s: float = 1.0) -> None:
        super().__init__(url, namespace, socket_timeout=socket_timeout, connect_timeout=connect_timeout,
                         retries=retries, hung_hold_s=hung_hold_s)
        self._take_script: Any = None

    def bucket_key(self, key: str) -> str:
        return f"{self.namespace}{{{key}}}"

    def _opened(self, client: Any) -> None:
        self._take_script = client.register_script(_BUCKET_LUA)   # EVALSHA, reloaded on NOSCRIPT

    def _guard(self):
        return self._hung.guard(RateLimitStoreUnavailable, f"Redis at {self.description} is unavailable (rate limit)")

    async def take(self, key: str, rate_per_s: float, burst: float) -> float:
        """Take one unit: 0 if allowed, else the seconds until one is there."""
        return (await self.spend(key, rate_per_s, burst)).wait

    async def _run(self, key: str, rate_per_s: float, burst: float, mode: str, amount: float) -> tuple[float, float]:
        _check_bucket(rate_per_s, burst)
        if not math.isfinite(amount):
            raise ValueError(f"a bucket's amount must be a finite number, got {amount}")
        with self._guard():
            client = self._redis
            wait, remaining = await self._take_script(
                keys=[self.bucket_key(key)], args=[repr(float(rate_per_s)), repr(float(burst)), mode,
                                                   repr(float(amount))], client=client)
        return float(wait), float(remaining)

    async def spend(self, key: str, rate_per_s: float, burst: float, cost: float = 1.0) -> Spent:
        wait, remaining = await self._run(key, rate_per_s, burst, "spend", cost)
        return Spent(wait, remaining, burst, rate_per_s)

    async def settle(self, key: str, rate_per_s: float, burst: float, delta: float) -> float:
        return (await self._run(key, rate_per_s, burst, "settle", delta))[1]


def open_rate_limit_store(url: str | None, **options: Any) -> RateLimitStore:
    """Memory for None/"memory", else a Redis store at `url` (the same URLs as the other stores)."""
    if url is None or url.strip().lower() in ("", "memory", "memory://"):
        return MemoryRateLimitStore()
    return RedisRateLimitStore(url, **options)


def bucket_owner(principal: Any, limit: RateLimit) -> str:
    """Whose buckets a limit fills: the API key's (its key id, "acme/1a2b3c4d5e6f") or, with
    `scope: tenant`, the tenant's ("tenant=acme")."""
    return f"tenant={principal.tenant}" if limit.scope == "tenant" else principal.key_id


class RateLimiter:
    """A limit's request and token buckets, in one store. Each method raises
    `RateLimitStoreUnavailable` when a shared store cannot be reached (the caller decides: fail
    open or closed)."""

    def __init__(self, store: RateLimitStore | None = None):
        self.store = store or MemoryRateLimitStore()

    async def check(self, key: str, limit: RateLimit | None) -> float:
        """0 when the request may go ahead, else seconds to wait."""
        spent = await self.check_requests(key, limit)
        return 0.0 if spent is None else spent.wait

    async def check_requests(self, key: str, limit: RateLimit | None) -> Spent | None:
        """One request from `key`'s request bucket; None when `limit` sets no request rate."""
        if limit is None or limit.requests_per_minute is None:
            return None
        return await self.store.spend(key, limit.requests_per_minute / 60.0, bucket_size(limit))

    async def reserve_tokens(self, key: str, limit: RateLimit, estimate: int) -> Spent:
        """Take a request's `estimate` of tokens from `key`'s token bucket (see the module docstring)."""
        return await self.store.spend(key + TOKENS_SUFFIX, limit.tokens_per_minute / 60.0,
                                      token_bucket_size(limit), float(estimate))

    async def settle_tokens(self, key: str, limit: RateLimit, used_minus_estimate: int) -> float:
        """Take what a request used beyond its reservation (negative: give the rest back)."""
        return await self.store.settle(key + TOKENS_SUFFIX, limit.tokens_per_minute / 60.0,
                                       token_bucket_size(limit), float(used_minus_estimate))


@dataclass(frozen=True, slots=True)
class TokenEstimate:
    """What a request is expected to spend, reserved before its call: `prompt` tokens (the
    gateway's count) and `completion` tokens (its max_tokens, or the limit's estimate)."""

    prompt: int
    completion: int

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def tokens_used(journey: Any, estimate: TokenEstimate) -> int:
    """What a request's model really spent: its answer's usage (total_tokens, or prompt + completion);
    without usage, the prompt estimate plus the answer's text counted (a stream without a usage
    chunk, a stream the caller left); 0 when no model answered (cache hit, blocked, every candidate failed)."""
    usage = journey.usage
    if isinstance(usage, dict):
        total = usage.get("total_tokens")
        if isinstance(total, int) and total >= 0:
            return total
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int) and isinstance(completion, int):
            return prompt + completion
    if journey.result is None:
        return 0
    from sigroute.signals.tokens import count_tokens

    text = "".join(journey.streamed_text or ())
    if not text and isinstance(journey.result.body, dict):
        text = "".join(answer_text(choice.get("message")) for choice in journey.result.body.get("choices") or ()
                       if isinstance(choice, dict))
    return estimate.prompt + (count_tokens(text) if text else 0)


def answer_text(message: Any) -> str:
    """The text of a message or a stream delta that counts as completion tokens: its content and
    its tool calls' names and arguments."""
    if not isinstance(message, dict):
        return ""
    parts = [message.get("content") if isinstance(message.get("content"), str) else ""]
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            parts += [str(function.get("name") or ""), str(function.get("arguments") or "")]
    return "".join(parts)


def streamed_text(chunk: Any) -> list[str]:
    """The completion text in one stream chunk (every choice's delta), for counting its tokens."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    return [answer_text(choice.get("delta")) for choice in choices or () if isinstance(choice, dict)]


def ratelimit_headers(kind: str, limit_per_minute: float, spent: Spent) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for `kind` ("requests" or "tokens"): the limit per minute,
    what remains (whole units, never below 0) and when the bucket is full again (as "1.5s",
    "6m0s", "20ms")."""
    return {f"x-ratelimit-limit-{kind}": f"{limit_per_minute:g}",
            f"x-ratelimit-remaining-{kind}": str(max(0, math.floor(spent.remaining))),
            f"x-ratelimit-reset-{kind}": duration_text(spent.reset_s)}


def duration_text(seconds: float) -> str:
    """A duration as OpenAI writes it in x-ratelimit-reset-*: "20ms", "1.5s", "6m0s", "1h2m3s"."""
    if seconds < 1:
        return f"{math.ceil(seconds * 1000)}ms"
    if seconds < 60:
        return f"{math.ceil(seconds * 1000) / 1000:g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return (f"{hours}h" if hours else "") + f"{minutes}m{secs}s"
