"""Who may reach what: every endpoint's access rule, with auth off and with API keys.

The operator surfaces — admin (reload, cache deletion), explain (`/v1/route/explain` and the
`x-sigroute-debug` header, which reveal signal scores such as the jailbreak classifier's) and
metrics — need a role the policy names; without an `auth` section nobody is authenticated, so
admin and explain are refused unless the operator lists them in `server.open_without_auth`.
"""

from __future__ import annotations

import hashlib

import pytest

from sigroute.policies.loader import PolicyError, load_policy_text
from tests.conftest import base_policy

USER, ADMIN, EXPLAINER, SCRAPER = "sk-user", "sk-admin", "sk-explainer", "sk-scraper"
BODY = {"model": "auto", "messages": [{"role": "user", "content": "who may see this?"}]}


def key(secret: str, tenant: str = "acme", **options) -> dict:
    return {"key_sha256": hashlib.sha256(secret.encode()).hexdigest(), "tenant": tenant, **options}


def closed_policy(sim, **overrides):
    """base_policy without the test suite's opening of the operator surfaces."""
    policy = base_policy(sim, **overrides)
    policy.get("server", {}).pop("open_without_auth", None)
    return policy


def keyed_policy(sim, decisions=None, **auth):
    """Keys for a plain user, an admin, an explainer (role `debug`, the policy's explain role) and a
    metrics scraper."""
    keys = [key(USER), key(ADMIN, roles=["admin"]), key(EXPLAINER, roles=["debug"]),
            key(SCRAPER, "ops", roles=["metrics"])]
    policy = base_policy(sim, auth={"keys": keys, "explain_roles": ["debug"], **auth})
    if decisions is not None:
        policy["decisions"] = decisions
    return policy


def bearer(secret: str | None) -> dict:
    return {"authorization": f"Bearer {secret}"} if secret else {}


def reach(gw, secret: str | None) -> dict[str, int]:
    """The status of every endpoint for a caller holding `secret` (None: no key)."""
    h = bearer(secret)
    return {
        "chat": gw.http.post("/v1/chat/completions", json=BODY, headers=h).status_code,
        "models": gw.http.get("/v1/models", headers=h).status_code,
        "feedback": gw.http.post("/v1/feedback", json={"request_id": "req_unknown", "score": 1}, headers=h).status_code,
        "explain": gw.http.post("/v1/route/explain", json=BODY, headers=h).status_code,
        "reload": gw.http.post("/v1/admin/reload", headers=h).status_code,
        "clear_cache": gw.http.delete("/v1/admin/cache", headers=h).status_code,
        "delete_entry": gw.http.delete("/v1/admin/cache/entries/nope", headers=h).status_code,
        "metrics": gw.http.get("/metrics", headers=h).status_code,
        "ready": gw.http.get("/ready", headers=h).status_code,
        "health": gw.http.get("/health", headers=h).status_code,
    }


def debug_headers(gw, secret: str | None) -> dict[str, str]:
    r = gw.http.post("/v1/chat/completions", json=BODY, headers={**bearer(secret), "x-sigroute-debug": "1"})
    assert r.status_code == 200
    return {k: v for k, v in r.headers.items() if k in ("x-sigroute-signals", "x-sigroute-debug")}


# feedback for an unknown id is 404 (the endpoint was reached); reload of the embedded policy is 409
# (allowed, but there is no file); deleting an unknown cache entry is 404 (allowed, nothing there)
ALLOWED_ADMIN = {"reload": 409, "clear_cache": 200, "delete_entry": 404}
REFUSED_ADMIN = {"reload": 403, "clear_cache": 403, "delete_entry": 403}


def test_without_auth_the_operator_surfaces_are_closed_by_default(sim, gateway_factory):
    gw = gateway_factory(closed_policy(sim, decisions=[{"name": "default", "models": ["alpha"],
                                                        "cache": {"mode": "exact"}}]))
    assert reach(gw, None) == {"chat": 200, "models": 200, "feedback": 404, "explain": 403, **REFUSED_ADMIN,
                               "metrics": 200, "ready": 200, "health": 200}
    refused = gw.http.post("/v1/admin/reload").json()["error"]
    assert refused["code"] == "admin_only" and "server.open_without_auth" in refused["message"]
    assert gw.http.post("/v1/route/explain", json=BODY).json()["error"]["code"] == "explain_only"
    headers = debug_headers(gw, None)
    assert "x-sigroute-signals" not in headers and headers["x-sigroute-debug"].startswith("refused")


