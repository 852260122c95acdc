"""The pipeline's guarantees on the Responses surface, each streamed and not: the cache (hits, tenant
isolation), PII masked upstream and restored in the answer, jailbreak blocking, the response guard,
fallback, the x-sigroute-* headers, metrics labelled api="responses", feedback by request id, and
explain with ?api=responses. The policies are those of the chat tests (tests/test_plugins.py,
tests/test_gateway_cache.py, tests/test_gateway_resilience.py, tests/test_learning.py)."""

from __future__ import annotations

import hashlib

import openai
import pytest

from tests.conftest import base_policy
from tests.test_gateway_cache import cached_policy
from tests.test_gateway_resilience import fallback_policy
from tests.test_learning import learning_policy
from tests.test_plugins import ATTACK, LEAKY, SECRET_PROMPT, metric, with_plugins

STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])


def create(gw, stream: bool, api_key: str = "unused", **body):
    """(headers, the final Response, the stream's events or None) of one Responses request."""
    client = gw.client(api_key)
    body.setdefault("model", "auto")
    if not stream:
        raw = client.responses.with_raw_response.create(**body)
        return raw.headers, raw.parse(), None
    raw = client.responses.with_raw_response.create(stream=True, **body)
    events = list(raw.parse())
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    return raw.headers, events[-1].response, events


def deltas(events) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# --------------------------------------------------------------------------------------------
# cache

@STREAMED
def test_a_repeat_is_a_cache_hit_and_is_stored(sim, gateway_factory, stream):
    gw = gateway_factory(cached_policy(sim))
    first_headers, first, _ = create(gw, stream, input="Which planet has the longest day?")
    assert first_headers["x-sigroute-cache"] == "miss"
    headers, hit, events = create(gw, stream, input="Which planet has the longest day?")
    assert headers["x-sigroute-cache"] == "hit-exact" and headers["x-sigroute-model"] == "alpha"
    assert hit.output_text == first.output_text and hit.id != first.id
    if stream:
        assert deltas(events) == hit.output_text
    assert sim.calls("alpha") == 1
    client = gw.client()
    assert client.responses.retrieve(hit.id).output_text == hit.output_text   # a cached answer is stored too
    client.responses.create(model="auto", input="and then?", previous_response_id=hit.id)
    assert sim.last_body("alpha")["messages"][1] == {"role": "assistant", "content": hit.output_text}


def test_a_responses_request_and_the_same_chat_request_share_the_cache(sim, gateway_factory):
    """One internal form: a Responses request is the chat request with the same messages."""
    gw = gateway_factory(cached_policy(sim))
    chat = gw.chat("Name the longest river.", messages=[{"role": "system", "content": "Be exact."},
                                                        {"role": "user", "content": "Name the longest river."}])
    headers, response, _ = create(gw, False, input="Name the longest river.", instructions="Be exact.")
    assert headers["x-sigroute-cache"] == "hit-exact"
    assert response.output_text == chat.json()["choices"][0]["message"]["content"]


@STREAMED
def test_tenants_never_share_cached_answers(sim, gateway_factory, stream):
    keys = [{"key_sha256": hashlib.sha256(k.encode()).hexdigest(), "tenant": t} for k, t in (("ka", "acme"),
                                                                                           ("kb", "globex"))]
    gw = gateway_factory(cached_policy(sim, auth={"keys": keys}))
    question = "Summarize our refund policy"
    assert create(gw, stream, "ka", input=question)[0]["x-sigroute-cache"] == "miss"
    assert create(gw, stream, "ka", input=question)[0]["x-sigroute-cache"] == "hit-exact"
    assert create(gw, stream, "kb", input=question)[0]["x-sigroute-cache"] == "miss"
    assert sim.calls("alpha") == 2


# --------------------------------------------------------------------------------------------
# plugins

@STREAMED
def test_pii_is_masked_upstream_and_restored_in_the_answer(sim, gateway_factory, stream):
    gw = gateway_factory(with_plugins(sim, [{"pii": {"action": "mask_and_restore"}}]))
    said = "[[sim:echo]] write to jane.roe@example.org or call +1 415 555 0132 today"
    headers, response, events = create(gw, stream, input=said)
    sent = sim.last_body("alpha")["messages"][-1]["content"]
    assert "jane.roe@example.org" not in sent and "<EMAIL_ADDRESS_1>" in sent and "<PHONE_NUMBER_1>" in sent
    assert "jane.roe@example.org" in response.output_text and "+1 415 555 0132" in response.output_text
    assert "<EMAIL_ADDRESS_1>" not in response.output_text
    if stream:
        assert deltas(events) == response.output_text and "<EMAIL" not in deltas(events)
    assert headers["x-sigroute-plugins"] == "pii:masked(2)"
    # the stored conversation is the caller's own; the next turn is masked again on its way upstream
    gw.client().responses.create(model="auto", input="[[sim:echo]] thanks", previous_response_id=response.id)
    history = str(sim.last_body("alpha")["messages"])
    assert "jane.roe@example.org" not in history and "<EMAIL_ADDRESS_1>" in history
    assert "jane.roe" not in gw.http.get("/metrics").text


