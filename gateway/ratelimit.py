"""Per-key rate limits: token buckets behind a small store protocol.

A bucket holds up to `burst` tokens and refills at `requests_per_minute / 60` per second; each
request takes one. The in-memory store serves one process; a Redis store (shared by replicas)
implements the same protocol.
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

from sigroute.policies.schema import RateLimit


def bucket_size(limit: RateLimit) -> float:
    return float(limit.burst if limit.burst is not None else max(1.0, limit.requests_per_minute))


class RateLimitStore(Protocol):
    async def take(self, key: str, rate_per_s: float, burst: float) -> float:
        """Take one token. Returns 0 if allowed, else the seconds until a token is available."""


class MemoryRateLimitStore:
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


class RateLimiter:
    def __init__(self, store: RateLimitStore | None = None):
        self.store = store or MemoryRateLimitStore()

    async def check(self, key: str, limit: RateLimit | None) -> float:
        """0 when the request may go ahead, else seconds to wait."""
        if limit is None:
            return 0.0
        return await self.store.take(key, limit.requests_per_minute / 60.0, bucket_size(limit))
