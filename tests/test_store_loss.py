"""When the shared store loses what it held: Redis restarted empty, flushed, or rolled back to an
older snapshot. Nothing the replicas learned may be lost because the store lost it, and nothing may
be counted twice (bandits.replica). Real redis-servers on loopback, restarted on the same port.

Observations use context vectors and rewards that are multiples of 1/4 (and, with discounting,
weights that are powers of two), so every sum is exact in float64 whatever the order of additions:
the assertions compare totals bit for bit with a reference selector that saw every observation.
"""

from __future__ import annotations

import asyncio
import subprocess
import time

import httpx
import numpy as np
import pytest
import redis

from sigroute.bandits.contextual import EPOCH_HALF_LIVES, LinUCBSelector
from sigroute.bandits.store import (
    MemoryStateStore,
    RedisPendingStore,
    RedisStateStore,
    StoreUnavailable,
    export_state,
    import_state,
)
from sigroute.policies.schema import Algorithm
from tests.conftest import _redis_server_binary, free_port

TENANT = "acme"
HALF_LIFE = 1e6  # an epoch spans 64 of these: no test run crosses an epoch boundary


class RestartableRedis:
    """A private redis-server on a fixed loopback port that can be killed and started again empty."""

    def __init__(self, workdir, binary: str):
        self.workdir, self.binary = workdir, binary
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return
            except redis.RedisError:
                pass
            assert self.proc.poll() is None and time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: nothing is saved (and persistence is off anyway)
            self.proc.wait()

    def restart_empty(self) -> None:
        self.kill()
        self.start()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)


@pytest.fixture
def private_redis(tmp_path):
    server = RestartableRedis(tmp_path, _redis_server_binary())
    server.start()
    yield server
    server.kill()


def selector(discount: float | None = None) -> LinUCBSelector:
    options = {"features": ["bias", "shape"]}  # 7 numbers
    if discount is not None:
        options["discount_half_life_s"] = discount
    return LinUCBSelector(Algorithm.model_validate({"linucb": options}).options, decision="learn")


class World:
    """Replicas of one decision plus a reference that sees every observation and never syncs."""

    def __init__(self, discount: float | None = None, replicas: int = 2):
        self.discount = discount
        self.replicas = [selector(discount) for _ in range(replicas)]
        self.reference = selector(discount)
        self.seed = 0
        self.observed = 0

    def learn(self, replica: LinUCBSelector | None, n: int) -> None:
        """`n` observations (the same ones for the same batch number) learned by `replica` (None:
        by the reference only) and by the reference."""
        self.seed += 1
        rng = np.random.default_rng(self.seed)
        dim = self.reference.features.dim
        start = None
        if self.discount is not None:  # weights 1, 2 or 4: still exact
            start = self.reference._epoch(time.time()) * self.discount * EPOCH_HALF_LIVES
        for _ in range(n):
            arm = ("alpha", "beta")[int(rng.integers(0, 2))]
            x = rng.integers(-4, 5, size=dim) / 4.0
            value = int(rng.integers(0, 5)) / 4.0
            now = None if start is None else start + int(rng.integers(0, 3)) * self.discount
            for sel in (replica, self.reference) if replica is not None else (self.reference,):
                sel.observe(TENANT, arm, x, value, now=now)
        self.observed += n

    def expected(self) -> dict[str, np.ndarray]:
        return self.reference.learner(TENANT).estimator.sums()

    def key(self) -> str:
        return self.reference.state_key(TENANT, self.reference.learner(TENANT).epoch)


def assert_exact(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray], what: str) -> None:
    assert sorted(actual) == sorted(expected), what
    for arm in expected:
        np.testing.assert_array_equal(actual[arm], expected[arm], err_msg=f"{what}: arm {arm!r}")


