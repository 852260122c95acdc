"""Token rate limits (`rate_limit.tokens_per_minute`): a request reserves its estimated tokens
before the call and settles with the answer's real usage after it, in one bucket per caller that
lives in memory, in one Redis or in a Redis Cluster (one Lua script per check, hash-tagged key).
The gateway answers 429 OpenAI-shaped with Retry-After and x-ratelimit-*-tokens headers, settles
whole answers and streams (with a usage chunk, or by counting the streamed text), and fails open or
closed as `server.rate_limit_store_failure` says when Redis is down.

The buckets refill at 1 token per minute in these tests, so what refills while a test runs is at
most a token or two: counts are compared, never times."""

from __future__ import annotations

import asyncio
import hashlib

import openai
import pytest

from sigroute.gateway.ratelimit import (MemoryRateLimitStore, RedisRateLimitStore, duration_text,
                                        ratelimit_headers, Spent)
from sigroute.policies.schema import Policy
from sigroute.signals.tokens import count_message_tokens, count_tokens
from sigroute.signals.context import Message
from tests.conftest import base_policy, free_port
from tests.redis_cluster import LocalCluster, clean_cluster_url, cluster  # noqa: F401  (fixtures)

KEY = "sk-token-limits"
SCRAPER = "sk-token-limits-metrics"
SLOW = 1 / 60.0          # one token per minute: the bucket barely refills during a test
BURST = 1000


def token_policy(sim, tokens_per_minute: float = 1, token_burst: int | None = BURST, **limit) -> dict:
    rate_limit = {"tokens_per_minute": tokens_per_minute, **limit}
    if token_burst is not None:
        rate_limit["token_burst"] = token_burst
    policy = base_policy(sim, auth={"keys": [
        {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "tenant": "acme", "rate_limit": rate_limit},
        {"key_sha256": hashlib.sha256(SCRAPER.encode()).hexdigest(), "tenant": "ops", "roles": ["metrics"]}]})
    return policy


def prompt_tokens(text: str) -> int:
    """The gateway's count of a one-message prompt (what it reserves for the prompt)."""
    return count_message_tokens([Message(role="user", text=text, kinds=frozenset({"text"}))])


def remaining(response) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


def metric(gw, line_start: str) -> float:
    text = gw.http.get("/metrics", headers={"authorization": f"Bearer {SCRAPER}"}).text
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ------------------------------------------------------------------------------ the stores

# these tests are about what the store does, not how fast: on 2 busy cores a just-flushed cluster
# node can take longer than the request path's 0.5 s (a timeout there fails open, which would read
# as a wrong admission), so they wait up to 5 s
PATIENT = {"socket_timeout": 5.0, "connect_timeout": 5.0}


@pytest.fixture(params=["memory", "redis", "cluster"])
def store(request):
    """Each store kind, empty: memory, one real redis-server, the 3-primary local cluster."""
    if request.param == "memory":
        made = MemoryRateLimitStore()
    elif request.param == "redis":
        made = RedisRateLimitStore(request.getfixturevalue("clean_redis_url"), **PATIENT)
    else:
        made = RedisRateLimitStore(request.getfixturevalue("clean_cluster_url"), **PATIENT)
    yield made
    asyncio.run(made.aclose())


