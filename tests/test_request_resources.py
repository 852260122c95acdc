"""Nothing a request holds outlives it, however it ends.

A request may hold a circuit breaker's half-open trial (the one call allowed to a recovering
model), the single-flight lease that identical requests wait on, a count in its model's in-flight
load, and an upstream stream with its connection. `gateway.pipeline` enters them all on one exit
stack. These tests end requests every way they can end — an unexpected error at each step after
something was taken, an answer plugin failing, a stream that finishes, breaks upstream, fails in a
stream filter or loses its client, a client that goes away during the upstream call — and then
check that nothing is held (`held`), that the recovering model is still callable, and that an
identical request is answered instead of waiting forever.

Failures are injected by replacing one step's function on the live pipeline with one that raises
(or stalls), or by the simulated upstream's own faults; everything else is the real gateway over
real HTTP.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import httpx
import pytest

from tests.conftest import base_policy

EMPTY = {"breaker_trials": [], "flights": 0, "in_flight": {}, "connections_in_use": 0}


def resource_policy(sim, model: str = "alpha", **decision):
    policy = base_policy(sim, decisions=[{"name": "default", "models": [model], "cache": {"mode": "exact"},
                                          **decision}],
                         upstream={"retries": 0, "backoff_s": 0.0,
                                   "breaker": {"failure_threshold": 1, "cooldown_s": 0.2}})
    policy["models"]["alpha"]["timeout_s"] = 1.0   # also how long identical requests wait for its leader
    return policy


def pipeline_of(gw):
    return gw.app.state.runtime.pipeline


def held(gw) -> dict:
    """What the gateway still holds for requests: should be EMPTY once they have all ended."""
    p = pipeline_of(gw)
    return {"breaker_trials": sorted(m for m, b in p.upstreams.breakers.items() if b.trial_in_flight),
            "flights": len(p.caching.flights),
            "in_flight": {m: n for m, n in p.upstreams.load.in_flight.items() if n},
            "connections_in_use": p.upstreams.connections_in_use()}


def settles_empty(gw, timeout_s: float = 15.0) -> dict:
    """`held(gw)` once it is EMPTY, or as it is after `timeout_s` (cleanup after a client leaves
    runs in the gateway after the client has already seen its end)."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = held(gw)
        if now == EMPTY or time.monotonic() > deadline:
            return now
        time.sleep(0.02)


def half_open(gw, sim, model: str) -> None:
    """Open `model`'s circuit with one real failure, then wait until it lets one trial through."""
    sim.faults(model, error_rate=1.0)
    assert gw.chat(f"make {model} fail once").status_code == 502
    sim.faults(model)
    wait_for_trial(gw, model)


def wait_for_trial(gw, model: str) -> None:
    breaker = pipeline_of(gw).upstreams.breakers[model]
    deadline = time.monotonic() + 10
    while breaker.state != "half_open":
        assert time.monotonic() < deadline, breaker.state
        time.sleep(0.02)


def fail_with(error: BaseException):
    async def failing(*args, **kwargs):
        raise error
    return failing


def stall(seconds: float):
    async def stalled(*args, **kwargs):
        await asyncio.sleep(seconds)
        raise RuntimeError("stalled step gave up")
    return stalled


# --------------------------------------------------------------------------------------------
# an unexpected error at each step after the request took something


STEPS = {
    # step name -> (the object on the pipeline, its attribute) replaced by a function that raises
    "request plugins (5)": (lambda p: p.plugins, "before"),
    "cache lookup (6)": (lambda p: p.caching.cache, "lookup"),
    "select (7), after leading the flight": (lambda p: p.router, "select"),
    "upstream call (8), during the half-open trial": (lambda p: p.upstreams.transports["openai"], "complete"),
    "pending record (11), after the upstream call": (lambda p: p.learning, "keep_for_feedback"),
    "answer plugins (9)": (lambda p: p.plugins, "after"),
    "cache store (10)": (lambda p: p.caching, "store"),
}


