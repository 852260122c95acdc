"""The semantic cache spread over several Redis hash tags (`RedisDocumentStore(shards=N)`,
`sigroute serve --cache-shards N`): on a cluster each shard is its own slot, so the cache's load
spreads over the primaries instead of sitting on one. Each document lives in the shard of its id,
with its category's LRU set and its shard's event stream beside it, so every script still touches
one slot. Real redis-server processes and a real local 3+3 cluster."""

from __future__ import annotations

import numpy as np
import pytest

from sigroute.cache.index import VectorIndex
from sigroute.cache.semantic import SemanticCache
from sigroute.cache.store import CacheEntry, RedisDocumentStore, shard_of, shard_prefixes, shard_quota
from tests.redis_cluster import clean_cluster_url, cluster  # noqa: F401   (fixtures)
from tests.test_cache_core import near, part, put, unit


def entry(doc_id: str, category: str = "c", vector=None, partition: str = "p") -> CacheEntry:
    return CacheEntry(doc_id=doc_id, partition=partition, category=category, response=doc_id.encode(),
                      embedding=vector)


def test_shard_layout_is_stable_and_keeps_each_shard_in_one_slot():
    assert shard_prefixes("sigroute:cache:", 1) == ["{sigroute:cache}:"]      # the layout before shards
    assert shard_prefixes("sigroute:cache:", 3) == ["{sigroute:cache:s0}:", "{sigroute:cache:s1}:",
                                                    "{sigroute:cache:s2}:"]
    assert shard_prefixes("{acme}:cache:", 2) == ["{acme:s0}:cache:", "{acme:s1}:cache:"]
    assert shard_of("any id", 1) == 0
    assert shard_of("doc-17", 8) == shard_of("doc-17", 8)                      # a hash, not a draw
    assert len({shard_of(f"doc-{i}", 8) for i in range(200)}) == 8             # every shard gets some
    assert [shard_quota(q, 4) for q in (1, 4, 5, 100)] == [1, 1, 2, 25]
    for bad in (0, -1, 1025, 2.0, True):
        with pytest.raises(ValueError, match="shards"):
            RedisDocumentStore("redis://127.0.0.1:6379/0", shards=bad)


async def test_a_sharded_store_keeps_each_quota_per_shard(clean_redis_url):
    store = RedisDocumentStore(clean_redis_url, shards=2)
    try:
        ids = [f"q{i}" for i in range(12)]
        evicted = []
        for doc_id in ids:
            evicted += await store.put(entry(doc_id), 60, quota=4)   # 2 per shard
        kept = [doc_id for doc_id in ids if await store.get(doc_id) is not None]
        for shard in (0, 1):
            mine = [doc_id for doc_id in ids if shard_of(doc_id, 2) == shard]
            # each shard keeps its two most recently put entries, and evicted exactly the rest
            assert [doc_id for doc_id in kept if shard_of(doc_id, 2) == shard] == mine[-2:]
            assert sorted(doc_id for doc_id in evicted if shard_of(doc_id, 2) == shard) == sorted(mine[:-2])
        assert (await store.category_counts()) == {"c": 4}
    finally:
        await store.aclose()


async def test_two_caches_on_a_sharded_store_stay_in_step_through_every_shards_stream(clean_redis_url):
    a = SemanticCache(RedisDocumentStore(clean_redis_url, shards=4), VectorIndex())
    b = SemanticCache(RedisDocumentStore(clean_redis_url, shards=4), VectorIndex())
    try:
        await a.sync(), await b.sync()
        p = part()
        keys = [await put(a, p, f"question {i}", unit(100 + i)) for i in range(12)]
        assert len({shard_of(k, 4) for k in keys}) > 1
        assert await b.sync() == 12 and b.index.size(p) == 12 and b.counters["rebuilds"] == 1
        hit = await b.lookup(p, "0" * 32, near(unit(105), 0.97), threshold=0.9)
        assert hit.kind == "semantic" and hit.entry.doc_id == keys[5]
        await b.delete(keys[5])
        await a.sync()
        assert a.index.size(p) == 11 and await a.lookup(p, "0" * 32, near(unit(105), 0.97), threshold=0.9) is None
        # clear: every shard's stream says so; the reader rebuilds (other shards' events may be older
        # or newer than the clear), so an answer stored after the clear survives it
        assert await b.delete_where() is None
        late = await put(b, p, "after the clear", unit(300))
        await a.sync()
        assert a.index.ids(p) == [late] and a.counters["rebuilds"] == 2
        # a cursor of another layout (a store with another shard count) is a gap: rebuild, never misread
        one = RedisDocumentStore(clean_redis_url, shards=1)
        try:
            events, cursor, gap = await a.store.events_since(await one.position())
            assert gap and events == [] and len(cursor.split("|")) == 4
        finally:
            await one.aclose()
    finally:
        await a.aclose(), await b.aclose()


async def test_shards_spread_the_cache_over_the_cluster_primaries(cluster, clean_cluster_url):
    store = RedisDocumentStore(clean_cluster_url, shards=8)
    cache = SemanticCache(store, VectorIndex())
    try:
        await cache.sync()
        p = part()
        keys = [await put(cache, p, f"spread {i}", unit(500 + i), category=f"cat{i % 3}", quota=40)
                for i in range(40)]
        for k in keys:
            assert (await store.get(k)) is not None
        names = [n.decode() for n in cluster.all_keys()]
        by_shard: dict[str, set[int]] = {}
        for name in names:
            tag = name[1:name.index("}")]
            by_shard.setdefault(tag, set()).add(cluster.keyslot(name))
        assert set(by_shard) == {f"sigroute:cache:s{k}" for k in range(8)}
        assert all(len(slots) == 1 for slots in by_shard.values())      # a shard's keys share one slot
        owners = {cluster.slot_owner(next(iter(slots))) for slots in by_shard.values()}
        assert len(owners) >= 2, "the shards' slots are served by more than one primary"
        fresh = SemanticCache(RedisDocumentStore(clean_cluster_url, shards=8), VectorIndex())
        try:
            assert await fresh.rebuild() == 40                         # a replica starting: scans every shard
            hit = await fresh.lookup(p, "0" * 32, near(unit(517), 0.97), threshold=0.9)
            assert hit.entry.doc_id == keys[17]
        finally:
            await fresh.aclose()
        assert await store.category_counts() == {"cat0": 14, "cat1": 13, "cat2": 13}
    finally:
        await cache.aclose()


def test_two_gateways_share_a_sharded_cache_on_the_cluster(sim, gateway_factory, cluster, clean_cluster_url):
    from tests.conftest import base_policy

    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha"], "cache": {"mode": "exact"}}])
    patient = {"redis_url": clean_cluster_url, "redis_timeout_s": 5.0, "cache_shards": 8}
    a, b = gateway_factory(policy, **patient), gateway_factory(policy, **patient)
    questions = [f"Which shard holds answer {i}?" for i in range(12)]
    for q in questions:
        assert a.chat(q).headers["x-sigroute-cache"] == "miss"
    for q in questions:   # stored through a, found by b
        assert b.chat(q).headers["x-sigroute-cache"] == "hit-exact"
    tags = {name.decode()[1:name.decode().index("}")] for name in cluster.all_keys()
            if name.decode().startswith("{sigroute:cache")}
    assert len(tags) > 1 and tags <= {f"sigroute:cache:s{k}" for k in range(8)}
    assert len({cluster.slot_owner(cluster.keyslot("{" + tag + "}")) for tag in tags}) >= 2
