"""A Redis that answers but refuses writes:

* a read-only replica (a URL pointing at the wrong node, or an old primary demoted by a Sentinel or
  cluster failover, answers READONLY until clients move);
* a full Redis with `maxmemory-policy noeviction` (answers OOM to every write);
* an ACL user without the right to run scripts (NOPERM).

Every store treats each like an unavailable Redis — the gateway serves without the shared cache,
rate limits fail open (counted), learning keeps its deltas, feedback is refused with 503 — never a
500 and never a lost answer. Real redis-server processes (a primary and its replica; a full one;
one with an ACL user)."""

from __future__ import annotations

import contextlib
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
def refusing_url(tmp_path_factory):
    """{kind: URL} of redis-servers that answer but refuse the stores' writes:
    "read-only" a replica of another server, "full" a server at its maxmemory with noeviction,
    "no permission" a server whose ACL user may not run scripts."""
    binary = _redis_server_binary()
    workdir = tmp_path_factory.mktemp("refusing")
    primary, replica, full, acl = (free_port() for _ in range(4))
    servers = {primary: [], replica: ["--replicaof", "127.0.0.1", str(primary)],
               full: ["--maxmemory", "4mb", "--maxmemory-policy", "noeviction"],
               acl: ["--user", "default", "off", "--user", "app", "on", ">app-secret", "~*", "+@all", "-@scripting"]}
    procs = [subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                               "--dir", str(workdir), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for port, extra in servers.items()]
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
        filler = redis.Redis(port=full, socket_timeout=5)
        with pytest.raises(redis.exceptions.OutOfMemoryError):   # fill it until it refuses writes
            for n in range(1000):
                filler.set(f"filler:{n}", b"x" * 65536)
        yield {"read-only": f"redis://127.0.0.1:{replica}/0", "full": f"redis://127.0.0.1:{full}/0",
               "no permission": f"redis://app:app-secret@127.0.0.1:{acl}/0"}
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


KINDS = ("read-only", "full", "no permission")


@pytest.mark.parametrize("kind", KINDS)
async def test_every_store_reports_a_redis_refusing_writes_as_unavailable(refusing_url, kind):
    url = refusing_url[kind]
    limits, docs = RedisRateLimitStore(url), RedisDocumentStore(url)
    state, pending = RedisStateStore(url), RedisPendingStore(url)
    try:
        with pytest.raises(RateLimitStoreUnavailable, match=kind):   # the message names the cause
            await limits.take("caller", 1.0, 5.0)
        with pytest.raises(CacheStoreUnavailable, match=kind):
            # a full Redis 7.0 still runs the put script (its first command frees memory, so the OOM
            # check lets it through), never the lookup's refresh of the entry it stored
            await docs.put(CacheEntry(doc_id="d", partition="p", category="c", response=b"{}"), 60)
            await docs.get("d")
        with pytest.raises(StoreUnavailable, match=kind):
            await state.add("t=acme/d=learn/s=1", {"m": np.ones(3)})
        if kind == "full":   # accepted by a full Redis 7.0 for the same reason; refused, it is unavailable
            with contextlib.suppress(StoreUnavailable):
                await pending.put("req-1", {"tenant": "acme"}, 60)
        else:
            with pytest.raises(StoreUnavailable, match=kind):
                await pending.put("req-1", {"tenant": "acme"}, 60)
    finally:
        for store in (limits, docs, state, pending):
            await store.aclose()


@pytest.mark.parametrize("kind", KINDS)
def test_a_gateway_on_a_redis_refusing_writes_answers_every_request(sim, gateway_factory, refusing_url, kind):
    from tests.conftest import base_policy

    policy = base_policy(sim, decisions=[{"name": "learn", "models": ["alpha", "beta"], "algorithm": LEARN,
                                          "cache": {"mode": "exact", "ttl": 600}}],
                         server={"rate_limit": {"requests_per_minute": 600}})
    gw = gateway_factory(policy, redis_url=refusing_url[kind])
    answers = [gw.chat(f"question {i % 2}") for i in range(4)]
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert {r.headers["x-sigroute-cache"] for r in answers} == {"miss"}   # nothing could be stored
    refused = feedback(gw, answers[0].headers["x-sigroute-request-id"], score=1)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "feedback_store_unavailable"
    metrics = gw.http.get("/metrics").text
    assert 'sigroute_rate_limit_store_errors_total{outcome="allowed"}' in metrics
