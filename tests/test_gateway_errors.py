"""Every error status the gateway answers with, OpenAI-shaped, and the operational endpoints."""

from __future__ import annotations

import hashlib

import openai
import pytest

from sigroute.gateway.ratelimit import MemoryRateLimitStore, RateLimiter
from tests.conftest import ManualClock, base_policy

KEY = "sk-test-errors-key"


def assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def test_malformed_json_is_400(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    r = gw.http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert "not valid JSON" in assert_openai_error(r, 400, code="invalid_json")["message"]


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "auto"}, "messages"),
    ({"model": "auto", "messages": []}, "messages"),
    ({"model": "auto", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
    ({"model": "auto", "messages": [{"role": "user", "content": 42}]}, "messages[0].content"),
    ({"model": "auto", "messages": [{"role": "user", "content": [{"text": "no type"}]}]}, "messages[0].content[0]"),
    ({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, "stream"),
    ({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "temperature": 7}, "temperature"),
    ({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
])
def test_schema_errors_are_400_naming_the_field(sim, gateway_factory, body, param):
    gw = gateway_factory(base_policy(sim))
    assert_openai_error(gw.http.post("/v1/chat/completions", json=body), 400, param=param)
    assert sim.stats()["total_calls"] == 0


def test_openai_client_sees_bad_request(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    with pytest.raises(openai.BadRequestError) as err:
        gw.client().chat.completions.create(model="auto", messages=[{"role": "robot", "content": "x"}])
    assert err.value.body["param"] == "messages[0].role"


def auth_policy(sim, **key_options):
    entry = {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "tenant": "acme"}
    entry.update(key_options)
    return base_policy(sim, auth={"keys": [entry]})


def test_missing_and_bad_keys_are_401(sim, gateway_factory):
    gw = gateway_factory(auth_policy(sim))
    assert_openai_error(gw.chat("hi"), 401, code="missing_api_key")
    assert_openai_error(gw.chat("hi", api_key="sk-wrong"), 401, code="invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        gw.client(api_key="sk-wrong").chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    assert gw.chat("hi", api_key=KEY).status_code == 200
    assert gw.http.get("/v1/models").status_code == 401
    assert sim.calls("alpha") == 1


def test_key_from_environment_variable(sim, gateway_factory, monkeypatch):
    monkeypatch.setenv("SIGROUTE_TEST_KEY", "sk-from-env")
    policy = base_policy(sim, auth={"keys": [{"key_env": "SIGROUTE_TEST_KEY", "tenant": "t"}]})
    gw = gateway_factory(policy)
    assert gw.chat("hi", api_key="sk-from-env").status_code == 200
    assert gw.chat("hi", api_key="SIGROUTE_TEST_KEY").status_code == 401


def test_unknown_model_is_404(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    with pytest.raises(openai.NotFoundError) as err:
        gw.client().chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "x"}])
    assert err.value.body["code"] == "model_not_found"
    assert "auto" in err.value.body["message"]


def test_unknown_path_is_openai_shaped_404(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    assert_openai_error(gw.http.get("/v1/nothing-here"), 404)
    assert_openai_error(gw.http.get("/v1/chat/completions"), 405)


def test_too_large_request_is_413(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, server={"max_request_bytes": 2000}))
    assert_openai_error(gw.chat("x" * 5000), 413, code="request_too_large")
    # without a content-length header (chunked upload) the limit still holds
    def chunks():
        yield b'{"model": "auto", "messages": [{"role": "user", "content": "'
        for _ in range(50):
            yield b"y" * 100
        yield b'"}]}'
    assert_openai_error(gw.http.post("/v1/chat/completions", content=chunks()), 413)
    assert gw.chat("small").status_code == 200


def test_rate_limit_is_429_with_retry_after(sim, gateway_factory):
    policy = auth_policy(sim, rate_limit={"requests_per_minute": 60, "burst": 2})
    scraper = "sk-prometheus"
    policy["auth"]["keys"].append({"key_sha256": hashlib.sha256(scraper.encode()).hexdigest(), "tenant": "ops",
                                   "roles": ["metrics"]})
    clock = ManualClock()      # the bucket refills when the test says, however slow the machine
    gw = gateway_factory(policy, rate_limiter=RateLimiter(MemoryRateLimitStore(clock=clock)))
    assert gw.chat("1", api_key=KEY).status_code == 200
    assert gw.chat("2", api_key=KEY).status_code == 200
    r = gw.chat("3", api_key=KEY)
    assert_openai_error(r, 429, code="rate_limit_exceeded")
    assert int(r.headers["retry-after"]) >= 1
    assert sim.calls("alpha") == 2
    with pytest.raises(openai.RateLimitError):
        gw.client(api_key=KEY).chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}])
    clock.advance(0.5)
    assert gw.chat("4", api_key=KEY).status_code == 429
    clock.advance(0.5)  # one token per second refills
    assert gw.chat("5", api_key=KEY).status_code == 200
    metrics = gw.http.get("/metrics", headers={"authorization": f"Bearer {scraper}"}).text
    assert 'sigroute_rate_limited_total{tenant="acme"}' in metrics


