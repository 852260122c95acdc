"""Circuit-breaker semantics: one opening per episode, and 429 as back pressure, not a fault.

Breakers get a hand-turned clock (`ManualClock`), so cooldowns and holds are crossed without sleeping
and nothing depends on a quiet machine. Calls go through the real `Upstreams` loop and the real
direct transport, to the simulated upstream or a small loopback server (`RawServer`); `Gate` is a
transport injected through ``Upstreams(transports=...)`` that keeps calls in flight until the test
lets them fail, so that "calls in flight when the circuit opened" is exact, not a race. The
breaker's observer is the gateway's real `Metrics`.
"""

from __future__ import annotations

import asyncio

import pytest

from sigroute.gateway.errors import RateLimited, UpstreamFailed
from sigroute.gateway.metrics import Metrics
from sigroute.gateway.upstream import OpenAICompatibleTransport, UpstreamError, Upstreams
from sigroute.gateway.upstream.breaker import RATE_LIMIT_DEFAULT_S, CircuitBreaker
from sigroute.policies.schema import Policy
from tests.conftest import ManualClock, base_policy
from tests.test_http1 import RawServer, reply

PAYLOAD = {"messages": [{"role": "user", "content": "hi"}]}
COOLDOWN_S = 30.0


class Gate:
    """A transport whose calls wait until `release()` lets one of them fail with a timeout."""

    def __init__(self) -> None:
        self.waiting = 0
        self.gate: asyncio.Queue = asyncio.Queue()

    async def complete(self, target, payload, headers=None):
        self.waiting += 1
        await self.gate.get()
        self.waiting -= 1
        raise UpstreamError("timeout", "no answer within 1s", model=target.name)

    async def stream(self, target, payload, headers=None):
        raise NotImplementedError
        yield

    def release(self, n: int = 1) -> None:
        for _ in range(n):
            self.gate.put_nowait(None)

    async def aclose(self) -> None:
        pass


def opened_total(metrics: Metrics, model: str) -> float:
    value = metrics.registry.get_sample_value("sigroute_breaker_opened_total", {"model": model})
    return value or 0.0


def upstreams_for(policy: dict, transports=None) -> tuple[Upstreams, ManualClock, Metrics]:
    metrics = Metrics()
    upstreams = Upstreams(Policy.model_validate(policy), observer=metrics, transports=transports)
    clock = ManualClock()
    for breaker in upstreams.breakers.values():
        breaker.clock = clock
    return upstreams, clock, metrics


def sim_policy(sim, models=("alpha", "beta"), threshold: int = 1, retries: int = 0) -> dict:
    return base_policy(sim, decisions=[{"name": "default", "models": list(models)}],
                       upstream={"retries": retries, "backoff_s": 0.0,
                                 "breaker": {"failure_threshold": threshold, "cooldown_s": COOLDOWN_S}})


def raw_policy(server: RawServer, threshold: int = 1, retries: int = 0) -> dict:
    return {"version": 1,
            "models": {"m": {"provider": "openai/m", "api_base": f"http://127.0.0.1:{server.port}/v1"}},
            "decisions": [{"name": "default", "models": ["m"]}],
            "upstream": {"retries": retries, "backoff_s": 0.0, "backoff_max_s": 2.0,
                         "breaker": {"failure_threshold": threshold, "cooldown_s": COOLDOWN_S}}}


# one opening per episode ------------------------------------------------------------------------------


def test_failures_of_calls_in_flight_when_it_opened_neither_reopen_nor_restart_the_cooldown():
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=5, cooldown_s=COOLDOWN_S, clock=clock)
    permits = [breaker.permit() for _ in range(18)]  # a slow episode: 18 calls in flight
    assert all(p.granted for p in permits)
    openings = []
    for i, permit in enumerate(permits):  # they time out one per second
        if permit.failed():
            openings.append(i)
        clock.now += 1
    assert openings == [4]  # the fifth failure opened the circuit; the 13 after it changed nothing
    opened_at = 1000.0 + 4
    clock.now = opened_at + COOLDOWN_S - 0.5
    assert breaker.state == "open" and breaker.retry_in_s() == pytest.approx(0.5)
    clock.now = opened_at + COOLDOWN_S  # the cooldown ran from the opening, not from the last failure
    assert breaker.state == "half_open" and breaker.permit().trial


