"""Exploration rules on top of a ridge estimator: LinUCB, linear Thompson sampling, ε-greedy.

These are the pure decision rules, usable offline (benchmarks, replay) without a gateway: give
them a context vector and the candidate arms, get back the pick, its propensity (the probability
this rule had of making that pick, for off-policy evaluation) and every candidate's score. The
gateway's selectors (`bandits.contextual`) wrap them with features, tenants and shared state.

Ties go to the earlier candidate, so with no data the decision's own order decides.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from sigroute.bandits.linear import DisjointRidge, HybridRidge, ProfiledEstimator

Estimator = DisjointRidge | HybridRidge | ProfiledEstimator

__all__ = ["Pick", "KnownTerms", "LinUCBRule", "ThompsonRule", "EpsilonGreedyRule", "Estimator"]


@dataclass(frozen=True, slots=True)
class KnownTerms:
    """The part of each arm's reward known before the call, for an estimator that learns only
    the rest: an arm's score is ``scale · (learned score) + offsets[arm]``.

    With ``learn: quality`` the estimator predicts quality, ``scale`` is the quality weight's share
    of the reward and ``offsets`` hold the weighted cost and latency terms computed from prices,
    prompt tokens and the arm's answer profile (`bandits.contextual.known_terms`).
    """

    scale: float
    offsets: Mapping[str, float]

    def apply(self, arm: str, learned: float) -> float:
        return self.scale * learned + self.offsets.get(arm, 0.0)


def _known(known: KnownTerms | None, arm: str, learned: float) -> float:
    return learned if known is None else known.apply(arm, learned)


@dataclass(frozen=True, slots=True)
class Pick:
    arm: str
    propensity: float
    scores: Mapping[str, float]  # higher is better; what the rule ranked by
    means: Mapping[str, float]   # the estimator's predicted reward per candidate

    def ranking(self, candidates: Sequence[str]) -> tuple[str, ...]:
        rest = sorted((c for c in candidates if c != self.arm), key=lambda c: -self.scores[c])  # stable
        return (self.arm, *rest)


def _argmax(candidates: Sequence[str], scores: Mapping[str, float]) -> str:
    best = candidates[0]
    for c in candidates[1:]:
        if scores[c] > scores[best] + 1e-12:
            best = c
    return best


def _require(candidates: Sequence[str]) -> Sequence[str]:
    if not candidates:
        raise ValueError("no candidate arm to choose from")
    return candidates


class LinUCBRule:
    """Upper confidence bound: θᵀx + α·sqrt(xᵀA⁻¹x). Deterministic given the state: propensity 1."""

    def __init__(self, estimator: Estimator, alpha: float = 0.5):
        self.estimator = estimator
        self.alpha = float(alpha)

    def choose(self, x: np.ndarray, candidates: Sequence[str], known: KnownTerms | None = None) -> Pick:
        candidates = _require(candidates)
        means, scores = {}, {}
        for arm, (mean, var) in self.estimator.predict_many(candidates, x).items():
            means[arm] = _known(known, arm, mean)
            scores[arm] = _known(known, arm, mean + self.alpha * math.sqrt(var))
        return Pick(_argmax(candidates, scores), 1.0, scores, means)


class ThompsonRule:
    """Linear Thompson sampling: each arm's reward for x is drawn from N(θᵀx, v²·xᵀA⁻¹x).

    With a disjoint estimator the arms' draws are independent, so the probability that arm a wins
    (its propensity) is estimated by `propensity_draws` extra vectorized draws, which costs
    microseconds. With the hybrid estimator the same per-arm marginals are used (the shared β makes
    the true joint draws correlated; the propensity is then an approximation, documented as such).
    """

    def __init__(self, estimator: Estimator, v: float = 0.3, propensity_draws: int = 256,
                 rng: np.random.Generator | None = None):
        self.estimator = estimator
        self.v = float(v)
        self.propensity_draws = int(propensity_draws)
        self.rng = rng if rng is not None else np.random.default_rng()

    def choose(self, x: np.ndarray, candidates: Sequence[str], known: KnownTerms | None = None) -> Pick:
        candidates = _require(candidates)
        predictions = self.estimator.predict_many(candidates, x)
        mu = np.array([predictions[c][0] for c in candidates])
        sd = self.v * np.sqrt(np.array([predictions[c][1] for c in candidates]))
        if known is not None:  # the known part is not uncertain: scale the draw, shift by it
            mu = known.scale * mu + np.array([known.offsets.get(c, 0.0) for c in candidates])
            sd = known.scale * sd
        draw = mu + sd * self.rng.standard_normal(len(candidates))
        i = int(np.argmax(draw))
        if self.propensity_draws > 0 and len(candidates) > 1:
            sims = mu + sd * self.rng.standard_normal((self.propensity_draws, len(candidates)))
            wins = np.bincount(np.argmax(sims, axis=1), minlength=len(candidates))
            # add-one smoothing: never report 0 for the arm that was actually drawn
            propensity = float((wins[i] + 1) / (self.propensity_draws + len(candidates)))
        else:
            propensity = 1.0
        scores = {c: float(draw[j]) for j, c in enumerate(candidates)}
        means = {c: float(mu[j]) for j, c in enumerate(candidates)}
        return Pick(candidates[i], propensity, scores, means)


class EpsilonGreedyRule:
    """Greedy on θᵀx, exploring uniformly with probability ε_t = max(ε_min, ε / (1 + t / decay)),
    where t counts observations so far (decay 0 = no decay)."""

    def __init__(self, estimator: Estimator, epsilon: float = 0.1, decay: float = 0.0, min_epsilon: float = 0.0,
                 rng: random.Random | None = None):
        self.estimator = estimator
        self.epsilon = float(epsilon)
        self.decay = float(decay)
        self.min_epsilon = float(min_epsilon)
        self.rng = rng if rng is not None else random.Random()

    def current_epsilon(self) -> float:
        t = self.estimator.total_count()
        eps = self.epsilon / (1.0 + t / self.decay) if self.decay > 0 else self.epsilon
        return max(self.min_epsilon, min(1.0, eps))

    def choose(self, x: np.ndarray, candidates: Sequence[str], known: KnownTerms | None = None) -> Pick:
        candidates = _require(candidates)
        means = {arm: _known(known, arm, mean) for arm, (mean, _) in self.estimator.predict_many(candidates, x).items()}
        greedy = _argmax(candidates, means)
        eps = self.current_epsilon()
        k = len(candidates)
        if self.rng.random() < eps:
            arm = candidates[self.rng.randrange(k)]
        else:
            arm = greedy
        propensity = eps / k + (1.0 - eps if arm == greedy else 0.0)
        return Pick(arm, propensity, dict(means), means)
