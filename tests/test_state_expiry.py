"""Learned state that ends: an idle TTL on each tenant's state keys in Redis (restarted by every
write, never by a read), replicas that forget a tenant idle that long (so they do not restore what
expired), and `sigroute bandit gc`, which reports stored state by schema and tenant and removes
what has not been written for --idle days. Real redis-server and the local 3-primary cluster."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import redis

from sigroute.bandits.contextual import LinUCBSelector
from sigroute.bandits.store import MemoryStateStore, RedisStateStore
from sigroute.policies.schema import Algorithm, Policy
from tests.conftest import base_policy
from tests.redis_cluster import LocalCluster, clean_cluster_url, cluster  # noqa: F401  (fixtures)

DAY = 86400.0
KEY_A = "t=acme/d=hard/a=linucb/s=abc123"
KEY_Z = "t=zeta/d=hard/a=linucb/s=abc123"
KEY_OLD_SCHEMA = "t=acme/d=gone/a=linucb/s=0ld5c4"


@pytest.fixture(params=["redis", "cluster"])
def url(request):
    return request.getfixturevalue("clean_redis_url" if request.param == "redis" else "clean_cluster_url")


def raw_client(url: str):
    from sigroute._redis import open_client

    return open_client(url, decode_responses=False, socket_timeout=5, connect_timeout=5, retries=1)


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


# ------------------------------------------------------------------------------ the idle TTL

def test_writes_restart_the_idle_ttl_and_reads_do_not(url):
    async def run():
        store = RedisStateStore(url, idle_ttl_s=3 * DAY)
        client = raw_client(url)
        name = store.namespace + KEY_A
        await store.add(KEY_A, {"m": vec(1, 2)})
        after_add = await client.pttl(name)
        await client.pexpire(name, 60_000)                 # as if most of the idle time had passed
        await store.read(KEY_A)
        await store.load(KEY_A)
        after_reads = await client.pttl(name)
        await store.add(KEY_A, {"m": vec(1, 0)})
        after_second_add = await client.pttl(name)
        await store.replace(KEY_A, {"m": vec(5, 5)})
        after_replace = await client.pttl(name)
        state = await store.read(KEY_A)
        server_now = await store.server_time()
        plain = RedisStateStore(url)                       # no idle TTL: keys persist
        await plain.add(KEY_Z, {"m": vec(1, 1)})
        persistent = await client.pttl(plain.namespace + KEY_Z)
        for closing in (store, plain):
            await closing.aclose()
        await client.aclose()
        return after_add, after_reads, after_second_add, after_replace, state, server_now, persistent

    after_add, after_reads, after_second_add, after_replace, state, server_now, persistent = asyncio.run(run())
    assert 3 * DAY * 1000 - 60_000 < after_add <= 3 * DAY * 1000
    assert 0 < after_reads <= 60_000                        # reads (replicas' reloads) are not use
    assert after_second_add > 60_000 and after_replace > 60_000
    assert state.written_at is not None and abs(state.written_at - server_now) < 60
    assert persistent == -1


def test_a_key_left_idle_expires_in_redis(clean_redis_url):
    async def run():
        store = RedisStateStore(clean_redis_url, idle_ttl_s=0.2)
        await store.add(KEY_A, {"m": vec(1)})
        listed = await store.keys()
        deadline = time.monotonic() + 30
        while await store.keys() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        gone = await store.read(KEY_A)
        await store.aclose()
        return listed, gone

    listed, gone = asyncio.run(run())
    assert listed == [KEY_A]
    assert gone.gen is None and not gone.arms               # nothing left: not even a marker


def test_a_replica_forgets_an_idle_tenant_so_expired_state_stays_gone(clean_redis_url):
    """A replica keeps its view of every tenant it knows, and restores a key Redis lost from it.
    With an idle TTL it must forget an idle tenant first, or the key's expiry would be undone."""
    options = Algorithm.model_validate({"linucb": {"features": ["bias"]}}).options
    x = vec(1.0)

    async def run(idle_ttl_s):
        store = RedisStateStore(clean_redis_url, idle_ttl_s=idle_ttl_s)
        replica = LinUCBSelector(options, decision="hard")
        replica.observe("acme", "m", x, 1.0)
        await replica.sync(store)
        key = replica.state_key("acme")
        learner = replica.learner("acme")
        learner.used_at = learner.created_at = time.time() - 2 * DAY   # served two days ago
        await replica.sync(store)
        forgotten = "acme" not in replica.tenants()
        await raw_client(clean_redis_url).delete(store.namespace + key)   # what the TTL does
        replica.learner("acme").reloaded_at = 0.0             # due for its periodic reload
        await replica.sync(store)
        restored = await store.read(key)
        await store.aclose()
        return forgotten, restored

    forgotten, restored = asyncio.run(run(DAY))
    assert forgotten and not restored.arms
    # without the idle TTL the replica keeps its view and restores the lost key (what the TTL must avoid)
    kept, restored_without_ttl = asyncio.run(run(None))
    assert not kept and restored_without_ttl.arms


