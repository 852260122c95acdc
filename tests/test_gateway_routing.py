"""Routing through the real gateway (uvicorn on loopback) to the simulated upstream, driven with the
official openai client: every heuristic signal type, nested rules, strategies, direct models."""

from __future__ import annotations

import hashlib

import openai
import pytest

from tests.conftest import base_policy


def routed(gw, content="hello", **kwargs):
    """Send a request; return (decision header, model header) after checking it succeeded."""
    r = gw.chat(content, **kwargs)
    assert r.status_code == 200, r.text
    return r.headers["x-sigroute-decision"], r.headers["x-sigroute-model"]


def test_keyword_route_and_openai_client_headers(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"keyword": {"code": {"any": ["python", "stack trace", "c++"]}}},
        decisions=[{"name": "coding", "rules": "keyword:code", "models": ["beta"]},
                   {"name": "default", "models": ["alpha"]}]))
    client = gw.client()
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Why does my Python loop never end?"}])
    completion = raw.parse()
    assert raw.headers["x-sigroute-decision"] == "coding"
    assert raw.headers["x-sigroute-model"] == "beta"
    assert completion.model == "beta"
    assert completion.choices[0].message.content
    assert raw.headers["x-sigroute-request-id"].startswith("req_")
    assert float(raw.headers["x-sigroute-overhead-ms"]) >= 0
    assert sim.calls("beta") == 1 and sim.calls("alpha") == 0
    assert routed(gw, "I love C++ templates") == ("coding", "beta")
    # word boundaries: "pythonic" is not the keyword "python"
    assert routed(gw, "a pythonic idea about cats") == ("default", "alpha")


def test_time_headers_split_the_request_between_sigroute_and_the_upstream(sim, gateway_factory):
    import time

    gw = gateway_factory(base_policy(sim))
    for stream in (False, True):
        started = time.perf_counter()
        r = gw.chat("how long did this take?", stream=stream)
        elapsed_ms = (time.perf_counter() - started) * 1000
        assert r.status_code == 200, r.text
        upstream = float(r.headers["x-sigroute-upstream-ms"])
        own = float(r.headers["x-sigroute-overhead-ms"])
        # the simulated model waits 1 ms by its own loop clock, which uvloop reads once per loop
        # iteration and times in whole milliseconds: seen from here that can be a little less
        assert upstream > 0
        assert 0 <= own and upstream + own <= elapsed_ms


def test_context_length_route(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"context_length": {"long": {"min_tokens": 200}}},
        decisions=[{"name": "long", "rules": "context_length:long", "models": ["gamma"]},
                   {"name": "default", "models": ["alpha"]}]))
    assert routed(gw, "short question") == ("default", "alpha")
    assert routed(gw, "word " * 300) == ("long", "gamma")


def test_language_route(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"language": {"french": {"languages": ["fr"]}}},
        decisions=[{"name": "fr", "rules": "language:french", "models": ["beta"]},
                   {"name": "default", "models": ["alpha"]}]))
    assert routed(gw, "Pouvez-vous m'expliquer comment fonctionne la photosynthèse ?") == ("fr", "beta")
    assert routed(gw, "Can you explain how photosynthesis works?") == ("default", "alpha")


def test_authz_route_by_role(sim, gateway_factory):
    keys = {"analyst": "sk-test-analyst", "admin": "sk-test-admin"}
    gw = gateway_factory(base_policy(sim,
        auth={"keys": [
            {"key_sha256": hashlib.sha256(keys["analyst"].encode()).hexdigest(), "tenant": "acme", "roles": ["analyst"]},
            {"key_sha256": hashlib.sha256(keys["admin"].encode()).hexdigest(), "tenant": "acme", "roles": ["admin"]},
        ]},
        signals={"authz": {"admins": {"roles": ["admin"]}}},
        decisions=[{"name": "premium", "rules": "authz:admins", "models": ["gamma"]},
                   {"name": "default", "models": ["alpha"]}]))
    assert routed(gw, "hi", api_key=keys["admin"]) == ("premium", "gamma")
    assert routed(gw, "hi", api_key=keys["analyst"]) == ("default", "alpha")


