"""How fast is the semantic cache? Lookup latency, insert throughput, memory per entry, rebuild time.

For each size N (default 10,000 and 100,000; 1,000,000 is opt-in with ``--sizes``) it makes N
stored vectors and measures, all in one run and one partition (the worst case: one tenant, one
decision, everything in the same index):

* **build**: `VectorIndex.add_many` of the N vectors (the bulk HNSW build past the index's
  ``hnsw_threshold``; below it the index is an exact numpy search and there is no graph);
* **index only**: `VectorIndex.search` (k=4) latency for ``--queries`` queries, and the same
  queries by exact numpy brute force over the same float32 matrix (the baseline, so the ratio
  shows what the graph buys) -- top-1 recall is the share of queries where the index's first
  answer is the brute-force first answer;
* **SemanticCache.lookup**, memory store and (``--redis``, sizes up to ``--redis-max``) a Redis
  store on loopback: *miss* = exact GET miss + semantic search + no fetch (fresh vectors from the
  same distribution, threshold above any possible similarity, so no neighbour qualifies); *hit* =
  exact miss + search + fetch of the nearest neighbour's document (the noisy queries, threshold 0);
* **insert**: ``--inserts`` fresh entries through `SemanticCache.insert` into the cache already
  holding N (steady state: document put + single-vector add to the graph), per second;
* **memory**: RSS delta (``/proc/self/statm``, after ``gc.collect()``) of building the index and of
  filling a `MemoryDocumentStore` with N entries of ``--response-bytes`` each; Redis's own
  ``used_memory`` delta per entry (documents, LRU sets and the event stream) is reported too;
* **rebuild** (Redis): `SemanticCache.rebuild()` of a fresh cache from the N documents in Redis
  (SCAN of the embeddings + bulk build), the start-up cost of a new process with the in-process index.
* **vector engine** (``--engines faiss,qdrant``, the default when qdrant-client is installed): the
  same N vectors in a `QdrantVectorIndex` (cache/qdrant_index.py), the index every replica shares,
  measured beside FAISS in the same run: bulk load, ``search`` p50/p99 over ``--engine-queries``
  of the same queries, top-1 recall against the same exact answers, and *replica start-up*: open
  the existing collection, a `SemanticCache` over it ready (``sync()``) and the first lookup
  answered (FAISS's start-up is the Redis rebuild above). What runs is qdrant-client's **local
  mode**, the embedded engine the tests use: Python + numpy brute force over every point, with the
  partition filter checked point by point in Python, and on disk a SQLite file that opening loads
  whole. It shows the client path and exact recall, *not* a Qdrant server's speed: a server keeps
  HNSW graphs (per tenant with the ``is_tenant`` payload index the class creates), and a replica
  starting only connects. Local mode is slow, so it gets fewer queries (default 50) and the
  on-disk start-up runs up to ``--engine-disk-max`` entries (default 20,000: local mode writes
  each point to SQLite with its own commit, so 100,000 take minutes).

Vectors: ``--vectors clustered`` (default) draws unit vectors around ``--clusters`` random
centroids (cosine to the centroid ~0.7, between two members of a cluster ~0.5, between
clusters ~0, roughly like sentence embeddings); ``--vectors random`` draws uniform random unit
vectors, the worst case for HNSW. Queries are noisy copies of stored vectors (``--noise`` 0.33:
cosine ~0.95 to their source).

    python -m benchmarks.cache_speed
    python -m benchmarks.cache_speed --sizes 10000,100000,1000000 --json results/cache_speed.json
    python -m benchmarks.cache_speed --vectors random --no-redis

Redis: a private ``redis-server`` (no persistence) is started on a free loopback port and stopped
at the end; ``--redis-url`` uses an existing one instead (its database is FLUSHED).

The last line printed is the summary as one JSON line: ``lookup_p50_ms`` per size (index only;
null for the standard sizes not run), ``miss_cost_ms_redis`` (p50 at the largest Redis size),
``bytes_per_entry`` (index + memory store, largest size), and more (p99, insert/s, build and
rebuild seconds, recall, speed-up over brute force, targets met).
Targets (reported, not enforced): index lookup p50 < 1 ms at 100k entries in process; a miss
costs < 2 ms (on top of the embedding) with Redis on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np

from benchmarks.report import emit
from sigroute.cache.index import VectorIndex
from sigroute.cache.semantic import SemanticCache
from sigroute.cache.store import MemoryDocumentStore, RedisDocumentStore

ENGINES = ("faiss", "qdrant")

STANDARD_SIZES = (10_000, 100_000, 1_000_000)
TARGET_LOOKUP_MS_100K = 1.0
TARGET_MISS_MS_REDIS = 2.0
PARTITION = "bench"
CATEGORY = "bench"
TTL_S = 24 * 3600.0


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000", help="comma-separated entry counts (1000000 is opt-in)")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimensions")
    parser.add_argument("--queries", type=int, default=500, help="lookups timed per size and kind")
    parser.add_argument("--inserts", type=int, default=2000, help="SemanticCache.insert calls timed per size and store")
    parser.add_argument("--vectors", choices=("clustered", "random"), default="clustered")
    parser.add_argument("--clusters", type=int, default=300, help="centroids for --vectors clustered")
    parser.add_argument("--noise", type=float, default=0.33, help="query noise (relative norm) added to a stored vector")
    parser.add_argument("--response-bytes", type=int, default=1024, help="size of each cached answer")
    parser.add_argument("--redis", dest="redis", action="store_true", default=True, help="also measure a Redis store (default)")
    parser.add_argument("--no-redis", dest="redis", action="store_false", help="memory store only")
    parser.add_argument("--redis-max", type=int, default=100_000, help="largest size also run with Redis")
    parser.add_argument("--redis-url", default=None, help="use this Redis (its database is flushed) instead of a private one")
    parser.add_argument("--engines", default=None,
                        help="index backends: faiss, qdrant (default: both, qdrant when qdrant-client is installed)")
    parser.add_argument("--engine-queries", type=int, default=50, help="searches timed per size on the vector engine")
    parser.add_argument("--engine-disk-max", type=int, default=20_000,
                        help="largest size whose on-disk collection is built to time a replica's start-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="where to write the full result")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not args.sizes or min(args.sizes) < 10:
        parser.error("--sizes needs at least one size of 10 or more")
    if args.queries < 1 or args.inserts < 1 or args.dim < 2 or args.engine_queries < 1:
        parser.error("--queries, --inserts, --engine-queries must be >= 1 and --dim >= 2")
    if args.engines is None:
        try:
            import qdrant_client  # noqa: F401
            args.engines = ["faiss", "qdrant"]
        except ImportError:
            args.engines = ["faiss"]
    else:
        args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
        unknown = set(args.engines) - set(ENGINES)
        if unknown or "faiss" not in args.engines:
            parser.error(f"--engines takes faiss (always measured: the baseline) and qdrant, got {args.engines}")
    return args


# ------------------------------------------------------------------------------------------ data

class Vectors:
    """Deterministic generator of the stored vectors, the noisy queries and fresh (unstored) ones."""

    def __init__(self, kind: str, dim: int, clusters: int, seed: int) -> None:
        self.kind, self.dim = kind, dim
        rng = np.random.default_rng(seed)
        self.centroids = _normalize(rng.standard_normal((clusters, dim), dtype=np.float32)) if kind == "clustered" else None

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, 65536):
            m = min(65536, n - start)
            g = rng.standard_normal((m, self.dim), dtype=np.float32)
            if self.centroids is not None:
                # centroid + a spread of about the same norm: cos(member, centroid) ~ 0.71
                g *= 1.0 / np.sqrt(self.dim)
                g += self.centroids[rng.integers(0, len(self.centroids), m)]
            out[start:start + m] = _normalize(g)
        return out

    def noisy(self, base: np.ndarray, noise: float, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        g = rng.standard_normal(base.shape, dtype=np.float32) * (noise / np.sqrt(self.dim))
        return _normalize(base + g)


def _normalize(m: np.ndarray) -> np.ndarray:
    return (m / np.linalg.norm(m, axis=1, keepdims=True)).astype(np.float32, copy=False)


def _doc_id(i: int) -> str:
    return f"doc-{i:08d}"


def _response(i: int, size: int, base: bytes) -> bytes:
    tag = b'{"id":"' + str(i).encode() + b'"}'
    return base[:max(0, size - len(tag))] + tag    # a distinct object per entry (no shared payload)


# ------------------------------------------------------------------------------------------ measuring

def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _settled_rss() -> int | None:
    gc.collect()
    return _rss()


def _stats(samples_ns: list[int]) -> dict[str, float]:
    a = np.asarray(samples_ns, dtype=np.float64) / 1e6
    return {"p50_ms": round(float(np.percentile(a, 50)), 4), "p90_ms": round(float(np.percentile(a, 90)), 4),
            "p99_ms": round(float(np.percentile(a, 99)), 4), "mean_ms": round(float(a.mean()), 4), "n": len(a)}


def _exact_top1(stored: np.ndarray, queries: np.ndarray) -> np.ndarray:
    best = np.empty(len(queries), np.int64)
    for s in range(0, len(queries), 64):
        best[s:s + 64] = np.argmax(queries[s:s + 64] @ stored.T, axis=1)
    return best


# ------------------------------------------------------------------------------------------ Redis

@contextmanager
def private_redis() -> Iterator[str]:
    """A private redis-server on a free loopback port, without persistence; yields its URL."""
    from sigroute.gateway.serving import RedisServer, RedisServerError

    with tempfile.TemporaryDirectory(prefix="sigroute-bench-redis-") as workdir:
        try:
            server = RedisServer(workdir).__enter__()
        except RedisServerError as exc:
            raise SystemExit(f"error: {exc}; or pass --redis-url redis://HOST:PORT/DB, or run with --no-redis")
        try:
            yield server.url
        finally:
            server.__exit__()


async def _redis_used_memory(store: RedisDocumentStore) -> int:
    info = await store._redis.info("memory")
    return int(info["used_memory"])


# ------------------------------------------------------------------------------------------ one size

async def _time_lookups(cache: SemanticCache, queries: np.ndarray, threshold: float,
                        expect: np.ndarray | None) -> dict[str, Any]:
    samples, hits, right = [], 0, 0
    for i, q in enumerate(queries):
        t0 = time.perf_counter_ns()
        hit = await cache.lookup(PARTITION, f"absent-{i}", q, threshold=threshold)
        samples.append(time.perf_counter_ns() - t0)
        if hit is not None:
            hits += 1
            right += expect is not None and hit.entry.doc_id == _doc_id(int(expect[i]))
    out = _stats(samples)
    out["hits"] = hits
    if expect is not None:
        out["hit_is_exact_top1"] = round(right / len(queries), 4)
    return out


async def _time_inserts(cache: SemanticCache, fresh: np.ndarray, first_id: int, response_bytes: int,
                        base: bytes) -> dict[str, Any]:
    samples = []
    t_start = time.perf_counter()
    for j, v in enumerate(fresh):
        i = first_id + j
        t0 = time.perf_counter_ns()
        ok = await cache.insert(partition=PARTITION, exact_key=_doc_id(i), response=_response(i, response_bytes, base),
                                category=CATEGORY, ttl_s=TTL_S, embedding=v)
        samples.append(time.perf_counter_ns() - t0)
        if not ok:
            raise RuntimeError(f"SemanticCache.insert failed (counters: {cache.counters})")
    wall = time.perf_counter() - t_start
    out = _stats(samples)
    out["per_s"] = round(len(fresh) / wall, 1)
    return out


async def run_size(n: int, args, gen: Vectors, redis_url: str | None, log) -> dict[str, Any]:
    res: dict[str, Any] = {"n": n}
    base = (b'{"choices":[{"message":{"content":"' + b"x" * args.response_bytes)
    t0 = time.perf_counter()
    stored = gen.draw(n, seed=args.seed * 1000 + 1)
    sources = np.random.default_rng(args.seed + 2).integers(0, n, args.queries)
    queries = gen.noisy(stored[sources], args.noise, seed=args.seed + 3)
    misses = gen.draw(args.queries, seed=args.seed * 1000 + 4)
    fresh = gen.draw(args.inserts, seed=args.seed * 1000 + 5)
    truth = _exact_top1(stored, queries)
    res["data_s"] = round(time.perf_counter() - t0, 2)
    res["queries_exact_top1_is_source"] = round(float((truth == sources).mean()), 4)
    res["query_cosine_to_source_mean"] = round(float(np.einsum("ij,ij->i", queries, stored[sources]).mean()), 4)
    log(f"[{n}] vectors ready in {res['data_s']} s; exact top-1 is the query's source for "
        f"{res['queries_exact_top1_is_source']:.1%} of queries")

    # -- index: bulk build + memory
    rss0 = _settled_rss()
    index = VectorIndex()
    t0 = time.perf_counter()
    index.add_many((PARTITION, _doc_id(i), stored[i]) for i in range(n))
    res["build_s"] = round(time.perf_counter() - t0, 2)
    res["hnsw"] = index.uses_hnsw(PARTITION)
    rss1 = _settled_rss()
    log(f"[{n}] index built in {res['build_s']} s ({'HNSW' if res['hnsw'] else 'exact numpy'})")

    # -- index only vs brute force
    samples, agree = [], 0
    for i, q in enumerate(queries):
        t0 = time.perf_counter_ns()
        found = index.search(PARTITION, q, 4)
        samples.append(time.perf_counter_ns() - t0)
        agree += bool(found) and found[0][0] == _doc_id(int(truth[i]))
    res["index_search"] = _stats(samples)
    res["index_search"]["recall_top1"] = round(agree / len(queries), 4)
    samples = []
    for q in queries:
        t0 = time.perf_counter_ns()
        v = q / np.linalg.norm(q)
        sims = stored @ v
        top = np.argpartition(-sims, 3)[:4]
        top[np.argsort(-sims[top])]
        samples.append(time.perf_counter_ns() - t0)
    res["brute_force"] = _stats(samples)
    res["brute_over_index_p50"] = round(res["brute_force"]["p50_ms"] / max(res["index_search"]["p50_ms"], 1e-9), 2)
    log(f"[{n}] index search p50 {res['index_search']['p50_ms']} ms p99 {res['index_search']['p99_ms']} ms, "
        f"recall@1 {res['index_search']['recall_top1']}; brute force p50 {res['brute_force']['p50_ms']} ms "
        f"({res['brute_over_index_p50']}x)")

    # -- memory store: fill, memory, lookups, inserts
    mem = SemanticCache(MemoryDocumentStore(), index)
    for i in range(n):
        await mem.store.put(_entry(i, stored[i], args.response_bytes, base), TTL_S)
    rss2 = _settled_rss()
    if rss0 is not None:
        res["memory"] = {"method": "RSS delta after gc.collect() (/proc/self/statm)",
                         "index_bytes_per_entry": round((rss1 - rss0) / n),
                         "memory_store_bytes_per_entry": round((rss2 - rss1) / n),
                         "bytes_per_entry": round((rss2 - rss0) / n),
                         "response_bytes": args.response_bytes}
    res["memory_lookup_miss"] = await _time_lookups(mem, misses, 1.5, None)
    res["memory_lookup_hit"] = await _time_lookups(mem, queries, 0.0, truth)
    res["memory_insert"] = await _time_inserts(mem, fresh, n, args.response_bytes, base)
    log(f"[{n}] memory store: miss p50 {res['memory_lookup_miss']['p50_ms']} ms, hit p50 "
        f"{res['memory_lookup_hit']['p50_ms']} ms, insert {res['memory_insert']['per_s']}/s, "
        f"{res.get('memory', {}).get('bytes_per_entry')} B/entry")
    await mem.aclose()
    del mem, index
    gc.collect()

    # -- the shared vector engine, same vectors and queries
    if "qdrant" in args.engines:
        res["qdrant"] = await _run_qdrant(n, args, stored, queries, truth, log)

    # -- Redis: fill, rebuild, lookups, inserts
    if redis_url is not None and n <= args.redis_max:
        res["redis"] = await _run_redis(n, args, stored, queries, truth, misses, fresh, base, redis_url, log)
    return res


async def _run_qdrant(n, args, stored, queries, truth, log) -> dict[str, Any]:
    from sigroute.cache.qdrant_index import QdrantVectorIndex

    out: dict[str, Any] = {"mode": "qdrant-client local mode (embedded, brute force; not a Qdrant server)"}
    index = QdrantVectorIndex(location=":memory:")
    t0 = time.perf_counter()
    index.add_many((PARTITION, _doc_id(i), stored[i]) for i in range(n))
    out["build_s"] = round(time.perf_counter() - t0, 2)
    m = min(args.engine_queries, len(queries))
    samples, agree = [], 0
    for i in range(m):
        t0 = time.perf_counter_ns()
        found = index.search(PARTITION, queries[i], 4)
        samples.append(time.perf_counter_ns() - t0)
        agree += bool(found) and found[0][0] == _doc_id(int(truth[i]))
    out["search"] = _stats(samples)
    out["search"]["recall_top1"] = round(agree / m, 4)
    index.close()
    del index
    gc.collect()
    log(f"[{n}] qdrant (local mode): loaded in {out['build_s']} s, search p50 {out['search']['p50_ms']} ms "
        f"p99 {out['search']['p99_ms']} ms over {m} queries, recall@1 {out['search']['recall_top1']}")

    # replica start-up: the collection exists (on disk); open it and answer the first lookup
    out["startup_s"] = None
    if n <= args.engine_disk_max:
        with tempfile.TemporaryDirectory(prefix="sigroute-bench-qdrant-") as folder:
            writer = QdrantVectorIndex(path=folder)
            t0 = time.perf_counter()
            writer.add_many(((PARTITION, _doc_id(i), stored[i]) for i in range(n)), batch=2048)
            out["disk_build_s"] = round(time.perf_counter() - t0, 2)
            writer.close()
            t0 = time.perf_counter()
            reader = QdrantVectorIndex(path=folder)
            cache = SemanticCache(MemoryDocumentStore(), reader)
            await cache.sync()   # a shared index: nothing to rebuild or replay
            await cache.lookup(PARTITION, "absent", queries[0], threshold=1.5)
            out["startup_s"] = round(time.perf_counter() - t0, 3)
            out["startup_rebuilds"] = cache.counters["rebuilds"]
            await cache.aclose()
            reader.close()
        log(f"[{n}] qdrant (local mode, on disk): written in {out['disk_build_s']} s; a replica opens it and "
            f"answers its first lookup in {out['startup_s']} s")
    else:
        out["startup_skipped"] = f"size above --engine-disk-max {args.engine_disk_max}"
    return out


def _entry(i: int, v: np.ndarray, response_bytes: int, base: bytes):
    from sigroute.cache.store import CacheEntry

    return CacheEntry(doc_id=_doc_id(i), partition=PARTITION, category=CATEGORY,
                      response=_response(i, response_bytes, base), embedding=v)


async def _run_redis(n, args, stored, queries, truth, misses, fresh, base, redis_url, log) -> dict[str, Any]:
    out: dict[str, Any] = {}
    store = RedisDocumentStore(redis_url, socket_timeout=10, connect_timeout=5)
    await store._redis.flushdb()
    used0 = await _redis_used_memory(store)
    t0 = time.perf_counter()
    window = 32
    for start in range(0, n, window):
        await asyncio.gather(*(store.put(_entry(i, stored[i], args.response_bytes, base), TTL_S)
                               for i in range(start, min(n, start + window))))
    out["bulk_load_s"] = round(time.perf_counter() - t0, 2)
    out["used_memory_bytes_per_entry"] = round((await _redis_used_memory(store) - used0) / n)
    await store.aclose()

    cache = SemanticCache(RedisDocumentStore(redis_url, socket_timeout=10, connect_timeout=5))
    t0 = time.perf_counter()
    size = await cache.rebuild()
    out["rebuild_s"] = round(time.perf_counter() - t0, 2)
    if size != n:
        raise RuntimeError(f"rebuild from Redis indexed {size} vectors, expected {n}")
    log(f"[{n}] Redis: loaded in {out['bulk_load_s']} s ({out['used_memory_bytes_per_entry']} B/entry in Redis), "
        f"SemanticCache.rebuild() in {out['rebuild_s']} s")
    out["lookup_miss"] = await _time_lookups(cache, misses, 1.5, None)
    out["lookup_hit"] = await _time_lookups(cache, queries, 0.0, truth)
    out["insert"] = await _time_inserts(cache, fresh, n, args.response_bytes, base)
    log(f"[{n}] Redis store: miss p50 {out['lookup_miss']['p50_ms']} ms p99 {out['lookup_miss']['p99_ms']} ms, "
        f"hit p50 {out['lookup_hit']['p50_ms']} ms, insert {out['insert']['per_s']}/s")
    await cache.store._redis.flushdb()
    await cache.aclose()
    return out


# ------------------------------------------------------------------------------------------ main

def summarize(per_size: list[dict[str, Any]], args) -> dict[str, Any]:
    by = {r["n"]: r for r in per_size}
    keys = sorted(set(STANDARD_SIZES) | set(by))
    largest = by[max(by)]
    redis_runs = [r for r in per_size if "redis" in r]
    rr = redis_runs[-1] if redis_runs else None
    miss = rr["redis"]["lookup_miss"]["p50_ms"] if rr else None
    p100k = by[100_000]["index_search"]["p50_ms"] if 100_000 in by else None
    return {
        "vectors": args.vectors,
        "dim": args.dim,
        "lookup_p50_ms": {str(k): by[k]["index_search"]["p50_ms"] if k in by else None for k in keys},
        "lookup_p99_ms": {str(k): by[k]["index_search"]["p99_ms"] if k in by else None for k in keys},
        "recall_top1": {str(k): by[k]["index_search"]["recall_top1"] if k in by else None for k in keys},
        "brute_force_p50_ms": {str(k): by[k]["brute_force"]["p50_ms"] if k in by else None for k in keys},
        "build_s": {str(k): by[k]["build_s"] if k in by else None for k in keys},
        "memory_lookup_miss_p50_ms": largest["memory_lookup_miss"]["p50_ms"],
        "memory_lookup_hit_p50_ms": largest["memory_lookup_hit"]["p50_ms"],
        "insert_per_s_memory": largest["memory_insert"]["per_s"],
        "bytes_per_entry": largest.get("memory", {}).get("bytes_per_entry"),
        "index_bytes_per_entry": largest.get("memory", {}).get("index_bytes_per_entry"),
        "size": largest["n"],
        "redis_size": rr["n"] if rr else None,
        "miss_cost_ms_redis": miss,
        "miss_cost_p99_ms_redis": rr["redis"]["lookup_miss"]["p99_ms"] if rr else None,
        "hit_cost_ms_redis": rr["redis"]["lookup_hit"]["p50_ms"] if rr else None,
        "insert_per_s_redis": rr["redis"]["insert"]["per_s"] if rr else None,
        "rebuild_s": rr["redis"]["rebuild_s"] if rr else None,
        "engines": list(args.engines),
        "lookup_p50_ms_by_backend": _by_backend(by, keys, args, "p50_ms"),
        "lookup_p99_ms_by_backend": _by_backend(by, keys, args, "p99_ms"),
        "recall_top1_by_backend": _by_backend(by, keys, args, "recall_top1"),
        "startup_s_by_backend": {
            "faiss": {str(k): by[k]["redis"]["rebuild_s"] if k in by and "redis" in by[k] else None for k in keys},
            **({"qdrant_local": {str(k): by[k]["qdrant"]["startup_s"] if k in by else None for k in keys}}
               if "qdrant" in args.engines else {})},
        "targets_met": {"lookup_p50_100k_lt_1ms": None if p100k is None else p100k < TARGET_LOOKUP_MS_100K,
                        "miss_redis_lt_2ms": None if miss is None else miss < TARGET_MISS_MS_REDIS},
    }


def _by_backend(by: dict, keys: list[int], args, stat: str) -> dict[str, dict[str, Any]]:
    out = {"faiss": {str(k): by[k]["index_search"][stat] if k in by else None for k in keys}}
    if "qdrant" in args.engines:
        out["qdrant_local"] = {str(k): by[k]["qdrant"]["search"][stat] if k in by else None for k in keys}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    gen = Vectors(args.vectors, args.dim, args.clusters, args.seed)
    per_size: list[dict[str, Any]] = []

    async def run_all(url: str | None) -> None:
        for n in args.sizes:
            per_size.append(await run_size(n, args, gen, url, log))

    t0 = time.perf_counter()
    if args.redis and args.redis_url:
        asyncio.run(run_all(args.redis_url))
    elif args.redis:
        with private_redis() as url:
            asyncio.run(run_all(url))
    else:
        asyncio.run(run_all(None))
    idx = VectorIndex()
    try:
        import faiss
        threads = faiss.omp_get_max_threads()
    except Exception:  # noqa: BLE001
        threads = None
    result = {
        "benchmark": "cache_speed",
        "summary": summarize(per_size, args),
        "config": {"sizes": args.sizes, "dim": args.dim, "queries": args.queries, "inserts": args.inserts,
                   "vectors": args.vectors, "clusters": args.clusters if args.vectors == "clustered" else None,
                   "noise": args.noise, "response_bytes": args.response_bytes, "redis": args.redis,
                   "redis_max": args.redis_max, "seed": args.seed, "partitions": 1, "k": 4,
                   "engines": args.engines, "engine_queries": args.engine_queries,
                   "engine_disk_max": args.engine_disk_max,
                   "hnsw": {"threshold": idx.hnsw_threshold, "m": idx.m, "ef_search": idx.ef_search,
                            "ef_construction": idx.ef_construction},
                   "cpus": os.cpu_count(), "faiss_threads": threads, "python": platform.python_version(),
                   "targets": {"lookup_p50_ms_100k": TARGET_LOOKUP_MS_100K, "miss_ms_redis": TARGET_MISS_MS_REDIS}},
        "per_size": per_size,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
