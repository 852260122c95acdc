"""The Python SDK (`gateway.client`) against the real gateway and the simulated upstream on loopback.

A few wire situations the gateway never produces on purpose (a stream cut without an error event, a
404 with a code on /v1/feedback, a non-JSON error page) are served by a tiny scripted ASGI server,
also over real HTTP.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
import sys
import time
from typing import Any

import httpx
import pytest

from sigroute.gateway.client import (APIConnectionError, AsyncClient, AuthenticationError, BadRequest,
                            Explanation, FeedbackNotSupported, NotFound, RateLimited, RoutedCompletion,
                            Client, SigrouteError, SignalVerdict, StreamBroken, Unavailable,
                            UpstreamError)
from sigroute.gateway.serving import ServerThread
from tests.conftest import base_policy, free_port

KEY = "sk-client-test-key"
ECHO = "[[sim:echo]] repeat exactly this, word for word"


def keyword_policy(sim, **overrides):
    return base_policy(sim,
                       signals={"keyword": {"code": {"any": ["python", "stack trace"]}, "unused": {"any": ["zebra"]}}},
                       decisions=[{"name": "coding", "rules": "keyword:code", "models": ["beta", "gamma"],
                                   "algorithm": "cheapest"},
                                  {"name": "default", "models": ["alpha"]}],
                       **overrides)


def auth_policy(sim, **key_options):
    entry = {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "tenant": "acme"}
    entry.update(key_options)
    return base_policy(sim, auth={"keys": [entry]})


def only_alpha_policy(sim, cooldown_s: float):
    policy = base_policy(sim, upstream={"retries": 0, "backoff_s": 0.0,
                                        "breaker": {"failure_threshold": 1, "cooldown_s": cooldown_s}})
    policy["models"] = {"alpha": policy["models"]["alpha"]}
    return policy


class CountingTransport(httpx.HTTPTransport):
    """The real HTTP transport, counting the requests the client actually sends."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return super().handle_request(request)


def counting_client(url: str, **options: Any) -> tuple[Client, CountingTransport]:
    transport = CountingTransport()
    return Client(url, http_client=httpx.Client(transport=transport), **options), transport


