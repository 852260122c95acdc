"""Judged feedback and shadow traffic end to end: a judge model scores sampled answers in the
background and a copy of sampled requests goes to a candidate the bandit did not choose — real
gateways on loopback, the official openai client, the simulated upstream (model `gamma` plays the
judge with a fixed `reply`), the decision log."""

from __future__ import annotations

import json
import time

import pytest

from conftest import base_policy

LEARN = {"linucb": {"alpha": 0.2, "features": ["bias", "length", "shape"],
                    "reward": {"quality": 1.0, "feedback_ttl_s": 600}}}
DEFAULT_QUALITY = 0.5
JUDGE_WEIGHT = SHADOW_WEIGHT = 0.9   # bandits.feedback defaults
JUDGE = "gamma"


def judged_policy(sim, *, judge=None, shadow=None, models=("alpha", "beta"), plugins=None):
    feedback = {"judge": {"model": JUDGE, "sample": 1.0, "timeout": "5s", **(judge or {})}}
    if shadow is not None:
        feedback["shadow"] = {"sample": 1.0, **shadow}
    decision = {"name": "learn", "models": list(models), "algorithm": LEARN}
    if plugins:
        decision["plugins"] = plugins
    return base_policy(sim, feedback=feedback, decisions=[decision])


def judge_says(sim, text):
    sim.http.put(f"/sim/models/{JUDGE}", json={"reply": text}).raise_for_status()


def make_gateway(gateway_factory, policy, tmp_path):
    from sigroute.bandits.replay import DecisionLog

    log_path = tmp_path / f"decisions-{len(list(tmp_path.iterdir()))}.jsonl"
    gw = gateway_factory(policy, decision_log=DecisionLog(log_path))
    gw.log_path = log_path
    return gw


def ask(gw, text, user="u1"):
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}], user=user)
    return raw.parse().choices[0].message.content, raw.headers


def events(gw, kind):
    lines = gw.log_path.read_text().splitlines() if gw.log_path.exists() else []
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def metric(gw, name, **labels):
    total = 0.0
    for line in gw.http.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(gw, name, count, **labels):
    """Wait until the background work has counted `count` in metric `name` (no timing asserted:
    the deadline only keeps a broken build from hanging)."""
    deadline = time.monotonic() + 60
    while metric(gw, name, **labels) < count:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {count}: {metric(gw, name, **labels)}"
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# judged feedback


def test_a_sampled_answer_is_judged_and_its_arm_credited(sim, gateway_factory, tmp_path):
    judge_says(sim, "SCORE: 0\nVERDICT: INCORRECT")
    gw = make_gateway(gateway_factory, judged_policy(sim), tmp_path)
    answer, headers = ask(gw, "What is the capital of Australia?")
    rid, model = headers["x-sigroute-request-id"], headers["x-sigroute-model"]
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome="credited")
    [event] = events(gw, "feedback")
    assert event["request_id"] == rid and event["source"] == "judge" and event["details"] == {"judge": JUDGE}
    # learned quality = default + 0.9 * (0 - default)
    assert event["quality"] == pytest.approx(DEFAULT_QUALITY * (1 - JUDGE_WEIGHT))
    assert event["credit"] == pytest.approx(-JUDGE_WEIGHT * DEFAULT_QUALITY)
    [decision] = events(gw, "decision")
    assert decision["request_id"] == rid and decision["model"] == model
    # the judge saw the question and the answer, through the normal upstream layer
    assert sim.calls(JUDGE) == 1
    prompt = sim.last_body(JUDGE)["messages"][-1]["content"]
    assert "capital of Australia" in prompt and answer in prompt
    assert metric(gw, "sigroute_feedback_credits_total", source="judge", status="applied") == 1
    assert metric(gw, "sigroute_feedback_spend_usd_total", kind="judge") > 0


def test_a_streamed_answer_is_judged_too(sim, gateway_factory, tmp_path):
    judge_says(sim, "The answer is correct.")
    gw = make_gateway(gateway_factory, judged_policy(sim), tmp_path)
    stream = gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Name a noble gas."}], stream=True)
    rid = stream.headers["x-sigroute-request-id"]
    answer = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome="credited")
    [event] = events(gw, "feedback")
    assert event["request_id"] == rid and event["quality"] == pytest.approx(0.5 + 0.9 * 0.5)
    assert answer in sim.last_body(JUDGE)["messages"][-1]["content"]