def test_without_auth_the_operator_can_open_them_explicitly(sim, gateway_factory):
    policy = closed_policy(sim, decisions=[{"name": "default", "models": ["alpha"], "cache": {"mode": "exact"}}])
    policy["server"] = {"open_without_auth": ["admin", "explain"]}
    gw = gateway_factory(policy)
    assert reach(gw, None) == {"chat": 200, "models": 200, "feedback": 404, "explain": 200, **ALLOWED_ADMIN,
                               "metrics": 200, "ready": 200, "health": 200}
    assert "x-sigroute-signals" in debug_headers(gw, None)


def test_with_keys_each_surface_needs_its_role(sim, gateway_factory):
    gw = gateway_factory(keyed_policy(sim, decisions=[{"name": "default", "models": ["alpha"],
                                                       "cache": {"mode": "exact"}}]))
    everyone = {"health": 200, "ready": 200}
    assert reach(gw, None) == {"chat": 401, "models": 401, "feedback": 401, "explain": 401, "reload": 401,
                               "clear_cache": 401, "delete_entry": 401, "metrics": 401, **everyone}
    assert reach(gw, "sk-wrong") == reach(gw, None)
    assert reach(gw, USER) == {"chat": 200, "models": 200, "feedback": 404, "explain": 403, **REFUSED_ADMIN,
                               "metrics": 403, **everyone}
    assert reach(gw, ADMIN) == {"chat": 200, "models": 200, "feedback": 404, "explain": 403, **ALLOWED_ADMIN,
                                "metrics": 200, **everyone}
    assert reach(gw, EXPLAINER) == {"chat": 200, "models": 200, "feedback": 404, "explain": 200, **REFUSED_ADMIN,
                                    "metrics": 403, **everyone}
    assert reach(gw, SCRAPER) == {"chat": 200, "models": 200, "feedback": 404, "explain": 403, **REFUSED_ADMIN,
                                  "metrics": 200, **everyone}
    refused = gw.http.post("/v1/route/explain", json=BODY, headers=bearer(USER)).json()["error"]
    assert refused["code"] == "explain_only" and "debug" in refused["message"]
    assert "x-sigroute-signals" in debug_headers(gw, EXPLAINER)
    assert "x-sigroute-signals" not in debug_headers(gw, USER)


def test_public_endpoints_are_a_policy_choice(sim, gateway_factory):
    private = gateway_factory(keyed_policy(sim, public_endpoints=[]))
    assert private.http.get("/ready").status_code == 401
    assert private.http.get("/ready", headers=bearer(USER)).status_code == 200
    assert private.http.get("/health").status_code == 200   # liveness never needs a key
    scraped = gateway_factory(keyed_policy(sim, public_endpoints=["ready", "metrics"]))
    assert scraped.http.get("/metrics").status_code == 200


def test_a_key_whose_variable_is_unset_is_refused(sim, gateway_factory, monkeypatch):
    monkeypatch.delenv("SIGROUTE_TEST_REVOKED_KEY", raising=False)
    policy = base_policy(sim, auth={"keys": [key(USER), {"key_env": "SIGROUTE_TEST_REVOKED_KEY", "tenant": "gone"}]})
    gw = gateway_factory(policy)
    assert gw.http.post("/v1/chat/completions", json=BODY, headers=bearer("")).status_code == 401
    assert gw.http.post("/v1/chat/completions", json=BODY, headers=bearer(USER)).status_code == 200


def test_opening_operator_surfaces_alongside_keys_is_refused_at_load(sim):
    text = f"""version: 1
models:
  alpha: {{provider: openai/alpha, api_base: "{sim.api_base}"}}
decisions:
  - name: default
    models: [alpha]
auth:
  keys: [{{key_sha256: "{'0' * 64}", tenant: acme}}]
server:
  open_without_auth: [admin]
"""
    with pytest.raises(PolicyError) as err:
        load_policy_text(text, "open.yaml")
    message = str(err.value)
    assert "open.yaml:10" in message and "server.open_without_auth" in message and "auth.admin_roles" in message
