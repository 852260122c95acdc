"""The semantic cache through the real gateway: isolation, TTL, quota, no-store paths, streamed
hits, single flight, verifier, feedback, admin deletes, Redis shared by two gateways, Redis down."""

from __future__ import annotations

import concurrent.futures
import time

import httpx
import pytest

from sigroute.policies.schema import Policy
from tests.conftest import GatewayProcess, base_policy, free_port


def cached_policy(sim, cache: dict | None = None, models=("alpha",), **overrides):
    spec = {"mode": "exact"} if cache is None else cache
    return base_policy(sim, decisions=[{"name": "default", "models": list(models), "cache": spec}], **overrides)


def ask(gw, content, **kwargs):
    r = gw.chat(content, **kwargs)
    assert r.status_code == 200, r.text
    return r


def answer(r) -> str:
    return r.json()["choices"][0]["message"]["content"]


def metric(gw, name: str, **labels) -> float:
    text = gw.http.get("/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


# --------------------------------------------------------------------------------------------
# exact tier, isolation


def test_repeat_is_answered_from_the_cache_without_calling_upstream(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim))
    first = ask(gw, "Which planet has the longest day?")
    assert first.headers["x-sigroute-cache"] == "miss"
    assert first.headers["x-sigroute-cache-category"] == "default"
    second = ask(gw, "Which   planet has the longest day?  ")     # whitespace is normalized
    assert second.headers["x-sigroute-cache"] == "hit-exact"
    assert second.headers["x-sigroute-model"] == "alpha"
    assert answer(second) == answer(first)
    assert second.json()["id"] != first.json()["id"]
    assert second.headers["x-sigroute-request-id"] in ("req_" + second.json()["id"][len("chatcmpl-"):],)
    assert sim.calls("alpha") == 1
    assert ask(gw, "which planet has the longest day?").headers["x-sigroute-cache"] == "miss"  # case kept
    assert metric(gw, "sigroute_cache_lookups_total", result="hit_exact") == 1
    assert metric(gw, "sigroute_cache_stores_total", result="stored") == 2
    assert metric(gw, "sigroute_requests_total", model="cache") == 1


def test_tenants_system_prompts_and_parameters_never_share_entries(sim, gateway_factory):
    keys = [{"key_env": "KEY_A", "tenant": "acme"}, {"key_env": "KEY_B", "tenant": "globex"}]
    gw = gateway_factory(cached_policy(sim, auth={"keys": keys}), environ={"KEY_A": "ka", "KEY_B": "kb"})
    question = [{"role": "user", "content": "Summarize our refund policy"}]
    assert ask(gw, None, messages=question, api_key="ka").headers["x-sigroute-cache"] == "miss"
    assert ask(gw, None, messages=question, api_key="ka").headers["x-sigroute-cache"] == "hit-exact"
    assert ask(gw, None, messages=question, api_key="kb").headers["x-sigroute-cache"] == "miss"   # other tenant
    with_system = [{"role": "system", "content": "You are terse."}] + question
    assert ask(gw, None, messages=with_system, api_key="ka").headers["x-sigroute-cache"] == "miss"
    other_system = [{"role": "system", "content": "You are verbose."}] + question
    assert ask(gw, None, messages=other_system, api_key="ka").headers["x-sigroute-cache"] == "miss"
    assert ask(gw, None, messages=with_system, api_key="ka").headers["x-sigroute-cache"] == "hit-exact"
    assert ask(gw, None, messages=question, api_key="ka", temperature=0.3).headers["x-sigroute-cache"] == "miss"
    assert ask(gw, None, messages=question, api_key="ka", max_tokens=50).headers["x-sigroute-cache"] == "miss"
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    assert ask(gw, None, messages=question, api_key="ka", tools=tools).headers["x-sigroute-cache"] == "miss"
    assert sim.calls("alpha") == 7


def test_per_user_partitions_and_requests_without_a_user(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, {"mode": "exact", "per_user": True}))
    assert ask(gw, "my open tickets?", user="u1").headers["x-sigroute-cache"] == "miss"
    assert ask(gw, "my open tickets?", user="u1").headers["x-sigroute-cache"] == "hit-exact"
    assert ask(gw, "my open tickets?", user="u2").headers["x-sigroute-cache"] == "miss"
    assert ask(gw, "my open tickets?").headers["x-sigroute-cache"] == "no_user"
    assert ask(gw, "my open tickets?").headers["x-sigroute-cache"] == "no_user"
    assert sim.calls("alpha") == 4


