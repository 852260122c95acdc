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
11. learn      the selector sees the outcome (latency, time to first token, success); a
               learning decision keeps a pending record so that quality feedback arriving later
               (POST /v1/feedback) is credited to the model that answered

`Pipeline` is built once per loaded policy and is immutable apart from learned state; a reload
builds a new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

import orjson

from bandits.base import Choice, Reward
from bandits.contextual import ContextualSelector, quality_from_feedback
from bandits.registry import build_selector
from bandits.store import MemoryPendingStore, MemoryStateStore
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
    request_id: str = ""


@dataclass
class Answer:
    """What the HTTP layer sends back: a JSON body or an SSE stream, plus headers."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    on_close: list[Any] = field(default_factory=list)


def needs_encoder(policy: Policy) -> bool:
    """Whether some declared signal or some bandit's features read embeddings (then the encoder is
    loaded with the policy)."""
    from bandits.features import LEARNED_GROUPS

    for key in policy.signals.declared():
        cls = SIGNAL_TYPES.get(key.split(":", 1)[0])
        if cls is not None and cls.needs_embedding:
            return True
    for decision in policy.decisions:
        groups = getattr(decision.algorithm.options, "features", ())
        if any(g.name in LEARNED_GROUPS for g in groups):
            return True
    return False


class Pipeline:
    def __init__(self, policy: Policy, metrics: Metrics, *, environ: Mapping[str, str] | None = None,
                 transports=None, rate_limiter: RateLimiter | None = None, previous: "Pipeline | None" = None,
                 state_store=None, pending_store=None, decision_log=None):
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
        self.resources = resources
        self.signals = SignalEngine(policy, resources=resources)
        # learning state and pending feedback outlive reloads: the app owns the stores
        self.state_store = state_store if state_store is not None else (
            previous.state_store if previous is not None else MemoryStateStore())
        self.pending_store = pending_store if pending_store is not None else (
            previous.pending_store if previous is not None else MemoryPendingStore())
        self.decision_log = decision_log  # bandits.replay.DecisionLog: learning decisions, for `sigroute replay`
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
                    and all(previous.policy.models[m] == models[m] for m in decision.models)
                    and not isinstance(previous.selectors[decision.name], ContextualSelector)):
                return previous.selectors[decision.name]
        selector = build_selector(decision.algorithm, models, resources=self.resources, decision=decision.name)
        if isinstance(selector, ContextualSelector) and previous is not None:
            old_selector = previous.selectors.get(decision.name)
            if isinstance(old_selector, ContextualSelector):
                selector.adopt(old_selector)  # same schema: models kept keep what they learned
        return selector

    @property
    def learners(self) -> dict[str, ContextualSelector]:
        return {name: sel for name, sel in self.selectors.items() if isinstance(sel, ContextualSelector)}

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
        selector = self.selectors[decision.name]
        texts = selector.embedding_texts(ctx)
        if texts:
            await ctx.ensure_embeddings(texts)
        choice = selector.select(candidates, ctx)
        return Route(model, decision, decision.name, outcome.confidence, outcome, results, candidates, choice,
                     ctx.request_id)

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
        await self._keep_for_feedback(route, result.model, request_id)
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
            choice = dataclasses.replace(choice, model=result.model)
        reward = Reward(model=result.model, ok=ok, latency_ms=latency_ms, ttft_ms=result.ttft_ms,
                        cost_usd=cost, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        at=time.time())
        selector = self.selectors[route.decision_name]
        try:
            selector.update(choice, reward)
            if self.decision_log is not None and isinstance(selector, ContextualSelector) and choice.context is not None:
                self.decision_log.decision(
                    request_id=route.request_id, tenant=choice.tenant or "default", decision=route.decision_name,
                    algorithm=selector.name, schema=selector.schema_id, candidates=route.candidates,
                    model=route.choice.model, answered_by=result.model, propensity=route.choice.propensity,
                    context=choice.context, reward=selector.immediate_reward(reward))
        except Exception:  # learning must never fail a request
            log.exception("selector update failed for decision %s", route.decision_name)
        for attempt in result.attempts:  # failed attempts teach the selector too
            if attempt.error is not None:
                failed = dataclasses.replace(route.choice, model=attempt.model)
                try:
                    self.selectors[route.decision_name].update(
                        failed, Reward(model=attempt.model, ok=False, at=time.time()))
                except Exception:
                    log.exception("selector update failed for decision %s", route.decision_name)

    async def _keep_for_feedback(self, route: Route, model: str, request_id: str) -> None:
        """A learning decision's answer waits for quality feedback in the pending store."""
        if route.decision is None:
            return
        selector = self.selectors.get(route.decision_name)
        if not isinstance(selector, ContextualSelector):
            return
        record = selector.pending_record(route.choice, model)
        if record is None:
            return
        try:
            await self.pending_store.put(request_id, record, selector.options.reward.feedback_ttl_s)
        except Exception as exc:  # the answer still goes out; this request just cannot get feedback
            self.metrics.bandit_store_errors.labels("pending_put").inc()
            log.warning("could not keep request %s for feedback: %s", request_id, exc)

    # feedback ------------------------------------------------------------------------------------
    async def feedback(self, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """POST /v1/feedback {request_id, score | thumbs | label}: credit the answer's quality."""
        principal = await self.admit(headers)
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the feedback body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest('send a JSON object: {"request_id": "...", "score": 0..1 | "thumbs": "up"|"down" '
                                 '| "label": "correct"|"incorrect"}', code="invalid_feedback")
        unknown = sorted(set(body) - {"request_id", "score", "thumbs", "label", "comment"})
        if unknown:
            raise InvalidRequest(f"unknown feedback field(s): {', '.join(unknown)}; use request_id, score, thumbs, "
                                 "label", param=unknown[0], code="invalid_feedback")
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequest("request_id is required: the x-sigroute-request-id header of the answer",
                                 param="request_id", code="invalid_feedback")
        try:
            quality = quality_from_feedback(body.get("score"), body.get("thumbs"), body.get("label"))
        except ValueError as exc:
            param = next((k for k in ("score", "thumbs", "label") if k in body), "score")
            raise InvalidRequest(str(exc), param=param, code="invalid_feedback") from None
        try:
            status, record = await self.pending_store.claim(request_id, principal.tenant, f"{quality:.6f}")
        except Exception as exc:
            self.metrics.bandit_store_errors.labels("pending_claim").inc()
            raise Unavailable(f"the feedback store is unreachable, feedback was NOT recorded; retry later ({exc})",
                              code="feedback_store_unavailable") from None
        self.metrics.feedback.labels(status).inc()
        if status == "unknown":
            raise NotFound(f"no answer '{request_id}' is waiting for feedback: the id is unknown, its feedback "
                           "window has passed, or it was not routed by a learning decision",
                           param="request_id", code="unknown_request_id")
        if status == "conflict":
            raise APIError(f"feedback for '{request_id}' was already recorded with a different value; "
                           "feedback is accepted once per answer", status=409, type="invalid_request_error",
                           param="request_id", code="feedback_conflict")
        out = {"object": "feedback", "request_id": request_id, "status": "recorded" if status == "applied" else "duplicate",
               "quality": quality, "decision": record.get("decision"), "model": record.get("model")}
        if status == "applied":
            selector = self.selectors.get(record.get("decision"))
            if isinstance(selector, ContextualSelector) and selector.schema_id == record.get("schema"):
                change = selector.credit(record, quality)
                out["learned"] = True
                if self.decision_log is not None:
                    self.decision_log.feedback(request_id=request_id, quality=quality, credit=change)
            else:  # the decision changed since the answer was routed: the old state is not this one
                out["learned"] = False
                out["reason"] = "the decision's algorithm or features changed since this request was routed"
        return out

    async def sync_learning(self) -> None:
        """Exchange learned statistics with the state store (called periodically by the app)."""
        ok = True
        for name, selector in self.learners.items():
            try:
                await selector.sync(self.state_store)
            except Exception as exc:
                ok = False
                self.metrics.bandit_store_errors.labels("sync").inc()
                log.warning("learning state of decision %s not synced (%s); serving from the last known state",
                            name, exc)
        self.metrics.bandit_store_up.set(1 if ok else 0)

    async def load_learning(self) -> None:
        """Load every tenant's stored state for this policy's learning decisions (at start-up)."""
        for name, selector in self.learners.items():
            try:
                prefix = "t="
                for key in await self.state_store.keys(prefix):
                    parts = dict(p.split("=", 1) for p in key.split("/") if "=" in p)
                    if (parts.get("d") == name and parts.get("a") == selector.name
                            and parts.get("s") == selector.schema_id):
                        await selector.load_tenant(self.state_store, parts["t"])
            except Exception as exc:
                self.metrics.bandit_store_errors.labels("load").inc()
                self.metrics.bandit_store_up.set(0)
                log.warning("learning state of decision %s not loaded (%s); starting from the last known state",
                            name, exc)

    def sync_interval(self) -> float | None:
        intervals = [sel.options.sync_interval_s for sel in self.learners.values()]
        return min(intervals) if intervals else None

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
            selector = self.selectors[decision.name]
            texts = selector.embedding_texts(ctx)
            if texts:
                await ctx.ensure_embeddings(texts)
            picked = selector.select(candidates, ctx)
            choice = picked.as_dict()
            if isinstance(selector, ContextualSelector) and picked.context is not None:
                choice["features"] = selector.features.explain(picked.context)
                choice["learned"] = selector.snapshot(picked.tenant or "default")
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
