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
* A *shared* index (``index.shared`` true: `cache.qdrant_index.QdrantVectorIndex`, one Qdrant
  collection every replica reads and writes) is never rebuilt from the store nor fed the event
  stream: each replica's inserts, evictions and deletes already went into it, so ``sync`` does
  nothing and a replica serves lookups at once. ``rebuild()`` then only adds the store's entries
  the index lacks (e.g. after switching engines). Stale neighbours (expired, deleted) still leave
  it at lookup and by ``sweep()``; its calls go over the network, so they run in a worker thread.
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
``stale``, ``rejected``, ``inserts``, ``evictions``, ``store_errors``, ``bypassed``, ``insert_errors``,
``sync_events``, ``rebuilds``).

`SingleFlight`: at most one upstream call per exact key at a time. ``waiter = flights.lead(key)``
returns ``None`` to the first caller (the *leader*: it calls upstream and must land the flight
whatever happens, with the cacheable answer bytes or ``None``) and a future to every identical
request arriving while the leader works (*followers*). The leader holds its flight as a
context manager, ``with flights.lease(key) as flight: … flight.land(answer)``: leaving the block
without landing lands ``None``, so no ending of the leader (an error, a cancellation, a client
that went away) leaves followers waiting. A follower awaits the future (``await
flights.wait(waiter, timeout_s)``): bytes are the leader's complete answer, to be served as its
own (it asked the identical question in the identical partition); ``None`` means the leader got
no cacheable answer (an upstream error, a truncated or broken stream, the leader's client went
away) or did not land within ``timeout_s``, and the follower then calls upstream itself: one
request's failure is never handed to another caller. Works for streams too: the leader streams
live to its own client and lands the assembled answer at the end.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from .index import VectorIndex
from .store import CacheEntry, DocumentStore, StoreUnavailable

__all__ = ["MODES", "FlightLease", "Hit", "SemanticCache", "SingleFlight"]

log = logging.getLogger("sigroute.cache")

MODES = ("exact", "semantic", "exact_then_semantic")

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
        self._sweep_offset: Any = None   # where the next sweep of a shared index starts
        self._sync_lock = asyncio.Lock()
        self._sync_task: asyncio.Task | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            ("hits_exact", "hits_semantic", "misses", "stale", "rejected", "inserts", "evictions", "store_errors",
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
                     mode: str = "exact_then_semantic", threshold: float = 0.9,
                     accept: Callable[[CacheEntry, float], Any] | None = None) -> Hit | None:
        """The cached answer for this request, or None (a miss, or the store is unavailable).

        `accept(entry, similarity)`, when given, must also approve a semantic candidate (e.g. the
        verifier; it may be a coroutine function); candidates it rejects are counted in
        ``rejected`` and the next one is tried.
        """
        if mode not in MODES:
            raise ValueError(f"unknown cache mode {mode!r}; use one of {', '.join(MODES)}")
        if not self._available():
            return None
        try:
            hit = await self._lookup(partition, exact_key, embedding, mode, threshold, accept)
        except Exception as exc:  # noqa: BLE001 - the request is served without the cache
            self.counters["store_errors"] += 1
            self._failed("lookup", exc)
            return None
        self.counters["misses" if hit is None else f"hits_{hit.kind}"] += 1
        self._maintain_soon()
        return hit

    async def _lookup(self, partition, exact_key, embedding, mode, threshold, accept) -> Hit | None:
        if mode != "semantic":
            entry = await self.store.get_exact(partition, exact_key)
            if entry is not None:
                return Hit(entry, "exact", 1.0)
        if mode == "exact" or embedding is None:
            return None
        for doc_id, similarity in await self._index("search", partition, embedding, self.k):
            if similarity < threshold:
                break   # sorted: nothing further qualifies
            entry = await self.store.get(doc_id)
            if entry is None or entry.partition != partition:
                await self._index("remove", doc_id)
                self.counters["stale"] += 1
                continue
            if accept is not None:
                verdict = accept(entry, similarity)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if not verdict:
                    self.counters["rejected"] += 1
                    continue
            return Hit(entry, "semantic", similarity)
        return None

    async def insert(self, *, partition: str, exact_key: str, response: bytes, category: str,
                     ttl_s: float, embedding: Any = None, quota: int | None = None, decision: str = "",
                     tenant: str = "", metadata: dict | None = None, evicted: list | None = None) -> bool:
        """Store an answer (and index its embedding); False when skipped (store unavailable).
        The ids the category's quota evicted are appended to `evicted` when it is given."""
        entry = CacheEntry(doc_id=exact_key, partition=partition, category=category, response=response,
                           embedding=embedding, decision=decision, tenant=tenant, metadata=metadata or {})
        if not self._available():
            return False
        try:
            removed = await self.store.put(entry, ttl_s, quota=quota)
            if embedding is not None:
                await self._index("add", partition, exact_key, embedding)
        except Exception as exc:  # noqa: BLE001
            self.counters["insert_errors"] += 1
            self._failed("insert", exc)
            return False
        try:
            for doc_id in removed:
                await self._index("remove", doc_id)
        except Exception as exc:  # noqa: BLE001 - a shared index out of reach: lookups drop them as stale
            self._failed("insert", exc)
        if evicted is not None:
            evicted.extend(removed)
        self._maintain_soon()
        self.counters["inserts"] += 1
        self.counters["evictions"] += len(removed)
        return True

    # ------------------------------------------------------------------------------ admin

    async def delete(self, doc_id: str) -> bool:
        """Remove one entry (by its exact key). Raises `StoreUnavailable` (admin path)."""
        removed = await self.store.delete(doc_id)
        await self._index("remove", doc_id)
        return removed

    async def delete_where(self, *, partition: str | None = None, decision: str | None = None,
                           tenant: str | None = None) -> int | None:
        """Remove matching entries; no filter clears everything. Returns how many (None: all)."""
        removed = await self.store.delete_where(partition=partition, decision=decision, tenant=tenant)
        if removed is None:
            await self._index("clear")
            return None
        for doc_id in removed:
            await self._index("remove", doc_id)
        return len(removed)

    # ------------------------------------------------------------------------------ the index

    @property
    def shared_index(self) -> bool:
        """Whether the index is shared by every replica (a vector engine) rather than this process's own."""
        return bool(getattr(self.index, "shared", False))

    async def _index(self, method: str, *args: Any) -> Any:
        """Call the index: inline for the in-process one (microseconds, under its own lock), in a
        worker thread for a shared one (a network round trip the event loop must not wait on)."""
        call = getattr(self.index, method)
        if self.shared_index:
            return await asyncio.to_thread(call, *args)
        return call(*args)

    # ------------------------------------------------------------------------------ keeping in step

    async def rebuild(self) -> int:
        """Reload the index from the store; returns how many vectors it holds."""
        async with self._sync_lock:
            return await self._rebuild()

    async def _rebuild(self) -> int:
        if self.shared_index:   # the index is the replicas' own: only add what it lacks, in place
            items = [(partition, doc_id, vector) async for doc_id, partition, vector in self.store.scan()]
            await asyncio.to_thread(self.index.add_many, items)
            self.counters["rebuilds"] += 1
            return await self._index("size")
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
        if not self.store.shared or self.shared_index:
            return 0   # one process owns every document, or every replica writes the one index: in step
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

    async def sweep(self, batch: int = 1000, shared_slice: int = 20_000) -> int:
        """Drop index entries whose documents are gone (expired); returns how many.

        A shared index may hold millions of entries and every replica sweeps it, so each call
        checks one slice of it (`shared_slice` ids, from where this replica's last sweep stopped,
        wrapping around) rather than all of it."""
        if self.shared_index:
            ids: list[str] = []
            while len(ids) < shared_slice:
                page, self._sweep_offset = await self._index("ids_page", self._sweep_offset,
                                                             min(batch, shared_slice - len(ids)))
                ids.extend(page)
                if self._sweep_offset is None:
                    break
        else:
            ids = await self._index("ids")
        dropped = 0
        for start in range(0, len(ids), batch):
            chunk = ids[start:start + batch]
            for doc_id, alive in zip(chunk, await self.store.exists(chunk)):
                if not alive:
                    dropped += await self._index("remove", doc_id)
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


