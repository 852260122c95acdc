"""Where cached answers live: in memory (one process) or in Redis (shared, native TTLs).

One small protocol, `DocumentStore`, with `MemoryDocumentStore` and `RedisDocumentStore` behaving
the same (tests/test_cache_core.py runs the same tests against both).

A document is a `CacheEntry`: the answer (``response``, the JSON body as bytes), the request's
embedding (float32, or ``None`` for exact-only entries), its partition, category (the LRU/quota
domain: a decision name or a domain category), decision and tenant (for admin deletes), creation
and expiry times (unix seconds, set by ``put``) and a small JSON-able ``metadata`` dict. Its
``doc_id`` is the exact-match key (`cache.keys.exact_key`), so an exact lookup is a plain ``get``.

Guarantees, for both implementations:

* ``put(entry, ttl_s, quota=N)`` stores (or replaces) the entry for ``ttl_s`` seconds and, when
  the entry's category then holds more than ``N`` live entries, evicts the least recently used
  ones *of that category only* and returns their ids. ``get`` refreshes recency.
* ``get`` never returns an expired entry (Redis: native ``PEXPIRE``; memory: checked on read, and
  expired entries are purged on every ``put``).
* ``delete``/``delete_where`` remove entries; ``delete_where`` returns the removed ids, except
  ``delete_where()`` with no filter, which removes everything and returns ``None`` (Redis:
  ``UNLINK`` of every document and LRU key under the namespace, then one ``clear`` event).
* Redis only: every put, delete and eviction is appended to a stream (``XADD ... MAXLEN ~``) that
  other processes read with ``events_since(cursor)`` to keep their vector index in step. Expiry
  produces no event: an index hit on a vanished document is a miss and the caller drops it.
  ``events_since`` reports a *gap* when events were trimmed away (or the stream vanished) before
  the reader got them: the reader must then rebuild its index from ``scan()``.

Redis layout (namespace default ``"sigroute:cache:"``, whose keys all carry the Redis Cluster hash
tag ``{sigroute:cache}``: `sigroute._redis.tagged_prefix` wraps a namespace without one in braces):

* ``{<ns>}:d:<doc_id>``: a hash (``p`` partition, ``c`` category, ``d`` decision, ``t`` tenant,
  ``e`` embedding as little-endian float32 bytes, ``r`` response, ``ca``/``xa`` created/expires,
  ``m`` metadata JSON) with a native TTL;
* ``{<ns>}:lru:<category>``: a sorted set doc_id -> last access (Redis server time, microseconds);
* ``{<ns>}:events``: the stream (fields ``op`` put|del|clear, ``id``, ``p``, ``e``).

Idle TTL (``idle_ttl_s``, both implementations; default none): a document expires after that long
unused even when its own TTL is longer (``put`` sets ``min(ttl, idle)``; each ``get`` restarts it at
the idle TTL, never past the document's own expiry ``xa``), so a partition nobody reads leaves the
store. A category's LRU set carries a TTL at least as long as its longest-lived document, so it
vanishes with its last one.

``put``, ``get`` and ``delete`` are one Lua script each (one round trip, atomic: the LRU set,
the document and the event never disagree). ``put`` also drops up to 32 LRU members whose
documents expired (so expired entries stop counting against the quota) before enforcing it.
Scripts touch documents and LRU sets they derive from the namespace (evicted members, a
document's category), so every cache key shares one hash tag and therefore one Redis Cluster slot:
the cache works on a cluster, but lives on one primary there (the event stream, read whole and in
order by every replica, ties it together). With ``shards=N`` (N > 1) the same layout exists N
times, under ``{<ns>:s<k>}:``: a document lives in shard ``k = blake2b(doc_id) mod N`` with its
category's LRU set of that shard and that shard's stream, so each script still touches one slot and
a cluster spreads the N slots over its primaries. A category's quota is enforced per shard
(``ceil(quota / N)`` each); ``position``/``events_since`` cursors hold one stream id per shard,
joined by ``|``; a ``clear`` is written to every shard's stream and read as a gap (the reader
rebuilds, since other shards' events may be older or newer than it). While that slot is being resharded, scripts whose keys
are split between two nodes are refused (TRYAGAIN) and fail as `StoreUnavailable`.
Scans use ``SCAN`` (never ``KEYS``) and ``UNLINK``.

The URL is ``redis://``, ``rediss://``, ``unix://`` (one server) or
``redis+cluster://host:port[,…]`` (a cluster; see `sigroute._redis`). Redis connection failures,
timeouts and a cluster slot with no reachable primary raise `StoreUnavailable` naming the URL (never
its password); the semantic cache turns them into misses and skipped inserts. After a timeout (a
Redis that is hung or cut off answers nothing, so every command would wait its whole timeout)
commands fail at once for ``hung_hold_s`` (default 1 s), then one at a time tries Redis again until
one is answered. The client is created lazily, on first use, so it binds to the event loop that uses
it.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator, Protocol, runtime_checkable

import numpy as np

from sigroute._redis import LazyRedisStore, run_script_many, tagged_prefix

__all__ = [
    "CacheEntry",
    "CacheEvent",
    "DocumentStore",
    "MemoryDocumentStore",
    "RedisDocumentStore",
    "StoreUnavailable",
    "open_document_store",
]


class StoreUnavailable(RuntimeError):
    """The cache's backend (Redis) cannot be reached; the message names the URL and the cause."""


