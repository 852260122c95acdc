"""The routing benchmark's stream sent over HTTP through the real gateway (`--through-gateway`).

The replay simulator (`gateway.sim.create_replay_app`) serves every pool model's real recorded
outcome; a gateway serves a policy whose single decision routes among the pool with the learning
algorithm under test; each question goes to `model="auto"` over loopback HTTP, in stream order,
one at a time (online learning: each answer's feedback arrives before the next question). The
answer's letter is checked against the question's answer, its cost is the usage the gateway saw ×
the models.csv prices, and its quality goes back as `POST /v1/feedback {score: 1 | 0}` (one turn of
that loop is `gateway.sim.feedback_loop.ask_and_grade`, which the demo tour uses too).

Warm start, when given, is the same full-information statistics the offline run loads
(`bandits.warmstart`), placed in the gateway's state store before it starts, exactly as
`sigroute bandit warm-start` + `import` would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Sequence

import httpx

__all__ = ["gateway_policy", "run_through_gateway"]


def gateway_policy(sim_api_base: str, pool: Sequence[str], prices: dict[str, tuple[float, float]],
                   algorithm: dict[str, Any], encoder: dict[str, Any] | None = None) -> dict[str, Any]:
    """A policy with one learning decision over the pool, every model served by the replay sim."""
    policy: dict[str, Any] = {
        "version": 1,
        "models": {m: {"provider": f"openai/{m}", "api_base": sim_api_base,
                       "price": {"input": prices[m][0], "output": prices[m][1]}, "timeout_s": 30}
                   for m in pool},
        "decisions": [{"name": "route", "models": list(pool), "algorithm": algorithm}],
        "upstream": {"retries": 0, "backoff_s": 0.0, "breaker": {"failure_threshold": 1000, "cooldown_s": 1}},
    }
    if encoder:
        policy["encoder"] = encoder
    return policy


def run_through_gateway(outcomes: Any, questions: Sequence[tuple[str, str, str]], pool: Sequence[str],
                        algorithm: dict[str, Any], *, warm_snapshot: dict | None = None,
                        tenant: str = "default") -> dict[str, Any]:
    """Send `questions` — (question_id, prompt text, right letter), in stream order — through a gateway.

    Returns per-question records (model, correct, cost), the HTTP time spent and, per model, the
    observation count and reward sum the gateway's learner ended with.
    """
    from sigroute.bandits.store import MemoryStateStore, import_state
    from sigroute.gateway.app import create_app
    from sigroute.gateway.serving import ServerThread
    from sigroute.gateway.sim import create_replay_app
    from sigroute.policies.schema import Policy

    prices = {m: (outcomes.models[m].price_in, outcomes.models[m].price_out) for m in pool}
    with ServerThread(create_replay_app(outcomes, time_scale=0.0)) as sim:
        policy = Policy.model_validate(gateway_policy(sim.url + "/v1", pool, prices, algorithm))
        store = MemoryStateStore()
        if warm_snapshot is not None:
            asyncio.run(import_state(store, warm_snapshot))
        app = create_app(policy, state_store=store)
        records: list[dict[str, Any]] = []
        with ServerThread(app) as gateway:
            learner = app.state.runtime.pipeline.selectors["route"]
            if warm_snapshot is not None:  # the app loads stored state at start-up; wait for it
                deadline = time.monotonic() + 30
                while tenant not in learner.tenants() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if tenant not in learner.tenants():
                    raise RuntimeError("the gateway did not load the warm-start state")
            started = time.perf_counter()
            asyncio.run(_stream(gateway.url, questions, prices, records))
            elapsed = time.perf_counter() - started
            sums = learner.learner(tenant).estimator.sums()
            learned = {arm: {"observations": float(vec[0]), "reward_sum": float(vec[1])} for arm, vec in sums.items()}
    return {"records": records, "seconds": elapsed, "learned": learned}


async def _stream(url: str, questions: Sequence[tuple[str, str, str]], prices: dict[str, tuple[float, float]],
                  records: list[dict[str, Any]]) -> None:
    """One question at a time, its feedback sent before the next (`gateway.sim.feedback_loop`)."""
    from sigroute.gateway.sim.feedback_loop import ask_and_grade

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        for question_id, text, right in questions:
            graded = await ask_and_grade(http, text, right, prices)   # FeedbackError is a RuntimeError
            records.append({"question_id": question_id, "model": graded.model, "correct": graded.correct,
                            "cost": graded.cost_usd, "overhead_ms": graded.overhead_ms})