def test_nonzero_temperature_rule(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, {"mode": "exact", "nonzero_temperature": False}))
    for _ in range(2):
        assert ask(gw, "a poem about rain", temperature=0.9).headers["x-sigroute-cache"] == "temperature"
    assert ask(gw, "a poem about rain").headers["x-sigroute-cache"] == "temperature"  # omitted: provider default
    assert ask(gw, "a poem about rain", temperature=0).headers["x-sigroute-cache"] == "miss"
    assert ask(gw, "a poem about rain", temperature=0).headers["x-sigroute-cache"] == "hit-exact"
    assert sim.calls("alpha") == 4


def test_decisions_without_a_cache_are_untouched(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    r = ask(gw, "no cache here")
    assert "x-sigroute-cache" not in r.headers
    ask(gw, "no cache here")
    assert sim.calls("alpha") == 2


# --------------------------------------------------------------------------------------------
# lifetime and quota


def test_entries_expire_after_their_ttl(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, {"mode": "exact", "ttl": "1s"}))
    ask(gw, "weather in Oslo?")
    assert ask(gw, "weather in Oslo?").headers["x-sigroute-cache"] == "hit-exact"
    time.sleep(1.2)
    assert ask(gw, "weather in Oslo?").headers["x-sigroute-cache"] == "miss"
    assert sim.calls("alpha") == 2


def test_quota_evicts_the_least_recently_used_entry(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, {"mode": "exact", "max_entries": 2}))
    for q in ("q one", "q two"):
        ask(gw, q)
    assert ask(gw, "q one").headers["x-sigroute-cache"] == "hit-exact"   # "q two" is now least recent
    ask(gw, "q three")                                                   # evicts "q two"
    assert ask(gw, "q one").headers["x-sigroute-cache"] == "hit-exact"
    assert ask(gw, "q two").headers["x-sigroute-cache"] == "miss"
    assert metric(gw, "sigroute_cache_evictions_total", category="default") == 2   # "q two", then "q three"


# --------------------------------------------------------------------------------------------
# what is never stored, and what callers can ask for


def test_cache_control_and_bypass_headers(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim))
    r = ask(gw, "fresh please", headers={"cache-control": "no-store"})
    assert r.headers["x-sigroute-cache"] == "miss"
    assert ask(gw, "fresh please").headers["x-sigroute-cache"] == "miss"         # nothing was stored
    assert ask(gw, "fresh please").headers["x-sigroute-cache"] == "hit-exact"
    r = ask(gw, "fresh please", headers={"cache-control": "no-cache"})
    assert r.headers["x-sigroute-cache"] == "refresh"                           # not served, but stored
    r = ask(gw, "fresh please", headers={"x-sigroute-cache": "bypass"})
    assert r.headers["x-sigroute-cache"] == "bypass"
    assert ask(gw, "fresh please", headers={"cache-control": "no-store"}).headers["x-sigroute-cache"] == "hit-exact"
    assert sim.calls("alpha") == 4
    assert metric(gw, "sigroute_cache_stores_total", result="no_store") == 1


def test_errors_and_truncated_answers_are_never_stored(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim))
    sim.faults("alpha", error_rate=1.0)
    assert gw.chat("will fail").status_code >= 500
    sim.faults("alpha")
    assert ask(gw, "will fail").headers["x-sigroute-cache"] == "miss"
    cut = ask(gw, "a long story", max_tokens=3)
    assert cut.json()["choices"][0]["finish_reason"] == "length"
    assert ask(gw, "a long story", max_tokens=3).headers["x-sigroute-cache"] == "miss"
    assert metric(gw, "sigroute_cache_stores_total", result="incomplete") == 2