def test_modality_route_with_list_content(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"modality": {"vision": {"any": ["image"]}}},
        decisions=[{"name": "vision", "rules": "modality:vision", "models": ["gamma"]},
                   {"name": "default", "models": ["alpha"]}]))
    parts = [{"type": "text", "text": "What is in this picture?"},
             {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]
    assert routed(gw, parts) == ("vision", "gamma")
    assert routed(gw, [{"type": "text", "text": "no picture here"}]) == ("default", "alpha")


def test_conversation_route_on_tools_and_turns(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"conversation": {"agentic": {"tools": True}, "long_chat": {"min_turns": 3}}},
        decisions=[{"name": "agent", "rules": "conversation:agentic", "models": ["gamma"]},
                   {"name": "chatty", "rules": "conversation:long_chat", "models": ["beta"]},
                   {"name": "default", "models": ["alpha"]}]))
    tools = [{"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
    assert routed(gw, "what time is it?", tools=tools) == ("agent", "gamma")
    history = []
    for i in range(3):
        history += [{"role": "user", "content": f"turn {i}"}, {"role": "assistant", "content": "ok"}]
    history.pop()
    assert routed(gw, messages=history) == ("chatty", "beta")
    assert routed(gw, "one turn") == ("default", "alpha")


def test_header_and_metadata_routes(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"header": {"vip": {"name": "x-priority", "values": ["high"]}},
                 "metadata": {"batch": {"key": "workload", "values": ["batch"]}}},
        decisions=[{"name": "vip", "priority": 10, "rules": "header:vip", "models": ["gamma"]},
                   {"name": "batch", "rules": "metadata:batch", "models": ["beta"]},
                   {"name": "default", "models": ["alpha"]}]))
    assert routed(gw, "hi", headers={"X-Priority": "HIGH"}) == ("vip", "gamma")
    assert routed(gw, "hi", metadata={"workload": "batch"}) == ("batch", "beta")
    assert routed(gw, "hi", headers={"x-priority": "low"}) == ("default", "alpha")


def test_nested_all_any_not_rules(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"keyword": {"math": {"any": ["integral", "derivative"]}, "homework": {"any": ["homework"]},
                             "easy": {"any": ["quick", "simple"]}},
                 "header": {"student": {"name": "x-student"}}},
        decisions=[{"name": "hard-math",
                    "rules": {"all": ["keyword:math", {"any": ["keyword:homework", "header:student"]},
                                      {"not": "keyword:easy"}]},
                    "models": ["gamma"]},
                   {"name": "default", "models": ["alpha"]}]))
    assert routed(gw, "homework: compute the integral of x^2") == ("hard-math", "gamma")
    assert routed(gw, "compute the derivative of sin x", headers={"x-student": "1"}) == ("hard-math", "gamma")
    assert routed(gw, "quick homework: the integral of 1") == ("default", "alpha")  # not easy fails
    assert routed(gw, "compute the integral of x") == ("default", "alpha")  # neither homework nor student


def two_matching_decisions(sim, strategy):
    return base_policy(sim,
        routing={"strategy": strategy},
        signals={"keyword": {"greeting": {"all": ["hello", "there", "friend"]}},
                 "language": {"english": {"languages": ["en"], "min_confidence": 0.1}}},
        decisions=[{"name": "by-language", "priority": 5, "rules": "language:english", "models": ["beta"]},
                   {"name": "by-keyword", "priority": 1, "rules": "keyword:greeting", "models": ["gamma"]},
                   {"name": "default", "models": ["alpha"]}])


def test_priority_strategy_prefers_priority(sim, gateway_factory):
    gw = gateway_factory(two_matching_decisions(sim, "priority"))
    assert routed(gw, "hello there my friend, how are you doing today?") == ("by-language", "beta")


def test_confidence_strategy_prefers_confidence(sim, gateway_factory):
    gw = gateway_factory(two_matching_decisions(sim, "confidence"))
    text = "hello there my friend, how are you doing today?"
    explained = gw.http.post("/v1/route/explain", json={"model": "auto", "messages": [{"role": "user", "content": text}]}).json()
    lang_conf = explained["signals"]["language:english"]["confidence"]
    assert lang_conf < 1.0  # the keyword leaf has confidence 1.0, the language detector less
    assert routed(gw, text) == ("by-keyword", "gamma")


