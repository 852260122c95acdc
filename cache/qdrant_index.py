"""The semantic cache's vector index on Qdrant: one index shared by every replica.

`QdrantVectorIndex` offers the methods `SemanticCache` uses of the in-process `VectorIndex`
(``add``, ``add_many``, ``remove``, ``search``, ``clear``, ``size``, ``ids``, ``partition_of``,
``pending``, ``maintain``) with the same meaning, but keeps the vectors in a Qdrant collection
instead of this process's memory. Every replica pointed at the same Qdrant server sees the same
index, so no replica holds the whole index, rebuilds it at start or replays the document store's
event stream into it: the class says ``shared = True`` and `SemanticCache` then skips both (a
replica is ready as soon as it can reach Qdrant).

Where Qdrant runs (one of):

* ``url="http://qdrant:6333"``: a Qdrant server (or cluster). Its collections are HNSW graphs
  (``m``, ``ef_construct`` below; searches use ``hnsw_ef``), shared by every replica.
* ``path="/var/lib/sigroute/qdrant"``: qdrant-client's *local mode*, an embedded store on disk
  with the same client API. It is brute force (numpy over every vector of the collection, no
  graph), and one process at a time may open a path: meant for tests and a single replica.
* ``location=":memory:"``: local mode in memory (tests).
* ``client=``: an existing ``QdrantClient`` (two indexes in one process sharing a local-mode
  store pass the same client, since local mode locks its path to one client).

Isolation: one collection holds every partition, and each point carries its partition in the
payload; every search is filtered on it *inside this class* (`search(partition, ...)` cannot be
called without one, and no other method searches). One collection rather than one per partition
because partitions are many and small (tenant x decision x models x system prompt x parameters:
thousands on a busy gateway) and Qdrant's guidance for many tenants is one collection with a
``is_tenant`` keyword payload index on the tenant field (on a server it co-locates each tenant's
points and builds per-tenant graphs, so the filter is cheap); thousands of collections each carry
their own segments, WAL and graph. The payload index is created on a server; local mode has none
(it logs that payload indexes have no effect there).

Points: Qdrant ids must be integers or UUIDs, so a doc id (any string) maps to the UUID-5 of it;
the payload keeps ``doc_id`` and ``partition``. As in `VectorIndex`: vectors are checked
(dimensions, NaN/infinity, zero vector: the same `ValueError` messages) and normalized; similarity
is the cosine (collection distance ``Cosine``), in [-1, 1]; ``add`` of a doc id already there is a
no-op that returns False (one extra lookup by id; the id is the hash of partition +
conversation, so the same id always carries the same vector); ``remove`` of an unknown id returns
False. The dimension is the collection's: set by the first ``add`` (or read from an existing
collection), and ``clear()`` of everything drops the collection so that another encoder may
start afresh (a replica that finds the collection gone treats the index as empty).

Failures: a Qdrant that cannot be reached raises `StoreUnavailable` (as the Redis store does), so
`SemanticCache` serves requests without the cache and backs off for its cooldown. The calls are
blocking; `SemanticCache` makes them from a worker thread for a shared index, so the event loop
never waits on the network. Local mode is not thread-safe, so there every call takes one lock.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any, Iterable

import numpy as np

from sigroute.cache.index import _unit
from sigroute.cache.store import StoreUnavailable

__all__ = ["QdrantVectorIndex", "open_vector_index"]

DEFAULT_COLLECTION = "sigroute-cache"
_ID_NAMESPACE = uuid.UUID("6f1c2a5e-93c4-4f0e-9a59-0d4f3e1b7c21")   # doc id -> point id (UUID-5)
_SCROLL_PAGE = 1000


def _point_id(doc_id: str) -> str:
    return str(uuid.uuid5(_ID_NAMESPACE, doc_id))


def _qdrant():
    try:
        import qdrant_client
        from qdrant_client import models
    except ImportError as exc:  # the optional extra is missing
        raise RuntimeError("the qdrant cache index needs qdrant-client: pip install 'sigroute[qdrant]'") from exc
    return qdrant_client, models


class QdrantVectorIndex:
    """Per-partition nearest-neighbour search over unit vectors (cosine), kept in Qdrant."""

    shared = True   # SemanticCache: never rebuild it from the store nor replay events into it

    def __init__(self, *, url: str | None = None, path: str | None = None, location: str | None = None,
                 client: Any = None, collection: str = DEFAULT_COLLECTION, api_key: str | None = None,
                 timeout_s: float = 5.0, m: int = 32, ef_construct: int = 100, ef_search: int = 64) -> None:
        given = [name for name, value in (("url", url), ("path", path), ("location", location), ("client", client))
                 if value is not None]
        if len(given) != 1:
            raise ValueError("QdrantVectorIndex needs exactly one of url (a Qdrant server), path (local mode "
                             f"on disk), location=':memory:' or client; got {', '.join(given) or 'none'}")
        qdrant_client, self._models = _qdrant()
        if client is None:
            if url is not None:
                client = qdrant_client.QdrantClient(url=url, api_key=api_key, timeout=max(1, round(timeout_s)),
                                                    check_compatibility=False)
            elif path is not None:
                client = qdrant_client.QdrantClient(path=path)
            else:
                client = qdrant_client.QdrantClient(location=location)
        self.client = client
        self.local = type(getattr(client, "_client", None)).__name__ == "QdrantLocal"
        self.where = url or path or location or ("local client" if self.local else "client")
        self.collection = collection
        self.m, self.ef_construct, self.ef_search = m, ef_construct, ef_search
        self._dim: int | None = None
        # local mode is plain Python over numpy and sqlite: one call at a time; a server client is thread-safe
        self._lock: threading.RLock | None = threading.RLock() if self.local else None

    # ---------------------------------------------------------------------------------- plumbing

    def _call(self, operation: str, fn, *args, **kwargs):
        """One client call: under the local-mode lock; a connection failure becomes StoreUnavailable."""
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        try:
            if self._lock is None:
                return fn(*args, **kwargs)
            with self._lock:
                return fn(*args, **kwargs)
        except ResponseHandlingException as exc:   # could not connect, timed out, broken response
            raise StoreUnavailable(f"qdrant at {self.where} unavailable during {operation}: {exc}") from exc
        except UnexpectedResponse as exc:
            if exc.status_code is not None and exc.status_code >= 500:
                raise StoreUnavailable(f"qdrant at {self.where} failed {operation}: {exc}") from exc
            raise
        except (ConnectionError, TimeoutError) as exc:
            raise StoreUnavailable(f"qdrant at {self.where} unavailable during {operation}: {exc}") from exc

    @staticmethod
    def _missing(exc: BaseException) -> bool:
        """Whether `exc` says the collection does not exist (dropped by some replica's clear())."""
        status = getattr(exc, "status_code", None)
        return status == 404 or (isinstance(exc, ValueError) and "not found" in str(exc).lower())

    def _known_dim(self) -> int | None:
        """The collection's dimension (None: no collection yet); read from Qdrant when not cached."""
        if self._dim is None and self._call("collection_exists", self.client.collection_exists, self.collection):
            info = self._call("get_collection", self.client.get_collection, self.collection)
            self._dim = int(info.config.params.vectors.size)
        return self._dim

    def _ensure_collection(self, dim: int) -> None:
        models = self._models
        if self._known_dim() is not None:
            return
        try:
            self._call("create_collection", self.client.create_collection, self.collection,
                       vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                       hnsw_config=models.HnswConfigDiff(m=self.m, ef_construct=self.ef_construct))
        except Exception:  # noqa: BLE001 - another replica created it first: use theirs
            if self._known_dim() is None:
                raise
            return
        if not self.local:   # local mode has no payload indexes (and says so)
            self._call("create_payload_index", self.client.create_payload_index, self.collection, "partition",
                       field_schema=models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=True))
        self._dim = dim

    def _partition_filter(self, partition: str):
        models = self._models
        return models.Filter(must=[models.FieldCondition(key="partition", match=models.MatchValue(value=partition))])

    def _point(self, partition: str, doc_id: str, vector: np.ndarray):
        return self._models.PointStruct(id=_point_id(doc_id), vector=vector.tolist(),
                                        payload={"doc_id": doc_id, "partition": partition})

    # ---------------------------------------------------------------------------------- writes

    def add(self, partition: str, doc_id: str, vector) -> bool:
        """Index `vector` under `doc_id` in `partition`; False (and nothing changes) if already there."""
        for attempt in (1, 2):
            v = _unit(vector, self._known_dim())
            self._ensure_collection(v.shape[0])
            try:
                if self._call("retrieve", self.client.retrieve, self.collection, [_point_id(doc_id)],
                              with_payload=False, with_vectors=False):
                    return False
                self._call("upsert", self.client.upsert, self.collection, [self._point(partition, doc_id, v)],
                           wait=True)
                return True
            except Exception as exc:
                if attempt == 2 or not self._missing(exc):
                    raise
                self._dim = None   # another replica cleared everything: create the collection anew
        return False

    def add_many(self, items: Iterable[tuple[str, str, object]], batch: int = 512) -> int:
        """Bulk add of (partition, doc_id, vector), `batch` points per request; returns how many were new."""
        added = 0
        chunk: list[tuple[str, str, np.ndarray]] = []

        def flush() -> int:
            ids = [_point_id(doc_id) for _, doc_id, _ in chunk]
            have = {str(r.id) for r in self._call("retrieve", self.client.retrieve, self.collection, ids,
                                                  with_payload=False, with_vectors=False)}
            fresh, seen = [], set()
            for (partition, doc_id, v), pid in zip(chunk, ids):
                if pid not in have and pid not in seen:
                    seen.add(pid)
                    fresh.append(self._point(partition, doc_id, v))
            if fresh:
                self._call("upsert", self.client.upsert, self.collection, fresh, wait=True)
            chunk.clear()
            return len(fresh)

        for partition, doc_id, vector in items:
            v = _unit(vector, self._known_dim())
            self._ensure_collection(v.shape[0])
            chunk.append((partition, doc_id, v))
            if len(chunk) >= batch:
                added += flush()
        if chunk:
            added += flush()
        return added

    def remove(self, doc_id: str) -> bool:
        """Forget `doc_id` (in whatever partition); False when it was not indexed."""
        models = self._models
        pid = _point_id(doc_id)
        try:
            if not self._call("retrieve", self.client.retrieve, self.collection, [pid],
                              with_payload=False, with_vectors=False):
                return False
            self._call("delete", self.client.delete, self.collection,
                       points_selector=models.PointIdsList(points=[pid]), wait=True)
        except Exception as exc:
            if self._missing(exc):
                self._dim = None
                return False
            raise
        return True

    def clear(self, partition: str | None = None) -> int:
        """Drop one partition's vectors (or the whole collection); returns how many were dropped."""
        models = self._models
        try:
            if self._known_dim() is None:
                return 0
            dropped = self.size(partition)
            if partition is None:
                self._call("delete_collection", self.client.delete_collection, self.collection)
                self._dim = None
            else:
                self._call("delete", self.client.delete, self.collection,
                           points_selector=models.FilterSelector(filter=self._partition_filter(partition)), wait=True)
        except Exception as exc:
            if self._missing(exc):
                self._dim = None
                return 0
            raise
        return dropped

    def pending(self) -> bool:
        """Always False: Qdrant maintains its own graphs."""
        return False

    def maintain(self) -> int:
        return 0

    # ---------------------------------------------------------------------------------- reads

    def search(self, partition: str, vector, k: int = 4) -> list[tuple[str, float]]:
        """Up to `k` (doc_id, cosine similarity) of `partition`, most similar first."""
        if k < 1:
            return []
        try:
            dim = self._known_dim()
            if dim is None:
                return []
            q = _unit(vector, dim)
            found = self._call("query_points", self.client.query_points, self.collection, query=q.tolist(),
                               query_filter=self._partition_filter(partition), limit=k, with_payload=["doc_id"],
                               search_params=None if self.local else self._models.SearchParams(
                                   hnsw_ef=max(self.ef_search, k)))
        except Exception as exc:
            if self._missing(exc):
                self._dim = None
                return []
            raise
        return [(p.payload["doc_id"], float(p.score)) for p in found.points]

    def partition_of(self, doc_id: str) -> str | None:
        try:
            if self._known_dim() is None:
                return None
            found = self._call("retrieve", self.client.retrieve, self.collection, [_point_id(doc_id)],
                               with_payload=["partition"], with_vectors=False)
        except Exception as exc:
            if self._missing(exc):
                self._dim = None
                return None
            raise
        return found[0].payload["partition"] if found else None

    def ids(self, partition: str | None = None) -> list[str]:
        """Live doc ids (of one partition, or all): a scroll through the collection."""
        out: list[str] = []
        try:
            if self._known_dim() is None:
                return out
            offset = None
            flt = None if partition is None else self._partition_filter(partition)
            while True:
                records, offset = self._call("scroll", self.client.scroll, self.collection, scroll_filter=flt,
                                             limit=_SCROLL_PAGE, offset=offset, with_payload=["doc_id"],
                                             with_vectors=False)
                out.extend(r.payload["doc_id"] for r in records)
                if offset is None:
                    return out
        except Exception as exc:
            if self._missing(exc):
                self._dim = None
                return []
            raise

    def ids_page(self, offset: Any = None, limit: int = _SCROLL_PAGE) -> tuple[list[str], Any]:
        """Up to `limit` live doc ids from `offset` (None: the start) and the offset of the next
        page (None: that was the last), for walking a big collection a slice at a time."""
        try:
            if self._known_dim() is None:
                return [], None
            records, following = self._call("scroll", self.client.scroll, self.collection, limit=limit,
                                             offset=offset, with_payload=["doc_id"], with_vectors=False)
        except Exception as exc:
            if self._missing(exc):
                self._dim = None
                return [], None
            raise
        return [r.payload["doc_id"] for r in records], following

    def size(self, partition: str | None = None) -> int:
        """Live vectors in `partition` (or in all partitions)."""
        try:
            if self._known_dim() is None:
                return 0
            flt = None if partition is None else self._partition_filter(partition)
            return int(self._call("count", self.client.count, self.collection, count_filter=flt, exact=True).count)
        except Exception as exc:
            if self._missing(exc):
                self._dim = None
                return 0
            raise

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"QdrantVectorIndex({self.where!r}, collection={self.collection!r})"


def open_vector_index(engine: str = "faiss", *, url: str | None = None, path: str | None = None,
                      collection: str = DEFAULT_COLLECTION, api_key: str | None = None, timeout_s: float = 5.0):
    """The semantic cache's index for a server's `cache_index` setting: the in-process FAISS
    `VectorIndex` (default; each replica holds, rebuilds and follows its own) or a shared Qdrant one."""
    if engine == "faiss":
        from sigroute.cache.index import VectorIndex

        return VectorIndex(deferred_builds=True)
    if engine == "qdrant":
        return QdrantVectorIndex(url=url, path=path, collection=collection, api_key=api_key, timeout_s=timeout_s)
    raise ValueError(f"unknown cache index engine {engine!r}; use faiss or qdrant")
