"""Failures: retries and fallback, circuit breakers, timeouts, broken streams, client disconnects."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import ManualClock, base_policy


def fallback_policy(sim, **upstream):
    settings = {"retries": 0, "backoff_s": 0.0, "breaker": {"failure_threshold": 100, "cooldown_s": 1}}
    settings.update(upstream)
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}], upstream=settings)
    policy["models"]["alpha"]["timeout_s"] = 0.5
    policy["models"]["alpha"]["first_token_timeout_s"] = 0.5
    return policy


@pytest.mark.parametrize("fault", ["error_rate", "rate_limit_rate", "timeout_rate"])
def test_falls_back_when_first_candidate_fails(sim, gateway_factory, fault):
    gw = gateway_factory(fallback_policy(sim))
    sim.faults("alpha", **{fault: 1.0})
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-sigroute-model"] == "beta"
    assert raw.headers["x-sigroute-attempts"] == "2"
    assert raw.parse().choices[0].message.content
    assert sim.calls("alpha") == 1 and sim.calls("beta") == 1
    metrics = gw.http.get("/metrics").text
    kind = {"error_rate": "server", "rate_limit_rate": "rate_limited", "timeout_rate": "timeout"}[fault]
    assert f'sigroute_upstream_errors_total{{kind="{kind}",model="alpha"}} 1.0' in metrics
    assert 'sigroute_fallbacks_total{from_model="alpha",to_model="beta"} 1.0' in metrics


@pytest.mark.parametrize("fault", ["error_rate", "rate_limit_rate"])
def test_streamed_request_falls_back_before_first_chunk(sim, gateway_factory, fault):
    gw = gateway_factory(fallback_policy(sim))
    sim.faults("alpha", **{fault: 1.0})
    stream = gw.client().chat.completions.create(model="auto", stream=True,
                                                 messages=[{"role": "user", "content": "hi"}])
    chunks = list(stream)
    assert {c.model for c in chunks} == {"beta"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_retries_same_model_before_falling_back(sim, gateway_factory):
    gw = gateway_factory(fallback_policy(sim, retries=2))
    sim.faults("alpha", error_rate=1.0)
    assert gw.chat("hi").headers["x-sigroute-model"] == "beta"
    assert sim.calls("alpha") == 3  # one call and two retries


def test_invalid_request_is_rejected_before_any_upstream_call(sim, gateway_factory):
    gw = gateway_factory(fallback_policy(sim, retries=2))
    r = gw.chat("hi", max_tokens=0)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    assert sim.stats()["total_calls"] == 0


def test_all_candidates_failing_gives_502_with_every_reason(sim, gateway_factory):
    gw = gateway_factory(fallback_policy(sim))
    sim.faults("alpha", error_rate=1.0)
    sim.faults("beta", error_rate=1.0)
    with pytest.raises(openai.APIStatusError) as err:
        gw.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502
    body = err.value.body
    assert body["code"] == "upstream_failed"
    assert "alpha" in body["message"] and "beta" in body["message"]


def test_all_candidates_timing_out_gives_504(sim, gateway_factory):
    policy = fallback_policy(sim)
    policy["models"]["beta"]["timeout_s"] = 0.5
    gw = gateway_factory(policy)
    sim.faults("alpha", timeout_rate=1.0)
    sim.faults("beta", timeout_rate=1.0)
    r = gw.chat("hi")
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "upstream_timeout"


def test_breaker_opens_then_half_opens_and_closes(sim, gateway_factory):
    gw = gateway_factory(fallback_policy(sim, breaker={"failure_threshold": 2, "cooldown_s": 30}))
    clock = gw.breakers_on(ManualClock())
    sim.faults("alpha", error_rate=1.0)
    for _ in range(2):
        assert gw.chat("hi").headers["x-sigroute-model"] == "beta"
    assert sim.calls("alpha") == 2
    # open: alpha is skipped without being called
    for _ in range(3):
        assert gw.chat("hi").headers["x-sigroute-model"] == "beta"
    assert sim.calls("alpha") == 2
    ready = gw.http.get("/ready").json()
    assert ready["models"]["alpha"] == "open"
    assert "sigroute_breaker_open{model=\"alpha\"} 1.0" in gw.http.get("/metrics").text
    # alpha recovers; after the cooldown one trial call goes through and closes the circuit
    sim.faults("alpha")
    clock.advance(29.9)
    assert gw.chat("hi").headers["x-sigroute-model"] == "beta"   # still cooling down
    clock.advance(0.2)
    assert gw.chat("hi").headers["x-sigroute-model"] == "alpha"
    assert gw.http.get("/ready").json()["models"]["alpha"] == "closed"
    assert gw.chat("hi").headers["x-sigroute-model"] == "alpha"


def test_failed_half_open_trial_reopens(sim, gateway_factory):
    gw = gateway_factory(fallback_policy(sim, breaker={"failure_threshold": 1, "cooldown_s": 30}))
    clock = gw.breakers_on(ManualClock())
    sim.faults("alpha", error_rate=1.0)
    gw.chat("hi")
    clock.advance(30.1)
    assert gw.chat("hi").headers["x-sigroute-model"] == "beta"  # trial failed → beta answered
    assert sim.calls("alpha") == 2
    clock.advance(29.9)     # a new cooldown started with the failed trial
    gw.chat("hi")
    assert sim.calls("alpha") == 2  # re-opened: skipped again


def test_all_circuits_open_gives_503_with_retry_after(sim, gateway_factory):
    policy = base_policy(sim, upstream={"retries": 0, "breaker": {"failure_threshold": 1, "cooldown_s": 30}})
    gw = gateway_factory(policy)
    sim.faults("alpha", error_rate=1.0)
    assert gw.chat("hi").status_code == 502
    r = gw.chat("hi")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "all_circuits_open"
    assert int(r.headers["retry-after"]) >= 1
    assert sim.calls("alpha") == 1


def test_stream_broken_midway_ends_with_error_event(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]))
    sim.faults("slow", break_stream_rate=1.0)
    stream = gw.client().chat.completions.create(model="auto", stream=True,
                                                 messages=[{"role": "user", "content": "tell me a story"}])
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert received, "some chunks arrive before the break"
    assert "mid-stream" in str(err.value)
    assert "sigroute_stream_breaks_total{model=\"slow\"} 1.0" in gw.http.get("/metrics").text


def test_raw_stream_never_ends_silently(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]))
    sim.faults("slow", break_stream_rate=1.0)
    with gw.http.stream("POST", "/v1/chat/completions",
                        json={"model": "auto", "stream": True, "messages": [{"role": "user", "content": "x"}]}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1].startswith("data: {\"error\"")
    assert "data: [DONE]" not in lines


def _wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_client_disconnect_cancels_non_streamed_upstream_call(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(gw.url + "/v1/chat/completions", timeout=0.4,
                   json={"model": "auto", "messages": [{"role": "user", "content": "a long answer please"}]})
    assert _wait_for(lambda: sim.stats()["slow"]["cancelled"] == 1)
    assert sim.stats()["slow"]["completed"] == 0
    assert _wait_for(lambda: "sigroute_client_disconnects_total 1.0" in gw.http.get("/metrics").text)


def test_client_disconnect_cancels_streamed_upstream_call(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]))
    with httpx.Client(timeout=10) as client:
        with client.stream("POST", gw.url + "/v1/chat/completions",
                           json={"model": "auto", "stream": True,
                                 "messages": [{"role": "user", "content": "a long answer please"}]}) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
    assert _wait_for(lambda: sim.stats()["slow"]["cancelled"] == 1)
    assert sim.stats()["slow"]["completed"] == 0


def test_callers_get_a_generic_upstream_error_and_the_log_has_the_details(sim, gateway_factory, caplog):
    """An upstream's failure text can name internal hosts and ports: the caller gets each model's
    failure kind and status and the request id; the log gets what the upstream said."""
    import logging

    policy = fallback_policy(sim)
    policy["models"]["beta"]["api_base"] = "http://127.0.0.1:9/v1"   # nothing listens: a connect error
    gw = gateway_factory(policy)
    sim.faults("alpha", error_rate=1.0)
    with caplog.at_level(logging.WARNING, logger="sigroute.upstream"):
        r = gw.chat("hi")
    assert r.status_code == 502
    message = r.json()["error"]["message"]
    request_id = r.headers.get("x-sigroute-request-id") or message.split("under request ")[-1].rstrip(")")
    assert "alpha: server (HTTP 500)" in message and "beta: connect" in message
    assert "127.0.0.1:9" not in message and request_id.startswith("req_") and request_id in message
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert f"request {request_id}: upstream model beta failed" in logged and "127.0.0.1:9" in logged
    assert f"request {request_id}: upstream model alpha failed" in logged
