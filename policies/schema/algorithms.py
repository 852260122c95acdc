"""How a decision picks among its models (`algorithm:`): the options of every selection
algorithm, the context features and the reward of the contextual (learning) ones.

`ALGORITHM_OPTIONS` maps each algorithm's YAML name to its options model; `bandits/registry.py`
maps the same names to the selectors that implement them, and checks at import that the two agree.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from sigroute.policies.schema.base import NamedOptions, Strict


class StaticOptions(Strict):
    """Always the first healthy candidate, in the order the decision lists them."""


class WeightedOptions(Strict):
    """Random choice with the given weights (missing models weigh 1)."""

    weights: dict[str, PositiveFloat] = Field(default_factory=dict)


class RoundRobinOptions(Strict):
    """Each healthy candidate in turn."""


class CheapestOptions(Strict):
    """Lowest expected cost: declared prices × (counted prompt tokens, expected completion tokens)."""

    expected_output_tokens: PositiveInt = Field(
        256, description="completion length assumed when the request sets no max_tokens"
    )


class FastestOptions(Strict):
    """Lowest time to first token, from a time-decayed mean of observed values."""

    half_life_s: PositiveFloat = Field(300.0, description="observations lose half their weight after this long")
    prior_ttft_ms: PositiveFloat = Field(
        0.0001, description="assumed TTFT of a model never observed (tiny = try unknown models first)"
    )


FEATURE_GROUPS = ("bias", "domain", "complexity", "difficulty", "length", "shape", "language", "jailbreak", "pii", "embedding")


class FeatureGroup(Strict):
    """One block of a contextual bandit's context vector (see bandits/features.py)."""

    name: Literal[FEATURE_GROUPS]
    dims: PositiveInt = Field(16, description="embedding only: how many numbers of the embedding to keep")
    basis: Literal["random", "principal"] = Field(
        "random", description="embedding only: `random` = a fixed random projection to `dims` numbers; "
                              "`principal` = the coordinates on the first `dims` principal axes of the shipped "
                              "basis (signals/principal.py, at most 64)")
    weight: PositiveFloat = Field(1.0, description="scale of this block before the whole vector is set to unit norm")

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and len(value) == 1 and "name" not in value:
            (name, options), = value.items()
            if options is not None and not isinstance(options, dict):   # (a TypeError would escape pydantic)
                raise ValueError(f"the options of feature group '{name}' must be a mapping such as "
                                 f"{{dims: 16, weight: 1.0}}, got {type(options).__name__}")
            return {"name": name, **(options or {})}
        return value

    @model_validator(mode="after")
    def _basis_fits(self) -> "FeatureGroup":
        if self.basis != "random" and self.name != "embedding":
            raise ValueError(f"'basis' is an option of the embedding group only, not of '{self.name}'")
        if self.basis == "principal" and self.dims > 64:
            raise ValueError(f"the principal basis has 64 axes; dims {self.dims} is too many")
        return self


class RewardSpec(Strict):
    """How an outcome becomes a reward in [0, 1]: a weighted blend of quality, cost, latency and energy.

    quality is the feedback score (thumbs up = 1, down = 0; 0 when the upstream failed); cost is
    the answer's price relative to the most expensive candidate answering the same tokens; latency
    is the time to the whole answer relative to `latency_budget_ms`; energy is the answer's
    declared energy (the model's `energy:`) relative to the most energy-hungry candidate for the
    same tokens (a model without a declaration counts as the most hungry). Cost, latency and energy
    count as 1 - normalized value, so cheaper, faster and more frugal is better.
    """

    quality: float = Field(1.0, ge=0, description="weight of answer quality (from feedback)")
    cost: float = Field(0.0, ge=0, description="weight of cheapness")
    latency: float = Field(0.0, ge=0, description="weight of speed")
    energy: float = Field(0.0, ge=0, description="weight of frugality (declared energy per answer)")
    latency_budget_ms: PositiveFloat = Field(10_000.0, description="latency that counts as the worst")
    default_quality: float = Field(
        0.5, ge=0, le=1, description="quality assumed until feedback arrives (and if it never does)")
    feedback_ttl_s: PositiveFloat = Field(3600.0, description="how long a request waits for quality feedback")

    @model_validator(mode="after")
    def _some_weight(self) -> "RewardSpec":
        if self.quality + self.cost + self.latency + self.energy <= 0:
            raise ValueError("at least one of quality, cost, latency, energy must have a positive weight")
        return self

    @property
    def total(self) -> float:
        """The sum of the weights (a reward is their weighted mean)."""
        return self.quality + self.cost + self.latency + self.energy


