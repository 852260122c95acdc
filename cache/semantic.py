"""The two-tier cache the pipeline talks to, and single-flight coalescing of identical misses.

`SemanticCache(store, index)` combines a `DocumentStore` (the documents, TTLs, quotas) with a
`VectorIndex` (the request embeddings, per partition):

* ``lookup(partition, exact_key, embedding, mode=..., threshold=...)``: the exact tier is a
  ``get`` of the document whose id is the exact key; the semantic tier searches the partition's
  ``k`` nearest neighbours and returns the most similar one at or above ``threshold`` whose
  document is still alive. A neighbour whose document expired, was evicted or was deleted
  elsewhere is a miss: it is dropped from the index (counted as ``stale``) and the next one is
  tried. Modes: ``"exact"``, ``"semantic"``, ``"exact_then_semantic"`` (default).
* ``insert(...)``: stores the document and indexes its embedding (no embedding: exact tier only);
  ids the store evicted for the category's quota leave the index at once.
* ``sync()``: applies the store's event stream (other processes' inserts, deletes, evictions and
  clears) to the local index; on a gap (events trimmed before this process read them) it
  rebuilds. ``rebuild()`` reloads the index from the store (start-up), building the new index off
  the event loop and swapping it in. ``start_sync(interval_s)`` runs ``sync`` in the background.
  With the memory store ``sync`` is a no-op (one process owns everything).
* The default index defers HNSW builds; the cache runs them in a worker thread as they fall due
  (``maintenance()`` awaits the one in progress), so no graph build blocks the event loop.
* ``sweep()`` drops index entries whose documents expired (expiry sends no event); run it now
  and then (e.g. every few minutes) where entries expire in bulk.

Never raises into the request path: ``lookup`` returns ``None`` and ``insert`` returns ``False``
when the store fails. After a `StoreUnavailable` the store is bypassed for ``cooldown_s``
(default 1 s), so a dead Redis costs one failed connection per second rather than one per
request. Other errors (a corrupt document, an embedding of the wrong dimension) are logged and
counted, and only that request goes without the cache. The maintenance and admin calls
(``sync``, ``rebuild``, ``sweep``, ``delete``, ``delete_where``) do raise `StoreUnavailable`.
Everything is counted in ``counters`` (a plain dict of ints: ``hits_exact``, ``hits_semantic``, ``misses``,
``stale``, ``inserts``, ``evictions``, ``store_errors``, ``bypassed``, ``insert_errors``,
``sync_events``, ``rebuilds``).

`SingleFlight`: ``value, leader = await flight.run(key, factory)``. The first caller for a key
starts ``factory()`` as a task; callers arriving while it runs await the same task, so N
concurrent identical misses make exactly one upstream call. Use the exact key (partition +
conversation) as the flight key: followers asked the identical question in the identical
partition, so the leader's answer is theirs too. Semantics:

* the result object is shared by every caller: treat it as immutable (e.g. bytes);
* if the call raises, every caller of that flight gets the same exception (they asked the same
  backend the same thing at the same moment); no one is given a made-up or other answer, and
  the next call for the key starts a new flight;
* ``leader`` may be False for every caller that gets the result (the leader's caller was
  cancelled), so do the cache ``insert`` *inside* the factory, not after ``run`` returns;
* a caller that is cancelled (client disconnected) leaves the flight; the call is cancelled only
  when no caller is left. A caller that joined a flight cancelled that way starts a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Hashable, TypeVar

from .index import VectorIndex
from .store import CacheEntry, DocumentStore, StoreUnavailable

__all__ = ["MODES", "Hit", "SemanticCache", "SingleFlight"]

log = logging.getLogger("sigroute.cache")

MODES = ("exact", "semantic", "exact_then_semantic")

T = TypeVar("T")


@dataclass(frozen=True)
class Hit:
    entry: CacheEntry
    kind: str            # "exact" | "semantic"
    similarity: float    # 1.0 for exact hits


class SemanticCache:
    """Exact + semantic lookups over a document store and a per-partition vector index."""

    def __init__(self, store: DocumentStore, index: VectorIndex | None = None, *, k: int = 4,
                 cooldown_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.index = index if index is not None else VectorIndex(deferred_builds=True)
        self._maintenance: asyncio.Future | None = None
        self.k = k
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._down_until = 0.0
        self._cursor: str | None = None
        self._sync_lock = asyncio.Lock()
        self._sync_task: asyncio.Task | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("hits_exact", "hits_semantic", "misses", "stale", "inserts", "evictions", "store_errors",
             "bypassed", "insert_errors", "sync_events", "rebuilds"), 0)

    # ------------------------------------------------------------------------------ health

    def _available(self) -> bool:
        if self._clock() < self._down_until:
            self.counters["bypassed"] += 1
            return False
        return True

    def _failed(self, operation: str, exc: BaseException) -> None:
        if isinstance(exc, StoreUnavailable):
            self._down_until = self._clock() + self.cooldown_s
            log.warning("cache %s skipped: %s", operation, exc)
        else:  # a bug or a corrupt document: never fail the request for it, but say so
            log.error("cache %s failed (%s: %s)", operation, type(exc).__name__, exc)

    # ------------------------------------------------------------------------------ request path

    async def lookup(self, partition: str, exact_key: str, embedding: Any = None, *,
                     mode: str = "exact_then_semantic", threshold: float = 0.9) -> Hit | None:
        """The cached answer for this request, or None (a miss, or the store is unavailable)."""
        if mode not in MODES:
            raise ValueError(f"unknown cache mode {mode!r}; use one of {', '.join(MODES)}")
        if not self._available():
            return None
        try:
            hit = await self._lookup(partition, exact_key, embedding, mode, threshold)
        except Exception as exc:  # noqa: BLE001 - the request is served without the cache
            self.counters["store_errors"] += 1
            self._failed("lookup", exc)
            return None
        self.counters["misses" if hit is None else f"hits_{hit.kind}"] += 1
        self._maintain_soon()
        return hit

    async def _lookup(self, partition, exact_key, embedding, mode, threshold) -> Hit | None:
        if mode != "semantic":
            entry = await self.store.get_exact(partition, exact_key)
            if entry is not None:
                return Hit(entry, "exact", 1.0)
        if mode == "exact" or embedding is None:
            return None
        for doc_id, similarity in self.index.search(partition, embedding, self.k):
            if similarity < threshold:
                break   # sorted: nothing further qualifies
            entry = await self.store.get(doc_id)
            if entry is None or entry.partition != partition:
                self.index.remove(doc_id)
                self.counters["stale"] += 1
                continue
            return Hit(entry, "semantic", similarity)
        return None

    async def insert(self, *, partition: str, exact_key: str, response: bytes, category: str,
                     ttl_s: float, embedding: Any = None, quota: int | None = None, decision: str = "",
                     tenant: str = "", metadata: dict | None = None) -> bool:
        """Store an answer (and index its embedding); False when skipped (store unavailable)."""
        entry = CacheEntry(doc_id=exact_key, partition=partition, category=category, response=response,
                           embedding=embedding, decision=decision, tenant=tenant, metadata=metadata or {})
        if not self._available():
            return False
        try:
            evicted = await self.store.put(entry, ttl_s, quota=quota)
            if embedding is not None:
                self.index.add(partition, exact_key, embedding)
        except Exception as exc:  # noqa: BLE001
            self.counters["insert_errors"] += 1
            self._failed("insert", exc)
            return False
        for doc_id in evicted:
            self.index.remove(doc_id)
        self._maintain_soon()
        self.counters["inserts"] += 1
        self.counters["evictions"] += len(evicted)
        return True

    # ------------------------------------------------------------------------------ admin

    async def delete(self, doc_id: str) -> bool:
        """Remove one entry (by its exact key). Raises `StoreUnavailable` (admin path)."""
        removed = await self.store.delete(doc_id)
        self.index.remove(doc_id)
        return removed

    async def delete_where(self, *, partition: str | None = None, decision: str | None = None,
                           tenant: str | None = None) -> int | None:
        """Remove matching entries; no filter clears everything. Returns how many (None: all)."""
        removed = await self.store.delete_where(partition=partition, decision=decision, tenant=tenant)
        if removed is None:
            self.index.clear()
            return None
        for doc_id in removed:
            self.index.remove(doc_id)
        return len(removed)

    # ------------------------------------------------------------------------------ keeping in step

    async def rebuild(self) -> int:
        """Reload the index from the store; returns how many vectors it holds."""
        async with self._sync_lock:
            return await self._rebuild()

    async def _rebuild(self) -> int:
        cursor = await self.store.position()   # events from here on are replayed after the scan
        items = [(partition, doc_id, vector) async for doc_id, partition, vector in self.store.scan()]
        fresh = self.index.spawn()
        await asyncio.to_thread(fresh.add_many, items)
        self.index = fresh
        self._cursor = cursor
        self.counters["rebuilds"] += 1
        await self._apply_events()
        return fresh.size()

    async def sync(self) -> int:
        """Apply the store's events since the last sync (rebuilding on a gap); returns how many."""
        if not self.store.shared:
            return 0   # one process owns every document: the index is always in step
        async with self._sync_lock:
            if self._cursor is None:
                await self._rebuild()
                return 0
            return await self._apply_events()

    async def _apply_events(self) -> int:
        applied = 0
        while True:
            events, cursor, gap = await self.store.events_since(self._cursor)
            if gap:
                log.warning("cache index fell behind the event stream; rebuilding it from the store")
                await self._rebuild()
                return applied
            for event in events:
                if event.op == "put" and event.embedding is not None:
                    try:
                        self.index.add(event.partition, event.doc_id, event.embedding)
                    except ValueError as exc:  # another encoder's dimension, a zero vector ...
                        log.error("cache event for %s ignored: %s", event.doc_id, exc)
                elif event.op == "del":
                    self.index.remove(event.doc_id)
                elif event.op == "clear":
                    self.index.clear()
            applied += len(events)
            self.counters["sync_events"] += len(events)
            self._maintain_soon()
            self._cursor = cursor
            if len(events) < 1000:
                return applied

    def _maintain_soon(self) -> None:
        """Build pending HNSW graphs in a worker thread (one build at a time)."""
        if self.index.pending() and (self._maintenance is None or self._maintenance.done()):
            self._maintenance = asyncio.ensure_future(asyncio.to_thread(self.index.maintain))

    async def maintenance(self) -> None:
        """Wait for the index maintenance in progress (if any) to finish."""
        while self._maintenance is not None and not self._maintenance.done():
            await asyncio.shield(self._maintenance)
            self._maintain_soon()

    async def sweep(self, batch: int = 1000) -> int:
        """Drop index entries whose documents are gone (expired); returns how many."""
        ids = self.index.ids()
        dropped = 0
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            for doc_id, alive in zip(chunk, await self.store.exists(chunk)):
                if not alive:
                    dropped += self.index.remove(doc_id)
            await asyncio.sleep(0)
        return dropped

    def start_sync(self, interval_s: float = 0.25) -> asyncio.Task:
        """Run `sync` every `interval_s` in the background (failures are logged, not raised)."""
        async def loop() -> None:
            while True:
                try:
                    await self.sync()
                except Exception as exc:  # noqa: BLE001
                    self._failed("sync", exc)
                await asyncio.sleep(interval_s)

        if self._sync_task is None or self._sync_task.done():
            self._sync_task = asyncio.create_task(loop(), name="sigroute-cache-sync")
        return self._sync_task

    async def aclose(self) -> None:
        if self._maintenance is not None:
            try:
                await self._maintenance
            except Exception as exc:  # noqa: BLE001
                log.error("cache index maintenance failed: %s", exc)
        if self._sync_task is not None:
            self._sync_task.cancel()
            try:
                await self._sync_task
            except asyncio.CancelledError:
                pass
            self._sync_task = None
        await self.store.aclose()

    def __repr__(self) -> str:
        return f"SemanticCache({self.store!r}, {self.index!r})"