async def assert_everyone_agrees(world: World, stores) -> None:
    expected = world.expected()
    assert sum(vec[0] for vec in expected.values()) > 0
    assert_exact(await stores[0].load(world.key()), expected, "the store's totals")
    for i, (replica, store) in enumerate(zip(world.replicas, stores)):
        await replica.load_tenant(store, TENANT)
        assert_exact(replica.learner(TENANT).estimator.sums(), expected, f"replica {i}")


def recoveries(world: World) -> dict[str, int]:
    total: dict[str, int] = {}
    for replica in world.replicas:
        for outcome, n in replica.take_store_recoveries().items():
            total[outcome] = total.get(outcome, 0) + n
    return total


# --------------------------------------------------------------------------------------------
# Redis restarted empty


@pytest.mark.parametrize("discount", [None, HALF_LIFE], ids=["plain", "discounted"])
async def test_replicas_restore_what_a_redis_restarted_empty_lost(private_redis, discount):
    world = World(discount)
    a, b = world.replicas
    store_a, store_b = RedisStateStore(private_redis.url), RedisStateStore(private_redis.url)
    try:
        world.learn(a, 40)
        await a.sync(store_a)
        world.learn(b, 30)
        await b.sync(store_b)
        world.learn(a, 20)
        await a.sync(store_a)   # a has seen b's first flush ...
        world.learn(b, 25)
        await b.sync(store_b)   # ... but not this one: a's view is one flush behind b's
        world.learn(a, 7)       # not flushed yet when Redis goes

        private_redis.restart_empty()
        assert await store_a.keys() == []

        world.learn(b, 9)
        await a.sync(store_a)   # a notices first and restores its view plus its own flushes
        await b.sync(store_b)   # b adds back only its own flush that a's view lacked
        world.learn(a, 5)
        world.learn(b, 6)
        await a.sync(store_a)
        await b.sync(store_b)
        await assert_everyone_agrees(world, [store_a, store_b])
        assert recoveries(world) == {"reseeded": 1, "joined": 1}
    finally:
        await store_a.aclose()
        await store_b.aclose()


@pytest.mark.parametrize("kind", ["memory", "redis"])
async def test_replicas_that_find_the_loss_together_restore_it_once(kind, request):
    """Both replicas sync at the same moment after every loss: exactly one re-seeds, the other adds
    only what the re-seed lacked, and nothing is counted twice (four losses in a row)."""
    world = World()
    a, b = world.replicas
    if kind == "memory":  # "losing" a memory store = replicas handed a fresh, empty one
        shared = MemoryStateStore()
        stores = [shared, shared]
    else:
        url = request.getfixturevalue("clean_redis_url")
        stores = [RedisStateStore(url), RedisStateStore(url)]
        flusher = redis.Redis.from_url(url)
    try:
        for _ in range(4):
            world.learn(a, 11)
            world.learn(b, 13)
            await asyncio.gather(a.sync(stores[0]), b.sync(stores[1]))
            world.learn(a, 3)
            await a.sync(stores[0])
            world.learn(b, 5)
            world.learn(a, 2)
            if kind == "memory":
                shared = MemoryStateStore()
                stores = [shared, shared]
            else:
                flusher.flushall()
            await asyncio.gather(a.sync(stores[0]), b.sync(stores[1]))  # both find the store empty
        await asyncio.gather(a.sync(stores[0]), b.sync(stores[1]))
        await assert_everyone_agrees(world, stores)
        assert recoveries(world) == {"reseeded": 4, "joined": 4}  # one re-seed per loss, the other joins
    finally:
        if kind == "redis":
            flusher.close()
            for store in stores:
                await store.aclose()


async def test_a_replica_that_learned_nothing_new_restores_the_store_alone(clean_redis_url):
    """One replica alive: the store comes back from its view, exactly, even with nothing to flush."""
    world = World(replicas=1)
    (a,) = world.replicas
    store = RedisStateStore(clean_redis_url)
    try:
        world.learn(a, 50)
        await a.sync(store)
        redis.Redis.from_url(clean_redis_url).flushall()
        await a.load_tenant(store, TENANT)  # a reload alone notices the loss
        assert_exact(await store.load(world.key()), world.expected(), "restored from a reload")
        assert_exact(a.learner(TENANT).estimator.sums(), world.expected(), "the replica")
    finally:
        await store.aclose()