@STREAMED
def test_jailbreak_is_blocked_without_calling_a_model(sim, gateway_factory, stream):
    gw = gateway_factory(with_plugins(sim, [{"jailbreak": {"block_above": 0.9, "message": "Not today."}}]))
    headers, response, _ = create(gw, stream, input=ATTACK)
    assert response.output_text == "Not today." and response.model == "sigroute/jailbreak"
    assert headers["x-sigroute-blocked-by"] == "jailbreak" and headers["x-sigroute-plugins"] == "jailbreak:block"
    assert sim.stats()["total_calls"] == 0
    strict = gateway_factory(with_plugins(sim, [{"jailbreak": {"block_above": 0.9, "response": "error"}}]))
    with pytest.raises(openai.BadRequestError) as err:
        create(strict, stream, input=[{"role": "user", "content": ATTACK}])
    assert err.value.body["code"] == "jailbreak_detected"
    assert sim.stats()["total_calls"] == 0


@STREAMED
def test_response_guard_withholds_a_system_prompt_leak(sim, gateway_factory, stream):
    gw = gateway_factory(with_plugins(sim, [{"system_prompt": {"text": SECRET_PROMPT}}, {"response_guard": {}}]))
    headers, response, events = create(gw, stream, input=LEAKY)
    assert "SPRING-42" not in response.output_text and "[withheld]" in response.output_text
    assert response.output_text.rstrip().endswith("Bye.")
    if stream:
        assert not any("SPRING" in e.delta for e in events if e.type == "response.output_text.delta")
    else:
        assert headers["x-sigroute-response-guard"] == "leak"


# --------------------------------------------------------------------------------------------
# fallback, headers, metrics

@STREAMED
def test_falls_back_when_the_first_candidate_fails(sim, gateway_factory, stream):
    gw = gateway_factory(fallback_policy(sim))
    sim.faults("alpha", error_rate=1.0)
    headers, response, _ = create(gw, stream, input="hi")
    assert headers["x-sigroute-model"] == "beta" and headers["x-sigroute-attempts"] == "2"
    assert response.model == "beta" and response.output_text and response.status == "completed"
    assert sim.calls("alpha") == 1 and sim.calls("beta") == 1


def test_every_candidate_failing_is_an_openai_shaped_502(sim, gateway_factory):
    gw = gateway_factory(fallback_policy(sim))
    sim.faults("alpha", error_rate=1.0)
    sim.faults("beta", error_rate=1.0)
    r = gw.http.post("/v1/responses", json={"model": "auto", "input": "hi"})
    assert r.status_code == 502 and set(r.json()["error"]) == {"message", "type", "param", "code"}


@STREAMED
def test_headers_and_metrics_name_the_responses_api(sim, gateway_factory, stream):
    gw = gateway_factory(base_policy(sim))
    headers, response, _ = create(gw, stream, input="label me")
    assert response.id == "resp_" + headers["x-sigroute-request-id"].removeprefix("req_")
    assert headers["x-sigroute-decision"] == "default" and headers["x-sigroute-model"] == "alpha"
    assert float(headers["x-sigroute-confidence"]) >= 0 and float(headers["x-sigroute-overhead-ms"]) >= 0
    assert metric(gw, "sigroute_requests_total", api="responses", decision="default", model="alpha",
                  status="200") == 1
    assert metric(gw, "sigroute_requests_total", api="chat.completions") == 0
    gw.chat("and a chat one")
    assert metric(gw, "sigroute_requests_total", api="chat.completions") == 1
    with pytest.raises(openai.BadRequestError):
        create(gw, stream, input="x", tools=[{"type": "web_search"}])
    assert metric(gw, "sigroute_errors_total", status="400") == 1


# --------------------------------------------------------------------------------------------
# learning, explain

@STREAMED
def test_feedback_by_request_id_reaches_the_learner(sim, gateway_factory, stream):
    gw = gateway_factory(learning_policy(sim))
    headers, _, _ = create(gw, stream, input="what is 2 + 2?")
    answer = gw.http.post("/v1/feedback", json={"request_id": headers["x-sigroute-request-id"], "thumbs": "up"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "recorded" and answer.json()["learned"] is True
    _, response, _ = create(gw, stream, input="what is 3 + 3?")   # the response id names the request too
    by_response_id = gw.http.post("/v1/feedback", json={"request_id": response.id, "thumbs": "down"})
    assert by_response_id.status_code == 200, by_response_id.text
    assert by_response_id.json()["request_id"] == "req_" + response.id.removeprefix("resp_")
    assert by_response_id.json()["status"] == "recorded"


def test_explain_reads_a_responses_body_with_its_stored_history(sim, gateway_factory):
    policy = base_policy(sim, signals={"keyword": {"urgent": {"any": ["urgent"], "scope": "user"}}},
                         decisions=[{"name": "urgent", "priority": 10, "rules": "keyword:urgent", "models": ["beta"]},
                                    {"name": "default", "models": ["alpha"]}])
    gw = gateway_factory(policy)
    first = gw.client().responses.create(model="auto", input="this is urgent")
    assert sim.calls("beta") == 1
    explained = gw.http.post("/v1/route/explain?api=responses",
                             json={"model": "auto", "input": "no rush", "previous_response_id": first.id})
    assert explained.status_code == 200, explained.text
    body = explained.json()
    assert body["api"] == "responses" and body["winner"]["decision"] == "urgent"   # the history says urgent
    alone = gw.http.post("/v1/route/explain?api=responses", json={"model": "auto", "input": "no rush"}).json()
    assert alone["winner"]["decision"] == "default" and alone["prompt_tokens"] < body["prompt_tokens"]
    bad = gw.http.post("/v1/route/explain?api=responses", json={"model": "auto", "messages": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"
    assert sim.calls("alpha") == 0   # explain calls no model