def test_streamed_hit_is_restreamed_as_proper_sse(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim))
    client = gw.client()
    messages = [{"role": "user", "content": "stream me a fact"}]

    def streamed():
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=messages, stream=True, stream_options={"include_usage": True})
        chunks = list(raw.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        return raw.headers, text, finish, chunks

    h1, text1, finish1, _ = streamed()
    h2, text2, finish2, chunks2 = streamed()
    assert h1["x-sigroute-cache"] == "miss" and h2["x-sigroute-cache"] == "hit-exact"
    assert h2["content-type"].startswith("text/event-stream")
    assert text2 == text1 and len(text1.split()) == 8 and finish2 == finish1 == ["stop"]
    assert chunks2[0].choices[0].delta.role == "assistant"
    assert chunks2[-1].usage is not None and chunks2[-1].usage.completion_tokens == 8
    assert sim.calls("alpha") == 1
    # a non-streamed request is another partition
    assert ask(gw, "stream me a fact").headers["x-sigroute-cache"] == "miss"


def test_a_broken_stream_is_not_stored(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim))
    sim.faults("alpha", break_stream_rate=1.0)
    client = gw.client()
    with pytest.raises(Exception):
        list(client.chat.completions.create(model="auto", stream=True,
                                            messages=[{"role": "user", "content": "[[sim:echo]] " + "word " * 40}]))
    sim.faults("alpha")
    raw = client.chat.completions.with_raw_response.create(
        model="auto", stream=True, messages=[{"role": "user", "content": "[[sim:echo]] " + "word " * 40}])
    assert raw.headers["x-sigroute-cache"] == "miss"
    list(raw.parse())
    assert metric(gw, "sigroute_cache_stores_total", result="incomplete") == 1


# --------------------------------------------------------------------------------------------
# single flight


def _concurrently(n, fn):
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def test_identical_concurrent_misses_make_one_upstream_call(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, models=("slow",)))

    def one():
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            r = http.post("/v1/chat/completions",
                          json={"model": "auto", "messages": [{"role": "user", "content": "same question"}]})
            return r.status_code, r.headers.get("x-sigroute-cache"), r.json()["choices"][0]["message"]["content"]

    results = _concurrently(8, one)
    assert sim.calls("slow") == 1
    assert [s for s, _, _ in results] == [200] * 8
    kinds = sorted(k for _, k, _ in results)
    assert kinds.count("miss") == 1 and kinds.count("coalesced") == 7
    assert len({text for _, _, text in results}) == 1


def test_identical_concurrent_streams_follow_one_leader(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, models=("slow",)))

    def one():
        client = gw.client()
        raw = client.chat.completions.with_raw_response.create(
            model="auto", stream=True, messages=[{"role": "user", "content": "same streamed question"}])
        return raw.headers["x-sigroute-cache"], "".join(c.choices[0].delta.content or "" for c in raw.parse()
                                                        if c.choices)

    results = _concurrently(4, one)
    assert sim.calls("slow") == 1
    assert sorted(k for k, _ in results) == ["coalesced"] * 3 + ["miss"]
    assert len({t for _, t in results}) == 1 and len(results[0][1].split()) == 40


def test_followers_call_upstream_themselves_when_the_leader_fails(sim, gateway_factory):
    """A follower waits for the leader of its identical request (it does not call upstream while
    the leader streams) and, when the leader's stream breaks, calls upstream itself instead of
    being handed the broken answer. Fails when single flight is removed: the follower would not
    join, or would call upstream while the leader is still in flight."""
    gw = gateway_factory(cached_policy(sim, models=("slow",)))
    sim.http.put("/sim/models/slow", json={"tokens_per_s": 10}).raise_for_status()   # ~2 s to the break
    sim.faults("slow", break_stream_rate=1.0)
    flights = gw.app.state.runtime.pipeline.caching.flights
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "fragile"}]}

    def leader():
        try:
            list(gw.client().chat.completions.create(**body))
        except Exception:
            return "broken"
        return "ok"

    def follower():
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            r = http.post("/v1/chat/completions", json=body)
            return r.headers.get("x-sigroute-cache"), r.text

    def until(condition, what: str) -> None:
        deadline = time.monotonic() + 20   # a hang detector; each step takes milliseconds
        while not condition():
            assert time.monotonic() < deadline, what
            time.sleep(0.005)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        first = pool.submit(leader)
        until(lambda: len(flights) == 1, "the leader's flight never started")
        second = pool.submit(follower)
        until(lambda: flights.joined == 1 or not len(flights), "the follower never joined the leader's flight")
        calls_in_flight = []            # upstream calls seen while the leader's flight was still open
        deadline = time.monotonic() + 20
        while len(flights) == 1 and time.monotonic() < deadline:   # until the leader's stream breaks
            calls = sim.calls("slow")
            if len(flights) == 1:       # read after the calls: they were all made while the leader answered
                calls_in_flight.append(calls)
            time.sleep(0.02)
        assert first.result() == "broken"
        cache, text = second.result()
    assert flights.joined == 1, "the follower did not wait for the leader"
    assert calls_in_flight and set(calls_in_flight) == {1}, \
        f"the follower called upstream while the leader was still answering: {calls_in_flight[-5:]}"
    assert sim.calls("slow") == 2          # the follower was not handed the broken answer: it asked itself
    assert cache == "miss"
    assert "stream_broken" in text          # ... and the sim broke its stream too (rate 1.0): reported, not hidden


