"""Steps 3, 4 and 7 of the journey: signals, the winning decision, and the model it selects.

`Router` is built once per loaded policy. Serving and `/v1/route/explain` call the same three
methods, so explain shows exactly what serving would do:

- `decide(ctx)`     the signals some decision reads (explain: every declared signal, timed), then
                    the entrypoint's rule trees pick the decision. A request naming a concrete
                    model (when the policy allows it) gets a direct route with its choice made.
- `select(route, ctx)`  the decision's selector ranks its candidates: the decision's models that
                    are in service and whose context window fits the request.
- `candidates(decision, ctx)`  those candidates, or the error that says why there are none.

Selectors (one per decision, `bandits`) are built here too; after a reload each new selector
adopts what the previous policy's selector of the same decision learned (`Pipeline.take_over`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from sigroute.bandits import tradeoff
from sigroute.bandits.base import Choice, Selector
from sigroute.bandits.registry import build_selector
from sigroute.gateway.errors import InvalidRequest, NotFound
from sigroute.gateway.journey import DIRECT, Route
from sigroute.gateway.metrics import Metrics
from sigroute.gateway.tracing import NO_TRACE
from sigroute.gateway.upstream import Upstreams
from sigroute.policies.rules import DecisionEngine
from sigroute.policies.schema import Decision, Policy
from sigroute.signals.context import RequestContext
from sigroute.signals.engine import SignalEngine


def build_selectors(policy: Policy, resources: Any) -> dict[str, Selector]:
    """One selector per decision (after a reload each adopts its predecessor's learning:
    `Pipeline.take_over`)."""
    return {d.name: build_selector(d.algorithm, {m: policy.models[m] for m in d.models}, resources=resources,
                                   decision=d.name)
            for d in policy.decisions}


class Router:
    def __init__(self, policy: Policy, signals: SignalEngine, selectors: dict[str, Selector],
                 upstreams: Upstreams, metrics: Metrics):
        self.policy = policy
        self.signals = signals
        self.selectors = selectors
        self.upstreams = upstreams
        self.metrics = metrics
        self.engines: dict[str, DecisionEngine] = {}
        for name, entry in policy.entrypoints.items():
            chosen = [d for d in policy.decisions if entry.decisions is None or d.name in entry.decisions]
            self.engines[name] = DecisionEngine(chosen, policy.default_decision,
                                                entry.strategy or policy.routing.strategy)
        self._window_checks = any(spec.context_window for spec in policy.models.values())

    # 3 + 4 ---------------------------------------------------------------------------------------
    async def decide(self, ctx: RequestContext, *, every_signal: bool = False,
                     timings: dict[str, float] | None = None, trace=NO_TRACE) -> Route:
        """Signals and rules: the decision (or the directly named model, already chosen).

        `every_signal` (explain) evaluates every declared signal, not only those the rules read,
        and records how long each took in `timings`."""
        model = ctx.model
        engine = self.engines.get(model)
        if engine is None:
            if model in self.policy.models and self.policy.routing.allow_direct_models:
                choice = Choice(model, 1.0, {model: 1.0}, (model,))
                return Route(None, None, DIRECT, 1.0, None, {}, [model], choice, ctx.request_id)
            offered = list(self.engines) + (list(self.policy.models) if self.policy.routing.allow_direct_models else [])
            raise NotFound(f"model '{model}' is not offered here; use one of: {', '.join(offered)}",
                           param="model", code="model_not_found")
        with trace.step("signals"):
            if every_signal:
                results, took = await self.signals.evaluate_all(ctx, trace)
                if timings is not None:
                    timings.update(took)
            else:
                results = await self.signals.evaluate(ctx, trace=trace)
                for key, result in results.items():
                    if result.value.__class__ is dict and "error" in result.value:  # failed: counted as unmatched
                        self.metrics.signal_errors.labels(key).inc()
        with trace.step("decide"):
            outcome = engine.choose(results)
        decision = outcome.winner
        return Route(model, decision, decision.name, outcome.confidence, outcome, results, request_id=ctx.request_id)

    def reroute(self, route: Route, decision_name: str) -> None:
        """A plugin sent the request to another decision (e.g. jailbreak → a guarded model)."""
        target = self.policy.decision(decision_name)
        route.decision, route.decision_name = target, target.name

    # 7 -------------------------------------------------------------------------------------------
    async def select(self, route: Route, ctx: RequestContext) -> Choice:
        """The decision's algorithm ranks its healthy candidates that fit the prompt."""
        if route.decision is None:  # a direct model call: chosen by the caller
            if ctx.tradeoff is not None:
                route.choice = dataclasses.replace(route.choice, tradeoff=tradeoff.ignored("a model named directly"))
            return route.choice
        route.candidates = self.candidates(route.decision, ctx)
        selector = self.selectors[route.decision_name]
        texts = selector.embedding_texts(ctx)
        if texts:
            await ctx.ensure_embeddings(texts)
        choice = selector.select(route.candidates, ctx)
        if ctx.tradeoff is not None and choice.tradeoff is None:   # a static algorithm: it weighs no cost per request
            choice = dataclasses.replace(choice, tradeoff=tradeoff.ignored(
                f"algorithm {selector.name} does not learn; only learn: quality decisions take the dial"))
        route.choice = choice
        return choice

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
        if not healthy:  # 429 when upstream rate limits hold them back, else 503
            raise self.upstreams.refusal(models, f"decision '{decision.name}'")
        return healthy
