"""The cache's library layer: isolation keys, the vector index, document stores, the semantic cache
and single flight. Stores run against memory and a real redis-server (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sigroute.cache.index import VectorIndex
from sigroute.cache.keys import exact_key, partition_key
from sigroute.cache.semantic import SemanticCache, SingleFlight
from sigroute.cache.store import DocumentStore, MemoryDocumentStore, RedisDocumentStore
from tests.conftest import free_port
from tests.redis_cluster import (clean_cluster_url, clean_valkey_cluster_url, clean_valkey_url,  # noqa: F401
                                 cluster, valkey_cluster, valkey_url)                            # (fixtures)

ROOT = Path(__file__).resolve().parents[1]
DIM = 32


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(v: np.ndarray, cos: float, seed: int = 99) -> np.ndarray:
    """A unit vector at cosine similarity `cos` from unit vector `v`."""
    r = np.random.default_rng(seed).standard_normal(v.shape[0]).astype(np.float32)
    r -= r.dot(v) * v
    r /= np.linalg.norm(r)
    return (cos * v + np.sqrt(1 - cos * cos) * r).astype(np.float32)


def part(tenant: str = "acme", **overrides) -> str:
    args = dict(tenant=tenant, decision="default", models=["a", "b"], system_prompt="Be brief.",
                params={"temperature": 0.2}, stream=False)
    args.update(overrides)
    return partition_key(**args)


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# The Redis-backed stores run against one redis-server, one valkey-server, and a 3+3 cluster of each.
SERVER_URLS = {"redis": "clean_redis_url", "valkey": "clean_valkey_url", "cluster": "clean_cluster_url",
               "valkey-cluster": "clean_valkey_cluster_url"}


# The protocol suite tests what the stores do, not how fast: on 2 busy cores a cluster node just
# flushed between tests can take longer than the request path's 0.5 s to answer (a timeout there is
# a skipped insert, which these tests would read as a wrong answer), so they wait up to 5 s.
PATIENT = {"socket_timeout": 5.0, "connect_timeout": 5.0}


# "...-sharded": the cache spread over 4 hash tags (`server.cache_shards`), on one Redis and on a cluster
@pytest.fixture(params=["memory", "redis", "valkey", "cluster", "valkey-cluster", "redis-sharded", "cluster-sharded"])
async def store(request):
    if request.param == "memory":
        s: DocumentStore = MemoryDocumentStore()
    elif request.param.endswith("-sharded"):
        s = RedisDocumentStore(request.getfixturevalue(SERVER_URLS[request.param.removesuffix("-sharded")]), shards=4,
                               **PATIENT)
    else:
        s = RedisDocumentStore(request.getfixturevalue(SERVER_URLS[request.param]), **PATIENT)
    yield s
    await s.aclose()


@pytest.fixture
async def cache(store):
    c = SemanticCache(store, VectorIndex(hnsw_threshold=50))
    yield c


async def put(cache: SemanticCache, partition: str, text: str, vec, *, category: str = "cat", ttl_s: float = 60,
              quota: int | None = None, decision: str = "default", tenant: str = "acme") -> str:
    key = exact_key(partition, msgs(text))
    ok = await cache.insert(partition=partition, exact_key=key, response=f"answer: {text}".encode(),
                            category=category, ttl_s=ttl_s, embedding=vec, quota=quota, decision=decision,
                            tenant=tenant, metadata={"model": "a"})
    assert ok
    return key


# --------------------------------------------------------------------------------------------
# Keys


def test_partition_key_isolates_what_changes_the_answer_and_ignores_what_does_not():
    base = part()
    different = [
        part(tenant="globex"), part(user="u1"), part(decision="other"), part(models=["a"]),
        part(system_prompt="Be verbose."), part(system_prompt=None), part(params={"temperature": 0.7}),
        part(params={"temperature": 0.2, "max_tokens": 10}), part(params={"temperature": 0.2, "seed": 1}),
        part(stream=True), part(tools=[{"type": "function", "function": {"name": "f"}}]),
        part(response_format={"type": "json_object"}),
        part(params={"temperature": 0.2, "some_new_option": True}),  # unknown parameters split too
    ]
    assert base not in different and len(set(different)) == len(different)
    same = [
        part(models=["b", "a", "a"]), part(system_prompt="  Be   brief. "),
        part(params={"temperature": 0.2, "user": "x"}),
        part(params={"temperature": 0.2, "top_p": None, "metadata": {"a": 1}, "stream": True, "model": "auto"}),
        part(tools=[]), part(response_format=None),
    ]
    assert set(same) == {base}
    assert part(params={"temperature": 1}) == part(params={"temperature": 1.0})
    assert len(base) == 32 and int(base, 16) >= 0


def test_exact_key_normalizes_whitespace_but_keeps_case_and_roles():
    p = part()
    k = exact_key(p, msgs("What is  the capital\n of France?"))
    assert k == exact_key(p, msgs(" What is the capital of France? "))
    parts = [{"type": "text", "text": "What is the capital of France?"}]
    assert k == exact_key(p, [{"role": "user", "content": parts}])
    assert k != exact_key(p, msgs("what is the capital of france?"))
    assert k != exact_key(part(tenant="globex"), msgs("What is the capital of France?"))
    assert k != exact_key(p, [{"role": "assistant", "content": "What is the capital of France?"}])
    assert k != exact_key(p, [{"role": "system", "content": "x"}, *msgs("What is the capital of France?")])


# --------------------------------------------------------------------------------------------
# Vector index


def test_index_partitions_are_isolated_and_idempotent():
    ix = VectorIndex()
    v = unit(1)
    assert ix.add("p1", "d1", v) and ix.add("p2", "d2", v)
    assert not ix.add("p1", "d1", v)  # replaying the same insert is a no-op
    assert ix.search("p1", v, 5) == [("d1", pytest.approx(1.0, abs=1e-5))]
    assert [d for d, _ in ix.search("p2", v, 5)] == ["d2"]
    assert ix.search("p3", v, 5) == []
    assert ix.remove("d1") and not ix.remove("d1")
    assert ix.search("p1", v, 5) == [] and ix.size() == 1
    with pytest.raises(ValueError, match="dimensions"):
        ix.add("p2", "d3", np.ones(DIM + 1))
    assert ix.clear() == 1 and ix.size() == 0


def test_index_switches_to_hnsw_and_finds_the_right_neighbours_and_rebuilds_tombstones():
    rng = np.random.default_rng(0)
    n, dim = 5000, 64
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ix = VectorIndex(hnsw_threshold=2000)
    for i in range(2000):
        ix.add("p", f"d{i}", x[i])
    assert not ix.uses_hnsw("p")
    for i in range(2000, n):            # incremental adds cross the threshold
        ix.add("p", f"d{i}", x[i])
    assert ix.uses_hnsw("p") and ix.size("p") == n
    ix.add("small", "s0", x[0])
    assert not ix.uses_hnsw("small") and ix.search("small", x[0], 3)[0][0] == "s0"

    queries = rng.choice(n, 200, replace=False)
    timings, right = [], 0
    for i in queries:
        q = x[i] + 0.05 * rng.standard_normal(dim).astype(np.float32)
        t0 = time.perf_counter()
        found = ix.search("p", q, 4)
        timings.append(time.perf_counter() - t0)
        truth = int(np.argmax(x @ (q / np.linalg.norm(q))))
        right += found[0][0] == f"d{truth}"
        if found[0][0] == f"d{truth}":   # similarities are exact inner products
            assert found[0][1] == pytest.approx(float(x[truth] @ (q / np.linalg.norm(q))), abs=1e-4)
    assert right / len(queries) >= 0.97
    print(f"\nHNSW lookup at {n} x {dim}: p50 {np.median(timings) * 1e3:.3f} ms, "
          f"p99 {np.percentile(timings, 99) * 1e3:.3f} ms, top-1 right {right}/{len(queries)}")

    # tombstones: removed ids are never returned; past 20 % of rows the graph is rebuilt
    removed = [f"d{i}" for i in range(0, 900)]
    for doc_id in removed:
        ix.remove(doc_id)
    assert ix.tombstones("p") == 900 and ix.uses_hnsw("p")
    for i in range(0, 900, 37):
        assert all(d not in removed for d, _ in ix.search("p", x[i], 10))
    for i in range(900, 1100):
        ix.remove(f"d{i}")
    assert ix.tombstones("p") < 100 and ix.size("p") == n - 1100 and ix.uses_hnsw("p")
    hits = sum(ix.search("p", x[i], 1)[0][0] == f"d{i}" for i in range(1100, 1300))
    assert hits >= 195
    assert all(d != "d5" for d, _ in ix.search("p", x[5], 10))


def test_deferred_build_catches_up_with_changes_made_while_it_ran():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ix = VectorIndex(hnsw_threshold=200, deferred_builds=True)
    for i in range(300):
        ix.add("p", f"d{i}", x[i])
    assert ix.pending() and not ix.uses_hnsw("p")          # nothing built inline ...
    assert ix.search("p", x[250], 1)[0][0] == "d250"       # ... and it answers exactly meanwhile

    part = ix._parts["p"]
    snapshot = ix._snapshot(part)                          # maintain(), step by step:
    for i in range(300, 340):                              # adds during the build
        ix.add("p", f"d{i}", x[i])
    for i in range(0, 20):                                 # removes during the build
        ix.remove(f"d{i}")
    ix.remove("d100"), ix.add("p", "d100", x[399])         # the same id removed and re-added
    graph = ix._build(snapshot[3])
    assert ix._install(part, snapshot, graph) and ix.uses_hnsw("p")
    assert ix.size("p") == 320 and ix.tombstones("p") == 21
    for i in range(20, 340):
        if i != 100:
            assert ix.search("p", x[i], 1)[0][0] == f"d{i}"
    assert [d for d, _ in ix.search("p", x[399], 3)].count("d100") == 1
    assert ix.search("p", x[399], 1)[0][0] == "d100"
    removed = {f"d{i}" for i in range(20)}
    assert not removed & {d for i in range(20) for d, _ in ix.search("p", x[i], 20)}

    # a build whose partition was rebuilt meanwhile is dropped, not installed over newer state
    stale = ix._snapshot(part)
    ix.compact("p")
    assert not ix._install(part, stale, ix._build(stale[3]))


def test_maintain_in_a_thread_while_the_index_changes():
    import threading

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ix = VectorIndex(hnsw_threshold=500, deferred_builds=True)
    for i in range(1500):
        ix.add("p", f"d{i}", x[i])
    worker = threading.Thread(target=ix.maintain)
    worker.start()
    for i in range(1500, 3000):
        ix.add("p", f"d{i}", x[i])
        if i % 5 == 0:
            ix.remove(f"d{i - 1500}")
        assert ix.search("p", x[i], 1)[0][0] == f"d{i}"
    worker.join()
    while ix.pending():
        ix.maintain()
    removed = {f"d{i - 1500}" for i in range(1500, 3000, 5)}
    assert ix.uses_hnsw("p") and ix.size("p") == 3000 - len(removed)
    right = sum(ix.search("p", x[i], 1)[0][0] == f"d{i}" for i in range(0, 3000, 7) if f"d{i}" not in removed)
    assert right >= 0.97 * sum(1 for i in range(0, 3000, 7) if f"d{i}" not in removed)
    assert not removed & {d for i in range(0, 1500, 25) for d, _ in ix.search("p", x[i], 10)}


# --------------------------------------------------------------------------------------------
# Semantic cache over both stores


async def test_store_satisfies_protocol(store):
    assert isinstance(store, DocumentStore)


async def test_exact_hit_and_partition_isolation(cache):
    p, v = part(), unit(1)
    key = await put(cache, p, "What is the capital of France?", v)
    hit = await cache.lookup(p, exact_key(p, msgs("What is  the capital of France?")), v)
    assert hit.kind == "exact" and hit.similarity == 1.0
    assert hit.entry.response == b"answer: What is the capital of France?" and hit.entry.metadata == {"model": "a"}
    assert hit.entry.doc_id == key and hit.entry.expires_at > time.time() + 50
    np.testing.assert_allclose(hit.entry.embedding, v, rtol=1e-6)

    # the same conversation and the same embedding in any other partition never hits
    for other in (part(tenant="globex"), part(system_prompt="Be verbose."), part(params={"temperature": 0.9}),
                  part(stream=True), part(user="bob")):
        k = exact_key(other, msgs("What is the capital of France?"))
        assert await cache.lookup(other, k, v, threshold=0.0) is None
        assert await cache.lookup(other, key, v, threshold=0.0) is None  # even given the other's key
    assert cache.counters["hits_exact"] == 1 and cache.counters["misses"] == 10


async def test_semantic_hit_above_threshold_miss_below(cache):
    p, v = part(), unit(2)
    await put(cache, p, "capital of France?", v)
    other = exact_key(p, msgs("which city is France's capital"))
    hit = await cache.lookup(p, other, near(v, 0.95), threshold=0.9)
    assert hit.kind == "semantic" and hit.similarity == pytest.approx(0.95, abs=1e-4)
    assert await cache.lookup(p, other, near(v, 0.85), threshold=0.9) is None
    assert await cache.lookup(p, other, near(v, 0.95), threshold=0.9, mode="exact") is None
    assert (await cache.lookup(p, exact_key(p, msgs("capital of France?")), near(v, 0.1), mode="semantic",
                               threshold=0.9)) is None
    # the nearest *qualifying* neighbour wins
    await put(cache, p, "capital of Spain?", near(v, 0.97, seed=5))
    hit = await cache.lookup(p, other, near(v, 0.99, seed=7), threshold=0.9)
    assert hit.entry.response == b"answer: capital of France?"
    with pytest.raises(ValueError, match="mode"):
        await cache.lookup(p, other, v, mode="fuzzy")


async def test_ttl_expiry_is_a_miss_and_drops_the_index_entry(cache):
    p, v = part(), unit(3)
    key = await put(cache, p, "short lived", v, ttl_s=0.3)
    await put(cache, p, "long lived", unit(4), ttl_s=60)
    assert (await cache.lookup(p, key, v)).kind == "exact"
    await asyncio.sleep(0.45)
    assert await cache.lookup(p, key, v, threshold=0.5) is None
    assert cache.counters["stale"] == 1 and cache.index.size(p) == 1
    assert await cache.store.get(key) is None
    assert await cache.store.count() == 1


async def test_sweep_drops_expired_entries_from_the_index(cache):
    p = part()
    await put(cache, p, "short", unit(5), ttl_s=0.2)
    await put(cache, p, "long", unit(6), ttl_s=60)
    await asyncio.sleep(0.3)
    assert await cache.sweep() == 1 and cache.index.size(p) == 1


async def test_cache_builds_graphs_off_the_event_loop(store):
    cache = SemanticCache(store, VectorIndex(hnsw_threshold=50, deferred_builds=True))
    p = part()
    for i in range(60):
        await put(cache, p, f"g{i}", unit(500 + i))
    await cache.maintenance()
    assert cache.index.uses_hnsw(p) and not cache.index.pending()
    hit = await cache.lookup(p, "0" * 32, near(unit(533), 0.97), threshold=0.9)
    assert hit.kind == "semantic" and hit.entry.response == b"answer: g33"


async def test_quota_evicts_least_recently_used_within_the_category_only(cache):
    if getattr(cache.store, "shards", 1) > 1:
        pytest.skip("a sharded store keeps quotas per shard: test_a_sharded_store_keeps_each_quota_per_shard")
    p = part()
    keys = [await put(cache, p, f"q{i}", unit(10 + i), category="small", quota=3) for i in range(3)]
    others = [await put(cache, p, f"o{i}", unit(20 + i), category="big") for i in range(5)]
    assert await cache.lookup(p, keys[0], None) is not None      # q0 becomes most recently used
    k3 = await put(cache, p, "q3", unit(13), category="small", quota=3)
    assert cache.counters["evictions"] == 1
    assert await cache.store.get(keys[1]) is None                # q1 was the least recently used
    assert await cache.lookup(p, "x" * 32, unit(11), threshold=0.99) is None  # and left the index
    assert cache.index.size(p) == 8
    for k in (keys[0], keys[2], k3, *others):
        assert await cache.store.get(k) is not None
    assert await cache.store.count() == 8


async def test_delete_by_key_decision_tenant_and_all(cache):
    p1, p2, p3 = part(), part(decision="other"), part(tenant="globex")
    a = await put(cache, p1, "a", unit(30))
    b = await put(cache, p2, "b", unit(31), decision="other")
    c = await put(cache, p3, "c", unit(32), tenant="globex")
    d = await put(cache, p1, "d", unit(33))
    assert await cache.delete(a) is True and await cache.delete(a) is False
    assert await cache.lookup(p1, a, unit(30), threshold=0.99) is None and cache.index.size(p1) == 1
    assert await cache.delete_where(decision="other") == 1
    assert await cache.store.get(b) is None and cache.index.size(p2) == 0
    assert await cache.delete_where(tenant="globex") == 1 and await cache.store.get(c) is None
    assert await cache.delete_where(partition=p3) == 0
    await put(cache, p3, "c", unit(32), tenant="globex")
    assert await cache.delete_where() is None
    assert cache.index.size() == 0 and await cache.store.count() == 0 and await cache.store.get(d) is None


# --------------------------------------------------------------------------------------------
# Redis: sharing, rebuild, failure


async def test_two_caches_share_inserts_and_deletes_through_the_stream(clean_redis_url):
    a = SemanticCache(RedisDocumentStore(clean_redis_url))
    b = SemanticCache(RedisDocumentStore(clean_redis_url))
    try:
        await a.sync(), await b.sync()
        p, v = part(), unit(40)
        key = await put(a, p, "shared question", v)
        probe = exact_key(p, msgs("the shared question, reworded"))
        assert await b.lookup(p, probe, near(v, 0.96), threshold=0.9) is None   # not synced yet
        assert await b.sync() == 1
        hit = await b.lookup(p, probe, near(v, 0.96), threshold=0.9)
        assert hit.kind == "semantic" and hit.entry.doc_id == key
        assert (await b.lookup(p, key, None)).kind == "exact"                   # exact needs no sync
        await b.delete(key)
        await a.sync()
        assert a.index.size() == 0 and await a.lookup(p, key, v) is None
    finally:
        await a.aclose(), await b.aclose()


_WRITER_PROCESS = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    from sigroute.cache.index import VectorIndex
    from sigroute.cache.keys import exact_key, partition_key
    from sigroute.cache.semantic import SemanticCache
    from sigroute.cache.store import RedisDocumentStore

    async def main(url):
        cache = SemanticCache(RedisDocumentStore(url))
        p = partition_key(tenant="acme", decision="default", models=["a", "b"], system_prompt="Be brief.",
                          params={"temperature": 0.2}, stream=False)
        for i in range(20):
            v = np.random.default_rng(1000 + i).standard_normal(32).astype(np.float32)
            ok = await cache.insert(partition=p, exact_key=exact_key(p, [{"role": "user", "content": f"w{i}"}]),
                                    response=f"from writer {i}".encode(), category="cat", ttl_s=60, embedding=v)
            assert ok
        await cache.delete(exact_key(p, [{"role": "user", "content": "w0"}]))
        await cache.aclose()
        print("done")

    asyncio.run(main(sys.argv[1]))
""")


