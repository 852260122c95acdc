"""Every shared store on a real local Redis Cluster (3 primaries, 3 replicas; tests/redis_cluster.py).

What is proved here, beyond the store tests that already run on the cluster (tests/test_bandit_stores.py
and tests/test_cache_core.py take a Redis and a Valkey cluster as two of their backends); the key
layout and gateway tests run on a Redis and on a Valkey cluster:

* cluster URLs: seed nodes parsed, credentials never shown, database 0 only; `sigroute serve`
  processes on a password-protected cluster, which no log line names with its password;
* where keys live: each family's keys are in the slot its scripts need (the whole cache in one
  slot, a rate-limit bucket in its key's slot, bandit and pending keys one per key);
* a rate-limit bucket on the cluster, and gateways on the cluster serving, caching, learning from
  feedback and rate-limiting, two of them sharing one limit and one cache;
* slots moved while traffic runs (ASK, then MOVED): no caller sees an error, no add or document is
  lost; only cache inserts are skipped while the cache's own slot is half moved (as when Redis is down);
* a primary killed with SIGKILL: the gateway keeps answering (the stores' fail-open paths, counted
  in metrics) and, once its replica is promoted, uses the cluster again.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import httpx
import numpy as np
import pytest
import redis

from sigroute._redis import cluster_seed_nodes, open_client, redacted_url
from sigroute.bandits.store import RedisPendingStore, RedisStateStore, StoreUnavailable, open_state_store
from sigroute.cache.index import VectorIndex
from sigroute.cache.semantic import SemanticCache
from sigroute.cache.store import CacheEntry, RedisDocumentStore
from sigroute.gateway.ratelimit import RedisRateLimitStore
from tests.conftest import GatewayProcess, base_policy
from tests.redis_cluster import (LocalCluster, clean_cluster_url, cluster, failover_cluster,  # noqa: F401
                                 valkey_cluster)                                               # (fixtures)

KEY = "sk-cluster-caller"
OTHER = "sk-cluster-other"
SCRAPER = "sk-cluster-metrics"
LEARN = {"linucb": {"alpha": 0.2, "features": ["bias", "length", "shape"], "sync_interval_s": 0.05,
                    "reward": {"quality": 1.0, "feedback_ttl_s": 60}}}


def cluster_policy(sim, rate_limit: dict, *, algorithm: dict | None = None, caller: str = KEY) -> dict:
    keys = [{"key_sha256": hashlib.sha256(caller.encode()).hexdigest(), "tenant": "acme", "rate_limit": rate_limit},
            {"key_sha256": hashlib.sha256(OTHER.encode()).hexdigest(), "tenant": "acme"},
            {"key_sha256": hashlib.sha256(SCRAPER.encode()).hexdigest(), "tenant": "ops", "roles": ["metrics"]}]
    decision = {"name": "default", "models": ["alpha", "beta"], "cache": {"mode": "exact"}}
    if algorithm:
        decision["algorithm"] = algorithm
    return base_policy(sim, auth={"keys": keys}, decisions=[decision])


def metric(gw, name: str, **labels) -> float:
    text = gw.http.get("/metrics", headers={"authorization": f"Bearer {SCRAPER}"}).text
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and \
                all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def chat(gw, content: str, api_key: str = KEY):
    return gw.chat(content, api_key=api_key)


PATIENT = {"socket_timeout": 5.0, "connect_timeout": 5.0}   # request-path stores, where speed is not tested


def wait_for(condition, timeout_s: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout_s:g}s")
        time.sleep(0.1)


def cluster_client(c: LocalCluster) -> redis.RedisCluster:
    """A plain redis-py cluster client seeded with a node that is alive now."""
    return redis.RedisCluster(host="127.0.0.1", port=c.alive()[0], socket_timeout=5)


# --------------------------------------------------------------------------------------------
# URLs


def test_cluster_urls_name_seed_nodes_and_never_show_credentials():
    url = "redis+cluster://app:hunter2@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002?password=hunter2&socket_keepalive=yes"
    assert cluster_seed_nodes(url) == [("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002)]
    shown = redacted_url(url)
    assert "hunter2" not in shown and "app" not in shown
    assert shown.startswith("redis+cluster://10.0.0.1:7000,10.0.0.2:7001,[::1]:7002")
    for store in (open_state_store(url), RedisRateLimitStore(url), RedisDocumentStore(url)):
        assert "hunter2" not in store.description and "hunter2" not in repr(store)
    for bad, why in (("redis+cluster://:hunter2@10.0.0.1", "port is required"),
                     ("redis+cluster://:hunter2@", "at least one seed node"),
                     ("redis+cluster://:hunter2@10.0.0.1:7000/3", "only database 0"),
                     ("redis+cluster://:hunter2@10.0.0.1:port", "port is required")):
        with pytest.raises(ValueError, match=why) as caught:
            open_client(bad, decode_responses=False, socket_timeout=1, connect_timeout=1, retries=0)
        assert "hunter2" not in str(caught.value)
    with pytest.raises(ValueError, match="redis\\+cluster://") as caught:
        open_state_store("memcached://:hunter2@host:1")
    assert "hunter2" not in str(caught.value)


async def test_an_unreachable_cluster_is_unavailable_naming_it_without_password():
    from tests.conftest import free_port

    url = f"redis+cluster://:hunter2@127.0.0.1:{free_port()}"
    store = RedisStateStore(url, socket_timeout=0.5, connect_timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.add("k", {"a": np.ones(2)})
    finally:
        await store.aclose()
    assert "127.0.0.1" in str(caught.value) and "hunter2" not in str(caught.value)


# --------------------------------------------------------------------------------------------
# Where keys live


@pytest.fixture(params=["redis", "valkey"])
def any_cluster(request) -> LocalCluster:
    """The module's Redis cluster, then its Valkey cluster; flushed before the test."""
    c = request.getfixturevalue("cluster" if request.param == "redis" else "valkey_cluster")
    c.flushall()
    return c