def test_entrypoint_restricts_decisions_and_direct_models(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"keyword": {"code": {"any": ["python"]}}},
        decisions=[{"name": "coding", "rules": "keyword:code", "models": ["beta"]},
                   {"name": "default", "models": ["alpha"]}],
        entrypoints={"auto": {}, "plain": {"decisions": ["default"]}}))
    assert routed(gw, "python please") == ("coding", "beta")
    assert routed(gw, "python please", model="plain") == ("default", "alpha")
    assert routed(gw, "python please", model="gamma") == ("direct", "gamma")
    models = {m.id for m in gw.client().models.list().data}
    assert {"auto", "plain", "alpha", "beta", "gamma"} <= models


def test_direct_models_can_be_disallowed(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, routing={"allow_direct_models": False}))
    with pytest.raises(openai.NotFoundError) as err:
        gw.client().chat.completions.create(model="gamma", messages=[{"role": "user", "content": "hi"}])
    assert "auto" in err.value.message
    assert sim.calls("gamma") == 0
    assert {m.id for m in gw.client().models.list().data} == {"auto"}


def test_request_fields_pass_through(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}]
    r = gw.chat("hi", tools=tools, tool_choice="auto", n=2, stop=["END"], temperature=0.3, seed=5,
                response_format={"type": "json_object"}, max_tokens=5)
    assert r.status_code == 200, r.text
    forwarded = sim.last_body("alpha")
    assert forwarded["model"] == "alpha"
    for key, value in {"tools": tools, "tool_choice": "auto", "n": 2, "stop": ["END"], "temperature": 0.3,
                       "seed": 5, "response_format": {"type": "json_object"}, "max_tokens": 5}.items():
        assert forwarded[key] == value
    assert len(r.json()["choices"]) == 2


def test_explain_endpoint_shows_signals_verdicts_and_choice(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"keyword": {"code": {"any": ["python"]}, "unused": {"any": ["zebra"]}}},
        decisions=[{"name": "coding", "rules": "keyword:code", "models": ["beta", "gamma"], "algorithm": "cheapest"},
                   {"name": "default", "models": ["alpha"]}]))
    r = gw.http.post("/v1/route/explain", json={"model": "auto", "messages": [{"role": "user", "content": "python?"}]})
    assert r.status_code == 200
    report = r.json()
    assert report["signals"]["keyword:code"]["matched"] is True
    assert report["signals"]["keyword:unused"]["used_by_rules"] is False
    verdicts = {v["decision"]: v for v in report["decisions"]}
    assert verdicts["coding"]["matched"] and not verdicts["default"]["matched"]
    assert report["winner"]["decision"] == "coding"
    assert report["winner"]["selection"]["model"] == "beta"  # cheaper than gamma
    assert report["winner"]["selection"]["ranking"] == ["beta", "gamma"]
    assert sim.stats()["total_calls"] == 0  # explain never calls a model


def test_debug_header_reports_signals(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim,
        signals={"keyword": {"code": {"any": ["python"]}}},
        decisions=[{"name": "coding", "rules": "keyword:code", "models": ["beta"]},
                   {"name": "default", "models": ["alpha"]}]))
    r = gw.chat("python", headers={"x-sigroute-debug": "1"})
    assert '"keyword:code":[true,1.0]' in r.headers["x-sigroute-signals"]
    assert "x-sigroute-signals" not in gw.chat("python").headers


def test_cheapest_selection_counts_prompt_tokens(sim, gateway_factory):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["gamma", "alpha", "beta"],
                                          "algorithm": "cheapest"}])
    gw = gateway_factory(policy)
    assert routed(gw, "hi") == ("default", "alpha")


def test_round_robin_spreads_load(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta", "gamma"],
                                                      "algorithm": "round_robin"}]))
    models = [routed(gw, "hi")[1] for _ in range(6)]
    assert sorted(models) == ["alpha", "alpha", "beta", "beta", "gamma", "gamma"]
