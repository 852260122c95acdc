"""Stored Responses (`POST /v1/responses` with `store`): memory (one process) or Redis (shared).

The Responses API is stateful: a response is kept so that a later request can continue its
conversation (`previous_response_id`) and so that `GET /v1/responses/{id}` can return it. What is
kept for each response is one opaque record (bytes; `gateway.responses_wire` decides what is in
it), under the tenant of the caller that created it, for a TTL (`server.responses_ttl`).

One small protocol, `ResponseStore`, with two implementations that behave the same
(tests/test_responses_api.py runs the same tests against both):

* ``put(tenant, response_id, record, ttl_s)`` stores (or replaces) the record for ``ttl_s`` seconds;
* ``get(tenant, response_id)`` the record, or ``None`` when there is none *for that tenant*: another
  tenant's response is indistinguishable from one that never existed, or that expired;
* ``delete(tenant, response_id)`` removes it; whether there was one;
* ``aclose()`` releases connections.

`MemoryResponseStore` is bounded: at most ``max_entries`` records and ``max_bytes`` of them; the
oldest stored go first when a put would exceed either. Expired records are never returned; a put
drops the expired ones at the old end (with one TTL for all, that is all of them) in time
proportional to their number.

`RedisResponseStore` keeps each record under ``<namespace>{<tenant>}:<response_id>`` (namespace
default ``sigroute:responses:``) with a native TTL (``SET ... PX``). The braces are a Redis Cluster
hash tag: a tenant's records share one slot, and every command touches one key, so it works on one
Redis and on a Redis Cluster (``redis+cluster://`` URLs, `sigroute._redis`) alike. Tenant names
cannot contain braces (policy names are ``[A-Za-z0-9_.-]``), so the tag is exactly the tenant.
Redis failures raise `ResponseStoreUnavailable` naming the URL (never its password); as in the
other Redis stores, after a timeout commands fail at once for ``hung_hold_s``, then one at a time
tries Redis again.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable, Protocol

from sigroute._redis import LazyRedisStore

__all__ = ["ResponseStore", "ResponseStoreUnavailable", "MemoryResponseStore", "RedisResponseStore",
           "open_response_store", "REDIS_NAMESPACE"]

REDIS_NAMESPACE = "sigroute:responses:"


class ResponseStoreUnavailable(RuntimeError):
    """The response store's backend (Redis) cannot be reached; the message names the URL and the cause."""


class ResponseStore(Protocol):
    shared: bool   # whether other processes see what this one stores

    async def put(self, tenant: str, response_id: str, record: bytes, ttl_s: float) -> None: ...

    async def get(self, tenant: str, response_id: str) -> bytes | None: ...

    async def delete(self, tenant: str, response_id: str) -> bool: ...

    async def aclose(self) -> None: ...


class MemoryResponseStore:
    """Records in this process's memory, bounded in count and bytes, oldest evicted first."""

    shared = False

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 256 * 1024 * 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a memory response store needs room for at least one record")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._records: OrderedDict[tuple[str, str], tuple[float, bytes]] = OrderedDict()   # oldest first
        self._bytes = 0

    async def put(self, tenant: str, response_id: str, record: bytes, ttl_s: float) -> None:
        now = self.clock()
        self._drop((tenant, response_id))
        while self._records:   # the expired go first: records are kept oldest first, so stop at a live one
            oldest = next(iter(self._records))
            if self._records[oldest][0] > now:
                break
            self._drop(oldest)
        if len(record) > self.max_bytes:
            return   # larger than the whole store: not kept (a later get is a miss, as after eviction)
        while self._records and (len(self._records) >= self.max_entries or self._bytes + len(record) > self.max_bytes):
            self._drop(next(iter(self._records)))
        self._records[(tenant, response_id)] = (now + ttl_s, record)
        self._bytes += len(record)

    def _drop(self, key: tuple[str, str]) -> None:
        held = self._records.pop(key, None)
        if held is not None:
            self._bytes -= len(held[1])

    async def get(self, tenant: str, response_id: str) -> bytes | None:
        held = self._records.get((tenant, response_id))
        if held is None:
            return None
        if held[0] <= self.clock():
            self._drop((tenant, response_id))
            return None
        return held[1]

    async def delete(self, tenant: str, response_id: str) -> bool:
        present = await self.get(tenant, response_id) is not None
        self._drop((tenant, response_id))
        return present

    def __len__(self) -> int:
        return len(self._records)

    async def aclose(self) -> None:
        return None


class RedisResponseStore(LazyRedisStore):
    """Records in Redis with native TTLs, shared by every replica on that Redis and namespace."""

    def __init__(self, url: str, namespace: str = REDIS_NAMESPACE, *, socket_timeout: float = 0.5,
                 connect_timeout: float = 0.5, retries: int = 1, hung_hold_s: float = 1.0) -> None:
        super().__init__(url, namespace, socket_timeout=socket_timeout, connect_timeout=connect_timeout,
                         retries=retries, hung_hold_s=hung_hold_s)

    def key(self, tenant: str, response_id: str) -> str:
        return f"{self.namespace}{{{tenant}}}:{response_id}"

    def _guard(self, operation: str):
        return self._hung.guard(ResponseStoreUnavailable,
                                f"Redis at {self.description} is unavailable ({operation} a response)")

    async def put(self, tenant: str, response_id: str, record: bytes, ttl_s: float) -> None:
        with self._guard("storing"):
            await self._redis.set(self.key(tenant, response_id), record, px=max(1, int(ttl_s * 1000)))

    async def get(self, tenant: str, response_id: str) -> bytes | None:
        with self._guard("reading"):
            return await self._redis.get(self.key(tenant, response_id))

    async def delete(self, tenant: str, response_id: str) -> bool:
        with self._guard("deleting"):
            return bool(await self._redis.delete(self.key(tenant, response_id)))


def open_response_store(url: str | None, **options: Any) -> ResponseStore:
    """Memory for None/"memory", else a Redis store at `url` (the same URLs as the other stores)."""
    if url is None or url.strip().lower() in ("", "memory", "memory://"):
        return MemoryResponseStore(**options)
    return RedisResponseStore(url, **options)
