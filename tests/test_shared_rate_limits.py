"""Rate limits that hold across replicas: token buckets in Redis (one Lua script per check, Redis
server time), three gateway replicas on one Redis admitting one caller's limit once, and what the
gateway does when the bucket store is down (`server.rate_limit_store_failure`)."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
import redis

from sigroute.gateway.ratelimit import RateLimitStoreUnavailable, RedisRateLimitStore
from tests.conftest import base_policy, free_port

KEY = "sk-shared-limits"
SCRAPER = "sk-shared-limits-metrics"


def limited_policy(sim, rate_limit: dict, **server) -> dict:
    policy = base_policy(sim, auth={"keys": [
        {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "tenant": "acme", "rate_limit": rate_limit},
        {"key_sha256": hashlib.sha256(SCRAPER.encode()).hexdigest(), "tenant": "ops", "roles": ["metrics"]}]})
    policy.setdefault("server", {}).update(server)
    return policy


def metric(gw, line_start: str) -> float:
    text = gw.http.get("/metrics", headers={"authorization": f"Bearer {SCRAPER}"}).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_openai_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"] and error["type"]


# ------------------------------------------------------------------------------ the store itself

def test_redis_bucket_admits_burst_then_refuses_with_the_wait(clean_redis_url):
    async def run():
        store = RedisRateLimitStore(clean_redis_url)
        rate, burst = 0.5, 5.0          # one token every 2 s
        started = time.monotonic()
        admitted = [await store.take("caller", rate, burst) for _ in range(5)]
        wait = await store.take("caller", rate, burst)
        elapsed = time.monotonic() - started
        ttl_ms = redis.Redis.from_url(clean_redis_url).pttl(store.bucket_key("caller"))
        await store.aclose()
        return admitted, wait, elapsed, ttl_ms

    admitted, wait, elapsed, ttl_ms = asyncio.run(run())
    assert admitted == [0.0] * 5
    # the bucket was empty after five takes; each second they took refilled half a token, which
    # shortens the 2 s wait by that second
    assert 2.0 - elapsed - 1e-3 <= wait <= 2.0
    # idle buckets vanish: the key lives until the bucket would be full again (+ 1 s)
    assert 0 < ttl_ms <= 5 / 0.5 * 1000 + 1000


def test_redis_bucket_refills_at_the_rate_and_survives_a_script_flush(clean_redis_url):
    async def run():
        store = RedisRateLimitStore(clean_redis_url)
        rate, burst = 20.0, 1.0         # one token every 50 ms
        first = await store.take("refill", rate, burst)
        refused = await store.take("refill", rate, burst)
        await asyncio.sleep(refused + 0.05)   # a sleep only lengthens the wait: the token is back
        redis.Redis.from_url(clean_redis_url).script_flush()   # EVALSHA answers NOSCRIPT: loaded again
        again = await store.take("refill", rate, burst)
        await store.aclose()
        return first, refused, again

    first, refused, again = asyncio.run(run())
    assert first == 0.0
    assert 0 < refused <= 1 / 20.0
    assert again == 0.0


def test_two_store_clients_share_one_bucket(clean_redis_url):
    """Two stores (as two replicas hold) on one Redis: the second sees what the first took."""
    async def run():
        a, b = RedisRateLimitStore(clean_redis_url), RedisRateLimitStore(clean_redis_url)
        results = []
        for i in range(6):
            results.append(await (a if i % 2 == 0 else b).take("shared", 0.01, 3.0))
        await a.aclose()
        await b.aclose()
        return results

    results = asyncio.run(run())
    assert results[:3] == [0.0] * 3
    assert all(wait > 0 for wait in results[3:])


def test_unreachable_redis_raises_naming_the_url_without_password():
    async def run():
        store = RedisRateLimitStore(f"redis://:hunter2@127.0.0.1:{free_port()}/0")
        try:
            with pytest.raises(RateLimitStoreUnavailable) as caught:
                await store.take("k", 1.0, 1.0)
        finally:
            await store.aclose()
        return str(caught.value)

    message = asyncio.run(run())
    assert "127.0.0.1" in message and "hunter2" not in message


def test_bucket_and_response_stores_open_their_own_client_lazily(clean_redis_url):
    """Both take their Redis set-up from `sigroute._redis.LazyRedisStore`: no client before the
    first command, the bucket store's replies decoded to str and its script registered on each
    client it opens, the response store's records kept as bytes, a new client after aclose()."""
    from sigroute.gateway.response_store import RedisResponseStore

    async def run():
        limits, responses = RedisRateLimitStore(clean_redis_url), RedisResponseStore(clean_redis_url)
        assert limits._client is None and responses._client is None
        assert await limits.take("k", 1.0, 2.0) == 0.0
        first = limits._client
        assert first is not None and limits._take_script.registered_client is first
        assert await first.hget(limits.bucket_key("k"), "t") == "1"
        await responses.put("acme", "resp_1", b"\xff not utf-8", 60)
        assert await responses.get("acme", "resp_1") == b"\xff not utf-8"
        await limits.aclose()
        await responses.aclose()
        assert limits._client is None and responses._client is None
        assert await limits.take("k", 1.0, 2.0) == 0.0
        assert limits._client is not first and limits._take_script.registered_client is limits._client
        await limits.aclose()

    asyncio.run(run())