# --------------------------------------------------------------------------------------------
# Single flight


class _Flight:
    __slots__ = ("task", "callers")

    def __init__(self, task: asyncio.Task) -> None:
        self.task = task
        self.callers = 0


class SingleFlight:
    """Coalesce concurrent calls with the same key into one (see the module docstring)."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}
        self.calls = 0        # factories started
        self.coalesced = 0    # callers that joined a running flight

    def in_flight(self, key: Hashable) -> bool:
        return key in self._flights

    async def run(self, key: Hashable, factory: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """(result, leader): `leader` is True for the caller whose call started the flight."""
        while True:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = _Flight(asyncio.ensure_future(factory()))
                self._flights[key] = flight
                flight.task.add_done_callback(lambda _t, k=key, f=flight: self._land(k, f))
                self.calls += 1
            else:
                self.coalesced += 1
            flight.callers += 1
            try:
                return await asyncio.shield(flight.task), leader
            except asyncio.CancelledError:
                me = asyncio.current_task()
                if me is not None and me.cancelling():
                    self._leave(key, flight)
                    raise
                # not us: the flight was abandoned by its other callers; start a new one
                flight.callers -= 1
                continue

    def _leave(self, key: Hashable, flight: _Flight) -> None:
        flight.callers -= 1
        if flight.callers <= 0 and not flight.task.done():
            self._land(key, flight)
            flight.task.cancel()

    def _land(self, key: Hashable, flight: _Flight) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
