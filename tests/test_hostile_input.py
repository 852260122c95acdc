"""Hostile request bodies get a clear OpenAI-shaped 4xx, cost little to refuse, and leave the
gateway serving. (Hostile connections — slowloris, huge heads, lying lengths — are in
test_connection_limits.py; a body too deep to send upstream in test_request_resources.py.)"""

from __future__ import annotations

import orjson
import pytest

from tests.conftest import base_policy


@pytest.fixture
def gw(sim, gateway_factory):
    return gateway_factory(base_policy(sim))


def body(**fields) -> bytes:
    return orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "hi"}], **fields})


def deeply_nested(depth: int) -> bytes:
    return b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "metadata": ' + b"[" * depth \
        + b"]" * depth + b"}"


CASES = {
    # name: (raw body, status, error code, param or None, words the message must contain)
    "body over the size limit": (body(padding="x" * (5 * 1024 * 1024)), 413, "request_too_large", None, "limit"),
    "JSON nested 100,000 deep": (deeply_nested(100_000), 400, "invalid_json", None, "not valid JSON"),
    "100,000 messages": (orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x"}] * 100_000}),
                         400, "invalid_value", "messages", "server.max_messages"),
    "10,000 tools": (body(tools=[{"type": "function", "function": {"name": f"f{i}"}} for i in range(10_000)]),
                     400, "invalid_value", "tools", "server.max_tools"),
    "invalid UTF-8": (b'{"model": "auto", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
                      400, "invalid_json", None, "not valid JSON"),
    "n = 10^9": (body(n=10**9), 400, "invalid_value", "n", "between 1 and 128"),
    "negative max_tokens": (body(max_tokens=-5), 400, "invalid_value", "max_tokens", "positive integer"),
    "model as an object": (orjson.dumps({"model": {"name": "auto"}, "messages": [{"role": "user", "content": "hi"}]}),
                           400, "missing_required_parameter", "model", "'model' is required"),
    "messages as a string": (orjson.dumps({"model": "auto", "messages": "hi"}), 400, "missing_required_parameter",
                             "messages", "non-empty list"),
    "a role that is a list": (orjson.dumps({"model": "auto", "messages": [{"role": ["user"], "content": "hi"}]}),
                              400, "invalid_value", "messages[0].role", "expected one of"),
    "an empty body": (b"", 400, "invalid_json", None, "empty"),
    "a JSON array": (b"[1, 2, 3]", 400, "invalid_json", None, "JSON object"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_bodies_get_a_clear_error_and_the_gateway_serves_on(gw, sim, case):
    raw, status, code, param, words = CASES[case]
    r = gw.http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:500]
    error = r.json()["error"]
    assert error["code"] == code and error["param"] == param and words in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert sim.stats()["total_calls"] == 0          # refused before any model was called
    assert gw.chat("and a normal request").status_code == 200


def test_refusing_hostile_bodies_is_bounded_in_memory_and_time(gw):
    """What refusing each body costs the gateway (it runs in this process, so tracemalloc sees its
    allocations): at most ~30 times the body (which `server.max_request_bytes` bounds; 100,000
    messages parse into ~23x), and an answer within a hang detector's 30 s."""
    import tracemalloc

    gw.chat("warm up")
    tracemalloc.start()
    try:
        for case, (raw, status, *_) in CASES.items():
            tracemalloc.reset_peak()
            before = tracemalloc.get_traced_memory()[0]
            r = gw.http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"},
                             timeout=30)
            peak = tracemalloc.get_traced_memory()[1] - before
            assert r.status_code == status, case
            assert peak < 30 * min(len(raw), gw.app.state.runtime.pipeline.max_request_bytes) + 8 * 2**20, \
                f"{case}: refusing it allocated {peak / 2**20:.1f} MiB"
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("case", list(CASES))
def test_explain_refuses_hostile_bodies_the_same_way(gw, case):
    """/v1/route/explain reads the same body through the same checks."""
    raw, status, code, param, words = CASES[case]
    r = gw.http.post("/v1/route/explain", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:500]
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == param


def test_the_limits_are_the_policy_s(sim, gateway_factory):
    policy = base_policy(sim)
    policy["server"].update(max_messages=3, max_tools=1)
    gw = gateway_factory(policy)
    four = [{"role": "user", "content": "x"}] * 4
    r = gw.http.post("/v1/chat/completions", json={"model": "auto", "messages": four})
    assert r.status_code == 400 and "at most 3" in r.json()["error"]["message"]
    assert gw.http.post("/v1/chat/completions", json={"model": "auto", "messages": four[:3]}).status_code == 200
