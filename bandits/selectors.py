"""The non-contextual selectors: static, weighted, round-robin, cheapest and fastest.

Every selector here follows the contract in `bandits.base`:

* `select(candidates, ctx)` chooses among the candidates it is given (already filtered by the
  caller for health and context window, in the decision's order) and returns a `Choice` whose
  `ranking` holds every candidate exactly once, the pick first, and whose `scores` has one entry
  per candidate (higher is better).
* `select` on an empty candidate list raises `ValueError`.
* `update(choice, reward)` learns from an outcome; only `FastestSelector` has state to learn.

Selectors may be built with `options=None`, which means the algorithm's default options.
"""

from __future__ import annotations

import math
import random
import threading
import time
from typing import Any, Callable, Mapping, Sequence

from sigroute.bandits.base import Choice, Reward, Selector
from sigroute.policies.schema import (
    CheapestOptions,
    FastestOptions,
    RoundRobinOptions,
    StaticOptions,
    Strict,
    WeightedOptions,
)
from sigroute.signals.context import RequestContext

__all__ = [
    "StaticSelector",
    "WeightedSelector",
    "RoundRobinSelector",
    "CheapestSelector",
    "FastestSelector",
]


def _require_candidates(candidates: Sequence[str]) -> tuple[str, ...]:
    candidates = tuple(candidates)
    if not candidates:
        raise ValueError("no candidate model to select from: every model of the decision is unhealthy or too small")
    return candidates


class _OptionsSelector(Selector):
    """Fills in the algorithm's default options when `options` is None."""

    options_type: type[Strict] = Strict

    def __init__(self, options: Any = None, models: Mapping[str, Any] | None = None):
        if options is None:
            options = self.options_type()
        elif not isinstance(options, self.options_type):
            raise TypeError(
                f"{type(self).__name__} takes {self.options_type.__name__}, not {type(options).__name__}"
            )
        super().__init__(options, models if models is not None else {})


# --------------------------------------------------------------------------------------------
# static


class StaticSelector(_OptionsSelector):
    """Always the first candidate, i.e. the first healthy model in the decision's order."""

    name = "static"
    options_type = StaticOptions

    def select(self, candidates: Sequence[str], ctx: RequestContext | None = None) -> Choice:
        candidates = _require_candidates(candidates)
        n = len(candidates)
        # scores only express the order: the first candidate scores highest.
        scores = {m: float(n - i) for i, m in enumerate(candidates)}
        return Choice(model=candidates[0], propensity=1.0, scores=scores, ranking=candidates)


# --------------------------------------------------------------------------------------------
# weighted


class WeightedSelector(_OptionsSelector):
    """Random choice in proportion to `options.weights` (a model without a weight weighs 1).

    Weights are renormalized over the candidates given, so an excluded (unhealthy) model's share
    is spread over the others in proportion to their weights. `propensity` is the pick's
    normalized weight and `scores` holds every candidate's normalized weight (they sum to 1).
    """

    name = "weighted"
    options_type = WeightedOptions

    def __init__(self, options: WeightedOptions | None = None, models: Mapping[str, Any] | None = None,
                 *, rng: random.Random | None = None):
        super().__init__(options, models)
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()

    def weight(self, model: str) -> float:
        return float(self.options.weights.get(model, 1.0))

    def probabilities(self, candidates: Sequence[str]) -> dict[str, float]:
        """Each candidate's chance of being picked."""
        candidates = _require_candidates(candidates)
        weights = [self.weight(m) for m in candidates]
        total = math.fsum(weights)
        return {m: w / total for m, w in zip(candidates, weights)}

    def select(self, candidates: Sequence[str], ctx: RequestContext | None = None) -> Choice:
        candidates = _require_candidates(candidates)
        probs = self.probabilities(candidates)
        with self._lock:  # random.Random is not safe to share across threads without one
            u = self._rng.random()
        pick = candidates[-1]  # guards against u landing past the rounded cumulative sum
        cumulative = 0.0
        for m in candidates:
            cumulative += probs[m]
            if u < cumulative:
                pick = m
                break
        rest = sorted((m for m in candidates if m != pick), key=lambda m: -probs[m])  # stable
        return Choice(model=pick, propensity=probs[pick], scores=probs, ranking=(pick, *rest))


