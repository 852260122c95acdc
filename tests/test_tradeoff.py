"""The per-request cost/quality dial (`x-sigroute-tradeoff`, body `sigroute.tradeoff`): one
`learn: quality` learner serves every preference; other decisions say the dial was ignored.
Real gateways on loopback, the real simulated upstream."""

from __future__ import annotations

import numpy as np
import pytest

from sigroute.bandits import tradeoff
from sigroute.bandits.base import Reward
from sigroute.bandits.contextual import LinUCBSelector
from sigroute.policies.schema import Algorithm, ModelSpec
from conftest import base_policy

QUALITY_LEARNER = {"linucb": {"alpha": 1.5, "features": ["bias"], "learn": "quality",
                              "reward": {"quality": 1.0, "feedback_ttl_s": 600}}}


def policy(sim, algorithm, models=("alpha", "gamma")):
    return base_policy(sim, decisions=[{"name": "learn", "models": list(models), "algorithm": algorithm}])


def chat(gw, dial=None, **body):
    headers = {} if dial is None else {tradeoff.TRADEOFF_HEADER: str(dial)}
    return gw.chat("Summarise the plot of a short story in two sentences.", headers=headers, **body)


def teach(gw, rounds=24):
    """alpha (cheap) answers at quality 0, gamma (dear) at 1 — by feedback, with no dial."""
    for _ in range(rounds):
        r = chat(gw)
        assert r.status_code == 200, r.text
        model = r.headers["x-sigroute-model"]
        score = 1.0 if model == "gamma" else 0.0
        fb = gw.http.post("/v1/feedback", json={"request_id": r.headers["x-sigroute-request-id"], "score": score})
        assert fb.status_code == 200, fb.text
    learned = gw.app.state.runtime.pipeline.selectors["learn"].snapshot()["observations"]
    assert learned.get("alpha", 0) >= 1 and learned.get("gamma", 0) >= 1, learned


def test_parse_dial_and_weight_mapping():
    assert [tradeoff.parse_dial(v) for v in ("quality", "Balanced", " cost ", "0.25", 0, 1)] == [0, 0.5, 1, 0.25, 0, 1]
    for bad in ("cheap", "-0.1", "1.5", "nan", True, None, [0.3]):
        with pytest.raises(ValueError):
            tradeoff.parse_dial(bad)
    assert tradeoff.cost_weight(1.0, 0.0) == 0.0
    assert tradeoff.cost_weight(2.0, 0.5) == pytest.approx(2.0)     # balanced: cost weighs as much as quality
    assert tradeoff.cost_weight(1.0, 0.75) == pytest.approx(3.0)
    assert tradeoff.cost_weight(1.0, 1.0) == tradeoff.MAX_COST_RATIO


def test_the_dial_changes_selection_not_what_is_learned():
    models = {"cheap": ModelSpec.model_validate({"provider": "openai/cheap", "price": {"input": 0.1, "output": 0.2}}),
              "dear": ModelSpec.model_validate({"provider": "openai/dear", "price": {"input": 5, "output": 10}})}
    sel = LinUCBSelector(Algorithm.model_validate(QUALITY_LEARNER).options, models, decision="d", seed=1)
    x = np.array([1.0])
    for _ in range(50):
        for model, q in (("cheap", 0.5), ("dear", 0.9)):
            choice = sel.select_vector([model], x, prompt_tokens=100)
            sel.update(choice, Reward(model=model, ok=True, latency_ms=10, prompt_tokens=100, completion_tokens=50))
            sel.credit(sel.pending_record(choice, model), q)
    before = {arm: v.copy() for arm, v in sel.learner("default").estimator.sums().items()}
    picks = {d: sel.select_vector(["cheap", "dear"], x, prompt_tokens=100, dial=d) for d in (0.0, 0.5, 1.0)}
    assert picks[0.0].model == "dear" and picks[1.0].model == "cheap"
    assert picks[1.0].tradeoff == tradeoff.applied(1000.0, 1.0)
    assert picks[0.5].tradeoff.startswith("applied; weight=1;")
    after = sel.learner("default").estimator.sums()
    assert all(np.array_equal(before[a], after[a]) for a in before)   # selection learned nothing
    # the immediate reward learned does not depend on the dial: quality only
    assert sel.immediate_reward(Reward(model="cheap", ok=True, prompt_tokens=100, completion_tokens=50)) == 0.5


def test_one_learner_serves_the_cost_dial_and_the_quality_dial(sim, gateway_factory):
    gw = gateway_factory(policy(sim, QUALITY_LEARNER))
    teach(gw)
    selector = gw.app.state.runtime.pipeline.selectors["learn"]
    state = {a: v.copy() for a, v in selector.learner("default").estimator.sums().items()}
    # explain (no learning) from the same state: the weight the dial applies, and the pick
    question = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
    cheap = gw.http.post("/v1/route/explain", json=question, headers={tradeoff.TRADEOFF_HEADER: "cost"}).json()
    strong = gw.http.post("/v1/route/explain", json=question, headers={tradeoff.TRADEOFF_HEADER: "0"}).json()
    assert cheap["winner"]["selection"]["model"] == "alpha" and cheap["winner"]["selection"]["tradeoff"].startswith("applied; weight=1000;")
    assert strong["winner"]["selection"]["model"] == "gamma" and strong["winner"]["selection"]["tradeoff"].startswith("applied; weight=0;")
    after = selector.learner("default").estimator.sums()
    assert all(np.array_equal(state[a], after[a]) for a in state)
    # served requests, one right after the other
    r1 = chat(gw, "1")
    r0 = chat(gw, "quality")
    assert (r1.status_code, r0.status_code) == (200, 200)
    assert r1.headers["x-sigroute-model"] == "alpha" and r0.headers["x-sigroute-model"] == "gamma"
    assert r1.headers[tradeoff.TRADEOFF_HEADER] == "applied; weight=1000; dial=1"
    assert r0.headers[tradeoff.TRADEOFF_HEADER] == "applied; weight=0; dial=0"
    # the body's private object works too, and never reaches the upstream
    rb = chat(gw, sigroute={"tradeoff": "cost"})
    assert rb.status_code == 200 and rb.headers["x-sigroute-model"] == "alpha"
    assert "sigroute" not in sim.last_body("alpha")
    # no dial: no header
    assert tradeoff.TRADEOFF_HEADER not in chat(gw).headers