def test_sample_zero_never_calls_the_judge(sim, gateway_factory, tmp_path):
    judge_says(sim, "SCORE: 1")
    gw = make_gateway(gateway_factory, judged_policy(sim, judge={"sample": 0}), tmp_path)
    for i in range(5):
        ask(gw, f"Question number {i}?")
    assert sim.calls("alpha") + sim.calls("beta") == 5
    assert sim.calls(JUDGE) == 0 and events(gw, "feedback") == []
    assert metric(gw, "sigroute_judge_requests_total") == 0


@pytest.mark.parametrize("bound, asked, judged, skipped", [
    # the judge (gamma) costs 5 / 10 USD per 1M tokens: its first call spends more than 1e-5 USD, so
    # the hour's budget is gone and the next answers are not judged
    ({"budget_usd_per_hour": 1e-5}, 3, 1, "budget"),
    # two calls may start in any minute, whatever the concurrency allows
    ({"max_per_minute": 2, "max_concurrency": 10}, 4, 2, "rate"),
])
def test_judging_stops_at_its_budget_and_its_rate(sim, gateway_factory, tmp_path, bound, asked, judged, skipped):
    judge_says(sim, "SCORE: 1")
    gw = make_gateway(gateway_factory, judged_policy(sim, judge=bound), tmp_path)
    for i in range(asked):
        ask(gw, f"Tell me a fact about the number {i}.")
        wait_for(gw, "sigroute_judge_requests_total", i + 1)
    assert sim.calls(JUDGE) == judged
    assert metric(gw, "sigroute_judge_requests_total", outcome="credited") == judged
    assert metric(gw, "sigroute_judge_requests_total", outcome=skipped) == asked - judged
    if skipped == "budget":
        assert metric(gw, "sigroute_feedback_spend_last_hour_usd", kind="judge") > 1e-5


def test_a_pii_masked_request_is_never_sent_to_the_judge(sim, gateway_factory, tmp_path):
    judge_says(sim, "SCORE: 1")
    policy = judged_policy(sim, plugins=[{"pii": {"action": "mask_and_restore"}}], shadow={})
    gw = make_gateway(gateway_factory, policy, tmp_path)
    answer, headers = ask(gw, "Write to jane.roe@example.org about the meeting, please.")
    assert headers["x-sigroute-plugins"].startswith("pii:masked")
    ask(gw, "Without any personal data: what is a prime number?")   # judged: the gate is per request
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome="credited")
    assert metric(gw, "sigroute_judge_requests_total", outcome="private") == 1
    assert metric(gw, "sigroute_shadow_requests_total", outcome="private") == 1
    # the judge got one request (plus the shadow's), none of them about the masked one
    assert "jane.roe" not in json.dumps(sim.last_body(JUDGE)) and "EMAIL_ADDRESS" not in json.dumps(sim.last_body(JUDGE))
    assert [e["request_id"] for e in events(gw, "feedback") if e["source"] == "judge"] != [headers["x-sigroute-request-id"]]


@pytest.mark.parametrize("fault", ["error_rate", "timeout_rate"])
def test_a_failing_judge_never_affects_the_caller(sim, gateway_factory, tmp_path, fault):
    sim.faults(JUDGE, **{fault: 1.0})
    gw = make_gateway(gateway_factory, judged_policy(sim, judge={"timeout": "1s"}), tmp_path)
    answer, headers = ask(gw, "How many moons does Mars have?")
    assert answer and headers["x-sigroute-model"] in ("alpha", "beta")   # the caller's answer, as always
    outcome = "error" if fault == "error_rate" else "timeout"
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome=outcome)
    assert sim.calls(JUDGE) == 1 and events(gw, "feedback") == []
    answer, _ = ask(gw, "And how many does Jupiter have?")   # the gateway keeps serving
    assert answer


