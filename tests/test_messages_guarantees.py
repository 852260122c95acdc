"""The gateway's guarantees hold on the Anthropic Messages surface, streamed and not: cache (and its
tenant isolation), PII mask and restore, jailbreak blocking, the response guard, fallback, the
x-sigroute-* headers, metrics labelled api="messages", feedback by request id (or by the Message's
id) and explain with ?api=messages. The policies are the ones the chat-completions tests use."""

from __future__ import annotations

from typing import Any

import anthropic
import orjson
import pytest

from tests.conftest import base_policy
from tests.test_gateway_cache import cached_policy
from tests.test_gateway_resilience import fallback_policy
from tests.test_learning import learning_policy
from tests.test_plugins import ATTACK, BENIGN, LEAKY, SECRET_PROMPT, metric, with_plugins

STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])


class Answer:
    """A /v1/messages answer, whole or streamed, read the same way."""

    def __init__(self, response):
        self.status = response.status_code
        self.headers = response.headers
        self.body: Any = None
        self.events: list[tuple[str, dict]] = []
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            for block in response.text.split("\n\n"):
                if block.strip():
                    lines = dict(line.split(": ", 1) for line in block.split("\n"))
                    self.events.append((lines["event"], orjson.loads(lines["data"])))
        else:
            self.body = response.json()

    @property
    def text(self) -> str:
        if self.body is not None:
            return "".join(b["text"] for b in self.body["content"] if b["type"] == "text")
        return "".join(d["delta"]["text"] for n, d in self.events
                       if n == "content_block_delta" and d["delta"]["type"] == "text_delta")

    @property
    def message_id(self) -> str:
        return self.body["id"] if self.body is not None else self.events[0][1]["message"]["id"]

    @property
    def model(self) -> str:
        return self.body["model"] if self.body is not None else self.events[0][1]["message"]["model"]

    def well_formed(self) -> bool:
        """Anthropic's event order: message_start, ping, blocks (start, deltas, stop), message_delta, message_stop."""
        if self.body is not None:
            return self.body["type"] == "message"
        names = [n for n, _ in self.events]
        if names[:2] != ["message_start", "ping"] or names[-2:] != ["message_delta", "message_stop"]:
            return False
        open_block = None
        for name, data in self.events[2:-2]:
            if name == "content_block_start":
                if open_block is not None:
                    return False
                open_block = data["index"]
            elif name in ("content_block_delta", "content_block_stop"):
                if data["index"] != open_block:
                    return False
                if name == "content_block_stop":
                    open_block = None
            else:
                return False
        return open_block is None


def ask(gw, content: str | None, *, stream: bool = False, api_key: str | None = None, **body) -> Answer:
    payload = {"model": "auto", "max_tokens": 256, "stream": stream,
               "messages": body.pop("messages", None) or [{"role": "user", "content": content}], **body}
    headers = {"x-api-key": api_key} if api_key else {}
    answer = Answer(gw.http.post("/v1/messages", json=payload, headers=headers))
    assert answer.status == 200, (answer.body, answer.events)
    assert answer.well_formed(), answer.events
    return answer


@STREAMED
def test_cache_hit_is_served_as_a_message(sim, gateway_factory, stream):
    gw = gateway_factory(cached_policy(sim))
    first = ask(gw, "Which planet has the longest day?", stream=stream)
    assert first.headers["x-sigroute-cache"] == "miss"
    second = ask(gw, "Which planet has the longest day?", stream=stream)
    assert second.headers["x-sigroute-cache"] == "hit-exact" and second.text == first.text and second.text
    assert second.message_id == "msg_" + second.headers["x-sigroute-request-id"][4:] != first.message_id
    assert second.model == "alpha" and sim.calls("alpha") == 1
    assert metric(gw, "sigroute_requests_total", api="messages", model="cache") == 1


@STREAMED
def test_cache_never_shares_entries_across_tenants(sim, gateway_factory, stream):
    keys = [{"key_env": "KEY_A", "tenant": "acme"}, {"key_env": "KEY_B", "tenant": "globex"}]
    gw = gateway_factory(cached_policy(sim, auth={"keys": keys}), environ={"KEY_A": "ka", "KEY_B": "kb"})
    assert ask(gw, "Summarize our refund policy", stream=stream, api_key="ka").headers["x-sigroute-cache"] == "miss"
    assert ask(gw, "Summarize our refund policy", stream=stream, api_key="ka").headers["x-sigroute-cache"] == "hit-exact"
    assert ask(gw, "Summarize our refund policy", stream=stream, api_key="kb").headers["x-sigroute-cache"] == "miss"
    assert sim.calls("alpha") == 2


@STREAMED
def test_pii_is_masked_upstream_and_restored_in_the_answer(sim, gateway_factory, stream):
    gw = gateway_factory(with_plugins(sim, [{"pii": {"action": "mask_and_restore"}}]))
    answer = ask(gw, "[[sim:echo]] write to jane.roe@example.org or call +1 415 555 0132 today", stream=stream)
    sent = sim.last_body("alpha")["messages"][-1]["content"]
    assert "jane.roe@example.org" not in sent and "<EMAIL_ADDRESS_1>" in sent and "<PHONE_NUMBER_1>" in sent
    assert "jane.roe@example.org" in answer.text and "+1 415 555 0132" in answer.text
    assert "<EMAIL_ADDRESS_1>" not in answer.text and answer.headers["x-sigroute-plugins"] == "pii:masked(2)"