@dataclass
class CacheEntry:
    doc_id: str                       # = the exact key (cache.keys.exact_key)
    partition: str
    category: str
    response: bytes
    embedding: np.ndarray | None = None
    decision: str = ""
    tenant: str = ""
    created_at: float = 0.0
    expires_at: float = 0.0
    metadata: dict = field(default_factory=dict)

    @property
    def exact_key(self) -> str:
        return self.doc_id


@dataclass(frozen=True)
class CacheEvent:
    op: str                           # "put" | "del" | "clear"
    doc_id: str = ""
    partition: str = ""
    embedding: np.ndarray | None = None


@runtime_checkable
class DocumentStore(Protocol):
    """Cache documents by id, with TTLs and per-category LRU quotas. Methods are coroutines."""

    description: str
    shared: bool                      # True when other processes see the same documents

    async def put(self, entry: CacheEntry, ttl_s: float, *, quota: int | None = None) -> list[str]:
        """Store (or replace) `entry` for `ttl_s` s; returns ids evicted from its category."""

    async def get(self, doc_id: str) -> CacheEntry | None:
        """The live entry (refreshing its recency), or None when missing or expired."""

    async def get_exact(self, partition: str, exact_key: str) -> CacheEntry | None:
        """`get(exact_key)` when the entry belongs to `partition`, else None."""

    async def delete(self, doc_id: str) -> bool:
        """Remove one entry; False when it was not there."""

    async def delete_where(self, *, partition: str | None = None, decision: str | None = None,
                           tenant: str | None = None) -> list[str] | None:
        """Remove matching entries (ids returned); no filter removes everything (returns None)."""

    def scan(self) -> AsyncIterator[tuple[str, str, np.ndarray]]:
        """(doc_id, partition, embedding) of every live entry that has an embedding."""

    async def exists(self, doc_ids: list[str]) -> list[bool]:
        """Whether each id is (still) stored."""

    async def category_counts(self) -> dict[str, int]:
        """Entries per category (Redis: members of each category's LRU set, which may still
        include entries that expired since the last put of that category)."""

    async def count(self) -> int:
        """Live entries."""

    async def position(self) -> str:
        """The event stream's newest id (a cursor for `events_since`)."""

    async def events_since(self, cursor: str, limit: int = 1000) -> tuple[list[CacheEvent], str, bool]:
        """(events after `cursor`, the new cursor, gap: events were lost and a rebuild is due)."""

    async def ping(self) -> None:
        """Raise `StoreUnavailable` when the backend cannot be reached."""

    async def aclose(self) -> None:
        """Release connections."""