# --------------------------------------------------------------------------------------------
# semantic tier (real encoder + shipped verifier)


def test_semantic_hit_is_verified_and_a_hard_negative_is_refused(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, {"threshold": 0.6}))
    assert ask(gw, "How do I bake sourdough bread at home?").headers["x-sigroute-cache"] == "miss"
    hit = ask(gw, "How can I bake sourdough bread at home?")
    assert hit.headers["x-sigroute-cache"] == "hit-semantic"
    assert float(hit.headers["x-sigroute-cache-similarity"]) > 0.9
    assert ask(gw, "What is the capital of France?").headers["x-sigroute-cache"] == "miss"
    case_only = ask(gw, "what is the capital of france")     # differs in case and "?" only: no verifier needed
    assert case_only.headers["x-sigroute-cache"] == "hit-semantic"
    refused = ask(gw, "What is the capital of Germany?")      # similar, but another question
    assert refused.headers["x-sigroute-cache"] == "miss"
    assert metric(gw, "sigroute_cache_lookups_total", result="rejected") == 1
    assert sim.calls("alpha") == 3


def test_without_the_verifier_the_similarity_threshold_alone_decides(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, {"threshold": 0.6, "verify": False}))
    ask(gw, "What is the capital of France?")
    wrong = ask(gw, "What is the capital of Germany?")
    assert wrong.headers["x-sigroute-cache"] == "hit-semantic"   # why the verifier is on by default


def test_semantic_hits_only_within_the_same_conversation_history(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, {"threshold": 0.8, "verify": False}))
    history = [{"role": "user", "content": "I use a Fritz!Box."}, {"role": "assistant", "content": "Noted."}]
    other = [{"role": "user", "content": "I use a Netgear router."}, {"role": "assistant", "content": "Noted."}]
    q1 = {"role": "user", "content": "How do I reset my router password?"}
    q2 = {"role": "user", "content": "How can I reset the password on my router?"}
    ask(gw, None, messages=history + [q1])
    assert ask(gw, None, messages=other + [q2]).headers["x-sigroute-cache"] == "miss"
    assert ask(gw, None, messages=history + [q2]).headers["x-sigroute-cache"] == "hit-semantic"


def test_load_aware_relaxation_applies_only_while_models_are_saturated(sim, gateway_factory):
    base = {"threshold": 0.995, "verify": False}
    calm = gateway_factory(cached_policy(sim, base))
    ask(calm, "How do I reset my router password?")
    assert ask(calm, "How can I reset the password on my router?").headers["x-sigroute-cache"] == "miss"
    busy = gateway_factory(cached_policy(sim, {**base, "load_aware": {"latency_above_ms": 0.001, "relax": 0.1,
                                                                      "min_threshold": 0.8}}))
    first = ask(busy, "How do I reset my router password?")      # no latency seen yet: not saturated
    assert first.headers["x-sigroute-cache"] == "miss"
    assert metric(busy, "sigroute_cache_relaxed_total") == 0
    hit = ask(busy, "How can I reset the password on my router?")
    assert hit.headers["x-sigroute-cache"] == "hit-semantic"
    assert metric(busy, "sigroute_cache_relaxed_total", decision="default") == 1