def test_a_gateway_learns_on_when_redis_restarts_empty(sim, gateway_factory, private_redis):
    """End to end: answers counted before and after Redis restarted empty all end up in Redis."""
    from tests.test_learning import learning_policy, load_state, wait_for

    gw = gateway_factory(learning_policy(sim), redis_url=private_redis.url)

    def stored_count():
        return sum(vec[0] for arms in load_state(private_redis.url).values() for vec in arms.values())

    for i in range(25):
        assert gw.chat(f"before {i}").status_code == 200
    wait_for(lambda: stored_count() == 25, timeout=30)
    private_redis.restart_empty()
    for i in range(15):
        assert gw.chat(f"after {i}").status_code == 200
    wait_for(lambda: stored_count() == 40, timeout=30)
    learner = gw.app.state.runtime.pipeline.selectors["learn"].learner("default")
    wait_for(lambda: learner.estimator.total_count() == 40, timeout=30)
    assert stored_count() == 40
    wait_for(lambda: 'sigroute_bandit_store_recoveries_total{outcome="reseeded"} 1.0' in gw.http.get("/metrics").text)


def test_two_gateway_processes_lose_nothing_when_redis_is_down_and_comes_back_empty(
        sim, gateway_factory, private_redis, tmp_path):
    """The issue's scenario: two replicas under load, Redis stopped (answers go on), then started
    empty. Every answer counts once in Redis, one replica restored the store, the other joined."""
    from tests.conftest import GatewayProcess
    from tests.test_learning import learning_policy, load_state, wait_for

    one = gateway_factory(learning_policy(sim), redis_url=private_redis.url)
    two = GatewayProcess(learning_policy(sim), tmp_path, private_redis.url)
    try:
        def load(n: int, tag: str) -> int:
            async def hammer(url: str, side: str):
                async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                    async def ask(i: int):
                        r = await http.post("/v1/chat/completions", json={"model": "auto", "messages": [
                            {"role": "user", "content": f"{tag}{side} {i} " + "x" * (i % 7)}]})
                        assert r.status_code == 200, r.text
                    await asyncio.gather(*(ask(i) for i in range(n)))

            async def both():
                await asyncio.gather(hammer(one.url, "a"), hammer(two.url, "b"))
            asyncio.run(both())
            return 2 * n

        def stored() -> float:
            return sum(vec[0] for arms in load_state(private_redis.url).values() for vec in arms.values())

        answered = load(60, "before")
        wait_for(lambda: stored() == answered, timeout=30)  # both replicas have exchanged with Redis
        private_redis.kill()
        answered += load(40, "during")
        private_redis.start()
        answered += load(30, "after")

        def outcomes(url: str) -> dict[str, float]:
            lines = httpx.get(url + "/metrics").text.splitlines()
            return {line.split('"')[1]: float(line.split()[-1]) for line in lines
                    if line.startswith("sigroute_bandit_store_recoveries_total{")}

        wait_for(lambda: stored() == answered and all(outcomes(url) for url in (one.url, two.url)), timeout=30)
        seen = [outcomes(one.url), outcomes(two.url)]
        assert sorted(seen, key=lambda o: sorted(o)) == [{"joined": 1.0}, {"reseeded": 1.0}], seen
        assert stored() == answered
    finally:
        two.stop()


async def test_a_reloaded_policy_still_restores_what_the_store_lost(clean_redis_url):
    """A policy reload hands the learners to a new selector; what the replica knew of the store goes
    with them."""
    world = World(replicas=1)
    (old,) = world.replicas
    store = RedisStateStore(clean_redis_url)
    try:
        world.learn(old, 30)
        await old.sync(store)
        new = selector()
        new.adopt(old)
        redis.Redis.from_url(clean_redis_url).flushall()
        world.learn(new, 4)
        await new.sync(store)
        assert_exact(await store.load(world.key()), world.expected(), "restored after the reload")
    finally:
        await store.aclose()


