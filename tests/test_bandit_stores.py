"""Bandit state stores and pending-feedback stores: the same tests against memory and a real Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from sigroute.bandits.store import (
    KeyState,
    Lineage,
    MemoryPendingStore,
    MemoryStateStore,
    PendingStore,
    Recovery,
    RedisPendingStore,
    RedisStateStore,
    StateShapeError,
    StateStore,
    StoreUnavailable,
    export_state,
    import_state,
    open_pending_store,
    open_state_store,
)
from tests.conftest import free_port
from tests.redis_cluster import (clean_cluster_url, clean_valkey_cluster_url, clean_valkey_url,  # noqa: F401
                                 cluster, valkey_cluster, valkey_url)                            # (fixtures)

ROOT = Path(__file__).resolve().parents[1]


# The Redis-backed stores run against one redis-server, one valkey-server, and a 3+3 cluster of each.
SERVER_URLS = {"redis": "clean_redis_url", "valkey": "clean_valkey_url", "cluster": "clean_cluster_url",
               "valkey-cluster": "clean_valkey_cluster_url"}


@pytest.fixture(params=["memory", "redis", "valkey", "cluster", "valkey-cluster"])
async def state_store(request):
    if request.param == "memory":
        store: StateStore = MemoryStateStore()
    else:
        store = RedisStateStore(request.getfixturevalue(SERVER_URLS[request.param]))
    yield store
    await store.aclose()


@pytest.fixture(params=["memory", "redis", "valkey", "cluster", "valkey-cluster"])
async def pending_store(request):
    if request.param == "memory":
        store: PendingStore = MemoryPendingStore()
    else:
        store = RedisPendingStore(request.getfixturevalue(SERVER_URLS[request.param]))
    yield store
    await store.aclose()


def v(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def assert_state(actual: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert sorted(actual) == sorted(expected)
    for arm, vector in expected.items():
        assert actual[arm].dtype == np.float64
        np.testing.assert_array_equal(actual[arm], vector, err_msg=f"arm {arm!r}")


# --------------------------------------------------------------------------------------------
# Bandit state


async def test_store_satisfies_protocol(state_store):
    assert isinstance(state_store, StateStore)
    await state_store.ping()
    assert "secret" not in state_store.description


async def test_add_load_round_trip_exact(state_store):
    key = "t=acme/d=hard-stem/s=3fa9c1d2"
    assert await state_store.load(key) == {}
    await state_store.add(key, {"gpt-4o": v(1.5, 0.0, -2.25, 1e6), "llama:70b": v(0.125, 0.0)})
    assert_state(await state_store.load(key), {"gpt-4o": v(1.5, 0.0, -2.25, 1e6), "llama:70b": v(0.125, 0.0)})

    await state_store.add(key, {"gpt-4o": v(0.5, 3.0, 2.25, -1e6)})          # zeros stay zeros
    await state_store.add(key, {"new-arm": v(0.0, 0.0, 0.0)})               # an unseen arm starts at zeros
    await state_store.add(key, {"new-arm": [1, 2, 3]})                      # plain lists are fine
    assert_state(await state_store.load(key), {
        "gpt-4o": v(2.0, 3.0, 0.0, 0.0), "llama:70b": v(0.125, 0.0), "new-arm": v(1.0, 2.0, 3.0)})


async def test_sums_are_float64_sums_bit_for_bit(state_store):
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=3000), rng.normal(size=3000) * 1e-3
    b[::3] = 0.0  # sparse entries are skipped on the wire but the sums are the same
    tiny = np.full(3000, 1e-300)
    await state_store.add("k", {"x": a, "y": b})
    await state_store.add("k", {"x": b, "y": tiny})
    assert_state(await state_store.load("k"), {"x": a + b, "y": b + tiny})
    await state_store.replace("k", {"x": a})  # replace round-trips exactly
    assert_state(await state_store.load("k"), {"x": a})


async def test_shape_mismatch_applies_nothing(state_store):
    await state_store.add("k", {"a": v(1, 2), "b": v(1, 2, 3)})
    with pytest.raises(StateShapeError, match=r"arm 'b' under key 'k' has 3 stored values but the delta has 2"):
        await state_store.add("k", {"a": v(10, 10), "b": v(10, 10), "c": v(10)})
    assert_state(await state_store.load("k"), {"a": v(1, 2), "b": v(1, 2, 3)})
    assert issubclass(StateShapeError, ValueError)


async def test_bad_vectors_are_rejected_before_anything_is_written(state_store):
    with pytest.raises(ValueError, match="finite"):
        await state_store.add("k", {"a": v(1, 2), "b": v(1, np.nan)})
    with pytest.raises(ValueError, match="flat vector"):
        await state_store.add("k", {"a": np.ones((2, 2))})
    with pytest.raises(ValueError, match="non-empty string"):
        await state_store.add("", {"a": v(1)})
    assert await state_store.load("k") == {}
    assert await state_store.keys() == []


async def test_multi_arm_add_is_atomic_for_concurrent_readers(state_store):
    """Every add puts the same amount on both arms, so no reader may ever see them differ."""
    n = 300
    stop = False
    seen: list[tuple[float, float]] = []

    async def writer():
        for _ in range(40):
            await state_store.add("k", {"a": np.ones(n), "b": np.ones(n)})
            await asyncio.sleep(0)

    async def reader():
        while not stop:
            arms = await state_store.load("k")
            if arms:
                seen.append((arms["a"].sum(), arms["b"].sum()))
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader()) for _ in range(3)]
    await asyncio.gather(*(writer() for _ in range(4)))
    stop = True
    await asyncio.gather(*readers)
    assert seen and all(a == b for a, b in seen)
    assert_state(await state_store.load("k"), {"a": np.full(n, 160.0), "b": np.full(n, 160.0)})


async def test_concurrent_tasks_lose_no_updates(state_store):
    n, tasks, rounds = 500, 20, 10
    base = np.arange(n, dtype=np.float64)

    async def adder(t: int):
        for r in range(rounds):
            await state_store.add("k", {"a": base + t, "b": np.full(n, float(r))})

    await asyncio.gather(*(adder(t) for t in range(tasks)))
    expected_a = rounds * (tasks * base + sum(range(tasks)))
    expected_b = np.full(n, float(tasks * sum(range(rounds))))
    assert_state(await state_store.load("k"), {"a": expected_a, "b": expected_b})


_ADDER_PROCESS = textwrap.dedent("""
    import asyncio, sys
    import numpy as np
    import redis.asyncio as aioredis
    from sigroute.bandits.store import RedisStateStore

    async def main(url, worker, rounds, n):
        signal = aioredis.from_url(url)
        store = RedisStateStore(url)
        assert await signal.blpop(["go"], timeout=20), "no start signal"
        for r in range(rounds):
            await store.add("shared", {"a": np.ones(n) * (worker + 1), "b": np.arange(n, dtype=float)})
        await store.aclose()
        await signal.aclose()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
