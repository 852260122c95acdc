"""Calling a ranked list of models: retries, fallback, a breaker and a load count per model.

`Upstreams.call` tries the ranking in order. Each model is tried up to ``1 + retries`` times on
retryable failures (connection errors, timeouts, 429, 5xx, broken streams) with exponential
backoff and jitter (honouring a short ``Retry-After``), then the next model is tried. A model
whose circuit is open (`breaker.CircuitBreaker`) is skipped without a call. A caller's mistake
reported by the upstream (400, 413, 422) is returned as it is, with the upstream's error code:
another model would not fix the request; so is a body that cannot be serialized (400
``invalid_request_body``, no model called). A rejection that is the model's own goes on to the
next candidate instead (and is returned only if no later candidate answers): one that says so
(``context_length_exceeded``: another model may have a larger window), or one from a fallback
model after an earlier candidate took the request as valid and failed otherwise.

A 429 is back pressure, not a fault: it does not count toward the model's breaker; the model is
held back for the ``Retry-After`` the upstream sent (`breaker.RATE_LIMIT_DEFAULT_S` without one),
so that every call meanwhile falls back to the next candidate, and is back as soon as it ends.
The call that got the 429 moves on at once when a later candidate is available; it waits for the
hold and retries the same model only when that model is the last one left (no later candidate
available, or every later one failed) and the hold is no longer than ``backoff_max_s`` (and the
model has retries left). When rate limits (and open circuits) are all that stood in the way, the
caller gets 429 ``upstream_rate_limited`` with ``Retry-After``: the seconds until the soonest
candidate is back, so that clients (the official ``openai`` client retries a 429 after its
``Retry-After``) back off instead of retrying into the same limit.

Every attempt holds its breaker `Permit` and its `CountedCall` (in-flight count) as context managers,
so no exit (an unexpected exception, a cancellation, a caller's mistake) leaves a half-open trial
taken or a model counted busy. A whole answer holds nothing once `call` returns. A stream is
committed once its first chunk has arrived (failures before that retry and fall back like whole
answers); it then takes both over and gives them back when closed (`stream.UpstreamStream`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

from sigroute.gateway.errors import APIError, InvalidRequest, RateLimited, UpstreamFailed, Unavailable
from sigroute.gateway.tracing import NO_TRACE
from sigroute.gateway.upstream.anthropic_messages import AnthropicMessagesTransport
from sigroute.gateway.upstream.breaker import CircuitBreaker, Permit
from sigroute.gateway.upstream.errors import UpstreamError
from sigroute.gateway.upstream.litellm_transport import LiteLLMTransport
from sigroute.gateway.upstream.load import ModelLoad
from sigroute.gateway.upstream.openai_compatible import OpenAICompatibleTransport
from sigroute.gateway.upstream.stream import UpstreamStream
from sigroute.gateway.upstream.targets import HeaderChanges, ModelTarget, Transport, payload_for
from sigroute.policies.schema import Policy

__all__ = ["Upstreams", "CallResult", "Attempt", "Observer"]

log = logging.getLogger("sigroute.upstream")


@dataclass
class Attempt:
    """One model of the ranking that did not answer: it failed (`error`) or was skipped (`skipped`)."""

    model: str
    error: UpstreamError | None = None
    skipped: str | None = None  # why the model was not tried (e.g. "circuit open")
    held_back: bool = False  # skipped because an earlier 429 still holds the model back

    @property
    def rate_limited(self) -> bool:
        """The model answered 429, or was not called because an earlier 429 holds it back."""
        return self.held_back or (self.error is not None and self.error.kind == "rate_limited")


@dataclass
class CallResult:
    """The answer of `Upstreams.call`: a whole `body`, or a committed `stream` to close.

    An async context manager: leaving it closes the stream (a no-op for whole answers).
    """

    model: str
    attempts: list[Attempt] = field(default_factory=list)
    ttft_ms: float = 0.0
    upstream_ms: float = 0.0  # time spent waiting on upstreams, retries and backoff included
    body: dict[str, Any] | None = None  # whole answer (stream=False); nothing is held after call() returns
    stream: UpstreamStream | None = None  # streamed answer

    async def aclose(self) -> None:
        """Release what the answer holds (idempotent)."""
        if self.stream is not None:
            await self.stream.aclose()

    async def __aenter__(self) -> "CallResult":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.aclose()


class Observer(Protocol):
    def upstream_error(self, model: str, kind: str) -> None: ...

    def fallback(self, from_model: str, to_model: str) -> None: ...

    def breaker_opened(self, model: str) -> None:
        """`model`'s circuit opened: called once per episode (a failed half-open trial re-opens the
        circuit within the same episode and is not reported again)."""

    def breaker_closed(self, model: str) -> None:
        """`model`'s circuit closed again: a half-open trial succeeded, the episode is over."""