# --------------------------------------------------------------------------------------------
# Redis restored from an older snapshot, and what is not a loss


async def test_a_store_rolled_back_to_an_older_snapshot_is_restored(clean_redis_url):
    world = World()
    a, b = world.replicas
    stores = [RedisStateStore(clean_redis_url), RedisStateStore(clean_redis_url)]
    client = redis.Redis.from_url(clean_redis_url)
    try:
        world.learn(a, 20)
        await a.sync(stores[0])
        name = stores[0].namespace + world.key()
        snapshot = client.dump(name)  # what an RDB file written now would bring back
        world.learn(b, 30)
        await b.sync(stores[1])
        world.learn(a, 10)
        await a.sync(stores[0])
        world.learn(b, 4)
        world.learn(a, 3)
        client.restore(name, 0, snapshot, replace=True)  # Redis restarted from the older snapshot
        await asyncio.gather(a.sync(stores[0]), b.sync(stores[1]))
        await asyncio.gather(a.sync(stores[0]), b.sync(stores[1]))
        await assert_everyone_agrees(world, stores)
        assert recoveries(world)["reseeded"] == 1
    finally:
        client.close()
        for store in stores:
            await store.aclose()


@pytest.fixture(params=["memory", "redis"])
async def state_store(request):
    store = MemoryStateStore() if request.param == "memory" else RedisStateStore(
        request.getfixturevalue("clean_redis_url"))
    yield store
    await store.aclose()


async def test_an_operator_reset_is_not_undone(state_store):
    """`sigroute bandit reset` deletes state on purpose: replicas accept it instead of restoring it."""
    world = World()
    a, b = world.replicas
    world.learn(a, 20)
    world.learn(b, 10)
    await a.sync(state_store)
    await b.sync(state_store)
    assert await state_store.delete(f"t={TENANT}/") == 1
    assert await state_store.keys() == []

    fresh = World()  # what is learned after the reset is all that should remain
    fresh.seed = 1000
    fresh.learn(a, 6)
    fresh.learn(b, 3)
    await a.sync(state_store)
    await b.sync(state_store)
    assert_exact(await state_store.load(world.key()), fresh.expected(), "after the reset")
    for replica in (a, b):
        await replica.load_tenant(state_store, TENANT)
        assert_exact(replica.learner(TENANT).estimator.sums(), fresh.expected(), "a replica after the reset")
    assert "reseeded" not in recoveries(world)


async def test_an_imported_snapshot_replaces_state_and_is_not_undone(state_store):
    world = World()
    a, b = world.replicas
    world.learn(a, 20)
    await a.sync(state_store)
    snapshot = await export_state(state_store)
    world.learn(a, 10)
    world.learn(b, 5)
    await a.sync(state_store)
    await b.sync(state_store)

    older = World()  # the state as exported: the first batch of 20 observations
    older.learn(None, 20)
    await import_state(state_store, snapshot)  # replace: the operator says "this is the state"
    await a.sync(state_store)
    await b.sync(state_store)
    assert_exact(await state_store.load(world.key()), older.expected(), "the imported state")
    for replica in (a, b):
        await replica.load_tenant(state_store, TENANT)
        assert_exact(replica.learner(TENANT).estimator.sums(), older.expected(), "a replica after the import")
    assert "reseeded" not in recoveries(world)


# --------------------------------------------------------------------------------------------
# Feedback while Redis is down: kept and written later, or counted as lost; never silently dropped

RECORD = {"tenant": "acme", "decision": "learn", "model": "alpha"}