def test_the_gateway_sets_the_policy_idle_ttl_on_learned_state(sim, gateway_factory, clean_redis_url):
    policy = base_policy(sim, decisions=[{"name": "learn", "models": ["alpha", "beta"],
                                          "algorithm": {"linucb": {"features": ["bias"], "sync_interval_s": 0.05}}}])
    policy["server"]["learned_state_idle_ttl"] = "14d"
    gw = gateway_factory(Policy.model_validate(policy), redis_url=clean_redis_url)
    assert gw.chat("learn from me").status_code == 200
    client = redis.Redis.from_url(clean_redis_url)
    deadline = time.monotonic() + 30
    names = []
    while not names and time.monotonic() < deadline:
        names = [n for n in client.scan_iter("sigroute:bandit:*")]
        time.sleep(0.05)
    assert names, "the learned state was never flushed"
    assert 13 * DAY * 1000 < client.pttl(names[0]) <= 14 * DAY * 1000
    client.close()


# ------------------------------------------------------------------------------ sigroute bandit gc

def age(url: str, namespace_key: str, days: float) -> None:
    """Make a key look last written `days` ago (rewrite the write time in its marker)."""
    client = redis.Redis.from_url(url) if not url.startswith("redis+cluster") else None
    if client is None:
        from redis.cluster import RedisCluster
        host, port = url.split("://", 1)[1].split(",")[0].split(":")
        client = RedisCluster(host=host, port=int(port))
    meta = json.loads(client.hget(namespace_key, "\x00meta"))
    meta["w"] = int(client.time()[0] - days * DAY)
    client.hset(namespace_key, "\x00meta", json.dumps(meta))
    client.close()


def gc(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "bandit", "gc", "--redis", url, *args],
                          capture_output=True, text=True, timeout=120)