async def test_a_slow_episode_is_one_opening_in_the_metric():
    """18 calls in flight time out: one `breaker_opened`, one `sigroute_breaker_opened_total`."""
    gate = Gate()
    policy = {"version": 1, "models": {"m": {"provider": "openai/m", "api_base": "http://127.0.0.1:9/v1"}},
              "decisions": [{"name": "default", "models": ["m"]}],
              "upstream": {"retries": 0, "breaker": {"failure_threshold": 5, "cooldown_s": COOLDOWN_S}}}
    upstreams, clock, metrics = upstreams_for(policy, transports={"openai": gate})
    calls = [asyncio.ensure_future(upstreams.call(["m"], PAYLOAD, False)) for _ in range(18)]
    while gate.waiting < 18:
        await asyncio.sleep(0)
    gate.release(18)
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, UpstreamFailed) for r in results)
    assert upstreams.breakers["m"].state == "open"
    assert opened_total(metrics, "m") == 1.0
    assert upstreams.breakers["m"].episodes == 1


def test_failed_trial_reopens_within_the_episode_and_a_later_outage_is_a_new_one():
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=COOLDOWN_S, clock=clock)
    assert not breaker.permit().failed()
    assert breaker.permit().failed()  # episode 1 begins
    clock.now += COOLDOWN_S
    trial = breaker.permit()
    assert trial.trial
    clock.now += 3
    assert not trial.failed()  # re-opened, but the same episode
    assert breaker.state == "open"
    clock.now += COOLDOWN_S - 1
    assert breaker.state == "open"  # the cooldown restarted at the failed trial
    clock.now += 1
    trial = breaker.permit()
    trial.succeeded()
    assert breaker.state == "closed"
    assert (breaker.episodes, breaker.reopenings) == (1, 1)
    assert not breaker.permit().failed()
    assert breaker.permit().failed()  # a new outage: episode 2
    assert breaker.episodes == 2


def test_verdicts_of_calls_from_before_the_last_change_are_ignored():
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, cooldown_s=COOLDOWN_S, clock=clock)
    early, late = breaker.permit(), breaker.permit()
    assert breaker.permit().failed()  # opens
    early.succeeded()  # began before the opening: says nothing about now
    assert breaker.state == "open"
    clock.now += COOLDOWN_S
    breaker.permit().succeeded()  # the trial closes the circuit
    assert breaker.state == "closed"
    assert not late.failed()  # began before the closing: does not re-open it
    assert breaker.state == "closed" and breaker.failures == 0


# 429: back pressure, not a fault -------------------------------------------------------------------------


async def test_429_holds_the_model_for_its_retry_after_then_it_is_back(sim):
    upstreams, clock, metrics = upstreams_for(sim_policy(sim, threshold=1))
    try:
        sim.faults("alpha", rate_limit_rate=1.0)  # 429 with retry-after: 1
        result = await upstreams.call(["alpha", "beta"], PAYLOAD, False)
        assert result.model == "beta" and result.attempts[0].error.kind == "rate_limited"
        assert upstreams.breaker_states()["alpha"] == "rate_limited"
        result = await upstreams.call(["alpha", "beta"], PAYLOAD, False)  # held: not called, beta answers
        assert result.model == "beta" and "rate-limited" in result.attempts[0].skipped
        assert sim.calls("alpha") == 1
        sim.faults("alpha")
        clock.now += 0.99
        assert not upstreams.available(["alpha"])
        clock.now += 0.01  # exactly the second the upstream asked for
        assert upstreams.available(["alpha"])
        assert (await upstreams.call(["alpha", "beta"], PAYLOAD, False)).model == "alpha"
        assert opened_total(metrics, "alpha") == 0.0
        assert upstreams.breakers["alpha"].episodes == 0
    finally:
        await upstreams.aclose()


