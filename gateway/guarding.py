"""How `guard` signals call their guard model: through the policy's `Upstreams`, like routed requests.

`GuardCalls` is the `signals.guard.GuardBackend` the pipeline hands to its signal engine. A guard
call is an ordinary non-streamed chat completion to the guard model (one of the policy's
`models:`), so its api_base, API key, transport, retries and circuit breaker are the ones any
call to that model gets; there is no second HTTP client. With tracing on, each guard attempt is a
CLIENT span of the request ("chat <guard model>"), like a routed model's. It also counts each guard evaluation in
`sigroute_guard_requests_total{signal,outcome}` and times real calls in `sigroute_guard_seconds`.
"""

from __future__ import annotations

from typing import Any

from sigroute.gateway.metrics import Metrics
from sigroute.gateway.tracing import NO_TRACE
from sigroute.gateway.upstream import Upstreams
from sigroute.signals.guard import MalformedVerdict


class GuardAnswerUnreadable(MalformedVerdict):
    """The guard model's answer has no text content."""


class GuardCalls:
    def __init__(self, upstreams: Upstreams, metrics: Metrics):
        self.upstreams = upstreams
        self.metrics = metrics

    async def complete(self, model: str, messages: list[dict[str, str]], max_tokens: int, request_id: str,
                       trace=None) -> str:
        payload: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                                   "temperature": 0}
        result = await self.upstreams.call([model], payload, False, request_id=request_id,
                                           trace=trace if trace is not None else NO_TRACE)
        try:
            content = result.body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise GuardAnswerUnreadable("the guard's answer has no choices[0].message.content") from None
        if not isinstance(content, str):
            raise GuardAnswerUnreadable("the guard's answer content is not text")
        return content

    def observe(self, signal: str, outcome: str, seconds: float | None) -> None:
        self.metrics.guard_requests.labels(signal, outcome).inc()
        if seconds is not None:
            self.metrics.guard_seconds.labels(signal).observe(seconds)
