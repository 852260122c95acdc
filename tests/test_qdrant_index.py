"""The semantic cache's index on Qdrant (cache/qdrant_index.py), through qdrant-client's local mode
(the same client API as a server): the in-process index's behaviour, isolation, idempotence, the
shared-index rules of SemanticCache (no rebuild, no event replay; TTLs and deletes still applied),
a Qdrant out of reach, the `server.cache_index` setting, and gateways serving semantic hits from it."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from sigroute.cache.keys import exact_key
from sigroute.cache.qdrant_index import QdrantVectorIndex, open_vector_index
from sigroute.cache.semantic import SemanticCache
from sigroute.cache.store import MemoryDocumentStore, RedisDocumentStore
from tests.conftest import free_port
from tests.test_cache_core import DIM, msgs, near, part, put, unit
from tests.test_gateway_cache import ask, cached_policy


@pytest.fixture(params=["memory", "disk"])
def index(request, tmp_path):
    ix = QdrantVectorIndex(location=":memory:") if request.param == "memory" else QdrantVectorIndex(path=str(tmp_path))
    yield ix
    ix.close()


# --------------------------------------------------------------------------------------------
# The index: what VectorIndex promises (tests/test_cache_core.py), on Qdrant


def test_partitions_are_isolated_and_add_remove_are_idempotent(index):
    v = unit(1)
    assert index.add("p1", "d1", v) and index.add("p2", "d2", v)
    assert not index.add("p1", "d1", v)   # replaying the same insert is a no-op
    assert index.search("p1", v, 5) == [("d1", pytest.approx(1.0, abs=1e-5))]
    assert [d for d, _ in index.search("p2", v, 5)] == ["d2"]
    assert index.search("p3", v, 5) == []
    assert index.partition_of("d1") == "p1" and index.partition_of("nope") is None
    assert index.remove("d1") and not index.remove("d1")
    assert index.search("p1", v, 5) == [] and index.size() == 1
    with pytest.raises(ValueError, match="dimensions"):
        index.add("p2", "d3", np.ones(DIM + 1))
    assert index.clear() == 1 and index.size() == 0
    assert index.add("p9", "d9", np.ones(DIM + 1))   # clearing everything lets another encoder start afresh


def test_bad_vectors_are_refused_like_the_in_process_index(index):
    with pytest.raises(ValueError, match="NaN"):
        index.add("p", "d", np.full(DIM, np.nan))
    with pytest.raises(ValueError, match="zero vector"):
        index.add("p", "d", np.zeros(DIM))
    index.add("p", "d", unit(1))
    with pytest.raises(ValueError, match="dimensions"):
        index.search("p", np.ones(DIM - 1))
    with pytest.raises(ValueError, match="infinity"):
        index.search("p", np.full(DIM, np.inf))
    assert index.size() == 1


def test_search_returns_cosine_similarity_nearest_first_within_k(index):
    v = unit(7)
    index.add("p", "same", v * 3.0)                   # stored normalized: the length does not count
    index.add("p", "close", near(v, 0.9, seed=1))
    index.add("p", "far", near(v, 0.2, seed=2))
    index.add("p", "opposite", -v)
    found = index.search("p", v, 4)
    assert [d for d, _ in found] == ["same", "close", "far", "opposite"]
    assert [s for _, s in found] == [pytest.approx(x, abs=1e-4) for x in (1.0, 0.9, 0.2, -1.0)]
    assert [d for d, _ in index.search("p", v, 2)] == ["same", "close"]
    assert index.search("p", v, 0) == []


def test_bulk_add_ids_sizes_and_clearing_one_partition(index):
    items = [(f"p{i % 3}", f"d{i}", unit(100 + i)) for i in range(30)]
    assert index.add_many(items + items[:5], batch=7) == 30   # repeats (even within a batch) add nothing
    assert index.add_many(items) == 0
    assert index.size() == 30 and index.size("p0") == 10
    assert sorted(index.ids("p1")) == sorted(f"d{i}" for i in range(1, 30, 3))
    assert len(index.ids()) == 30
    assert index.clear("p1") == 10 and index.size() == 20 and index.ids("p1") == []
    assert [d for d, _ in index.search("p2", unit(102), 1)] == ["d2"]
    # every vector stays findable from its own partition only
    for partition, doc_id, v in items:
        if partition != "p1":
            assert index.search(partition, v, 1)[0][0] == doc_id
            assert all(d != doc_id for other in ("p0", "p1", "p2") if other != partition
                       for d, _ in index.search(other, v, 10))
    assert not index.pending() and index.maintain() == 0


def test_a_collection_on_disk_is_there_for_the_next_process(tmp_path):
    first = QdrantVectorIndex(path=str(tmp_path), collection="answers")
    first.add_many((part(), f"d{i}", unit(i)) for i in range(20))
    first.close()
    again = QdrantVectorIndex(path=str(tmp_path), collection="answers")   # a replica starting: nothing to rebuild
    assert again.size() == 20 and again.search(part(), unit(4), 1)[0][0] == "d4"
    with pytest.raises(ValueError, match="dimensions"):                  # the dimension comes with the collection
        again.add(part(), "x", np.ones(DIM * 2))
    again.close()


def test_index_settings_are_checked():
    with pytest.raises(ValueError, match="exactly one of url"):
        QdrantVectorIndex()
    with pytest.raises(ValueError, match="exactly one of url"):
        QdrantVectorIndex(url="http://127.0.0.1:6333", path="/tmp/x")
    with pytest.raises(ValueError, match="faiss or qdrant"):
        open_vector_index("milvus")
    assert open_vector_index().shared is False and open_vector_index("faiss").deferred_builds


# --------------------------------------------------------------------------------------------
# SemanticCache over a shared index


@pytest.fixture
async def cache(index):
    c = SemanticCache(MemoryDocumentStore(), index)
    yield c
    await c.aclose()


async def test_semantic_hits_isolation_and_ttl_through_the_qdrant_index(cache):
    p, v = part(), unit(2)
    key = await put(cache, p, "capital of France?", v, ttl_s=0.3)
    other = exact_key(p, msgs("which city is France's capital"))
    hit = await cache.lookup(p, other, near(v, 0.95), threshold=0.9)
    assert hit.kind == "semantic" and hit.entry.doc_id == key and hit.similarity == pytest.approx(0.95, abs=1e-4)
    assert await cache.lookup(p, other, near(v, 0.85), threshold=0.9) is None
    assert await cache.lookup(part(tenant="globex"), other, v, threshold=0.0) is None   # another partition
    await asyncio.sleep(0.45)                                                           # the document expires
    assert await cache.lookup(p, other, v, threshold=0.5) is None
    assert cache.counters["stale"] == 1 and cache.index.size() == 0


async def test_sweep_and_deletes_reach_the_qdrant_index(cache):
    p = part()
    await put(cache, p, "short", unit(5), ttl_s=0.2)
    keep = await put(cache, p, "long", unit(6), ttl_s=60)
    gone = await put(cache, p, "deleted", unit(7), ttl_s=60)
    await asyncio.sleep(0.3)
    assert await cache.sweep() == 1 and cache.index.size(p) == 2
    assert await cache.delete(gone) and cache.index.ids() == [keep]
    assert await cache.delete_where() is None and cache.index.size() == 0


async def test_a_shared_index_is_swept_a_slice_at_a_time(cache):
    p = part()
    for i in range(6):
        await put(cache, p, f"short {i}", unit(40 + i), ttl_s=0.2)
        await put(cache, p, f"long {i}", unit(50 + i), ttl_s=60)
    await asyncio.sleep(0.3)
    first = await cache.sweep(batch=2, shared_slice=5)        # 5 of the 12 ids checked
    assert first <= 5 and cache.index.size() == 12 - first
    dropped = first
    for _ in range(3):                                        # the next slices go on where it stopped
        dropped += await cache.sweep(batch=2, shared_slice=5)
    assert dropped == 6 and cache.index.size() == 6


async def test_quota_evictions_leave_the_qdrant_index(cache):
    p = part()
    first = await put(cache, p, "one", unit(1), quota=2)
    await put(cache, p, "two", unit(2), quota=2)
    await put(cache, p, "three", unit(3), quota=2)
    assert first not in cache.index.ids() and cache.index.size() == 2


async def test_replicas_share_the_index_without_rebuilding_or_replaying_events(clean_redis_url):
    index = QdrantVectorIndex(location=":memory:")
    a = SemanticCache(RedisDocumentStore(clean_redis_url), index)
    b = SemanticCache(RedisDocumentStore(clean_redis_url), index)
    try:
        assert await b.sync() == 0                 # a replica starting: no rebuild from the store
        p, v = part(), unit(11)
        key = await put(a, p, "how do I reset my router", v)
        hit = await b.lookup(p, "another-key", near(v, 0.96), threshold=0.9)   # at once: no sync in between
        assert hit is not None and hit.entry.doc_id == key
        assert await b.sync() == 0
        assert b.counters["rebuilds"] == 0 and b.counters["sync_events"] == 0
        assert await b.delete(key)                 # a delete on one replica is gone for every replica
        assert await a.lookup(p, "another-key", v, threshold=0.5) is None and index.size() == 0
        short = await put(a, p, "expires soon", unit(12), ttl_s=0.2)
        await asyncio.sleep(0.3)                   # expired in Redis: b's lookup drops it from the shared index
        assert await b.lookup(p, "k", unit(12), threshold=0.5) is None and short not in index.ids()
    finally:
        await a.aclose()
        await b.aclose()


async def test_rebuild_of_a_shared_index_adds_only_what_it_lacks(clean_redis_url):
    store = RedisDocumentStore(clean_redis_url)
    local = SemanticCache(store)                      # entries written while the index was in process
    p = part()
    keys = [await put(local, p, f"question {i}", unit(30 + i)) for i in range(5)]
    index = QdrantVectorIndex(location=":memory:")
    index.add(p, keys[0], unit(30))
    shared = SemanticCache(RedisDocumentStore(clean_redis_url), index)
    try:
        assert await shared.rebuild() == 5 and sorted(index.ids()) == sorted(keys)
        assert (await shared.lookup(p, "k", unit(33), threshold=0.9)).entry.doc_id == keys[3]
    finally:
        await local.aclose()
        await shared.aclose()


async def test_a_qdrant_out_of_reach_means_misses_and_skipped_inserts_never_errors():
    index = QdrantVectorIndex(url=f"http://127.0.0.1:{free_port()}", timeout_s=1)
    cache = SemanticCache(MemoryDocumentStore(), index)
    p, v = part(), unit(1)
    assert await cache.insert(partition=p, exact_key="k1", response=b"x", category="c", ttl_s=60, embedding=v) is False
    assert cache.counters["insert_errors"] == 1
    assert await cache.lookup(p, "k2", v, threshold=0.5) is None   # bypassed for the cooldown: no second failure
    assert cache.counters["bypassed"] == 1
    await cache.aclose()


# --------------------------------------------------------------------------------------------
# Through the gateway


def qdrant_policy(sim, tmp_path, **cache_index):
    policy = cached_policy(sim, {"threshold": 0.6, "verify": False})
    policy["server"]["cache_index"] = {"engine": "qdrant", "path": str(tmp_path / "qdrant"), **cache_index}
    return policy


def test_a_gateway_serves_semantic_hits_from_a_qdrant_index(sim, gateway_factory, tmp_path):
    gw = gateway_factory(qdrant_policy(sim, tmp_path, collection="gw-cache"))
    cache = gw.app.state.runtime.pipeline.caching.semantic_cache
    assert isinstance(cache.index, QdrantVectorIndex) and cache.index.collection == "gw-cache"
    assert ask(gw, "How do I bake sourdough bread at home?").headers["x-sigroute-cache"] == "miss"
    hit = ask(gw, "How can I bake sourdough bread at home?")
    assert hit.headers["x-sigroute-cache"] == "hit-semantic"
    assert float(hit.headers["x-sigroute-cache-similarity"]) > 0.9
    assert sim.calls("alpha") == 1
    assert cache.index.size() == 1


def test_two_gateways_share_one_qdrant_index_and_hit_at_once(sim, gateway_factory, clean_redis_url):
    # local mode locks its folder to one client, so the two in-process gateways get the same index
    # object; against a Qdrant server each replica opens its own client on the same collection
    index = QdrantVectorIndex(location=":memory:")
    policy = cached_policy(sim, {"threshold": 0.8, "verify": False})
    a = gateway_factory(policy, redis_url=clean_redis_url,
                        semantic_cache=SemanticCache(RedisDocumentStore(clean_redis_url), index))
    b = gateway_factory(policy, redis_url=clean_redis_url,
                        semantic_cache=SemanticCache(RedisDocumentStore(clean_redis_url), index))
    assert ask(a, "How do I reset my router password?").headers["x-sigroute-cache"] == "miss"
    # no waiting for b to follow the event stream: the index a wrote to is the one b searches
    r = ask(b, "How can I reset the password on my router?", headers={"cache-control": "no-store"})
    assert r.headers["x-sigroute-cache"] == "hit-semantic"
    assert sim.calls("alpha") == 1
    b_cache = b.app.state.runtime.pipeline.caching.semantic_cache
    assert b_cache.counters["rebuilds"] == 0 and b_cache.counters["sync_events"] == 0


@pytest.mark.parametrize("setting, message", [
    ({"engine": "qdrant"}, "exactly one of url"),
    ({"engine": "qdrant", "url": "http://q:6333", "path": "/x"}, "exactly one of url"),
    ({"path": "/x"}, "are for engine: qdrant"),
    ({"engine": "milvus"}, "'faiss' or 'qdrant'"),
    ({"engine": "qdrant", "url": "qdrant:6333"}, "should match pattern"),
])
def test_bad_cache_index_settings_are_rejected_with_the_reason(sim, setting, message):
    from sigroute.policies.schema import Policy

    policy = cached_policy(sim)
    policy["server"]["cache_index"] = setting
    with pytest.raises(Exception, match=message):
        Policy.model_validate(policy)


def test_a_bad_cache_index_in_yaml_names_file_line_and_key():
    from sigroute.policies.loader import PolicyError, load_policy_text

    text = """version: 1
models:
  m: {provider: openai/m, api_base: "http://127.0.0.1:9/v1"}
decisions:
  - name: default
    models: [m]
server:
  cache_index:
    engine: qdrant
    url: qdrant:6333
"""
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "support.yaml")
    message = str(info.value)
    assert "support.yaml:10" in message and "cache_index" in message and "url" in message