async def test_another_process_inserts_are_seen_after_sync_and_rebuild(clean_redis_url):
    reader = SemanticCache(RedisDocumentStore(clean_redis_url))
    try:
        await reader.sync()   # first sync: an (empty) rebuild
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", _WRITER_PROCESS, clean_redis_url],
                                       cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "done" in done.stdout, done.stdout + done.stderr
        p = part()
        assert await reader.sync() == 21 and reader.index.size(p) == 19
        assert reader.counters["rebuilds"] == 1   # in step: events only, no rebuild
        hit = await reader.lookup(p, "0" * 32, near(unit(1005), 0.97), threshold=0.9)
        assert hit.entry.response == b"from writer 5"
        assert await reader.lookup(p, "0" * 32, near(unit(1000), 0.97), threshold=0.9) is None  # deleted

        fresh = SemanticCache(RedisDocumentStore(clean_redis_url))   # a process starting up
        try:
            assert await fresh.rebuild() == 19
            assert (await fresh.lookup(p, "0" * 32, near(unit(1007), 0.97), threshold=0.9)).entry.response \
                == b"from writer 7"
        finally:
            await fresh.aclose()
    finally:
        await reader.aclose()


async def test_a_reader_that_fell_behind_the_trimmed_stream_rebuilds(clean_redis_url):
    writer = SemanticCache(RedisDocumentStore(clean_redis_url, stream_maxlen=10))
    reader = SemanticCache(RedisDocumentStore(clean_redis_url))
    try:
        await reader.sync()
        p = part()
        for i in range(300):
            await put(writer, p, f"n{i}", unit(2000 + i))
        rebuilds = reader.counters["rebuilds"]
        await reader.sync()
        assert reader.counters["rebuilds"] == rebuilds + 1 and reader.index.size(p) == 300
    finally:
        await writer.aclose(), await reader.aclose()