@pytest.mark.parametrize("step", list(STEPS))
def test_an_error_at_any_step_gives_everything_back(sim, gateway_factory, monkeypatch, step):
    gw = gateway_factory(resource_policy(sim))
    half_open(gw, sim, "alpha")
    owner, name = STEPS[step]
    target = owner(pipeline_of(gw))
    monkeypatch.setattr(target, name, fail_with(RuntimeError(f"injected failure in {step}")))
    if name == "after":
        monkeypatch.setattr(target, "changes_answers", lambda decision: True)
    r = gw.chat("what does the error leave behind?")
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    assert settles_empty(gw) == EMPTY
    monkeypatch.undo()
    again = gw.chat("what does the error leave behind?")   # the identical request: no stuck flight
    assert again.status_code == 200, again.text
    assert pipeline_of(gw).upstreams.breakers["alpha"].state == "closed"
    assert settles_empty(gw) == EMPTY


def test_a_body_the_upstream_call_cannot_encode_is_a_400_and_frees_the_trial(sim, gateway_factory):
    """orjson parses JSON nested up to 1024 levels but writes only ~254: such a body used to fail
    inside the upstream call with a 500 and keep a half-open trial forever."""
    gw = gateway_factory(resource_policy(sim))
    half_open(gw, sim, "alpha")
    nested: object = "deep"
    for _ in range(300):
        nested = [nested]
    r = gw.chat("nested metadata", metadata={"x": nested})
    assert r.status_code == 400, r.text
    assert settles_empty(gw) == EMPTY
    assert gw.chat("and now a normal request").status_code == 200
    assert pipeline_of(gw).upstreams.breakers["alpha"].state == "closed"


# --------------------------------------------------------------------------------------------
# streams: every way a stream ends


class ExplodingFilter:
    """A stream filter (the shape of the PII restorer's) that fails on the third delta."""

    def __init__(self):
        self.seen = 0

    def feed(self, index: int, text: str) -> str:
        self.seen += 1
        if self.seen == 3:
            raise RuntimeError("injected stream filter failure")
        return text

    def flush(self, index: int) -> str:
        return ""

    def pending_indices(self) -> list[int]:
        return []


def stream_request(gw, content: str, read_chunks: int | None = None) -> str:
    """Send a streamed request; read `read_chunks` SSE lines then hang up (None: read it all)."""
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": content}]}
    seen = []
    try:
        with httpx.Client(base_url=gw.url, timeout=30) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line:
                        seen.append(line)
                    if read_chunks is not None and len(seen) >= read_chunks:
                        break
    except httpx.RemoteProtocolError:   # the gateway had to abort the response
        seen.append("<aborted>")
    return "\n".join(seen)


@pytest.mark.parametrize("ending", ["finished", "upstream broke", "client left mid-stream", "stream filter failed"])
def test_every_stream_ending_gives_everything_back(sim, gateway_factory, monkeypatch, ending):
    gw = gateway_factory(resource_policy(sim, model="slow"))
    half_open(gw, sim, "slow")
    if ending == "upstream broke":
        sim.faults("slow", break_stream_rate=1.0)
    if ending == "stream filter failed":
        monkeypatch.setattr(pipeline_of(gw).plugins, "filters", lambda decision, state: [ExplodingFilter()])
    text = stream_request(gw, f"a stream that ends: {ending}",
                          read_chunks=3 if ending == "client left mid-stream" else None)
    if ending == "finished":
        assert text.endswith("data: [DONE]")
    elif ending == "upstream broke":
        assert "stream_broken" in text
    elif ending == "stream filter failed":
        assert "[DONE]" not in text
    assert settles_empty(gw) == EMPTY
    breaker = pipeline_of(gw).upstreams.breakers["slow"]
    if ending == "upstream broke":   # the trial failed: the circuit opened again
        assert breaker.opened_at is not None
        sim.faults("slow")
        wait_for_trial(gw, "slow")
    else:                            # the trial answered (a client or a plugin ended it, not the model)
        assert breaker.state == "closed"
    monkeypatch.undo()
    again = gw.chat(f"a stream that ends: {ending}", stream=True)   # identical: no stuck flight
    assert again.status_code == 200 and again.text.rstrip().endswith("data: [DONE]")
    assert settles_empty(gw) == EMPTY