class Scripted:
    """A minimal HTTP server answering each request with the next scripted response."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], list[bytes]]] = []
        self.requests: list[tuple[str, str, bytes]] = []
        self.server = ServerThread(self._app, lifespan="off", interface="asgi3")

    def answer(self, status: int, body: Any = b"", headers: dict[str, str] | None = None,
               chunks: list[bytes] | None = None) -> "Scripted":
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
        self.script.append((status, {"content-type": "application/json", **(headers or {})}, chunks or [body]))
        return self

    async def _app(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.requests.append((scope["method"], scope["path"], body))
        status, headers, chunks = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]})
        for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


@pytest.fixture
def scripted():
    handle = Scripted()
    handle.server.start()
    yield handle
    handle.server.stop()


# chat and routing ----------------------------------------------------------------------------------

def test_chat_returns_text_and_routing(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    with Client(gw.url) as client:
        answer = client.chat("Why does my Python loop never end?")
    assert isinstance(answer, RoutedCompletion)
    routing = answer.routing
    assert (routing.decision, routing.model) == ("coding", "beta")
    assert routing.request_id.startswith("req_")
    assert routing.confidence == 1.0
    assert routing.overhead_ms is not None and routing.overhead_ms >= 0
    assert routing.attempts == 1 and not routing.fell_back
    assert routing.signals is None  # only with debug=True
    assert answer.model == "beta" == answer.raw["model"]
    assert answer.text and answer.text == answer.raw["choices"][0]["message"]["content"]
    assert answer.choices == answer.raw["choices"] and answer.finish_reason == "stop"
    assert answer.usage["completion_tokens"] == 8
    # a str is sent as exactly one user message
    assert sim.last_body("beta")["messages"] == [{"role": "user", "content": "Why does my Python loop never end?"}]
    assert sim.calls("beta") == 1 and sim.calls("alpha") == 0


def test_routing_reports_cache_and_plugins(sim, gateway_factory):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha"], "cache": {"mode": "exact"},
                                          "plugins": [{"params": {"max_tokens": 32}}]}])
    gw = gateway_factory(policy)
    with Client(gw.url) as client:
        first = client.chat("cache me")
        second = client.chat("cache me")
    assert first.routing.cache == "miss" and not first.routing.cached
    assert second.routing.cache == "hit-exact" and second.routing.cached and second.text == first.text
    assert first.routing.plugins == ("params:changed(capped max_tokens)",)
    assert first.routing.blocked_by is None and first.routing.cache_similarity is None
    blocked = base_policy(sim, decisions=[{"name": "default", "models": ["alpha"],
                                           "plugins": [{"fast_response": {"message": "closed"}}]}])
    with Client(gateway_factory(blocked).url) as client:
        answer = client.chat("anyone there?")
    assert answer.text == "closed" and answer.routing.blocked_by == "fast_response"
    assert answer.routing.cache is None


def test_chat_messages_params_and_v1_base_url(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello there"}]
    with Client(gw.url + "/v1/") as client:  # the OpenAI-style base URL is accepted too
        answer = client.chat(messages, temperature=0, max_tokens=5, metadata={"team": "qa"})
        assert (answer.routing.decision, answer.routing.model) == ("default", "alpha")
        sent = sim.last_body("alpha")
        assert sent["messages"] == messages and sent["temperature"] == 0 and sent["max_tokens"] == 5
        assert "stream" not in sent or sent["stream"] is False
        # a concrete model bypasses routing
        direct = client.chat("hello", model="gamma")
        assert (direct.routing.decision, direct.routing.model) == ("direct", "gamma")
        with pytest.raises(ValueError, match="stream"):
            client.chat("hello", stream=True)


def test_default_model_is_used(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    with Client(gw.url, default_model="gamma") as client:
        assert client.chat("python").routing.model == "gamma"


def test_debug_fills_signals(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    with Client(gw.url) as client:
        answer = client.chat("my python script", debug=True)
        assert answer.routing.signals is not None
        assert answer.routing.signals["keyword:code"] == SignalVerdict(True, 1.0)
        assert answer.routing.signals["keyword:code"].matched is True
        assert client.chat("hello", debug=True).routing.signals["keyword:code"].matched is False


def test_fallback_is_reported_in_attempts(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}]))
    sim.faults("alpha", error_rate=1.0)
    with Client(gw.url) as client:
        answer = client.chat("hi")
    assert answer.routing.model == "beta"
    assert answer.routing.attempts == 2 and answer.routing.fell_back


# streaming ---------------------------------------------------------------------------------------

def test_stream_text_equals_whole_text(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    with Client(gw.url) as client:
        whole = client.chat(ECHO)
        with client.stream(ECHO, stream_options={"include_usage": True}) as stream:
            # routing comes from the headers, before the first chunk is read
            assert (stream.routing.decision, stream.routing.model) == ("default", "alpha")
            assert stream.routing.request_id.startswith("req_")
            assert stream.routing.request_id != whole.routing.request_id
            first = next(stream)
            assert isinstance(first, dict) and first["choices"][0]["delta"]["role"] == "assistant"
            text = stream.text()  # includes what was already iterated
            assert stream.done and stream.finish_reason == "stop"
            assert stream.usage["completion_tokens"] > 0
    assert "repeat exactly this, word for word" in whole.text
    assert text == whole.text
    assert sim.last_body("alpha")["stream"] is True


def test_stream_chunks_are_openai_chunks(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    with Client(gw.url) as client:
        chunks = list(client.stream("stream please"))
    assert all(c["model"] == "alpha" and c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert len(text.split()) == 8


def test_stream_broken_midway_raises(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]))
    sim.faults("slow", break_stream_rate=1.0)
    received = []
    with Client(gw.url) as client:
        stream = client.stream("tell me a story")
        assert stream.routing.model == "slow"
        with pytest.raises(StreamBroken) as err:
            for chunk in stream:
                received.append(chunk)
    assert received, "some chunks arrive before the break"
    assert isinstance(err.value, SigrouteError)
    assert err.value.code == "stream_broken"
    assert "mid-stream" in err.value.message
    assert err.value.request_id == stream.routing.request_id
    assert err.value.chunks == len(received)
    assert err.value.partial_text == "".join(c["choices"][0]["delta"].get("content") or ""
                                             for c in received if c["choices"])
    assert not stream.done


def test_stream_broken_text_raises(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]))
    sim.faults("slow", break_stream_rate=1.0)
    with Client(gw.url) as client, pytest.raises(StreamBroken):
        client.stream("tell me a story").text()


def test_stream_without_done_raises(scripted):
    chunk = {"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
    scripted.answer(200, headers={"content-type": "text/event-stream", "x-sigroute-model": "m"},
                    chunks=[b"data: " + json.dumps(chunk).encode() + b"\n\n"])
    with Client(scripted.server.url) as client:
        stream = client.stream("hi")
        assert stream.routing.model == "m"
        with pytest.raises(StreamBroken) as err:
            stream.text()
    assert err.value.code == "stream_incomplete"
    assert "without [DONE]" in err.value.message
    assert err.value.partial_text == "Hel" and err.value.chunks == 1


def test_stream_errors_before_first_chunk_raise_from_stream(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    with Client(gw.url) as client, pytest.raises(NotFound) as err:
        client.stream("hi", model="no-such-model")
    assert err.value.code == "model_not_found"


# explain, models, health ---------------------------------------------------------------------------

def test_explain(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    with Client(gw.url) as client:
        why = client.explain("Why does my Python loop never end?")
        direct = client.explain("hi", model="gamma")
    assert isinstance(why, Explanation)
    assert why.decision == "coding" and why.model == "beta"  # cheapest of beta, gamma
    assert why.entrypoint == "auto" and not why.direct
    assert why.confidence == 1.0
    assert why.candidates == ["beta", "gamma"] and why.selection_error is None
    assert why.matched_signals == ["keyword:code"]
    assert why.signals["keyword:code"]["matched"] is True
    assert why.signals["keyword:unused"]["used_by_rules"] is False
    verdicts = {d["decision"]: d["matched"] for d in why.decisions}
    assert verdicts["coding"] is True
    assert why.raw["winner"]["decision"] == "coding"
    assert why.prompt_tokens > 0
    assert direct.direct and direct.decision == "direct" and direct.model == "gamma"
    assert sim.stats()["total_calls"] == 0  # explaining never calls a model


def test_models_health_ready(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    with Client(gw.url) as client:
        models = client.models()
        assert client.health() == {"status": "ok"}
        ready = client.ready()
    kinds = {m["id"]: m["sigroute"]["kind"] for m in models}
    assert kinds["auto"] == "entrypoint"
    assert kinds["alpha"] == "model" and kinds["gamma"] == "model"
    assert ready["status"] == "ready" and ready["models"]["alpha"] == "closed"


# errors and retries --------------------------------------------------------------------------------

def test_authentication_errors(sim, gateway_factory):
    gw = gateway_factory(auth_policy(sim))
    client, transport = counting_client(gw.url, max_retries=2)
    with client:
        with pytest.raises(AuthenticationError) as err:
            client.chat("hi")
        assert err.value.status == 401 and err.value.code == "missing_api_key"
        assert err.value.type == "authentication_error"
        assert transport.calls == 1  # a 401 is never retried
    with Client(gw.url, api_key="sk-wrong") as wrong, pytest.raises(AuthenticationError) as err:
        wrong.models()
    assert err.value.code == "invalid_api_key"
    with Client(gw.url, api_key=KEY) as good:
        assert good.chat("hi").routing.model == "alpha"
        assert any(m["id"] == "auto" for m in good.models())
    assert sim.calls("alpha") == 1


def test_not_found_and_bad_request_are_not_retried(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    client, transport = counting_client(gw.url, max_retries=3)
    with client:
        with pytest.raises(NotFound) as err:
            client.chat("hi", model="no-such-model")
        assert (err.value.status, err.value.code, err.value.param) == (404, "model_not_found", "model")
        assert "auto" in err.value.message  # the gateway says what to use instead
        with pytest.raises(BadRequest) as err:
            client.chat([{"role": "robot", "content": "x"}])
        assert (err.value.status, err.value.param) == (400, "messages[0].role")
    assert transport.calls == 2
    assert sim.stats()["total_calls"] == 0


def rate_limited_gateway(sim, gateway_factory, monkeypatch):
    """A gateway whose rate limiter runs on a ManualClock, and SDK clients whose retry sleeps
    advance that clock instead of waiting: the bucket refills exactly by what the client slept,
    whatever the machine's load. Returns the gateway, the clock and the list of the sleeps."""
    from types import SimpleNamespace

    from sigroute.gateway import client as client_module
    from sigroute.gateway.ratelimit import MemoryRateLimitStore, RateLimiter
    from tests.conftest import ManualClock

    clock = ManualClock()
    gw = gateway_factory(auth_policy(sim, rate_limit={"requests_per_minute": 60, "burst": 1}),
                         rate_limiter=RateLimiter(MemoryRateLimitStore(clock=clock)))
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    async def async_sleep(seconds: float) -> None:
        sleep(seconds)

    monkeypatch.setattr(client_module, "time", SimpleNamespace(sleep=sleep, time=time.time))
    monkeypatch.setattr(client_module, "asyncio", SimpleNamespace(sleep=async_sleep))
    return gw, clock, slept


