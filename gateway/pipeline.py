"""The request journey, step by step (see DESIGN.md):

 1. auth       API key → principal; the caller's rate limit
 2. context    the checked OpenAI body → RequestContext
 3. signals    only the signals some decision reads
 4. decide     rule trees → the winning decision (or a direct model, if the policy allows it)
 5. plugins    the decision's plugins before the call (plugins.chain: jailbreak, fast_response, pii,
               params, system_prompt, headers); one may block (no model call) or reroute
 6. cache      the decision's cache: exact, then semantic (verified) within the request's isolation
               partition; a hit is answered here (re-streamed for streams). On a miss, an identical
               request already in flight is waited for (single flight) instead of calling upstream
 7. select     the decision's algorithm ranks the healthy candidates that fit the prompt
 8. upstream   call the ranking in order: retries, fallback, breakers
 9. plugins    after the call, on every answer (model or cache): hallucination check, response
               guard, pii restoring masked values
10. cache      keep the answer if it is complete (never errors, truncated or broken streams) and the
               caller did not say no-store; hand it to the identical requests that waited
11. learn      the selector sees the outcome (latency, time to first token, success); a
               learning decision keeps a pending record so that quality feedback arriving later
               (POST /v1/feedback) is credited to the model that answered

`Pipeline` is built once per loaded policy and is immutable apart from learned state; a reload
builds a new one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Mapping

import orjson

from sigroute.bandits.base import Choice, Reward
from sigroute.bandits.contextual import ContextualSelector, quality_from_feedback
from sigroute.bandits.registry import build_selector
from sigroute.bandits.store import MemoryPendingStore, MemoryStateStore
from sigroute.cache.semantic import SemanticCache, SingleFlight
from sigroute.cache.store import MemoryDocumentStore
from sigroute.cache.service import CachePlan, ResponseCache
from sigroute.gateway.auth import Authenticator
from sigroute.gateway.errors import APIError, InvalidRequest, NotFound, RateLimited, Unavailable
from sigroute.gateway.metrics import Metrics
from sigroute.gateway.openai_wire import (SSE_DONE, StreamAssembler, complete_answer, completion_chunks, parse_chat_request,
                                 sse_event, stream_error_event)
from sigroute.gateway.ratelimit import RateLimiter
from sigroute.gateway.upstream import CallResult, UpstreamError, Upstreams
from sigroute.plugins.base import Blocked, PluginState, Reroute
from sigroute.plugins.chain import PluginChain, needs_encoder as plugins_need_encoder
from sigroute.policies.rules import DecisionEngine, Outcome
from sigroute.policies.schema import Decision, Policy
from sigroute.signals.context import RequestContext
from sigroute.signals.encoder import RequestEmbedder, shared_encoder
from sigroute.signals.engine import SignalEngine
from sigroute.signals.learned import SignalResources
from sigroute.signals.registry import SIGNAL_TYPES

log = logging.getLogger("sigroute.pipeline")

DIRECT = "direct"  # decision name reported when a caller names a concrete model
CACHE_FEEDBACK_TTL_S = 3600.0  # how long a cached answer can be reported wrong


@dataclass
class Route:
    """Where a request goes, before any upstream call."""

    entrypoint: str | None
    decision: Decision | None  # None: a direct model call
    decision_name: str
    confidence: float
    outcome: Outcome | None
    signals: dict[str, Any]
    candidates: list[str] = field(default_factory=list)
    choice: Choice | None = None   # set by `select` (step 7)
    request_id: str = ""


@dataclass
class Answer:
    """What the HTTP layer sends back: a JSON body or an SSE stream, plus headers."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    on_close: list[Any] = field(default_factory=list)  # coroutine functions the HTTP layer awaits when a
                                                        # stream is over (finished, broken or never begun)


def needs_encoder(policy: Policy) -> bool:
    """Whether some declared signal or some bandit's features read embeddings (then the encoder is
    loaded with the policy)."""
    from sigroute.bandits.features import LEARNED_GROUPS

    for key in policy.signals.declared():
        cls = SIGNAL_TYPES.get(key.split(":", 1)[0])
        if cls is not None and cls.needs_embedding:
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


