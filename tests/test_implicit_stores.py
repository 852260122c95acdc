"""The stores implicit feedback uses: pending records' implicit claims (explicit wins) and the
served-answer index — the same tests against memory, one real Redis and a real Redis Cluster."""

from __future__ import annotations

import json

import pytest

from sigroute.bandits.store import MemoryPendingStore, RedisPendingStore
from sigroute.gateway.implicit import MemoryServedAnswers, RedisServedAnswers, answer_hash, user_key
from tests.redis_cluster import clean_cluster_url, cluster   # noqa: F401  (fixtures)

RECORD = {"tenant": "acme", "decision": "learn", "model": "alpha", "default_quality": 0.5}
REASK = json.dumps({"event": "reask", "quality": 0.0, "weight": 0.8})
URLS = {"redis": "clean_redis_url", "cluster": "clean_cluster_url"}


# what the stores do, not how fast: a just-flushed cluster node on 2 busy cores can take longer than
# the request path's 0.5 s default
PATIENT = {"socket_timeout": 5.0, "connect_timeout": 5.0}


@pytest.fixture(params=["memory", "redis", "cluster"])
async def pending_store(request):
    store = MemoryPendingStore() if request.param == "memory" else RedisPendingStore(
        request.getfixturevalue(URLS[request.param]))
    yield store
    await store.aclose()


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis", "cluster"])
async def served(request):
    clock = Clock()
    store = MemoryServedAnswers(clock=clock) if request.param == "memory" else RedisServedAnswers(
        request.getfixturevalue(URLS[request.param]), clock=clock, **PATIENT)
    store.test_clock = clock
    yield store
    await store.aclose()


async def test_implicit_claim_once_and_explicit_sees_it(pending_store):
    await pending_store.put("req-1", RECORD, ttl_s=30)
    assert await pending_store.claim_implicit("req-1", "acme", REASK) == ("applied", RECORD)
    assert await pending_store.claim_implicit("req-1", "acme", REASK) == ("duplicate", RECORD)
    # explicit feedback afterwards is applied, and learns which implicit credit it replaces
    status, record = await pending_store.claim("req-1", "acme", "score=1")
    assert status == "applied" and record == {**RECORD, "implicit": json.loads(REASK)}
    assert (await pending_store.claim("req-1", "acme", "score=1"))[0] == "duplicate"


async def test_explicit_first_wins(pending_store):
    await pending_store.put("req-2", RECORD, ttl_s=30)
    assert (await pending_store.claim("req-2", "acme", "score=1"))[0] == "applied"
    assert await pending_store.claim_implicit("req-2", "acme", REASK) == ("explicit_first", RECORD)
    assert await pending_store.claim("req-2", "acme", "score=1") == ("duplicate", RECORD)   # no implicit attached


async def test_a_judge_verdict_outranks_an_implicit_credit(pending_store):
    """Precedence explicit > judge > implicit: a judge's verdict (rank 2) after an implicit credit
    replaces it (the old credit comes back so the learner is credited the difference); an implicit
    credit after a verdict changes nothing; explicit feedback then sees the verdict."""
    judge = json.dumps({"source": "judge", "event": None, "quality": 1.0, "weight": 0.9})
    await pending_store.put("req-5", RECORD, ttl_s=30)
    assert await pending_store.claim_implicit("req-5", "acme", REASK, 1) == ("applied", RECORD)
    assert await pending_store.claim_implicit("req-5", "acme", judge, 2) == (
        "replaced", {**RECORD, "implicit": json.loads(REASK)})
    assert await pending_store.claim_implicit("req-5", "acme", judge, 2) == ("duplicate", RECORD)
    assert await pending_store.claim_implicit("req-5", "acme", REASK, 1) == ("duplicate", RECORD)
    status, record = await pending_store.claim("req-5", "acme", "score=0")
    assert status == "applied" and record == {**RECORD, "implicit": json.loads(judge)}
    # a verdict first: a later implicit credit is a duplicate
    await pending_store.put("req-6", RECORD, ttl_s=30)
    assert await pending_store.claim_implicit("req-6", "acme", judge, 2) == ("applied", RECORD)
    assert await pending_store.claim_implicit("req-6", "acme", REASK, 1) == ("duplicate", RECORD)


async def test_implicit_claim_of_unknown_or_other_tenant(pending_store):
    assert await pending_store.claim_implicit("never", "acme", REASK) == ("unknown", None)
    await pending_store.put("req-3", RECORD, ttl_s=30)
    assert await pending_store.claim_implicit("req-3", "evil", REASK) == ("unknown", None)
    assert (await pending_store.claim_implicit("req-3", "acme", REASK))[0] == "applied"


async def test_served_answers_per_user_within_the_window(served):
    alice, bob = user_key("acme", "alice"), user_key("acme", "bob")
    other_tenant = user_key("globex", "alice")
    h = answer_hash("Paris is the capital of France.")
    await served.remember(alice, h, {"request_id": "req_1", "decision": "learn"}, window_s=60, max_per_user=8)
    found = await served.find(alice, h, window_s=60)
    assert found["request_id"] == "req_1" and found["decision"] == "learn"
    assert await served.find(bob, h, window_s=60) is None
    assert await served.find(other_tenant, h, window_s=60) is None
    served.test_clock.now += 61
    assert await served.find(alice, h, window_s=60) is None


async def test_served_answers_are_bounded_per_user(served):
    alice = user_key("acme", "alice")
    for i in range(5):
        served.test_clock.now += 1
        await served.remember(alice, answer_hash(f"answer {i}"), {"request_id": f"req_{i}"}, window_s=600,
                              max_per_user=3)
    found = [await served.find(alice, answer_hash(f"answer {i}"), window_s=600) for i in range(5)]
    assert [f and f["request_id"] for f in found] == [None, None, "req_2", "req_3", "req_4"]


async def test_served_answer_keys_share_one_slot_per_user(clean_cluster_url):
    """Both keys of a user are written by one script: on a cluster they must hash to one slot."""
    from redis.crc import key_slot

    store = RedisServedAnswers(clean_cluster_url, **PATIENT)
    try:
        who = user_key("acme", "alice")
        await store.remember(who, answer_hash("x"), {"request_id": "r"}, 60, 8)
        assert (await store.find(who, answer_hash("x"), 60))["request_id"] == "r"
        h, z = store.keys(who)
        assert key_slot(h.encode()) == key_slot(z.encode())
    finally:
        await store.aclose()