class _NoObserver:
    def upstream_error(self, model, kind):
        pass

    def fallback(self, from_model, to_model):
        pass

    def breaker_opened(self, model):
        pass

    def breaker_closed(self, model):
        pass


@dataclass
class _Call:
    """One `Upstreams.call` in progress: what it sends and what happened so far."""

    payload: dict[str, Any]
    stream: bool
    headers: HeaderChanges | None
    request_id: str
    started: float  # time.perf_counter()
    trace: Any  # the request's spans (`gateway.tracing`): one per attempt
    attempts: list[Attempt] = field(default_factory=list)
    previous: str | None = None  # the model called last
    rejected: InvalidRequest | None = None  # a model-specific rejection, answered if no one else answers


def _failed_before(attempts: Sequence[Attempt], model: str) -> bool:
    """Whether a model before `model` in this call failed otherwise than by rejecting the request:
    it took the request as valid, so a rejection by `model` is `model`'s own."""
    return any(a.error is not None and a.model != model and a.error.kind != "client" for a in attempts)


class Upstreams:
    """The policy's models, ready to call, with retries, fallback, a breaker and a load count each."""

    def __init__(self, policy: Policy, observer: Observer | None = None, environ: Mapping[str, str] = os.environ,
                 transports: Mapping[str, Transport] | None = None, rng: random.Random | None = None):
        self.targets = {name: ModelTarget.resolve(name, spec, environ) for name, spec in policy.models.items()}
        settings = policy.upstream
        self.retries = settings.retries
        self.backoff_s = settings.backoff_s
        self.backoff_max_s = settings.backoff_max_s
        self.breakers = {name: CircuitBreaker(settings.breaker.failure_threshold, settings.breaker.cooldown_s)
                         for name in policy.models}
        self.load = ModelLoad()
        self.transports: dict[str, Transport] = dict(transports or {})
        if "openai" not in self.transports:  # reads the egress proxy settings of `environ` once
            self.transports["openai"] = OpenAICompatibleTransport(environ=environ)
        if "anthropic" not in self.transports:
            self.transports["anthropic"] = AnthropicMessagesTransport(environ=environ)
        if "litellm" not in self.transports:
            self.transports["litellm"] = LiteLLMTransport()
        self.observer = observer or _NoObserver()
        self.rng = rng or random.Random()

    # the models' state ---------------------------------------------------------------------------

    def adopt_breakers(self, previous: "Upstreams", policy: Policy) -> None:
        """After a reload: keep the circuit state of models whose definition did not change."""
        for name, breaker in previous.breakers.items():
            old = previous.targets.get(name)
            if name in self.breakers and old is not None and old.spec == policy.models[name]:
                breaker.failure_threshold = policy.upstream.breaker.failure_threshold
                breaker.cooldown_s = policy.upstream.breaker.cooldown_s
                self.breakers[name] = breaker

    def available(self, models: Sequence[str]) -> list[str]:
        """The models a call may be sent to now (circuit closed, or half-open with no trial running)."""
        return [m for m in models if self.breakers[m].available()]

    def saturated(self, models: Sequence[str], bound) -> bool:
        """Every available model of `models` is busy per `bound` (a policy's `LoadAwareCache`)."""
        return self.load.saturated(self.available(models), bound)

    def retry_in_s(self, models: Sequence[str]) -> float:
        """Seconds until the soonest of `models` may be tried again (0 if one may be now)."""
        return min((self.breakers[m].retry_in_s() for m in models), default=0.0)

    def refusal(self, models: Sequence[str], whose: str) -> APIError:
        """The caller's error when none of `models` (`whose`: e.g. "decision 'default'") may be
        called now: 429 ``upstream_rate_limited`` when an upstream's 429 holds one of them back, else
        503 ``all_circuits_open``; both with ``Retry-After``, the seconds until the soonest is back
        (rounded up, at least 1)."""
        retry_after = str(max(1, math.ceil(self.retry_in_s(models))))
        states = {m: self.breakers[m].state for m in models}
        listed = ", ".join(f"{m}: {state}" for m, state in states.items())
        if "rate_limited" in states.values():
            return RateLimited(f"every candidate model of {whose} is rate-limited by its upstream or out of service "
                               f"({listed}); retry in {retry_after}s", code="upstream_rate_limited",
                               headers={"retry-after": retry_after})
        return Unavailable(f"every candidate model of {whose} is failing and temporarily taken out of service "
                           f"({listed}); retry in {retry_after}s", code="all_circuits_open",
                           headers={"retry-after": retry_after})

    def breaker_states(self) -> dict[str, str]:
        return {name: b.state for name, b in self.breakers.items()}

    def connections_in_use(self) -> int:
        """Upstream connections in use by calls and streams right now, over the transports that
        keep their own pool (litellm's connections are litellm's and are not counted)."""
        return sum(getattr(t, "connections_in_use", lambda: 0)() for t in self.transports.values())

    # calling -------------------------------------------------------------------------------------

    def _backoff(self, attempt: int, error: UpstreamError, held_s: float | None) -> float | None:
        """Delay before retrying the same model, or None to move on to the next one. `held_s`: how
        long the model is held back after a 429 (retrying sooner would find it unavailable)."""
        wait = held_s if held_s is not None else error.retry_after_s
        if wait is not None:
            return wait if wait <= self.backoff_max_s else None
        delay = min(self.backoff_max_s, self.backoff_s * (2 ** attempt))
        return delay * (0.5 + self.rng.random() / 2)

    def _failed(self, error: UpstreamError, permit: Permit) -> float | None:
        """Report a failure and tell its model's breaker: a 429 holds the model back (returns the
        hold, seconds), any other failure that says something about the model counts against it."""
        self.observer.upstream_error(error.model, error.kind)
        if error.kind == "rate_limited":
            return permit.held_back(error.retry_after_s)
        if error.counts_against_model and permit.failed():
            self.observer.breaker_opened(error.model)
        return None

    def _succeeded(self, model: str, permit: Permit) -> None:
        """Give the model's breaker a success; report the closing if it was a half-open trial."""
        if permit.succeeded():
            self.observer.breaker_closed(model)

    async def call(self, ranking: Sequence[str], payload: dict[str, Any], stream: bool,
                   headers: HeaderChanges | None = None, request_id: str = "-", trace=NO_TRACE) -> CallResult:
        """Try `ranking` in order until one model answers; raise an `APIError` if none does.
        `headers` changes the headers of every upstream call (the `headers` plugin). A streamed
        result holds resources until closed: use it as ``async with`` (or `aclose()` it).

        A model that answers 429 with a hold short enough to wait for, while a later candidate is
        available, is left at once for that candidate; it is retried after its hold only if every
        other candidate fails (then it is the last one left).

        Every failed attempt is logged (WARNING, with `request_id`) with what the upstream said;
        the caller's error names each model's failure kind and HTTP status only, and the request id
        to find the details by: an upstream's error text may name internal hosts and ports."""
        call = _Call(payload, stream, headers, request_id, time.perf_counter(), trace)
        waiting: list[tuple[str, int]] = []  # (model, its next attempt): rate-limited, left for another candidate
        for i, model in enumerate(ranking):
            outcome = await self._try_model(call, model, 0, ranking[i + 1:])
            if isinstance(outcome, CallResult):
                return outcome
            if outcome is not None:
                waiting.append((model, outcome))
        # every other candidate failed: the models left because of a short 429 are the last ones
        while waiting:
            waiting.sort(key=lambda entry: self.breakers[entry[0]].retry_in_s())  # soonest back first
            model, next_attempt = waiting.pop(0)
            wait = self.breakers[model].retry_in_s()
            if wait > self.backoff_max_s:  # held back longer meanwhile (another call's 429)
                continue
            await self._sleep(self.breakers[model], wait)
            outcome = await self._try_model(call, model, next_attempt, [m for m, _ in waiting])
            if isinstance(outcome, CallResult):
                return outcome
            if outcome is not None:
                waiting.append((model, outcome))
        if call.rejected is not None:
            raise call.rejected
        raise self._exhausted(ranking, call.attempts, request_id)

    async def _try_model(self, call: "_Call", model: str, first_attempt: int,
                         others: Sequence[str]) -> CallResult | int | None:
        """Attempts `first_attempt`, `first_attempt` + 1, … on `model` until it answers or runs out
        of retries. Returns the answer; None to go on to the next candidate; or the number of the
        model's next attempt when it answered 429 with a hold short enough to wait for but one of
        `others` (the candidates not tried yet) is available now: the call goes on to them at once
        and comes back to this model only if they fail."""
        target = self.targets[model]
        transport = self.transports[target.transport]
        payload = payload_for(target, call.payload)   # (without what only a native Messages upstream reads)
        breaker = self.breakers[model]
        for attempt in range(first_attempt, self.retries + 1):
            delay = None
            with breaker.permit() as permit:
                if not permit.granted:
                    if attempt == 0:
                        held = breaker.state == "rate_limited"
                        why = "rate-limited by its upstream" if held else "circuit open"
                        call.attempts.append(Attempt(model, skipped=f"{why}, retry in {breaker.retry_in_s():.1f}s",
                                                     held_back=held))
                        call.trace.skipped(model, why)
                    return None
                if model != call.previous:
                    if call.previous is not None:
                        self.observer.fallback(call.previous, model)
                    call.previous = model
                with self.load.count(model) as counted, call.trace.attempt(target, attempt, call.stream) as traced:
                    try:
                        if call.stream:
                            chunks = transport.stream(target, payload, call.headers)
                            try:
                                first = await anext(chunks)
                            except StopAsyncIteration:
                                raise UpstreamError("stream_broken", "stream ended before any chunk",
                                                    model=model) from None
                            # committed: from here the stream holds the permit and the in-flight count
                            opened = UpstreamStream(model, first, chunks, permit.transfer(), counted.transfer(),
                                                    self._failed, self._succeeded)
                        else:
                            body = await transport.complete(target, payload, call.headers)
                    except UpstreamError as error:
                        error.model = model
                        traced.failed(error)
                        call.attempts.append(Attempt(model, error=error))
                        if error.kind == "client":
                            log.warning("request %s: upstream model %s rejected the request: %s", call.request_id,
                                        model, error)
                            rejection = InvalidRequest(
                                f"model '{model}' rejected the request: {error.message}",
                                status=error.status if error.status in (400, 413, 422) else 400,
                                code=error.code or "upstream_rejected")
                            if not (error.model_specific or _failed_before(call.attempts, model)):
                                raise rejection from None
                            call.rejected = rejection  # this model's own verdict: the next one may take it
                            return None
                        held_s = self._failed(error, permit)
                        log.warning("request %s: upstream model %s failed: %s", call.request_id, model, error)
                        if error.retryable and attempt < self.retries:
                            delay = self._backoff(attempt, error, held_s)
                        if delay is None:
                            return None
                        if error.kind == "rate_limited" and self.available(others):
                            return attempt + 1  # another candidate can answer now: do not wait for this one
                    else:
                        traced.answered(first if call.stream else body)
                        now = time.perf_counter()
                        ttft_ms, upstream_ms = (now - counted.started) * 1000, (now - call.started) * 1000
                        if call.stream:
                            return CallResult(model, call.attempts, ttft_ms, upstream_ms, stream=opened)
                        self._succeeded(model, permit)
                        counted.succeeded()
                        return CallResult(model, call.attempts, ttft_ms, upstream_ms, body=body)
            await self._sleep(breaker, delay)  # holding neither the permit nor a place in flight
        return None

    async def _sleep(self, breaker: CircuitBreaker, delay: float) -> None:
        """Sleep `delay` before calling `breaker`'s model again, and on until its back-pressure hold
        is over if it is still held for a moment then: a timer may fire a little early (libuv's,
        under uvloop, count whole milliseconds), and a retry that found the model still held back
        would be given up."""
        await asyncio.sleep(delay)
        for _ in range(3):
            rest = breaker.held_for_s()
            if not 0 < rest <= self.backoff_max_s:
                return
            await asyncio.sleep(rest + 0.001)

    def _exhausted(self, ranking: Sequence[str], attempts: list[Attempt], request_id: str = "-") -> APIError:
        """The caller's error when no candidate answered: 429 ``upstream_rate_limited`` when rate
        limits (429s now or holds from earlier ones) and open circuits are all that stood in the
        way, 503 ``all_circuits_open`` when no candidate could be called at all, else 502
        ``upstream_failed`` (504 ``upstream_timeout`` if every failure was a timeout). The 429 and
        503 carry ``Retry-After``: the seconds until the soonest candidate is back (rounded up)."""
        errors = [a.error for a in attempts if a.error is not None]
        soonest = self.retry_in_s(ranking)
        retry_after = max(1, math.ceil(soonest))
        why = "; ".join(a.error.summary() if a.error else f"{a.model}: {a.skipped}" for a in attempts)
        where = f" (details in the gateway log under request {request_id})"
        if any(a.rate_limited for a in attempts) and all(a.rate_limited or a.error is None for a in attempts):
            return RateLimited(
                f"every candidate model ({', '.join(ranking)}) is rate-limited by its upstream or out of service "
                f"({why}); retry in {retry_after}s" + (where if errors else ""),
                code="upstream_rate_limited", headers={"retry-after": str(retry_after)})
        if not errors:
            return Unavailable(
                f"every candidate model ({', '.join(ranking)}) is temporarily out of service ({why}); "
                f"retry in {retry_after}s",
                code="all_circuits_open", headers={"retry-after": str(retry_after)})
        if all(e.kind == "timeout" for e in errors):
            return UpstreamFailed(f"every candidate model timed out: {why}{where}", status=504,
                                  code="upstream_timeout")
        return UpstreamFailed(f"every candidate model failed: {why}{where}", code="upstream_failed")

    async def aclose(self) -> None:
        for transport in self.transports.values():
            await transport.aclose()