async def test_polling_the_event_stream_is_one_read_per_poll_and_never_repeats_an_event(clean_redis_url):
    """A reader in step polls with one XRANGE from its cursor's own entry (no XINFO): an unchanged
    stream gives nothing and no gap, new events come once each, and a cursor whose entry was
    trimmed away is a gap."""
    import redis

    admin = redis.Redis.from_url(clean_redis_url)
    writer = SemanticCache(RedisDocumentStore(clean_redis_url, stream_maxlen=5))
    reader = RedisDocumentStore(clean_redis_url)
    try:
        p = part()
        await put(writer, p, "first", unit(3000))
        cursor = await reader.position()
        admin.config_resetstat()
        for _ in range(5):
            events, same, gap = await reader.events_since(cursor)
            assert events == [] and same == cursor and not gap
        calls = admin.info("commandstats")
        assert calls["cmdstat_xrange"]["calls"] == 5 and "cmdstat_xinfo|stream" not in calls \
            and "cmdstat_xinfo" not in calls
        await put(writer, p, "second", unit(3001))
        await put(writer, p, "third", unit(3002))
        events, cursor, gap = await reader.events_since(cursor)
        assert [e.op for e in events] == ["put", "put"] and not gap
        assert (await reader.events_since(cursor))[0] == []     # each event once
        for i in range(300):   # MAXLEN 5, approximate: trimmed by whole stream nodes, past the cursor
            await put(writer, p, f"more {i}", unit(3100 + i))
        events, _, gap = await reader.events_since(cursor)
        assert gap
    finally:
        admin.close()
        await writer.aclose(), await reader.aclose()