def test_an_unparsable_verdict_is_counted_not_credited(sim, gateway_factory, tmp_path):
    judge_says(sim, "I cannot tell.")
    gw = make_gateway(gateway_factory, judged_policy(sim), tmp_path)
    ask(gw, "What colour is the sky?")
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome="unparsed")
    assert events(gw, "feedback") == []


def test_explicit_feedback_wins_over_the_judge(sim, gateway_factory, tmp_path):
    judge_says(sim, "SCORE: 0")
    gw = make_gateway(gateway_factory, judged_policy(sim, judge={"timeout": "60s"}), tmp_path)
    # the judge first: explicit feedback later replaces its credit (credits add up to explicit alone)
    _, headers = ask(gw, "Spell 'necessary'.")
    rid = headers["x-sigroute-request-id"]
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome="credited")
    explicit = gw.http.post("/v1/feedback", json={"request_id": rid, "thumbs": "up"})
    assert explicit.status_code == 200 and explicit.json()["replaced"] == {"source": "judge", "event": None}
    credits = [e for e in events(gw, "feedback") if e["request_id"] == rid]
    assert [e["source"] for e in credits] == ["judge", "explicit"]
    assert sum(e["credit"] for e in credits) == pytest.approx(1.0 - DEFAULT_QUALITY)
    # explicit first (the judge answers slowly; the margin is wide so a busy machine keeps the order):
    # the judge's verdict changes nothing
    sim.http.put(f"/sim/models/{JUDGE}", json={"ttft_ms": 15000}).raise_for_status()
    _, headers = ask(gw, "Spell 'rhythm'.")
    rid2 = headers["x-sigroute-request-id"]
    assert gw.http.post("/v1/feedback", json={"request_id": rid2, "thumbs": "up"}).status_code == 200
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome="explicit_first")
    assert [e["source"] for e in events(gw, "feedback") if e["request_id"] == rid2] == ["explicit"]


# --------------------------------------------------------------------------------------------
# shadow traffic


def test_a_shadow_copy_goes_to_an_unchosen_model_and_credits_that_arm(sim, gateway_factory, tmp_path):
    judge_says(sim, "SCORE: 1")
    sim.http.put("/sim/models/slow", json={"tokens_per_s": 0}).raise_for_status()   # (a quick third candidate)
    models = ("alpha", "beta", "slow")
    gw = make_gateway(gateway_factory, judged_policy(sim, judge={"sample": 0}, shadow={"sample": 1.0},
                                                     models=models), tmp_path)
    _, headers = ask(gw, "Which planet is closest to the sun?")
    rid, chosen = headers["x-sigroute-request-id"], headers["x-sigroute-model"]
    wait_for(gw, "sigroute_shadow_requests_total", 1, outcome="credited")
    calls = {m: sim.calls(m) for m in models}
    assert calls[chosen] == 1 and sum(calls.values()) == 2   # the caller's call, and one shadow copy
    [shadowed] = [m for m in models if m != chosen and calls[m] == 1]
    assert sim.calls(JUDGE) == 1   # sample 0: only the shadow answer was judged
    by_id = {e["request_id"]: e for e in events(gw, "decision")}
    shadow = by_id[rid + ":shadow"]
    assert shadow["model"] == shadow["answered_by"] == shadowed and shadow["source"] == "shadow"
    assert shadow["shadow_of"] == rid and shadow["propensity"] == pytest.approx(1.0 / 2)   # sample / 2 others
    assert shadow["context"] == by_id[rid]["context"]   # the same request's features
    [credit] = events(gw, "feedback")
    assert credit["request_id"] == rid + ":shadow" and credit["source"] == "shadow"
    assert credit["credit"] == pytest.approx(SHADOW_WEIGHT * (1 - DEFAULT_QUALITY))
    # the learner now holds an observation of the arm it did not choose
    learned = gw.app.state.runtime.pipeline.selectors["learn"].snapshot("default")["observations"]
    assert learned[shadowed] == pytest.approx(1) and learned[chosen] == pytest.approx(1)
    assert metric(gw, "sigroute_feedback_credits_total", source="shadow", status="applied") == 1
    spent = metric(gw, "sigroute_feedback_spend_usd_total", kind="shadow")
    assert (spent > 0) == (shadowed != "slow")   # (the sim's `slow` model declares no price)
    # the replayed log reads the shadow observation as its own decision with its propensity
    from sigroute.bandits.replay import read_decision_log

    logged = {d.request_id: d for d in read_decision_log(gw.log_path)}
    assert logged[rid + ":shadow"].propensity == pytest.approx(0.5)
    assert logged[rid + ":shadow"].reward == pytest.approx(shadow["reward"] + credit["credit"])