def test_per_domain_categories_override_settings(sim, gateway_factory):
    cache = {"mode": "exact", "categories": {"math": {"enabled": False}, "health": {"ttl": "1s"}}}
    gw = gateway_factory(cached_policy(sim, cache))
    math = ask(gw, "Solve for x: 3x + 7 = 22")
    assert math.headers["x-sigroute-cache"] == "category_disabled"
    cooking = ask(gw, "What is the best way to sear a steak in a cast iron pan?")
    assert cooking.headers["x-sigroute-cache-category"].startswith("default/")
    assert ask(gw, "What is the best way to sear a steak in a cast iron pan?").headers["x-sigroute-cache"] == "hit-exact"


# --------------------------------------------------------------------------------------------
# feedback, admin


def test_a_cached_answer_reported_wrong_is_removed(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim))
    ask(gw, "tallest mountain?")
    hit = ask(gw, "tallest mountain?")
    assert hit.headers["x-sigroute-cache"] == "hit-exact"
    r = gw.http.post("/v1/feedback", json={"request_id": hit.headers["x-sigroute-request-id"], "thumbs": "down"})
    assert r.status_code == 200, r.text
    assert r.json()["cache"] == {"category": "default", "false_hit": True, "removed": True}
    assert metric(gw, "sigroute_cache_false_hits_total", category="default") == 1
    assert ask(gw, "tallest mountain?").headers["x-sigroute-cache"] == "miss"
    good = ask(gw, "tallest mountain?")
    r = gw.http.post("/v1/feedback", json={"request_id": good.headers["x-sigroute-request-id"], "thumbs": "up"})
    assert r.json()["cache"]["false_hit"] is False
    assert ask(gw, "tallest mountain?").headers["x-sigroute-cache"] == "hit-exact"


def test_admin_deletes_by_key_decision_and_all_and_needs_the_admin_role(sim, gateway_factory):
    keys = [{"key_env": "ADMIN", "tenant": "ops", "roles": ["admin"]}, {"key_env": "USER", "tenant": "ops"}]
    gw = gateway_factory(cached_policy(sim, auth={"keys": keys}), environ={"ADMIN": "root", "USER": "joe"})
    first = ask(gw, "one", api_key="joe")
    ask(gw, "two", api_key="joe")
    key = first.headers["x-sigroute-cache-key"]
    denied = gw.http.delete(f"/v1/admin/cache/entries/{key}", headers={"authorization": "Bearer joe"})
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "admin_only"
    admin = {"authorization": "Bearer root"}
    assert gw.http.delete(f"/v1/admin/cache/entries/{key}", headers=admin).json()["deleted"] == 1
    missing = gw.http.delete(f"/v1/admin/cache/entries/{key}", headers=admin)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "cache_entry_not_found"
    assert ask(gw, "one", api_key="joe").headers["x-sigroute-cache"] == "miss"
    r = gw.http.delete("/v1/admin/cache", params={"decision": "default"}, headers=admin)
    assert r.json()["deleted"] == 2
    ask(gw, "two", api_key="joe")
    assert gw.http.delete("/v1/admin/cache", headers=admin).json()["deleted"] == "all"
    assert ask(gw, "two", api_key="joe").headers["x-sigroute-cache"] == "miss"


# --------------------------------------------------------------------------------------------
# Redis: shared by two gateways; down


def test_two_gateways_share_the_cache_through_redis(sim, gateway_factory, clean_redis_url):
    policy = cached_policy(sim, {"threshold": 0.8, "verify": False})
    a = gateway_factory(policy, redis_url=clean_redis_url)
    b = gateway_factory(policy, redis_url=clean_redis_url)
    assert ask(a, "How do I reset my router password?").headers["x-sigroute-cache"] == "miss"
    assert ask(b, "How do I reset my router password?").headers["x-sigroute-cache"] == "hit-exact"
    deadline, misses = time.time() + 5, 0
    while True:   # b's index follows a's inserts through the Redis event stream (every 0.25 s)
        r = ask(b, "How can I reset the password on my router?", headers={"cache-control": "no-store"})
        if r.headers["x-sigroute-cache"] == "hit-semantic" or time.time() > deadline:
            break
        misses += 1
        time.sleep(0.2)
    assert r.headers["x-sigroute-cache"] == "hit-semantic"
    assert sim.calls("alpha") == 1 + misses


