"""The cache as the gateway uses it: one `ResponseCache` per loaded policy.

For each request whose decision has a ``cache:`` block the pipeline asks three things:

1. `ResponseCache.plan(...)` -- may this request use the cache at all, and how? It reads the
   request's cache directives (``cache-control: no-cache`` = do not answer from the cache but
   store the fresh answer; ``no-store`` = answer from the cache if possible but store nothing;
   ``x-sigroute-cache: bypass`` = neither), the decision's settings (and the domain category's
   overrides when the cache is ``by_domain``), the temperature and stream rules, the load-aware
   relaxation, and computes the isolation partition and the exact key.
2. `ResponseCache.lookup(plan, ctx)` -- exact, then semantic: only when the exact tier misses is the
   last user message embedded (free when a signal already embedded the same text); a semantic candidate must be at least
   ``threshold`` similar and, with ``verify``, pass the shipped verifier (`cache.verifier`,
   boosted trees over the two questions' embeddings and lexical checks). Two questions that
   differ only in case, spacing or the closing punctuation need no verifier.
3. `ResponseCache.store(plan, body)` -- keeps a complete answer (the pipeline checks that) for
   the category's TTL, within its quota.

The semantic tier answers only single-question lookups safely: it compares the *last user
message*; everything before it (the history) is part of the partition, so a paraphrase hits only
within an identical conversation. A request whose last message is not a user message (e.g. a
tool result) uses the exact tier only.

Documents keep the question text (``metadata["q"]``) because the verifier needs it; they never
keep anything else from the request.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from sigroute.cache.keys import exact_key, partition_key
from sigroute.cache.semantic import Hit, SemanticCache, SingleFlight

__all__ = ["CachePlan", "CacheSettings", "ResponseCache", "cache_directives"]

log = logging.getLogger("sigroute.cache")


@dataclass(frozen=True)
class CacheSettings:
    """The settings that apply to one request (decision settings + category overrides + load)."""

    mode: str
    threshold: float
    verify_threshold: float | None   # None: semantic candidates are not verified
    ttl_s: float
    max_entries: int


@dataclass
class CachePlan:
    """How one request uses the cache. `skipped` names why it does not (then nothing else is set)."""

    decision: str
    category: str = ""
    settings: CacheSettings | None = None
    partition: str = ""
    key: str = ""
    question: str | None = None          # the last user message (semantic tier), None: exact only
    embedding: np.ndarray | None = None  # the question's, computed when first needed
    serve: bool = True                   # may answer from the cache
    keep: bool = True                    # may store the answer
    relaxed: bool = False                # load-aware relaxation applied
    skipped: str | None = None           # bypass | stream | temperature | no_user | category_disabled

    @property
    def active(self) -> bool:
        return self.skipped is None


_SPACES = re.compile(r"\s+")


def loose_text(text: str) -> str:
    """Case folded, spacing collapsed, closing ?.! dropped: two questions equal under it ask the
    same thing (other punctuation stays: "C++" and "C#" differ)."""
    return _SPACES.sub(" ", text.casefold()).strip().rstrip("?.! ").strip()


def cache_directives(headers: Mapping[str, str]) -> tuple[bool, bool]:
    """(serve, keep) from the request headers (see the module docstring)."""
    if (headers.get("x-sigroute-cache") or "").strip().lower() == "bypass":
        return False, False
    tokens = {t.strip().lower() for t in (headers.get("cache-control") or "").split(",")}
    return "no-cache" not in tokens, "no-store" not in tokens


class ResponseCache:
    """The policy's view of the shared `SemanticCache` (see the module docstring)."""

    def __init__(self, policy, cache: SemanticCache, flights: SingleFlight, resources=None):
        self.cache = cache
        self.flights = flights
        self.resources = resources
        self.specs = {d.name: d.cache for d in policy.decisions if d.cache is not None and d.cache.enabled}
        self.verifier = None
        if any(spec.verify and spec.needs_embedding() for spec in self.specs.values()):
            from sigroute.cache.verifier import load_verifier

            if resources is None:
                raise ValueError("a semantic cache needs the sentence encoder, which was not loaded")
            self.verifier = load_verifier(resources.encoder.fingerprint)

    def spec(self, decision: str):
        return self.specs.get(decision)

    # 6a ------------------------------------------------------------------------------------
    async def plan(self, spec, decision: str, models, ctx, principal, headers: Mapping[str, str],
                   saturated: bool = False) -> CachePlan:
        serve, keep = cache_directives(headers)
        if not serve and not keep:
            return CachePlan(decision, skipped="bypass")
        body = ctx.body
        if ctx.stream and not spec.streams:
            return CachePlan(decision, skipped="stream")
        if not spec.nonzero_temperature and body.get("temperature") != 0:
            return CachePlan(decision, skipped="temperature")
        user = None
        if spec.per_user:
            user = getattr(principal, "user", None) or body.get("user")
            if not isinstance(user, str) or not user:
                return CachePlan(decision, skipped="no_user")
        category, tuning = decision, None
        if spec.per_domain:
            from sigroute.signals.learned import request_domain

            label, _ = await request_domain(ctx, self.resources)
            category, tuning = f"{decision}/{label}", spec.categories.get(label)
            if tuning is not None and tuning.enabled is False:
                return CachePlan(decision, category=category, skipped="category_disabled")
        settings = self._settings(spec, tuning, saturated)
        messages = body["messages"]
        last = messages[-1]
        history = [m for m in messages[:-1] if m.get("role") not in ("system", "developer")]
        partition = partition_key(
            tenant=principal.tenant, user=user, decision=decision, models=models,
            system_prompt=ctx.system_text, tools=body.get("tools") or body.get("functions"),
            response_format=body.get("response_format"), params=body, stream=ctx.stream, history=history)
        plan = CachePlan(decision, category, settings, partition, exact_key(partition, messages),
                         serve=serve, keep=keep, relaxed=saturated and spec.load_aware is not None)
        if settings.mode != "exact" and last.get("role") == "user" and ctx.last_user_text.strip():
            plan.question = ctx.last_user_text   # embedded only when the exact tier misses (`lookup`)
        return plan

    @staticmethod
    async def _embed(plan: CachePlan, ctx) -> None:
        if plan.question is not None and plan.embedding is None:
            await ctx.ensure_embeddings((plan.question,))   # free when a signal already embedded it
            plan.embedding = ctx.vector(plan.question)

    def _settings(self, spec, tuning, saturated: bool) -> CacheSettings:
        def pick(name):
            value = getattr(tuning, name, None) if tuning is not None else None
            return getattr(spec, name) if value is None else value

        threshold = pick("threshold")
        verify = None
        if spec.verify and self.verifier is not None:
            verify = pick("verify_threshold") or self.verifier.threshold
        ttl = pick("ttl")
        relax = spec.load_aware if saturated else None
        if relax is not None:
            threshold = max(min(threshold, relax.min_threshold), threshold - relax.relax)
            if verify is not None:
                verify = max(0.5, verify - relax.relax)
            ttl *= relax.ttl_factor
        return CacheSettings(pick("mode"), threshold, verify, ttl, pick("max_entries"))

    # 6b ------------------------------------------------------------------------------------
    async def lookup(self, plan: CachePlan, ctx) -> Hit | None:
        """Exact first (no embedding needed), then semantic (the request is embedded only now)."""
        s = plan.settings
        if s.mode != "semantic" or plan.question is None:
            hit = await self.cache.lookup(plan.partition, plan.key, mode="exact")
            if hit is not None or s.mode == "exact" or plan.question is None:
                return hit
        await self._embed(plan, ctx)
        accept = None   # verify off: the similarity threshold alone decides
        if s.verify_threshold is not None and plan.question is not None:
            question, vector, verifier, threshold = plan.question, plan.embedding, self.verifier, s.verify_threshold

            loose = loose_text(question)

            def verified(entry, similarity: float) -> bool:
                cached = entry.metadata.get("q")
                if not isinstance(cached, str) or entry.embedding is None:
                    return False   # nothing to verify against: never serve unverified
                if loose_text(cached) == loose:
                    return True    # the same words, differing only in case, punctuation or spacing
                return verifier.accepts(question, cached, vector, entry.embedding, threshold)

            accept = verified
        return await self.cache.lookup(plan.partition, plan.key, plan.embedding, mode="semantic",
                                       threshold=s.threshold, accept=accept)

    # 10 ------------------------------------------------------------------------------------
    async def store(self, plan: CachePlan, response: bytes, ctx, *, tenant: str, model: str) -> tuple[bool, int]:
        """Keep the answer; (stored, how many entries the category's quota evicted for it)."""
        await self._embed(plan, ctx)   # usually done by the lookup already
        metadata: dict[str, Any] = {"model": model}
        if plan.question is not None:
            metadata["q"] = plan.question
        evicted: list[str] = []
        stored = await self.cache.insert(
            partition=plan.partition, exact_key=plan.key, response=response, category=plan.category,
            ttl_s=plan.settings.ttl_s, embedding=plan.embedding, quota=plan.settings.max_entries,
            decision=plan.decision, tenant=tenant, metadata=metadata, evicted=evicted)
        return stored, len(evicted)