def test_reserve_refuse_and_settle_both_ways(store):
    async def run():
        out = {"first": await store.spend("caller", SLOW, BURST, 600)}
        out["refused"] = await store.spend("caller", SLOW, BURST, 600)    # 400 left: nothing taken
        out["after_refund"] = await store.settle("caller", SLOW, BURST, -500)   # used 100 of 600
        out["second"] = await store.spend("caller", SLOW, BURST, 600)
        out["after_debt"] = await store.settle("caller", SLOW, BURST, 1000)    # used 1600 of 600
        out["in_debt"] = await store.spend("caller", SLOW, BURST, 1)
        out["other"] = await store.spend("another caller", SLOW, BURST, 1000)  # buckets are per key
        await store.aclose()
        return out

    out = asyncio.run(run())
    assert out["first"].wait == 0 and out["first"].remaining == pytest.approx(400, abs=1)
    assert out["refused"].wait > 0 and out["refused"].remaining == pytest.approx(400, abs=1)
    # 200 tokens are missing at 1/60 token per second: about 12000 s to wait
    assert out["refused"].wait == pytest.approx(200 * 60, rel=0.01)
    assert out["after_refund"] == pytest.approx(900, abs=1)
    assert out["second"].wait == 0 and out["second"].remaining == pytest.approx(300, abs=1)
    assert out["after_debt"] == pytest.approx(-700, abs=1)
    assert out["in_debt"].wait == pytest.approx(701 * 60, rel=0.01)
    assert out["other"].wait == 0 and out["other"].remaining == pytest.approx(0, abs=1)


def test_refunds_stop_at_a_full_bucket_and_a_request_larger_than_the_bucket_waits_for_a_full_one(store):
    async def run():
        refunded = await store.settle("caller", SLOW, BURST, -5000)
        huge = await store.spend("caller", SLOW, BURST, 3000)          # larger than the bucket: admitted when full
        after = await store.spend("caller", SLOW, BURST, 3000)         # now 2000 in debt: refused
        await store.aclose()
        return refunded, huge, after

    refunded, huge, after = asyncio.run(run())
    assert refunded == pytest.approx(BURST)
    assert huge.wait == 0 and huge.remaining == pytest.approx(-2000, abs=1)
    assert after.wait == pytest.approx((BURST + 2000) * 60, rel=0.01)


def test_the_cluster_keeps_each_callers_token_bucket_in_its_own_tagged_slot(cluster, clean_cluster_url):  # noqa: F811
    store = RedisRateLimitStore(clean_cluster_url, **PATIENT)

    async def run():
        for caller in ("acme/aaaa", "acme/bbbb", "zeta/cccc"):
            await store.spend(caller + "#tokens", SLOW, BURST, 10)
        await store.aclose()

    asyncio.run(run())
    names = {k.decode() for k in cluster.all_keys()}
    assert names == {"sigroute:ratelimit:{acme/aaaa#tokens}", "sigroute:ratelimit:{acme/bbbb#tokens}",
                     "sigroute:ratelimit:{zeta/cccc#tokens}"}
    for name in names:
        assert cluster.keyslot(name) == cluster.keyslot(name[name.index("{") + 1:-1])


def test_headers_read_like_openais():
    spent = Spent(wait=0.0, remaining=250.7, size=1000, rate_per_s=1000 / 60)
    assert ratelimit_headers("tokens", 1000, spent) == {
        "x-ratelimit-limit-tokens": "1000", "x-ratelimit-remaining-tokens": "250",
        "x-ratelimit-reset-tokens": duration_text(749.3 / (1000 / 60))}
    assert [duration_text(s) for s in (0.0201, 1.5, 360, 3723)] == ["21ms", "1.5s", "6m0s", "1h2m3s"]
    assert ratelimit_headers("requests", 60, Spent(0, -3, 10, 1))["x-ratelimit-remaining-requests"] == "0"


# ------------------------------------------------------------------------------ the policy

def test_policy_needs_some_limit_and_a_rate_with_each_burst(sim):
    for bad, says in (({}, "requests_per_minute, tokens_per_minute or both"),
                      ({"tokens_per_minute": 100, "burst": 5}, "set requests_per_minute"),
                      ({"requests_per_minute": 100, "token_burst": 5}, "set tokens_per_minute"),
                      ({"tokens_per_minute": 100, "completion_tokens_estimate": -1}, "greater than or equal")):
        policy = base_policy(sim, server={"rate_limit": bad})
        with pytest.raises(ValueError) as caught:
            Policy.model_validate(policy)
        assert says in str(caught.value)


# ------------------------------------------------------------------------------ the gateway

