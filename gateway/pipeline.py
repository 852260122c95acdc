"""The request journey, step by step (see DESIGN.md). Each step is one call into the module that owns it:

 1. auth       API key → principal; the caller's request rate limit          gateway.auth, gateway.ratelimit
 2. context    the checked OpenAI body → RequestContext; the caller's token rate limit reserves
               the request's estimated tokens (settled with the real usage when the request
               gives back what it holds)                                      gateway.openai_wire, signals.context
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
               and the hash of the answer it served, so that a follow-up turn (right after
               step 2: a re-ask, a "that's wrong", or moving on) credits it  gateway.implicit;
               a sampled answer is judged, a sampled request copied to an
               unchosen candidate, in the background (never for private text)  gateway.judging
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
from sigroute.bandits.tradeoff import TRADEOFF_HEADER
from sigroute.cache.semantic import SemanticCache, SingleFlight
from sigroute.cache.store import MemoryDocumentStore
from sigroute.gateway import explain
from sigroute.gateway.activity import Activity
from sigroute.gateway.answering import Answer, Answering
from sigroute.gateway.auth import Authenticator
from sigroute.gateway.caching import Caching
from sigroute.gateway.errors import APIError, RateLimited, Unavailable
from sigroute.gateway.guarding import GuardCalls
from sigroute.gateway.implicit import ImplicitFeedback, MemoryServedAnswers
from sigroute.gateway.judging import BackgroundFeedback
from sigroute.gateway.journey import Journey
from sigroute.gateway.learning import Learning
from sigroute.gateway.metrics import Metrics
from sigroute.gateway.openai_wire import take_tradeoff
from sigroute.gateway.ratelimit import (RateLimiter, RateLimitStoreUnavailable, TokenEstimate, bucket_owner,
                                        ratelimit_headers, tokens_used)
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


def has_token_limits(policy: Policy) -> bool:
    """Whether some caller's rate limit counts tokens (then every request's prompt is counted)."""
    limits = [policy.server.rate_limit, *(key.rate_limit for key in (policy.auth.keys if policy.auth else ()))]
    return any(limit is not None and limit.tokens_per_minute is not None for limit in limits)


class Pipeline:
    def __init__(self, policy: Policy, metrics: Metrics, *, environ: Mapping[str, str] | None = None,
                 transports=None, rate_limiter: RateLimiter | None = None, previous: "Pipeline | None" = None,
                 state_store=None, pending_store=None, decision_log=None, semantic_cache: SemanticCache | None = None,
                 flights: SingleFlight | None = None, activity: Activity | None = None, tracer_provider=None,
                 served_answers=None):
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
        self.upstreams = Upstreams(policy, observer=metrics, environ=env, transports=transports)
        self.signals = SignalEngine(policy, resources=self.resources,
                                    guard_backend=GuardCalls(self.upstreams, metrics))   # guard signals' calls
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
        # answers served to each user, for implicit feedback from follow-up turns: app-wide, kept across reloads
        served = _given_or_kept(served_answers, previous and previous.implicit.store, MemoryServedAnswers)
        self.implicit = ImplicitFeedback(policy, served, self.learning, metrics, self.embedder)
        # judged feedback and shadow traffic: background calls after an answer (policy feedback.judge / .shadow)
        self.background = BackgroundFeedback(policy, self.upstreams, self.learning, metrics)
        self.answering = Answering(self.plugins, self.caching, self.learning, metrics, self.activity, self.implicit,
                                   self.background if self.background.enabled else None)
        self.tracing = Tracing.build(policy.server.tracing, env, provider=tracer_provider,
                                     previous=previous.tracing if previous is not None else None)
        if previous is None:
            self._set_idle_ttls()
        if has_token_limits(policy):   # load the tokenizer now, not in the first limited request (~1 s)
            from sigroute.signals.tokens import encoding

            encoding()

    def _set_idle_ttls(self) -> None:
        """The policy's idle TTLs on the app-wide stores (learned state, cached answers): set by the
        first pipeline, then by each reloaded one when it takes over."""
        server = self.policy.server
        for store, ttl in ((self.learning.state_store, server.learned_state_idle_ttl),
                           (self.learning.semantic_cache.store, server.cache_idle_ttl)):
            if hasattr(store, "idle_ttl_s"):
                store.idle_ttl_s = ttl

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
        self._set_idle_ttls()

    def warm(self) -> None:
        """Run what a first request would otherwise pay for (one encoder pass), in the calling
        thread: a reload calls it off the event loop before the swap."""
        if self.embedder is not None:
            self.embedder.encoder.encode(["sigroute warm-up"])

    def idle(self) -> bool:
        """No upstream call or stream of this pipeline is running."""
        return not any(self.upstreams.load.in_flight.values())

    # 1 + 2 ---------------------------------------------------------------------------------------
    async def admit(self, headers: Mapping[str, str], journey: Journey | None = None):
        """Step 1: the caller, after its request rate limit. With a `journey`, its limit and the
        x-ratelimit-*-requests headers are kept on it."""
        principal, limit = self.auth.authenticate(headers)
        if journey is not None:
            journey.rate_limit = limit
        if limit is not None and limit.requests_per_minute is not None:
            spent = await self._rate_check(self.rate_limiter.check_requests(bucket_owner(principal, limit), limit))
            if spent is not None:
                out = ratelimit_headers("requests", limit.requests_per_minute, spent)
                if spent.wait > 0:
                    self.metrics.rate_limited.labels(principal.tenant).inc()
                    raise RateLimited(f"rate limit of {limit.requests_per_minute:g} requests/minute exceeded; "
                                      f"retry in {spent.wait:.2f}s", code="rate_limit_exceeded",
                                      headers={"retry-after": str(max(1, int(spent.wait + 0.999))), **out})
                if journey is not None:
                    journey.response_headers.update(out)
        return principal

    async def reserve_tokens(self, journey: Journey, held: AsyncExitStack) -> None:
        """Step 2's token limit: reserve the request's estimated tokens (429 when the caller's token
        bucket lacks them); `held` settles the reservation with the real usage when it closes."""
        limit, ctx = journey.rate_limit, journey.ctx
        if limit is None or limit.tokens_per_minute is None:
            return
        estimate = TokenEstimate(ctx.prompt_tokens, ctx.max_output_tokens or limit.completion_tokens_estimate)
        key = bucket_owner(journey.principal, limit)
        spent = await self._rate_check(self.rate_limiter.reserve_tokens(key, limit, estimate.total))
        if spent is None:        # the store is unavailable and the policy fails open
            return
        out = ratelimit_headers("tokens", limit.tokens_per_minute, spent)
        if spent.wait > 0:
            self.metrics.rate_limited.labels(journey.principal.tenant).inc()
            raise RateLimited(f"token rate limit of {limit.tokens_per_minute:g} tokens/minute exceeded: this request "
                              f"needs about {estimate.total} tokens ({estimate.prompt} prompt + {estimate.completion} "
                              f"completion, from max_tokens or the limit's completion_tokens_estimate), "
                              f"{max(0, int(spent.remaining))} remain; retry in {spent.wait:.2f}s",
                              code="rate_limit_exceeded",
                              headers={"retry-after": str(max(1, int(spent.wait + 0.999))), **out})
        journey.response_headers.update(out)
        journey.token_estimate = estimate
        if ctx.stream:
            journey.streamed_text = []   # counted at the end when the stream brings no usage
        held.push_async_callback(self._settle_tokens, journey, key, limit, estimate)

    async def _settle_tokens(self, journey: Journey, key: str, limit: RateLimit, estimate: TokenEstimate) -> None:
        """Take what the request really used beyond its reservation, or give the rest back."""
        used = tokens_used(journey, estimate)
        if used == estimate.total:
            return
        try:
            await self.rate_limiter.settle_tokens(key, limit, used - estimate.total)
        except RateLimitStoreUnavailable as exc:
            self.metrics.rate_limit_store_errors.labels("unsettled").inc()
            self._warn_store_down(exc, "token reservations left unsettled")

    async def _rate_check(self, check):
        """The rate limiter's answer (`check`, awaited); when its shared store cannot be reached,
        None (`server.rate_limit_store_failure: open`: admitted unchecked) or 503 (`closed`)."""
        try:
            return await check
        except RateLimitStoreUnavailable as exc:
            refuse = self.policy.server.rate_limit_store_failure == "closed"
            self.metrics.rate_limit_store_errors.labels("refused" if refuse else "allowed").inc()
            self._warn_store_down(exc, "requests refused" if refuse else "requests admitted")
            if refuse:
                raise Unavailable("rate limits cannot be checked right now (their store is unavailable); retry in 1s",
                                  code="rate_limit_store_unavailable", headers={"retry-after": "1"}) from None
            return None

    def _warn_store_down(self, exc: Exception, meanwhile: str) -> None:
        now = time.monotonic()
        if now - self._rate_store_warned_at >= 10.0:   # one log line per 10 s, not one per request
            self._rate_store_warned_at = now
            log.warning("rate limits unchecked, %s meanwhile: %s", meanwhile, exc)

    async def context(self, raw: bytes, headers: Mapping[str, str], principal, request_id: str,
                      surface: Surface = CHAT) -> RequestContext:
        """The request in the pipeline's internal form (a checked chat-completions body), translated
        once from the surface it came in by."""
        if len(raw) > self.max_request_bytes:
            raise APIError(f"request body of {len(raw)} bytes exceeds the limit of {self.max_request_bytes}",
                           status=413, type="invalid_request_error", code="request_too_large")
        body = await surface.request(raw, principal, self.policy.server)
        dial = take_tradeoff(body, headers)   # the caller's cost/quality dial (bandits.tradeoff)
        ctx = RequestContext.from_body(request_id, body, headers, principal, self.embedder)
        ctx.tradeoff = dial
        return ctx

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
            journey.principal = await self.admit(headers, journey)                                 # 1
            ctx = journey.ctx = await self.context(raw, headers, journey.principal,                # 2
                                                   journey.request_id, surface)
            await self.reserve_tokens(journey, held)                                               # 2 (tokens)
            journey.encoder = surface.encoder(ctx.body, journey.request_id, journey.principal)
            await self.implicit.follow_up(journey)                                                 # 11 (earlier answer)
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
        if journey.route.choice.tradeoff is not None:   # what became of the caller's cost/quality dial
            journey.response_headers[TRADEOFF_HEADER] = journey.route.choice.tradeoff
        fallbacks = sum(1 for a in result.attempts if a.error is not None or a.skipped)
        if fallbacks:
            journey.response_headers["x-sigroute-attempts"] = str(fallbacks + 1)

    # the other endpoints -------------------------------------------------------------------------
    async def feedback(self, raw: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        """POST /v1/feedback: quality of an earlier answer, credited to the selector that chose it.
        Limited per caller by `server.feedback_rate_limit`, apart from the chat rate limit."""
        principal = await self.admit(headers)
        limit = self.policy.server.feedback_rate_limit
        spent = await self._rate_check(self.rate_limiter.check_requests(principal.key_id + "#feedback", limit))
        wait = spent.wait if spent is not None else 0.0
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
        await self.background.aclose()
        await self.upstreams.aclose()
        if self.tracing.enabled:
            await asyncio.to_thread(self.tracing.release)   # flushes the last spans


def _given_or_kept(given, kept, make):
    """A store passed in, else the previous pipeline's (after a reload), else a new in-memory one."""
    if given is not None:
        return given
    return kept if kept is not None else make()