def _check_put(entry: CacheEntry, ttl_s: float, quota: int | None) -> None:
    if not entry.doc_id or not entry.partition or not entry.category:
        raise ValueError("a cache entry needs a doc_id, a partition and a category")
    if not isinstance(entry.response, (bytes, bytearray)):
        raise ValueError(f"response must be bytes (the JSON body), got {type(entry.response).__name__}")
    if not (ttl_s > 0):
        raise ValueError(f"ttl_s must be positive, got {ttl_s!r}")
    if quota is not None and quota < 1:
        raise ValueError(f"quota must be at least 1 (or None for no quota), got {quota!r}")


def _embedding(value) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float32).reshape(-1).copy()


# --------------------------------------------------------------------------------------------
# Memory


class MemoryDocumentStore:
    """In-process documents. Safe for asyncio tasks and threads (one lock guards everything)."""

    description = "memory"
    shared = False

    def __init__(self, clock=time.time, *, idle_ttl_s: float | None = None) -> None:
        self._docs: dict[str, CacheEntry] = {}
        self._lru: dict[str, OrderedDict[str, None]] = {}
        self._expiry: list[tuple[float, str]] = []     # heap of (expires_at, doc_id), lazily stale
        self._idle_until: dict[str, float] = {}        # doc_id -> when it expires unused (idle_ttl_s)
        self._lock = threading.Lock()
        self._clock = clock
        self.idle_ttl_s = idle_ttl_s

    def _gone(self, entry: CacheEntry, now: float) -> bool:
        return entry.expires_at <= now or self._idle_until.get(entry.doc_id, float("inf")) <= now

    def _drop(self, doc_id: str) -> CacheEntry | None:
        entry = self._docs.pop(doc_id, None)
        self._idle_until.pop(doc_id, None)
        if entry is not None:
            lru = self._lru.get(entry.category)
            if lru is not None:
                lru.pop(doc_id, None)
                if not lru:
                    del self._lru[entry.category]
        return entry

    def _deadline(self, entry: CacheEntry) -> float:
        return min(entry.expires_at, self._idle_until.get(entry.doc_id, float("inf")))

    def _purge(self, now: float) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, doc_id = heapq.heappop(self._expiry)
            entry = self._docs.get(doc_id)
            if entry is None:
                continue
            if self._gone(entry, now):
                self._drop(doc_id)
            else:                                      # used since: due again at its new deadline
                heapq.heappush(self._expiry, (self._deadline(entry), doc_id))

    async def put(self, entry: CacheEntry, ttl_s: float, *, quota: int | None = None) -> list[str]:
        _check_put(entry, ttl_s, quota)
        now = self._clock()
        stored = replace(entry, response=bytes(entry.response), embedding=_embedding(entry.embedding),
                         created_at=now, expires_at=now + ttl_s,
                         metadata=json.loads(json.dumps(entry.metadata)))
        evicted: list[str] = []
        with self._lock:
            self._purge(now)
            self._drop(stored.doc_id)
            self._docs[stored.doc_id] = stored
            if self.idle_ttl_s:
                self._idle_until[stored.doc_id] = now + self.idle_ttl_s
            lru = self._lru.setdefault(stored.category, OrderedDict())
            lru[stored.doc_id] = None
            heapq.heappush(self._expiry, (self._deadline(stored), stored.doc_id))
            if quota is not None:
                while len(lru) > quota:
                    victim, _ = lru.popitem(last=False)
                    self._docs.pop(victim, None)
                    self._idle_until.pop(victim, None)
                    evicted.append(victim)
        return evicted

    async def get(self, doc_id: str) -> CacheEntry | None:
        with self._lock:
            entry = self._docs.get(doc_id)
            if entry is None:
                return None
            now = self._clock()
            if self._gone(entry, now):
                self._drop(doc_id)
                return None
            if self.idle_ttl_s:                        # used: its idle time starts again
                self._idle_until[doc_id] = now + self.idle_ttl_s
            self._lru[entry.category].move_to_end(doc_id)
            return replace(entry, metadata=dict(entry.metadata))

    async def get_exact(self, partition: str, exact_key: str) -> CacheEntry | None:
        entry = await self.get(exact_key)
        return entry if entry is not None and entry.partition == partition else None

    async def delete(self, doc_id: str) -> bool:
        with self._lock:
            return self._drop(doc_id) is not None

    async def delete_where(self, *, partition: str | None = None, decision: str | None = None,
                           tenant: str | None = None) -> list[str] | None:
        with self._lock:
            if partition is None and decision is None and tenant is None:
                self._docs.clear()
                self._lru.clear()
                self._expiry.clear()
                self._idle_until.clear()
                return None
            victims = [d for d, e in self._docs.items()
                       if (partition is None or e.partition == partition)
                       and (decision is None or e.decision == decision)
                       and (tenant is None or e.tenant == tenant)]
            for doc_id in victims:
                self._drop(doc_id)
            return victims

    async def scan(self) -> AsyncIterator[tuple[str, str, np.ndarray]]:
        with self._lock:
            now = self._clock()
            items = [(e.doc_id, e.partition, e.embedding) for e in self._docs.values()
                     if e.embedding is not None and not self._gone(e, now)]
        for item in items:
            yield item

    async def exists(self, doc_ids: list[str]) -> list[bool]:
        now = self._clock()
        with self._lock:
            return [(e := self._docs.get(d)) is not None and not self._gone(e, now) for d in doc_ids]

    async def count(self) -> int:
        with self._lock:
            self._purge(self._clock())
            return len(self._docs)

    async def category_counts(self) -> dict[str, int]:
        with self._lock:
            self._purge(self._clock())
            return {category: len(lru) for category, lru in self._lru.items()}

    async def position(self) -> str:
        return "0-0"

    async def events_since(self, cursor: str, limit: int = 1000) -> tuple[list[CacheEvent], str, bool]:
        return [], cursor, False   # one process: its own index is always in step

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"MemoryDocumentStore(entries={len(self._docs)})"


