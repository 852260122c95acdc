"""Upstream back pressure end to end: a 429 sends the request on to a healthy candidate at once, a
caller whose every candidate is rate-limited gets 429 with ``Retry-After`` (and the official
``openai`` client backs off for it), and the breaker's closings show in ``/metrics``.

Upstreams are real loopback servers: the chaos benchmark's raw-socket `FaultServer` (its own
record of every call, with the server's own timestamps, is what the tests judge by) and the
simulated upstream of `tests/conftest.py`; gateways are real uvicorn servers (`gateway_factory`).
Timing is asserted only as lower bounds (a hold was honoured) or generous upper bounds well below
the delay a broken gateway would have waited.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.chaos_upstream import Fault, FaultServerThread, Record, answer_text
from sigroute.gateway.upstream.breaker import CircuitBreaker
from tests.conftest import base_policy

_nonces = itertools.count()


def rate_limit(retry_after: str | None) -> Fault:
    return Fault("status", status=429, retry_after=retry_after, code="rate_limit_exceeded",
                 error_type="rate_limit_error", message="Rate limit reached for requests on internal-host-7:9000")


class Script(dict):
    """`FaultServer.faults` where a model's entry may be a list of faults, played one call at a
    time (the last one then stays)."""

    def get(self, model, default=None):
        plan = dict.get(self, model, default)
        if isinstance(plan, list):
            return plan.pop(0) if len(plan) > 1 else plan[0]
        return plan


@pytest.fixture
def upstream():
    with FaultServerThread() as thread:
        thread.server.faults = Script()
        yield thread.server


def fault_policy(api_base: str, models=("primary", "secondary"), *, retries: int = 1, backoff_max_s: float = 10.0,
                 threshold: int = 5, cooldown_s: float = 30.0) -> dict[str, Any]:
    return {"version": 1,
            "models": {m: {"provider": f"openai/{m}", "api_base": api_base} for m in models},
            "decisions": [{"name": "default", "models": list(models)}],
            "upstream": {"retries": retries, "backoff_s": 0.0, "backoff_max_s": backoff_max_s,
                         "breaker": {"failure_threshold": threshold, "cooldown_s": cooldown_s}}}


def ask(gw, stream: bool = False, **extra) -> tuple[str, httpx.Response]:
    nonce = f"bp{next(_nonces)}"
    body = {"model": "auto", "messages": [{"role": "user", "content": f"hello chaos-id:{nonce}"}], **extra}
    if stream:
        body["stream"] = True
    return nonce, gw.http.post("/v1/chat/completions", json=body)


def calls(server, nonce: str) -> list[tuple[str, str]]:
    """(model, outcome) of every upstream call made for `nonce`, in order, per the fault server's
    record. The server marks an answer ``answered`` once it has written it, possibly after the
    gateway has already relayed it: wait for that (a generous limit, against hangs only)."""
    settled = eventually(lambda: all(r.outcome != "received" for r in server.by_nonce.get(nonce, [])))
    assert settled, f"an upstream call of {nonce} never finished"
    return [(r.model, r.outcome) for r in server.by_nonce.get(nonce, [])]


def streamed_text(response: httpx.Response) -> str:
    import orjson

    text = ""
    for line in response.text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            for choice in orjson.loads(line[6:]).get("choices") or ():
                text += (choice.get("delta") or {}).get("content") or ""
    return text


# 1. a 429 with a healthy alternative: move on at once -------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_429_moves_on_to_a_healthy_candidate_without_waiting_for_its_retry_after(upstream, gateway_factory,
                                                                                    stream):
    # the gateway would wait for a Retry-After of 5 s (backoff_max_s 10, a retry left): it must not,
    # because another candidate can answer now
    upstream.faults["primary"] = rate_limit("5")
    gw = gateway_factory(fault_policy(upstream.api_base, retries=1, backoff_max_s=10.0))
    nonce, r = ask(gw, stream=stream)
    assert r.status_code == 200, r.text
    assert r.headers["x-sigroute-model"] == "secondary"
    content = streamed_text(r) if stream else r.json()["choices"][0]["message"]["content"]
    assert content == answer_text("secondary", nonce)
    # the upstreams' own record: primary once (429), then the secondary, nothing else
    assert calls(upstream, nonce) == [("primary", "status 429"), ("secondary", "answered")]
    first, second = upstream.by_nonce[nonce]
    assert second.started - first.started < 5.0  # not after the Retry-After (server's own clock)
    # the 429'd model stays held back for its Retry-After: the next request does not call it
    nonce, r = ask(gw, stream=stream)
    assert r.headers["x-sigroute-model"] == "secondary"
    assert calls(upstream, nonce) == [("secondary", "answered")]
    assert gw.http.get("/ready").json()["models"]["primary"] == "rate_limited"


def test_a_rate_limited_model_left_for_another_is_retried_after_its_hold_when_the_others_fail(
        upstream, gateway_factory):
    """The 429'd model is the last one left once the secondary has failed: the call waits for its
    hold and retries it (as it retried a lone model before)."""
    upstream.faults["primary"] = [rate_limit("0.5"), Fault()]
    upstream.faults["secondary"] = Fault("status", status=500)
    gw = gateway_factory(fault_policy(upstream.api_base, retries=1, backoff_max_s=2.0))
    nonce, r = ask(gw)
    assert r.status_code == 200, r.text
    assert r.headers["x-sigroute-model"] == "primary"
    assert calls(upstream, nonce) == [("primary", "status 429"), ("secondary", "status 500"),
                                      ("secondary", "status 500"), ("primary", "answered")]
    records: list[Record] = upstream.by_nonce[nonce]
    assert records[-1].started - records[0].started >= 0.5  # the hold the upstream asked for was honoured


def test_a_lone_model_is_still_retried_after_a_short_retry_after(upstream, gateway_factory):
    upstream.faults["primary"] = [rate_limit("0.2"), Fault()]
    gw = gateway_factory(fault_policy(upstream.api_base, models=("primary",), retries=1, backoff_max_s=2.0))
    nonce, r = ask(gw)
    assert r.status_code == 200 and r.headers["x-sigroute-model"] == "primary"
    assert calls(upstream, nonce) == [("primary", "status 429"), ("primary", "answered")]
    first, second = upstream.by_nonce[nonce]
    assert second.started - first.started >= 0.2


# 2. every candidate rate-limited: 429 with Retry-After ---------------------------------------------------


def test_every_candidate_rate_limited_gives_429_with_the_soonest_retry_after(upstream, gateway_factory):
    # Retry-After 3 and 7, both longer than backoff_max_s: nobody waits, the caller is told when to come back
    upstream.faults["primary"] = rate_limit("3")
    upstream.faults["secondary"] = rate_limit("7")
    gw = gateway_factory(fault_policy(upstream.api_base, retries=1, backoff_max_s=2.0))
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=0)
    nonce = f"bp{next(_nonces)}"
    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": f"hi chaos-id:{nonce}"}])
    error = refused.value
    assert error.status_code == 429
    assert error.code == "upstream_rate_limited" and error.type == "rate_limit_error"
    assert 1 <= int(error.response.headers["retry-after"]) <= 3  # the primary's hold, the sooner one, rounded up
    assert "primary" in error.message and "secondary" in error.message
    assert "internal-host-7" not in error.message  # the upstream's own words stay in the gateway log
    assert calls(upstream, nonce) == [("primary", "status 429"), ("secondary", "status 429")]

    # held back meanwhile: neither is called, the answer is the same (a stream is refused before any byte)
    nonce, r = ask(gw, stream=True)
    assert r.status_code == 429
    assert r.headers["content-type"].startswith("application/json")
    assert 1 <= int(r.headers["retry-after"]) <= 3
    assert r.json()["error"]["code"] == "upstream_rate_limited"
    assert r.json()["error"]["type"] == "rate_limit_error"
    assert calls(upstream, nonce) == []
    metrics = gw.http.get("/metrics").text
    assert 'sigroute_errors_total{code="upstream_rate_limited",status="429"} 2.0' in metrics


def test_a_429_mixed_with_a_real_failure_is_still_a_502(upstream, gateway_factory):
    upstream.faults["primary"] = rate_limit("3")
    upstream.faults["secondary"] = Fault("status", status=500)
    gw = gateway_factory(fault_policy(upstream.api_base, retries=0))
    _, r = ask(gw)
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_failed"


def test_the_openai_client_backs_off_for_the_retry_after_and_then_gets_its_answer(upstream, gateway_factory):
    """What `Retry-After` is for: the official client (retries on) waits for it, and its retry is answered."""
    upstream.faults["primary"] = [rate_limit("1"), Fault()]
    upstream.faults["secondary"] = [rate_limit("1"), Fault()]
    gw = gateway_factory(fault_policy(upstream.api_base, retries=0))
    statuses: list[int] = []
    with httpx.Client(event_hooks={"response": [lambda response: statuses.append(response.status_code)]}) as http:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused", max_retries=2, http_client=http)
        nonce = f"bp{next(_nonces)}"
        answer = client.chat.completions.create(model="auto",
                                                messages=[{"role": "user", "content": f"hi chaos-id:{nonce}"}])
    assert answer.choices[0].message.content == answer_text("primary", nonce)
    assert statuses == [429, 200]  # one refusal, then the answer: the client waited as told
    assert calls(upstream, nonce) == [("primary", "status 429"), ("secondary", "status 429"),
                                      ("primary", "answered")]
    first, *_, last = upstream.by_nonce[nonce]
    assert last.started - first.started >= 1.0


# 3. the breaker's closings in /metrics -----------------------------------------------------------------


class ManualClock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


def breaker_metrics(gw, model: str) -> dict[str, Any]:
    out: dict[str, Any] = {"state": {}, "open": None, "opened_total": 0.0, "closed_total": 0.0}
    for family in text_string_to_metric_families(gw.http.get("/metrics").text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "sigroute_breaker_state":
                out["state"][sample.labels["state"]] = sample.value
            elif sample.name == "sigroute_breaker_open":
                out["open"] = sample.value
            elif sample.name == "sigroute_breaker_opened_total":
                out["opened_total"] = sample.value
            elif sample.name == "sigroute_breaker_closed_total":
                out["closed_total"] = sample.value
    return out


def one_hot(state: str) -> dict[str, float]:
    return {s: 1.0 if s == state else 0.0 for s in ("closed", "open", "half_open", "rate_limited")}


def eventually(check, limit_s: float = 10.0):
    """`check()`'s value once it is truthy; a generous limit that only catches a hang."""
    deadline = time.monotonic() + limit_s
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_closing_shows_in_metrics_and_the_end_of_the_cooldown_is_not_one(sim, gateway_factory, stream):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}],
                         upstream={"retries": 0, "backoff_s": 0.0,
                                   "breaker": {"failure_threshold": 1, "cooldown_s": 30}})
    gw = gateway_factory(policy)
    clock = ManualClock()
    gw.app.state.runtime.pipeline.upstreams.breakers["alpha"].clock = clock
    assert breaker_metrics(gw, "alpha")["state"] == one_hot("closed")

    sim.faults("alpha", error_rate=1.0)
    assert gw.chat("hi").headers["x-sigroute-model"] == "beta"
    seen = breaker_metrics(gw, "alpha")
    assert seen["state"] == one_hot("open") and seen["open"] == 1.0
    assert (seen["opened_total"], seen["closed_total"]) == (1.0, 0.0)

    # the upstream recovers and the cooldown ends: half-open, the open gauge falls, nothing closed yet
    sim.faults("alpha")
    clock.now += 30
    seen = breaker_metrics(gw, "alpha")
    assert seen["state"] == one_hot("half_open") and seen["open"] == 0.0
    assert seen["closed_total"] == 0.0

    # the trial (streamed or whole) succeeds: the circuit closes, one closing
    r = gw.chat("hi", stream=stream)
    assert r.status_code == 200 and r.headers["x-sigroute-model"] == "alpha"
    seen = eventually(lambda: (m := breaker_metrics(gw, "alpha"))["closed_total"] == 1.0 and m)
    assert seen, breaker_metrics(gw, "alpha")
    assert seen["state"] == one_hot("closed") and seen["opened_total"] == 1.0