# --------------------------------------------------------------------------------------------
# round robin


class RoundRobinSelector(_OptionsSelector):
    """Each candidate in turn.

    One counter per selector (so per decision and per process; replicas rotate independently).
    Request `n` goes to `candidates[n % len(candidates)]`, so when the set of healthy candidates
    changes the rotation simply continues over the new set. The ranking is the rotation order
    starting at the pick, which makes fallback continue the rotation too.

    `propensity` is 1.0: given the counter the pick is deterministic, so there is no randomness
    to correct for in offline evaluation. (Averaged over time each candidate gets 1/k of the
    traffic, but that is a frequency, not the probability this particular choice had.)
    """

    name = "round_robin"
    options_type = RoundRobinOptions

    def __init__(self, options: RoundRobinOptions | None = None, models: Mapping[str, Any] | None = None):
        super().__init__(options, models)
        self._counter = 0
        self._lock = threading.Lock()

    def select(self, candidates: Sequence[str], ctx: RequestContext | None = None) -> Choice:
        candidates = _require_candidates(candidates)
        with self._lock:
            n = self._counter
            self._counter += 1
        k = len(candidates)
        i = n % k
        ranking = candidates[i:] + candidates[:i]
        scores = {m: float(k - r) for r, m in enumerate(ranking)}
        return Choice(model=ranking[0], propensity=1.0, scores=scores, ranking=ranking)

    def adopt(self, previous: Selector) -> None:
        """A reload continues the rotation where the previous policy left it."""
        if type(previous) is type(self):
            with self._lock:
                self._counter = previous._counter


# --------------------------------------------------------------------------------------------
# cheapest


class CheapestSelector(_OptionsSelector):
    """Lowest expected cost of this request at the models' declared prices.

    expected cost (USD) = (price.input × prompt tokens + price.output × completion tokens) / 1e6,
    where prompt tokens are counted with the real tokenizer (`ctx.prompt_tokens`) and completion
    tokens are the request's `max_tokens`/`max_completion_tokens` or, when it sets none,
    `options.expected_output_tokens`. Ties go to the earlier candidate. `scores` are the negative
    expected costs in USD. Context-window filtering is the caller's job.
    """

    name = "cheapest"
    options_type = CheapestOptions

    def _price(self, model: str):
        spec = self.models.get(model)
        if spec is None:
            raise ValueError(f"cheapest: no model spec (and so no price) for candidate '{model}'")
        return spec.price

    def expected_costs(self, candidates: Sequence[str], ctx: RequestContext) -> dict[str, float]:
        candidates = _require_candidates(candidates)
        prices = {m: self._price(m) for m in candidates}
        # Counting tokens is skipped when no candidate charges for input.
        prompt_tokens = ctx.prompt_tokens if any(p.input for p in prices.values()) else 0
        output_tokens = ctx.max_output_tokens or self.options.expected_output_tokens
        return {m: (p.input * prompt_tokens + p.output * output_tokens) / 1e6 for m, p in prices.items()}

    def select(self, candidates: Sequence[str], ctx: RequestContext) -> Choice:
        costs = self.expected_costs(candidates, ctx)
        ranking = tuple(sorted(costs, key=costs.__getitem__))  # stable: ties keep candidate order
        return Choice(model=ranking[0], propensity=1.0, scores={m: -c for m, c in costs.items()},
                      ranking=ranking)


# --------------------------------------------------------------------------------------------
# fastest