async def test_each_key_family_lives_in_the_slot_its_scripts_need(any_cluster):
    cluster = any_cluster
    url = cluster.url
    state, pending = RedisStateStore(url), RedisPendingStore(url)
    # (the request-path stores wait up to 5 s here: this test is about key slots, not a busy machine)
    docs, buckets = RedisDocumentStore(url, **PATIENT), RedisRateLimitStore(url, **PATIENT)
    try:
        await state.add("t=acme/d=hard/s=1", {"m": np.ones(3)})
        await state.add("t=globex/d=hard/s=1", {"m": np.ones(3)})
        await pending.put("req-1", {"tenant": "acme"}, 60)
        for i in range(4):   # quota 1: each put evicts the document before it in its category (keys it
            # finds in the category's LRU set, not ones it was given)
            await docs.put(CacheEntry(doc_id=f"doc-{{{i}}}", partition="p", category=f"cat{i % 2}",
                                      response=b"{}", embedding=np.ones(4, dtype=np.float32)), 60, quota=1)
        await docs.get("doc-{3}")
        await docs.delete("doc-{2}")
        await buckets.take("key-a", 1.0, 5.0)
        await buckets.take("key-b}x", 1.0, 5.0)
    finally:
        for store in (state, pending, docs, buckets):
            await store.aclose()

    names = sorted(k.decode() for k in cluster.all_keys())
    cache_keys = [n for n in names if n.startswith("{sigroute:cache}:")]
    # every cache key (documents, per-category LRU sets, the event stream) shares one slot:
    # put/get/delete scripts touch the document, its category's LRU set, other documents and the stream
    assert {cluster.keyslot(n) for n in cache_keys} == {cluster.keyslot("sigroute:cache")}
    assert "{sigroute:cache}:events" in cache_keys
    assert {n for n in cache_keys if ":lru:" in n} == {"{sigroute:cache}:lru:cat1"}   # cat0 emptied by the delete
    assert [n for n in cache_keys if ":d:" in n] == ["{sigroute:cache}:d:doc-{3}"]   # the rest evicted or deleted
    # a rate-limit bucket is one key, in its rate-limit key's slot
    assert cluster.keyslot("sigroute:ratelimit:{key-a}") == cluster.keyslot("key-a")
    assert {"sigroute:ratelimit:{key-a}", "sigroute:ratelimit:{key-b}x}"} <= set(names)
    # bandit state and pending records: one key each, every script on that key alone, spread by key
    assert {"sigroute:bandit:t=acme/d=hard/s=1", "sigroute:bandit:t=globex/d=hard/s=1",
            "sigroute:pending:req-1"} <= set(names)
    owners = {cluster.slot_owner(cluster.keyslot(n)) for n in names}
    assert len(owners) >= 2, "keys of different families and tenants spread over the primaries"


