"""The routing benchmark's through-the-gateway path on a tiny invented outcomes table."""

from __future__ import annotations

import numpy as np

from benchmarks.routing_gateway import run_through_gateway
from sigroute.gateway.sim.replay import format_replay_question, load_outcomes
from test_sim_replay import write_outcomes


def test_questions_flow_through_the_gateway_and_feedback_reaches_the_learner(tmp_path):
    from sigroute.bandits.contextual import LinUCBSelector
    from sigroute.policies.schema import Algorithm

    outcomes = load_outcomes(write_outcomes(tmp_path / "outcomes"))
    pool = ["tiny-7b", "big-70b"]
    algorithm = {"linucb": {"alpha": 0.1, "features": ["bias", "shape"], "reward": {"quality": 1.0}}}
    # warm start: big-70b looks far better, so the gateway should route everything to it
    selector = LinUCBSelector(Algorithm.model_validate(algorithm).options, decision="route")
    key = selector.state_key("default")
    dim = selector.features.dim
    x = np.zeros(dim)
    x[0] = 1.0
    warm = {}
    for arm, reward in (("tiny-7b", 0.0), ("big-70b", 1.0)):
        vec = selector.learner("default").estimator.observation_sums(arm, x, reward, weight=50.0)
        warm[arm] = vec.tolist()
    snapshot = {"format": "sigroute-bandit-state", "version": 1, "keys": {key: warm}}
    questions = list(outcomes.questions)
    items = [(q.question_id, format_replay_question(q), q.answer) for q in questions]
    result = run_through_gateway(outcomes, items, pool, algorithm, warm_snapshot=snapshot)
    records = result["records"]
    assert [r["question_id"] for r in records] == [q.question_id for q in questions]
    assert {r["model"] for r in records} == {"big-70b"}
    for q, r in zip(questions, records):
        recorded = outcomes.outcome(q, "big-70b")
        assert r["correct"] == (1.0 if recorded == 1 else 0.0)
        assert r["cost"] > 0
    # each answer was learned once, with its quality from feedback (reward = quality here)
    assert result["learned"]["big-70b"]["observations"] == 50 + len(questions)
    assert result["learned"]["big-70b"]["reward_sum"] == 50 + sum(r["correct"] for r in records)