@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request):
    """Where the gateway keeps its buckets: None (memory), one Redis, the local cluster."""
    if request.param == "memory":
        return None
    return request.getfixturevalue("clean_redis_url" if request.param == "redis" else "clean_cluster_url")


def test_whole_answers_reserve_the_estimate_and_settle_with_real_usage(sim, gateway_factory, store_url):
    gw = gateway_factory(token_policy(sim), redis_url=store_url)
    client = gw.client(KEY)
    first = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "first question"}], max_tokens=100)
    estimate1 = prompt_tokens("first question") + 100
    assert first.headers["x-ratelimit-limit-tokens"] == "1"
    assert remaining(first) == BURST - estimate1            # the reservation, before the answer
    used1 = first.parse().usage.total_tokens
    # no max_tokens: the limit's completion_tokens_estimate (256 by default) is reserved
    second = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "second question"}])
    estimate2 = prompt_tokens("second question") + 256
    # the first request was settled with its real usage: only what it used is gone
    assert abs(remaining(second) - (BURST - used1 - estimate2)) <= 1
    assert used1 < estimate1
    reset = second.headers["x-ratelimit-reset-tokens"]
    assert reset.endswith("s") and "m" in reset            # hours of refill at 1 token/minute
    assert sim.calls("alpha") == 2


def test_a_request_over_the_remaining_tokens_gets_429_before_any_model_call(sim, gateway_factory, store_url):
    gw = gateway_factory(token_policy(sim), redis_url=store_url)
    client = gw.client(KEY)
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=500)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=990)
    response = caught.value.response
    assert caught.value.code == "rate_limit_exceeded"
    error = response.json()["error"]
    assert error["type"] == "rate_limit_error" and "tokens/minute" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["x-ratelimit-limit-tokens"] == "1"
    assert 0 < int(response.headers["x-ratelimit-remaining-tokens"]) < prompt_tokens("hi") + 990
    assert sim.calls("alpha") == 1
    # a smaller request still fits
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    assert sim.calls("alpha") == 2


def test_a_stream_settles_with_its_usage_chunk(sim, gateway_factory, clean_redis_url):
    gw = gateway_factory(token_policy(sim), redis_url=clean_redis_url)
    client = gw.client(KEY)
    stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "stream it"}],
                                            max_tokens=300, stream=True, stream_options={"include_usage": True})
    used = [chunk.usage.total_tokens for chunk in stream if chunk.usage is not None]
    assert len(used) == 1
    after = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    assert abs(remaining(after) - (BURST - used[0] - prompt_tokens("hi") - 10)) <= 1


def test_a_stream_without_usage_is_settled_by_counting_what_streamed(sim, gateway_factory, clean_redis_url):
    gw = gateway_factory(token_policy(sim), redis_url=clean_redis_url)
    client = gw.client(KEY)
    stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "count me"}],
                                            max_tokens=300, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text
    counted = prompt_tokens("count me") + count_tokens(text)
    after = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=10)
    assert abs(remaining(after) - (BURST - counted - prompt_tokens("hi") - 10)) <= 1


def test_three_replicas_share_one_token_bucket(sim, gateway_factory, clean_redis_url):
    replicas = [gateway_factory(token_policy(sim), redis_url=clean_redis_url) for _ in range(3)]
    first = replicas[0].chat("on replica one", api_key=KEY, max_tokens=600)
    used0 = first.json()["usage"]["total_tokens"]
    second = replicas[1].chat("on replica two", api_key=KEY, max_tokens=10)
    used1 = second.json()["usage"]["total_tokens"]
    # replica two sees what replica one's request really used (settled), not its reservation
    assert abs(remaining(second) - (BURST - used0 - prompt_tokens("on replica two") - 10)) <= 1
    # replica three refuses a request its own memory bucket would admit
    left = BURST - used0 - used1
    third = replicas[2].chat("hi", api_key=KEY, max_tokens=left - prompt_tokens("hi") + 20)
    assert third.status_code == 429, third.text
    assert sim.calls("alpha") == 2