# --------------------------------------------------------------------------------------------
# Redis

# Recency scores are Redis server time in microseconds (one clock for every client), bumped to
# stay strictly increasing within a category, so LRU order is exactly access order.
# KEYS: doc, lru set, stream. ARGV: id, ttl_ms, quota (0 = none), stream maxlen, doc key prefix,
# partition, embedding bytes, then the hash's field/value pairs.
_PUT_LUA = """
redis.replicate_commands()
local id = ARGV[1]
local ttl = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= now then now = tonumber(top[2]) + 1 end
redis.call('DEL', KEYS[1])
local fields = {}
for i = 8, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], string.format('%.0f', now), id)
local lru_ttl = redis.call('PTTL', KEYS[2])
if lru_ttl < ttl then redis.call('PEXPIRE', KEYS[2], ttl) end  -- the set outlives none of its documents
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'op', 'put', 'id', id, 'p', ARGV[6], 'e', ARGV[7])
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', string.format('%.0f', now - ttl * 1000), 'LIMIT', 0, 32)
for _, m in ipairs(stale) do
  if redis.call('EXISTS', ARGV[5] .. m) == 0 then redis.call('ZREM', KEYS[2], m) end
end
local evicted = {}
if quota > 0 then
  while redis.call('ZCARD', KEYS[2]) > quota do
    local m = redis.call('ZPOPMIN', KEYS[2])[1]
    if redis.call('DEL', ARGV[5] .. m) == 1 then
      evicted[#evicted + 1] = m
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'op', 'del', 'id', m)
    end
  end
end
return evicted
"""

