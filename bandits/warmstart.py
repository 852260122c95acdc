"""Warm start: the additive statistics a learning decision would have collected had it seen every
model's outcome on a set of logged requests (full information), computed in closed form.

`full_information_sums(selector, contexts, rewards)` takes the context vectors (n × d, built with
the decision's own `FeatureExtractor`) and, per model, the reward each request would have earned
(n values; NaN = unknown, that request is skipped for that model). It returns one flat statistics
vector per model in the selector's layout, ready for `ContextualSelector`'s store key — so
`sigroute bandit warm-start` can write them to Redis or to a snapshot for `sigroute bandit import`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from sigroute.bandits.linear import PROFILE_SIZE, DisjointRidge, HybridRidge, ProfiledEstimator

__all__ = ["full_information_sums"]


def _disjoint(x: np.ndarray, r: np.ndarray) -> np.ndarray:
    xtx = x.T @ x
    return np.concatenate(([float(len(r)), float(r.sum()), float(r @ r)], x.T @ r, xtx.ravel()))


def full_information_sums(estimator: DisjointRidge | HybridRidge | ProfiledEstimator, contexts: np.ndarray,
                          rewards: Mapping[str, np.ndarray], *,
                          completion_tokens: Mapping[str, np.ndarray] | None = None,
                          latency_ms: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Per model the statistics of every known reward. For an estimator that learns quality only
    (`ProfiledEstimator`) `rewards` are qualities, and `completion_tokens` / `latency_ms` (per
    model, n values, NaN = unknown) fill the model's answer profile."""
    if isinstance(estimator, ProfiledEstimator):
        inner = full_information_sums(estimator.inner, contexts, rewards)
        out = {}
        for arm, vec in inner.items():
            profile = np.zeros(PROFILE_SIZE)
            for k, table in ((0, completion_tokens), (2, latency_ms)):
                values = None if table is None else table.get(arm)
                if values is not None:
                    values = np.asarray(values, dtype=np.float64)
                    known = ~np.isnan(values) & ~np.isnan(np.asarray(rewards[arm], dtype=np.float64))
                    profile[k:k + 2] = (float(known.sum()), float(values[known].sum()))
            out[arm] = np.concatenate((vec, profile))
        return out
    contexts = np.asarray(contexts, dtype=np.float64)
    if contexts.ndim != 2 or contexts.shape[1] != estimator.dim:
        raise ValueError(f"contexts must be n × {estimator.dim} (the decision's feature count), got {contexts.shape}")
    out: dict[str, np.ndarray] = {}
    for arm, values in rewards.items():
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (contexts.shape[0],):
            raise ValueError(f"model '{arm}': {values.size} rewards for {contexts.shape[0]} contexts")
        known = ~np.isnan(values)
        x, r = contexts[known], values[known]
        base = _disjoint(x, r)
        if isinstance(estimator, DisjointRidge):
            out[arm] = base
            continue
        f = estimator.arm_features.get(arm, estimator.default_arm_features)
        xtx = x.T @ x
        xr = x.T @ r
        out[arm] = np.concatenate((base, np.kron(f, xr), np.kron(f[None, :], xtx).ravel(),
                                   np.kron(np.outer(f, f), xtx).ravel()))
    return out