def test_invalid_dials_are_a_400_naming_where_they_came_from(sim, gateway_factory):
    gw = gateway_factory(policy(sim, QUALITY_LEARNER))
    for value in ("cheapest", "2", "-1", "nan"):
        r = chat(gw, value)
        assert r.status_code == 400, (value, r.text)
        error = r.json()["error"]
        assert error["param"] == tradeoff.TRADEOFF_HEADER and tradeoff.TRADEOFF_HEADER in error["message"]
        assert error["type"] == "invalid_request_error"
    for private, param in (({"tradeoff": 3}, "sigroute.tradeoff"), ("cost", "sigroute"),
                           ({"speed": 1}, "sigroute.speed")):
        r = chat(gw, sigroute=private)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    assert sim.calls("alpha") + sim.calls("gamma") == 0


def test_static_and_reward_learning_decisions_say_the_dial_was_ignored(sim, gateway_factory):
    static = gateway_factory(policy(sim, "static"))
    r = chat(static, "cost")
    assert r.status_code == 200 and r.headers["x-sigroute-model"] == "alpha"
    assert r.headers[tradeoff.TRADEOFF_HEADER].startswith("ignored; reason=algorithm static")
    learned = gateway_factory(policy(sim, {"linucb": {"features": ["bias"], "reward": {"quality": 1, "cost": 0.2}}}))
    r = chat(learned, "balanced")
    assert r.status_code == 200
    assert r.headers[tradeoff.TRADEOFF_HEADER].startswith("ignored; reason=learn: reward")
    direct = gateway_factory(base_policy(sim, routing={"allow_direct_models": True},
                                         decisions=[{"name": "d", "models": ["alpha"]}]))
    r = chat(direct, "0.5", model="gamma")
    assert r.status_code == 200, r.text
    assert r.headers[tradeoff.TRADEOFF_HEADER] == "ignored; reason=a model named directly"


def test_the_decision_log_keeps_the_dial_so_replay_scores_as_the_gateway_did(tmp_path):
    from sigroute.bandits.replay import DecisionLog, evaluate, read_decision_log

    models = {"cheap": ModelSpec.model_validate({"provider": "openai/cheap", "price": {"input": 0.1, "output": 0.2}}),
              "dear": ModelSpec.model_validate({"provider": "openai/dear", "price": {"input": 5, "output": 10}})}
    options = Algorithm.model_validate({"linucb": {"features": ["bias"], "learn": "quality", "alpha": 0.0}}).options
    x = np.array([1.0])

    def trained():
        sel = LinUCBSelector(options, models, decision="d")
        for model, q in (("cheap", 0.5), ("dear", 0.9)):
            sel.observe("default", model, x, q, completion_tokens=100, latency_ms=10)
        return sel

    gateway = trained()
    log = DecisionLog(tmp_path / "log.jsonl")
    for i, dial in enumerate((0.0, 1.0, None)):
        choice = gateway.select_vector(list(models), x, prompt_tokens=50, dial=dial)
        assert choice.model == ("cheap" if dial == 1.0 else "dear")
        entry = gateway.log_entry(choice, Reward(model=choice.model, ok=True, latency_ms=10, prompt_tokens=50,
                                                 completion_tokens=100))
        assert entry["usage"].get("tradeoff") == dial
        log.decision(request_id=f"r{i}", tenant="default", decision="d", candidates=list(models), model=choice.model,
                     answered_by=choice.model, propensity=1.0, **entry)
    log.close()
    assert evaluate(read_decision_log(tmp_path / "log.jsonl"), trained(), learn=False)["matched"] == 3


def test_the_dial_reaches_the_learner_through_messages_and_responses_too(sim, gateway_factory):
    """The header works on every surface (the official anthropic and openai Responses clients): the
    learner taught that the dear model is better picks it at dial 0 and the cheap one at dial 1,
    and each answer says the dial was applied."""
    import anthropic

    gw = gateway_factory(policy(sim, QUALITY_LEARNER))
    teach(gw)
    messages = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    responses = gw.client()
    for dial, expected in (("quality", "gamma"), ("cost", "alpha")):
        headers = {tradeoff.TRADEOFF_HEADER: dial}
        msg = messages.messages.with_raw_response.create(
            model="auto", max_tokens=64, messages=[{"role": "user", "content": "Summarise a story."}],
            extra_headers=headers)
        resp = responses.responses.with_raw_response.create(model="auto", input="Summarise a story.",
                                                            extra_headers=headers)
        for raw in (msg, resp):
            assert raw.headers["x-sigroute-model"] == expected, (dial, raw.headers)
            assert raw.headers[tradeoff.TRADEOFF_HEADER].startswith("applied;"), raw.headers