def test_a_separate_gateway_process_shares_the_cache(sim, gateway_factory, clean_redis_url, tmp_path):
    policy = cached_policy(sim, {"threshold": 0.8, "verify": False})
    here = gateway_factory(policy, redis_url=clean_redis_url)
    there = GatewayProcess(policy, tmp_path, clean_redis_url)
    try:
        with httpx.Client(base_url=there.url, timeout=30) as http:
            def ask_there(content, headers=None):
                r = http.post("/v1/chat/completions", headers=headers or {},
                              json={"model": "auto", "messages": [{"role": "user", "content": content}]})
                assert r.status_code == 200, r.text
                return r.headers["x-sigroute-cache"]

            assert ask(here, "How do I reset my router password?").headers["x-sigroute-cache"] == "miss"
            assert ask_there("How do I reset my router password?") == "hit-exact"
            deadline, misses = time.time() + 10, 0
            while ask_there("How can I reset the password on my router?", {"cache-control": "no-store"}) != "hit-semantic":
                misses += 1
                assert time.time() < deadline, "the other process's index never saw the insert"
                time.sleep(0.2)
            assert ask_there("Which laptop is best for students?") == "miss"     # stored over there ...
            assert ask(here, "Which laptop is best for students?").headers["x-sigroute-cache"] == "hit-exact"
        assert sim.calls("alpha") == 2 + misses
    finally:
        there.stop()


def test_redis_down_serves_every_request_without_the_cache(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    for _ in range(3):
        r = ask(gw, "still answered?")
        assert r.headers["x-sigroute-cache"] == "miss"
    assert sim.calls("alpha") == 3
    assert metric(gw, "sigroute_cache_stores_total", result="failed") >= 1


# --------------------------------------------------------------------------------------------
# policy checks


@pytest.mark.parametrize("cache, message", [
    ({"ttl": "5 parsecs"}, "is not a duration"),
    ({"mode": "fuzzy"}, "exact"),
    ({"threshold": 1.5}, "less than or equal to 1"),
    ({"categories": {"astrology": {"ttl": 5}}}, "domain 'astrology' is neither built in"),
    ({"categories": {"math": {}}, "by_domain": False}, "need by_domain"),
    ({"load_aware": {"relax": 0.05}}, "when is a model saturated"),
    ({"max_entries": 0}, "greater than 0"),
])
def test_bad_cache_settings_are_rejected_with_the_reason(sim, cache, message):
    with pytest.raises(Exception, match=message):
        Policy.model_validate(cached_policy(sim, cache))


def test_explain_shows_how_the_cache_would_treat_the_request(sim, gateway_factory):
    gw = gateway_factory(cached_policy(sim, {"mode": "exact", "ttl": "5m", "max_entries": 7}))
    body = {"model": "auto", "messages": [{"role": "user", "content": "explain me"}]}
    cache = gw.http.post("/v1/route/explain", json=body).json()["winner"]["cache"]
    assert cache["used"] is True and cache["category"] == "default" and cache["mode"] == "exact"
    assert cache["ttl_s"] == 300 and cache["max_entries"] == 7 and cache["semantic"] is False
    assert cache["key"] == ask(gw, "explain me").headers["x-sigroute-cache-key"]
    skipped = gw.http.post("/v1/route/explain", json=body, headers={"x-sigroute-cache": "bypass"}).json()
    assert skipped["winner"]["cache"] == {"used": False, "skipped": "bypass", "category": None}
    assert metric(gw, "sigroute_cache_lookups_total") == 1   # explain looked nothing up


def test_a_bad_cache_setting_in_yaml_names_file_line_and_key():
    from sigroute.policies.loader import PolicyError, load_policy_text

    text = """version: 1
models:
  m: {provider: openai/m, api_base: "http://127.0.0.1:9/v1"}
decisions:
  - name: default
    models: [m]
    cache:
      ttl: 5 parsecs
"""
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "support.yaml")
    message = str(info.value)
    assert "support.yaml:8" in message and "ttl" in message and "is not a duration" in message