async def test_seven_429s_do_not_count_toward_the_threshold(sim):
    upstreams, clock, metrics = upstreams_for(sim_policy(sim, threshold=5))
    try:
        sim.faults("alpha", rate_limit_rate=1.0)
        for _ in range(7):
            assert (await upstreams.call(["alpha", "beta"], PAYLOAD, False)).model == "beta"
            clock.now += 1  # each hold over: the next call tries alpha again
        assert sim.calls("alpha") == 7
        breaker = upstreams.breakers["alpha"]
        assert breaker.state == "closed" and breaker.failures == 0
        assert opened_total(metrics, "alpha") == 0.0
        sim.faults("alpha", error_rate=1.0)  # real failures still count
        for _ in range(5):
            await upstreams.call(["alpha", "beta"], PAYLOAD, False)
        assert breaker.state == "open" and opened_total(metrics, "alpha") == 1.0
    finally:
        await upstreams.aclose()


async def test_429_without_retry_after_holds_for_the_default():
    async def limited(server, conn_no, n, body, writer):
        if n == 1:
            writer.write(reply(b'{"error": {"message": "slow down"}}', "429 Too Many Requests"))
        else:
            writer.write(reply(b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}'))
        await writer.drain()

    async with RawServer(limited) as server:
        upstreams, clock, _ = upstreams_for(raw_policy(server, threshold=1))
        try:
            with pytest.raises(RateLimited) as refused:  # the only candidate is rate-limited: 429, not 502
                await upstreams.call(["m"], PAYLOAD, False)
            assert refused.value.headers["retry-after"] == "1"
            clock.now += RATE_LIMIT_DEFAULT_S - 0.01
            assert upstreams.breaker_states()["m"] == "rate_limited"
            assert upstreams.retry_in_s(["m"]) == pytest.approx(0.01)
            clock.now += 0.01
            assert upstreams.breaker_states()["m"] == "closed"
            assert (await upstreams.call(["m"], PAYLOAD, False)).model == "m"
            assert len(server.requests) == 2
        finally:
            await upstreams.aclose()


async def test_short_retry_after_still_retries_the_same_model():
    async def limited_once(server, conn_no, n, body, writer):
        if len(server.requests) == 1:
            writer.write(reply(b'{"error": {"message": "slow down"}}', "429 Too Many Requests",
                               "retry-after: 0.05\r\n"))
        else:
            writer.write(reply(b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}'))
        await writer.drain()

    async with RawServer(limited_once) as server:
        # the real clock: the call sleeps the 50 ms the upstream asked for, then the hold is over
        upstreams = Upstreams(Policy.model_validate(raw_policy(server, threshold=1, retries=1)))
        try:
            result = await upstreams.call(["m"], PAYLOAD, False)
            assert result.model == "m" and len(server.requests) == 2
            assert [a.error.kind for a in result.attempts] == ["rate_limited"]
            assert upstreams.breaker_states()["m"] == "closed"
        finally:
            await upstreams.aclose()


def test_rate_limited_model_is_not_reported_open(sim, gateway_factory):
    policy = sim_policy(sim, threshold=1)
    gw = gateway_factory(policy)
    sim.faults("alpha", rate_limit_rate=1.0)
    assert gw.chat("hi").headers["x-sigroute-model"] == "beta"
    assert gw.http.get("/ready").json()["models"]["alpha"] != "open"
    assert 'sigroute_breaker_opened_total{model="alpha"}' not in gw.http.get("/metrics").text
    assert 'sigroute_upstream_errors_total{kind="rate_limited",model="alpha"} 1.0' in gw.http.get("/metrics").text


async def test_litellm_transport_reports_the_upstreams_retry_after():
    """Models called through litellm are held back for what their upstream asked for, too."""
    from sigroute.gateway.upstream import LiteLLMTransport, ModelTarget
    from sigroute.policies.schema import ModelSpec

    async def limited(server, conn_no, n, body, writer):
        writer.write(reply(b'{"error": {"message": "slow down", "type": "rate_limit_error"}}',
                           "429 Too Many Requests", "retry-after: 2\r\n"))
        await writer.drain()

    async with RawServer(limited) as server:
        target = ModelTarget.resolve("m", ModelSpec(provider="hosted_vllm/m", transport="litellm",
                                                    api_base=f"http://127.0.0.1:{server.port}/v1"))
        with pytest.raises(UpstreamError) as info:
            await LiteLLMTransport().complete(target, PAYLOAD)
        assert (info.value.kind, info.value.retry_after_s) == ("rate_limited", 2.0)