def test_a_failed_trial_is_no_closing_and_a_rate_limited_model_shows_as_such(sim, gateway_factory):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}],
                         upstream={"retries": 0, "backoff_s": 0.0,
                                   "breaker": {"failure_threshold": 1, "cooldown_s": 30}})
    gw = gateway_factory(policy)
    clock = ManualClock()
    gw.app.state.runtime.pipeline.upstreams.breakers["alpha"].clock = clock
    sim.faults("alpha", error_rate=1.0)
    gw.chat("hi")
    clock.now += 30
    gw.chat("hi")  # the trial fails: open again, same episode
    seen = breaker_metrics(gw, "alpha")
    assert seen["state"] == one_hot("open")
    assert (seen["opened_total"], seen["closed_total"]) == (1.0, 0.0)
    sim.faults("alpha")
    clock.now += 30
    gw.chat("hi")  # this trial succeeds
    assert breaker_metrics(gw, "alpha")["closed_total"] == 1.0
    # a 429 holds the model back: rate_limited, neither an opening nor a closing
    sim.faults("alpha", rate_limit_rate=1.0)
    assert gw.chat("hi").headers["x-sigroute-model"] == "beta"
    seen = breaker_metrics(gw, "alpha")
    assert seen["state"] == one_hot("rate_limited")
    assert (seen["opened_total"], seen["closed_total"]) == (1.0, 1.0)
    assert breaker_metrics(gw, "beta")["state"] == one_hot("closed")