def test_gc_reports_by_schema_and_tenant_and_removes_only_idle_state(url):
    async def seed():
        store = RedisStateStore(url)
        for key in (KEY_A, KEY_Z, KEY_OLD_SCHEMA):
            await store.add(key, {"m": vec(1, 2, 3), "n": vec(0, 1, 0)})
        await store.aclose()

    asyncio.run(seed())
    age(url, "sigroute:bandit:" + KEY_A, 45)
    age(url, "sigroute:bandit:" + KEY_OLD_SCHEMA, 90)

    dry = gc(url, "--idle", "30", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "schema d=gone/a=linucb/s=0ld5c4: 1 tenant(s), 1 key(s), 1 idle 30+ days  (whole schema stale)" in dry.stdout
    assert "schema d=hard/a=linucb/s=abc123: 2 tenant(s), 2 key(s), 1 idle 30+ days" in dry.stdout
    assert f"STALE tenant acme: {KEY_A}  idle 45.0 days, 2 arm(s)" in dry.stdout
    assert f"tenant zeta: {KEY_Z}  idle 0.0 days" in dry.stdout and f"STALE tenant zeta" not in dry.stdout
    assert "bytes" in dry.stdout                                 # MEMORY USAGE of each key
    assert "dry run: 2 of 3 state key(s)" in dry.stderr

    async def listed():
        store = RedisStateStore(url)
        keys = await store.keys()
        states = {k: await store.read(k) for k in (KEY_A, KEY_Z)}
        await store.aclose()
        return keys, states

    assert asyncio.run(listed())[0] == sorted([KEY_A, KEY_Z, KEY_OLD_SCHEMA])   # a dry run removes nothing
    done = gc(url, "--idle", "30")
    assert done.returncode == 0, done.stderr
    assert "removed 2 of 3 state key(s)" in done.stderr
    keys, states = asyncio.run(listed())
    assert keys == [KEY_Z]
    # what stays of a removed key is the marker a reset leaves: replicas accept it, never restore
    assert states[KEY_A].operator_set and not states[KEY_A].arms
    assert states[KEY_Z].arms["m"].tolist() == [1, 2, 3]


def test_gc_keeps_a_key_written_after_it_was_found_idle(clean_redis_url):
    async def run():
        store = RedisStateStore(clean_redis_url)
        await store.add(KEY_A, {"m": vec(1)})
        cutoff = await store.server_time() - 30 * DAY
        age(clean_redis_url, store.namespace + KEY_A, 45)
        await store.add(KEY_A, {"m": vec(1)})                 # a replica flushes before gc removes it
        removed = await store.delete_idle(KEY_A, cutoff)
        state = await store.read(KEY_A)
        await store.aclose()
        return removed, state

    removed, state = asyncio.run(run())
    assert removed == 0 and state.arms["m"].tolist() == [2]


def test_gc_needs_a_positive_idle_time(clean_redis_url):
    bad = gc(clean_redis_url, "--idle", "0")
    assert bad.returncode == 2 and "--idle must be a positive number of days" in bad.stderr


def test_memory_store_keeps_write_times_and_deletes_only_idle_keys():
    async def run():
        store = MemoryStateStore()
        await store.add(KEY_A, {"m": vec(1)})
        written = (await store.read(KEY_A)).written_at
        kept = await store.delete_idle(KEY_A, time.time() - DAY)
        removed = await store.delete_idle(KEY_A, time.time() + DAY)
        return written, kept, removed, await store.keys()

    written, kept, removed, keys = asyncio.run(run())
    assert written is not None and abs(written - time.time()) < 60
    assert kept == 0 and removed == 1 and keys == []


# ------------------------------------------------------------------------------ cached answers

def cache_entry(doc_id: str, partition: str = "acme") -> "CacheEntry":
    from sigroute.cache.store import CacheEntry

    return CacheEntry(doc_id=doc_id, partition=partition, category="general", response=b'{"answer": 1}',
                      tenant=partition, decision="default")


def test_memory_cache_drops_answers_unused_for_the_idle_ttl_but_never_keeps_one_past_its_own():
    from sigroute.cache.store import MemoryDocumentStore
    from tests.conftest import ManualClock

    clock = ManualClock(1000.0)
    store = MemoryDocumentStore(clock, idle_ttl_s=10)

    async def run():
        await store.put(cache_entry("used"), 25)
        await store.put(cache_entry("idle"), 25)
        seen = []
        for step in (8, 8, 8):                     # "used" is read every 8 s, "idle" never
            clock.advance(step)
            seen.append((await store.get("used")) is not None)
        idle_gone = await store.get("idle") is None and await store.count() == 1
        clock.advance(2)                           # 26 s after the put: past the answer's own TTL
        return seen, idle_gone, await store.get("used")

    seen, idle_gone, past_ttl = asyncio.run(run())
    assert seen == [True, True, True] and idle_gone and past_ttl is None


def test_redis_cache_hits_restart_the_idle_ttl_up_to_the_answers_own(url):
    from sigroute.cache.store import RedisDocumentStore

    async def run():
        store = RedisDocumentStore(url, idle_ttl_s=3600)
        client = raw_client(url)
        await store.put(cache_entry("long"), 7200)
        await store.put(cache_entry("short"), 60)
        doc, lru = store._doc("long"), store._lru_prefix + "general"
        at_put = await client.pttl(doc)
        await client.pexpire(doc, 5000)            # as if it had not been used for most of an hour
        hit = await store.get("long")
        after_hit = await client.pttl(doc)
        short_after_hit = (await store.get("short"), await client.pttl(store._doc("short")))
        lru_ttl = await client.pttl(lru)
        plain = RedisDocumentStore(url)            # no idle TTL: a hit changes nothing
        await client.pexpire(doc, 5000)
        await plain.get("long")
        unchanged = await client.pttl(doc)
        for closing in (store, plain):
            await closing.aclose()
        await client.aclose()
        return at_put, hit, after_hit, short_after_hit, lru_ttl, unchanged

    at_put, hit, after_hit, (short_hit, short_ttl), lru_ttl, unchanged = asyncio.run(run())
    assert 3_500_000 < at_put <= 3_600_000          # min(own TTL, idle TTL)
    assert hit is not None and 3_500_000 < after_hit <= 3_600_000
    assert short_hit is not None and 0 < short_ttl <= 60_000   # never past its own expiry
    assert lru_ttl > 3_500_000                         # the category LRU set lives as long as its documents
    assert 0 < unchanged <= 5000