# KEYS: doc. ARGV: lru prefix, id, idle TTL in ms (0: none). With an idle TTL a hit restarts the
# document's TTL at the idle TTL, never past its own expiry (field xa, unix seconds).
_GET_LUA = """
redis.replicate_commands()
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return h end
local lru, expires_at
for i = 1, #h, 2 do
  if h[i] == 'c' then lru = ARGV[1] .. h[i + 1] elseif h[i] == 'xa' then expires_at = tonumber(h[i + 1]) end
end
local t = redis.call('TIME')
if lru then
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local top = redis.call('ZRANGE', lru, -1, -1, 'WITHSCORES')
  if top[2] and tonumber(top[2]) >= now then now = tonumber(top[2]) + 1 end
  redis.call('ZADD', lru, 'XX', string.format('%.0f', now), ARGV[2])
end
local idle = tonumber(ARGV[3])
if idle and idle > 0 and expires_at then
  local left = math.floor((expires_at - tonumber(t[1]) - tonumber(t[2]) / 1000000) * 1000)
  local ttl = math.min(idle, left)
  if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
    if lru and redis.call('PTTL', lru) < ttl then redis.call('PEXPIRE', lru, ttl) end
  end
end
return h
"""

# KEYS: doc, stream. ARGV: id, lru prefix, stream maxlen.
_DELETE_LUA = """
local c = redis.call('HGET', KEYS[1], 'c')
if not c then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[2] .. c, ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'op', 'del', 'id', ARGV[1])
return 1
"""


def _stream_id(value) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else str(value)
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _glob_escape(text: str) -> str:
    for ch in "\\*?[]^":
        text = text.replace(ch, "\\" + ch)
    return text


MAX_SHARDS = 1024
CURSOR_SEPARATOR = "|"


def shard_prefixes(namespace: str, shards: int) -> list[str]:
    """The key prefix (with its Redis Cluster hash tag) of each shard of the cache under
    `namespace`: one shard is ``{sigroute:cache}:`` (the layout before shards existed), shard k of
    several ``{sigroute:cache:sK}:`` — each its own slot, so a cluster spreads them over primaries."""
    base = tagged_prefix(namespace)   # validates the namespace
    if shards == 1:
        return [base]
    tag, rest = base[1:base.index("}")], base[base.index("}") + 1:]
    return [f"{{{tag}:s{k}}}{rest}" for k in range(shards)]


def shard_of(doc_id: str, shards: int) -> int:
    """The shard a document lives in: a hash of its id (stable across processes and versions)."""
    if shards == 1:
        return 0
    return int.from_bytes(hashlib.blake2b(doc_id.encode(), digest_size=8).digest(), "big") % shards


