"""The request journey, step by step (see DESIGN.md). Each step is one call into the module that owns it:

 1. auth       API key → principal; the caller's rate limit                  gateway.auth, gateway.ratelimit
 2. context    the checked OpenAI body → RequestContext                       gateway.openai_wire, signals.context
 3. signals    only the signals some decision reads                          gateway.routing → signals.engine
 4. decide     rule trees → the winning decision (or a direct model)         gateway.routing → policies.rules
 5. plugins    the decision's plugins before the call; one may block or reroute   plugins.chain
 6. cache      exact, then semantic, within the request's isolation partition;
               or the answer of an identical request already in flight      gateway.caching → cache
 7. select     the decision's algorithm ranks the healthy candidates that fit   gateway.routing → bandits
 8. upstream   call the ranking in order: retries, fallback, breakers        gateway.upstream
 9. plugins    on every answer (model or cache): hallucination check, response guard, PII restore
10. cache      keep a complete answer; hand it to the identical requests waiting
11. learn      the selector sees the outcome; a learning decision keeps a pending record for
               quality feedback (POST /v1/feedback)                           gateway.learning
Steps 9–11 run as the answer goes out                                        gateway.answering

With tracing on, the request is a span and each step a child span (`gateway.tracing`); off, the
trace's calls do nothing.

Everything a request holds — the single-flight lease that identical requests wait on, the upstream
call with its breaker trial and in-flight count, the upstream stream — is entered on one exit stack,
`held`, and given back when it closes: when `handle` returns or raises for a whole answer, when the
stream ends (finished, broken, abandoned, never begun) for a streamed one. No exit path can leak it.

`Pipeline` is built once per loaded policy and is immutable apart from learned state; a reload
builds a new one (learned state, pending feedback and cached answers live in app-wide stores).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from contextlib import AsyncExitStack
from typing import Any, Mapping

import orjson

from sigroute.bandits.store import MemoryPendingStore, MemoryStateStore
from sigroute.cache.semantic import SemanticCache, SingleFlight
from sigroute.cache.store import MemoryDocumentStore
from sigroute.gateway import explain
from sigroute.gateway.activity import Activity
from sigroute.gateway.answering import Answer, Answering
from sigroute.gateway.auth import Authenticator
from sigroute.gateway.caching import Caching
from sigroute.gateway.errors import APIError, RateLimited, Unavailable
from sigroute.gateway.journey import Journey
from sigroute.gateway.learning import Learning
from sigroute.gateway.metrics import Metrics
from sigroute.gateway.ratelimit import RateLimiter, RateLimitStoreUnavailable
from sigroute.gateway.routing import Router, build_selectors
from sigroute.gateway.surface import CHAT, Surface
from sigroute.gateway.tracing import Tracing
from sigroute.gateway.upstream import Upstreams
from sigroute.plugins.chain import PolicyPlugins, needs_encoder as plugins_need_encoder
from sigroute.policies.schema import Policy, RateLimit
from sigroute.signals.context import RequestContext
from sigroute.signals.encoder import RequestEmbedder, shared_encoder
from sigroute.signals.engine import SignalEngine
from sigroute.signals.learned import SignalResources
from sigroute.signals.registry import SIGNAL_TYPES

__all__ = ["Answer", "Pipeline", "needs_encoder"]

log = logging.getLogger("sigroute.gateway")


def needs_encoder(policy: Policy) -> bool:
    """Whether some declared signal, bandit feature, cache or plugin reads embeddings (then the
    encoder is loaded with the policy)."""
    from sigroute.bandits.features import LEARNED_GROUPS

    for key, config in policy.signals.declared().items():
        cls = SIGNAL_TYPES.get(key.split(":", 1)[0])
        if cls is not None and (cls.needs_embedding or getattr(cls, "config_needs_encoder", lambda c: False)(config)):
            return True
    for decision in policy.decisions:
        groups = getattr(decision.algorithm.options, "features", ())
        if any(g.name in LEARNED_GROUPS for g in groups):
            return True
        if decision.cache is not None and decision.cache.needs_embedding():
            return True
        if plugins_need_encoder(decision):
            return True
    return False


class Pipeline:
    def __init__(self, policy: Policy, metrics: Metrics, *, environ: Mapping[str, str] | None = None,
                 transports=None, rate_limiter: RateLimiter | None = None, previous: "Pipeline | None" = None,
                 state_store=None, pending_store=None, decision_log=None, semantic_cache: SemanticCache | None = None,
                 flights: SingleFlight | None = None, activity: Activity | None = None, tracer_provider=None):
        env = os.environ if environ is None else environ
        self.policy = policy
        self.metrics = metrics
        self.max_request_bytes = policy.server.max_request_bytes
        self.auth = Authenticator(policy.auth, policy.server.rate_limit, environ=env,
                                  open_without_auth=policy.server.open_without_auth)
        self.rate_limiter = rate_limiter or (previous.rate_limiter if previous is not None else RateLimiter())
        self._rate_store_warned_at = float("-inf")
        self.embedder = self.resources = None
        if needs_encoder(policy):
            spec = policy.encoder
            encoder = shared_encoder(spec.model, device=spec.device, max_tokens=spec.max_tokens,
                                     backend=spec.backend, max_batch=spec.max_batch, max_wait_ms=spec.max_wait_ms)
            self.embedder = RequestEmbedder(encoder, spec.input, spec.long_input)
            self.resources = SignalResources(encoder, policy.domains)
        self.signals = SignalEngine(policy, resources=self.resources)
        self.upstreams = Upstreams(policy, observer=metrics, environ=env, transports=transports)
        self.selectors = build_selectors(policy, self.resources)
        self.router = Router(policy, self.signals, self.selectors, self.upstreams, metrics)
        self.plugins = PolicyPlugins(policy, self.resources)
        # learned state, pending feedback and cached answers outlive reloads: the app owns the stores
        kept = previous.learning if previous is not None else None
        self.learning = Learning(
            policy, self.selectors, metrics, decision_log=decision_log,
            state_store=_given_or_kept(state_store, kept and kept.state_store, MemoryStateStore),
            pending_store=_given_or_kept(pending_store, kept and kept.pending_store, MemoryPendingStore),
            semantic_cache=_given_or_kept(semantic_cache, kept and kept.semantic_cache,
                                          lambda: SemanticCache(MemoryDocumentStore())))
        flights = _given_or_kept(flights, previous and previous.caching.flights, SingleFlight)
        self.caching = Caching(policy, self.learning.semantic_cache, flights, self.resources, self.upstreams, metrics)
        # what the operator's dashboard shows of recent requests: app-wide, kept across reloads
        self.activity = _given_or_kept(activity, previous and previous.activity, Activity)
        self.answering = Answering(self.plugins, self.caching, self.learning, metrics, self.activity)
        self.tracing = Tracing.build(policy.server.tracing, env, provider=tracer_provider,
                                     previous=previous.tracing if previous is not None else None)

    def take_over(self, previous: "Pipeline") -> None:
        """After a reload, right before this pipeline replaces `previous`: keep what it learned
        (each decision's selector adopts its predecessor's state) and its circuit breakers'
        state for models that did not change. Cheap; runs on the event loop at the swap, so
        nothing learned in between is missed. (Shared stores and the cache were handed over when
        this pipeline was built.)"""
        for name, selector in self.selectors.items():
            if name in previous.selectors:
                selector.adopt(previous.selectors[name])
        self.upstreams.adopt_breakers(previous.upstreams, self.policy)

    def warm(self) -> None:
        """Run what a first request would otherwise pay for (one encoder pass), in the calling
        thread: a reload calls it off the event loop before the swap."""
        if self.embedder is not None:
            self.embedder.encoder.encode(["sigroute warm-up"])

    def idle(self) -> bool:
        """No upstream call or stream of this pipeline is running."""
        return not any(self.upstreams.load.in_flight.values())

    # 1 + 2 ---------------------------------------------------------------------------------------
    async def admit(self, headers: Mapping[str, str]):
        principal, limit = self.auth.authenticate(headers)
        if limit is not None:
            wait = await self._rate_check(principal.key_id, limit)
            if wait > 0:
                self.metrics.rate_limited.labels(principal.tenant).inc()
                raise RateLimited(f"rate limit of {limit.requests_per_minute:g} requests/minute exceeded; "
                                  f"retry in {wait:.2f}s", code="rate_limit_exceeded",
                                  headers={"retry-after": str(max(1, int(wait + 0.999)))})
        return principal

    async def _rate_check(self, key: str, limit: RateLimit) -> float:
        """The rate limiter's answer (0: go ahead, else seconds to wait); when its shared store cannot
        be reached, admit (`server.rate_limit_store_failure: open`) or refuse with 503 (`closed`)."""
        try:
            return await self.rate_limiter.check(key, limit)
        except RateLimitStoreUnavailable as exc:
            refuse = self.policy.server.rate_limit_store_failure == "closed"
            self.metrics.rate_limit_store_errors.labels("refused" if refuse else "allowed").inc()
            now = time.monotonic()
            if now - self._rate_store_warned_at >= 10.0:   # one log line per 10 s, not one per request
                self._rate_store_warned_at = now
                log.warning("rate limits unchecked, requests %s meanwhile: %s",
                            "refused" if refuse else "admitted", exc)
            if refuse:
                raise Unavailable("rate limits cannot be checked right now (their store is unavailable); retry in 1s",
                                  code="rate_limit_store_unavailable", headers={"retry-after": "1"}) from None
            return 0.0

    async def context(self, raw: bytes, headers: Mapping[str, str], principal, request_id: str,
                      surface: Surface = CHAT) -> RequestContext:
        """The request in the pipeline's internal form (a checked chat-completions body), translated
        once from the surface it came in by."""
        if len(raw) > self.max_request_bytes:
            raise APIError(f"request body of {len(raw)} bytes exceeds the limit of {self.max_request_bytes}",
                           status=413, type="invalid_request_error", code="request_too_large")
        body = await surface.request(raw, principal, self.policy.server)
        return RequestContext.from_body(request_id, body, headers, principal, self.embedder)

    # the whole journey ---------------------------------------------------------------------------
    async def handle(self, raw: bytes, headers: Mapping[str, str], started: float,
                     surface: Surface = CHAT) -> Answer:
        """One request from its bytes to its answer; `surface` is the API it came in by (its
        request is translated into the internal form once, and the answer back once)."""
        journey = Journey(headers, started, api=surface.api)
        try:
            return await self._journey(journey, raw, surface)
        except APIError as exc:
            self.answering.failed(journey, exc)   # (a routed request's failure, for the dashboard)
            raise

    async def _journey(self, journey: Journey, raw: bytes, surface: Surface) -> Answer:
        headers = journey.headers
        trace = journey.trace = self.tracing.start(journey)                                        # spans
        async with AsyncExitStack() as held:   # what the request holds; a stream takes it over below
            held.push(trace.close)             # the request's span ends last, when all is given back
            journey.principal = await self.admit(headers)                                          # 1
            ctx = journey.ctx = await self.context(raw, headers, journey.principal,                # 2
                                                   journey.request_id, surface)
            journey.encoder = surface.encoder(ctx.body, journey.request_id, journey.principal)
            route = journey.route = await self.router.decide(ctx, trace=trace)                     # 3 + 4
            with trace.step("plugins"):
                blocked = await self._plugins_before(journey)                                      # 5
            if blocked is not None:
                return await self.answering.blocked(journey, blocked)
            with trace.step("cache"):
                cached = await self.caching.lookup(journey, held)                                  # 6
            if cached is not None:
                with trace.step("answer"):
                    return await self.answering.cached(journey, cached)                            # 9
            with trace.step("select"):
                choice = await self.router.select(route, journey.ctx)                              # 7
            self.metrics.selected.labels(route.decision_name, choice.model).inc()
            journey.result = await self.upstreams.call(choice.ranking, dict(journey.ctx.body),     # 8
                                                       journey.ctx.stream,
                                                       self.plugins.upstream_headers(route.decision_name),
                                                       journey.request_id, trace)
            held.push_async_callback(journey.result.aclose)
            self._answered_by(journey)
            await self.learning.keep_for_feedback(journey)                                         # 11 (pending)
            if journey.ctx.stream:
                return self.answering.streamed(journey, held)                                      # 9–11, streamed
            with trace.step("answer"):
                return await self.answering.whole(journey)                                         # 9, 10, 11

    async def _plugins_before(self, journey: Journey):
        """Step 5, and the headers every answer of a routed request carries."""
        route, out = journey.route, journey.response_headers
        journey.ctx, blocked, decision = await self.plugins.before(route.decision_name, journey.ctx, journey.plugins)
        if decision != route.decision_name:
            self.router.reroute(route, decision)
        for plugin, action, _ in journey.plugins.actions:
            self.metrics.plugin_actions.labels(route.decision_name, plugin, action).inc()
        self.metrics.decisions.labels(route.entrypoint_label, route.decision_name).inc()
        out["x-sigroute-request-id"] = journey.request_id
        out["x-sigroute-decision"] = route.decision_name
        out["x-sigroute-confidence"] = f"{route.confidence:.3f}"
        if journey.headers.get("x-sigroute-debug") in ("1", "true"):   # signal scores: for explain roles only
            if self.auth.may(journey.principal, "explain"):
                out["x-sigroute-signals"] = orjson.dumps(
                    {k: [r.matched, round(r.confidence, 3)] for k, r in route.signals.items()}).decode()
            else:
                out["x-sigroute-debug"] = "refused: needs an explain role (auth.explain_roles)"
        return blocked

    @staticmethod
    def _answered_by(journey: Journey) -> None:
        result = journey.result
        journey.response_headers["x-sigroute-model"] = result.model
        fallbacks = sum(1 for a in result.attempts if a.error is not None or a.skipped)
        if fallbacks:
            journey.response_headers["x-sigroute-attempts"] = str(fallbacks + 1)

    # the other endpoints -------------------------------------------------------------------------
    async def feedback(self, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """POST /v1/feedback: quality of an earlier answer, credited to the selector that chose it.
        Limited per caller by `server.feedback_rate_limit`, apart from the chat rate limit."""
        principal = await self.admit(headers)
        limit = self.policy.server.feedback_rate_limit
        wait = await self._rate_check(principal.key_id + "#feedback", limit) if limit is not None else 0
        if wait > 0:
            self.metrics.rate_limited.labels(principal.tenant).inc()
            raise RateLimited(f"feedback rate limit of {limit.requests_per_minute:g} per minute exceeded; retry in "
                              f"{wait:.2f}s", code="feedback_rate_limit_exceeded",
                              headers={"retry-after": str(max(1, int(wait + 0.999)))})
        return await self.learning.feedback(raw, principal, headers.get("idempotency-key"))

    async def explain(self, raw: bytes, headers: Mapping[str, str], surface: Surface = CHAT) -> dict[str, Any]:
        """POST /v1/route/explain: every signal, every decision's verdict and the choice, no model call."""
        return await explain.explain(self, raw, headers, surface)

    # learned state and lifecycle -----------------------------------------------------------------
    async def sync_learning(self) -> None:
        await self.learning.sync()

    async def load_learning(self) -> None:
        await self.learning.restore()

    def sync_interval(self) -> float | None:
        return self.learning.sync_interval()

    async def aclose(self) -> None:
        await self.upstreams.aclose()
        if self.tracing.enabled:
            await asyncio.to_thread(self.tracing.release)   # flushes the last spans


def _given_or_kept(given, kept, make):
    """A store passed in, else the previous pipeline's (after a reload), else a new in-memory one."""
    if given is not None:
        return given
    return kept if kept is not None else make()
