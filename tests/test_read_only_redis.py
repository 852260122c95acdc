"""A Redis that answers but refuses writes: a read-only replica (a URL pointing at the wrong node,
or an old primary demoted by a Sentinel or cluster failover answers READONLY until clients move).

Every store treats that like an unavailable Redis — the gateway serves without the shared cache,
rate limits fail open (counted), learning keeps its deltas, feedback is refused with 503 — never a
500 and never a lost answer. Real redis-server processes: a primary and its replica."""

from __future__ import annotations

import asyncio
import subprocess
import time

import numpy as np
import pytest
import redis

from sigroute.bandits.store import RedisPendingStore, RedisStateStore, StoreUnavailable
from sigroute.cache.store import CacheEntry, RedisDocumentStore
from sigroute.cache.store import StoreUnavailable as CacheStoreUnavailable
from sigroute.gateway.ratelimit import RateLimitStoreUnavailable, RedisRateLimitStore
from tests.conftest import _redis_server_binary, free_port
from tests.test_learning import LEARN, feedback


@pytest.fixture(scope="module")
def replica_url(tmp_path_factory):
    """The URL of a redis-server that replicates another one: it answers reads, refuses writes."""
    binary = _redis_server_binary()
    workdir = tmp_path_factory.mktemp("replica")
    primary, replica = free_port(), free_port()
    procs = []
    for port, extra in ((primary, []), (replica, ["--replicaof", "127.0.0.1", str(primary)])):
        procs.append(subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no", "--dir", str(workdir), *extra],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        deadline = time.monotonic() + 30
        while True:   # up, and the replica linked to its primary (so it refuses writes)
            try:
                info = redis.Redis(port=replica, socket_timeout=1).info("replication")
                if info.get("role") == "slave" and info.get("master_link_status") == "up":
                    break
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, "the replica did not link to its primary"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{replica}/0"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_every_store_reports_a_read_only_replica_as_unavailable(replica_url):
    limits, docs = RedisRateLimitStore(replica_url), RedisDocumentStore(replica_url)
    state, pending = RedisStateStore(replica_url), RedisPendingStore(replica_url)
    try:
        with pytest.raises(RateLimitStoreUnavailable, match="read-only"):
            await limits.take("caller", 1.0, 5.0)
        with pytest.raises(CacheStoreUnavailable, match="read-only"):
            await docs.put(CacheEntry(doc_id="d", partition="p", category="c", response=b"{}"), 60)
        with pytest.raises(StoreUnavailable, match="read-only"):
            await state.add("t=acme/d=learn/s=1", {"m": np.ones(3)})
        with pytest.raises(StoreUnavailable, match="read-only"):
            await pending.put("req-1", {"tenant": "acme"}, 60)
    finally:
        for store in (limits, docs, state, pending):
            await store.aclose()


def test_a_gateway_on_a_read_only_replica_answers_every_request(sim, gateway_factory, replica_url):
    from tests.conftest import base_policy

    policy = base_policy(sim, decisions=[{"name": "learn", "models": ["alpha", "beta"], "algorithm": LEARN,
                                          "cache": {"mode": "exact", "ttl": 600}}],
                         server={"rate_limit": {"requests_per_minute": 600}})
    gw = gateway_factory(policy, redis_url=replica_url)
    answers = [gw.chat(f"question {i % 2}") for i in range(4)]
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert {r.headers["x-sigroute-cache"] for r in answers} == {"miss"}   # nothing could be stored
    refused = feedback(gw, answers[0].headers["x-sigroute-request-id"], score=1)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "feedback_store_unavailable"
    metrics = gw.http.get("/metrics").text
    assert 'sigroute_rate_limit_store_errors_total{outcome="allowed"}' in metrics