def shard_quota(quota: int, shards: int) -> int:
    """A category's LRU quota per shard: the quota spread evenly, rounded up (so a category may
    hold up to `shards` − 1 entries past its quota, never fewer than its quota when it has that
    many)."""
    return max(1, -(-quota // shards))


def _trimmed_past(info, cursor: str) -> bool:
    """Whether a stream (its XINFO STREAM reply, or the error for a missing stream) lost events
    after `cursor`. MAXLEN trims oldest-first: if the oldest entry left is newer than the cursor
    and anything was ever trimmed, events after the cursor may be gone. (Conservative: when exactly
    the cursor's own entry was trimmed, a rebuild is done that was not strictly needed, never the
    reverse.) No stream (nothing written yet, or it was wiped) is a gap unless nothing was read."""
    from redis.exceptions import ResponseError

    if isinstance(info, ResponseError):
        return cursor != "0-0"
    info = {_text(k): v for k, v in info.items()}
    first = info.get("first-entry")
    added, length = info.get("entries-added"), info.get("length", 0)
    trimmed = added > length if added is not None else cursor != "0-0"
    return bool(first and trimmed and _stream_id(first[0]) > _stream_id(cursor))


@dataclass(frozen=True)
class _Shard:
    prefix: str

    @property
    def doc_prefix(self) -> str:
        return self.prefix + "d:"

    @property
    def lru_prefix(self) -> str:
        return self.prefix + "lru:"

    @property
    def stream(self) -> str:
        return self.prefix + "events"


class RedisDocumentStore(LazyRedisStore):
    """Documents in Redis with native TTLs, per-category LRU sets and an event stream; with
    ``shards`` > 1, spread over that many hash tags (each with its own LRU sets and stream)."""

    def __init__(self, url: str, namespace: str = "sigroute:cache:", *, socket_timeout: float = 0.5,
                 connect_timeout: float = 0.5, retries: int = 1, stream_maxlen: int = 100_000,
                 hung_hold_s: float = 1.0, idle_ttl_s: float | None = None, shards: int = 1) -> None:
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards must be a whole number from 1 to {MAX_SHARDS}, not {shards!r}")
        super().__init__(url, namespace, socket_timeout=socket_timeout, connect_timeout=connect_timeout,
                         retries=retries, hung_hold_s=hung_hold_s)
        self.stream_maxlen = stream_maxlen
        self.idle_ttl_s = idle_ttl_s
        self._scripts: dict[str, Any] = {}
        self.shards = shards
        self._shards = [_Shard(prefix) for prefix in shard_prefixes(namespace, shards)]
        self.key_prefix = self._shards[0].prefix if shards == 1 else None
        # one shard: the names the rest of the code (and older versions' data) knows
        self._stream = self._shards[0].stream
        self._doc_prefix = self._shards[0].doc_prefix
        self._lru_prefix = self._shards[0].lru_prefix

    # ------------------------------------------------------------------------------ plumbing

    def _opened(self, client) -> None:
        self._scripts = {name: client.register_script(src) for name, src in
                         (("put", _PUT_LUA), ("get", _GET_LUA), ("delete", _DELETE_LUA))}

    def _guard(self, operation: str):
        return self._hung.guard(StoreUnavailable, f"Redis at {self.description} is unavailable ({operation})",
                                "check that redis-server is running there and that the URL is right")

    def _shard(self, doc_id: str) -> "_Shard":
        return self._shards[shard_of(doc_id, self.shards)]

    def _doc(self, doc_id: str) -> str:
        return self._shard(doc_id).doc_prefix + doc_id

    def _decode(self, doc_id: str, flat: list) -> CacheEntry | None:
        if not flat:
            return None
        h = {_text(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}
        emb = h.get("e") or b""
        return CacheEntry(
            doc_id=doc_id, partition=_text(h["p"]), category=_text(h["c"]), response=bytes(h.get("r", b"")),
            embedding=np.frombuffer(emb, dtype="<f4").copy() if emb else None,
            decision=_text(h.get("d", b"")), tenant=_text(h.get("t", b"")),
            created_at=float(h.get("ca", 0)), expires_at=float(h.get("xa", 0)),
            metadata=json.loads(h["m"]) if h.get("m") else {})

    # ------------------------------------------------------------------------------ documents

    async def put(self, entry: CacheEntry, ttl_s: float, *, quota: int | None = None) -> list[str]:
        _check_put(entry, ttl_s, quota)
        now = time.time()
        emb = _embedding(entry.embedding)
        emb_bytes = emb.astype("<f4").tobytes() if emb is not None else b""
        fields = ["p", entry.partition, "c", entry.category, "d", entry.decision, "t", entry.tenant,
                  "e", emb_bytes, "r", bytes(entry.response), "ca", repr(now), "xa", repr(now + ttl_s),
                  "m", json.dumps(entry.metadata, separators=(",", ":"))]
        client = self._redis
        shard = self._shard(entry.doc_id)
        with self._guard("put"):
            evicted = await self._scripts["put"](
                keys=[shard.doc_prefix + entry.doc_id, shard.lru_prefix + entry.category, shard.stream],
                args=[entry.doc_id, max(1, int(min(ttl_s, self.idle_ttl_s or ttl_s) * 1000)),
                      shard_quota(quota, self.shards) if quota else 0, self.stream_maxlen,
                      shard.doc_prefix, entry.partition, emb_bytes, *fields],
                client=client)
        return [_text(e) for e in evicted]

    async def get(self, doc_id: str) -> CacheEntry | None:
        client = self._redis
        with self._guard("get"):
            shard = self._shard(doc_id)
            flat = await self._scripts["get"](keys=[shard.doc_prefix + doc_id], args=[
                shard.lru_prefix, doc_id, max(1, int(self.idle_ttl_s * 1000)) if self.idle_ttl_s else 0], client=client)
        return self._decode(doc_id, flat)

    async def get_exact(self, partition: str, exact_key: str) -> CacheEntry | None:
        entry = await self.get(exact_key)
        return entry if entry is not None and entry.partition == partition else None

    async def delete(self, doc_id: str) -> bool:
        client = self._redis
        with self._guard("delete"):
            return bool(await self._scripts["delete"](keys=self._delete_keys(doc_id), args=self._delete_args(doc_id),
                                                      client=client))

    def _delete_keys(self, doc_id: str) -> list[str]:
        shard = self._shard(doc_id)
        return [shard.doc_prefix + doc_id, shard.stream]

    def _delete_args(self, doc_id: str) -> list:
        return [doc_id, self._shard(doc_id).lru_prefix, self.stream_maxlen]

    async def _scan_docs(self, fields: list[str], batch: int = 500) -> AsyncIterator[tuple[str, list]]:
        client = self._redis
        seen: set[str] = set()   # SCAN may return a key twice
        names: list[str] = []
        with self._guard("scan"):
            for shard in self._shards:
                pattern = _glob_escape(shard.doc_prefix) + "*"
                async for name in client.scan_iter(match=pattern, count=1000):
                    name = _text(name)
                    if name not in seen:
                        seen.add(name)
                        names.append((name, len(shard.doc_prefix)))
                    if len(names) >= batch:
                        for item in await self._fetch(names, fields):
                            yield item
                        names = []
            if names:
                for item in await self._fetch(names, fields):
                    yield item

    async def _fetch(self, names: list[tuple[str, int]], fields: list[str]) -> list[tuple[str, list]]:
        """HMGET `fields` of each (document key, length of its shard's document prefix)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for name, _ in names:
                pipe.hmget(name, fields)
            rows = await pipe.execute()
        return [(name[cut:], row) for (name, cut), row in zip(names, rows)
                if row and row[0] is not None]   # None: expired between SCAN and HMGET

    async def delete_where(self, *, partition: str | None = None, decision: str | None = None,
                           tenant: str | None = None) -> list[str] | None:
        if partition is None and decision is None and tenant is None:
            await self._clear()
            return None
        victims = [doc_id async for doc_id, (p, d, t) in self._scan_docs(["p", "d", "t"])
                   if (partition is None or _text(p) == partition)
                   and (decision is None or _text(d or b"") == decision)
                   and (tenant is None or _text(t or b"") == tenant)]
        client = self._redis
        with self._guard("delete"):
            replies = await run_script_many(client, self._scripts["delete"], [
                (self._delete_keys(doc_id), self._delete_args(doc_id)) for doc_id in victims])
        removed = [doc_id for doc_id, reply in zip(victims, replies) if int(reply)]
        return removed

    async def _clear(self) -> None:
        client = self._redis
        with self._guard("clear"):
            for shard in self._shards:
                for prefix in (shard.doc_prefix, shard.lru_prefix):
                    batch: list = []
                    async for name in client.scan_iter(match=_glob_escape(prefix) + "*", count=1000):
                        batch.append(name)
                        if len(batch) >= 1000:
                            await client.unlink(*batch)   # one shard's keys: one slot
                            batch = []
                    if batch:
                        await client.unlink(*batch)
            for shard in self._shards:
                await client.xadd(shard.stream, {"op": "clear"}, maxlen=self.stream_maxlen, approximate=True)

    async def scan(self) -> AsyncIterator[tuple[str, str, np.ndarray]]:
        async for doc_id, (p, e) in self._scan_docs(["p", "e"]):
            if e:
                yield doc_id, _text(p), np.frombuffer(e, dtype="<f4").copy()

    async def exists(self, doc_ids: list[str]) -> list[bool]:
        if not doc_ids:
            return []
        client = self._redis
        with self._guard("exists"):
            async with client.pipeline(transaction=False) as pipe:
                for doc_id in doc_ids:
                    pipe.exists(self._doc(doc_id))
                return [bool(n) for n in await pipe.execute()]

    async def count(self) -> int:
        return sum([1 async for _ in self._scan_docs(["p"])])

    async def category_counts(self) -> dict[str, int]:
        client = self._redis
        with self._guard("category_counts"):
            names = [(_text(n), len(shard.lru_prefix)) for shard in self._shards
                     async for n in client.scan_iter(match=_glob_escape(shard.lru_prefix) + "*", count=500)]
            if not names:
                return {}
            async with client.pipeline(transaction=False) as pipe:
                for name, _ in names:
                    pipe.zcard(name)
                sizes = await pipe.execute()
        counts: dict[str, int] = {}
        for (name, cut), n in zip(names, sizes):
            if n:
                counts[name[cut:]] = counts.get(name[cut:], 0) + int(n)
        return counts

    # ------------------------------------------------------------------------------ events

    async def position(self) -> str:
        """The newest event of every shard: one stream id, or with shards the ids joined by '|'."""
        client = self._redis
        with self._guard("position"):
            async with client.pipeline(transaction=False) as pipe:
                for shard in self._shards:
                    pipe.xrevrange(shard.stream, count=1)
                lasts = await pipe.execute()
        return CURSOR_SEPARATOR.join(_text(last[0][0]) if last else "0-0" for last in lasts)

    async def events_since(self, cursor: str, limit: int = 1000) -> tuple[list[CacheEvent], str, bool]:
        """Events after `cursor` (from `position` or an earlier call), the new cursor, and whether
        events were lost (a gap: rebuild from `scan`). With shards, each shard's stream is read
        after its own part of the cursor; a document's events all sit in its shard's stream, in
        order. A `clear` with shards is reported as a gap, so the reader rebuilds: events of
        other shards' streams may be older or newer than it, and only a rebuild is right for both."""
        from redis.exceptions import ResponseError

        parts = cursor.split(CURSOR_SEPARATOR)
        if len(parts) != self.shards:   # a cursor of another layout: start over
            return [], await self.position(), True
        client = self._redis
        # One inclusive XRANGE per shard from the cursor's own entry: when that entry is still
        # there, nothing after it was trimmed; when it is gone (trimmed past, or the stream was
        # wiped), events may be lost and the reader rebuilds. Only a reader that has read nothing
        # yet ("0-0", no entry of its own) asks XINFO whether the stream was ever trimmed.
        with self._guard("events"):
            async with client.pipeline(transaction=False) as pipe:
                for shard, part in zip(self._shards, parts):
                    if part == "0-0":
                        pipe.xrange(shard.stream, min="-", count=limit)
                        pipe.xinfo_stream(shard.stream)
                    else:
                        pipe.xrange(shard.stream, min=part, count=limit + 1)
                replies = iter(await pipe.execute(raise_on_error=False))
        events: list[CacheEvent] = []
        cursors, gap = [], False
        for part in parts:
            rows = next(replies)
            if isinstance(rows, ResponseError):
                raise rows
            rows = rows or []
            if part == "0-0":
                gap = gap or _trimmed_past(next(replies), part)
            elif rows and _text(rows[0][0]) == part:
                rows = rows[1:]
            else:
                gap = True
            for event_id, fields in rows:
                f = {_text(k): v for k, v in fields.items()}
                e = f.get("e") or b""
                events.append(CacheEvent(op=_text(f.get("op", b"")), doc_id=_text(f.get("id", b"")),
                                         partition=_text(f.get("p", b"")),
                                         embedding=np.frombuffer(e, dtype="<f4").copy() if e else None))
                part = _text(event_id)
            cursors.append(part)
        if self.shards > 1 and any(event.op == "clear" for event in events):
            gap = True
        return events, CURSOR_SEPARATOR.join(cursors), gap

    async def ping(self) -> None:
        client = self._redis
        with self._guard("ping"):
            await client.ping()



def open_document_store(url: str | None, **options: Any) -> DocumentStore:
    """``None``/``"memory"`` -> `MemoryDocumentStore`; a redis://, rediss://, unix:// or
    redis+cluster:// URL -> Redis (one server or a cluster)."""
    if url is None or url.strip().lower() in ("", "memory", "memory://"):
        return MemoryDocumentStore()
    return RedisDocumentStore(url, **options)
