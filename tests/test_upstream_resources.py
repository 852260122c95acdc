"""What an upstream call holds is given back on every path: the breaker's half-open trial, the
model's in-flight count, the upstream connection.

`Upstreams` runs against the simulated upstream (a real HTTP server on loopback). Faults the sim
cannot produce (an exception our code does not expect, a call that blocks until cancelled) come
from `Faulty`, a transport injected through ``Upstreams(transports=...)`` that wraps the real
direct transport. Breakers get a hand-turned clock, so half-open is reached without sleeping.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from sigroute.gateway.errors import InvalidRequest, UpstreamFailed
from sigroute.gateway.upstream import OpenAICompatibleTransport, UpstreamError, Upstreams
from sigroute.policies.schema import Policy
from tests.conftest import ManualClock, base_policy

PAYLOAD = {"messages": [{"role": "user", "content": "hi"}]}
STREAMED = {**PAYLOAD, "stream": True}
COOLDOWN_S = 30.0


class Boom(RuntimeError):
    """An exception no transport is expected to raise."""


class Faulty:
    """The real direct transport, with faults armed by the test: `explode` raises `Boom` when a call
    starts (or, for streams, after `explode_after` chunks); `block` makes a call wait until cancelled."""

    def __init__(self) -> None:
        self.real = OpenAICompatibleTransport()
        self.explode = False
        self.explode_after: int | None = None
        self.block = False
        self.blocked = asyncio.Event()

    async def _fault(self) -> None:
        if self.explode:
            raise Boom("unexpected")
        if self.block:
            self.blocked.set()
            await asyncio.Event().wait()  # until cancelled

    async def complete(self, target, payload, headers=None):
        await self._fault()
        return await self.real.complete(target, payload, headers)

    async def stream(self, target, payload, headers=None):
        await self._fault()
        chunks = self.real.stream(target, payload, headers)
        try:
            n = 0
            async for chunk in chunks:
                if self.explode_after is not None and n == self.explode_after:
                    raise Boom("unexpected, mid-stream")
                n += 1
                yield chunk
        finally:
            await chunks.aclose()  # closing this stream closes the real one (and its response)

    async def aclose(self) -> None:
        await self.real.aclose()


@pytest.fixture
async def faulty():
    transport = Faulty()
    yield transport
    await transport.aclose()


def make_upstreams(sim, transport, models=("alpha",), **upstream) -> tuple[Upstreams, ManualClock]:
    settings = {"retries": 0, "backoff_s": 0.0, "breaker": {"failure_threshold": 1, "cooldown_s": COOLDOWN_S}}
    settings.update(upstream)
    policy = Policy.model_validate(base_policy(sim, decisions=[{"name": "default", "models": list(models)}],
                                               upstream=settings))
    upstreams = Upstreams(policy, transports={"openai": transport})
    clock = ManualClock()
    for breaker in upstreams.breakers.values():
        breaker.clock = clock
    return upstreams, clock


async def half_open(upstreams: Upstreams, clock: ManualClock, sim, model: str = "alpha") -> None:
    """Open `model`'s circuit with a real failure, let the cooldown pass: the next call is the trial."""
    sim.faults(model, error_rate=1.0)
    with pytest.raises(UpstreamFailed):
        await upstreams.call([model], PAYLOAD, False)
    sim.faults(model)
    assert upstreams.breaker_states()[model] == "open"
    clock.now += COOLDOWN_S
    assert upstreams.breaker_states()[model] == "half_open"


async def assert_trial_free(upstreams: Upstreams, sim, model: str = "alpha") -> None:
    """Nothing is held, and the next call is let through as the trial, and closes the circuit."""
    assert upstreams.load.in_flight.get(model, 0) == 0
    assert upstreams.available([model]) == [model]
    calls = sim.calls(model)
    result = await upstreams.call([model], PAYLOAD, False)
    assert result.model == model and result.body["choices"]
    assert sim.calls(model) == calls + 1
    assert upstreams.breaker_states()[model] == "closed"


# an unexpected exception during the half-open trial ---------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_unexpected_exception_before_an_answer_gives_the_trial_back(sim, faulty, stream):
    upstreams, clock = make_upstreams(sim, faulty)
    await half_open(upstreams, clock, sim)
    faulty.explode = True
    with pytest.raises(Boom):
        await upstreams.call(["alpha"], STREAMED if stream else PAYLOAD, stream)
    assert upstreams.breaker_states()["alpha"] == "half_open"  # no verdict: the exception was ours
    faulty.explode = False
    await assert_trial_free(upstreams, sim)


