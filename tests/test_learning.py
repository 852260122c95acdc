"""Learning decisions end to end: contextual selection, quality feedback, shared state on a real
Redis, restarts, reloads and store outages — real gateways on loopback, the real simulator."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from sigroute.bandits.store import RedisStateStore
from sigroute.policies.schema.algorithms import DEFAULT_PRIOR
from conftest import GatewayProcess, base_policy, free_port

LEARN = {"linucb": {"alpha": 0.2, "features": ["bias", "length", "shape"], "sync_interval_s": 0.05,
                    "reward": {"quality": 1.0, "feedback_ttl_s": 30}}}


def learning_policy(sim, algorithm=None, models=("alpha", "beta"), **overrides):
    return base_policy(sim, decisions=[{"name": "learn", "models": list(models),
                                        "algorithm": algorithm or LEARN}], **overrides)


def feedback(gw, request_id, **body):
    return gw.http.post("/v1/feedback", json={"request_id": request_id, **body})


def load_state(redis_url, prefix=""):
    async def run():
        store = RedisStateStore(redis_url)
        try:
            return {key: await store.load(key) for key in await store.keys(prefix)}
        finally:
            await store.aclose()
    return asyncio.run(run())


def wait_for(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_feedback_teaches_the_decision_which_model_answers_well(sim, gateway_factory):
    gw = gateway_factory(learning_policy(sim))
    picks = []
    for i in range(80):
        r = gw.chat(f"question number {i}: what is {i} + {i}?")
        assert r.status_code == 200
        model = r.headers["x-sigroute-model"]
        picks.append(model)
        answer = feedback(gw, r.headers["x-sigroute-request-id"], thumbs="up" if model == "beta" else "down")
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "recorded" and answer.json()["learned"] is True
    assert picks[:10].count("alpha") >= 1  # it explored the first-listed model
    assert picks[-30:].count("beta") >= 28  # and learned that beta is the one that gets thumbs up
    explained = gw.http.post("/v1/route/explain", json={"model": "auto", "messages": [
        {"role": "user", "content": "what is 3 + 3?"}]}).json()
    selection = explained["winner"]["selection"]
    assert selection["model"] == "beta" and selection["propensity"] == 1.0
    assert set(selection["features"]) >= {"bias", "length:log_tokens", "shape:digits"}
    assert sum(selection["learned"]["observations"].values()) == 80


def test_feedback_edge_cases(sim, gateway_factory):
    # a window far longer than the test: every step below is inside it however busy the machine
    algorithm = {"linucb": {**LEARN["linucb"], "reward": {"quality": 1.0, "feedback_ttl_s": 600}}}
    gw = gateway_factory(learning_policy(sim, algorithm))
    rid = gw.chat("hello").headers["x-sigroute-request-id"]
    bad = feedback(gw, rid, score=1.5)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "score"
    assert "between 0 and 1" in bad.json()["error"]["message"]
    assert feedback(gw, rid, label="meh").status_code == 400
    assert gw.http.post("/v1/feedback", content=b"{not json").status_code == 400
    assert gw.http.post("/v1/feedback", json={"score": 1}).json()["error"]["param"] == "request_id"
    assert gw.http.post("/v1/feedback", json={"request_id": rid, "stars": 5}).json()["error"]["param"] == "stars"
    first = feedback(gw, rid, score=0.8)
    assert first.status_code == 200 and first.json()["status"] == "recorded"
    again = feedback(gw, rid, score=0.8)  # a client retry: accepted, not counted twice
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    conflict = feedback(gw, rid, thumbs="down")
    assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "feedback_conflict"
    unknown = feedback(gw, "req_never_seen", thumbs="up")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_request_id"
    metrics = gw.http.get("/metrics").text
    assert 'sigroute_feedback_total{status="applied"} 1.0' in metrics
    assert 'sigroute_feedback_total{status="duplicate"} 1.0' in metrics
    assert 'sigroute_feedback_total{status="conflict"} 1.0' in metrics


def test_feedback_after_its_window_is_refused(sim, gateway_factory):
    """Only the expiry is timed here: the sleep is a lower bound (a busy machine makes it longer,
    which is still past the window), so nothing depends on a quiet machine."""
    algorithm = {"linucb": {**LEARN["linucb"], "reward": {"quality": 1.0, "feedback_ttl_s": 0.3}}}
    gw = gateway_factory(learning_policy(sim, algorithm))
    late = gw.chat("hello again").headers["x-sigroute-request-id"]
    time.sleep(0.5)  # past feedback_ttl_s
    expired = feedback(gw, late, thumbs="up")
    assert expired.status_code == 404 and expired.json()["error"]["code"] == "unknown_request_id"


def test_feedback_with_an_idempotency_key(sim, gateway_factory):
    gw = gateway_factory(learning_policy(sim))
    rid = gw.chat("rate me once").headers["x-sigroute-request-id"]

    def send(key, **body):
        return gw.http.post("/v1/feedback", json={"request_id": rid, **body}, headers={"idempotency-key": key})

    assert send("k-1", score=0.9).json()["status"] == "recorded"
    assert send("k-1", score=0.9).json()["status"] == "duplicate"            # a retry of the same call
    reused = send("k-1", score=0.1)                                          # the key reused for another body
    assert reused.status_code == 409 and reused.json()["error"]["code"] == "feedback_conflict"
    assert send("k-2", score=0.9).status_code == 409                         # a second rating, however sent
    assert send("x" * 300, score=0.9).json()["error"]["param"] == "Idempotency-Key"


def test_feedback_has_its_own_rate_limit_per_caller(sim, gateway_factory):
    policy = learning_policy(sim)
    policy["server"]["feedback_rate_limit"] = {"requests_per_minute": 1, "burst": 2}
    gw = gateway_factory(policy)
    answers = [gw.chat(f"question {i}").headers["x-sigroute-request-id"] for i in range(3)]
    assert [feedback(gw, rid, thumbs="up").status_code for rid in answers] == [200, 200, 429]
    limited = feedback(gw, answers[2], thumbs="up")
    assert limited.json()["error"]["code"] == "feedback_rate_limit_exceeded" and int(limited.headers["retry-after"]) >= 1
    assert gw.chat("chat is not limited by feedback").status_code == 200


def test_feedback_is_per_tenant(sim, gateway_factory, monkeypatch):
    monkeypatch.setenv("KEY_A", "sk-tenant-a")
    monkeypatch.setenv("KEY_A_UI", "sk-tenant-a-frontend")
    monkeypatch.setenv("KEY_B", "sk-tenant-b")
    auth = {"keys": [{"key_env": "KEY_A", "tenant": "a"}, {"key_env": "KEY_A_UI", "tenant": "a"},
                     {"key_env": "KEY_B", "tenant": "b"}]}
    gw = gateway_factory(learning_policy(sim, auth=auth))
    r = gw.chat("hi", api_key="sk-tenant-a")
    assert r.status_code == 200, r.text
    rid = r.headers["x-sigroute-request-id"]
    other = gw.http.post("/v1/feedback", json={"request_id": rid, "thumbs": "up"},
                         headers={"authorization": "Bearer sk-tenant-b"})
    assert other.status_code == 404  # another tenant cannot even learn that the id exists
    # any key of the same tenant may rate (the front end collects the thumbs the back end asked for)
    own = gw.http.post("/v1/feedback", json={"request_id": rid, "thumbs": "up"},
                       headers={"authorization": "Bearer sk-tenant-a-frontend"})
    assert own.status_code == 200 and own.json()["recorded_by"].startswith("a/")
    learners = gw.app.state.runtime.pipeline.selectors["learn"]
    assert learners.tenants() == ["a"]


def test_two_gateway_processes_on_one_redis_learn_together_without_lost_updates(
        sim, gateway_factory, clean_redis_url, tmp_path):
    one = gateway_factory(learning_policy(sim), redis_url=clean_redis_url)
    two = GatewayProcess(learning_policy(sim), tmp_path, clean_redis_url)
    try:
        async def hammer(url, n):
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                async def one_request(i):
                    r = await http.post("/v1/chat/completions", json={
                        "model": "auto", "messages": [{"role": "user", "content": f"q{i} " + "x" * (i % 7)}]})
                    assert r.status_code == 200
                    fb = await http.post("/v1/feedback", json={"request_id": r.headers["x-sigroute-request-id"],
                                                               "score": 0.9})
                    assert fb.status_code == 200
                await asyncio.gather(*(one_request(i) for i in range(n)))

        async def both():
            await asyncio.gather(hammer(one.url, 60), hammer(two.url, 60))
        asyncio.run(both())

        def totals():
            state = load_state(clean_redis_url)
            if len(state) != 1:
                return None
            (arms,) = state.values()
            n = sum(vec[0] for vec in arms.values())
            reward = sum(vec[1] for vec in arms.values())
            # every request counted once; Σ r = its immediate reward (0.5 assumed quality) + its credit (+0.4)
            return arms if n == 120 and reward == pytest.approx(120 * 0.9) else None
        arms = wait_for(totals)
        counts = {arm: vec[0] for arm, vec in arms.items()}

        def same_view():
            # explaining selects, which marks the tenant as in use: its state is then reloaded at the
            # next exchange (an idle tenant's view refreshes only every IDLE_RELOAD_S)
            one.http.post("/v1/route/explain", json={"model": "auto", "messages": [{"role": "user", "content": "q"}]})
            mine = one.app.state.runtime.pipeline.selectors["learn"].learner("default").estimator.sums()
            if set(mine) != set(arms) or not all(np.allclose(mine[a], arms[a]) for a in arms):
                return False
            explained = httpx.post(two.url + "/v1/route/explain", json={
                "model": "auto", "messages": [{"role": "user", "content": "q"}]}).json()
            return explained["winner"]["selection"]["learned"]["observations"] == counts
        assert wait_for(same_view)
    finally:
        two.stop()


def test_a_restarted_gateway_keeps_what_was_learned(sim, gateway_factory, clean_redis_url):
    first = gateway_factory(learning_policy(sim), redis_url=clean_redis_url)
    for i in range(30):
        r = first.chat(f"item {i}")
        feedback(first, r.headers["x-sigroute-request-id"],
                 thumbs="up" if r.headers["x-sigroute-model"] == "beta" else "down")
    learned = first.app.state.runtime.pipeline.selectors["learn"].learner("default").estimator.sums()
    first.server.stop()  # shutdown flushes what the last sync missed
    second = gateway_factory(learning_policy(sim), redis_url=clean_redis_url)
    restored = wait_for(lambda: second.app.state.runtime.pipeline.selectors["learn"]._learners.get("default"))
    sums = restored.estimator.sums()
    assert set(sums) == set(learned)
    for arm in learned:
        assert np.allclose(sums[arm], learned[arm])
    assert second.chat("item 99").headers["x-sigroute-model"] == "beta"


def test_an_unreachable_redis_does_not_stop_serving(sim, gateway_factory):
    gw = gateway_factory(learning_policy(sim), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    r = gw.chat("still works?")
    assert r.status_code == 200
    # the pending record could not be stored, so feedback is refused loudly, not lost silently
    fb = feedback(gw, r.headers["x-sigroute-request-id"], thumbs="up")
    assert fb.status_code == 503 and fb.json()["error"]["code"] == "feedback_store_unavailable"
    metrics = wait_for(lambda: (lambda m: m if 'sigroute_bandit_store_errors_total{operation="sync"}' in m else None)(
        gw.http.get("/metrics").text))
    assert "sigroute_bandit_store_up 0.0" in metrics
    # the request's record failed to be stored (later retries of the buffered record count too)
    put_errors = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith('sigroute_bandit_store_errors_total{operation="pending_put"}')]
    assert put_errors and put_errors[0] >= 1.0
    # it still learns locally: the next request is served from the local estimate
    learner = gw.app.state.runtime.pipeline.selectors["learn"].learner("default")
    assert learner.estimator.total_count() >= 1


def test_reload_keeps_learning_and_a_new_model_joins(sim, gateway_factory, tmp_path):
    import yaml

    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(learning_policy(sim)))
    from sigroute.gateway.app import app_from_file
    from sigroute.gateway.serving import ServerThread
    from conftest import Gateway

    app = app_from_file(path)
    with ServerThread(app) as server:
        gw = Gateway(server, app)
        for i in range(20):
            r = gw.chat(f"thing {i}")
            feedback(gw, r.headers["x-sigroute-request-id"], thumbs="down")  # neither model is any good
        before = app.state.runtime.pipeline.selectors["learn"].learner("default").estimator.sums()
        path.write_text(yaml.safe_dump(learning_policy(sim, models=("alpha", "beta", "gamma"))))
        assert gw.http.post("/v1/admin/reload").status_code == 200
        after = app.state.runtime.pipeline.selectors["learn"].learner("default").estimator.sums()
        for arm in before:
            assert np.allclose(after[arm], before[arm])
        picks = {gw.chat(f"new {i}").headers["x-sigroute-model"] for i in range(3)}
        assert "gamma" in picks  # the newcomer's wide confidence bound beats two known-bad models
        gw.http.close()


def test_every_contextual_algorithm_serves_and_learns(sim, gateway_factory):
    for algorithm in ({"hybrid_linucb": {"features": ["bias", "shape"]}},
                      {"thompson": {"features": ["bias", "shape"], "v": 0.5}},
                      {"epsilon_greedy": {"features": ["bias"], "epsilon": 0.5, "decay": 10}}):
        gw = gateway_factory(learning_policy(sim, algorithm))
        seen = set()
        for i in range(12):
            r = gw.chat(f"ask {i}")
            assert r.status_code == 200
            seen.add(r.headers["x-sigroute-model"])
            assert feedback(gw, r.headers["x-sigroute-request-id"], score=0.5).status_code == 200
        name = next(iter(algorithm))
        learner = gw.app.state.runtime.pipeline.selectors["learn"].learner("default")
        assert learner.estimator.total_count() == 12, name
        assert learner.estimator.prior == DEFAULT_PRIOR, name   # every one starts optimistic, hybrid too
        assert seen <= {"alpha", "beta"}


def test_bandit_cli_export_import_reset(sim, gateway_factory, clean_redis_url, tmp_path):
    gw = gateway_factory(learning_policy(sim), redis_url=clean_redis_url)
    for i in range(5):
        gw.chat(f"x{i}")
    wait_for(lambda: load_state(clean_redis_url))
    gw.server.stop()
    state = load_state(clean_redis_url)

    def cli(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "bandit", *args, "--redis", clean_redis_url],
                              capture_output=True, text=True, input=stdin, timeout=60)
    listed = cli("list")
    assert listed.returncode == 0 and "d=learn/a=linucb" in listed.stdout
    snap = tmp_path / "snap.json"
    assert cli("export", "--out", str(snap)).returncode == 0
    snapshot = json.loads(snap.read_text())
    assert snapshot["format"] == "sigroute-bandit-state" and set(snapshot["keys"]) == set(state)
    reset = cli("reset", "--decision", "learn")
    assert reset.returncode == 0 and load_state(clean_redis_url) == {}
    assert cli("import", str(snap)).returncode == 0
    restored = load_state(clean_redis_url)
    for key in state:
        for arm in state[key]:
            assert np.array_equal(restored[key][arm], state[key][arm])
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    refused = cli("import", str(bad))
    assert refused.returncode == 1 and "not a sigroute bandit snapshot" in refused.stderr
    no_redis = subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "bandit", "export"], capture_output=True,
                              text=True, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert no_redis.returncode == 2 and "--redis" in no_redis.stderr


def test_decision_log_and_offline_replay(sim, gateway_factory, tmp_path):
    import yaml

    from sigroute.bandits.replay import DecisionLog, read_decision_log

    log_path = tmp_path / "decisions.jsonl"
    uniform = {"epsilon_greedy": {"epsilon": 1.0, "features": ["bias", "length", "shape"]}}  # logs uniformly
    gw = gateway_factory(learning_policy(sim, uniform), decision_log=DecisionLog(log_path))
    for i in range(120):
        r = gw.chat(f"case {i} " + "detail " * (i % 5))
        feedback(gw, r.headers["x-sigroute-request-id"], thumbs="up" if r.headers["x-sigroute-model"] == "beta" else "down")
    gw.server.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert sum(1 for e in lines if e["type"] == "decision") == 120
    assert sum(1 for e in lines if e["type"] == "feedback") == 120
    assert all("case" not in json.dumps(e) for e in lines)  # features only, never the prompt text
    events = read_decision_log(log_path)
    assert {e.propensity for e in events} == {0.5}
    logged = np.mean([e.reward for e in events])

    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(yaml.safe_dump(learning_policy(sim)))  # LinUCB on the same features
    out = tmp_path / "replay.json"
    done = subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "replay", "--log", str(log_path), "--policy",
                           str(candidate), "--decision", "learn", "--json", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["method"] == "replay (uniform logging)" and result["usable"] == 120
    assert 30 <= result["matched"] <= 90
    assert result["logged_policy_value"] == pytest.approx(logged, abs=1e-6)
    assert result["value"] > result["logged_policy_value"] + 0.15  # learning beta beats routing at random

    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(learning_policy(sim, {"linucb": {"features": ["bias"]}})))
    refused = subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "replay", "--log", str(log_path), "--policy",
                              str(other), "--decision", "learn"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and "feature schema" in refused.stderr


def test_warm_start_from_recorded_outcomes(tmp_path, clean_redis_url):
    import yaml

    from test_sim_replay import write_outcomes

    outcomes = write_outcomes(tmp_path / "outcomes")
    policy = {"version": 1,
              "models": {"tiny-7b": {"provider": "openai/tiny-7b", "api_base": "http://127.0.0.1:9/v1",
                                     "price": {"input": 0.1, "output": 0.2}},
                         "big-70b": {"provider": "openai/big-70b", "api_base": "http://127.0.0.1:9/v1",
                                     "price": {"input": 1.0, "output": 2.0}}},
              "decisions": [{"name": "learn", "models": ["tiny-7b", "big-70b"],
                             "algorithm": {"linucb": {"features": ["bias", "shape"], "reward": {"quality": 1.0}}}}]}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    snap = tmp_path / "warm.json"
    done = subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "bandit", "warm-start", "--outcomes", str(outcomes),
                           "--policy", str(path), "--decision", "learn", "--split", "all", "--out", str(snap)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    snapshot = json.loads(snap.read_text())
    (key, arms), = snapshot["keys"].items()
    assert key.startswith("t=default/d=learn/a=linucb/s=")
    # every recorded outcome counted once; reward = quality = recorded correctness
    assert arms["tiny-7b"][0] == 5 and arms["tiny-7b"][1] == 2
    assert arms["big-70b"][0] == 5 and arms["big-70b"][1] == 4
    loaded = subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "bandit", "import", str(snap), "--merge",
                             "--redis", clean_redis_url], capture_output=True, text=True, timeout=60)
    assert loaded.returncode == 0, loaded.stderr
    assert load_state(clean_redis_url)[key]["big-70b"][1] == 4
    bad = subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "bandit", "warm-start", "--outcomes",
                          str(tmp_path / "nowhere"), "--policy", str(path), "--decision", "learn", "--out", str(snap)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "nowhere" in bad.stderr

    # learn: quality warm-starts quality (even with a cost weight) and the answer profile
    policy["decisions"][0]["algorithm"]["linucb"].update(learn="quality", reward={"quality": 1.0, "cost": 2.0})
    path.write_text(yaml.safe_dump(policy))
    done = subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "bandit", "warm-start", "--outcomes", str(outcomes),
                           "--policy", str(path), "--decision", "learn", "--split", "all", "--out", str(snap)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (qkey, qarms), = json.loads(snap.read_text())["keys"].items()
    assert qkey.endswith("-q") and qkey.split("/s=")[1] == key.split("/s=")[1] + "-q"
    assert qarms["big-70b"][0] == 5 and qarms["big-70b"][1] == 4  # quality sums, not blended rewards
    profile = qarms["big-70b"][-4:]  # [n with a length, Σ length, n with a latency, Σ latency]
    assert profile[0] == 5 and profile[1] > 0 and profile[2] == 5 and profile[3] > 0


def test_an_upstream_rate_limit_is_not_learned_as_a_bad_answer(sim, gateway_factory):
    """A 429 is back pressure, not a fault of the model's answers: the request falls back, and the
    selector learns only from the model that answered (failures it does learn: quality 0)."""
    gw = gateway_factory(learning_policy(sim))
    selector = gw.app.state.runtime.pipeline.selectors["learn"]
    sim.faults("alpha", rate_limit_rate=1.0)
    r = gw.chat("first question")
    assert r.status_code == 200 and r.headers["x-sigroute-model"] == "beta"
    learner = selector.learner("default")
    assert learner.estimator.count("alpha") == 0 and learner.estimator.count("beta") == 1
    sim.faults("alpha", error_rate=1.0)  # a real failure still teaches the selector (quality 0)
    fresh = gateway_factory(learning_policy(sim))  # nothing learned: the first candidate goes first
    r = fresh.chat("second question")
    assert r.status_code == 200 and r.headers["x-sigroute-model"] == "beta"
    learned = fresh.app.state.runtime.pipeline.selectors["learn"].learner("default").estimator
    assert learned.count("alpha") == 1 and learned.sums()["alpha"][1] == 0.0   # one observation, reward 0
    x = np.asarray([1.0] + [0.0] * (learned.dim - 1))
    mean, var = learned.predict("alpha", x)
    assert mean == pytest.approx(learned.prior * learned.ridge * var) and mean < learned.prior   # only the prior's share


def test_a_quality_learning_decision_serves_learns_and_weighs_known_cost(sim, gateway_factory):
    """`learn: quality` through the real gateway: feedback teaches quality, the answer profile is
    learned from the upstream's usage, and a large cost weight then prefers the cheaper model."""
    learn = {"linucb": {"alpha": 1.0, "features": ["bias"], "learn": "quality", "sync_interval_s": 0.05,
                        "reward": {"quality": 1.0, "cost": 0.0, "feedback_ttl_s": 30}}}
    models = {"alpha": {"input": 0.1, "output": 0.2}, "beta": {"input": 5.0, "output": 15.0}}
    policy = learning_policy(sim, learn)
    for name, price in models.items():
        policy["models"][name]["price"] = price
    gw = gateway_factory(policy)
    for i in range(40):
        r = gw.chat(f"question {i}")
        assert r.status_code == 200
        model = r.headers["x-sigroute-model"]
        assert feedback(gw, r.headers["x-sigroute-request-id"], score=0.9 if model == "beta" else 0.6).status_code == 200
    selector = gw.app.state.runtime.pipeline.selectors["learn"]
    est = selector.learner("default").estimator
    assert selector.schema_id.endswith("-q")
    assert est.predict("beta", np.array([1.0]))[0] == pytest.approx(0.9, abs=0.1)
    weight, tokens, latency = est.profile("beta")
    assert weight >= 1 and tokens > 0 and latency > 0  # learned from the simulator's usage and timing
    quality_first = gw.chat("which one now?")
    assert quality_first.headers["x-sigroute-model"] == "beta"
    # the same learned state under a large cost weight: the cheap model's known cost wins
    policy["decisions"][0]["algorithm"]["linucb"]["reward"]["cost"] = 3.0
    cheap = gateway_factory(policy)
    cheap_selector = cheap.app.state.runtime.pipeline.selectors["learn"]
    cheap_selector.learner("default").estimator.load_sums(est.sums())
    assert cheap.chat("and with cost in mind?").headers["x-sigroute-model"] == "alpha"
