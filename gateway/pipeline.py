"""The request journey, step by step (see DESIGN.md):

 1. auth       API key → principal; the caller's rate limit
 2. context    the checked OpenAI body → RequestContext
 3. signals    only the signals some decision reads
 4. decide     rule trees → the winning decision (or a direct model, if the policy allows it)
 5. plugins    (per decision; later issues add them)
 6. cache      (later issue)
 7. select     the decision's algorithm ranks the healthy candidates that fit the prompt
 8. upstream   call the ranking in order: retries, fallback, breakers
 9. plugins    (post)
10. cache      (later issue)
11. learn      the selector sees the outcome (latency, time to first token, success)

`Pipeline` is built once per loaded policy and is immutable apart from learned state; a reload
builds a new one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

import orjson

from bandits.base import Choice, Reward
from bandits.registry import build_selector
from gateway.auth import Authenticator
from gateway.errors import APIError, InvalidRequest, NotFound, RateLimited, Unavailable
from gateway.metrics import Metrics
from gateway.openai_wire import SSE_DONE, parse_chat_request, sse_event, stream_error_event
from gateway.ratelimit import RateLimiter
from gateway.upstream import CallResult, UpstreamError, Upstreams
from policies.rules import DecisionEngine, Outcome
from policies.schema import Decision, Policy
from signals.context import RequestContext
from signals.encoder import RequestEmbedder, shared_encoder
from signals.engine import SignalEngine
from signals.learned import SignalResources
from signals.registry import SIGNAL_TYPES

log = logging.getLogger("sigroute.pipeline")

DIRECT = "direct"  # decision name reported when a caller names a concrete model


@dataclass
class Route:
    """Where a request goes, before any upstream call."""

    entrypoint: str | None
    decision: Decision | None  # None: a direct model call
    decision_name: str
    confidence: float
    outcome: Outcome | None
    signals: dict[str, Any]
    candidates: list[str]
    choice: Choice


@dataclass
class Answer:
    """What the HTTP layer sends back: a JSON body or an SSE stream, plus headers."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    on_close: list[Any] = field(default_factory=list)


def needs_encoder(policy: Policy) -> bool:
    """Whether some declared signal reads embeddings (then the encoder is loaded with the policy)."""
    for key in policy.signals.declared():
        cls = SIGNAL_TYPES.get(key.split(":", 1)[0])
        if cls is not None and cls.needs_embedding:
            return True
    return False