def test_rate_limited_and_retry_after(sim, gateway_factory, monkeypatch):
    gw, clock, slept = rate_limited_gateway(sim, gateway_factory, monkeypatch)
    # no retries: the 429 surfaces with its retry-after
    with Client(gw.url, api_key=KEY, max_retries=0) as client:
        client.chat("1")
        with pytest.raises(RateLimited) as err:
            client.chat("2")
    assert err.value.status == 429 and err.value.code == "rate_limit_exceeded"
    assert err.value.retry_after == 1.0
    # retries allowed but the wait exceeds the cap: raised at once, without sleeping
    client, transport = counting_client(gw.url, api_key=KEY, max_retries=2, max_retry_wait=0.5)
    with client:
        with pytest.raises(RateLimited):
            client.chat("3")
        assert slept == [] and transport.calls == 1
    # retries allowed within the cap: the client waits retry-after and succeeds
    clock.advance(1.0)  # refill the bucket
    client, transport = counting_client(gw.url, api_key=KEY, max_retries=2)
    with client:
        client.chat("4")
        answer = client.chat("5")
    assert answer.routing.model == "alpha"
    assert transport.calls == 3  # "4", "5" rate limited, "5" again
    assert slept == [1.0]        # it waited exactly the retry-after
    assert sim.calls("alpha") == 3  # "1", "4", "5": rejected requests never reach a model


