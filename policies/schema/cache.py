"""A decision's semantic cache (`cache:`): its tiers, thresholds and lifetimes, per-domain
overrides, and how it leans on the cache while the models are saturated. The cache itself is
the top-level `cache/` package.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from sigroute.policies.schema.base import Duration, Strict

CACHE_MODES = ("exact", "semantic", "exact_then_semantic")


class CacheTuning(Strict):
    """Settings that a domain category may override (see `CacheSpec.categories`)."""

    enabled: bool | None = Field(None, description="false: requests of this category are not cached")
    mode: Literal[CACHE_MODES] | None = None
    threshold: float | None = Field(None, gt=0, le=1, description="cosine similarity a semantic candidate needs")
    verify_threshold: float | None = Field(None, gt=0, lt=1, description="verifier probability a semantic hit needs")
    ttl: Duration | None = Field(None, description="lifetime of an entry: seconds or '30s', '5m', '1h', '7d'")
    max_entries: PositiveInt | None = Field(None, description="entries kept per category; least recently used go first")


class LoadAwareCache(Strict):
    """Serve more from the cache while the decision's models are saturated.

    Saturated: every in-service candidate model has at least `in_flight_above` calls running
    through this gateway, or its recent upstream latency (moving average) is above
    `latency_above_ms`. While saturated, the similarity and verifier thresholds drop by `relax`
    (never below `min_threshold`) and new entries live `ttl_factor` times longer.
    """

    in_flight_above: PositiveInt | None = Field(None, description="calls in progress per model that count as saturated")
    latency_above_ms: PositiveFloat | None = Field(None, description="recent upstream latency that counts as saturated")
    relax: float = Field(0.03, ge=0, le=0.2, description="how much both thresholds drop while saturated")
    min_threshold: float = Field(0.8, gt=0, le=1, description="the similarity threshold never drops below this")
    ttl_factor: float = Field(2.0, ge=1, le=10, description="TTL multiplier for entries stored while saturated")

    @model_validator(mode="after")
    def _some_bound(self) -> "LoadAwareCache":
        if self.in_flight_above is None and self.latency_above_ms is None:
            raise ValueError("give in_flight_above and/or latency_above_ms: when is a model saturated?")
        return self


class CacheSpec(Strict):
    """The decision's semantic cache (see cache/ and the README's cache section).

    Exact tier: the normalized conversation within the request's isolation partition (tenant,
    user if `per_user`, decision, candidate models, system prompt, tools, response format,
    generation parameters, stream). Semantic tier: the nearest earlier request in the same
    partition whose embedding is at least `threshold` similar and, with `verify`, that the
    shipped verifier accepts as the same question.
    """

    enabled: bool = True
    mode: Literal[CACHE_MODES] = "exact_then_semantic"
    threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity a semantic candidate needs")
    verify: bool = Field(True, description="re-score semantic candidates with the shipped verifier")
    verify_threshold: float | None = Field(
        None, gt=0, lt=1, description="verifier probability a semantic hit needs; default: the verifier's own")
    ttl: Duration = Field(3600.0, description="lifetime of an entry: seconds or '30s', '5m', '1h', '7d'")
    max_entries: PositiveInt = Field(10_000, description="entries kept per category; least recently used go first")
    nonzero_temperature: bool = Field(
        True, description="false: only requests that set temperature 0 are cached (an omitted temperature "
                          "is the provider's default, usually 1)")
    per_user: bool = Field(False, description="true: entries are shared only between requests of the same user")
    streams: bool = Field(True, description="cache streamed requests (hits are re-streamed as SSE)")
    by_domain: bool | None = Field(
        None, description="categories are decision/domain (the domain head's label) instead of the decision; "
                          "default: true when `categories` is given")
    categories: dict[Annotated[str, Field(min_length=1, max_length=64)], CacheTuning] = Field(
        default_factory=dict, description="overrides per domain category (built-in or declared under 'domains')")
    load_aware: LoadAwareCache | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "CacheSpec":
        if self.categories and self.by_domain is False:
            raise ValueError("per-domain 'categories' need by_domain (leave it out or set it true)")
        return self

    @property
    def per_domain(self) -> bool:
        return bool(self.by_domain) or bool(self.categories)

    def needs_embedding(self) -> bool:
        """Whether this cache reads the request's embedding (semantic tier or domain categories)."""
        if not self.enabled:
            return False
        modes = {self.mode} | {t.mode for t in self.categories.values() if t.mode is not None}
        return self.per_domain or any(m != "exact" for m in modes)