def test_rate_limits_are_per_key(sim, gateway_factory):
    other = "sk-other-tenant"
    policy = base_policy(sim, auth={"keys": [
        {"key_sha256": hashlib.sha256(KEY.encode()).hexdigest(), "tenant": "a",
         "rate_limit": {"requests_per_minute": 1, "burst": 1}},
        {"key_sha256": hashlib.sha256(other.encode()).hexdigest(), "tenant": "b",
         "rate_limit": {"requests_per_minute": 1, "burst": 1}}]})
    gw = gateway_factory(policy)
    assert gw.chat("x", api_key=KEY).status_code == 200
    assert gw.chat("x", api_key=KEY).status_code == 429
    assert gw.chat("x", api_key=other).status_code == 200


def test_context_window_excludes_small_models(sim, gateway_factory):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}])
    policy["models"]["alpha"]["context_window"] = 100
    policy["models"]["beta"]["context_window"] = 100000
    gw = gateway_factory(policy)
    assert gw.chat("short").headers["x-sigroute-model"] == "alpha"
    assert gw.chat("word " * 200).headers["x-sigroute-model"] == "beta"
    policy["models"]["beta"]["context_window"] = 150
    gw2 = gateway_factory(policy)
    assert_openai_error(gw2.chat("word " * 200), 400, code="context_length_exceeded")


def test_health_ready_models_and_metrics(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    assert gw.http.get("/health").json() == {"status": "ok"}
    ready = gw.http.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    gw.chat("hi")
    text = gw.http.get("/metrics").text
    assert 'sigroute_requests_total{api="chat.completions",decision="default",entrypoint="auto",model="alpha",status="200"} 1.0' in text
    assert "sigroute_overhead_seconds_count 1.0" in text
    assert 'sigroute_decisions_total{decision="default",entrypoint="auto"} 1.0' in text
    assert 'sigroute_selected_model_total{decision="default",model="alpha"} 1.0' in text


def test_policy_reload_swaps_and_bad_reload_keeps_old(sim, gateway_factory, tmp_path):
    import yaml

    from sigroute.gateway.app import create_app
    from sigroute.gateway.serving import ServerThread
    from sigroute.policies.loader import load_policy

    path = tmp_path / "policy.yaml"
    policy = base_policy(sim)
    path.write_text(yaml.safe_dump(policy))
    app = create_app(load_policy(path), policy_path=str(path))
    with ServerThread(app) as server:
        import httpx

        with httpx.Client(base_url=server.url) as http:
            body = {"model": "auto", "messages": [{"role": "user", "content": "hi"}]}
            assert http.post("/v1/chat/completions", json=body).headers["x-sigroute-model"] == "alpha"
            policy["decisions"][0]["models"] = ["beta"]
            path.write_text(yaml.safe_dump(policy))
            assert http.post("/v1/admin/reload").status_code == 200
            assert http.post("/v1/chat/completions", json=body).headers["x-sigroute-model"] == "beta"
            path.write_text("decisions: [this is: not valid")
            r = http.post("/v1/admin/reload")
            assert r.status_code == 422 and "previous policy keeps running" in r.json()["error"]["message"]
            assert http.post("/v1/chat/completions", json=body).headers["x-sigroute-model"] == "beta"


def test_reload_keeps_learned_state_of_unchanged_decisions(sim, tmp_path):
    import httpx
    import yaml

    from sigroute.gateway.app import create_app
    from sigroute.gateway.serving import ServerThread
    from sigroute.policies.loader import load_policy

    path = tmp_path / "policy.yaml"
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"], "algorithm": "round_robin"}],
                         upstream={"retries": 0, "breaker": {"failure_threshold": 1, "cooldown_s": 60}})
    policy["models"]["gamma"]["api_base"] = "http://127.0.0.1:9/v1"  # nothing listens there
    policy["decisions"].insert(0, {"name": "broken", "rules": "header:broken", "models": ["gamma", "beta"]})
    policy["signals"] = {"header": {"broken": {"name": "x-broken"}}}
    path.write_text(yaml.safe_dump(policy))
    with ServerThread(create_app(load_policy(path), policy_path=str(path))) as server, \
            httpx.Client(base_url=server.url) as http:
        def model(**headers):
            return http.post("/v1/chat/completions", headers=headers,
                             json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]}).headers["x-sigroute-model"]
        assert model() == "alpha"
        assert model(**{"x-broken": "1"}) == "beta"  # gamma refused the connection: its circuit opened
        assert http.get("/ready").json()["models"]["gamma"] == "open"
        assert http.post("/v1/admin/reload").status_code == 200
        assert model() == "beta"  # the round-robin position survived the reload
        assert http.get("/ready").json()["models"]["gamma"] == "open"  # and so did the open circuit
        policy["decisions"][1]["models"] = ["beta", "alpha"]  # a changed decision starts afresh
        path.write_text(yaml.safe_dump(policy))
        assert http.post("/v1/admin/reload").status_code == 200
        assert model() == "beta"