class SingleFlight:
    """One upstream call per exact key at a time; see the module docstring."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, asyncio.Future] = {}
        self.led = 0          # flights started (upstream calls made by leaders)
        self.joined = 0       # followers that waited for a leader
        self.timed_out = 0    # followers that stopped waiting (and called upstream themselves)

    def in_flight(self, key: Hashable) -> bool:
        return key in self._flights

    def __len__(self) -> int:
        """Flights whose leader has not landed yet."""
        return len(self._flights)

    def lead(self, key: Hashable) -> asyncio.Future | None:
        """None: you lead (call upstream, then `land`); else the leader's future to `wait` on."""
        flight = self._flights.get(key)
        if flight is None:
            self._flights[key] = asyncio.get_running_loop().create_future()
            self.led += 1
            return None
        self.joined += 1
        return flight

    def lease(self, key: Hashable) -> "FlightLease":
        """The flight `lead(key)` just gave this caller, as a context manager that always lands it."""
        return FlightLease(self, key, self._flights[key])

    def land(self, key: Hashable, answer: Any) -> None:
        """The leader is done: `answer` (None: nothing the followers can use) goes to every follower."""
        flight = self._flights.pop(key, None)
        if flight is not None and not flight.done():
            flight.set_result(answer)

    def _land(self, key: Hashable, flight: asyncio.Future, answer: Any) -> None:
        if self._flights.get(key) is flight:   # never end a newer flight of the same key
            del self._flights[key]
        if not flight.done():
            flight.set_result(answer)

    async def wait(self, flight: asyncio.Future, timeout_s: float | None = None) -> Any:
        """The leader's answer, or None if it has none within `timeout_s` (the follower then calls
        upstream itself). Cancelling the waiter leaves the flight untouched."""
        if timeout_s is None:
            return await asyncio.shield(flight)
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(flight)
        except TimeoutError:
            self.timed_out += 1
            return None


class FlightLease:
    """A leader's hold on a flight. `land(answer)` hands the answer to the followers at once;
    leaving the `with` block without landing lands None, whatever ended it (an error, a
    cancellation, a client that went away), so no follower ever waits on a leader that is gone."""

    __slots__ = ("flights", "key", "_flight")

    def __init__(self, flights: SingleFlight, key: Hashable, flight: asyncio.Future):
        self.flights = flights
        self.key = key
        self._flight = flight

    @property
    def landed(self) -> bool:
        return self._flight.done()

    def land(self, answer: Any) -> None:
        self.flights._land(self.key, self._flight, answer)

    def __enter__(self) -> "FlightLease":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if not self.landed:
            self.land(None)