def ready_answer(body: dict[str, Any], ctx: RequestContext, headers: dict[str, str]) -> Answer:
    """An answer sigroute already has (cached, or a plugin's): JSON, or SSE chunks if the request
    streamed (with the usage chunk when `stream_options.include_usage` asks for it)."""
    if not ctx.stream:
        return Answer(200, headers, body=orjson.dumps(body))
    chunks = completion_chunks(body, bool((ctx.body.get("stream_options") or {}).get("include_usage")))

    async def events() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield sse_event(chunk)
        yield SSE_DONE

    return Answer(200, headers, stream=events())


async def _through(filters, index: int, text: str, final: bool) -> str:
    for f in filters:
        text = f.feed(index, text)
        if final:
            tail = f.flush(index)
            text += await tail if inspect.isawaitable(tail) else tail
    return text


async def filter_chunk(chunk: dict[str, Any], filters) -> dict[str, Any]:
    """Run a streamed chunk's content deltas through the plugins' content filters; a choice's
    finish flushes what they held back into that chunk."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        text = delta.get("content")
        final = bool(choice.get("finish_reason"))
        if isinstance(text, str) or final:
            out = await _through(filters, choice.get("index", 0), text or "", final)
            if isinstance(text, str) or out:
                delta["content"] = out
    return chunk


async def flush_filters(filters, like: dict[str, Any]) -> list[dict[str, Any]]:
    """Chunks with whatever the filters still hold when a stream ends without a finish reason."""
    out = []
    indices = sorted({i for f in filters for i in f.pending_indices()})
    for index in indices:
        text = await _through(filters, index, "", True)
        if text:
            out.append({"id": like.get("id"), "object": "chat.completion.chunk", "created": like.get("created"),
                        "model": like.get("model"),
                        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}]})
    return out


class Pipeline:
    def __init__(self, policy: Policy, metrics: Metrics, *, environ: Mapping[str, str] | None = None,
                 transports=None, rate_limiter: RateLimiter | None = None, previous: "Pipeline | None" = None,
                 state_store=None, pending_store=None, decision_log=None, semantic_cache: SemanticCache | None = None,
                 flights: SingleFlight | None = None):
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
                                     backend=spec.backend, max_batch=spec.max_batch, max_wait_ms=spec.max_wait_ms)
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
        # cached answers outlive reloads too (the app owns the shared cache)
        if semantic_cache is None:
            semantic_cache = previous.semantic_cache if previous is not None else SemanticCache(MemoryDocumentStore())
        self.semantic_cache = semantic_cache
        self.flights = flights or (previous.flights if previous is not None else SingleFlight())
        self.cache = (ResponseCache(policy, semantic_cache, self.flights, resources)
                      if any(d.cache is not None and d.cache.enabled for d in policy.decisions) else None)
        self.chains = {d.name: PluginChain(d, resources) for d in policy.decisions if d.plugins}
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

    # 3 + 4 ---------------------------------------------------------------------------------------
    async def decide(self, ctx: RequestContext) -> Route:
        """Signals and rules: the decision (or the directly named model, already chosen)."""
        model = ctx.model
        engine = self.engines.get(model)
        if engine is None:
            if model in self.policy.models and self.policy.routing.allow_direct_models:
                choice = Choice(model, 1.0, {model: 1.0}, (model,))
                return Route(None, None, DIRECT, 1.0, None, {}, [model], choice, ctx.request_id)
            offered = list(self.engines) + (list(self.policy.models) if self.policy.routing.allow_direct_models else [])
            raise NotFound(f"model '{model}' is not offered here; use one of: {', '.join(offered)}",
                           param="model", code="model_not_found")
        results = await self.signals.evaluate(ctx)
        for key, result in results.items():
            if result.value.__class__ is dict and "error" in result.value:  # failed: counted as unmatched
                self.metrics.signal_errors.labels(key).inc()
        outcome = engine.choose(results)
        decision = outcome.winner
        return Route(model, decision, decision.name, outcome.confidence, outcome, results, request_id=ctx.request_id)

    # 7 -------------------------------------------------------------------------------------------
    async def select(self, route: Route, ctx: RequestContext) -> Route:
        """The decision's algorithm ranks its healthy candidates that fit the prompt."""
        if route.choice is not None:  # a direct model call
            return route
        route.candidates = self.candidates(route.decision, ctx)
        selector = self.selectors[route.decision_name]
        texts = selector.embedding_texts(ctx)
        if texts:
            await ctx.ensure_embeddings(texts)
        route.choice = selector.select(route.candidates, ctx)
        return route

    async def route(self, ctx: RequestContext) -> Route:
        """Steps 3, 4 and 7 (no cache): where this request would go."""
        return await self.select(await self.decide(ctx), ctx)

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
            soonest = self.upstreams.retry_in_s(models)
            raise Unavailable(
                f"every candidate model of decision '{decision.name}' ({', '.join(models)}) is failing and "
                f"temporarily taken out of service; retry in {soonest:.0f}s",
                code="all_circuits_open", headers={"retry-after": str(max(1, round(soonest)))})
        return healthy

    # the whole journey ---------------------------------------------------------------------------
    async def handle(self, raw: bytes, headers: Mapping[str, str], started: float) -> Answer:
        request_id = "req_" + uuid.uuid4().hex
        principal = await self.admit(headers)                                    # 1
        ctx = self.context(raw, headers, principal, request_id)                  # 2
        route = await self.decide(ctx)                                           # 3 + 4
        state = PluginState()
        ctx, blocked = await self._plugins_before(route, ctx, state)             # 5
        self.metrics.decisions.labels(route.entrypoint or DIRECT, route.decision_name).inc()
        out_headers = {
            "x-sigroute-request-id": request_id,
            "x-sigroute-decision": route.decision_name,
            "x-sigroute-confidence": f"{route.confidence:.3f}",
        }
        if headers.get("x-sigroute-debug") in ("1", "true"):
            out_headers["x-sigroute-signals"] = orjson.dumps(
                {k: [r.matched, round(r.confidence, 3)] for k, r in route.signals.items()}).decode()
        if blocked is not None:
            return self._blocked_answer(blocked, route, ctx, state, out_headers, started)
        plan = await self._cache_plan(route, ctx, principal, headers, out_headers, state)   # 6
        if plan is not None and plan.active:
            answer = await self._answer_from_cache(plan, route, ctx, principal, out_headers, started, state)
            if answer is not None:
                return answer
        leading = plan is not None and plan.active and plan.serve  # identical requests may be waiting on us
        result = None
        try:
            await self.select(route, ctx)                                        # 7
            self.metrics.selected.labels(route.decision_name, route.choice.model).inc()
            chain = self.chains.get(route.decision_name)
            result = await self.upstreams.call(route.choice.ranking, dict(ctx.body), ctx.stream,   # 8
                                               chain.upstream_headers if chain is not None else None)
            out_headers["x-sigroute-model"] = result.model
            fallbacks = sum(1 for a in result.attempts if a.error is not None or a.skipped)
            if fallbacks:
                out_headers["x-sigroute-attempts"] = str(fallbacks + 1)
            await self._keep_for_feedback(route, result.model, request_id)
        except BaseException:
            if leading:
                self.flights.land(plan.key, None)
            if result is not None:
                await result.aclose()
            raise
        if not ctx.stream:
            return await self._whole_answer(ctx, route, result, out_headers, started, plan, principal, leading, state)
        return self._streamed_answer(ctx, route, result, out_headers, started, plan, principal, leading, state)

    async def _whole_answer(self, ctx, route: Route, result: CallResult, headers, started, plan, principal,
                            leading: bool, state: PluginState) -> Answer:
        body = result.body
        body["model"] = result.model
        encoded = orjson.dumps(body)       # the answer to the request as sent upstream (what the cache keeps)
        chain = self.chains.get(route.decision_name)
        if chain is not None and chain.post:                                     # 9
            body = await chain.after(body, state)
            answer_bytes = orjson.dumps(body)
        else:
            answer_bytes = encoded
        self._plugin_headers(route, state, headers)
        if plan is not None and plan.active:                                     # 10
            complete = complete_answer(body)
            if leading:
                self.flights.land(plan.key, encoded if complete else None)
            await self._cache_store(plan, encoded if complete else None, ctx, principal, result.model)
        elapsed = time.perf_counter() - started
        overhead = max(0.0, elapsed - result.upstream_ms / 1000)
        headers["x-sigroute-overhead-ms"] = f"{overhead * 1000:.3f}"
        headers["x-sigroute-upstream-ms"] = f"{result.upstream_ms:.3f}"
        self._learn(route, result, ok=True, latency_ms=elapsed * 1000, usage=body.get("usage"))     # 11
        self.metrics.overhead.observe(overhead)
        self.metrics.latency.labels(route.decision_name).observe(elapsed)
        self.metrics.requests.labels(route.entrypoint or DIRECT, route.decision_name, result.model, "200").inc()
        return Answer(200, headers, body=answer_bytes)

    def _streamed_answer(self, ctx, route: Route, result: CallResult, headers, started, plan, principal,
                         leading: bool, state: PluginState) -> Answer:
        now = time.perf_counter()
        overhead = max(0.0, (now - started) - result.upstream_ms / 1000)
        headers["x-sigroute-overhead-ms"] = f"{overhead * 1000:.3f}"
        headers["x-sigroute-upstream-ms"] = f"{result.upstream_ms:.3f}"
        self.metrics.overhead.observe(overhead)
        self.metrics.ttft.labels(route.decision_name).observe(now - started)
        model = result.model
        caching = plan is not None and plan.active
        assembler = StreamAssembler() if caching else None
        chain = self.chains.get(route.decision_name)
        filters = chain.filters(state) if chain is not None else []
        self._plugin_headers(route, state, headers)
        began = False

        async def events() -> AsyncIterator[bytes]:
            nonlocal began
            began = True
            usage = None
            error: UpstreamError | None = None
            status = "200"
            landed = not leading
            try:
                first = result.stream.first_chunk
                first["model"] = model
                if assembler is not None:
                    assembler.add(first)
                yield sse_event(await filter_chunk(first, filters) if filters else first)
                async for chunk in result.stream:
                    chunk["model"] = model
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if assembler is not None:
                        assembler.add(chunk)
                    yield sse_event(await filter_chunk(chunk, filters) if filters else chunk)
                for tail in await flush_filters(filters, first):
                    yield sse_event(tail)
                yield SSE_DONE
                if caching:                                                      # 10
                    body = assembler.completion(model)
                    encoded = orjson.dumps(body) if complete_answer(body) else None
                    if leading:
                        self.flights.land(plan.key, encoded)
                        landed = True
                    await self._cache_store(plan, encoded, ctx, principal, model)
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
                if not landed:  # broken, cancelled or failed: the waiting requests call upstream themselves
                    self.flights.land(plan.key, None)
                if caching and status != "200":
                    self.metrics.cache_stores.labels(plan.category, "incomplete").inc()
                await result.aclose()
                elapsed = time.perf_counter() - started
                self._learn(route, result, ok=error is None and status == "200", latency_ms=elapsed * 1000,
                            usage=usage)
                self.metrics.latency.labels(route.decision_name).observe(elapsed)
                self.metrics.requests.labels(route.entrypoint or DIRECT, route.decision_name, model, status).inc()

        async def abandoned() -> None:
            """The HTTP layer closes the answer; if the caller left before the stream began, clean up
            what `events` would have."""
            if began:
                return
            if leading:
                self.flights.land(plan.key, None)
            self.metrics.client_disconnects.inc()
            await result.aclose()

        return Answer(200, headers, stream=events(), on_close=[abandoned])

    # 6 + 10 --------------------------------------------------------------------------------------
    async def _cache_plan(self, route: Route, ctx, principal, headers, out_headers,
                          state: PluginState) -> CachePlan | None:
        """How this request uses its decision's cache (None: the decision has none)."""
        if self.cache is None or route.decision is None:
            return None
        spec = self.cache.spec(route.decision_name)
        if spec is None:
            return None
        decision = route.decision
        if state.skip_cache is not None:  # e.g. personal data was found: the cache is not used at all
            out_headers["x-sigroute-cache"] = state.skip_cache
            self.metrics.cache_lookups.labels(decision.name, decision.name, state.skip_cache).inc()
            return None
        saturated = spec.load_aware is not None and self.upstreams.saturated(decision.models, spec.load_aware)
        plan = await self.cache.plan(spec, decision.name, decision.models, ctx, principal, headers, saturated)
        if not plan.active:
            out_headers["x-sigroute-cache"] = plan.skipped
            self.metrics.cache_lookups.labels(decision.name, plan.category or decision.name, plan.skipped).inc()
        else:
            out_headers["x-sigroute-cache-category"] = plan.category
            out_headers["x-sigroute-cache-key"] = plan.key   # for DELETE /v1/admin/cache/entries/{key}
            if plan.relaxed:
                self.metrics.cache_relaxed.labels(decision.name).inc()
        return plan

    async def _answer_from_cache(self, plan: CachePlan, route: Route, ctx, principal, headers,
                                 started: float, state: PluginState) -> Answer | None:
        """A cached (or coalesced) answer, or None: call upstream (and maybe lead a flight)."""
        metric = self.metrics.cache_lookups.labels
        if not plan.serve:  # cache-control: no-cache: a fresh answer, which is then stored
            headers["x-sigroute-cache"] = "refresh"
            metric(plan.decision, plan.category, "refresh").inc()
            return None
        rejected = self.cache.cache.counters["rejected"]
        hit = await self.cache.lookup(plan, ctx)
        if hit is not None:
            kind = f"hit-{hit.kind}"
            metric(plan.decision, plan.category, f"hit_{hit.kind}").inc()
            if hit.kind == "semantic":
                headers["x-sigroute-cache-similarity"] = f"{hit.similarity:.4f}"
            return await self._cached_answer(hit.entry.response, kind, route, ctx, principal, headers, started,
                                             plan, hit.entry.doc_id, state)
        waiter = self.flights.lead(plan.key)
        if waiter is not None:  # an identical request is being answered right now: wait for it
            shared = await self.flights.wait(waiter)
            if shared is not None:
                metric(plan.decision, plan.category, "coalesced").inc()
                return await self._cached_answer(shared, "coalesced", route, ctx, principal, headers, started,
                                                 plan, plan.key, state)
            plan.serve = False  # the leader got nothing usable: this request calls upstream itself
        refused = self.cache.cache.counters["rejected"] > rejected
        headers["x-sigroute-cache"] = "miss"
        metric(plan.decision, plan.category, "rejected" if refused else "miss").inc()
        return None

    async def _cached_answer(self, response: bytes, kind: str, route: Route, ctx, principal, headers,
                             started: float, plan: CachePlan, doc_id: str, state: PluginState) -> Answer:
        body = orjson.loads(response)
        body["id"] = "chatcmpl-" + ctx.request_id[4:]
        body["created"] = int(time.time())
        model = body.get("model", "")
        chain = self.chains.get(route.decision_name)
        if chain is not None and chain.post:                                     # 9, on the cached answer
            body = await chain.after(body, state)
        self._plugin_headers(route, state, headers)
        headers["x-sigroute-cache"] = kind
        headers["x-sigroute-model"] = model
        await self._keep_hit_for_feedback(plan, principal, doc_id, model, ctx.request_id)
        elapsed = time.perf_counter() - started
        headers["x-sigroute-overhead-ms"] = f"{elapsed * 1000:.3f}"
        self.metrics.overhead.observe(elapsed)
        self.metrics.latency.labels(route.decision_name).observe(elapsed)
        self.metrics.requests.labels(route.entrypoint or DIRECT, route.decision_name, "cache", "200").inc()
        if ctx.stream:
            self.metrics.ttft.labels(route.decision_name).observe(elapsed)
        return ready_answer(body, ctx, headers)

    async def _cache_store(self, plan: CachePlan, encoded: bytes | None, ctx, principal, model: str) -> None:
        """Step 10: keep a complete answer (`encoded` None: it was not complete)."""
        if encoded is None:
            self.metrics.cache_stores.labels(plan.category, "incomplete").inc()
            return
        if not plan.keep:
            self.metrics.cache_stores.labels(plan.category, "no_store").inc()
            return
        stored, evicted = await self.cache.store(plan, encoded, ctx, tenant=principal.tenant, model=model)
        self.metrics.cache_stores.labels(plan.category, "stored" if stored else "failed").inc()
        if evicted:
            self.metrics.cache_evictions.labels(plan.category).inc(evicted)

    async def _keep_hit_for_feedback(self, plan: CachePlan, principal, doc_id: str, model: str,
                                     request_id: str) -> None:
        """A cached answer can be reported wrong (POST /v1/feedback): the entry is then removed."""
        record = {"tenant": principal.tenant, "kind": "cache_hit", "decision": plan.decision, "model": model,
                  "category": plan.category, "doc_id": doc_id}
        try:
            await self.pending_store.put(request_id, record, CACHE_FEEDBACK_TTL_S)
        except Exception as exc:  # the answer still goes out
            self.metrics.bandit_store_errors.labels("pending_put").inc()
            log.warning("could not keep cached answer %s for feedback: %s", request_id, exc)

    # 5 + 9 ---------------------------------------------------------------------------------------
    async def _plugins_before(self, route: Route, ctx, state: PluginState):
        """Run the decision's plugins before the call: (ctx, None) or (ctx, Blocked). A reroute
        switches the route to the named decision and runs its plugins (jailbreak is not scored
        twice)."""
        chain = self.chains.get(route.decision_name)
        if chain is None:
            return ctx, None
        ctx, outcome = await chain.before(ctx, state)
        if isinstance(outcome, Reroute):
            target = self.policy.decision(outcome.decision)
            state.response_headers["x-sigroute-rerouted-from"] = route.decision_name
            route.decision, route.decision_name = target, target.name
            state.skip.add("jailbreak")
            chain = self.chains.get(target.name)
            outcome = None
            if chain is not None:
                ctx, outcome = await chain.before(ctx, state)
                if isinstance(outcome, Reroute):   # cannot happen with jailbreak skipped; never loop
                    outcome = None
        for plugin, action, _ in state.actions:
            self.metrics.plugin_actions.labels(route.decision_name, plugin, action).inc()
        return ctx, outcome

    def _plugin_headers(self, route: Route, state: PluginState, headers: dict[str, str]) -> None:
        if state.actions:
            headers["x-sigroute-plugins"] = state.header()
        if state.response_headers:
            headers.update(state.response_headers)
        for name in state.removed_response_headers:
            headers.pop(name, None)

    def _blocked_answer(self, blocked: Blocked, route: Route, ctx, state: PluginState, headers,
                        started: float) -> Answer:
        """A plugin answered instead of a model (the model was never called)."""
        self._plugin_headers(route, state, headers)
        headers["x-sigroute-blocked-by"] = blocked.plugin
        elapsed = time.perf_counter() - started
        headers["x-sigroute-overhead-ms"] = f"{elapsed * 1000:.3f}"
        self.metrics.latency.labels(route.decision_name).observe(elapsed)
        if blocked.response == "error":
            self.metrics.requests.labels(route.entrypoint or DIRECT, route.decision_name, "none", "400").inc()
            raise InvalidRequest(blocked.message, code=blocked.code, headers=headers)
        self.metrics.requests.labels(route.entrypoint or DIRECT, route.decision_name, "none", "200").inc()
        body = {"id": "chatcmpl-" + ctx.request_id[4:], "object": "chat.completion", "created": int(time.time()),
                "model": f"sigroute/{blocked.plugin}",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": blocked.message},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
        return ready_answer(body, ctx, headers)

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
        if record.get("kind") == "cache_hit":
            out["cache"] = await self._cache_feedback(record, quality, first=status == "applied")
        elif status == "applied":
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

    async def _cache_feedback(self, record: dict, quality: float, first: bool) -> dict[str, Any]:
        """Feedback on a cached answer: a bad score (< 0.5) marks a false hit and removes the entry."""
        false_hit = quality < 0.5
        out: dict[str, Any] = {"category": record.get("category"), "false_hit": false_hit}
        if false_hit and first:
            self.metrics.cache_false_hits.labels(record.get("category") or "").inc()
            try:
                out["removed"] = await self.semantic_cache.delete(record["doc_id"])
            except Exception as exc:  # the false hit is counted; the entry expires with its TTL
                log.warning("could not remove a cache entry reported wrong: %s", exc)
                out["removed"] = False
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
        cache = None
        spec = self.cache.spec(decision.name) if self.cache is not None else None
        if spec is not None:  # how the cache would treat this request (nothing is looked up or counted)
            saturated = spec.load_aware is not None and self.upstreams.saturated(decision.models, spec.load_aware)
            plan = await self.cache.plan(spec, decision.name, decision.models, ctx, principal, headers, saturated)
            cache = {"used": plan.active, "skipped": plan.skipped, "category": plan.category or None}
            if plan.active:
                cache.update(key=plan.key, serve=plan.serve, store=plan.keep, relaxed=plan.relaxed,
                             semantic=plan.question is not None, **dataclasses.asdict(plan.settings))
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
                       "selection": choice, "selection_error": selection_error, "cache": cache,
                       "plugins": [p.name for p in self.chains[decision.name].plugins]
                       if decision.name in self.chains else []},
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
