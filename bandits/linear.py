"""Ridge-regression estimators behind the linear contextual bandits, kept as additive sums.

Every learner here models the reward of arm (model) `a` for a context vector `x` as linear in
features and keeps only *sufficient statistics that add*: per arm the count, Σ x xᵀ, Σ r x, and so
on. The ridge term λI is added when the statistics are read, never stored, so two replicas that
each learned from their own traffic merge exactly by adding their sums (see `bandits.store`).

* `DisjointRidge` — one independent ridge regression per arm (disjoint LinUCB, Li et al. 2010,
  algorithm 1). The inverse of Aₐ = λI + Σ x xᵀ is kept up to date by the Sherman–Morrison formula
  after each observation and recomputed exactly from the sums every `recompute_every` updates (and
  whenever sums are loaded), so rounding error never accumulates.
* `HybridRidge` — shared coefficients β on features zₐ = armfeatures(a) ⊗ x plus a per-arm θₐ
  (hybrid LinUCB, algorithm 2). A newly added arm starts at the pooled prediction zₐᵀβ instead of
  knowing nothing. The estimates are computed from per-arm sums by block elimination, which gives
  exactly the joint ridge regression over [z, x in arm a's slot].

Both expose `predict(arm, x) -> (mean, variance_factor)` where the variance factor is xᵀA⁻¹x (the
joint form for the hybrid), `observe(arm, x, reward)` (a full observation: the context counts once
more and its reward is added), `credit(arm, x, reward)` (only reward added to an earlier
observation of the same context: delayed quality feedback), and `sums()` / `load_sums()` to move
state in and out as flat float64 vectors, one per arm.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

__all__ = ["DisjointRidge", "HybridRidge", "ProfiledEstimator", "disjoint_layout_size", "hybrid_layout_size", "PROFILE_SIZE"]


def disjoint_layout_size(dim: int) -> int:
    """Length of one arm's flat sum vector for `DisjointRidge`: [n, Σr, Σr², Σ r x (d), Σ x xᵀ (d²)]."""
    return 3 + dim + dim * dim


def hybrid_layout_size(dim: int, shared_dim: int) -> int:
    """`disjoint_layout_size` plus [Σ r z (k), Σ x zᵀ (d·k), Σ z zᵀ (k²)]."""
    return disjoint_layout_size(dim) + shared_dim + dim * shared_dim + shared_dim * shared_dim


