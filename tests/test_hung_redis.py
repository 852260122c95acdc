"""A Redis that stops answering without closing its connections (hung, paused, cut off by a
partition) — here a real redis-server paused with SIGSTOP. Every command to it would wait its
whole socket timeout; the stores instead fail fast after the first timeout and try again one
command at a time, so requests are served at full speed (without cache and shared learning)
while it hangs, and everything works again once it answers.

Durations are only compared with the time the same commands would need if each waited its own
timeout (a lower bound that holds on any machine), never with what a quiet machine achieves."""

from __future__ import annotations

import asyncio
import signal
import time

import numpy as np
import pytest

from sigroute.bandits.store import MemoryStateStore, RedisPendingStore, RedisStateStore, StoreUnavailable
from sigroute.cache.store import RedisDocumentStore
from sigroute.cache.store import StoreUnavailable as CacheStoreUnavailable
from tests.conftest import _redis_server_binary
from tests.test_store_loss import RestartableRedis, World, assert_exact

TIMEOUT_S = 1.0   # the stores' socket timeout in these tests


@pytest.fixture
def paused_redis(tmp_path):
    """A private redis-server; `.pause()` stops it answering (SIGSTOP), `.resume()` lets it go on."""
    server = RestartableRedis(tmp_path, _redis_server_binary())
    server.start()
    server.pause = lambda: server.proc.send_signal(signal.SIGSTOP)
    server.resume = lambda: server.proc.send_signal(signal.SIGCONT)
    yield server
    if server.proc.poll() is None:
        server.resume()
    server.kill()


def pending_store(url: str, hold_s: float) -> RedisPendingStore:
    return RedisPendingStore(url, socket_timeout=TIMEOUT_S, connect_timeout=TIMEOUT_S, hung_hold_s=hold_s)


RECORD = {"tenant": "acme", "decision": "d", "model": "m"}