async def test_unexpected_exception_mid_stream_gives_the_trial_back_without_a_verdict(sim, faulty):
    upstreams, clock = make_upstreams(sim, faulty)
    await half_open(upstreams, clock, sim)
    faulty.explode_after = 2
    async with await upstreams.call(["alpha"], STREAMED, True) as result:
        assert upstreams.load.in_flight["alpha"] == 1  # the stream counts until it is closed
        with pytest.raises(Boom):
            async for _ in result.stream:
                pass
        assert result.stream.error is None and not result.stream.finished
        assert not upstreams.available(["alpha"])  # still this stream's trial until it is closed
    assert upstreams.breaker_states()["alpha"] == "half_open"
    faulty.explode_after = None
    await assert_trial_free(upstreams, sim)


async def test_deeply_nested_body_is_a_400_and_leaves_the_trial_free(sim, faulty):
    upstreams, clock = make_upstreams(sim, faulty)
    await half_open(upstreams, clock, sim)
    calls = sim.calls("alpha")
    for stream in (False, True):
        with pytest.raises(InvalidRequest) as err:
            await upstreams.call(["alpha"], {**PAYLOAD, "stream": stream, "metadata": nested(300)}, stream)
        assert err.value.status == 400 and err.value.code == "invalid_request_body"
        assert "nested" in err.value.message
    assert sim.calls("alpha") == calls  # nothing was sent
    assert upstreams.breaker_states()["alpha"] == "half_open"
    await assert_trial_free(upstreams, sim)


async def test_deeply_nested_body_touches_no_closed_breaker(sim, faulty):
    upstreams, _ = make_upstreams(sim, faulty, breaker={"failure_threshold": 1, "cooldown_s": COOLDOWN_S})
    with pytest.raises(InvalidRequest):
        await upstreams.call(["alpha"], {**PAYLOAD, "metadata": nested(300)}, False)
    assert upstreams.breakers["alpha"].failures == 0
    assert upstreams.breaker_states()["alpha"] == "closed"


# cancellation ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_cancelled_call_gives_the_trial_and_its_place_in_flight_back(sim, faulty, stream):
    upstreams, clock = make_upstreams(sim, faulty)
    await half_open(upstreams, clock, sim)
    faulty.block = True
    task = asyncio.ensure_future(upstreams.call(["alpha"], STREAMED if stream else PAYLOAD, stream))
    await faulty.blocked.wait()
    assert upstreams.load.in_flight["alpha"] == 1 and not upstreams.available(["alpha"])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    faulty.block = False
    await assert_trial_free(upstreams, sim)


async def test_cancelled_consumer_of_a_stream_gives_everything_back_when_closed(sim, faulty):
    upstreams, clock = make_upstreams(sim, faulty, models=("slow",))
    await half_open(upstreams, clock, sim, "slow")
    result = await upstreams.call(["slow"], STREAMED, True)

    async def consume():
        async for _ in result.stream:
            pass

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(0)  # the consumer is inside the stream, waiting for a chunk
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await result.aclose()
    assert upstreams.load.in_flight["slow"] == 0
    # the model was answering when the consumer left: the trial counts as a success
    assert upstreams.breaker_states()["slow"] == "closed"
    assert faulty.real.client.stats()[sim.url]["open"] == 0  # the unfinished response's connection is closed


# the stream owns what it holds -------------------------------------------------------------------------

async def test_finished_stream_returns_its_connection_and_ends_its_in_flight_count(sim, faulty):
    upstreams, _ = make_upstreams(sim, faulty)
    result = await upstreams.call(["alpha"], STREAMED, True)
    assert result.body is None and result.stream.model == "alpha"
    assert result.stream.first_chunk["choices"][0]["delta"]["role"] == "assistant"
    chunks = [chunk async for chunk in result.stream]
    assert chunks and result.stream.finished and result.stream.error is None
    assert upstreams.load.in_flight["alpha"] == 1
    await result.aclose()
    await result.aclose()  # idempotent
    assert upstreams.load.in_flight["alpha"] == 0
    assert upstreams.load.latency_ms["alpha"] > 0  # the stream's duration feeds the average
    assert faulty.real.client.stats()[sim.url] == {"open": 1, "idle": 1, "waiting": 0}


async def test_stream_closed_early_closes_its_connection(sim, faulty):
    upstreams, _ = make_upstreams(sim, faulty, models=("slow",))
    async with await upstreams.call(["slow"], STREAMED, True) as result:
        await anext(result.stream)
    assert result.stream.closed and not result.stream.finished
    assert [chunk async for chunk in result.stream] == []  # a closed stream yields nothing more
    assert upstreams.load.in_flight["slow"] == 0
    assert faulty.real.client.stats()[sim.url]["open"] == 0
    assert upstreams.breaker_states()["slow"] == "closed"