# What an unobserved model is assumed to score. Chosen by 5-fold cross-validation of cold starts
# inside the routing benchmark's training split (learn: quality; AIQ 0.533 with 0 = plain ridge,
# 0.660-0.669 with 0.5, 0.680-0.687 with 0.75, 0.670-0.681 with 1.0); with a warm start it changes
# nothing measurable (0.7080 vs 0.7082). README "Benchmarks", cold start.
DEFAULT_PRIOR = 0.75


def _default_features() -> tuple[FeatureGroup, ...]:
    return tuple(FeatureGroup(name=n) for n in ("bias", "length", "shape"))


class _ContextualOptions(Strict):
    features: tuple[FeatureGroup, ...] = Field(
        default_factory=_default_features,
        description="context blocks, e.g. [bias, domain, complexity, length, shape, {embedding: {dims: 16}}]")
    reward: RewardSpec = Field(default_factory=RewardSpec)
    learn: Literal["reward", "quality"] = Field(
        "reward",
        description="what the estimator learns: `reward` = the whole blended reward; `quality` = answer quality "
                    "only, with the cost and latency terms computed at selection from the model's price, the "
                    "request's prompt tokens and the model's observed mean answer length and latency")
    ridge: PositiveFloat = Field(1.0, description="ridge regularization λ")
    prior: float = Field(
        DEFAULT_PRIOR, ge=0, le=1,
        description="what a model is assumed to score (quality with `learn: quality`, else reward) where its "
                    "data says nothing yet: the estimate is the data's plus prior × the share of it the data does "
                    "not support (λ·xᵀA⁻¹x). 0 = plain ridge, which ranks an unobserved model last")
    discount_half_life_s: PositiveFloat | None = Field(
        None, description="forget old observations: their weight halves after this long (drift)")
    recompute_every: PositiveInt = Field(64, description="exact inverse recomputation period (updates)")
    sync_interval_s: PositiveFloat = Field(1.0, description="how often learned state is shared via the store")

    @field_validator("features")
    @classmethod
    def _unique_groups(cls, value: tuple[FeatureGroup, ...]) -> tuple[FeatureGroup, ...]:
        names = [g.name for g in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature group(s) listed twice: {', '.join(dupes)}")
        if not value:
            raise ValueError("a contextual algorithm needs at least one feature group (e.g. [bias])")
        return value


class LinUCBOptions(_ContextualOptions):
    """Disjoint LinUCB: per model a ridge regression of reward on the context; pick the highest
    upper confidence bound θᵀx + alpha·sqrt(xᵀA⁻¹x)."""

    alpha: float = Field(0.5, ge=0, description="exploration strength")


class HybridLinUCBOptions(LinUCBOptions):
    """Hybrid LinUCB: coefficients shared by all models (on model features ⊗ context) plus
    per-model ones, so a newly added model starts from what the pool has learned."""

    model_features: tuple[Literal["bias", "price"], ...] = Field(
        ("bias", "price"), min_length=1,
        description="what describes a model to the shared part: bias = 1, price = log(1 + input + output price)")


class ThompsonOptions(_ContextualOptions):
    """Linear Thompson sampling: draw each model's reward from its posterior, pick the best draw."""

    v: PositiveFloat = Field(0.3, description="posterior scale (exploration strength)")


class EpsilonGreedyOptions(_ContextualOptions):
    """Best predicted reward, but a uniformly random model with probability epsilon."""

    epsilon: float = Field(0.1, ge=0, le=1)
    decay: float = Field(0.0, ge=0, description="epsilon / (1 + observations / decay); 0 = constant")
    min_epsilon: float = Field(0.0, ge=0, le=1)


CONTEXTUAL_ALGORITHMS = ("linucb", "hybrid_linucb", "thompson", "epsilon_greedy")


ALGORITHM_OPTIONS: dict[str, type[Strict]] = {
    "static": StaticOptions,
    "weighted": WeightedOptions,
    "round_robin": RoundRobinOptions,
    "cheapest": CheapestOptions,
    "fastest": FastestOptions,
    "linucb": LinUCBOptions,
    "hybrid_linucb": HybridLinUCBOptions,
    "thompson": ThompsonOptions,
    "epsilon_greedy": EpsilonGreedyOptions,
}


class Algorithm(NamedOptions):
    """A selection algorithm and its options; written in YAML as `name` or `{name: {options}}`."""

    registry = ALGORITHM_OPTIONS
    shape = "write the algorithm as a name (e.g. 'cheapest') or {name: {options}}"
    unknown = "unknown algorithm '{name}'; known: {known}"
