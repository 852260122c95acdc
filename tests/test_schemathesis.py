"""schemathesis against the gateway's own OpenAPI description (GET /openapi.json).

A real gateway on loopback (uvicorn via `gateway_factory`, the simulated upstream behind it) is
fuzzed operation by operation with requests schemathesis derives from the description: valid
bodies (positive mode) and bodies that break it (negative mode: wrong types, missing fields, values
out of range). Once with auth off, once with auth on and an admin key (the `ignored_auth` check
then also sends each request without the key and expects it refused).

Every answer must
- not be a 5xx: with a healthy upstream, a 5xx is sigroute's own failure;
- conform to the description: a documented status code, content type and headers, a body that
  matches the documented schema; every error is OpenAI-shaped, `{"error": {"message", "type",
  "param", "code"}}`, with a non-empty message, type and code — except on the Anthropic Messages
  routes (/v1/messages…), whose errors are Anthropic-shaped, `{"type": "error", "error": {"type",
  "message"}}`;
- come back within REQUEST_TIMEOUT_S (no hang).

The number of examples per operation is bounded (SIGROUTE_FUZZ_EXAMPLES, default 20 per mode, twice
times that for the operations that read a body) so the whole file runs in one to two minutes on two
busy cores; raise it for a longer hunt.
"""

from __future__ import annotations

import os
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import (content_type_conformance, ignored_auth, not_a_server_error,
                                 response_headers_conformance, response_schema_conformance,
                                 status_code_conformance, unsupported_method)

from sigroute.gateway.auth import hash_key
from tests.conftest import SIM_MODELS, base_policy

EXAMPLES_PER_MODE = int(os.environ.get("SIGROUTE_FUZZ_EXAMPLES", "20"))
BODY_WEIGHT = 2                # operations that read a body (chat, explain, feedback) get this many times more
REQUEST_TIMEOUT_S = 30.0       # generous: only a hang gets near it
ADMIN_KEY = "sk-fuzz-admin-5521"
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, unsupported_method]


def fuzz(gateway, headers: dict[str, str], checks: list) -> dict[str, int]:
    """Run every operation of the gateway's description: first schemathesis's coverage cases (for
    each keyword of each schema, values at and just past its bounds, of the wrong type, missing;
    and the operation's path with methods it does not take), then `EXAMPLES_PER_MODE` random
    examples per generation mode. Returns how many requests each operation got. Fails (with the
    reproducing request) on the first answer that breaks a check."""
    schema = schemathesis.openapi.from_url(gateway.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/feedback",
                                               "POST /v1/route/explain", "GET /v1/models", "POST /v1/messages",
                                               "POST /v1/messages/count_tokens"}
    session = requests.Session()
    sent: dict[str, int] = {}
    modes = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]

    def check(operation, case) -> None:
        try:
            response = case.call(base_url=gateway.url, session=session, headers=headers, timeout=REQUEST_TIMEOUT_S)
        except requests.Timeout:
            pytest.fail(f"{operation.label} did not answer within {REQUEST_TIMEOUT_S:g}s: {case.as_curl_command()}")
        sent[operation.label] = sent.get(operation.label, 0) + 1
        case.validate_response(response, checks=checks, headers=headers, transport_kwargs={"timeout": REQUEST_TIMEOUT_S})
        if operation.path.startswith("/v1/messages"):
            assert_anthropic_shaped_if_error(response, case)
        else:
            assert_openai_shaped_if_error(response, case)

    for operation in operations:
        generation = schema.config.generation_for(operation=operation)
        for case in schema.iter_coverage_cases(operation, generation_modes=modes, generation_config=generation):
            check(operation, case)

        strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))
        examples = 2 * EXAMPLES_PER_MODE * (BODY_WEIGHT if operation.body else 1)

        @given(case=strategy)
        @hypothesis.settings(max_examples=examples, deadline=None, database=None,
                             phases=[Phase.generate, Phase.shrink],   # shrinking: the smallest failing request
                             suppress_health_check=list(HealthCheck))
        def exercise(case) -> None:
            check(operation, case)

        exercise()
        assert sent.get(operation.label), f"{operation.label} was never called"
    session.close()
    return sent


def assert_openai_shaped_if_error(response: requests.Response, case) -> None:
    assert response.status_code < 500, f"{response.status_code} from {case.as_curl_command()}: {response.text[:500]}"
    if response.status_code < 400:
        return
    body: Any = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    error = body["error"]
    assert all(isinstance(error[k], str) and error[k] for k in ("message", "type", "code")), body
    assert error["param"] is None or isinstance(error["param"], str), body


