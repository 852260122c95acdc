"""Steps 6 and 10 of the journey: answering from the decision's cache, and keeping answers in it.

`Caching` is the gateway's side of `sigroute.cache` for one loaded policy (the cached answers
themselves live in the app-wide `SemanticCache`, which outlives reloads):

- `plan(...)`      how a request would use its decision's cache (shared with explain; nothing is
                   looked up or counted).
- `lookup(journey, held)`   step 6: the plan, then a hit (exact, then semantic), or the answer of
                   an identical request already in flight (single flight), or a miss. On a miss
                   that may be served from the cache this request leads the flight: the lease is
                   entered on `held`, the request's exit stack, so the followers are released
                   whatever way the request ends.
- `store(journey, answer)`  step 10: hand the answer to the followers and keep it if it is
                   complete and the caller did not say no-store.

Every outcome is counted in `sigroute_cache_lookups_total{decision,category,result}` and reported
in the `x-sigroute-cache` header.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, Mapping

from sigroute.cache.semantic import SemanticCache, SingleFlight
from sigroute.cache.service import CachePlan, ResponseCache
from sigroute.gateway.journey import Journey, Route
from sigroute.gateway.metrics import Metrics
from sigroute.gateway.upstream import Upstreams
from sigroute.policies.schema import Policy
from sigroute.signals.context import RequestContext


@dataclass(frozen=True)
class CachedAnswer:
    """An answer this request gets without calling a model."""

    response: bytes   # the stored chat.completion
    kind: str         # hit-exact | hit-semantic | coalesced
    doc_id: str       # what feedback on this answer removes if it was wrong


class Caching:
    def __init__(self, policy: Policy, semantic_cache: SemanticCache, flights: SingleFlight, resources: Any,
                 upstreams: Upstreams, metrics: Metrics):
        self.semantic_cache = semantic_cache
        self.flights = flights
        self.upstreams = upstreams
        self.metrics = metrics
        self.cache = (ResponseCache(policy, semantic_cache, flights, resources)
                      if any(d.cache is not None and d.cache.enabled for d in policy.decisions) else None)
        # how long an identical request waits for the leader before calling upstream itself:
        # the longest a decision's model may take to answer
        self.flight_wait_s = {d.name: max((policy.models[m].timeout_s for m in d.models), default=60.0)
                              for d in policy.decisions}

    @property
    def enabled(self) -> bool:
        return self.cache is not None

    def spec(self, decision: str):
        return self.cache.spec(decision) if self.cache is not None else None

    async def plan(self, route: Route, ctx: RequestContext, principal: Any,
                   headers: Mapping[str, str]) -> CachePlan | None:
        """How this request would use its decision's cache (None: the decision has none)."""
        spec = self.spec(route.decision_name) if route.decision is not None else None
        if spec is None:
            return None
        decision = route.decision
        saturated = spec.load_aware is not None and self.upstreams.saturated(decision.models, spec.load_aware)
        return await self.cache.plan(spec, decision.name, decision.models, ctx, principal, headers, saturated)

    # 6 -------------------------------------------------------------------------------------------
    async def lookup(self, journey: Journey, held: AsyncExitStack) -> CachedAnswer | None:
        """A cached or coalesced answer, or None: call upstream (leading identical requests if
        this one may be served from the cache)."""
        route, out = journey.route, journey.response_headers
        if self.cache is None or route.decision is None or self.spec(route.decision_name) is None:
            return None
        name = route.decision_name
        if journey.plugins.skip_cache is not None:  # e.g. personal data was found: no cache at all
            out["x-sigroute-cache"] = journey.plugins.skip_cache
            self.metrics.cache_lookups.labels(name, name, journey.plugins.skip_cache).inc()
            return None
        plan = journey.plan = await self.plan(route, journey.ctx, journey.principal, journey.headers)
        count = self.metrics.cache_lookups.labels
        if not plan.active:
            out["x-sigroute-cache"] = plan.skipped
            count(name, plan.category or name, plan.skipped).inc()
            return None
        out["x-sigroute-cache-category"] = plan.category
        out["x-sigroute-cache-key"] = plan.key   # for DELETE /v1/admin/cache/entries/{key}
        if plan.relaxed:
            self.metrics.cache_relaxed.labels(name).inc()
        if not plan.serve:  # cache-control: no-cache: a fresh answer, which is then stored
            out["x-sigroute-cache"] = "refresh"
            count(plan.decision, plan.category, "refresh").inc()
            return None
        rejected = self.cache.cache.counters["rejected"]
        hit = await self.cache.lookup(plan, journey.ctx)
        if hit is not None:
            count(plan.decision, plan.category, f"hit_{hit.kind}").inc()
            if hit.kind == "semantic":
                out["x-sigroute-cache-similarity"] = f"{hit.similarity:.4f}"
            return CachedAnswer(hit.entry.response, f"hit-{hit.kind}", hit.entry.doc_id)
        waiter = self.flights.lead(plan.key)
        if waiter is None:
            journey.flight = held.enter_context(self.flights.lease(plan.key))
        else:  # an identical request is being answered right now: wait for it (bounded)
            shared = await self.flights.wait(waiter, self.flight_wait_s.get(name))
            if shared is not None:
                count(plan.decision, plan.category, "coalesced").inc()
                return CachedAnswer(shared, "coalesced", plan.key)
            plan.serve = False  # the leader got nothing usable: this request calls upstream itself
        refused = self.cache.cache.counters["rejected"] > rejected
        out["x-sigroute-cache"] = "miss"
        count(plan.decision, plan.category, "rejected" if refused else "miss").inc()
        return None

    # 10 ------------------------------------------------------------------------------------------
    async def store(self, journey: Journey, answer: bytes | None) -> None:
        """Hand the answer to the identical requests waiting for it and keep it (`answer` None:
        it was not complete, so nobody gets it and nothing is kept)."""
        plan = journey.plan
        if journey.flight is not None:
            journey.flight.land(answer)
        if answer is None:
            self.metrics.cache_stores.labels(plan.category, "incomplete").inc()
            return
        if not plan.keep:
            self.metrics.cache_stores.labels(plan.category, "no_store").inc()
            return
        stored, evicted = await self.cache.store(plan, answer, journey.ctx, tenant=journey.principal.tenant,
                                                 model=journey.result.model)
        self.metrics.cache_stores.labels(plan.category, "stored" if stored else "failed").inc()
        if evicted:
            self.metrics.cache_evictions.labels(plan.category).inc(evicted)