async def test_a_rate_limit_bucket_on_the_cluster_refuses_past_its_burst_and_survives_a_script_flush(
        cluster, clean_cluster_url):
    store = RedisRateLimitStore(clean_cluster_url, **PATIENT)
    try:
        admitted = [await store.take("caller", 0.5, 5.0) for _ in range(5)]   # one token every 2 s
        wait = await store.take("caller", 0.5, 5.0)
        assert admitted == [0.0] * 5 and 0 < wait <= 2.0
        bucket = store.bucket_key("caller")
        assert 0 < cluster.client(cluster.slot_owner(cluster.keyslot(bucket))).pttl(bucket) <= 5 / 0.5 * 1000 + 1000
        for port in cluster.primaries():   # every node forgets the script: EVALSHA answers NOSCRIPT, it is loaded again
            cluster.client(port).script_flush()
        assert await store.take("another caller", 20.0, 1.0) == 0.0
        assert await store.take("caller", 0.5, 5.0) > 0
    finally:
        await store.aclose()


# --------------------------------------------------------------------------------------------
# Gateways on the cluster


def test_two_gateways_on_one_cluster_share_limits_cache_and_learning(sim, gateway_factory, any_cluster):
    clean_cluster_url = any_cluster.url   # flushed by any_cluster
    burst = 6
    policy = cluster_policy(sim, {"requests_per_minute": 6, "burst": burst}, algorithm=LEARN)
    # this test is about sharing, not about a busy machine's timeouts: with the default 0.5 s, a
    # first connect to six cluster nodes on two busy CPU cores can time out and the lookup is skipped
    patient = {"redis_url": clean_cluster_url, "redis_timeout_s": 5.0}
    a = gateway_factory(policy, **patient)
    b = gateway_factory(policy, **patient)

    first = chat(a, "What is the capital of Peru?", api_key=OTHER)          # no limit on this key
    assert first.status_code == 200 and first.headers["x-sigroute-cache"] == "miss"
    again = chat(b, "What is the capital of Peru?", api_key=OTHER)
    assert again.headers["x-sigroute-cache"] == "hit-exact"                 # stored by a, found by b
    assert again.json()["choices"][0]["message"]["content"] == first.json()["choices"][0]["message"]["content"]

    feedback = a.http.post("/v1/feedback", json={"request_id": first.headers["x-sigroute-request-id"],
                                                 "thumbs": "up"}, headers={"authorization": f"Bearer {OTHER}"})
    assert feedback.status_code == 200, feedback.text   # its pending record was found on the cluster

    def learned():
        async def read():
            store = RedisStateStore(clean_cluster_url)
            try:
                return {k: await store.load(k) for k in await store.keys()}
            finally:
                await store.aclose()
        return asyncio.run(read())
    state = wait_for(learned, what="learned state on the cluster")
    assert any(key.startswith("t=acme/") for key in state)
    assert any(np.any(vector != 0) for arms in state.values() for vector in arms.values())

    statuses = [chat((a, b)[i % 2], f"question number {i}").status_code for i in range(2 * burst)]
    admitted = statuses.count(200)
    # two per-process buckets would admit 2 x burst; the shared one burst (plus a refill or two)
    assert burst <= admitted <= burst + 2, statuses
    assert set(statuses) <= {200, 429}
    assert metric(a, "sigroute_rate_limit_store_errors_total") == 0
    assert metric(b, "sigroute_rate_limit_store_errors_total") == 0


