"""A decision's plugins, in the documented order.

Before the model call (``before``), in this order whatever the order in the policy file:

1. ``jailbreak``      block, reroute or warn on the jailbreak score
2. ``fast_response``  answer with a fixed message (no model call)
3. ``pii``            block, redact or mask personal data
4. ``params``         cap/clamp/default/drop generation parameters
5. ``system_prompt``  insert, replace, prepend or append the system prompt
6. ``headers``        headers for the upstream call and the answer
7. ``response_guard`` notes the system prompt and injected instructions the answer must not repeat
8. ``hallucination``  notes the grounding context, if the request carries any and needs a check

The first plugin that blocks ends the chain (the model is never called). After the call
(``after`` for a whole answer, ``filters`` for a stream) the plugins that change answers run in
reverse order: ``hallucination`` checks the answer as the model wrote it, ``response_guard``
checks it for leaks, then ``pii`` restores masked values. The cache sits between the two halves: it
keeps the answer to the request as sent upstream, and the post-call plugins run on every answer,
cached or fresh.
"""

from __future__ import annotations

import inspect
from typing import Any

from sigroute.plugins.base import Blocked, Plugin, PluginState, Reroute
from sigroute.plugins.guards import Jailbreak, Pii
from sigroute.plugins.hallucination import Hallucination
from sigroute.plugins.response_guard import ResponseGuard
from sigroute.plugins.transform import FastResponse, Headers, Params, SystemPrompt
from sigroute.policies.schema import PLUGIN_ORDER

# YAML name -> class; `build` passes the options (and the signal resources to those that need them)
PLUGIN_TYPES: dict[str, type[Plugin]] = {
    "jailbreak": Jailbreak,
    "fast_response": FastResponse,
    "pii": Pii,
    "params": Params,
    "system_prompt": SystemPrompt,
    "headers": Headers,
    "response_guard": ResponseGuard,
    "hallucination": Hallucination,
}
NEEDS_ENCODER = frozenset({"jailbreak", "hallucination"})


#: plugins that take the signal resources when their options use the encoder
MAY_NEED_ENCODER = frozenset({"pii"})


def _pii_needs_encoder(options) -> bool:
    from sigroute.signals.pii_tagger import TAGGER_ENTITIES

    return bool(set(options.entities) & set(TAGGER_ENTITIES))


def build(name: str, options: Any, resources: Any) -> Plugin:
    cls = PLUGIN_TYPES[name]
    return cls(options, resources) if name in NEEDS_ENCODER | MAY_NEED_ENCODER else cls(options)


class PluginChain:
    """The plugins of one decision, built once per loaded policy."""

    def __init__(self, decision, resources=None):
        by_name = {p.name: build(p.name, p.options, resources) for p in decision.plugins}
        self.plugins: list[Plugin] = [by_name[n] for n in PLUGIN_ORDER if n in by_name]
        self.post: list[Plugin] = [p for p in reversed(self.plugins)
                                   if type(p).on_response is not Plugin.on_response]
        headers = by_name.get("headers")
        self.upstream_headers = headers.upstream_changes() if headers is not None else None

    def __bool__(self) -> bool:
        return bool(self.plugins)

    async def before(self, ctx, state: PluginState):
        """(ctx, None) to go on, or (ctx, Blocked | Reroute)."""
        for plugin in self.plugins:
            if plugin.name in state.skip:
                continue
            outcome = await plugin.on_request(ctx, state)
            if isinstance(outcome, (Blocked, Reroute)):
                return ctx, outcome
            ctx = outcome
        return ctx, None

    async def after(self, body: dict[str, Any], state: PluginState) -> dict[str, Any]:
        for plugin in self.post:
            out = plugin.on_response(body, state)
            body = await out if inspect.isawaitable(out) else out
        return body

    def filters(self, state: PluginState) -> list:
        return [f for f in (p.stream_filter(state) for p in self.post) if f is not None]


def needs_encoder(decision) -> bool:
    return any(p.name in NEEDS_ENCODER or (p.name == "pii" and _pii_needs_encoder(p.options))
               for p in decision.plugins)


class PolicyPlugins:
    """Every decision's plugin chain for one loaded policy, and the reroute between decisions.

    `before` runs the decision's chain before the model call. When a plugin reroutes (e.g. the
    jailbreak plugin sends a suspicious request to a guarded decision), the target decision's
    chain runs next, with jailbreak not scored twice; a reroute never loops.
    """

    def __init__(self, policy, resources=None):
        self.chains: dict[str, PluginChain] = {d.name: PluginChain(d, resources) for d in policy.decisions if d.plugins}

    async def before(self, decision: str, ctx, state: PluginState):
        """(ctx, outcome, decision): the request as the plugins left it, `Blocked` or None, and the
        decision that now owns the request (another one after a reroute)."""
        chain = self.chains.get(decision)
        if chain is None:
            return ctx, None, decision
        ctx, outcome = await chain.before(ctx, state)
        if isinstance(outcome, Reroute):
            state.response_headers["x-sigroute-rerouted-from"] = decision
            decision = outcome.decision
            state.skip.add("jailbreak")
            outcome = None
            chain = self.chains.get(decision)
            if chain is not None:
                ctx, outcome = await chain.before(ctx, state)
                if isinstance(outcome, Reroute):   # cannot happen with jailbreak skipped; never loop
                    outcome = None
        return ctx, outcome, decision

    async def after(self, decision: str, body: dict[str, Any], state: PluginState) -> dict[str, Any]:
        """The answer after the decision's answer plugins (the same object when none changes answers)."""
        chain = self.chains.get(decision)
        if chain is None or not chain.post:
            return body
        return await chain.after(body, state)

    def changes_answers(self, decision: str) -> bool:
        chain = self.chains.get(decision)
        return chain is not None and bool(chain.post)

    def filters(self, decision: str, state: PluginState) -> list:
        """Stream filters of the decision's answer plugins, in the order they apply."""
        chain = self.chains.get(decision)
        return chain.filters(state) if chain is not None else []

    def upstream_headers(self, decision: str):
        """Header changes for the upstream call (the `headers` plugin), or None."""
        chain = self.chains.get(decision)
        return chain.upstream_headers if chain is not None else None

    def names(self, decision: str) -> list[str]:
        chain = self.chains.get(decision)
        return [p.name for p in chain.plugins] if chain is not None else []