def _as_vector(x: np.ndarray | Iterable[float], dim: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.shape[0] != dim:
        raise ValueError(f"context vector has {x.shape[0]} features, the estimator expects {dim}")
    return x


@dataclass
class _ArmSums:
    """Σ statistics of one arm for a d-dimensional context."""

    n: float
    r_sum: float
    r2_sum: float
    xr: np.ndarray  # (d,)
    xx: np.ndarray  # (d, d)

    @classmethod
    def zeros(cls, dim: int) -> "_ArmSums":
        return cls(0.0, 0.0, 0.0, np.zeros(dim), np.zeros((dim, dim)))

    def pack(self) -> np.ndarray:
        return np.concatenate(([self.n, self.r_sum, self.r2_sum], self.xr, self.xx.reshape(-1)))

    @classmethod
    def unpack(cls, vec: np.ndarray, dim: int) -> "_ArmSums":
        vec = np.asarray(vec, dtype=np.float64)
        head = 3 + dim
        return cls(float(vec[0]), float(vec[1]), float(vec[2]), vec[3:head].copy(),
                   vec[head:head + dim * dim].reshape(dim, dim).copy())


class DisjointRidge:
    """Independent ridge regression per arm, with the inverse kept by Sherman–Morrison."""

    kind = "disjoint"

    def __init__(self, dim: int, ridge: float = 1.0, recompute_every: int = 64, prior: float = 0.0):
        if dim < 1:
            raise ValueError("dim must be at least 1")
        if ridge <= 0:
            raise ValueError("ridge (λ) must be positive")
        self.dim = dim
        self.ridge = float(ridge)
        self.recompute_every = max(1, int(recompute_every))
        self.prior = float(prior)
        self._sums: dict[str, _ArmSums] = {}
        self._inverse: dict[str, np.ndarray] = {}
        self._theta: dict[str, np.ndarray] = {}
        self._since_exact: dict[str, int] = {}

    # -- state in and out ---------------------------------------------------------------------
    @property
    def layout_size(self) -> int:
        return disjoint_layout_size(self.dim)

    def arms(self) -> list[str]:
        return list(self._sums)

    def sums(self) -> dict[str, np.ndarray]:
        return {arm: s.pack() for arm, s in self._sums.items()}

    def load_sums(self, arms: Mapping[str, np.ndarray], *, replace: bool = True) -> None:
        """Set (or, with replace=False, overwrite only the given) arms' statistics and recompute."""
        if replace:
            self._sums.clear()
            self._inverse.clear()
            self._theta.clear()
            self._since_exact.clear()
        for arm, vec in arms.items():
            vec = np.asarray(vec, dtype=np.float64)
            if vec.shape != (self.layout_size,):
                raise ValueError(f"arm '{arm}': state has {vec.size} numbers, expected {self.layout_size} "
                                 f"for {self.dim} features (was it trained with another feature schema?)")
            self._sums[arm] = _ArmSums.unpack(vec, self.dim)
            self._exact(arm)

    def remove_arm(self, arm: str) -> None:
        for table in (self._sums, self._inverse, self._theta, self._since_exact):
            table.pop(arm, None)

    def count(self, arm: str) -> float:
        s = self._sums.get(arm)
        return s.n if s is not None else 0.0

    def total_count(self) -> float:
        return sum(s.n for s in self._sums.values())

    # -- estimation ---------------------------------------------------------------------------
    def _arm(self, arm: str) -> _ArmSums:
        s = self._sums.get(arm)
        if s is None:
            s = self._sums[arm] = _ArmSums.zeros(self.dim)
            self._inverse[arm] = np.eye(self.dim) / self.ridge
            self._theta[arm] = np.zeros(self.dim)
            self._since_exact[arm] = 0
        return s

    def _exact(self, arm: str) -> None:
        s = self._sums[arm]
        a = s.xx + self.ridge * np.eye(self.dim)
        inv = np.linalg.inv(a)
        self._inverse[arm] = 0.5 * (inv + inv.T)
        self._theta[arm] = self._inverse[arm] @ s.xr
        self._since_exact[arm] = 0

    def inverse(self, arm: str) -> np.ndarray:
        """A⁻¹ for the arm as currently maintained (exact or Sherman–Morrison updated)."""
        self._arm(arm)
        return self._inverse[arm]

    def theta(self, arm: str) -> np.ndarray:
        self._arm(arm)
        return self._theta[arm]

    def predict(self, arm: str, x: np.ndarray) -> tuple[float, float]:
        """(θₐᵀx + prior·λ·xᵀAₐ⁻¹x, xᵀAₐ⁻¹x).

        Plain ridge shrinks every estimate towards 0, so an arm it knows nothing about looks like
        the worst arm there is. With a `prior`, the share of the prediction the data does not yet
        support, λ·xᵀA⁻¹x (1 for an unseen arm and a unit-norm context, falling towards 0 as
        observations near x accumulate), is credited at the prior instead of 0: an unseen arm
        predicts `prior`·|x|², a well-observed one what its data says. Nothing of the prior is
        stored, so sums still merge by adding."""
        x = _as_vector(x, self.dim)
        if arm not in self._sums:
            return self.prior * float(x @ x), float(x @ x) / self.ridge
        inv = self._inverse[arm]
        var = max(0.0, float(x @ inv @ x))
        return float(self._theta[arm] @ x) + self.prior * self.ridge * var, var

    def predict_many(self, arms: Iterable[str], x: np.ndarray) -> dict[str, tuple[float, float]]:
        return {arm: self.predict(arm, x) for arm in arms}

    # -- learning -----------------------------------------------------------------------------
    def observe(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0) -> None:
        x = _as_vector(x, self.dim)
        s = self._arm(arm)
        w = float(weight)
        s.n += w
        s.r_sum += w * reward
        s.r2_sum += w * reward * reward
        s.xr += (w * reward) * x
        s.xx += w * np.outer(x, x)
        self._since_exact[arm] += 1
        if self._since_exact[arm] >= self.recompute_every or w != 1.0:
            self._exact(arm)
            return
        inv = self._inverse[arm]
        ax = inv @ x
        self._inverse[arm] = inv - np.outer(ax, ax) / (1.0 + float(x @ ax))
        self._theta[arm] = self._inverse[arm] @ s.xr

    def observation_sums(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0,
                         count: bool = True) -> np.ndarray:
        """The flat statistics one `observe` (count=True) or `credit` (count=False) adds."""
        x = _as_vector(x, self.dim)
        w = float(weight)
        if count:
            return np.concatenate(([w, w * reward, w * reward * reward], (w * reward) * x, w * np.outer(x, x).ravel()))
        return np.concatenate(([0.0, w * reward, 0.0], (w * reward) * x, np.zeros(self.dim * self.dim)))

    def credit(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0) -> None:
        """Add reward to an earlier observation of `x` (the context is not counted again)."""
        x = _as_vector(x, self.dim)
        s = self._arm(arm)
        w = float(weight)
        s.r_sum += w * reward
        s.xr += (w * reward) * x
        self._theta[arm] = self._inverse[arm] @ s.xr

    def add_sums(self, arm: str, vec: np.ndarray) -> None:
        """Add a flat statistics vector (e.g. another replica's delta) to an arm and recompute it."""
        vec = np.asarray(vec, dtype=np.float64)
        if vec.shape != (self.layout_size,):
            raise ValueError(f"arm '{arm}': delta has {vec.size} numbers, expected {self.layout_size}")
        s = self._arm(arm)
        merged = s.pack() + vec
        self._sums[arm] = _ArmSums.unpack(merged, self.dim)
        self._exact(arm)


class HybridRidge:
    """Hybrid linear model r ≈ zₐᵀβ + xᵀθₐ with zₐ = armfeatures(a) ⊗ x (Li et al. 2010, alg. 2).

    `arm_features` maps each arm to a small vector describing it (for example [1, log price]); an
    arm without an entry gets `default_arm_features`. With arm features [1] for every arm, β is the
    pooled linear model shared by all arms and θₐ each arm's deviation from it.

    `prior` works as in `DisjointRidge`, on the joint regression: the joint feature vector is
    φ = [zₐ, x] (|φ|² = (1 + |armfeatures(a)|²)·|x|²), and the share of the prediction the data does
    not support, λ·φᵀA⁻¹φ/|φ|², is credited at the prior. With no data at all every arm predicts
    `prior`·|x|²; an arm never observed in a pool that has learned predicts the pooled zₐᵀβ plus the
    prior on what the pool cannot tell about it (its own part, and any shared direction the other
    arms did not cover). Without it a cold pool settles on the first arm whose reward came out above
    0, however expensive.
    """

    kind = "hybrid"

    def __init__(self, dim: int, arm_features: Mapping[str, np.ndarray] | None = None,
                 default_arm_features: np.ndarray | None = None, ridge: float = 1.0, prior: float = 0.0):
        if dim < 1:
            raise ValueError("dim must be at least 1")
        if ridge <= 0:
            raise ValueError("ridge (λ) must be positive")
        self.dim = dim
        self.ridge = float(ridge)
        self.prior = float(prior)
        self.arm_features = {a: np.asarray(v, dtype=np.float64).reshape(-1) for a, v in (arm_features or {}).items()}
        if default_arm_features is None:  # [1, 0, 0, …]: the pooled intercept only
            size = next(iter(self.arm_features.values())).size if self.arm_features else 1
            default_arm_features = np.eye(size)[0]
        self.default_arm_features = np.asarray(default_arm_features, dtype=np.float64).reshape(-1)
        sizes = {v.size for v in self.arm_features.values()} | {self.default_arm_features.size}
        if len(sizes) != 1:
            raise ValueError("every arm's features must have the same length")
        self.arm_dim = sizes.pop()
        self.shared_dim = self.arm_dim * dim
        self._sums: dict[str, np.ndarray] = {}
        self._dirty = True
        self._cache: dict[str, object] = {}

    @property
    def layout_size(self) -> int:
        return hybrid_layout_size(self.dim, self.shared_dim)

    def _features_of(self, arm: str) -> np.ndarray:
        return self.arm_features.get(arm, self.default_arm_features)

    def shared_vector(self, arm: str, x: np.ndarray) -> np.ndarray:
        return np.kron(self._features_of(arm), x)

    # -- state --------------------------------------------------------------------------------
    def arms(self) -> list[str]:
        return list(self._sums)

    def sums(self) -> dict[str, np.ndarray]:
        return {arm: v.copy() for arm, v in self._sums.items()}

    def load_sums(self, arms: Mapping[str, np.ndarray], *, replace: bool = True) -> None:
        if replace:
            self._sums.clear()
        for arm, vec in arms.items():
            vec = np.asarray(vec, dtype=np.float64)
            if vec.shape != (self.layout_size,):
                raise ValueError(f"arm '{arm}': state has {vec.size} numbers, expected {self.layout_size} "
                                 f"(was it trained with another feature schema?)")
            self._sums[arm] = vec.copy()
        self._dirty = True

    def remove_arm(self, arm: str) -> None:
        if self._sums.pop(arm, None) is not None:
            self._dirty = True

    def count(self, arm: str) -> float:
        v = self._sums.get(arm)
        return float(v[0]) if v is not None else 0.0

    def total_count(self) -> float:
        return float(sum(v[0] for v in self._sums.values()))

    def add_sums(self, arm: str, vec: np.ndarray) -> None:
        vec = np.asarray(vec, dtype=np.float64)
        if vec.shape != (self.layout_size,):
            raise ValueError(f"arm '{arm}': delta has {vec.size} numbers, expected {self.layout_size}")
        self._sums[arm] = self._sums.get(arm, np.zeros(self.layout_size)) + vec
        self._dirty = True

    def _split(self, vec: np.ndarray):
        d, k = self.dim, self.shared_dim
        i = 3
        xr = vec[i:i + d]; i += d
        xx = vec[i:i + d * d].reshape(d, d); i += d * d
        zr = vec[i:i + k]; i += k
        xz = vec[i:i + d * k].reshape(d, k); i += d * k
        zz = vec[i:i + k * k].reshape(k, k)
        return xr, xx, zr, xz, zz

    def observation_sums(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0,
                         count: bool = True) -> np.ndarray:
        """The flat statistics one `observe` (count=True) or `credit` (count=False) adds."""
        x = _as_vector(x, self.dim)
        z = self.shared_vector(arm, x)
        w = float(weight)
        if count:
            parts = [np.array([w, w * reward, w * reward * reward]), (w * reward) * x, w * np.outer(x, x).ravel(),
                     (w * reward) * z, w * np.outer(x, z).ravel(), w * np.outer(z, z).ravel()]
        else:
            parts = [np.array([0.0, w * reward, 0.0]), (w * reward) * x, np.zeros(self.dim * self.dim),
                     (w * reward) * z, np.zeros(self.dim * self.shared_dim), np.zeros(self.shared_dim ** 2)]
        return np.concatenate(parts)

    # -- estimation ---------------------------------------------------------------------------
    def _solve(self) -> None:
        d, k, lam = self.dim, self.shared_dim, self.ridge
        a0 = lam * np.eye(k)
        b0 = np.zeros(k)
        per_arm = {}
        for arm, vec in self._sums.items():
            xr, xx, zr, xz, zz = self._split(vec)
            a_inv = np.linalg.inv(xx + lam * np.eye(d))
            a_inv = 0.5 * (a_inv + a_inv.T)
            a_inv_b = a_inv @ xz  # (d, k)
            a0 += zz - xz.T @ a_inv_b
            b0 += zr - a_inv_b.T @ xr
            per_arm[arm] = (a_inv, xz, xr, a_inv_b)
        a0_inv = np.linalg.inv(a0)
        a0_inv = 0.5 * (a0_inv + a0_inv.T)
        beta = a0_inv @ b0
        thetas = {arm: a_inv @ (xr - xz @ beta) for arm, (a_inv, xz, xr, _) in per_arm.items()}
        self._cache = {"a0_inv": a0_inv, "beta": beta, "arms": per_arm, "theta": thetas}
        self._dirty = False

    def beta(self) -> np.ndarray:
        if self._dirty:
            self._solve()
        return self._cache["beta"]  # type: ignore[return-value]

    def predict(self, arm: str, x: np.ndarray) -> tuple[float, float]:
        """(zₐᵀβ + xᵀθₐ + prior·λ·φᵀA⁻¹φ/(1 + |armfeatures(a)|²), φᵀA⁻¹φ) with φ = [zₐ, x] (see the
        class docstring for the prior)."""
        x = _as_vector(x, self.dim)
        if self._dirty:
            self._solve()
        z = self.shared_vector(arm, x)
        a0_inv = self._cache["a0_inv"]
        beta = self._cache["beta"]
        arm_state = self._cache["arms"].get(arm)  # type: ignore[union-attr]
        if arm_state is None:  # never observed: θ = 0, A = λI, B = 0
            mean = float(z @ beta)
            var = max(0.0, float(z @ a0_inv @ z) + float(x @ x) / self.ridge)
            return mean + self._prior_part(arm, var), var
        a_inv, xz, _, a_inv_b = arm_state
        theta = self._cache["theta"][arm]  # type: ignore[index]
        mean = float(z @ beta + x @ theta)
        a_inv_x = a_inv @ x
        cross = a_inv_b.T @ x  # Bᵀ A⁻¹ x  (k,)
        var = max(0.0, float(z @ a0_inv @ z) - 2.0 * float(z @ a0_inv @ cross) + float(x @ a_inv_x)
                  + float(cross @ a0_inv @ cross))
        return mean + self._prior_part(arm, var), var

    def _prior_part(self, arm: str, var: float) -> float:
        if not self.prior:
            return 0.0
        features = self._features_of(arm)
        return self.prior * self.ridge * var / (1.0 + float(features @ features))

    def predict_many(self, arms: Iterable[str], x: np.ndarray) -> dict[str, tuple[float, float]]:
        return {arm: self.predict(arm, x) for arm in arms}

    # -- learning -----------------------------------------------------------------------------
    def observe(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0) -> None:
        x = _as_vector(x, self.dim)
        self.add_sums(arm, self.observation_sums(arm, x, reward, weight, count=True))

    def credit(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0) -> None:
        x = _as_vector(x, self.dim)
        self.add_sums(arm, self.observation_sums(arm, x, reward, weight, count=False))


# ------------------------------------------------------------------------------------------------
# what a model's answers usually cost, next to what it learned about their quality

PROFILE_SIZE = 4  # [Σw, Σw·completion tokens, Σw, Σw·latency ms] over answers that reported them


class ProfiledEstimator:
    """A ridge estimator plus, per arm, the observed mean completion length and latency.

    Used when an estimator learns answer *quality* only (``learn: quality``): the cost and latency
    of an answer are then computed at selection from what is known before the call (the model's
    price and the request's prompt tokens) and these means, instead of being learned inside one
    blended reward. The profile is three more additive sums at the end of each arm's flat vector,
    so it merges across replicas, is stored and restored, exactly like the estimator's own sums.
    Everything the decision rules call is delegated to the wrapped estimator.
    """

    def __init__(self, inner: DisjointRidge | HybridRidge):
        self.inner = inner
        self.kind = inner.kind
        self.dim = inner.dim
        self._profile: dict[str, np.ndarray] = {}

    # the wrapped estimator's ridge (discounting sets it) ------------------------------------------
    @property
    def ridge(self) -> float:
        return self.inner.ridge

    @ridge.setter
    def ridge(self, value: float) -> None:
        self.inner.ridge = value

    @property
    def layout_size(self) -> int:
        return self.inner.layout_size + PROFILE_SIZE

    # state ----------------------------------------------------------------------------------
    def arms(self) -> list[str]:
        return self.inner.arms()

    def sums(self) -> dict[str, np.ndarray]:
        return {arm: np.concatenate((vec, self._profile.get(arm, np.zeros(PROFILE_SIZE))))
                for arm, vec in self.inner.sums().items()}

    def _check(self, arm: str, vec: np.ndarray, what: str) -> np.ndarray:
        vec = np.asarray(vec, dtype=np.float64)
        if vec.shape != (self.layout_size,):
            raise ValueError(f"arm '{arm}': {what} has {vec.size} numbers, expected {self.layout_size} "
                             f"(was it trained with another feature schema?)")
        return vec

    def load_sums(self, arms: Mapping[str, np.ndarray], *, replace: bool = True) -> None:
        arms = {arm: self._check(arm, vec, "state") for arm, vec in arms.items()}
        self.inner.load_sums({arm: vec[:-PROFILE_SIZE] for arm, vec in arms.items()}, replace=replace)
        if replace:
            self._profile.clear()
        for arm, vec in arms.items():
            self._profile[arm] = vec[-PROFILE_SIZE:].copy()

    def add_sums(self, arm: str, vec: np.ndarray) -> None:
        vec = self._check(arm, vec, "delta")
        self.inner.add_sums(arm, vec[:-PROFILE_SIZE])
        self._profile[arm] = self._profile.get(arm, np.zeros(PROFILE_SIZE)) + vec[-PROFILE_SIZE:]

    def remove_arm(self, arm: str) -> None:
        self.inner.remove_arm(arm)
        self._profile.pop(arm, None)

    def count(self, arm: str) -> float:
        return self.inner.count(arm)

    def total_count(self) -> float:
        return self.inner.total_count()

    # estimation -----------------------------------------------------------------------------
    def predict(self, arm: str, x: np.ndarray) -> tuple[float, float]:
        return self.inner.predict(arm, x)

    def predict_many(self, arms: Iterable[str], x: np.ndarray) -> dict[str, tuple[float, float]]:
        return self.inner.predict_many(arms, x)

    def theta(self, arm: str) -> np.ndarray:
        return self.inner.theta(arm)

    def profile(self, arm: str) -> tuple[float, float | None, float | None]:
        """(weight of answers with a known length, mean completion tokens, mean latency ms);
        None = not observed yet."""
        p = self._profile.get(arm)
        if p is None:
            return 0.0, None, None
        tokens = float(p[1] / p[0]) if p[0] > 0 else None
        latency = float(p[3] / p[2]) if p[2] > 0 else None
        return float(p[0]), tokens, latency

    # learning -------------------------------------------------------------------------------
    @staticmethod
    def profile_sums(weight: float, completion_tokens: float | None, latency_ms: float | None) -> np.ndarray:
        w = float(weight)
        out = np.zeros(PROFILE_SIZE)
        if completion_tokens is not None:
            out[0:2] = (w, w * float(completion_tokens))
        if latency_ms is not None:
            out[2:4] = (w, w * float(latency_ms))
        return out

    def observation_sums(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0, count: bool = True,
                         *, completion_tokens: float | None = None, latency_ms: float | None = None) -> np.ndarray:
        inner = self.inner.observation_sums(arm, x, reward, weight, count=count)
        extra = self.profile_sums(weight, completion_tokens, latency_ms) if count else np.zeros(PROFILE_SIZE)
        return np.concatenate((inner, extra))

    def observe(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0, *,
                completion_tokens: float | None = None, latency_ms: float | None = None) -> None:
        self.inner.observe(arm, x, reward, weight)
        self._profile[arm] = (self._profile.get(arm, np.zeros(PROFILE_SIZE))
                              + self.profile_sums(weight, completion_tokens, latency_ms))

    def credit(self, arm: str, x: np.ndarray, reward: float, weight: float = 1.0) -> None:
        self.inner.credit(arm, x, reward, weight)