async def test_redis_down_means_misses_and_skipped_inserts_never_errors():
    cache = SemanticCache(RedisDocumentStore(f"redis://:secret@127.0.0.1:{free_port()}/0", connect_timeout=0.2),
                          cooldown_s=0.2)
    p, v = part(), unit(50)
    try:
        assert await cache.lookup(p, "k" * 32, v) is None
        assert cache.counters["store_errors"] == 1
        assert await cache.lookup(p, "k" * 32, v) is None          # within the cooldown: not even tried
        assert cache.counters["bypassed"] == 1
        await asyncio.sleep(0.25)
        assert await cache.insert(partition=p, exact_key="k" * 32, response=b"{}", category="c", ttl_s=5,
                                  embedding=v) is False
        assert cache.counters["insert_errors"] == 1 and cache.index.size() == 0
        assert cache.counters["hits_exact"] == cache.counters["misses"] == 0
        with pytest.raises(Exception, match=r"redis://127\.0\.0\.1:\d+/0 is unavailable") as info:
            await cache.store.ping()
        assert "secret" not in str(info.value)
    finally:
        await cache.aclose()


# --------------------------------------------------------------------------------------------
# Single flight


async def test_single_flight_one_leader_followers_get_its_answer():
    flights, calls = SingleFlight(), 0

    async def request():
        nonlocal calls
        waiter = flights.lead("k")
        if waiter is not None:
            answer = await flights.wait(waiter)
            if answer is not None:
                return answer, "follower"
        calls += 1
        try:
            await asyncio.sleep(0.05)
            return b"the answer", "leader"
        finally:
            if waiter is None:
                flights.land("k", b"the answer")

    results = await asyncio.gather(*(request() for _ in range(20)))
    assert calls == 1 and flights.led == 1 and flights.joined == 19
    assert {r for r, _ in results} == {b"the answer"} and [k for _, k in results].count("leader") == 1
    assert not flights.in_flight("k")
    await request()   # finished flights are not kept: a new request leads again
    assert calls == 2 and flights.led == 2