@STREAMED
def test_jailbreak_is_blocked_with_a_refusal_message(sim, gateway_factory, stream):
    gw = gateway_factory(with_plugins(sim, [{"jailbreak": {"block_above": 0.9, "message": "Not today."}}]))
    answer = ask(gw, ATTACK, stream=stream)
    assert answer.text == "Not today." and answer.model == "sigroute/jailbreak"
    assert answer.headers["x-sigroute-blocked-by"] == "jailbreak"
    assert sim.stats()["total_calls"] == 0
    assert ask(gw, BENIGN, stream=stream).model == "alpha"


@STREAMED
def test_jailbreak_block_as_an_anthropic_error(sim, gateway_factory, stream):
    gw = gateway_factory(with_plugins(sim, [{"jailbreak": {"block_above": 0.9, "response": "error"}}]))
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="auto", max_tokens=64, stream=stream, messages=[{"role": "user", "content": ATTACK}])
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert caught.value.response.headers["x-sigroute-blocked-by"] == "jailbreak"
    assert sim.stats()["total_calls"] == 0


@STREAMED
def test_response_guard_withholds_a_system_prompt_leak(sim, gateway_factory, stream):
    gw = gateway_factory(with_plugins(sim, [{"system_prompt": {"text": SECRET_PROMPT}}, {"response_guard": {}}]))
    answer = ask(gw, LEAKY, stream=stream)
    assert "SPRING-42" not in answer.text and "[withheld]" in answer.text and answer.text.rstrip().endswith("Bye.")
    assert not any("SPRING" in orjson.dumps(d).decode() for _, d in answer.events)
    if not stream:   # (a stream's headers went out before the leak was seen)
        assert answer.headers["x-sigroute-response-guard"] == "leak"


@STREAMED
@pytest.mark.parametrize("fault", ["error_rate", "rate_limit_rate"])
def test_falls_back_to_the_next_candidate(sim, gateway_factory, stream, fault):
    gw = gateway_factory(fallback_policy(sim))
    sim.faults("alpha", **{fault: 1.0})
    answer = ask(gw, "hi", stream=stream)
    assert answer.headers["x-sigroute-model"] == "beta" == answer.model and answer.headers["x-sigroute-attempts"] == "2"
    assert answer.text and sim.calls("alpha") == 1 and sim.calls("beta") == 1


@STREAMED
def test_every_candidate_failing_is_an_anthropic_error(sim, gateway_factory, stream):
    gw = gateway_factory(fallback_policy(sim))
    sim.faults("alpha", error_rate=1.0)
    sim.faults("beta", error_rate=1.0)
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client.messages.create(model="auto", max_tokens=64, stream=stream, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 502 and caught.value.body["error"]["type"] == "api_error"


@STREAMED
def test_rate_limit_is_an_anthropic_429_with_retry_after(sim, gateway_factory, stream):
    gw = gateway_factory(base_policy(sim, server={"rate_limit": {"requests_per_minute": 1},
                                                  "open_without_auth": ["admin", "explain"]}))
    ask(gw, "hi", stream=stream)
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    with pytest.raises(anthropic.RateLimitError) as caught:
        client.messages.create(model="auto", max_tokens=64, stream=stream, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["error"]["type"] == "rate_limit_error" and int(caught.value.response.headers["retry-after"]) >= 1


@STREAMED
def test_sigroute_headers_and_metrics_labelled_messages(sim, gateway_factory, stream):
    gw = gateway_factory(base_policy(sim))
    answer = ask(gw, "hi", stream=stream)
    headers = answer.headers
    assert headers["x-sigroute-decision"] == "default" and headers["x-sigroute-model"] == "alpha"
    assert float(headers["x-sigroute-overhead-ms"]) >= 0 and "x-sigroute-upstream-ms" in headers
    assert answer.message_id == "msg_" + headers["x-sigroute-request-id"][4:]
    assert metric(gw, "sigroute_requests_total", api="messages", model="alpha", status="200") == 1
    assert metric(gw, "sigroute_requests_total", api="chat.completions") == 0
    gw.chat("hi")
    assert metric(gw, "sigroute_requests_total", api="chat.completions", model="alpha") == 1


@STREAMED
def test_feedback_by_request_id_or_message_id(sim, gateway_factory, stream):
    gw = gateway_factory(learning_policy(sim))
    by_header = ask(gw, "what is 2 + 2?", stream=stream)
    r = gw.http.post("/v1/feedback", json={"request_id": by_header.headers["x-sigroute-request-id"], "thumbs": "up"})
    assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    by_message = ask(gw, "what is 3 + 3?", stream=stream)
    r = gw.http.post("/v1/feedback", json={"request_id": by_message.message_id, "score": 0.5})
    assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    assert gw.http.post("/v1/feedback", json={"request_id": "msg_never_seen", "score": 1}).status_code == 404


def test_explain_reads_a_messages_body(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[
        {"name": "tools", "rules": "keyword:weather", "models": ["beta"]},
        {"name": "default", "models": ["alpha"]}], signals={"keyword": {"weather": {"any": ["weather"]}}}))
    body = {"model": "auto", "max_tokens": 10, "system": [{"type": "text", "text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "the weather in Paris?"}]}]}
    explained = gw.http.post("/v1/route/explain?api=messages", json=body)
    assert explained.status_code == 200 and explained.json()["api"] == "messages"
    assert explained.json()["winner"]["decision"] == "tools"
    assert ask(gw, None, messages=body["messages"], system=body["system"]).headers["x-sigroute-decision"] == "tools"
    bad = gw.http.post("/v1/route/explain?api=messages", json={"model": "auto", "messages": body["messages"]})
    assert bad.status_code == 400 and "max_tokens" in bad.text
    unknown = gw.http.post("/v1/route/explain?api=nope", json=body)
    assert unknown.status_code == 400 and "messages" in unknown.json()["error"]["message"]