# one store command of each kind, as the gateway's request path and sync loop use them
COMMANDS = {
    "pending put": (lambda url, hold: pending_store(url, hold),
                    lambda store, i: store.put(f"req-{i}", RECORD, 60)),
    "pending claim": (lambda url, hold: pending_store(url, hold),
                      lambda store, i: store.claim(f"req-{i}", "acme", "1.0")),
    "state add": (lambda url, hold: RedisStateStore(url, socket_timeout=TIMEOUT_S, connect_timeout=TIMEOUT_S,
                                                     hung_hold_s=hold),
                  lambda store, i: store.add("t=acme/d=d/a=linucb/s=x", {"m": np.ones(3)})),
    "cache get": (lambda url, hold: RedisDocumentStore(url, socket_timeout=TIMEOUT_S, connect_timeout=TIMEOUT_S,
                                                       hung_hold_s=hold),
                  lambda store, i: store.get(f"doc-{i}")),
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
async def test_a_hung_redis_costs_one_timeout_not_one_per_command(paused_redis, command):
    open_store, run = COMMANDS[command]
    store = open_store(paused_redis.url, 60.0)   # no new attempt during the test
    try:
        await run(store, 0)                       # connect while Redis answers
        paused_redis.pause()
        with pytest.raises((StoreUnavailable, CacheStoreUnavailable), match="Timeout"):
            await run(store, 1)                   # the first command waits its timeout ...
        began = time.monotonic()
        for i in range(20):                       # ... the next ones fail at once, naming why
            with pytest.raises((StoreUnavailable, CacheStoreUnavailable), match="did not answer within its timeout"):
                await run(store, 2 + i)
        # waiting for each would take at least 20 timeouts; failing fast takes microseconds each
        assert time.monotonic() - began < 20 * TIMEOUT_S / 2
    finally:
        paused_redis.resume()
        await store.aclose()


async def test_records_put_while_redis_hangs_are_kept_and_written_once_it_answers(paused_redis):
    store = pending_store(paused_redis.url, 0.2)
    try:
        await store.put("before", RECORD, 60)
        paused_redis.pause()
        for i in range(5):
            with pytest.raises(StoreUnavailable):
                await store.put(f"during-{i}", RECORD, 60)
        assert store.unsent == 5                  # failing fast still keeps every record
        paused_redis.resume()
        deadline = time.monotonic() + 30
        while True:                               # the first attempt after the hold gets through
            try:
                written = await store.flush_unsent()
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store never used Redis again after it answered"
                await asyncio.sleep(0.1)
        assert written == 5 and store.unsent == 0
        assert (await store.claim("during-3", "acme", "1.0"))[0] == "applied"
    finally:
        await store.aclose()


async def test_a_refused_connection_does_not_hold_the_store(paused_redis):
    """A stopped Redis refuses connections at once: nothing is slow, so nothing is held back and the
    first command after it restarts goes through."""
    store = pending_store(paused_redis.url, 60.0)
    try:
        await store.put("before", RECORD, 60)
        paused_redis.kill()
        with pytest.raises(StoreUnavailable):
            await store.put("while-stopped", RECORD, 60)
        paused_redis.start()
        await store.put("after", RECORD, 60)      # at once, no hold
        assert (await store.claim("after", "acme", "1.0"))[0] == "applied"
    finally:
        await store.aclose()


def test_a_gateway_serves_at_full_speed_while_redis_hangs(sim, gateway_factory, paused_redis):
    """Cache lookups and inserts, pending records and learning sync all meet the hung Redis; only
    the first request waits for timeouts, the others are answered without waiting for it."""
    from tests.test_learning import feedback, learning_policy

    policy = learning_policy(sim)
    policy["decisions"][0]["cache"] = {"mode": "exact", "ttl": 600}
    gw = gateway_factory(policy, redis_url=paused_redis.url)
    assert gw.chat("before the hang").status_code == 200
    paused_redis.pause()
    first = gw.chat("first during the hang")      # meets the timeouts (cache 0.5 s, pending store 5 s)
    assert first.status_code == 200
    began = time.monotonic()
    answers = [gw.chat(f"during the hang {i}") for i in range(6)]
    elapsed = time.monotonic() - began
    assert [r.status_code for r in answers] == [200] * 6
    # each would wait at least the pending store's 5 s timeout without failing fast
    assert elapsed < 6 * 5.0 / 2, f"{elapsed:.1f}s for 6 answers while Redis hangs"
    refused = feedback(gw, answers[0].headers["x-sigroute-request-id"], score=1)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "feedback_store_unavailable"
    paused_redis.resume()
    deadline = time.monotonic() + 30
    while (r := feedback(gw, answers[0].headers["x-sigroute-request-id"], score=1)).status_code == 503:
        assert time.monotonic() < deadline, "feedback never worked again after Redis answered"
        time.sleep(0.2)
    assert r.status_code == 200 and r.json()["status"] == "recorded"


# --------------------------------------------------------------------------------------------
# An add that timed out may have run: sent again, it must count once


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_an_add_sent_again_under_its_op_is_applied_once(kind, clean_redis_url):
    store = MemoryStateStore() if kind == "memory" else RedisStateStore(clean_redis_url)
    key, one = "t=acme/d=d/a=linucb/s=x", {"m": np.ones(3)}
    try:
        first = await store.add(key, one, op=("replica-a", 1))
        again = await store.add(key, one, op=("replica-a", 1))          # the same add, sent again
        assert again.applied and (again.gen, again.version) == (first.gen, first.version)
        assert (await store.add(key, one, op=("replica-b", 1))).applied  # another replica's own add
        later = await store.add(key, one, op=("replica-a", 3))
        assert later.applied and later.version == first.version + 2
        stale = await store.add(key, one, op=("replica-a", 2))          # older than the last one held
        assert stale.applied and stale.version == later.version
        np.testing.assert_array_equal((await store.load(key))["m"], 3 * np.ones(3))
        with pytest.raises(ValueError):
            await store.add(key, one, op=("replica-a", 0))
    finally:
        if kind == "redis":
            await store.aclose()


async def test_a_flush_that_redis_runs_after_it_timed_out_is_counted_once(paused_redis):
    """The selector's flush times out while Redis is paused; Redis runs it when it resumes; the
    selector, not knowing, sends those deltas again with its next ones: the store counts them once."""
    world = World(replicas=1)
    (replica,) = world.replicas
    store = RedisStateStore(paused_redis.url, socket_timeout=TIMEOUT_S, connect_timeout=TIMEOUT_S, hung_hold_s=0)
    try:
        world.learn(replica, 20)
        await replica.sync(store)
        version = (await store.read(world.key())).version
        world.learn(replica, 10)
        paused_redis.pause()
        with pytest.raises(StoreUnavailable, match="Timeout"):
            await replica.sync(store)                 # sent, then timed out: the deltas are kept
        paused_redis.resume()
        deadline = time.monotonic() + 30
        while (await store.read(world.key())).version == version:   # Redis ran the add it had received
            assert time.monotonic() < deadline, "Redis never ran the add it received while paused"
            await asyncio.sleep(0.05)
        world.learn(replica, 5)
        await replica.sync(store)
        assert_exact(await store.load(world.key()), world.expected(), "the store's totals")
        assert_exact(replica.learner("acme").estimator.sums(), world.expected(), "the replica")
    finally:
        await store.aclose()


def test_the_request_path_redis_timeout_is_the_configured_one(sim, gateway_factory, paused_redis):
    """`create_app(redis_timeout_s=)` (`sigroute serve --redis-timeout`) sets the connect and command
    timeout of every store a request waits on: a cache lookup on a hung Redis waits that long (a
    lower bound, true on any machine) before the request goes on without the cache."""
    from sigroute.gateway.app import create_app
    from sigroute.policies.schema import Policy
    from tests.conftest import base_policy

    patient_s = 2.0   # four times the default 0.5 s
    policy = base_policy(sim)
    policy["decisions"][0]["cache"] = {"mode": "exact", "ttl": 600}
    gw = gateway_factory(policy, redis_url=paused_redis.url, redis_timeout_s=patient_s)
    pipeline = gw.app.state.runtime.pipeline
    stores = {"cache": pipeline.learning.semantic_cache.store, "rate limits": pipeline.rate_limiter.store,
              "served answers": pipeline.implicit.store, "responses": gw.app.state.responses.store}
    for name, store in stores.items():
        assert store._options["socket_timeout"] == store._options["connect_timeout"] == patient_s, name
    assert gw.chat("before the hang").status_code == 200
    paused_redis.pause()
    began = time.monotonic()
    during = gw.chat("during the hang")
    waited = time.monotonic() - began
    assert during.status_code == 200 and during.headers["x-sigroute-cache"] == "miss"
    assert waited >= patient_s, f"the lookup gave up after {waited:.2f}s, before its {patient_s}s timeout"
    with pytest.raises(ValueError, match="redis_timeout_s"):
        create_app(Policy.model_validate(policy), redis_url=paused_redis.url, redis_timeout_s=0)