def test_token_limit_fails_open_or_closed_when_redis_is_down(sim, gateway_factory):
    down = f"redis://127.0.0.1:{free_port()}/0"
    open_gw = gateway_factory(token_policy(sim), redis_url=down)
    assert open_gw.chat("hello", api_key=KEY, max_tokens=5).status_code == 200
    assert metric(open_gw, 'sigroute_rate_limit_store_errors_total{outcome="allowed"}') >= 1
    closed = token_policy(sim)
    closed.setdefault("server", {})["rate_limit_store_failure"] = "closed"
    closed_gw = gateway_factory(closed, redis_url=down)
    refused = closed_gw.chat("hello", api_key=KEY, max_tokens=5)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "rate_limit_store_unavailable"
    assert refused.headers["retry-after"] == "1"


def test_request_limits_send_their_x_ratelimit_headers_too(sim, gateway_factory):
    policy = token_policy(sim, requests_per_minute=1, burst=3)
    gw = gateway_factory(policy)
    answers = [gw.chat("hi", api_key=KEY, max_tokens=5) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert [a.headers["x-ratelimit-remaining-requests"] for a in answers] == ["2", "1", "0", "0"]
    assert all(a.headers["x-ratelimit-limit-requests"] == "1" for a in answers)
    assert answers[3].json()["error"]["code"] == "rate_limit_exceeded"
    assert "x-ratelimit-remaining-tokens" in answers[0].headers


def test_a_tenant_scoped_limit_is_shared_by_the_tenants_keys(sim, gateway_factory, clean_redis_url):
    other = "sk-token-limits-second-key"
    limit = {"tokens_per_minute": 1, "token_burst": BURST, "scope": "tenant"}
    policy = base_policy(sim, auth={"keys": [
        {"key_sha256": hashlib.sha256(k.encode()).hexdigest(), "tenant": "acme", "rate_limit": limit}
        for k in (KEY, other)]})
    gw = gateway_factory(policy, redis_url=clean_redis_url)
    first = gw.chat("from the first key", api_key=KEY, max_tokens=600)
    used = first.json()["usage"]["total_tokens"]
    second = gw.chat("from the second key", api_key=other, max_tokens=10)
    # the second key sees what the first key's request used: one bucket for the tenant
    assert abs(remaining(second) - (BURST - used - prompt_tokens("from the second key") - 10)) <= 1
    import redis as redis_client
    names = {n.decode() for n in redis_client.Redis.from_url(clean_redis_url).scan_iter("sigroute:ratelimit:*")}
    assert names == {"sigroute:ratelimit:{tenant=acme#tokens}"}


@pytest.mark.parametrize("max_tokens", [10**30, 1e300, 2**63])
def test_an_absurd_max_tokens_is_refused_or_waits_never_a_500(sim, gateway_factory, max_tokens):
    gw = gateway_factory(token_policy(sim))
    first = gw.chat("hi", api_key=KEY, max_tokens=max_tokens)
    assert first.status_code in (200, 400, 429), first.text
    second = gw.chat("hi", api_key=KEY, max_tokens=5)
    assert second.status_code in (200, 429), second.text
    if second.status_code == 200:      # the absurd request was refused or settled: the bucket is whole
        assert remaining(second) >= BURST - 100


def test_the_messages_api_is_limited_too_with_an_anthropic_shaped_429(sim, gateway_factory):
    import anthropic

    gw = gateway_factory(token_policy(sim))
    client = anthropic.Anthropic(base_url=gw.url, api_key=KEY, max_retries=0)
    ok = client.messages.with_raw_response.create(model="auto", max_tokens=600,
                                                  messages=[{"role": "user", "content": "hello"}])
    assert int(ok.headers["x-ratelimit-remaining-tokens"]) < BURST - 600
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="auto", max_tokens=995, messages=[{"role": "user", "content": "hello"}])
    body = caught.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "tokens/minute" in body["error"]["message"]
    assert int(caught.value.response.headers["retry-after"]) >= 1