async def test_broken_stream_records_its_own_failure(sim, faulty):
    upstreams, _ = make_upstreams(sim, faulty, models=("slow",))
    sim.faults("slow", break_stream_rate=1.0)
    result = await upstreams.call(["slow"], STREAMED, True)
    with pytest.raises(UpstreamError) as err:
        async for _ in result.stream:
            pass
    assert err.value.kind == "stream_broken" and err.value.model == "slow"
    assert result.stream.error is err.value
    assert upstreams.breaker_states()["slow"] == "open"  # counted at once, before the stream is closed
    await result.aclose()
    assert upstreams.breaker_states()["slow"] == "open"  # and closing it is no success
    assert upstreams.load.in_flight["slow"] == 0


async def test_each_attempted_model_counts_while_its_attempt_runs(sim, faulty):
    upstreams, _ = make_upstreams(sim, faulty, models=("alpha", "beta"),
                                  breaker={"failure_threshold": 100, "cooldown_s": 1})
    sim.faults("alpha", error_rate=1.0)
    async with await upstreams.call(["alpha", "beta"], STREAMED, True) as result:
        assert result.model == "beta" and [a.model for a in result.attempts] == ["alpha"]
        assert upstreams.load.in_flight == {"alpha": 0, "beta": 1}
    assert upstreams.load.in_flight == {"alpha": 0, "beta": 0}
    result = await upstreams.call(["alpha", "beta"], PAYLOAD, False)
    assert result.model == "beta" and upstreams.load.in_flight == {"alpha": 0, "beta": 0}
    assert "beta" in upstreams.load.latency_ms and "alpha" not in upstreams.load.latency_ms  # failures add none


async def test_saturated_looks_at_available_models_only(sim, faulty):
    from sigroute.policies.schema import LoadAwareCache

    upstreams, _ = make_upstreams(sim, faulty, models=("alpha", "beta"))
    bound = LoadAwareCache(in_flight_above=1)
    async with await upstreams.call(["beta"], STREAMED, True):
        assert not upstreams.saturated(["alpha", "beta"], bound)  # alpha is idle
        sim.faults("alpha", error_rate=1.0)
        with pytest.raises(UpstreamFailed):
            await upstreams.call(["alpha"], PAYLOAD, False)  # opens alpha's circuit
        assert upstreams.saturated(["alpha", "beta"], bound)  # alpha is out of service: beta alone counts
    assert not upstreams.saturated(["alpha", "beta"], bound)
    assert upstreams.retry_in_s(["alpha", "beta"]) == 0.0
    assert upstreams.retry_in_s(["alpha"]) == pytest.approx(COOLDOWN_S)


# through the gateway ------------------------------------------------------------------------------------

def nested(depth: int):
    value: object = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


@pytest.mark.parametrize("stream", [False, True])
def test_gateway_answers_a_deeply_nested_body_with_400_and_keeps_the_trial_free(sim, gateway_factory, stream):
    policy = base_policy(sim, upstream={"retries": 0, "breaker": {"failure_threshold": 1, "cooldown_s": COOLDOWN_S}})
    gw = gateway_factory(policy)
    breaker = gw.app.state.runtime.pipeline.upstreams.breakers["alpha"]
    clock = ManualClock()
    breaker.clock = clock
    sim.faults("alpha", error_rate=1.0)
    assert gw.chat("hi").status_code == 502
    sim.faults("alpha")
    clock.now += COOLDOWN_S  # half-open: the next call is the trial
    body = orjson.dumps({"model": "auto", "stream": stream, "messages": [{"role": "user", "content": "hi"}],
                         "metadata": nested(200)})
    body = body.replace(b'"deep"', orjson.dumps(nested(100)))  # 300 levels: orjson reads it, cannot write it
    r = httpx.post(gw.url + "/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_request_body" and "nested" in error["message"]
    assert gw.http.get("/ready").json()["models"]["alpha"] == "half_open"
    calls = sim.calls("alpha")
    answer = gw.chat("hi")  # the trial is free: it goes to alpha and closes the circuit
    assert answer.status_code == 200 and answer.headers["x-sigroute-model"] == "alpha"
    assert sim.calls("alpha") == calls + 1
    assert gw.http.get("/ready").json()["models"]["alpha"] == "closed"