async def test_single_flight_followers_go_their_own_way_when_the_leader_has_nothing():
    flights = SingleFlight()
    assert flights.lead("k") is None
    waiters = [flights.lead("k") for _ in range(3)]
    follower = asyncio.ensure_future(flights.wait(waiters[0]))
    cancelled = asyncio.ensure_future(flights.wait(waiters[1]))
    await asyncio.sleep(0)
    cancelled.cancel()                           # a follower's client goes away ...
    await asyncio.sleep(0)
    assert not waiters[1].cancelled()            # ... the flight is untouched for the others
    flights.land("k", None)                      # the leader failed: nothing to share
    assert await follower is None and await flights.wait(waiters[2]) is None
    assert flights.lead("k") is None             # the next identical request leads a new flight
    flights.land("k", b"x")
    flights.land("k", b"y")                      # landing twice is harmless


async def test_a_leader_that_leaves_without_landing_releases_its_followers():
    flights = SingleFlight()
    assert flights.lead("k") is None
    follower = flights.lead("k")
    with pytest.raises(RuntimeError):
        with flights.lease("k"):
            raise RuntimeError("the leader's request failed after its upstream call")
    assert await flights.wait(follower, timeout_s=5) is None and len(flights) == 0


async def test_a_landed_lease_never_ends_a_newer_flight_of_the_same_key():
    flights = SingleFlight()
    assert flights.lead("k") is None
    with flights.lease("k") as first:
        first.land(b"first answer")
        assert flights.lead("k") is None        # a new identical request leads a new flight at once
        newer = flights.lead("k")               # ... and someone follows it
    assert not newer.done() and flights.in_flight("k")   # leaving the first lease did not touch it
    flights.land("k", b"second answer")
    assert await flights.wait(newer) == b"second answer"


async def test_a_follower_stops_waiting_after_its_timeout():
    flights = SingleFlight()
    assert flights.lead("k") is None            # a leader that never lands
    follower = flights.lead("k")
    assert await flights.wait(follower, timeout_s=0.05) is None
    assert flights.timed_out == 1 and flights.in_flight("k")   # the leader's flight is left to it