def test_a_failing_shadow_model_never_affects_the_caller(sim, gateway_factory, tmp_path):
    judge_says(sim, "SCORE: 1")
    gw = make_gateway(gateway_factory, judged_policy(sim, judge={"sample": 0}, shadow={}), tmp_path)
    _, headers = ask(gw, "Warm up: name a colour.")
    wait_for(gw, "sigroute_shadow_requests_total", 1, outcome="credited")
    other = "beta" if headers["x-sigroute-model"] == "alpha" else "alpha"
    sim.faults(other, error_rate=1.0)   # the shadow copies to `other` now fail
    for i in range(5):
        answer, headers = ask(gw, f"Name a fruit, number {i}.")
        assert answer and headers["x-sigroute-model"] in ("alpha", "beta")   # the caller is answered
        if metric(gw, "sigroute_shadow_requests_total", outcome="error") >= 1:
            break
    wait_for(gw, "sigroute_shadow_requests_total", 1, outcome="error")
    assert len([e for e in events(gw, "feedback") if e["source"] == "shadow"]) == 1   # only the first credited


def test_shadow_too_large_requests_are_not_copied(sim, gateway_factory, tmp_path):
    gw = make_gateway(gateway_factory, judged_policy(sim, judge={"sample": 0}, shadow={"max_request_bytes": 64}),
                      tmp_path)
    ask(gw, "A question long enough that its body is more than sixty-four bytes of JSON.")
    assert metric(gw, "sigroute_shadow_requests_total", outcome="too_large") == 1
    assert sim.calls("alpha") + sim.calls("beta") == 1


# --------------------------------------------------------------------------------------------
# verdicts and the policy section


@pytest.mark.parametrize("text, quality", [
    ("SCORE: 0.75", 0.75), ("score=1", 1.0), ("**Score:** 0", 0.0), ("Score: 7/10", 0.7),
    ("VERDICT: CORRECT", 1.0), ("The answer is incorrect.", 0.0), ("That is wrong", 0.0),
    ("It is not correct.", 0.0), ("", None), ("maybe", None), ("SCORE: 3", None)])
def test_verdicts_are_parsed_robustly(text, quality):
    from sigroute.gateway.judging import parse_verdict

    assert parse_verdict(text) == (pytest.approx(quality) if quality is not None else None)


def test_bad_judge_settings_name_file_line_and_key():
    from sigroute.policies.loader import PolicyError, load_policy_text

    text = """version: 1
models:
  a: {provider: openai/a}
decisions:
  - {name: d, models: [a]}
feedback:
  judge:
    model: judge-model
    sample: 0.1
"""
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "policy.yaml")
    assert "policy.yaml:8" in str(caught.value) and "feedback.judge.model" in str(caught.value)
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text.replace("judge-model", "a").replace("0.1", "1.5"), "policy.yaml")
    assert "policy.yaml:9" in str(caught.value) and "feedback.judge.sample" in str(caught.value)
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text.replace("  judge:\n    model: judge-model\n    sample: 0.1\n", "  shadow: {sample: 0.1}\n"),
                         "policy.yaml")
    assert "feedback.shadow needs feedback.judge" in str(caught.value)


def test_judge_calls_are_bounded_in_concurrency(sim, gateway_factory, tmp_path):
    """max_concurrency 1 and a judge that takes 10 s: while it judges the first answer, the next
    sampled answer is skipped (busy), not queued."""
    judge_says(sim, "SCORE: 1")
    sim.http.put(f"/sim/models/{JUDGE}", json={"ttft_ms": 10_000}).raise_for_status()
    gw = make_gateway(gateway_factory, judged_policy(sim, judge={"max_concurrency": 1, "timeout": "60s"}), tmp_path)
    ask(gw, "First question?")
    ask(gw, "Second question?")
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome="busy")
    assert sim.calls(JUDGE) == 1