def test_serve_processes_on_a_password_protected_cluster_never_show_the_password(sim, gateway_factory, tmp_path,
                                                                                caplog):
    with LocalCluster(tmp_path / "cluster", password="hunter2") as protected:
        policy = cluster_policy(sim, {"requests_per_minute": 6000})
        here = gateway_factory(policy, redis_url=protected.url)
        with GatewayProcess(policy, tmp_path, protected.url) as there, \
                httpx.Client(base_url=there.url, timeout=30) as http:
            def ask_there(content: str) -> str:
                r = http.post("/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                              json={"model": "auto", "messages": [{"role": "user", "content": content}]})
                assert r.status_code == 200, r.text
                return r.headers["x-sigroute-cache"]

            assert ask_there("Shared via a cluster?") == "miss"          # `sigroute serve --redis redis+cluster://`
            assert chat(here, "Shared via a cluster?").headers["x-sigroute-cache"] == "hit-exact"
            protected.kill_primary_of(protected.keyslot("sigroute:cache"))  # failures are logged, naming the cluster
            assert ask_there("Asked while a primary is down") == "miss"
            assert chat(here, "Asked here while a primary is down").status_code == 200
            logged = there.output() + caplog.text
    assert "redis+cluster://127.0.0.1:" in logged          # the failures were logged ...
    assert "hunter2" not in logged                         # ... without the password


# --------------------------------------------------------------------------------------------
# Resharding and failover


def _other_primary(c: LocalCluster, slot: int) -> int:
    owner = c.slot_owner(slot)
    return next(p for p in c.primaries() if p != owner)


async def test_a_slot_moved_mid_traffic_reaches_no_caller_as_an_error(tmp_path):
    with LocalCluster(tmp_path / "cluster") as c:
        await _move_slots_under_traffic(c)


async def _move_slots_under_traffic(c: LocalCluster) -> None:
    url = c.url
    slow_ok = {"socket_timeout": 5.0}   # this test is about redirects, not a busy machine's timeouts
    state, pending = RedisStateStore(url, **slow_ok), RedisPendingStore(url, **slow_ok)
    buckets, docs = RedisRateLimitStore(url, **slow_ok), RedisDocumentStore(url, **slow_ok)
    cache = SemanticCache(docs, VectorIndex(), cooldown_s=0.05)   # the cache's real caller
    bandit_key, bucket_key = "t=acme/d=hard/s=1", "caller-1"
    slots = {c.keyslot(state._name(bandit_key)), c.keyslot(buckets.bucket_key(bucket_key)),
             c.keyslot("sigroute:cache")}
    for n in range(30):   # something to move in every slot before traffic starts
        await state.add(bandit_key, {"m": np.ones(4)})
        await docs.put(CacheEntry(doc_id=f"warm-{n}", partition="p", category="c", response=b"{}"), 120)
    await buckets.take(bucket_key, 1.0, 1e6)   # a bucket that lives (and never refuses) while the test runs
    errors: list[BaseException] = []
    done = threading.Event()
    moved: dict[int, int] = {}

    def reshard():
        try:
            for slot in sorted(slots):
                moved[slot] = c.migrate_slot(slot, _other_primary(c, slot), pause_s=0.02)
        except BaseException as exc:   # pragma: no cover - shown by the assertion below
            errors.append(exc)
        finally:
            done.set()

    counts = {"adds": 30, "takes": 0, "claims": 0, "inserts": 0, "skipped_inserts": 0, "hits": 0, "misses": 0}
    thread = threading.Thread(target=reshard)
    thread.start()
    try:
        n = 0
        while not done.is_set() or n < 20:
            n += 1
            try:
                await state.add(bandit_key, {"m": np.ones(4)})
                counts["adds"] += 1
                assert await buckets.take(bucket_key, 1.0, 1e6) == 0
                counts["takes"] += 1
                await pending.put(f"req-{n}", {"tenant": "acme"}, 60)
                assert (await pending.claim(f"req-{n}", "acme", "fp"))[0] == "applied"
                counts["claims"] += 1
                # A cache put touches several keys of the cache's one slot (document, LRU set, event
                # stream): while that slot is half moved Redis answers TRYAGAIN, redis-py retries, and
                # past its budget the cache skips the insert (as when Redis is down), never raising.
                stored = await cache.insert(partition="p", exact_key=f"doc-{n}", response=b"{}", category="c",
                                            ttl_s=120, quota=10_000)
                counts["inserts" if stored else "skipped_inserts"] += 1
                hit = await cache.lookup("p", f"warm-{n % 30}", mode="exact")
                counts["hits" if hit is not None else "misses"] += 1
            except Exception as exc:
                errors.append(exc)
                break
            await asyncio.sleep(0)
        thread.join(timeout=120)
        assert not errors, errors
        assert all(moved.get(slot, 0) > 0 for slot in slots), moved
        # nothing was lost on the way: every add counted once, every stored document still there
        assert (await state.load(bandit_key))["m"].tolist() == [float(counts["adds"])] * 4
        assert counts["hits"] >= 1 and counts["inserts"] >= 1, counts
        assert await docs.count() == 30 + counts["inserts"]      # every insert reported done is there
        assert (await docs.category_counts()) == {"c": 30 + counts["inserts"]}
        await asyncio.sleep(0.1)                                 # past the cache's cooldown: all moved
        assert await cache.insert(partition="p", exact_key="after", response=b"{}", category="c", ttl_s=120)
        assert (await cache.lookup("p", "after", mode="exact")) is not None
        print("slot migration mid-traffic:", counts, "keys moved per slot:", moved)
    finally:
        for store in (state, pending, buckets, docs):
            await store.aclose()


def test_a_killed_primary_fails_over_and_the_gateway_keeps_answering(sim, gateway_factory, failover_cluster):
    c = failover_cluster
    cache_slot = c.keyslot("sigroute:cache")
    victim = c.slot_owner(cache_slot)

    def bucket_of(api_key: str) -> str:   # the gateway's rate-limit key for a caller is tenant/sha256[:12]
        return f"sigroute:ratelimit:{{acme/{hashlib.sha256(api_key.encode()).hexdigest()[:12]}}}"

    # a caller whose bucket lives on the same primary as the cache: one SIGKILL takes both away
    caller = next(k for k in (f"sk-failover-{i}" for i in range(1000))
                  if c.slot_owner(c.keyslot(bucket_of(k))) == victim)
    gw = gateway_factory(cluster_policy(sim, {"requests_per_minute": 60000, "burst": 1000}, caller=caller),
                         redis_url=c.url)
    question = "Is the cache back after the failover?"
    assert chat(gw, "warm up", api_key=caller).status_code == 200
    assert chat(gw, question, api_key=caller).headers["x-sigroute-cache"] == "miss"
    assert chat(gw, question, api_key=caller).headers["x-sigroute-cache"] == "hit-exact"

    dead = c.kill_primary_of(cache_slot)
    killed_at = time.time()
    during = [chat(gw, question, api_key=caller) for _ in range(5)]
    new_primary = c.wait_promoted(cache_slot, dead)
    assert new_primary != dead and c.slot_owner(c.keyslot(bucket_of(caller))) == new_primary
    # requests that met the dead primary were answered all the same: admitted unchecked (fail open)
    # and served without the cache, each counted
    assert [r.status_code for r in during] == [200] * 5
    assert during[0].headers["x-sigroute-cache"] == "miss"      # its lookup met the dead primary
    assert metric(gw, "sigroute_rate_limit_store_errors_total", outcome="allowed") >= 1
    assert metric(gw, "sigroute_cache_stores_total", result="failed") >= 1

    after: list[int] = []

    def bucket_written_by_the_new_primary():
        after.append(chat(gw, f"after failover {len(after)}", api_key=caller).status_code)
        client = cluster_client(c)
        try:
            updated = client.hget(bucket_of(caller), "u")
        finally:
            client.close()
        return updated is not None and float(updated) > killed_at

    wait_for(bucket_written_by_the_new_primary, timeout_s=30, what="a rate-limit check answered by the new primary")
    # the answer cached before the kill was replicated: the promoted replica serves it
    wait_for(lambda: chat(gw, question, api_key=caller).headers.get("x-sigroute-cache") == "hit-exact",
             timeout_s=30, what="a cache hit from the promoted replica")
    assert set(after) == {200}, after
