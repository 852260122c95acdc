"""`POST /v1/route/explain`: how a request would be routed, without calling a model.

It runs the serving path's own functions — `Router.decide` (with every declared signal evaluated
and timed, not only those the rules read), `Router.candidates` and `Router.select`, the
selector's `explain`, `Caching.plan` — so what it reports is what serving would do. Nothing is
looked up in the cache, nothing is counted, no model is called (except the policy's guard models:
a `guard` signal's verdict is a signal like any other), no implicit feedback is credited
(`implicit_feedback` says what the request would credit: the earlier answer it follows and the verdict). (Selection itself is real: a
round-robin selector advances, a sampling one draws.)
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import TYPE_CHECKING, Any, Mapping

from sigroute.gateway.errors import APIError
from sigroute.gateway.journey import DIRECT, Journey

if TYPE_CHECKING:
    from sigroute.gateway.pipeline import Pipeline
    from sigroute.gateway.surface import Surface


async def explain(pipeline: "Pipeline", raw: bytes, headers: Mapping[str, str],
                  surface: "Surface") -> dict[str, Any]:
    """How the request `raw`, sent to `surface`, would be routed."""
    journey = Journey(headers, request_id="explain_" + uuid.uuid4().hex[:12], api=surface.api)
    journey.principal = await pipeline.admit(headers)
    ctx = journey.ctx = await pipeline.context(raw, headers, journey.principal, journey.request_id, surface)
    implicit = await pipeline.implicit.explain(journey)   # the answer this turn follows, and its verdict
    timings: dict[str, float] = {}
    route = await pipeline.router.decide(ctx, every_signal=True, timings=timings)
    if route.decision is None:
        return {"api": surface.api, "entrypoint": None, "model": ctx.model, "direct": True, "decision": DIRECT,
                "selection": route.choice.as_dict()}
    decision = route.decision
    try:
        choice = await pipeline.router.select(route, ctx)
        selection = {**choice.as_dict(), **pipeline.router.selectors[decision.name].explain(choice)}
        candidates, selection_error = route.candidates, None
    except APIError as exc:
        candidates, selection, selection_error = [], None, exc.message
    cache = None
    plan = await pipeline.caching.plan(route, ctx, journey.principal, headers)
    if plan is not None:  # how the cache would treat this request
        cache = {"used": plan.active, "skipped": plan.skipped, "category": plan.category or None}
        if plan.active:
            cache.update(key=plan.key, serve=plan.serve, store=plan.keep, relaxed=plan.relaxed,
                         semantic=plan.question is not None, **dataclasses.asdict(plan.settings))
    outcome = route.outcome
    return {
        "api": surface.api,
        "entrypoint": route.entrypoint,
        "strategy": outcome.strategy,
        "signals": {k: {**r.as_dict(), "ms": round(timings.get(k, 0.0), 4),
                        "used_by_rules": k in pipeline.router.signals.used}
                    for k, r in route.signals.items()},
        "decisions": [v.as_dict() for v in outcome.verdicts],
        "winner": {"decision": decision.name, "confidence": round(outcome.confidence, 4),
                   "default": outcome.fell_back_to_default, "models": list(decision.models),
                   "algorithm": decision.algorithm.name, "candidates": candidates,
                   "selection": selection, "selection_error": selection_error, "cache": cache,
                   "plugins": pipeline.plugins.names(decision.name)},
        "implicit_feedback": implicit,
        "prompt_tokens": ctx.prompt_tokens,
        "embedding_ms": round(timings["embedding"], 3) if "embedding" in timings else None,
        "elapsed_ms": round(journey.elapsed_s() * 1000, 3),
    }