def test_all_failing_is_upstream_error_and_not_retried(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}]))
    sim.faults("alpha", error_rate=1.0)
    sim.faults("beta", error_rate=1.0)
    client, transport = counting_client(gw.url, max_retries=3)
    with client, pytest.raises(UpstreamError) as err:
        client.chat("hi")
    assert err.value.status == 502 and err.value.code == "upstream_failed"
    assert "alpha" in err.value.message and "beta" in err.value.message
    assert transport.calls == 1
    assert sim.calls("alpha") == 1 and sim.calls("beta") == 1


def test_unavailable_retry_after_too_long_is_raised(sim, gateway_factory):
    gw = gateway_factory(only_alpha_policy(sim, cooldown_s=30))
    sim.faults("alpha", error_rate=1.0)
    client, transport = counting_client(gw.url, max_retries=2, max_retry_wait=5)
    with client:
        with pytest.raises(UpstreamError):
            client.chat("hi")  # opens alpha's circuit
        with pytest.raises(Unavailable) as err:
            client.chat("hi")
        assert err.value.status == 503 and err.value.code == "all_circuits_open"
        assert err.value.retry_after >= 20
        assert transport.calls == 2
        ready = client.ready()  # a probe gets the report, not an exception
    assert ready["status"] == "unavailable" and ready["models"]["alpha"] == "open"


def test_unavailable_is_retried_after_retry_after(sim, gateway_factory):
    gw = gateway_factory(only_alpha_policy(sim, cooldown_s=1))
    sim.faults("alpha", error_rate=1.0)
    client, transport = counting_client(gw.url, max_retries=2, max_retry_wait=5)
    with client:
        with pytest.raises(UpstreamError):
            client.chat("hi")
        sim.faults("alpha")  # alpha recovers; its circuit stays open for the cooldown
        answer = client.chat("hi")
    assert answer.routing.model == "alpha"
    assert transport.calls == 3  # 502, then 503 with retry-after 1, then the trial call succeeds


def test_503_without_retry_after_backs_off(scripted):
    error = {"error": {"message": "busy", "type": "service_unavailable", "param": None, "code": "busy"}}
    completion = {"id": "x", "object": "chat.completion", "model": "m",
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}]}
    scripted.answer(503, error).answer(503, error).answer(200, completion, headers={"x-sigroute-model": "m"})
    with Client(scripted.server.url, max_retries=2, backoff_s=0.01) as client:
        answer = client.chat("hi")
    assert answer.text == "ok" and answer.routing.model == "m"
    assert len(scripted.requests) == 3


