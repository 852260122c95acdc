"""Selectors: static, weighted, round-robin, cheapest, fastest; and the registry."""

from __future__ import annotations

import json
import math
import random
import threading
from collections import Counter

import pytest

from sigroute.bandits.base import Choice, Reward, Selector
from sigroute.bandits.registry import SELECTORS, build_selector
from sigroute.bandits.selectors import (
    CheapestSelector,
    FastestSelector,
    RoundRobinSelector,
    StaticSelector,
    WeightedSelector,
)
from sigroute.policies.schema import ALGORITHM_OPTIONS, Algorithm, FastestOptions, ModelSpec, WeightedOptions
from sigroute.signals.context import RequestContext
from sigroute.signals.tokens import count_tokens


def spec(input_price: float = 0.0, output_price: float = 0.0, **extra) -> ModelSpec:
    return ModelSpec.model_validate(
        {"provider": "openai/test", "price": {"input": input_price, "output": output_price}, **extra}
    )


def ctx_for(text: str = "hello there", max_tokens: int | None = None) -> RequestContext:
    body = {"model": "auto", "messages": [{"role": "user", "content": text}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return RequestContext.from_body("id", body)


MODELS = {"a": spec(1, 2), "b": spec(3, 1), "c": spec(0.5, 4)}


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


# --------------------------------------------------------------------------------------------
# the contract, for every registered selector


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_contract_every_selector(name):
    selector = build_selector(Algorithm.model_validate(name), MODELS)
    assert isinstance(selector, SELECTORS[name])
    ctx = ctx_for(max_tokens=100)
    for candidates in (["a", "b", "c"], ["c", "a"], ["b"]):
        for _ in range(5):
            choice = selector.select(candidates, ctx)
            assert isinstance(choice, Choice)
            assert choice.model in candidates
            assert choice.ranking[0] == choice.model
            assert sorted(choice.ranking) == sorted(candidates)
            assert set(choice.scores) == set(candidates)
            assert 0.0 < choice.propensity <= 1.0
            json.dumps(choice.as_dict())
            selector.update(choice, Reward(model=choice.model, ok=True, latency_ms=50.0, ttft_ms=10.0))
    with pytest.raises(ValueError):
        selector.select([], ctx)


def test_registry_covers_every_algorithm_of_the_schema():
    assert set(ALGORITHM_OPTIONS) <= set(SELECTORS)
    for name, cls in SELECTORS.items():
        assert issubclass(cls, Selector)
        assert cls.name == name
        assert cls.options_type is ALGORITHM_OPTIONS[name]


def test_build_selector_passes_options_and_models():
    selector = build_selector(Algorithm.model_validate({"fastest": {"half_life_s": 12, "prior_ttft_ms": 7}}), MODELS)
    assert isinstance(selector, FastestSelector)
    assert selector.half_life_s == 12
    assert selector.mean_ttft_ms("never-seen") == pytest.approx(7)
    selector = build_selector(Algorithm.model_validate({"weighted": {"weights": {"a": 3}}}), MODELS)
    assert selector.probabilities(["a", "b"]) == {"a": 0.75, "b": 0.25}
    assert build_selector(Algorithm.model_validate("cheapest"), MODELS).models is MODELS


def test_wrong_options_type_is_rejected():
    with pytest.raises(TypeError):
        FastestSelector(WeightedOptions(), MODELS)


# --------------------------------------------------------------------------------------------
# static


def test_static_picks_first_candidate():
    selector = StaticSelector()
    choice = selector.select(["b", "a", "c"], ctx_for())
    assert choice.model == "b"
    assert choice.propensity == 1.0
    assert choice.ranking == ("b", "a", "c")
    assert choice.scores["b"] > choice.scores["a"] > choice.scores["c"]
    assert selector.select(["c", "a"], ctx_for()).model == "c"


# --------------------------------------------------------------------------------------------
# weighted


def test_weighted_frequencies_and_propensities_match_weights():
    weights = {"a": 1.0, "b": 3.0, "c": 6.0}
    selector = WeightedSelector(WeightedOptions(weights=weights), MODELS, rng=random.Random(1234))
    n = 20_000
    counts: Counter[str] = Counter()
    propensity_of: dict[str, float] = {}
    for _ in range(n):
        choice = selector.select(["a", "b", "c"], ctx_for())
        counts[choice.model] += 1
        propensity_of[choice.model] = choice.propensity
        assert math.isclose(sum(choice.scores.values()), 1.0)
    assert math.isclose(sum(propensity_of.values()), 1.0)
    for model, w in weights.items():
        p = w / 10.0
        assert propensity_of[model] == pytest.approx(p)
        sigma = math.sqrt(p * (1 - p) / n)
        assert abs(counts[model] / n - p) < 4 * sigma, (model, counts[model] / n, p)


def test_weighted_renormalizes_over_given_candidates_and_missing_weights_are_one():
    selector = WeightedSelector(WeightedOptions(weights={"a": 1.0, "b": 3.0, "c": 6.0}), MODELS,
                                rng=random.Random(7))
    # c is unhealthy: its share is spread over a and b in proportion to their weights.
    n = 10_000
    counts = Counter(selector.select(["a", "b"], ctx_for()).model for _ in range(n))
    assert set(counts) == {"a", "b"}
    assert abs(counts["b"] / n - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)
    assert selector.probabilities(["a", "b"]) == {"a": 0.25, "b": 0.75}
    # "d" has no weight: it weighs 1.
    assert selector.probabilities(["a", "d"]) == {"a": 0.5, "d": 0.5}
    assert selector.select(["c"], ctx_for()).propensity == 1.0


def test_weighted_ranking_is_pick_then_weight_descending():
    selector = WeightedSelector(WeightedOptions(weights={"a": 1.0, "b": 3.0, "c": 6.0, "d": 3.0}), MODELS,
                                rng=random.Random(3))
    seen = set()
    for _ in range(500):
        choice = selector.select(["a", "b", "c", "d"], ctx_for())
        seen.add(choice.model)
        rest = [m for m in ("c", "b", "d", "a") if m != choice.model]  # b before d: stable on ties
        assert choice.ranking == (choice.model, *rest)
    assert seen == {"a", "b", "c", "d"}


def test_weighted_is_reproducible_with_a_seeded_rng():
    picks = []
    for _ in range(2):
        selector = WeightedSelector(WeightedOptions(weights={"a": 2.0}), MODELS, rng=random.Random(99))
        picks.append([selector.select(["a", "b", "c"], ctx_for()).model for _ in range(50)])
    assert picks[0] == picks[1]


# --------------------------------------------------------------------------------------------
# round robin


def test_round_robin_cycles_and_adapts_to_changed_candidates():
    selector = RoundRobinSelector()
    choices = [selector.select(["a", "b", "c"], ctx_for()) for _ in range(6)]
    assert [c.model for c in choices] == ["a", "b", "c", "a", "b", "c"]
    assert choices[1].ranking == ("b", "c", "a")
    assert all(c.propensity == 1.0 for c in choices)
    # b becomes unhealthy: the rotation continues over the two that are left, evenly.
    picks = [selector.select(["a", "c"], ctx_for()).model for _ in range(6)]
    assert Counter(picks) == {"a": 3, "c": 3}
    assert all(x != y for x, y in zip(picks, picks[1:]))
    # a new model joins: it gets its turn.
    picks = [selector.select(["a", "b", "c", "d"], ctx_for()).model for _ in range(8)]
    assert Counter(picks) == {"a": 2, "b": 2, "c": 2, "d": 2}


def _yield_between_lines_of(module):
    """A thread trace function that gives the GIL away between any two lines of `module`'s code,
    so that threads interleave inside a function as they can on a busy machine (or without a
    GIL); on its own, the GIL rarely switches threads between two adjacent lines."""
    import time

    def on_line(frame, event, arg):
        if event == "line":
            time.sleep(0)          # releases the GIL: another thread may run the next line first
        return on_line

    def on_call(frame, event, arg):
        return on_line if frame.f_code.co_filename == module.__file__ else None

    return on_call


def test_round_robin_is_exact_under_concurrency():
    """Fails without the selector's lock: two threads then read the same counter value."""
    from sigroute.bandits import selectors as selectors_module

    selector = RoundRobinSelector()
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work():
        start.wait()
        local = Counter(selector.select(["a", "b", "c"], None).model for _ in range(300))
        with lock:
            counts.update(local)

    threads = [threading.Thread(target=work) for _ in range(8)]
    threading.settrace(_yield_between_lines_of(selectors_module))   # for the threads started below
    try:
        for t in threads:
            t.start()
    finally:
        threading.settrace(None)
    for t in threads:
        t.join()
    assert counts == {"a": 800, "b": 800, "c": 800}


# --------------------------------------------------------------------------------------------
# cheapest


def test_cheapest_uses_counted_prompt_tokens_and_max_tokens():
    models = {"x": spec(2.0, 8.0), "y": spec(1.0, 10.0)}
    selector = CheapestSelector(None, models)
    text = "Explain the difference between a list and a tuple in Python, with examples."
    ctx = ctx_for(text, max_tokens=300)
    # a real tokenizer count: more than the words' own tokens (message framing), not a char estimate.
    assert ctx.prompt_tokens > count_tokens(text) > 5
    choice = selector.select(["x", "y"], ctx)
    expected = {"x": (2.0 * ctx.prompt_tokens + 8.0 * 300) / 1e6, "y": (1.0 * ctx.prompt_tokens + 10.0 * 300) / 1e6}
    assert choice.scores == pytest.approx({m: -c for m, c in expected.items()})
    assert choice.model == "x" and choice.ranking == ("x", "y") and choice.propensity == 1.0


def test_cheapest_defaults_to_expected_output_tokens_without_max_tokens():
    models = {"x": spec(0.0, 1.0)}
    ctx = ctx_for("hi")
    assert CheapestSelector(None, models).expected_costs(["x"], ctx) == {"x": pytest.approx(256 / 1e6)}
    selector = build_selector(Algorithm.model_validate({"cheapest": {"expected_output_tokens": 1000}}), models)
    assert selector.expected_costs(["x"], ctx) == {"x": pytest.approx(1000 / 1e6)}
    assert selector.expected_costs(["x"], ctx_for("hi", max_tokens=10)) == {"x": pytest.approx(10 / 1e6)}


def test_cheapest_long_prompt_flips_the_choice():
    # "in_heavy" charges a lot for input but little for output; "out_heavy" the other way round.
    models = {"in_heavy": spec(10.0, 1.0), "out_heavy": spec(1.0, 5.0)}
    selector = CheapestSelector(None, models)
    short = ctx_for("What is 2+2?", max_tokens=500)
    long = ctx_for("lorem ipsum dolor sit amet " * 1000, max_tokens=500)
    assert short.prompt_tokens < 50 and long.prompt_tokens > 4000
    assert selector.select(["in_heavy", "out_heavy"], short).model == "in_heavy"
    assert selector.select(["in_heavy", "out_heavy"], long).model == "out_heavy"
    # the answer does not depend on the candidates' order
    assert selector.select(["out_heavy", "in_heavy"], short).model == "in_heavy"
    # a long answer flips it back
    assert selector.select(["in_heavy", "out_heavy"], ctx_for("lorem ipsum dolor sit amet " * 1000,
                                                                 max_tokens=100_000)).model == "in_heavy"


def test_cheapest_ties_keep_candidate_order_and_ranking_is_by_cost():
    models = {"p": spec(1, 1), "q": spec(1, 1), "r": spec(0.1, 0.1), "s": spec(5, 5)}
    selector = CheapestSelector(None, models)
    assert selector.select(["s", "q", "p", "r"], ctx_for()).ranking == ("r", "q", "p", "s")
    assert selector.select(["p", "q"], ctx_for()).model == "p"
    assert selector.select(["q", "p"], ctx_for()).model == "q"


def test_cheapest_needs_a_spec_for_each_candidate():
    with pytest.raises(ValueError, match="ghost"):
        CheapestSelector(None, MODELS).select(["a", "ghost"], ctx_for())


# --------------------------------------------------------------------------------------------
# fastest


def fastest(clock: Clock, half_life_s: float = 300.0, models=None, **kw) -> FastestSelector:
    return FastestSelector(FastestOptions(half_life_s=half_life_s), models if models is not None else MODELS,
                           clock=clock, **kw)


def ok(model: str, ttft: float, at: float) -> Reward:
    return Reward(model=model, ok=True, ttft_ms=ttft, latency_ms=ttft * 5, at=at)


def test_fastest_tries_unknown_models_first():
    clock = Clock()
    selector = fastest(clock)
    first = selector.select(["a", "b", "c"], None)
    assert first.model == "a"  # all unknown: the decision's order
    selector.update(first, ok("a", 80.0, clock.now))
    second = selector.select(["a", "b", "c"], None)
    assert second.model == "b"
    selector.update(second, ok("b", 50.0, clock.now))
    third = selector.select(["a", "b", "c"], None)
    assert third.model == "c"
    assert third.ranking == ("c", "b", "a")
    assert third.scores["b"] == pytest.approx(-50.0, rel=0.02)


def test_fastest_converges_to_the_faster_model():
    clock = Clock()
    selector = fastest(clock, half_life_s=60.0)
    rng = random.Random(5)
    true_ttft = {"a": 400.0, "b": 150.0, "c": 250.0}
    picks = []
    for _ in range(300):
        clock.now += 1.0
        choice = selector.select(["a", "b", "c"], None)
        picks.append(choice.model)
        ttft = rng.gauss(true_ttft[choice.model], 20.0)
        selector.update(choice, Reward(model=choice.model, ok=True, ttft_ms=ttft, at=clock.now))
    assert set(picks[:3]) == {"a", "b", "c"}
    assert Counter(picks[-100:]) == {"b": 100}
    assert selector.mean_ttft_ms("b") == pytest.approx(150.0, abs=15.0)


def test_fastest_decays_old_observations():
    t0 = 1_700_000_000.0
    clock = Clock(t0 + 3000)  # ten half-lives after the first observations
    selector = fastest(clock, half_life_s=300.0)
    for i in range(10):
        selector.update(None, ok("a", 1000.0, t0 + i))  # a used to be slow
    selector.update(None, ok("a", 100.0, t0 + 3000))  # and is fast now
    selector.update(None, ok("b", 200.0, t0 + 3000))
    assert selector.select(["a", "b"], None).model == "a"
    # ten old observations at 2^-10 weight each against one fresh one
    w_old = 10 * 2.0 ** -10
    assert selector.mean_ttft_ms("a") == pytest.approx((1000 * w_old + 100) / (w_old + 1), rel=0.02)
    # without decay the ten slow observations would dominate
    frozen = fastest(clock, half_life_s=1e12)
    for i in range(10):
        frozen.update(None, ok("a", 1000.0, t0 + i))
    frozen.update(None, ok("a", 100.0, t0 + 3000))
    frozen.update(None, ok("b", 200.0, t0 + 3000))
    assert frozen.select(["a", "b"], None).model == "b"


def test_fastest_retries_a_model_whose_observations_are_stale():
    t0 = 1_700_000_000.0
    clock = Clock(t0)
    selector = fastest(clock, half_life_s=300.0)
    selector.update(None, ok("a", 100.0, t0))
    selector.update(None, ok("b", 500.0, t0))  # one slow spell
    assert selector.select(["a", "b"], None).model == "a"
    clock.now = t0 + 20 * 300
    selector.update(None, ok("a", 100.0, clock.now))  # a keeps being observed, b does not
    assert selector.select(["a", "b"], None).model == "b"
    # with prior_weight=0 the plain decayed mean never forgets
    plain = fastest(clock, half_life_s=300.0, prior_weight=0.0)
    plain.update(None, ok("a", 100.0, t0))
    plain.update(None, ok("b", 500.0, t0))
    plain.update(None, ok("a", 100.0, clock.now))
    assert plain.select(["a", "b"], None).model == "a"
    assert plain.mean_ttft_ms("b") == pytest.approx(500.0)


def test_fastest_penalizes_failures():
    clock = Clock()
    models = {"a": spec(first_token_timeout_s=5), "b": spec()}
    selector = fastest(clock, models=models)
    selector.update(None, ok("a", 100.0, clock.now))
    selector.update(None, ok("b", 300.0, clock.now))
    assert selector.select(["a", "b"], None).model == "a"
    # a fast failure (connection refused after 2 ms) must not look fast
    selector.update(None, Reward(model="a", ok=False, latency_ms=2.0, at=clock.now))
    assert selector.mean_ttft_ms("a") == pytest.approx((100.0 + 5000.0) / 2, rel=0.02)
    assert selector.select(["a", "b"], None).model == "b"
    # a failure that took longer than the deadline counts its full latency; unknown spec: 30 s
    assert selector.penalty_ttft_ms("a", 9000.0) == 9000.0
    assert selector.penalty_ttft_ms("unknown") == 30_000.0


def test_fastest_uses_latency_without_ttft_and_credits_the_model_that_answered():
    clock = Clock()
    selector = fastest(clock)
    choice = selector.select(["a", "b"], None)
    assert choice.model == "a"
    # a fell back to b, which answered without streaming
    selector.update(choice, Reward(model="b", ok=True, latency_ms=400.0, at=clock.now))
    selector.update(choice, Reward(model="b", ok=True, at=clock.now))  # nothing measured: ignored
    assert set(selector.state()["models"]) == {"b"}
    assert selector.mean_ttft_ms("b") == pytest.approx(400.0, rel=0.02)


def _random_rewards(seed: int, n: int, span_s: float) -> list[Reward]:
    rng = random.Random(seed)
    t0 = 1_700_000_000.0
    out = []
    for _ in range(n):
        model = rng.choice(["a", "b", "c"])
        at = t0 + rng.uniform(0, span_s)
        if rng.random() < 0.1:
            out.append(Reward(model=model, ok=False, latency_ms=rng.uniform(1, 50_000), at=at))
        else:
            out.append(Reward(model=model, ok=True, ttft_ms=rng.uniform(20, 2000), at=at))
    return out


@pytest.mark.parametrize("half_life_s", [300.0, 10.0])  # 10 s: the span covers ~200 half-lives (rebases)
def test_fastest_merged_replicas_equal_one_selector_that_saw_everything(half_life_s):
    rewards = _random_rewards(seed=11, n=600, span_s=2000.0)
    end = max(r.at for r in rewards)
    clock = Clock(end)
    single = fastest(clock, half_life_s)
    left, right = fastest(clock, half_life_s), fastest(clock, half_life_s)
    for i, reward in enumerate(rewards):
        single.update(None, reward)
        (left if i % 3 else right).update(None, reward)

    # through JSON, as a shared store would carry it
    left_state = json.loads(json.dumps(left.state()))
    right_state = json.loads(json.dumps(right.state()))
    assert left_state["t_ref"] != right_state["t_ref"]
    merged = fastest(clock, half_life_s)
    merged.merge(left_state)
    merged.merge(right_state)
    reverse = fastest(clock, half_life_s)  # the order of merging does not matter
    reverse.merge(right_state)
    reverse.merge(left_state)
    left.merge(right_state)  # merging into a replica that already has state works too
    right.merge(left_state)

    for at in (end, end - 50.0):
        want = single.totals(at)
        assert set(want) == {"a", "b", "c"}
        for candidate in (merged, reverse, left, right):
            got = candidate.totals(at)
            assert set(got) == set(want)
            for m in want:
                assert got[m][0] == pytest.approx(want[m][0], rel=1e-9, abs=0)
                assert got[m][1] == pytest.approx(want[m][1], rel=1e-9, abs=0)
    for m in ("a", "b", "c"):
        assert merged.mean_ttft_ms(m) == pytest.approx(single.mean_ttft_ms(m), rel=1e-9)
    assert merged.select(["a", "b", "c"], None).ranking == single.select(["a", "b", "c"], None).ranking


def test_fastest_state_round_trip_and_guards():
    clock = Clock()
    selector = fastest(clock, 60.0)
    assert selector.state()["t_ref"] is None and selector.state()["models"] == {}
    for reward in _random_rewards(seed=2, n=50, span_s=100.0):
        selector.update(None, reward)
    state = json.loads(json.dumps(selector.state()))
    assert state["half_life_s"] == 60.0 and isinstance(state["t_ref"], float)
    clone = fastest(clock, 60.0)
    clone.load(state)
    assert clone.state() == selector.state()
    before = clone.state()
    clone.merge(fastest(clock, 60.0).state())  # merging an empty state changes nothing
    assert clone.state() == before
    with pytest.raises(ValueError, match="half_life_s"):
        fastest(clock, 30.0).merge(state)
    with pytest.raises(ValueError, match="version"):
        clone.load({**state, "version": 99})


def test_fastest_stays_finite_over_thousands_of_half_lives():
    t0 = 1_700_000_000.0
    clock = Clock(t0)
    selector = fastest(clock, half_life_s=1.0, prior_weight=0.0)
    for i in range(0, 5001, 50):  # 5000 half-lives: 2**5000 would overflow without rebasing
        clock.now = t0 + i
        selector.update(None, ok("a", 100.0 + i, clock.now))
    state = selector.state()
    assert math.isfinite(state["models"]["a"]["weighted_sum"]) and math.isfinite(state["models"]["a"]["weight"])
    assert state["t_ref"] > t0
    # only the newest observation still counts: the previous one is 50 half-lives older
    assert selector.mean_ttft_ms("a") == pytest.approx(5100.0, rel=1e-6)
