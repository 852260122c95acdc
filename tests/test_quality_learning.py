"""`learn: quality`: the estimator learns answer quality only; the cost and latency parts of the
reward are computed at selection from prices, prompt tokens and each model's answer profile."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from sigroute.bandits.base import Reward
from sigroute.bandits.contextual import LinUCBSelector, ThompsonSelector, known_terms, reward_value
from sigroute.bandits.linear import PROFILE_SIZE, DisjointRidge, HybridRidge, ProfiledEstimator
from sigroute.bandits.policies import EpsilonGreedyRule, KnownTerms, LinUCBRule, ThompsonRule
from sigroute.bandits.store import MemoryStateStore
from sigroute.bandits.warmstart import full_information_sums
from sigroute.policies.schema import Algorithm, ModelSpec, RewardSpec

PRICES = {"cheap": (0.1, 0.2), "dear": (2.0, 8.0)}


def models():
    return {name: ModelSpec.model_validate({"provider": f"openai/{name}", "price": {"input": pin, "output": pout}})
            for name, (pin, pout) in PRICES.items()}


def quality_selector(cls=LinUCBSelector, **reward):
    options = Algorithm.model_validate({cls.name: {"features": ["bias"], "learn": "quality", "ridge": 1.0,
                                                   "reward": {"quality": 1.0, **reward}}}).options
    return cls(options, models(), decision="d", seed=1)


def test_profiled_estimator_round_trips_merges_and_keeps_the_ridge_exact():
    rng = np.random.default_rng(3)
    d = 3
    for make in (lambda: DisjointRidge(d), lambda: HybridRidge(d, arm_features={"a": np.array([1.0, 0.5])})):
        whole, one, two = ProfiledEstimator(make()), ProfiledEstimator(make()), ProfiledEstimator(make())
        plain = make()
        for i in range(40):
            x, q = rng.normal(size=d), float(rng.random() < 0.6)
            tokens = None if i % 7 == 0 else float(rng.integers(10, 500))
            latency = float(rng.integers(50, 900))
            whole.observe("a", x, q, completion_tokens=tokens, latency_ms=latency)
            plain.observe("a", x, q)
            (one if i % 2 else two).observe("a", x, q, completion_tokens=tokens, latency_ms=latency)
        # the quality model is exactly the plain estimator's
        x0 = rng.normal(size=d)
        assert whole.predict("a", x0) == pytest.approx(plain.predict("a", x0))
        # two replicas' sums add up to the whole
        merged = ProfiledEstimator(make())
        merged.load_sums(one.sums())
        merged.add_sums("a", two.sums()["a"])
        assert np.allclose(merged.sums()["a"], whole.sums()["a"])
        assert merged.profile("a") == pytest.approx(whole.profile("a"))
        assert whole.layout_size == plain.layout_size + PROFILE_SIZE
        with pytest.raises(ValueError, match="expected"):
            whole.load_sums({"a": plain.sums()["a"]})  # state of the other layout is refused


def test_profile_means_and_credit_leaves_the_profile_alone():
    est = ProfiledEstimator(DisjointRidge(1))
    x = np.array([1.0])
    est.observe("m", x, 1.0, completion_tokens=100, latency_ms=400)
    est.observe("m", x, 0.0, completion_tokens=300, latency_ms=None)   # latency unknown
    est.observe("m", x, 0.0)                                           # a failure: nothing known
    weight, tokens, latency = est.profile("m")
    assert (weight, tokens, latency) == (2.0, 200.0, 400.0)
    before = est.sums()["m"][-PROFILE_SIZE:].copy()
    est.credit("m", x, 0.5)
    assert np.array_equal(est.sums()["m"][-PROFILE_SIZE:], before)
    assert est.profile("never") == (0.0, None, None)
    delta = est.observation_sums("m", x, 0.5, count=False, completion_tokens=50, latency_ms=10)
    assert np.array_equal(delta[-PROFILE_SIZE:], np.zeros(PROFILE_SIZE))  # a credit adds no profile


def test_known_terms_reproduce_the_blended_reward_for_the_expected_answer():
    spec = RewardSpec(quality=1.0, cost=0.4, latency=0.2, latency_budget_ms=2000)
    profiles = {"cheap": (120.0, 300.0), "dear": (400.0, 900.0)}
    known = known_terms(spec, ["cheap", "dear"], PRICES, 50, profiles)
    for arm, (tokens, latency) in profiles.items():
        costs = {m: 50 * pin + tokens * pout for m, (pin, pout) in PRICES.items()}
        share = costs[arm] / max(costs.values())
        for q in (0.0, 0.3, 1.0):
            assert known.apply(arm, q) == pytest.approx(
                reward_value(spec, quality=q, cost_share=share, latency_ms=latency))
    # a model without a price counts as the dearest; one never observed gets the others' mean length
    unpriced = known_terms(spec, ["cheap", "x"], {**PRICES, "x": None}, 50, {"cheap": (120.0, 300.0)})
    assert unpriced.offsets["x"] == pytest.approx(reward_value(spec, quality=0, cost_share=None, latency_ms=300.0))


def test_rules_add_the_known_terms_to_what_they_learned():
    est = DisjointRidge(1, ridge=0.01)
    x = np.array([1.0])
    for _ in range(50):
        est.observe("cheap", x, 0.70)
        est.observe("dear", x, 0.75)
    spend = KnownTerms(0.5, {"cheap": 0.5, "dear": 0.0})  # cost weight 1: dear costs everything
    quality_only = KnownTerms(1.0, {})
    assert LinUCBRule(est, alpha=0.0).choose(x, ["cheap", "dear"], quality_only).arm == "dear"
    assert LinUCBRule(est, alpha=0.0).choose(x, ["cheap", "dear"], spend).arm == "cheap"
    pick = LinUCBRule(est, alpha=0.0).choose(x, ["cheap", "dear"], spend)
    assert pick.means["cheap"] == pytest.approx(0.5 * est.predict("cheap", x)[0] + 0.5)
    assert ThompsonRule(est, v=0.01, rng=np.random.default_rng(0)).choose(x, ["cheap", "dear"], spend).arm == "cheap"
    assert EpsilonGreedyRule(est, epsilon=0.0).choose(x, ["cheap", "dear"], spend).arm == "cheap"


def test_a_quality_selector_learns_quality_keeps_profiles_and_its_own_state_key():
    sel = quality_selector(cost=0.5)
    plain = LinUCBSelector(Algorithm.model_validate({"linucb": {"features": ["bias"]}}).options, models(), decision="d")
    assert sel.schema_id == plain.schema_id + "-q" and sel.state_key("t") != plain.state_key("t")
    x = np.array([1.0])
    choice = sel.select_vector(["cheap", "dear"], x, prompt_tokens=40)
    sel.update(choice, Reward(model="dear", ok=True, latency_ms=800, prompt_tokens=40, completion_tokens=300))
    sel.update(choice, Reward(model="dear", ok=False))
    est = sel.learner("default").estimator
    # learned: default quality 0.5 for the answer, 0 for the failure -> sums of quality, not blended reward
    assert est.sums()["dear"][1] == pytest.approx(0.5)
    assert est.profile("dear") == (1.0, 300.0, 800.0)
    record = sel.pending_record(choice, "dear")
    assert record["quality_share"] == 1.0 and record["schema"].endswith("-q")
    assert sel.credit(record, 1.0) == pytest.approx(0.5)  # quality 1 instead of the assumed 0.5
    assert est.sums()["dear"][1] == pytest.approx(1.0)


def test_quality_selection_trades_learned_quality_against_known_cost():
    x = np.array([1.0])
    for cost_weight, expected in ((0.0, "dear"), (2.0, "cheap")):
        sel = quality_selector(cost=cost_weight)
        for _ in range(200):
            for model, q in (("cheap", 0.6), ("dear", 0.8)):
                choice = sel.select_vector([model], x, prompt_tokens=100)
                sel.update(choice, Reward(model=model, ok=True, latency_ms=100, prompt_tokens=100, completion_tokens=200))
                sel.credit(sel.pending_record(choice, model), q)
        choice = sel.select_vector(["cheap", "dear"], x, prompt_tokens=100)
        assert choice.model == expected, (cost_weight, choice.scores)
        # the score is the blended reward of the learned quality and the expected cost share
        mean = sel.learner("default").estimator.predict("dear", x)[0]
        assert mean == pytest.approx(0.8, abs=0.01)


def test_quality_state_round_trips_through_the_store_and_warm_start():
    sel, other = quality_selector(ThompsonSelector, cost=0.3), quality_selector(ThompsonSelector, cost=0.3)
    x = np.array([1.0])
    for i in range(10):
        choice = sel.select_vector(["cheap"], x, prompt_tokens=10)
        sel.update(choice, Reward(model="cheap", ok=True, latency_ms=50 + i, prompt_tokens=10, completion_tokens=20 + i))
    store = MemoryStateStore()
    asyncio.run(sel.sync(store))
    asyncio.run(other.load_tenant(store, "default"))
    assert other.learner("default").estimator.profile("cheap") == pytest.approx(
        sel.learner("default").estimator.profile("cheap"))
    # closed-form warm start in the same layout equals observing each outcome
    rng = np.random.default_rng(1)
    X = np.ones((12, 1))
    q = rng.random(12).round()
    tokens = rng.integers(10, 90, 12).astype(float)
    tokens[4] = np.nan
    closed = ProfiledEstimator(DisjointRidge(1))
    closed.load_sums(full_information_sums(closed, X, {"m": q}, completion_tokens={"m": tokens}))
    stepwise = ProfiledEstimator(DisjointRidge(1))
    for i in range(12):
        stepwise.observe("m", X[i], q[i], completion_tokens=None if np.isnan(tokens[i]) else tokens[i])
    assert np.allclose(closed.sums()["m"], stepwise.sums()["m"])


def test_replay_of_a_quality_selector_prices_candidates_as_the_gateway_did(tmp_path):
    """The decision log keeps the prompt tokens a `learn: quality` pick was priced with (and the
    answer's usage), so an offline replay scores the candidates exactly as the gateway did."""
    from sigroute.bandits.replay import DecisionLog, evaluate, read_decision_log

    prices = {"input_heavy": (10.0, 0.1), "output_heavy": (0.1, 10.0)}  # which is cheaper depends on the prompt
    specs = {name: ModelSpec.model_validate({"provider": f"openai/{name}", "price": {"input": pin, "output": pout}})
             for name, (pin, pout) in prices.items()}
    options = Algorithm.model_validate({"linucb": {"features": ["bias"], "learn": "quality", "alpha": 0.0,
                                                   "reward": {"quality": 1.0, "cost": 1.0}}}).options
    x = np.array([1.0])

    def trained():
        sel = LinUCBSelector(options, specs, decision="d")
        for model in prices:
            sel.observe("default", model, x, 0.5, completion_tokens=100, latency_ms=10)
        return sel

    gateway = trained()
    log = DecisionLog(tmp_path / "log.jsonl")
    picked = {}
    for i, prompt in enumerate((10_000, 0, 10_000, 0)):
        choice = gateway.select_vector(list(prices), x, prompt_tokens=prompt)
        picked[prompt] = choice.model
        entry = gateway.log_entry(choice, Reward(model=choice.model, ok=True, latency_ms=10, prompt_tokens=prompt,
                                                 completion_tokens=100))
        assert entry["usage"] == {"prompt_tokens": prompt, "completion_tokens": 100, "latency_ms": 10}
        log.decision(request_id=f"r{i}", tenant="default", decision="d", candidates=list(prices), model=choice.model,
                     answered_by=choice.model, propensity=1.0, **entry)
    log.close()
    assert picked == {10_000: "output_heavy", 0: "input_heavy"}
    events = read_decision_log(tmp_path / "log.jsonl")
    assert events[0].usage["prompt_tokens"] == 10_000
    result = evaluate(events, trained(), learn=False)
    assert result["matched"] == 4  # every logged pick is reproduced