def test_a_client_leaving_during_the_upstream_call_gives_everything_back(sim, gateway_factory):
    gw = gateway_factory(resource_policy(sim, model="slow"))
    half_open(gw, sim, "slow")
    with pytest.raises(httpx.ReadTimeout):   # the slow model needs ~2 s; the client gives up first
        with httpx.Client(base_url=gw.url, timeout=0.3) as http:
            http.post("/v1/chat/completions",
                      json={"model": "auto", "messages": [{"role": "user", "content": "too slow for me"}]})
    assert settles_empty(gw) == EMPTY
    assert pipeline_of(gw).upstreams.breakers["slow"].state != "open"
    assert gw.chat("too slow for me").status_code == 200
    assert settles_empty(gw) == EMPTY


# --------------------------------------------------------------------------------------------
# identical requests waiting on a leader


def _concurrently(*calls):
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def ask_after(gw, content: str, delay_s: float):
    """A request sent `delay_s` from now (on its own connection): (status, x-sigroute-cache)."""
    time.sleep(delay_s)
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        r = http.post("/v1/chat/completions", json={"model": "auto", "messages": [{"role": "user", "content": content}]})
        return r.status_code, r.headers.get("x-sigroute-cache")


def first_answer_plugin_call(pipeline, monkeypatch, misbehave):
    """Make the first answer to reach the answer plugins (the leader's) run `misbehave` there."""
    real_after = pipeline.plugins.after
    calls = []

    async def after(decision, body, state):
        calls.append(decision)
        if len(calls) == 1:
            await misbehave()
        return await real_after(decision, body, state)

    monkeypatch.setattr(pipeline.plugins, "after", after)
    monkeypatch.setattr(pipeline.plugins, "changes_answers", lambda decision: True)


def test_followers_are_answered_when_the_leader_fails_after_its_upstream_call(sim, gateway_factory, monkeypatch):
    gw = gateway_factory(resource_policy(sim, model="slow"))
    first_answer_plugin_call(pipeline_of(gw), monkeypatch, fail_with(RuntimeError("injected answer plugin failure")))
    question = "one question, three askers"
    results = _concurrently(lambda: ask_after(gw, question, 0), lambda: ask_after(gw, question, 0.3),
                            lambda: ask_after(gw, question, 0.3))
    assert sorted(status for status, _ in results) == [200, 200, 500]
    assert sim.calls("slow") >= 2   # the followers were not handed the failure: they asked upstream
    assert settles_empty(gw) == EMPTY


def test_followers_stop_waiting_for_a_stalled_leader(sim, gateway_factory, monkeypatch):
    """A leader stuck after its upstream call (here: an answer plugin that stalls for 5 s) holds
    its flight; an identical request waits no longer than the decision's model timeout (1 s here),
    then calls upstream itself."""
    gw = gateway_factory(resource_policy(sim, model="alpha"))
    pipeline = pipeline_of(gw)
    first_answer_plugin_call(pipeline, monkeypatch, lambda: asyncio.sleep(5))
    leader, follower = _concurrently(lambda: ask_after(gw, "stalled leader", 0),
                                     lambda: ask_after(gw, "stalled leader", 0.5))
    assert leader == (200, "miss") and follower == (200, "miss")
    assert pipeline.caching.flights.timed_out == 1 and sim.calls("alpha") == 2
    assert settles_empty(gw) == EMPTY
