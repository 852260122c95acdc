"""The ridge estimators and exploration rules behind the contextual bandits, checked against
direct linear algebra on small problems."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from sigroute.bandits.linear import DisjointRidge, HybridRidge, disjoint_layout_size
from sigroute.bandits.policies import EpsilonGreedyRule, LinUCBRule, ThompsonRule


def _ridge(X: np.ndarray, r: np.ndarray, lam: float):
    A = X.T @ X + lam * np.eye(X.shape[1])
    return np.linalg.solve(A, X.T @ r), np.linalg.inv(A)


def test_disjoint_matches_direct_ridge_regression():
    rng = np.random.default_rng(0)
    d, lam = 5, 0.7
    est = DisjointRidge(d, ridge=lam, recompute_every=10_000)  # Sherman–Morrison only
    data = {"a": ([], []), "b": ([], [])}
    for _ in range(40):
        arm = "a" if rng.random() < 0.6 else "b"
        x = rng.normal(size=d)
        r = float(rng.random())
        est.observe(arm, x, r)
        data[arm][0].append(x)
        data[arm][1].append(r)
    x_new = rng.normal(size=d)
    for arm, (xs, rs) in data.items():
        theta, a_inv = _ridge(np.array(xs), np.array(rs), lam)
        mean, var = est.predict(arm, x_new)
        assert mean == pytest.approx(float(theta @ x_new), rel=1e-9, abs=1e-12)
        assert var == pytest.approx(float(x_new @ a_inv @ x_new), rel=1e-9)
    ucb = LinUCBRule(est, alpha=0.8).choose(x_new, ["a", "b"])
    expected = {arm: est.predict(arm, x_new)[0] + 0.8 * math.sqrt(est.predict(arm, x_new)[1]) for arm in "ab"}
    assert ucb.arm == max(expected, key=expected.get)
    assert ucb.scores["a"] == pytest.approx(expected["a"])
    assert ucb.propensity == 1.0


def test_sherman_morrison_inverse_equals_exact_after_many_updates():
    rng = np.random.default_rng(1)
    d = 12
    est = DisjointRidge(d, ridge=1.0, recompute_every=10**9)
    for _ in range(5000):
        x = rng.normal(size=d)
        x /= np.linalg.norm(x)
        est.observe("m", x, float(rng.random()))
    exact = np.linalg.inv(est._sums["m"].xx + np.eye(d))
    assert np.max(np.abs(est.inverse("m") - exact)) < 1e-9
    est.load_sums(est.sums())  # an exact recomputation from the stored sums
    assert np.max(np.abs(est.inverse("m") - exact)) < 1e-12


def test_credit_adds_reward_without_counting_the_context_again():
    d = 3
    full = DisjointRidge(d)
    split = DisjointRidge(d)
    x = np.array([1.0, 0.5, -0.2])
    full.observe("m", x, 0.9)
    split.observe("m", x, 0.4)
    split.credit("m", x, 0.5)
    assert np.allclose(full.sums()["m"][:2], split.sums()["m"][:2])
    assert np.allclose(full.sums()["m"][3:], split.sums()["m"][3:])  # Σr² is not additive under credit
    assert split.count("m") == 1


def test_sums_merge_by_adding():
    rng = np.random.default_rng(2)
    d = 4
    one, two, together = DisjointRidge(d), DisjointRidge(d), DisjointRidge(d)
    for i in range(60):
        x, r = rng.normal(size=d), float(rng.random())
        (one if i % 2 else two).observe("m", x, r)
        together.observe("m", x, r)
    merged = DisjointRidge(d)
    merged.add_sums("m", one.sums()["m"])
    merged.add_sums("m", two.sums()["m"])
    x = rng.normal(size=d)
    assert merged.predict("m", x) == pytest.approx(together.predict("m", x), rel=1e-9)
    with pytest.raises(ValueError, match="expected"):
        merged.load_sums({"m": np.zeros(disjoint_layout_size(d) + 1)})


def test_a_prior_credits_what_the_data_does_not_support_and_fades_with_data():
    rng = np.random.default_rng(3)
    d, lam, prior = 6, 5.0, 0.8
    plain, primed = DisjointRidge(d, ridge=lam), DisjointRidge(d, ridge=lam, prior=prior)
    x = rng.normal(size=d)
    x /= np.linalg.norm(x)
    # an unseen arm: the prior itself (plain ridge says 0, the worst reward there is)
    assert plain.predict("new", x)[0] == 0.0
    assert primed.predict("new", x)[0] == pytest.approx(prior)
    assert primed.predict("new", x)[1] == plain.predict("new", x)[1] == pytest.approx(1 / lam)
    # with data: plain ridge's mean plus prior × λ·xᵀA⁻¹x, the same variance, the same stored sums
    for _ in range(30):
        z = rng.normal(size=d)
        z /= np.linalg.norm(z)
        r = float(rng.random())
        plain.observe("m", z, r)
        primed.observe("m", z, r)
    (m0, v0), (m1, v1) = plain.predict("m", x), primed.predict("m", x)
    assert v1 == pytest.approx(v0)
    assert m1 == pytest.approx(m0 + prior * lam * v0)
    assert 0 < lam * v0 < 1
    assert np.array_equal(plain.sums()["m"], primed.sums()["m"])
    # many observations around x: the prior's share falls towards 0 and the data decides
    for _ in range(3000):
        z = x + 0.05 * rng.normal(size=d)
        primed.observe("m", z / np.linalg.norm(z), 0.2)
    mean, var = primed.predict("m", x)
    assert lam * var < 0.01 and mean == pytest.approx(0.2, abs=0.02)


def test_a_prior_lets_linucb_try_an_unobserved_arm_before_settling_on_a_known_mediocre_one():
    d = 3
    x = np.array([1.0, 0.0, 0.0])
    for prior, tried in ((0.0, False), (0.9, True)):
        est = DisjointRidge(d, ridge=1.0, prior=prior)
        for _ in range(20):
            est.observe("known", x, 0.5)
        pick = LinUCBRule(est, alpha=0.0).choose(x, ["known", "unknown"])
        assert (pick.arm == "unknown") is tried, (prior, pick.scores)


def test_hybrid_equals_joint_ridge_regression():
    """Block elimination must give the same estimate and variance as ridge on [z, x in arm slot]."""
    rng = np.random.default_rng(3)
    d, lam = 3, 0.9
    arm_feats = {"a": np.array([1.0, 0.2]), "b": np.array([1.0, -0.5]), "c": np.array([1.0, 1.5])}
    est = HybridRidge(d, arm_features=arm_feats, ridge=lam)
    arms = list(arm_feats)
    k = 2 * d
    rows, rewards = [], []

    def joint(arm, x):
        phi = np.zeros(k + d * len(arms))
        phi[:k] = np.kron(arm_feats[arm], x)
        j = arms.index(arm)
        phi[k + j * d:k + (j + 1) * d] = x
        return phi

    for _ in range(50):
        arm = arms[int(rng.integers(0, 2))]  # "c" never observed: it must borrow from β
        x = rng.normal(size=d)
        r = float(rng.normal())
        est.observe(arm, x, r)
        rows.append(joint(arm, x))
        rewards.append(r)
    w, a_inv = _ridge(np.array(rows), np.array(rewards), lam)
    x_new = rng.normal(size=d)
    for arm in arms:
        phi = joint(arm, x_new)
        mean, var = est.predict(arm, x_new)
        assert mean == pytest.approx(float(w @ phi), rel=1e-8, abs=1e-10)
        assert var == pytest.approx(float(phi @ a_inv @ phi), rel=1e-8)
    assert est.predict("c", x_new)[0] != 0.0  # a new model starts from the pooled estimate


def test_a_hybrid_prior_credits_what_the_joint_regression_does_not_support():
    rng = np.random.default_rng(5)
    d, lam, prior = 4, 2.0, 0.75
    arm_feats = {"a": np.array([1.0, 0.2]), "b": np.array([1.0, 2.5]), "c": np.array([1.0, 1.0])}
    plain = HybridRidge(d, arm_features=arm_feats, ridge=lam)
    primed = HybridRidge(d, arm_features=arm_feats, ridge=lam, prior=prior)
    x = rng.normal(size=d)
    x /= np.linalg.norm(x)
    # nothing learned: every arm, whatever its features, scores the prior (plain ridge: 0)
    for arm in arm_feats:
        assert plain.predict(arm, x)[0] == 0.0
        assert primed.predict(arm, x)[0] == pytest.approx(prior)
        assert primed.predict(arm, x)[1] == pytest.approx(plain.predict(arm, x)[1])
    # with data on a and b: plain mean + prior × λ·φᵀA⁻¹φ/|φ|² for each arm, c (never observed) too
    for _ in range(40):
        arm = "ab"[int(rng.integers(0, 2))]
        z = rng.normal(size=d)
        z /= np.linalg.norm(z)
        r = float(rng.random())
        plain.observe(arm, z, r)
        primed.observe(arm, z, r)
    for arm, feats in arm_feats.items():
        (m0, v0), (m1, v1) = plain.predict(arm, x), primed.predict(arm, x)
        assert v1 == pytest.approx(v0)
        share = lam * v0 / (1.0 + float(feats @ feats))
        assert 0 < share < 1 and m1 == pytest.approx(m0 + prior * share)
    assert all(np.array_equal(plain.sums()[k], primed.sums()[k]) for k in "ab")   # nothing of it is stored
    # many observations of b around x: the prior's share falls towards 0 and the data decides
    for _ in range(3000):
        z = x + 0.05 * rng.normal(size=d)
        primed.observe("b", z / np.linalg.norm(z), 0.2)
    mean, var = primed.predict("b", x)
    assert lam * var / (1.0 + float(arm_feats["b"] @ arm_feats["b"])) < 0.01 and mean == pytest.approx(0.2, abs=0.02)


def test_a_cold_hybrid_with_a_prior_does_not_settle_on_the_first_expensive_arm():
    """Cold hybrid LinUCB with plain ridge tries the priciest arm first (its shared features make
    its bonus the largest) and, its reward being above 0, keeps it: the shared price coefficient it
    learned says price pays. With the prior the cheap, better arm is tried and wins."""
    d = 2
    feats = {"pricey": np.array([1.0, 3.0]), "cheap": np.array([1.0, 0.1])}
    reward = {"pricey": 0.4, "cheap": 0.9}
    picks = {}
    for prior in (0.0, 0.75):
        est = HybridRidge(d, arm_features=feats, ridge=1.0, prior=prior)
        rule = LinUCBRule(est, alpha=0.1)
        chosen = []
        for i in range(60):
            x = np.array([1.0, 0.3 * ((i % 3) - 1)])
            x /= np.linalg.norm(x)
            arm = rule.choose(x, list(feats)).arm
            est.observe(arm, x, reward[arm])
            chosen.append(arm)
        picks[prior] = chosen
    assert picks[0.0][0] == "pricey" and "cheap" not in picks[0.0], picks[0.0]
    assert picks[0.75][-20:].count("cheap") == 20, picks[0.75]


def test_hybrid_state_round_trips_and_merges():
    rng = np.random.default_rng(4)
    d = 3
    a, b, both = HybridRidge(d), HybridRidge(d), HybridRidge(d)
    for i in range(30):
        x, r = rng.normal(size=d), float(rng.random())
        arm = "p" if i % 3 else "q"
        (a if i % 2 else b).observe(arm, x, r)
        both.observe(arm, x, r)
    merged = HybridRidge(d)
    for part in (a, b):
        for arm, vec in part.sums().items():
            merged.add_sums(arm, vec)
    x = rng.normal(size=d)
    for arm in ("p", "q"):
        assert merged.predict(arm, x) == pytest.approx(both.predict(arm, x), rel=1e-9)


def test_linucb_learns_a_contextual_best_arm():
    rng = np.random.default_rng(5)
    est = DisjointRidge(3)
    rule = LinUCBRule(est, alpha=0.5)
    # arm "left" is right when feature 1 is positive, "right" otherwise
    correct = 0
    for t in range(1500):
        x = np.array([1.0, rng.choice([-1.0, 1.0]), rng.normal() * 0.1])
        best = "left" if x[1] > 0 else "right"
        pick = rule.choose(x, ["left", "right"])
        reward = 1.0 if pick.arm == best else 0.0
        est.observe(pick.arm, x, reward)
        if t >= 1000:
            correct += reward
    assert correct / 500 > 0.95


def test_thompson_propensity_tracks_the_empirical_choice_frequency():
    est = DisjointRidge(2)
    for _ in range(3):
        est.observe("a", np.array([1.0, 0.0]), 0.6)
        est.observe("b", np.array([1.0, 0.0]), 0.5)
    rule = ThompsonRule(est, v=0.5, propensity_draws=4000, rng=np.random.default_rng(6))
    x = np.array([1.0, 0.0])
    picks = [rule.choose(x, ["a", "b"]) for _ in range(4000)]
    share_a = sum(p.arm == "a" for p in picks) / len(picks)
    reported = np.mean([p.propensity for p in picks if p.arm == "a"])
    assert 0.5 < share_a < 0.95
    assert reported == pytest.approx(share_a, abs=0.03)


def test_epsilon_greedy_propensities_and_decay():
    est = DisjointRidge(1)
    est.observe("good", np.array([1.0]), 1.0)
    rule = EpsilonGreedyRule(est, epsilon=0.3, decay=10, min_epsilon=0.05, rng=random.Random(7))
    assert rule.current_epsilon() == pytest.approx(0.3 / 1.1)
    pick = rule.choose(np.array([1.0]), ["good", "bad", "other"])
    eps = rule.current_epsilon()
    expected = (1 - eps + eps / 3) if pick.arm == "good" else eps / 3
    assert pick.propensity == pytest.approx(expected)
    for _ in range(10_000):
        est.observe("good", np.array([1.0]), 1.0)
    assert rule.current_epsilon() == 0.05
    counts = {"good": 0, "bad": 0, "other": 0}
    for _ in range(3000):
        counts[rule.choose(np.array([1.0]), list(counts)).arm] += 1
    assert counts["good"] / 3000 == pytest.approx(1 - 0.05 + 0.05 / 3, abs=0.02)


def test_full_information_warm_start_equals_observing_every_outcome():
    from sigroute.bandits.warmstart import full_information_sums

    rng = np.random.default_rng(8)
    d = 4
    x = rng.normal(size=(25, d))
    rewards = {"a": rng.random(25), "b": rng.random(25)}
    rewards["b"][3] = np.nan  # unknown outcome: skipped for that model only
    for make in (lambda: DisjointRidge(d), lambda: HybridRidge(d, arm_features={"a": np.array([1.0, 0.3]),
                                                                                  "b": np.array([1.0, -0.2])})):
        one_by_one, closed = make(), make()
        for i in range(25):
            for arm, r in rewards.items():
                if not np.isnan(r[i]):
                    one_by_one.observe(arm, x[i], float(r[i]))
        closed.load_sums(full_information_sums(closed, x, rewards))
        for arm in rewards:
            assert np.allclose(closed.sums()[arm], one_by_one.sums()[arm])
            assert closed.predict(arm, x[0]) == pytest.approx(one_by_one.predict(arm, x[0]))
        assert closed.count("b") == 24


def test_discounting_fades_old_observations_exactly_even_across_epochs():
    from sigroute.bandits.contextual import LinUCBSelector
    from sigroute.policies.schema import Algorithm

    options = Algorithm.model_validate({"linucb": {"features": ["bias"], "ridge": 0.5,
                                                   "discount_half_life_s": 10}}).options
    selector = LinUCBSelector(options, decision="d")
    x = np.array([1.0])
    history = [(630.0, 1.0), (635.0, 1.0), (645.0, 0.0), (650.0, 0.0)]  # epoch 0 ends at 640 s
    for t, r in history:
        selector.observe("default", "m", x, r, now=t)
    # exact discounted ridge at t = 650: weights 2^-(650 - t)/10, shrunk towards the prior (0.75 by
    # default) with the ridge's weight 0.5: (Σ w r + 0.5 · prior) / (0.5 + Σ w)
    prior = options.prior
    assert prior == 0.75
    w = np.array([2.0 ** (-(650.0 - t) / 10.0) for t, _ in history])
    rewards = np.array([r for _, r in history])
    expected = float(((w * rewards).sum() + 0.5 * prior) / (0.5 + w.sum()))
    mean, _ = selector.learner("default").estimator.predict("m", x)
    assert mean == pytest.approx(expected, rel=1e-9)
    assert selector.learner("default").epoch == 1
    undiscounted = LinUCBSelector(Algorithm.model_validate({"linucb": {"features": ["bias"], "ridge": 0.5}}).options)
    for t, r in history:
        undiscounted.observe("default", "m", x, r, now=t)
    plain = (2 + 0.5 * prior) / 4.5
    assert undiscounted.learner("default").estimator.predict("m", x)[0] == pytest.approx(plain)
    assert mean < plain  # recent zeros weigh more than the old ones


def test_a_discounted_selector_round_trips_through_the_store():
    import asyncio

    from sigroute.bandits.contextual import LinUCBSelector
    from sigroute.bandits.store import MemoryStateStore
    from sigroute.policies.schema import Algorithm

    options = Algorithm.model_validate({"linucb": {"features": ["bias"], "discount_half_life_s": 3600}}).options
    store = MemoryStateStore()
    one, two = LinUCBSelector(options, decision="d"), LinUCBSelector(options, decision="d")
    x = np.array([1.0])
    for r in (1.0, 0.0, 1.0):
        one.observe("default", "m", x, r)
    before = one.learner("default").estimator.predict("m", x)
    asyncio.run(one.sync(store))
    assert one.learner("default").estimator.predict("m", x) == pytest.approx(before, rel=1e-6)
    asyncio.run(two.load_tenant(store, "default"))  # another replica sees the same (decayed) state
    assert two.learner("default").estimator.predict("m", x) == pytest.approx(before, rel=1e-6)
    assert list(asyncio.run(store.keys()))[0].endswith(f"/e={one.learner('default').epoch}")