def test_retries_are_bounded(scripted):
    error = {"error": {"message": "slow down", "type": "rate_limit_error", "param": None, "code": "x"}}
    scripted.answer(429, error, headers={"retry-after": "0"})
    with Client(scripted.server.url, max_retries=2) as client, pytest.raises(RateLimited):
        client.chat("hi")
    assert len(scripted.requests) == 3


def test_non_openai_error_body(scripted):
    scripted.answer(500, b"<html>oops</html>", headers={"content-type": "text/html"})
    with Client(scripted.server.url) as client, pytest.raises(SigrouteError) as err:
        client.chat("hi")
    assert type(err.value) is SigrouteError
    assert err.value.status == 500 and "oops" in err.value.message
    assert len(scripted.requests) == 1  # a 500 is not retried


def test_connection_refused_is_retried_then_raised():
    client, transport = counting_client(f"http://127.0.0.1:{free_port()}", max_retries=2, backoff_s=0.01)
    with client, pytest.raises(APIConnectionError) as err:
        client.health()
    assert err.value.sent is False and err.value.status is None
    assert transport.calls == 3


# feedback --------------------------------------------------------------------------------------------

def test_feedback_for_an_answer_no_learning_decision_routed_is_a_clear_404(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))  # static selection: nothing waits for feedback
    with Client(gw.url) as client:
        request_id = client.chat("hi").routing.request_id
        with pytest.raises(NotFound) as err:
            client.feedback(request_id, thumbs=True)
        assert not isinstance(err.value, FeedbackNotSupported)  # the endpoint exists; the id is not waiting
        assert err.value.status == 404 and err.value.code == "unknown_request_id"
        assert request_id in str(err.value) and "learning decision" in str(err.value)
        with pytest.raises(ValueError):
            client.feedback(request_id)  # nothing to report
        with pytest.raises(ValueError):
            client.feedback(request_id, thumbs="sideways")


def test_feedback_raises_when_the_gateway_has_no_endpoint(scripted):
    scripted.answer(404, {"detail": "Not Found"})  # what an older gateway's router says
    with Client(scripted.server.url) as client:
        with pytest.raises(FeedbackNotSupported) as err:
            client.feedback("req_1", thumbs=True)
        assert isinstance(err.value, NotFound) and isinstance(err.value, SigrouteError)
        assert err.value.status == 404 and err.value.code == "feedback_not_supported"
        assert "no feedback endpoint" in str(err.value) and "NOT recorded" in str(err.value)


def test_feedback_wire_shape_and_other_404s(scripted):
    scripted.answer(200, {"status": "recorded"})
    with Client(scripted.server.url) as client:
        assert client.feedback("req_1", score=0.5, thumbs=False, label="wrong") == {"status": "recorded"}
        method, path, body = scripted.requests[-1]
        assert (method, path) == ("POST", "/v1/feedback")
        assert json.loads(body) == {"request_id": "req_1", "score": 0.5, "thumbs": "down", "label": "wrong"}
        scripted.script[:] = []
        scripted.answer(404, {"error": {"message": "no answer with id req_2", "type": "not_found_error",
                                        "param": "request_id", "code": "request_not_found"}})
        with pytest.raises(NotFound) as err:
            client.feedback("req_2", score=1)
    assert not isinstance(err.value, FeedbackNotSupported)
    assert err.value.code == "request_not_found"


# async -------------------------------------------------------------------------------------------