class FastestSelector(_OptionsSelector):
    """Lowest time to first token (TTFT), from a time-decayed mean of observed values.

    State, per model, is two additive sums relative to one reference time `t_ref`:

        weight       = Σ w_i              w_i = 2 ** ((t_i - t_ref) / half_life_s)
        weighted_sum = Σ w_i · ttft_i

    so the decayed mean is `weighted_sum / weight` (an observation `half_life_s` older than
    another counts half as much) and two replicas' states merge by adding, once both are
    expressed relative to the same `t_ref` (`merge`). When observations arrive far after
    `t_ref` the sums are rebased onto a newer reference to keep the exponents small.

    Choices made by this selector:

    * **Unknown and stale models.** The score blends the observed sums with the prior
      (`options.prior_ttft_ms`) at a weight of `prior_weight` fresh observations (default 0.01):
      mean = (Σ w_i·ttft_i + prior·prior_weight·d) / (Σ w_i + prior_weight·d), with both sums
      discounted to now (d = 2 ** ((t_ref - now) / half_life_s) moves the prior to now).
      A model never observed scores the prior (tiny by default, so unknown models are tried
      first). A model observed recently scores its decayed mean almost exactly. A model whose
      observations are many half-lives old drifts back towards the prior and so is tried again
      eventually, rather than never again after one bad spell (pure greedy would do that).
      `prior_weight=0` gives the plain decayed mean.
    * **Failures** (`reward.ok` False) are recorded as a penalty TTFT: the model's first-token
      deadline (`ModelSpec.first_token_timeout_s`, 30 s when unknown) or the failed call's
      latency if it took longer. A failure is thus as bad as waiting out the deadline. This is
      a fixed function of the reward and the policy, never of the current state, so replicas
      that merge still agree exactly with one selector that saw every outcome.
    * A successful outcome without `ttft_ms` uses `latency_ms` (a non-streamed answer's first
      token arrives with the whole answer); with neither it is ignored.
    * The outcome is credited to `reward.model` (the model that actually answered, which may be
      a fallback rather than `choice.model`).

    `propensity` is 1.0 (the pick is deterministic given the state and the time).
    `state()`/`load()`/`merge()` exchange a JSON-able dict; that is what the shared stores persist.
    """

    name = "fastest"
    options_type = FastestOptions

    STATE_VERSION = 1
    REBASE_HALF_LIVES = 64.0  # rebase once an observation is this many half-lives past t_ref
    DEFAULT_FIRST_TOKEN_TIMEOUT_S = 30.0

    def __init__(self, options: FastestOptions | None = None, models: Mapping[str, Any] | None = None,
                 *, clock: Callable[[], float] = time.time, prior_weight: float = 0.01):
        super().__init__(options, models)
        if prior_weight < 0 or not math.isfinite(prior_weight):
            raise ValueError("prior_weight must be a finite number >= 0")
        self._clock = clock
        self.prior_weight = float(prior_weight)
        self._lock = threading.Lock()
        self._t_ref: float | None = None
        self._sums: dict[str, list[float]] = {}  # model -> [weighted_sum, weight]

    @property
    def half_life_s(self) -> float:
        return float(self.options.half_life_s)

    # learning ---------------------------------------------------------------------------------
    def penalty_ttft_ms(self, model: str, latency_ms: float | None = None) -> float:
        """TTFT recorded for a failed call to `model`."""
        spec = self.models.get(model)
        timeout_s = getattr(spec, "first_token_timeout_s", None) or self.DEFAULT_FIRST_TOKEN_TIMEOUT_S
        penalty = float(timeout_s) * 1000.0
        if latency_ms is not None and math.isfinite(latency_ms):
            penalty = max(penalty, float(latency_ms))
        return penalty

    def update(self, choice: Choice | None, reward: Reward) -> None:
        if reward.ok:
            value = reward.ttft_ms if reward.ttft_ms is not None else reward.latency_ms
            if value is None or not math.isfinite(value) or value < 0:
                return
            ttft = float(value)
        else:
            ttft = self.penalty_ttft_ms(reward.model, reward.latency_ms)
        at = float(reward.at) if reward.at is not None else float(self._clock())
        self.observe(reward.model, ttft, at)

    def observe(self, model: str, ttft_ms: float, at: float) -> None:
        """Record one TTFT observation for `model` made at unix time `at`."""
        with self._lock:
            if self._t_ref is None:
                self._t_ref = at
            elif (at - self._t_ref) / self.half_life_s > self.REBASE_HALF_LIVES:
                self._rebase(at)
            w = 2.0 ** ((at - self._t_ref) / self.half_life_s)
            sums = self._sums.setdefault(model, [0.0, 0.0])
            sums[0] += w * ttft_ms
            sums[1] += w

    def _rebase(self, new_ref: float) -> None:
        """Express the sums relative to `new_ref` (caller holds the lock)."""
        assert self._t_ref is not None
        factor = 2.0 ** (-(new_ref - self._t_ref) / self.half_life_s)
        for sums in self._sums.values():
            sums[0] *= factor
            sums[1] *= factor
        self._t_ref = new_ref

    # reading ----------------------------------------------------------------------------------
    def totals(self, at: float | None = None) -> dict[str, tuple[float, float]]:
        """Per model `(weighted_sum, weight)` discounted to unix time `at` (default now).

        Unlike the raw state this does not depend on the reference time, so two selectors with
        the same knowledge give the same totals.
        """
        at = float(self._clock()) if at is None else float(at)
        with self._lock:
            if self._t_ref is None:
                return {}
            factor = 2.0 ** ((self._t_ref - at) / self.half_life_s)
            return {m: (s * factor, w * factor) for m, (s, w) in self._sums.items()}

    def mean_ttft_ms(self, model: str, at: float | None = None) -> float:
        """The decayed mean TTFT of `model` blended with the prior (see the class docstring)."""
        return self.means([model], at)[model]

    def means(self, models: Sequence[str], at: float | None = None) -> dict[str, float]:
        totals = self.totals(at)
        prior = float(self.options.prior_ttft_ms)
        out: dict[str, float] = {}
        for m in models:
            s, w = totals.get(m, (0.0, 0.0))
            denominator = w + self.prior_weight
            out[m] = (s + prior * self.prior_weight) / denominator if denominator > 0 else prior
        return out

    def select(self, candidates: Sequence[str], ctx: RequestContext | None = None) -> Choice:
        candidates = _require_candidates(candidates)
        means = self.means(candidates)
        ranking = tuple(sorted(candidates, key=means.__getitem__))  # stable: ties keep candidate order
        return Choice(model=ranking[0], propensity=1.0, scores={m: -means[m] for m in candidates},
                      ranking=ranking)

    def adopt(self, previous: Selector) -> None:
        """A reload keeps the observed TTFTs of the models still in the decision (same half-life
        only: sums decayed at another rate cannot be combined)."""
        if type(previous) is not type(self) or previous.half_life_s != self.half_life_s:
            return
        state = previous.state()
        state["models"] = {m: v for m, v in state["models"].items() if m in self.models}
        self.load(state)

    # sharing between replicas -----------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """The learnable state as a JSON-able dict (sums relative to `t_ref`)."""
        with self._lock:
            return {
                "version": self.STATE_VERSION,
                "algorithm": self.name,
                "half_life_s": self.half_life_s,
                "t_ref": self._t_ref,
                "models": {m: {"weighted_sum": s, "weight": w} for m, (s, w) in self._sums.items()},
            }

    def _parse(self, state: Mapping[str, Any]) -> tuple[float | None, dict[str, list[float]]]:
        if state.get("version") != self.STATE_VERSION:
            raise ValueError(f"unsupported fastest-selector state version {state.get('version')!r}")
        half_life = float(state.get("half_life_s", self.half_life_s))
        if not math.isclose(half_life, self.half_life_s, rel_tol=1e-12):
            raise ValueError(
                f"cannot combine state with half_life_s={half_life} into a selector with half_life_s={self.half_life_s}"
            )
        t_ref = state.get("t_ref")
        sums = {str(m): [float(v["weighted_sum"]), float(v["weight"])]
                for m, v in (state.get("models") or {}).items()}
        if t_ref is None:
            if any(w for _, w in sums.values()):
                raise ValueError("state has sums but no t_ref")
            return None, {}
        return float(t_ref), sums

    def load(self, state: Mapping[str, Any]) -> None:
        """Replace this selector's state with `state` (as returned by `state()`)."""
        t_ref, sums = self._parse(state)
        with self._lock:
            self._t_ref = t_ref
            self._sums = sums

    def merge(self, state: Mapping[str, Any]) -> None:
        """Add another replica's state (as returned by its `state()`) to this one."""
        other_ref, other = self._parse(state)
        if other_ref is None:
            return
        with self._lock:
            if self._t_ref is None:
                self._t_ref = other_ref
            elif other_ref > self._t_ref:
                self._rebase(other_ref)
            factor = 2.0 ** ((other_ref - self._t_ref) / self.half_life_s)
            for m, (s, w) in other.items():
                sums = self._sums.setdefault(m, [0.0, 0.0])
                sums[0] += s * factor
                sums[1] += w * factor