""")


async def test_two_processes_lose_no_updates(clean_redis_url):
    import redis

    rounds, n = 150, 400
    procs = [subprocess.Popen([sys.executable, "-c", _ADDER_PROCESS, clean_redis_url, str(w), str(rounds), str(n)],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for w in range(2)]
    signal = redis.Redis.from_url(clean_redis_url)
    try:
        signal.rpush("go", 1, 1)  # both start together, each with its own client and connections
        outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    finally:
        signal.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs
    store = RedisStateStore(clean_redis_url)
    try:
        assert_state(await store.load("shared"), {
            "a": np.full(n, float(rounds * (1 + 2))), "b": 2 * rounds * np.arange(n, dtype=float)})
    finally:
        await store.aclose()


async def test_replace_remove_arm_keys_delete(state_store):
    for key in ("t=acme/d=x", "t=acme/d=y", "t=acme*/d=z", "t=beta/d=x"):
        await state_store.add(key, {"a": v(1), "b": v(2, 3)})
    assert await state_store.keys() == ["t=acme*/d=z", "t=acme/d=x", "t=acme/d=y", "t=beta/d=x"]
    assert await state_store.keys("t=acme/") == ["t=acme/d=x", "t=acme/d=y"]
    assert await state_store.keys("t=acme*") == ["t=acme*/d=z"]  # glob characters match literally
    assert await state_store.keys("nothing") == []

    await state_store.replace("t=acme/d=x", {"c": v(0, 0, 7)})
    assert_state(await state_store.load("t=acme/d=x"), {"c": v(0, 0, 7)})
    await state_store.add("t=acme/d=x", {"c": v(1, 1, 1)})  # the replaced length is the stored one
    assert_state(await state_store.load("t=acme/d=x"), {"c": v(1, 1, 8)})
    with pytest.raises(StateShapeError):
        await state_store.add("t=acme/d=x", {"c": v(1)})

    assert await state_store.remove_arm("t=acme/d=y", "b") is True
    assert await state_store.remove_arm("t=acme/d=y", "b") is False
    assert await state_store.remove_arm("no-such-key", "a") is False
    assert_state(await state_store.load("t=acme/d=y"), {"a": v(1)})
    await state_store.add("t=acme/d=y", {"b": v(5)})  # a removed arm may come back with a new length
    assert_state(await state_store.load("t=acme/d=y"), {"a": v(1), "b": v(5)})
    assert await state_store.remove_arm("t=acme/d=y", "a") is True
    assert await state_store.remove_arm("t=acme/d=y", "b") is True
    assert "t=acme/d=y" not in await state_store.keys()  # no arms left: the key is gone

    await state_store.replace("t=beta/d=x", {})
    assert await state_store.keys() == ["t=acme*/d=z", "t=acme/d=x"]
    assert await state_store.delete("t=acme/") == 1
    assert await state_store.delete("t=acme/") == 0
    assert await state_store.delete() == 1
    assert await state_store.keys() == []


async def test_remove_arm_with_long_vector(state_store):
    await state_store.add("k", {"long": np.arange(1, 3001, dtype=float), "other": v(1)})
    assert await state_store.remove_arm("k", "long") is True
    assert_state(await state_store.load("k"), {"other": v(1)})


async def test_redis_namespaces_are_separate(clean_redis_url):
    one, two = RedisStateStore(clean_redis_url, namespace="one:"), RedisStateStore(clean_redis_url, namespace="two:")
    try:
        await one.add("k", {"a": v(1)})
        await two.add("k", {"a": v(2)})
        assert await two.delete() == 1
        assert await one.keys() == ["k"] and await two.keys() == []
        assert_state(await one.load("k"), {"a": v(1)})
    finally:
        await one.aclose()
        await two.aclose()


async def test_export_import_round_trip(state_store):
    rng = np.random.default_rng(3)
    state = {"t=a/d=1": {"m1": rng.normal(size=50), "m2": v(0, 1, 0)}, "t=b/d=1": {"m1": v(4.5)}}
    for key, arms in state.items():
        await state_store.replace(key, arms)

    snapshot = json.loads(json.dumps(await export_state(state_store)))
    assert snapshot["format"] == "sigroute-bandit-state" and snapshot["version"] == 1
    assert sorted(snapshot["keys"]) == ["t=a/d=1", "t=b/d=1"]
    assert sorted((await export_state(state_store, prefix="t=b/"))["keys"]) == ["t=b/d=1"]

    target = MemoryStateStore()
    assert await import_state(target, snapshot) == 2
    for key, arms in state.items():
        assert_state(await target.load(key), arms)

    # back into the original store: replace overwrites, replace=False merges by adding
    await state_store.add("t=b/d=1", {"m1": v(100), "extra": v(1)})
    await import_state(state_store, snapshot)
    assert_state(await state_store.load("t=b/d=1"), {"m1": v(4.5)})
    await import_state(state_store, snapshot, replace=False)
    assert_state(await state_store.load("t=b/d=1"), {"m1": v(9.0)})
    assert_state(await state_store.load("t=a/d=1"), {k: 2 * a for k, a in state["t=a/d=1"].items()})


def _snapshot(keys) -> dict:
    return {"format": "sigroute-bandit-state", "version": 1, "keys": keys}


@pytest.mark.parametrize("snapshot, message", [
    ([], "must be a JSON object"),
    ({"format": "something-else", "version": 1, "keys": {}}, "not a bandit state snapshot"),
    ({"format": "sigroute-bandit-state", "version": 2, "keys": {}}, "unsupported bandit state snapshot version 2"),
    ({"format": "sigroute-bandit-state", "version": True, "keys": {}}, "version True"),
    ({"format": "sigroute-bandit-state", "version": 1}, "'keys' must be an object"),
    (_snapshot({"k": [1, 2]}), r"snapshot\['keys'\]\['k'\] must be an object"),
    (_snapshot({"": {"a": [1]}}), "non-empty strings"),
    (_snapshot({"k": {"a": "1,2"}}), r"\['k'\]\['a'\] must be a list of numbers"),
    (_snapshot({"k": {"a": [1, "2"]}}), r"\['k'\]\['a'\]\[1\] must be a finite number, got '2'"),
    (_snapshot({"k": {"a": [1, [2]]}}), r"\[1\] must be a finite number"),
    (_snapshot({"k": {"a": [1, float("nan")]}}), r"\[1\] must be a finite number"),
    (_snapshot({"k": {"a": [True]}}), r"\[0\] must be a finite number"),
])
async def test_import_rejects_bad_snapshots(snapshot, message):
    store = MemoryStateStore()
    # a good key first: validation happens before anything is written
    if isinstance(snapshot, dict) and isinstance(snapshot.get("keys"), dict):
        snapshot["keys"] = {"good": {"a": [1.0]}, **snapshot["keys"]}
    with pytest.raises(ValueError, match=message):
        await import_state(store, snapshot)
    assert await store.keys() == []


async def test_import_merge_checks_shapes_first(state_store):
    await state_store.add("k2", {"a": v(1, 2)})
    with pytest.raises(StateShapeError, match="'k2'"):
        await import_state(state_store, _snapshot({"k1": {"a": [1.0]}, "k2": {"a": [1.0]}}), replace=False)
    assert await state_store.keys() == ["k2"]


# --------------------------------------------------------------------------------------------
# Generations: what lets replicas notice, and repair, a store that lost its state (bandits.replica)


async def test_adds_carry_a_generation_and_a_version(state_store):
    assert await state_store.read("k") == KeyState({})
    first = await state_store.add("k", {"a": v(1, 2)})
    assert first.applied and first.gen and first.version == 1
    second = await state_store.add("k", {"a": v(1, 1), "b": v(5)})
    assert (second.applied, second.gen, second.version) == (True, first.gen, 2)
    state = await state_store.read("k")
    assert (state.gen, state.version, state.lineage, state.operator_set) == (first.gen, 2, (), False)
    assert_state(state.arms, {"a": v(2, 3), "b": v(5)})
    assert_state(await state_store.load("k"), {"a": v(2, 3), "b": v(5)})  # the marker is no arm
    other = await state_store.add("other", {"a": v(1)})
    assert other.gen != first.gen  # every key gets its own random generation
    with pytest.raises(ValueError, match="NUL"):
        await state_store.add("k", {"\x00meta": v(1)})


async def test_an_add_expecting_what_is_no_longer_there_applies_nothing(state_store):
    gen = (await state_store.add("k", {"a": v(1)})).gen
    assert (await state_store.add("k", {"a": v(1)}, expect=(gen, 1))).applied  # others' adds are fine
    for expect in [("another-generation", 0), (gen, 3)]:  # a new generation; a version this replica
        refused = await state_store.add("k", {"a": v(100)}, expect=expect)  # saw but the store lost
        assert (refused.applied, refused.gen, refused.version) == (False, gen, 2)
    assert not (await state_store.add("missing", {"a": v(1)}, expect=(gen, 1))).applied
    assert await state_store.keys() == ["k"]
    assert_state(await state_store.load("k"), {"a": v(2)})


async def test_one_replica_reseeds_a_lost_generation_and_the_others_join_once(state_store):
    content = {"a": v(10, 20), "b": v(1)}
    first = await state_store.recover("k", lost="g-lost", known_version=7, basis=6, content=content, replica="r1")
    assert first == Recovery("reseeded")
    state = await state_store.read("k")
    assert state.gen != "g-lost" and state.lineage == (Lineage("g-lost", "reseed", 6, "r1", ()),)
    assert_state(state.arms, content)

    # another replica that saw the same generation: its own flushes above version 6 are what is missing
    assert await state_store.recover("k", lost="g-lost", known_version=9, basis=8, content={"a": v(99, 99)},
                                     replica="r2") == Recovery("covered", basis=6)
    assert (await state_store.add("k", {"a": v(1, 1)}, join=("g-lost", "r2"))).applied
    assert not (await state_store.add("k", {"a": v(1, 1)}, join=("g-lost", "r2"))).applied  # once
    assert not (await state_store.add("k", {"a": v(1, 1)}, join=("g-lost", "r1"))).applied  # r1 re-seeded it
    assert not (await state_store.add("k", {"a": v(1, 1)}, join=("g-other", "r3"))).applied  # not restored here
    for replica in ("r1", "r2"):  # retries (after a timeout) change nothing
        assert (await state_store.recover("k", lost="g-lost", known_version=9, basis=8, content=content,
                                          replica=replica)).outcome == "already"
    state = await state_store.read("k")
    assert state.lineage == (Lineage("g-lost", "reseed", 6, "r1", ("r2",)),)
    assert_state(state.arms, {"a": v(11, 21), "b": v(1)})


async def test_a_reseed_lands_on_top_of_what_was_added_since_the_loss_and_keeps_lineage(state_store):
    fresh = await state_store.add("k", {"a": v(1)})  # a replica that never saw the lost generation
    inherited = (Lineage("g-older", "reseed", 3, "r9", ("r8",)),)
    assert (await state_store.recover("k", lost="g-lost", known_version=4, basis=4, content={"a": v(5)},
                                      lineage=inherited, replica="r1")).outcome == "reseeded"
    state = await state_store.read("k")
    assert state.gen == fresh.gen and state.version == 2  # adds expecting the fresh generation still apply
    assert_state(state.arms, {"a": v(6)})
    assert [e.gen for e in state.lineage] == ["g-older", "g-lost"]  # a replica still at g-older is covered
    assert (await state_store.recover("k", lost="g-older", known_version=1, basis=1, content={"a": v(1)},
                                      replica="r8")).outcome == "already"


async def test_concurrent_recoveries_of_one_loss_reseed_exactly_once(state_store, request):
    n = 8
    if isinstance(state_store, RedisStateStore):  # one client (and connection) per replica
        url = request.getfixturevalue(SERVER_URLS[request.node.callspec.params["state_store"]])
        stores = [RedisStateStore(url) for _ in range(n)]
    else:
        stores = [state_store] * n
    content = {"a": np.arange(300, dtype=float), "b": v(1, 2)}
    try:
        results = await asyncio.gather(*(store.recover("k", lost="g-lost", known_version=5, basis=5,
                                                       content=content, replica=f"r{i}")
                                         for i, store in enumerate(stores)))
    finally:
        if stores[0] is not state_store:
            for store in stores:
                await store.aclose()
    assert sorted(r.outcome for r in results) == ["covered"] * (n - 1) + ["reseeded"]
    assert_state(await state_store.load("k"), content)


async def test_a_rolled_back_generation_is_replaced_by_the_replica_view(state_store):
    gen = (await state_store.add("k", {"a": v(1), "old": v(1)})).gen
    assert await state_store.recover("k", lost=gen, known_version=1, basis=1, content={"a": v(50)},
                                     replica="r1") == Recovery("intact")
    assert await state_store.recover("k", lost=gen, known_version=4, basis=4, content={"a": v(50)},
                                     replica="r1") == Recovery("reseeded")  # it had reached version 4
    state = await state_store.read("k")
    assert state.gen != gen and state.lineage[0].gen == gen
    assert_state(state.arms, {"a": v(50)})


async def test_operator_resets_and_imports_are_never_restored(state_store):
    gen = (await state_store.add("k", {"a": v(1)})).gen
    assert await state_store.delete("k") == 1
    assert await state_store.keys() == [] and await state_store.load("k") == {}
    marker = await state_store.read("k")  # what is left: a marker saying the reset was meant
    assert marker.gen not in (None, gen) and marker.operator_set
    assert marker.lineage == (Lineage(gen, "set", 1, "", ()),)
    assert await state_store.recover("k", lost=gen, known_version=1, basis=1, content={"a": v(1)},
                                     replica="r1") == Recovery("superseded")
    assert await state_store.delete("k") == 0  # nothing more to delete
    assert (await state_store.add("k", {"a": v(3)}, expect=(marker.gen, 0))).applied  # learning resumes
    assert await state_store.keys() == ["k"]

    before = (await state_store.read("k")).gen
    await state_store.replace("k", {"a": v(7)})  # an import
    assert await state_store.recover("k", lost=before, known_version=1, basis=1, content={"a": v(1)},
                                     replica="r1") == Recovery("superseded")
    # a replica that knew a generation lost before the import: the operator's state wins too
    assert await state_store.recover("k", lost="g-long-gone", known_version=1, basis=1, content={"a": v(1)},
                                     replica="r1") == Recovery("superseded")
    assert_state(await state_store.load("k"), {"a": v(7)})


@pytest.mark.parametrize("kind", ["memory", "redis", "cluster"])
async def test_deleted_keys_markers_expire(kind, request):
    if kind == "memory":
        store = MemoryStateStore(tombstone_ttl_s=0.1)
    else:
        store = RedisStateStore(request.getfixturevalue(SERVER_URLS[kind]), tombstone_ttl_s=0.1)
    try:
        await store.add("k", {"a": v(1)})
        await store.add("j", {"a": v(1)})
        assert await store.delete("k") == 1
        assert await store.remove_arm("j", "a")
        assert (await store.read("k")).gen is not None and (await store.read("j")).gen is not None
        await asyncio.sleep(0.3)
        assert await store.read("k") == KeyState({}) and await store.read("j") == KeyState({})
        assert (await store.add("k", {"a": v(2)})).applied  # a new key again
    finally:
        await store.aclose()


async def test_a_redis_key_written_before_markers_is_adopted(clean_redis_url):
    import redis

    client = redis.Redis.from_url(clean_redis_url)
    client.hset("sigroute:bandit:k", "a", v(1, 2).astype("<f8").tobytes())
    client.close()
    store = RedisStateStore(clean_redis_url)
    try:
        assert await store.keys() == ["k"]
        state = await store.read("k")
        assert state.gen is None and state.version == 0
        assert_state(state.arms, {"a": v(1, 2)})
        added = await store.add("k", {"a": v(1, 1)})
        assert added.applied and added.gen and added.version == 1
        assert_state(await store.load("k"), {"a": v(2, 3)})
    finally:
        await store.aclose()


# --------------------------------------------------------------------------------------------
# Pending feedback


RECORD = {"tenant": "acme", "decision": "hard-stem", "model": "gpt-4o", "propensity": 0.7,
          "state_key": "t=acme/d=hard-stem/s=1", "features": [0.5, 1.0]}


async def test_pending_satisfies_protocol(pending_store):
    assert isinstance(pending_store, PendingStore)


async def test_claim_applied_duplicate_conflict(pending_store):
    await pending_store.put("req-1", RECORD, ttl_s=30)
    assert await pending_store.count() == 1
    assert await pending_store.claim("req-1", "acme", "score=1") == ("applied", RECORD)
    assert await pending_store.claim("req-1", "acme", "score=1") == ("duplicate", RECORD)
    assert await pending_store.claim("req-1", "acme", "score=0") == ("conflict", RECORD)
    assert await pending_store.count() == 1  # kept until its TTL ends

    status, record = await pending_store.claim("req-1", "acme", "score=1")
    record["model"] = "changed"  # returned records are copies
    assert (await pending_store.claim("req-1", "acme", "score=1"))[1] == RECORD


async def test_claim_unknown_and_other_tenant(pending_store):
    assert await pending_store.claim("never-stored", "acme", "fp") == ("unknown", None)
    await pending_store.put("req-2", RECORD, ttl_s=30)
    assert await pending_store.claim("req-2", "evil-corp", "fp") == ("unknown", None)
    # the other tenant's attempt neither leaks nor consumes the record
    assert await pending_store.claim("req-2", "acme", "fp") == ("applied", RECORD)
    assert await pending_store.claim("req-2", "evil-corp", "fp") == ("unknown", None)


async def test_put_again_replaces_the_record(pending_store):
    await pending_store.put("req", RECORD, ttl_s=30)
    assert (await pending_store.claim("req", "acme", "a"))[0] == "applied"
    await pending_store.put("req", {**RECORD, "model": "other"}, ttl_s=30)
    assert await pending_store.claim("req", "acme", "b") == ("applied", {**RECORD, "model": "other"})


async def test_pending_records_expire(pending_store):
    await pending_store.put("short", RECORD, ttl_s=0.3)
    await pending_store.put("long", RECORD, ttl_s=30)
    assert (await pending_store.claim("short", "acme", "fp"))[0] == "applied"
    assert (await pending_store.claim("short", "acme", "fp"))[0] == "duplicate"
    await asyncio.sleep(0.45)
    assert await pending_store.claim("short", "acme", "fp") == ("unknown", None)
    assert await pending_store.count() == 1
    assert (await pending_store.claim("long", "acme", "fp"))[0] == "applied"


async def test_concurrent_claims_apply_exactly_once(pending_store):
    await pending_store.put("contested", RECORD, ttl_s=30)
    results = await asyncio.gather(*(pending_store.claim("contested", "acme", f"fp-{i % 3}") for i in range(30)))
    statuses = [status for status, _ in results]
    assert statuses.count("applied") == 1
    assert set(statuses) <= {"applied", "duplicate", "conflict"}
    assert all(record == RECORD for _, record in results)


@pytest.mark.parametrize("record, ttl, message", [
    ({"model": "x"}, 10, r"record\['tenant'\] as a string"),
    ({"tenant": None}, 10, r"record\['tenant'\] as a string"),
    ({"tenant": "a", "x": object()}, 10, "JSON-serialisable"),
    ({"tenant": "a"}, 0, "positive number of seconds"),
    ({"tenant": "a"}, float("inf"), "positive number of seconds"),
])
async def test_put_validates(pending_store, record, ttl, message):
    with pytest.raises(ValueError, match=message):
        await pending_store.put("req", record, ttl)
    assert await pending_store.count() == 0


async def test_memory_pending_drops_oldest_when_full():
    store = MemoryPendingStore(max_records=3)
    for i in range(5):
        await store.put(f"r{i}", RECORD, ttl_s=30)
    assert await store.count() == 3
    assert await store.claim("r0", "acme", "fp") == ("unknown", None)
    assert await store.claim("r1", "acme", "fp") == ("unknown", None)
    assert (await store.claim("r4", "acme", "fp"))[0] == "applied"
    # expired records go first, before live ones are dropped
    await store.put("dying", RECORD, ttl_s=0.05)
    await asyncio.sleep(0.1)
    await store.put("r5", RECORD, ttl_s=30)
    assert (await store.claim("r3", "acme", "fp"))[0] == "applied"


# --------------------------------------------------------------------------------------------
# Opening stores and unreachable Redis


async def test_open_store_urls(redis_url):
    assert isinstance(open_state_store(None), MemoryStateStore)
    assert isinstance(open_state_store("memory"), MemoryStateStore)
    assert isinstance(open_pending_store(None), MemoryPendingStore)
    assert open_pending_store("memory", max_records=5).max_records == 5

    store = open_state_store(redis_url, namespace="ns:")
    pending = open_pending_store(redis_url.replace("redis://", "redis://:hunter2@"))
    try:
        assert isinstance(store, RedisStateStore) and store.namespace == "ns:"
        assert store.description == redis_url
        assert isinstance(pending, RedisPendingStore) and pending.description == redis_url
        await store.ping()
    finally:
        await store.aclose()
        await pending.aclose()

    for bad in ("http://localhost:6379", "postgres://db", "localhost:6379", "redis"):
        with pytest.raises(ValueError, match=r"unsupported store URL .*'memory'.*redis://.*rediss://.*unix://"):
            open_state_store(bad)
        with pytest.raises(ValueError, match="unsupported store URL"):
            open_pending_store(bad)


def test_descriptions_hide_passwords():
    for url, shown in [
        ("redis://user:s3cret@cache.internal:6380/2", "redis://cache.internal:6380/2"),
        ("rediss://:s3cret@[::1]:6379/0", "rediss://[::1]:6379/0"),
        ("unix:///run/redis.sock?db=1&password=s3cret", "unix:///run/redis.sock?db=1"),
    ]:
        assert RedisStateStore(url).description == shown
        assert RedisPendingStore(url).description == shown


async def test_unreachable_redis_raises_store_unavailable():
    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"  # nothing listens there
    options = dict(connect_timeout=0.5, socket_timeout=0.5, retries=0)
    state, pending = RedisStateStore(url, **options), RedisPendingStore(url, **options)
    started = time.monotonic()
    try:
        for call in (state.ping(), state.add("k", {"a": v(1)}), state.load("k"), state.keys(),
                     pending.put("r", RECORD, 10), pending.claim("r", "acme", "fp"), pending.count()):
            with pytest.raises(StoreUnavailable) as info:
                await call
            message = str(info.value)
            assert "127.0.0.1" in message and "s3cret" not in message and "unavailable" in message
    finally:
        await state.aclose()
        await pending.aclose()
    assert time.monotonic() - started < 5