def test_breaker_counts_its_closings_once_per_episode():
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=10, clock=clock)
    assert not breaker.permit().succeeded()  # closed already: no closing
    assert breaker.permit().failed()
    clock.now += 10
    assert not breaker.permit().failed()  # failed trial: re-opened, no closing
    clock.now += 10
    trial = breaker.permit()
    assert trial.trial and not breaker.permit().granted  # one trial at a time
    assert trial.succeeded()
    assert breaker.closings == 1 and breaker.state == "closed"
    assert not breaker.permit().succeeded() and breaker.closings == 1


def test_a_model_removed_by_a_reload_leaves_the_breaker_series():
    from sigroute.gateway.metrics import Metrics

    metrics = Metrics()
    metrics.render({"a": "open", "b": "rate_limited"})
    value = metrics.registry.get_sample_value
    assert value("sigroute_breaker_state", {"model": "b", "state": "rate_limited"}) == 1.0
    assert value("sigroute_breaker_state", {"model": "b", "state": "closed"}) == 0.0
    metrics.render({"a": "half_open"})  # the new policy has no model b
    assert value("sigroute_breaker_state", {"model": "b", "state": "rate_limited"}) is None
    assert value("sigroute_breaker_open", {"model": "b"}) is None
    assert value("sigroute_breaker_state", {"model": "a", "state": "half_open"}) == 1.0
    assert value("sigroute_breaker_open", {"model": "a"}) == 0.0