class Pipeline:
    def __init__(self, policy: Policy, metrics: Metrics, *, environ: Mapping[str, str] | None = None,
                 transports=None, rate_limiter: RateLimiter | None = None, previous: "Pipeline | None" = None):
        import os

        self.policy = policy
        self.metrics = metrics
        env = os.environ if environ is None else environ
        self.auth = Authenticator(policy.auth, policy.server.rate_limit, environ=env)
        self.rate_limiter = rate_limiter or RateLimiter()
        self.embedder = None
        resources = None
        if needs_encoder(policy):
            spec = policy.encoder
            encoder = shared_encoder(spec.model, device=spec.device, max_tokens=spec.max_tokens,
                                     max_batch=spec.max_batch, max_wait_ms=spec.max_wait_ms)
            self.embedder = RequestEmbedder(encoder, spec.input, spec.long_input)
            resources = SignalResources(encoder, policy.domains)
        self.signals = SignalEngine(policy, resources=resources)
        self.engines: dict[str, DecisionEngine] = {}
        for name, entry in policy.entrypoints.items():
            chosen = [d for d in policy.decisions if entry.decisions is None or d.name in entry.decisions]
            self.engines[name] = DecisionEngine(chosen, policy.default_decision,
                                                entry.strategy or policy.routing.strategy)
        self.selectors = {d.name: self._selector(d, previous) for d in policy.decisions}
        self.upstreams = Upstreams(policy, observer=metrics, environ=env, transports=transports)
        if previous is not None:
            self.upstreams.adopt_breakers(previous.upstreams, policy)
            self.rate_limiter = rate_limiter or previous.rate_limiter
        self.max_request_bytes = policy.server.max_request_bytes
        self._window_checks = any(spec.context_window for spec in policy.models.values())

    def _selector(self, decision: Decision, previous: "Pipeline | None"):
        """Build the decision's selector, keeping a reloaded decision's learned state when its
        algorithm and candidate models are unchanged."""
        models = {m: self.policy.models[m] for m in decision.models}
        if previous is not None and decision.name in previous.selectors:
            try:
                old = previous.policy.decision(decision.name)
            except KeyError:
                old = None
            if (old is not None and old.algorithm == decision.algorithm and old.models == decision.models
                    and all(previous.policy.models[m] == models[m] for m in decision.models)):
                return previous.selectors[decision.name]
        return build_selector(decision.algorithm, models)

    # 1 + 2 ---------------------------------------------------------------------------------------
    async def admit(self, headers: Mapping[str, str]):
        principal, limit = self.auth.authenticate(headers)
        if limit is not None:
            wait = await self.rate_limiter.check(principal.key_id, limit)
            if wait > 0:
                self.metrics.rate_limited.labels(principal.tenant).inc()
                raise RateLimited(f"rate limit of {limit.requests_per_minute:g} requests/minute exceeded; "
                                  f"retry in {wait:.2f}s", code="rate_limit_exceeded",
                                  headers={"retry-after": str(max(1, int(wait + 0.999)))})
        return principal

    def context(self, raw: bytes, headers: Mapping[str, str], principal, request_id: str) -> RequestContext:
        if len(raw) > self.max_request_bytes:
            raise APIError(f"request body of {len(raw)} bytes exceeds the limit of {self.max_request_bytes}",
                           status=413, type="invalid_request_error", code="request_too_large")
        body = parse_chat_request(raw)
        return RequestContext.from_body(request_id, body, headers, principal, self.embedder)

    # 3 + 4 + 7 -----------------------------------------------------------------------------------
    async def route(self, ctx: RequestContext) -> Route:
        model = ctx.model
        engine = self.engines.get(model)
        if engine is None:
            if model in self.policy.models and self.policy.routing.allow_direct_models:
                choice = Choice(model, 1.0, {model: 1.0}, (model,))
                return Route(None, None, DIRECT, 1.0, None, {}, [model], choice)
            offered = list(self.engines) + (list(self.policy.models) if self.policy.routing.allow_direct_models else [])
            raise NotFound(f"model '{model}' is not offered here; use one of: {', '.join(offered)}",
                           param="model", code="model_not_found")
        results = await self.signals.evaluate(ctx)
        for key, result in results.items():
            if result.value.__class__ is dict and "error" in result.value:  # failed: counted as unmatched
                self.metrics.signal_errors.labels(key).inc()
        outcome = engine.choose(results)
        decision = outcome.winner
        candidates = self.candidates(decision, ctx)
        choice = self.selectors[decision.name].select(candidates, ctx)
        return Route(model, decision, decision.name, outcome.confidence, outcome, results, candidates, choice)

    def candidates(self, decision: Decision, ctx: RequestContext) -> list[str]:
        """The decision's models that are healthy and whose context window fits the request."""
        models = list(decision.models)
        if self._window_checks:
            need = None
            fitting = []
            for m in models:
                window = self.policy.models[m].context_window
                if window is None:
                    fitting.append(m)
                    continue
                if need is None:
                    need = ctx.prompt_tokens + (ctx.max_output_tokens or 0)
                if need <= window:
                    fitting.append(m)
            if not fitting:
                largest = max(self.policy.models[m].context_window or 0 for m in models)
                raise InvalidRequest(
                    f"the request needs {need} tokens (prompt + max_tokens) but the largest context window "
                    f"among decision '{decision.name}''s models is {largest}; shorten the conversation",
                    param="messages", code="context_length_exceeded")
            models = fitting
        healthy = self.upstreams.available(models)
        if not healthy:
            soonest = min(self.upstreams.breakers[m].retry_in_s() for m in models)
            raise Unavailable(
                f"every candidate model of decision '{decision.name}' ({', '.join(models)}) is failing and "
                f"temporarily taken out of service; retry in {soonest:.0f}s",
                code="all_circuits_open", headers={"retry-after": str(max(1, round(soonest)))})
        return healthy

    # the whole journey ---------------------------------------------------------------------------
    async def handle(self, raw: bytes, headers: Mapping[str, str], started: float) -> Answer:
        request_id = "req_" + uuid.uuid4().hex
        principal = await self.admit(headers)
        ctx = self.context(raw, headers, principal, request_id)
        route = await self.route(ctx)
        self.metrics.decisions.labels(route.entrypoint or DIRECT, route.decision_name).inc()
        self.metrics.selected.labels(route.decision_name, route.choice.model).inc()
        out_headers = {
            "x-sigroute-request-id": request_id,
            "x-sigroute-decision": route.decision_name,
            "x-sigroute-confidence": f"{route.confidence:.3f}",
        }
        if headers.get("x-sigroute-debug") in ("1", "true"):
            out_headers["x-sigroute-signals"] = orjson.dumps(
                {k: [r.matched, round(r.confidence, 3)] for k, r in route.signals.items()}).decode()
        payload = dict(ctx.body)
        result = await self.upstreams.call(route.choice.ranking, payload, ctx.stream)
        fallbacks = sum(1 for a in result.attempts if a.error is not None or a.skipped)
        out_headers["x-sigroute-model"] = result.model
        if fallbacks:
            out_headers["x-sigroute-attempts"] = str(fallbacks + 1)
        if not ctx.stream:
            return self._whole_answer(ctx, route, result, out_headers, started)
        return self._streamed_answer(ctx, route, result, out_headers, started)

    def _whole_answer(self, ctx, route: Route, result: CallResult, headers, started) -> Answer:
        body = result.body
        body["model"] = result.model
        encoded = orjson.dumps(body)
        elapsed = time.perf_counter() - started
        overhead = max(0.0, elapsed - result.upstream_ms / 1000)
        headers["x-sigroute-overhead-ms"] = f"{overhead * 1000:.3f}"
        self._learn(route, result, ok=True, latency_ms=elapsed * 1000, usage=body.get("usage"))
        self.metrics.overhead.observe(overhead)
        self.metrics.latency.labels(route.decision_name).observe(elapsed)
        self.metrics.requests.labels(route.entrypoint or DIRECT, route.decision_name, result.model, "200").inc()
        return Answer(200, headers, body=encoded)

    def _streamed_answer(self, ctx, route: Route, result: CallResult, headers, started) -> Answer:
        now = time.perf_counter()
        overhead = max(0.0, (now - started) - result.upstream_ms / 1000)
        headers["x-sigroute-overhead-ms"] = f"{overhead * 1000:.3f}"
        self.metrics.overhead.observe(overhead)
        self.metrics.ttft.labels(route.decision_name).observe(now - started)
        model = result.model

        async def events() -> AsyncIterator[bytes]:
            usage = None
            error: UpstreamError | None = None
            status = "200"
            try:
                first = result.first_chunk
                first["model"] = model
                yield sse_event(first)
                async for chunk in result.chunks:
                    chunk["model"] = model
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    yield sse_event(chunk)
                yield SSE_DONE
            except UpstreamError as exc:
                error = exc
                status = "stream_broken"
                self.metrics.stream_breaks.labels(model).inc()
                yield stream_error_event(
                    f"the upstream model '{model}' failed mid-stream ({exc.kind}: {exc.message}); "
                    "the answer above is incomplete", code="stream_broken")
            except (asyncio.CancelledError, GeneratorExit):
                status = "client_disconnected"
                self.metrics.client_disconnects.inc()
                raise
            finally:
                await result.chunks.aclose()
                self.upstreams.record_stream_end(model, error)
                elapsed = time.perf_counter() - started
                self._learn(route, result, ok=error is None and status == "200", latency_ms=elapsed * 1000,
                            usage=usage)
                self.metrics.latency.labels(route.decision_name).observe(elapsed)
                self.metrics.requests.labels(route.entrypoint or DIRECT, route.decision_name, model, status).inc()

        return Answer(200, headers, stream=events())

    # 11 ------------------------------------------------------------------------------------------
    def _learn(self, route: Route, result: CallResult, ok: bool, latency_ms: float, usage: Any) -> None:
        if route.decision is None:
            return
        prompt_tokens = completion_tokens = None
        cost = None
        if isinstance(usage, dict):
            prompt_tokens = usage.get("prompt_tokens")
            completion_tokens = usage.get("completion_tokens")
            price = self.policy.models[result.model].price
            if isinstance(prompt_tokens, int) and isinstance(completion_tokens, int):
                cost = (prompt_tokens * price.input + completion_tokens * price.output) / 1e6
        choice = route.choice
        if choice.model != result.model:  # a fallback answered: credit the model that did
            choice = Choice(result.model, choice.propensity, choice.scores, choice.ranking)
        reward = Reward(model=result.model, ok=ok, latency_ms=latency_ms, ttft_ms=result.ttft_ms,
                        cost_usd=cost, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        at=time.time())
        try:
            self.selectors[route.decision_name].update(choice, reward)
        except Exception:  # learning must never fail a request
            log.exception("selector update failed for decision %s", route.decision_name)
        for attempt in result.attempts:  # failed attempts teach the selector too
            if attempt.error is not None:
                failed = Choice(attempt.model, route.choice.propensity, route.choice.scores, route.choice.ranking)
                try:
                    self.selectors[route.decision_name].update(
                        failed, Reward(model=attempt.model, ok=False, at=time.time()))
                except Exception:
                    log.exception("selector update failed for decision %s", route.decision_name)

    # explain -------------------------------------------------------------------------------------
    async def explain(self, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        principal = await self.admit(headers)
        ctx = self.context(raw, headers, principal, "explain_" + uuid.uuid4().hex[:12])
        started = time.perf_counter()
        model = ctx.model
        if model not in self.engines:
            route = await self.route(ctx)
            return {"entrypoint": None, "model": model, "direct": True, "decision": DIRECT,
                    "selection": route.choice.as_dict()}
        results, timings = await self._all_signals(ctx)
        engine = self.engines[model]
        outcome = engine.choose(results)
        decision = outcome.winner
        try:
            candidates = self.candidates(decision, ctx)
            choice = self.selectors[decision.name].select(candidates, ctx).as_dict()
            selection_error = None
        except APIError as exc:
            candidates, choice, selection_error = [], None, exc.message
        return {
            "entrypoint": model,
            "strategy": outcome.strategy,
            "signals": {k: {**r.as_dict(), "ms": round(timings.get(k, 0.0), 4),
                            "used_by_rules": k in self.signals.used}
                        for k, r in results.items()},
            "decisions": [v.as_dict() for v in outcome.verdicts],
            "winner": {"decision": decision.name, "confidence": round(outcome.confidence, 4),
                       "default": outcome.fell_back_to_default, "models": list(decision.models),
                       "algorithm": decision.algorithm.name, "candidates": candidates,
                       "selection": choice, "selection_error": selection_error},
            "prompt_tokens": ctx.prompt_tokens,
            "embedding_ms": round(timings["embedding"], 3) if "embedding" in timings else None,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    async def _all_signals(self, ctx):
        out = self.signals.evaluate_all(ctx)
        if asyncio.iscoroutine(out):
            out = await out
        return out

    async def aclose(self) -> None:
        await self.upstreams.aclose()