async def test_pending_records_put_while_redis_is_down_are_written_when_it_returns(private_redis):
    store = RedisPendingStore(private_redis.url, connect_timeout=0.5, socket_timeout=2)
    try:
        await store.put("before", RECORD, ttl_s=60)
        private_redis.kill()
        for rid in ("during-1", "during-2"):
            with pytest.raises(StoreUnavailable):
                await store.put(rid, RECORD, ttl_s=60)
        assert store.unsent == 2
        with pytest.raises(StoreUnavailable):
            await store.flush_unsent()  # still down: nothing is given up
        assert store.unsent == 2

        private_redis.start()  # empty: "before" is gone with the old process
        assert await store.claim("during-1", "acme", "fp") == ("applied", RECORD)  # sent first, then claimed
        assert await store.flush_unsent() == 1
        assert store.unsent == 0 and store.take_lost() == {}
        assert await store.claim("during-2", "acme", "fp") == ("applied", RECORD)
        assert await store.claim("before", "acme", "fp") == ("unknown", None)
    finally:
        await store.aclose()


async def test_pending_records_that_cannot_wait_are_counted_lost():
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    options = dict(connect_timeout=0.5, socket_timeout=0.5, retries=0)
    full, slow = RedisPendingStore(url, max_unsent=2, **options), RedisPendingStore(url, **options)
    try:
        for i in range(3):
            with pytest.raises(StoreUnavailable):
                await full.put(f"r{i}", RECORD, ttl_s=60)
        assert full.unsent == 2 and full.take_lost() == {"overflow": 1}  # the oldest went
        assert full.take_lost() == {}  # each loss is reported once

        with pytest.raises(StoreUnavailable):
            await slow.put("short", RECORD, ttl_s=0.05)
        await asyncio.sleep(0.1)
        assert await slow.flush_unsent() == 0  # its feedback window is over: given up, not written
        assert slow.unsent == 0 and slow.take_lost() == {"expired": 1}
    finally:
        await full.aclose()
        await slow.aclose()


def _metric(gw, line: str) -> bool:
    return line in gw.http.get("/metrics").text


def test_feedback_during_a_redis_outage_is_refused_counted_and_works_once_redis_is_back(
        sim, gateway_factory, private_redis):
    from tests.test_learning import feedback, learning_policy, wait_for

    gw = gateway_factory(learning_policy(sim), redis_url=private_redis.url)
    before = gw.chat("before the outage")
    assert feedback(gw, before.headers["x-sigroute-request-id"], score=1).status_code == 200

    private_redis.kill()
    during = gw.chat("during the outage")
    assert during.status_code == 200  # answers go on; the pending record waits in the gateway
    rid = during.headers["x-sigroute-request-id"]
    refused = feedback(gw, rid, thumbs="up")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "feedback_store_unavailable"
    assert _metric(gw, 'sigroute_feedback_lost_total{reason="store_unavailable"} 1.0')

    private_redis.start()  # back, and empty
    retried = wait_for(lambda: (lambda r: r if r.status_code != 503 else None)(feedback(gw, rid, thumbs="up")),
                       timeout=30)
    assert retried.status_code == 200, retried.text
    assert retried.json()["status"] == "recorded" and retried.json()["learned"] is True
    assert not _metric(gw, 'sigroute_feedback_lost_total{reason="record_expired"}')


def test_pending_records_that_outlive_an_outage_are_counted_lost(sim, gateway_factory, private_redis):
    from tests.test_learning import LEARN, feedback, learning_policy, wait_for

    algorithm = {"linucb": {**LEARN["linucb"], "reward": {"quality": 1.0, "feedback_ttl_s": 0.3}}}
    gw = gateway_factory(learning_policy(sim, algorithm), redis_url=private_redis.url)
    private_redis.kill()
    during = gw.chat("during the outage")
    assert during.status_code == 200
    time.sleep(0.5)  # longer than the feedback window
    private_redis.start()
    wait_for(lambda: _metric(gw, 'sigroute_feedback_lost_total{reason="record_expired"} 1.0'), timeout=30)
    late = feedback(gw, during.headers["x-sigroute-request-id"], thumbs="up")
    assert late.status_code == 404
