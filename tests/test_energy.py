"""Energy: models declare joules per token or per request; `reward: {energy: w}` weighs frugality
like cost; the gateway counts the declared joules of what it serves (`sigroute_energy_joules_total`).
Real gateways on loopback, the real simulated upstream."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from sigroute.bandits.base import Reward
from sigroute.bandits.contextual import LinUCBSelector, energy_shares, known_terms, reward_value
from sigroute.policies.schema import Algorithm, Energy, ModelSpec, RewardSpec
from conftest import base_policy

# alpha and gamma as in the simulator (alpha cheap, gamma dear), but gamma is the frugal one here
ENERGY = {"alpha": {"prompt_j_per_token": 0.5, "completion_j_per_token": 2.0, "per_request_j": 10.0},
          "gamma": {"completion_j_per_token": 0.1}}


def energy_policy(sim, algorithm):
    policy = base_policy(sim, decisions=[{"name": "learn", "models": ["alpha", "gamma"], "algorithm": algorithm}])
    for name, energy in ENERGY.items():
        policy["models"][name]["energy"] = energy
    return policy


def test_energy_declarations_are_validated():
    assert Energy(per_request_j=3).joules(100, 10) == 3
    assert Energy(prompt_j_per_token=0.5, completion_j_per_token=2).joules(10, 4) == 13
    with pytest.raises(ValidationError, match="declare at least one"):
        ModelSpec.model_validate({"provider": "openai/x", "energy": {}})
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({"provider": "openai/x", "energy": {"per_request_j": -1}})
    with pytest.raises(ValidationError):
        ModelSpec.model_validate({"provider": "openai/x", "energy": {"watts": 3}})
    with pytest.raises(ValidationError, match="positive weight"):
        RewardSpec(quality=0, cost=0, latency=0, energy=0)
    assert RewardSpec(quality=0, energy=1).total == 1


def test_energy_enters_the_reward_and_the_known_terms_like_cost():
    energies = {"a": Energy(completion_j_per_token=1.0), "b": Energy(completion_j_per_token=4.0), "c": None}
    assert energy_shares(energies, 10, 100) == {"a": 0.25, "b": 1.0, "c": None}
    spec = RewardSpec(quality=1.0, energy=1.0)
    assert reward_value(spec, quality=1.0, cost_share=None, latency_ms=None, energy_share=0.25) == pytest.approx(0.875)
    assert reward_value(spec, quality=1.0, cost_share=None, latency_ms=None, energy_share=None) == pytest.approx(0.5)
    profiles = {"a": (100.0, None), "b": (100.0, None), "c": (100.0, None)}
    known = known_terms(spec, ["a", "b", "c"], {"a": None, "b": None, "c": None}, 10, profiles, energies)
    for arm, share in (("a", 0.25), ("b", 1.0), ("c", None)):
        assert known.apply(arm, 0.6) == pytest.approx(
            reward_value(spec, quality=0.6, cost_share=None, latency_ms=None, energy_share=share))
    # a reward-learning selector learns the energy term at once
    models = {"a": ModelSpec.model_validate({"provider": "openai/a", "energy": {"completion_j_per_token": 1}}),
              "b": ModelSpec.model_validate({"provider": "openai/b", "energy": {"completion_j_per_token": 4}})}
    sel = LinUCBSelector(Algorithm.model_validate({"linucb": {"features": ["bias"],
                                                              "reward": {"quality": 1, "energy": 1}}}).options, models)
    reward = Reward(model="a", ok=True, latency_ms=10, prompt_tokens=10, completion_tokens=100)
    assert sel.immediate_reward(reward) == pytest.approx((0.5 + 0.75) / 2)


def test_energy_weight_moves_selection_toward_the_frugal_model(sim, gateway_factory):
    """Equal learned quality; alpha is cheaper, gamma more frugal. Cost alone picks alpha, energy gamma."""
    picks = {}
    for weights in ({"cost": 1.0}, {"cost": 1.0, "energy": 3.0}):
        algorithm = {"linucb": {"alpha": 0.0, "features": ["bias"], "learn": "quality",
                                "reward": {"quality": 1.0, **weights}}}
        gw = gateway_factory(energy_policy(sim, algorithm))
        selector = gw.app.state.runtime.pipeline.selectors["learn"]
        for model in ("alpha", "gamma"):   # the same quality for both: only the known terms differ
            for _ in range(5):
                choice = selector.select_vector([model], np.array([1.0]), prompt_tokens=20)
                selector.update(choice, Reward(model=model, ok=True, latency_ms=5, prompt_tokens=20,
                                               completion_tokens=8))
        r = gw.chat("Name three rivers in Europe.")
        assert r.status_code == 200, r.text
        picks[tuple(weights)] = r.headers["x-sigroute-model"]
    assert picks == {("cost",): "alpha", ("cost", "energy"): "gamma"}


def test_energy_metric_counts_joules_from_usage(sim, gateway_factory):
    gw = gateway_factory(energy_policy(sim, "static"))   # static: always alpha
    for stream in (False, True):
        if stream:
            with gw.client().chat.completions.create(model="auto", stream=True, stream_options={"include_usage": True},
                                                     messages=[{"role": "user", "content": "hello there"}]) as s:
                usage = [c.usage for c in s if c.usage is not None][-1]
        else:
            r = gw.chat("hello there")
            assert r.status_code == 200
            usage = r.json()["usage"]
            usage = type("U", (), usage)
    text = gw.http.get("/metrics").text
    line = next(l for l in text.splitlines() if l.startswith('sigroute_energy_joules_total{model="alpha"}'))
    counted = float(line.split()[-1])
    prompt, completion = usage.prompt_tokens, usage.completion_tokens
    one = 10.0 + 0.5 * prompt + 2.0 * completion
    assert counted == pytest.approx(2 * one)
    assert 'sigroute_energy_joules_total{model="gamma"}' not in text