def test_shadow_copies_are_bounded_per_minute(sim, gateway_factory, tmp_path):
    judge_says(sim, "SCORE: 1")
    policy = judged_policy(sim, judge={"sample": 0}, shadow={"max_per_minute": 1, "max_concurrency": 10})
    gw = make_gateway(gateway_factory, policy, tmp_path)
    for i in range(3):
        ask(gw, f"Shadowed question {i}?")
        wait_for(gw, "sigroute_shadow_requests_total", i + 1)
    assert metric(gw, "sigroute_shadow_requests_total", outcome="credited") == 1
    assert metric(gw, "sigroute_shadow_requests_total", outcome="rate") == 2
    assert len(events(gw, "decision")) == 3 + 1   # three answers, one shadow decision


def test_the_minute_rate_frees_places_as_the_minute_slides():
    from sigroute.gateway.judging import MinuteRate

    now = [1000.0]
    rate = MinuteRate(2, clock=lambda: now[0])
    assert rate.allows()
    rate.started()
    now[0] += 30
    rate.started()
    assert not rate.allows()
    now[0] += 30.5          # the first start is now more than a minute old
    assert rate.allows()
    rate.started()
    assert not rate.allows()
    unlimited = MinuteRate(None, clock=lambda: now[0])
    for _ in range(1000):
        unlimited.started()
    assert unlimited.allows()


def test_judged_feedback_with_a_shared_redis_pending_store(sim, gateway_factory, tmp_path, clean_redis_url):
    """The judge's credit goes through the Redis pending store like implicit feedback: explicit
    feedback sent to another replica still replaces it."""
    from sigroute.bandits.replay import DecisionLog

    judge_says(sim, "SCORE: 0")
    policy = judged_policy(sim)
    first = gateway_factory(policy, redis_url=clean_redis_url, decision_log=DecisionLog(tmp_path / "a.jsonl"))
    second = gateway_factory(policy, redis_url=clean_redis_url)
    first.log_path = tmp_path / "a.jsonl"
    _, headers = ask(first, "What is the boiling point of ethanol?")
    rid = headers["x-sigroute-request-id"]
    wait_for(first, "sigroute_judge_requests_total", 1, outcome="credited")
    explicit = second.http.post("/v1/feedback", json={"request_id": rid, "score": 1.0})
    assert explicit.status_code == 200 and explicit.json()["replaced"] == {"source": "judge", "event": None}


def test_a_judge_verdict_replaces_an_earlier_implicit_credit(sim, gateway_factory, tmp_path):
    """explicit > judge > implicit: the user says "that's wrong" before the (slow) judge answers; the
    judge's verdict then replaces the implicit credit, so the learner ends where the verdict alone puts it."""
    judge_says(sim, "SCORE: 1")
    sim.http.put(f"/sim/models/{JUDGE}", json={"ttft_ms": 15000}).raise_for_status()
    policy = judged_policy(sim, judge={"timeout": "60s"})
    policy["feedback"]["implicit"] = {"enabled": True, "window": "10m"}
    gw = make_gateway(gateway_factory, policy, tmp_path)
    first = "Capital of Peru?"
    answer, headers = ask(gw, first)
    rid = headers["x-sigroute-request-id"]
    raw = gw.client().chat.completions.with_raw_response.create(model="auto", user="u1", messages=[
        {"role": "user", "content": first}, {"role": "assistant", "content": answer},
        {"role": "user", "content": "That's wrong."}])
    assert raw.headers["x-sigroute-implicit-feedback"] == f"dissatisfied; request={rid}; status=credited"
    wait_for(gw, "sigroute_judge_requests_total", 1, outcome="replaced_implicit")
    credits = [e for e in events(gw, "feedback") if e["request_id"] == rid]
    assert [e["source"] for e in credits] == ["implicit", "judge"]
    assert sum(e["credit"] for e in credits) == pytest.approx(JUDGE_WEIGHT * (1 - DEFAULT_QUALITY))
