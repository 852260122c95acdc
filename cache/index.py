"""The in-process vector index of the semantic tier: one small index per isolation partition.

Isolation by construction: every partition (see `cache.keys.partition_key`) has its own index, so
a search only ever sees vectors inserted under the same partition; there is no filter that could
be forgotten.

Vectors are normalized to unit length (float32) on the way in and queries too, so the inner
product *is* the cosine similarity, in [-1, 1].

Per partition:

* up to ``hnsw_threshold`` live vectors (default 2,000) the search is exact: one numpy
  matrix-vector product over a contiguous float32 matrix (about 0.1 ms at 2,000 x 384);
* past it, the partition switches (once, by bulk-building) to a faiss ``IndexHNSWFlat`` with
  inner-product metric (``M`` links per node, ``ef_search`` candidates per query, ``ef_construction``
  while building). Similarities it reports are exact inner products (flat storage); only the
  neighbour *set* is approximate.

Removal: HNSW graphs cannot delete, so a removed vector becomes a tombstone, excluded from every
search with a faiss ``IDSelector``; when tombstones exceed ``max_tombstone_share`` (default 20 %)
of the partition's rows, the partition is rebuilt from its live vectors (the exact path just
compacts its matrix). ``add`` of a doc id already present is a no-op (the cache's doc id is the
hash of partition + conversation, so the same id always carries the same vector); ``remove`` of an
unknown id is a no-op. Both make replaying a Redis event stream idempotent.

Builds and the event loop: with ``deferred_builds=False`` (the default) the HNSW switch and
tombstone rebuilds happen inline, inside the ``add``/``remove`` that triggers them (simple, for
scripts and tests). With ``deferred_builds=True`` (what `SemanticCache` uses) they never happen
inline: the partition is marked *pending* (``pending()``), keeps answering correctly meanwhile
(exact search, or HNSW with a tombstone filter), and ``maintain()`` -- meant for a worker thread
(``asyncio.to_thread(index.maintain)``) -- builds the new graph from a snapshot *without holding
the lock*, then, under the lock, catches it up with the adds and removes made during the build
and swaps it in. faiss releases the GIL while building, so the event loop keeps running. (Building
100,000 x 384 measured 22 s for clustered and 65 s for random vectors on two shared cores;
10,000 about 2 s — see benchmarks.cache_speed.)

Concurrency: every method takes one lock, held only briefly (never during a deferred build), so
the index is safe from the event loop and from worker threads.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

__all__ = ["VectorIndex"]


def _unit(vector, dim: int | None) -> np.ndarray:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    if dim is not None and v.shape[0] != dim:
        raise ValueError(f"embedding has {v.shape[0]} dimensions but the index holds {dim}-dimensional "
                         f"vectors (did the encoder change? clear the cache)")
    if not np.isfinite(v).all():
        raise ValueError("embedding contains NaN or infinity")
    norm = float(np.linalg.norm(v))
    if norm == 0.0:
        raise ValueError("embedding is the zero vector; it has no direction to compare")
    return v / norm


@dataclass
class _Partition:
    dim: int
    vectors: np.ndarray            # (capacity, dim) float32; rows [0, n) used
    n: int = 0                     # rows used (live + tombstoned)
    ids: list = field(default_factory=list)          # row -> doc id (None once removed)
    rows: dict = field(default_factory=dict)         # doc id -> row
    dead: set = field(default_factory=set)           # tombstoned rows
    hnsw: object | None = None     # faiss.IndexHNSWFlat once past the threshold
    params: object | None = None   # cached SearchParametersHNSW (with the tombstone selector)
    version: int = 0               # bumped by every rebuild: a deferred build of an older one is dropped

    @property
    def live(self) -> int:
        return len(self.rows)


class VectorIndex:
    """Per-partition nearest-neighbour search over unit vectors (cosine similarity)."""

    shared = False   # this process's own: SemanticCache rebuilds it at start and follows the store's events

    def __init__(self, *, hnsw_threshold: int = 2000, m: int = 32, ef_search: int = 64,
                 ef_construction: int = 80, max_tombstone_share: float = 0.2,
                 deferred_builds: bool = False) -> None:
        if hnsw_threshold < 1:
            raise ValueError("hnsw_threshold must be at least 1")
        self.hnsw_threshold = hnsw_threshold
        self.m = m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self.max_tombstone_share = max_tombstone_share
        self.deferred_builds = deferred_builds
        self._pending: set[str] = set()
        self._parts: dict[str, _Partition] = {}
        self._where: dict[str, str] = {}   # doc id -> partition
        self._lock = threading.RLock()

    def spawn(self) -> "VectorIndex":
        """An empty index with the same settings (rebuilds fill one off the event loop, then swap)."""
        return VectorIndex(hnsw_threshold=self.hnsw_threshold, m=self.m, ef_search=self.ef_search,
                           ef_construction=self.ef_construction, max_tombstone_share=self.max_tombstone_share,
                           deferred_builds=self.deferred_builds)

    # ---------------------------------------------------------------------------------- writes

    def add(self, partition: str, doc_id: str, vector) -> bool:
        """Index `vector` under `doc_id` in `partition`; False (and nothing changes) if already there."""
        with self._lock:
            if doc_id in self._where:
                return False
            part = self._parts.get(partition)
            v = _unit(vector, part.dim if part else None)
            if part is None:
                part = _Partition(dim=v.shape[0], vectors=np.empty((16, v.shape[0]), np.float32))
                self._parts[partition] = part
            if part.n == part.vectors.shape[0]:
                grown = np.empty((part.vectors.shape[0] * 2, part.dim), np.float32)
                grown[:part.n] = part.vectors[:part.n]
                part.vectors = grown
            row = part.n
            part.vectors[row] = v
            part.n += 1
            part.ids.append(doc_id)
            part.rows[doc_id] = row
            self._where[doc_id] = partition
            if part.hnsw is not None:
                part.hnsw.add(v.reshape(1, -1))
            elif part.live > self.hnsw_threshold:
                self._due(partition, part)
            return True

    def add_many(self, items: Iterable[tuple[str, str, object]]) -> int:
        """Bulk add of (partition, doc_id, vector); graphs are built once, at the end, inline
        (call it from a worker thread for big loads)."""
        added = 0
        with self._lock:
            saved, self.hnsw_threshold = self.hnsw_threshold, 1 << 62   # defer the HNSW builds
            try:
                for partition, doc_id, vector in items:
                    added += self.add(partition, doc_id, vector)
            finally:
                self.hnsw_threshold = saved
            for name, part in self._parts.items():
                if part.hnsw is None and part.live > self.hnsw_threshold:
                    self._rebuild(part)
                    self._pending.discard(name)
        return added

    def remove(self, doc_id: str) -> bool:
        """Forget `doc_id` (in whatever partition); False when it was not indexed."""
        with self._lock:
            partition = self._where.pop(doc_id, None)
            if partition is None:
                return False
            part = self._parts[partition]
            row = part.rows.pop(doc_id)
            part.ids[row] = None
            part.dead.add(row)
            part.params = None
            if part.live == 0:
                del self._parts[partition]
                self._pending.discard(partition)
            elif len(part.dead) > self.max_tombstone_share * part.n and len(part.dead) >= 8:
                if part.hnsw is None and part.live <= self.hnsw_threshold:
                    self._rebuild(part)   # compacting a small matrix is cheap: always inline
                else:
                    self._due(partition, part)
            return True

    def clear(self, partition: str | None = None) -> int:
        """Drop one partition (or every one); returns how many vectors were dropped."""
        with self._lock:
            names = list(self._parts) if partition is None else [partition]
            dropped = 0
            for name in names:
                part = self._parts.pop(name, None)
                self._pending.discard(name)
                if part is None:
                    continue
                dropped += part.live
                for doc_id in part.rows:
                    self._where.pop(doc_id, None)
            return dropped

    def compact(self, partition: str | None = None) -> None:
        """Rebuild partitions that hold tombstones (all of them when `partition` is None), inline."""
        with self._lock:
            for name in list(self._parts) if partition is None else [partition]:
                part = self._parts.get(name)
                if part is not None and part.dead:
                    self._rebuild(part)
                    self._pending.discard(name)

    def _due(self, name: str, part: _Partition) -> None:
        if self.deferred_builds:
            self._pending.add(name)
        else:
            self._rebuild(part)

    def pending(self) -> bool:
        """Whether some partition waits for `maintain()` (deferred builds only)."""
        return bool(self._pending)

    def maintain(self) -> int:
        """Build every pending partition's graph off the lock and swap it in; returns how many.

        Meant for a worker thread. Adds and removes made during a build are applied to the new
        graph before the swap; a partition cleared or rebuilt meanwhile keeps its newer state."""
        built = 0
        while True:
            with self._lock:
                if not self._pending:
                    return built
                name = self._pending.pop()
                part = self._parts.get(name)
                if part is None:
                    continue
                snapshot = self._snapshot(part)
            graph = self._build(snapshot[3]) if len(snapshot[1]) > self.hnsw_threshold else None
            with self._lock:
                if self._install(part, snapshot, graph) and self._parts.get(name) is part:
                    built += 1

    def _snapshot(self, part: _Partition) -> tuple:
        rows = np.fromiter(sorted(part.rows.values()), dtype=np.int64, count=len(part.rows))
        ids = [part.ids[r] for r in rows]
        return part.version, rows, ids, np.ascontiguousarray(part.vectors[rows]), part.n

    def _build(self, vectors: np.ndarray):
        import faiss

        index = faiss.IndexHNSWFlat(vectors.shape[1], self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.ef_search
        index.add(vectors)
        return index

    def _install(self, part: _Partition, snapshot: tuple, graph) -> bool:
        version, rows, ids, vectors, n0 = snapshot
        if part.version != version:
            return False
        # new rows: the snapshot's live rows in order, then every row added since (dead or alive,
        # so the graph's labels stay aligned with rows; dead ones become tombstones)
        since = part.vectors[n0:part.n]
        n = len(ids) + len(since)
        capacity = max(16, 1 << int(np.ceil(np.log2(max(n, 1) * 1.25))))
        matrix = np.empty((capacity, part.dim), np.float32)
        matrix[:len(ids)] = vectors
        matrix[len(ids):n] = since
        new_ids = [doc_id if part.rows.get(doc_id) == row else None for doc_id, row in zip(ids, rows.tolist())]
        new_ids += part.ids[n0:part.n]
        if graph is not None and len(since):
            graph.add(np.ascontiguousarray(since))
        part.vectors, part.n, part.ids = matrix, n, new_ids
        part.rows = {doc_id: i for i, doc_id in enumerate(new_ids) if doc_id is not None}
        part.dead = {i for i, doc_id in enumerate(new_ids) if doc_id is None}
        part.hnsw = graph
        part.params = None
        part.version += 1
        return True

    def _rebuild(self, part: _Partition) -> None:
        """Inline rebuild: compact to the live rows; a graph when past the threshold."""
        snapshot = self._snapshot(part)
        graph = self._build(snapshot[3]) if len(snapshot[1]) > self.hnsw_threshold else None
        self._install(part, snapshot, graph)

    # ---------------------------------------------------------------------------------- reads

    def search(self, partition: str, vector, k: int = 4) -> list[tuple[str, float]]:
        """Up to `k` (doc_id, cosine similarity) of `partition`, most similar first."""
        with self._lock:
            part = self._parts.get(partition)
            if part is None or k < 1:
                return []
            q = _unit(vector, part.dim)
            if part.hnsw is not None:
                return self._search_hnsw(part, q, k)
            sims = part.vectors[:part.n] @ q
            if part.dead:
                sims[list(part.dead)] = -np.inf
            k = min(k, part.live)
            top = np.argpartition(-sims, k - 1)[:k] if k < part.n else np.arange(part.n)
            top = top[np.argsort(-sims[top], kind="stable")]
            return [(part.ids[r], float(sims[r])) for r in top[:k] if part.ids[r] is not None]

    def _search_hnsw(self, part: _Partition, q: np.ndarray, k: int) -> list[tuple[str, float]]:
        import faiss

        if part.params is None:
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(self.ef_search, k)
            if part.dead:
                batch = faiss.IDSelectorBatch(np.fromiter(part.dead, dtype=np.int64, count=len(part.dead)))
                params.sel = faiss.IDSelectorNot(batch)
                params._refs = (batch, params.sel)   # keep the selectors alive with the params
            part.params = params
        sims, labels = part.hnsw.search(q.reshape(1, -1), min(k, part.live), params=part.params)
        return [(part.ids[r], float(s)) for r, s in zip(labels[0], sims[0])
                if r >= 0 and part.ids[r] is not None]

    def partition_of(self, doc_id: str) -> str | None:
        with self._lock:
            return self._where.get(doc_id)

    def ids(self, partition: str | None = None) -> list[str]:
        """Live doc ids (of one partition, or all)."""
        with self._lock:
            if partition is None:
                return list(self._where)
            part = self._parts.get(partition)
            return list(part.rows) if part else []

    def size(self, partition: str | None = None) -> int:
        """Live vectors in `partition` (or in all partitions)."""
        with self._lock:
            if partition is None:
                return len(self._where)
            part = self._parts.get(partition)
            return part.live if part else 0

    def uses_hnsw(self, partition: str) -> bool:
        with self._lock:
            part = self._parts.get(partition)
            return part is not None and part.hnsw is not None

    def tombstones(self, partition: str) -> int:
        with self._lock:
            part = self._parts.get(partition)
            return len(part.dead) if part else 0

    @property
    def partitions(self) -> int:
        return len(self._parts)

    def __repr__(self) -> str:
        return f"VectorIndex(partitions={len(self._parts)}, vectors={len(self._where)})"