# ------------------------------------------------------------------------------ three replicas

def test_three_replicas_on_one_redis_admit_the_limit_once(sim, gateway_factory, clean_redis_url):
    rate_per_min, burst = 6, 10      # 0.1 token/s: little refills while the test runs
    policy = limited_policy(sim, {"requests_per_minute": rate_per_min, "burst": burst})
    replicas = [gateway_factory(policy, redis_url=clean_redis_url) for _ in range(3)]
    started = time.monotonic()
    statuses = [replicas[i % 3].chat(f"req {i}", api_key=KEY) for i in range(60)]
    elapsed = time.monotonic() - started
    admitted = sum(1 for r in statuses if r.status_code == 200)
    refused = [r for r in statuses if r.status_code != 200]
    for r in refused:
        assert_openai_error(r, 429, "rate_limit_exceeded")
        assert int(r.headers["retry-after"]) >= 1
    # per-process buckets would admit 3 x 10 = 30; one shared bucket admits 10 plus what refilled
    assert burst <= admitted <= burst + int(elapsed * rate_per_min / 60) + 1, (admitted, elapsed)
    assert sim.calls("alpha") == admitted


def test_feedback_rate_limit_is_shared_too(sim, gateway_factory, clean_redis_url):
    policy = limited_policy(sim, {"requests_per_minute": 6000},
                            feedback_rate_limit={"requests_per_minute": 1, "burst": 3})
    replicas = [gateway_factory(policy, redis_url=clean_redis_url) for _ in range(2)]
    answers = [replicas[i % 2].http.post("/v1/feedback", json={"request_id": f"unknown-{i}", "thumbs": "up"},
                                         headers={"authorization": f"Bearer {KEY}"}) for i in range(8)]
    limited = [r for r in answers if r.status_code == 429]
    for r in limited:
        assert_openai_error(r, 429, "feedback_rate_limit_exceeded")
    # two per-process buckets would let 6 through; the shared one 3 (plus at most one refilled)
    assert 3 <= len(answers) - len(limited) <= 4, [r.status_code for r in answers]


# ------------------------------------------------------------------------------ Redis down

def test_hung_redis_fails_fast_after_one_timeout():
    """A Redis that accepts connections and never answers costs one socket timeout, not one per check."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"

    async def run():
        store = RedisRateLimitStore(url, socket_timeout=1.0, connect_timeout=1.0, retries=0, hung_hold_s=30.0)
        durations = []
        try:
            for _ in range(3):
                started = time.monotonic()
                with pytest.raises(RateLimitStoreUnavailable):
                    await store.take("k", 1.0, 1.0)
                durations.append(time.monotonic() - started)
        finally:
            await store.aclose()
        return durations

    try:
        durations = asyncio.run(run())
    finally:
        listener.close()
    assert durations[0] >= 0.9                      # the first waited for its timeout
    assert durations[1] < 0.5 and durations[2] < 0.5  # the next fail at once (not after 1 s each)


def test_store_down_fails_open_by_default_and_counts(sim, gateway_factory):
    dead = f"redis://127.0.0.1:{free_port()}/0"          # nothing listens there
    gw = gateway_factory(limited_policy(sim, {"requests_per_minute": 60, "burst": 1}), redis_url=dead)
    for i in range(3):   # a burst of 1 would refuse the 2nd and 3rd; unchecked, all are served
        assert gw.chat(f"open {i}", api_key=KEY).status_code == 200
    assert metric(gw, 'sigroute_rate_limit_store_errors_total{outcome="allowed"}') >= 3
    assert metric(gw, 'sigroute_rate_limit_store_errors_total{outcome="refused"}') == 0


def test_store_down_fails_closed_when_configured(sim, gateway_factory):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    policy = limited_policy(sim, {"requests_per_minute": 60, "burst": 100}, rate_limit_store_failure="closed")
    gw = gateway_factory(policy, redis_url=dead)
    for i in range(2):
        r = gw.chat(f"closed {i}", api_key=KEY)
        assert_openai_error(r, 503, "rate_limit_store_unavailable")
        assert int(r.headers["retry-after"]) >= 1
    assert sim.calls("alpha") == 0
    assert metric(gw, 'sigroute_rate_limit_store_errors_total{outcome="refused"}') >= 2
    assert metric(gw, 'sigroute_rate_limit_store_errors_total{outcome="allowed"}') == 0


def test_store_failure_option_is_validated(sim):
    from pydantic import ValidationError

    from sigroute.policies.schema import Policy

    with pytest.raises(ValidationError, match="rate_limit_store_failure"):
        Policy.model_validate(limited_policy(sim, {"requests_per_minute": 60}, rate_limit_store_failure="maybe"))