async def test_async_chat_debug_and_explain(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    async with AsyncClient(gw.url) as client:
        answer = await client.chat("Why does my Python loop never end?", debug=True)
        why = await client.explain("Why does my Python loop never end?")
        models = await client.models()
        health = await client.health()
        ready = await client.ready()
    assert (answer.routing.decision, answer.routing.model) == ("coding", "beta")
    assert answer.routing.signals["keyword:code"] == SignalVerdict(True, 1.0)
    assert answer.text and answer.routing.request_id.startswith("req_")
    assert why.decision == "coding" and why.model == "beta"
    assert {"auto", "alpha"} <= {m["id"] for m in models}
    assert health == {"status": "ok"} and ready["status"] == "ready"


async def test_async_stream_equals_whole(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    async with AsyncClient(gw.url) as client:
        whole = await client.chat(ECHO)
        async with await client.stream(ECHO) as stream:
            assert stream.routing.model == "alpha" and stream.routing.decision == "default"
            chunks = [chunk async for chunk in stream]
        assert stream.done
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == whole.text
        again = await client.stream(ECHO)
        assert await again.text() == whole.text


async def test_async_stream_broken(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]))
    sim.faults("slow", break_stream_rate=1.0)
    async with AsyncClient(gw.url) as client:
        stream = await client.stream("tell me a story")
        received = []
        with pytest.raises(StreamBroken) as err:
            async for chunk in stream:
                received.append(chunk)
    assert received and err.value.code == "stream_broken"
    assert err.value.partial_text


async def test_async_errors_and_retry(sim, gateway_factory, monkeypatch):
    gw, clock, slept = rate_limited_gateway(sim, gateway_factory, monkeypatch)
    async with AsyncClient(gw.url) as anonymous:
        with pytest.raises(AuthenticationError):
            await anonymous.chat("hi")
    async with AsyncClient(gw.url, api_key=KEY, max_retries=0) as client:
        await client.chat("1")
        with pytest.raises(RateLimited) as err:
            await client.chat("2")
        assert err.value.retry_after == 1.0
    async with AsyncClient(gw.url, api_key=KEY, max_retries=1) as patient:
        answer = await patient.chat("3")
        assert slept == [1.0]  # it waited for the bucket
    assert answer.routing.model == "alpha"
    assert sim.calls("alpha") == 2