def assert_anthropic_shaped_if_error(response: requests.Response, case) -> None:
    assert response.status_code < 500, f"{response.status_code} from {case.as_curl_command()}: {response.text[:500]}"
    if response.status_code < 400:
        return
    body: Any = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error", body
    assert set(body["error"]) == {"type", "message"}, body
    assert all(isinstance(body["error"][k], str) and body["error"][k] for k in ("type", "message")), body


def test_fuzzing_the_open_gateway_finds_no_server_error_nonconformance_or_hang(sim, gateway_factory):
    gateway = gateway_factory(base_policy(sim))
    sent = fuzz(gateway, headers={}, checks=CHECKS)
    assert sent["POST /v1/chat/completions"] >= 2 * EXAMPLES_PER_MODE, sent   # the bodies really were fuzzed
    assert sent["POST /v1/messages"] >= 2 * EXAMPLES_PER_MODE, sent
    assert gateway.chat("still serving").status_code == 200


def test_fuzzing_the_gateway_with_auth_on(sim, gateway_factory):
    policy = base_policy(sim, auth={"keys": [{"key_sha256": hash_key(ADMIN_KEY), "tenant": "fuzz",
                                              "roles": ["admin"]}]})
    gateway = gateway_factory(policy)
    description = gateway.http.get("/openapi.json").json()
    assert description["security"] and description["paths"]["/health"]["get"]["security"] == []
    sent = fuzz(gateway, headers={"authorization": f"Bearer {ADMIN_KEY}"}, checks=[*CHECKS, ignored_auth])
    assert sent["POST /v1/chat/completions"] >= 2 * EXAMPLES_PER_MODE, sent
    assert gateway.chat("still serving", api_key=ADMIN_KEY).status_code == 200


def test_the_description_names_the_bodies_and_the_error_shape(sim, gateway_factory):
    """What the fuzzer relies on: request bodies and every error answer are described, and the
    models a chat request may name are the running policy's."""
    gateway = gateway_factory(base_policy(sim))
    description = gateway.http.get("/openapi.json").json()
    paths, schemas = description["paths"], description["components"]["schemas"]
    chat = paths["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/ChatCompletionRequest")
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert schemas["ChatCompletionRequest"]["properties"]["model"]["enum"] == ["auto", *SIM_MODELS]
    feedback = paths["/v1/feedback"]["post"]
    assert feedback["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/FeedbackRequest")
    for path, operations in paths.items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    shape = "/AnthropicError" if path.startswith("/v1/messages") else "/Error"
                    assert answer["content"]["application/json"]["schema"]["$ref"].endswith(shape), \
                        (method, path, status)
    assert schemas["Error"]["properties"]["error"]["required"] == ["message", "type", "param", "code"]
    messages = paths["/v1/messages"]["post"]
    assert messages["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/MessagesRequest")
    assert set(messages["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
    assert schemas["MessagesRequest"]["required"] == ["model", "max_tokens", "messages"]
    assert schemas["AnthropicError"]["properties"]["error"]["required"] == ["type", "message"]


def test_a_wrong_method_gets_405_with_allow_and_a_code(sim, gateway_factory):
    gateway = gateway_factory(base_policy(sim))
    r = gateway.http.put("/v1/chat/completions", json={})
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = gateway.http.get("/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_route"


def test_the_description_follows_a_reload(sim, gateway_factory, tmp_path):
    import yaml

    path = tmp_path / "policy.yaml"
    policy = base_policy(sim)
    path.write_text(yaml.safe_dump(policy))
    gateway = gateway_factory(policy, policy_path=str(path))
    assert "security" not in gateway.http.get("/openapi.json").json()
    policy["auth"] = {"keys": [{"key_sha256": hash_key(ADMIN_KEY), "tenant": "fuzz", "roles": ["admin"]}]}
    policy["entrypoints"] = {"auto": {}, "cheap": {}}
    del policy["server"]["open_without_auth"]
    path.write_text(yaml.safe_dump(policy))
    reloaded = gateway.http.post("/v1/admin/reload", headers={"authorization": f"Bearer {ADMIN_KEY}"})
    assert reloaded.status_code == 200, reloaded.text
    description = gateway.http.get("/openapi.json").json()
    assert description["security"] == [{"bearer": []}, {"apiKey": []}]
    assert description["components"]["schemas"]["ChatCompletionRequest"]["properties"]["model"]["enum"][:2] == \
        ["auto", "cheap"]