async def test_async_upstream_error_and_feedback(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    sim.faults("alpha", error_rate=1.0)
    async with AsyncClient(gw.url, max_retries=2) as client:
        with pytest.raises(UpstreamError) as err:
            await client.chat("hi")
        assert err.value.status == 502 and err.value.code == "upstream_failed"
        assert sim.calls("alpha") == 1  # never retried by the client
        with pytest.raises(NotFound) as not_found:
            await client.chat("hi", model="no-such-model")
        assert not_found.value.code == "model_not_found"
        with pytest.raises(NotFound) as unknown:
            await client.feedback("req_x", score=1.0)
        assert unknown.value.code == "unknown_request_id" and not isinstance(unknown.value, FeedbackNotSupported)


# import isolation --------------------------------------------------------------------------------

def test_client_imports_without_server_dependencies():
    code = (
        "import json, sys\n"
        "import sigroute\n"
        "from sigroute import Client, AsyncClient\n"
        "assert Client is sigroute.Client and AsyncClient.__name__ == 'AsyncClient'\n"
        "heavy = ('torch', 'faiss', 'litellm', 'sentence_transformers', 'sklearn', 'fastapi', 'starlette',\n"
        "         'uvicorn', 'presidio_analyzer', 'onnxruntime')\n"
        "ours = ('sigroute.signals', 'sigroute.bandits', 'sigroute.policies', 'sigroute.cache', 'sigroute.plugins',\n"
        "        'sigroute.gateway.app', 'sigroute.gateway.pipeline', 'sigroute.gateway.upstream',\n"
        "        'sigroute.gateway.sim', 'sigroute.gateway.auth', 'sigroute.gateway.errors',\n"
        "        'sigroute.gateway.metrics', 'sigroute.gateway.serving')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in heavy\n"
        "                or any(m == o or m.startswith(o + '.') for o in ours))\n"
        "print(json.dumps(loaded))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# --------------------------------------------------------------------------------------------
# the other API surfaces: Anthropic Messages and OpenAI Responses, with routing metadata

def test_message_returns_the_anthropic_answer_with_its_routing(sim, gateway_factory):
    from sigroute.gateway.client import RoutedMessage

    gw = gateway_factory(keyword_policy(sim))
    with Client(gw.url) as client:
        answer = client.message(ECHO + " python", max_tokens=200, system="Be brief.")
    assert isinstance(answer, RoutedMessage)
    assert answer.raw["type"] == "message" and answer.stop_reason == "end_turn"
    assert answer.text == answer.raw["content"][0]["text"] and ECHO in answer.text
    assert (answer.routing.decision, answer.routing.model) == ("coding", "beta")
    assert answer.id.startswith("msg_") and answer.usage["output_tokens"] > 0
    # translated once into the chat body the upstream received
    assert sim.last_body("beta")["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sim.last_body("beta")["max_tokens"] == 200
    with Client(gw.url) as client, pytest.raises(ValueError):   # streams: the official SDKs
        client.message("hi", stream=True)


def test_message_tool_use_and_errors(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    tool = {"name": "lookup", "description": "look something up",
            "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}
    with Client(gw.url) as client:
        answer = client.message("[[sim:tool]] the weather", tools=[tool])
        assert answer.stop_reason == "tool_use"
        assert answer.tool_uses[0]["name"] == "lookup" and answer.tool_uses[0]["input"] == {"text": "the weather"}
        with pytest.raises(NotFound):
            client.message("hi", model="no-such-model")


def test_respond_continues_a_stored_conversation(sim, gateway_factory):
    from sigroute.gateway.client import RoutedResponse

    gw = gateway_factory(keyword_policy(sim))
    with Client(gw.url) as client:
        first = client.respond(ECHO + " one", instructions="Answer plainly.")
        assert isinstance(first, RoutedResponse) and first.status == "completed"
        assert ECHO in first.text and first.id.startswith("resp_")
        assert (first.routing.decision, first.routing.model) == ("default", "alpha")
        second = client.respond("and two", previous_response_id=first.id)
    sent = sim.last_body(second.routing.model)["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "user"]   # the stored turn was prepended
    assert sent[1]["content"] == first.text and sent[2]["content"] == "and two"


async def test_async_message_and_respond(sim, gateway_factory):
    gw = gateway_factory(keyword_policy(sim))
    async with AsyncClient(gw.url) as client:
        message = await client.message(ECHO, max_tokens=100)
        response = await client.respond(ECHO)
    assert ECHO in message.text and ECHO in response.text
    assert message.routing.request_id != response.routing.request_id


def test_routed_answers_share_their_fields_and_read_typed_items():
    """The three answer classes share `raw`, `routing`, `usage` and `id` (one base) and stay
    distinct frozen dataclasses; the Messages and Responses accessors pick items by `type`."""
    import dataclasses

    from sigroute.gateway.client import RoutedMessage, RoutedResponse, RoutingInfo

    routing = RoutingInfo.from_headers({"x-sigroute-model": "beta", "x-sigroute-request-id": "req_1"})
    message = {"id": "msg_1", "usage": {"output_tokens": 4}, "stop_reason": "tool_use",
               "content": [{"type": "text", "text": "Let me "}, {"type": "tool_use", "name": "lookup"},
                           {"type": "text", "text": "check."}]}
    response = {"id": "resp_1", "status": "completed", "usage": {"total_tokens": 9},
                "output": [{"type": "reasoning"}, {"type": "function_call", "name": "lookup"},
                           {"type": "message", "content": [{"type": "output_text", "text": "It is "},
                                                           {"type": "refusal", "refusal": "no"},
                                                           {"type": "output_text", "text": "sunny."}]},
                           {"type": "message", "content": None}]}
    for cls, body in ((RoutedCompletion, {"id": "c1"}), (RoutedMessage, message), (RoutedResponse, response)):
        answer = cls(body, routing)
        assert (answer.raw, answer.routing, answer.id, answer.usage) == (body, routing, body["id"], body.get("usage"))
        assert [field.name for field in dataclasses.fields(answer)] == ["raw", "routing"]
        assert repr(answer).startswith(f"{cls.__name__}(raw=") and answer == cls(body, routing)
        with pytest.raises(dataclasses.FrozenInstanceError):
            answer.extra = 1
    assert RoutedMessage(message, routing) != RoutedResponse(message, routing)
    got = RoutedMessage(message, routing)
    assert (got.text, got.tool_uses, got.stop_reason) == ("Let me check.", [{"type": "tool_use", "name": "lookup"}],
                                                          "tool_use")
    got = RoutedResponse(response, routing)
    assert (got.text, got.function_calls, got.status) == ("It is sunny.", [{"type": "function_call", "name": "lookup"}],
                                                          "completed")
    empty = RoutedMessage({"content": None}, routing), RoutedResponse({}, routing)
    assert [(a.text, a.id, a.usage) for a in empty] == [("", None, None), ("", None, None)]
    assert empty[0].tool_uses == [] and empty[1].function_calls == []
