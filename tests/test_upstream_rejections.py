"""Upstream rejections (HTTP 400): the caller's mistake is returned as it is, with the upstream's
error code; a rejection that is the model's own (context length, or a fallback model refusing what
an earlier candidate accepted) moves on to the next candidate.

The upstream is `benchmarks.chaos_upstream.FaultServer`, a real HTTP server on loopback that
records what each model really answered (text, usage)."""

from __future__ import annotations

import openai
import pytest

from benchmarks.chaos_upstream import Fault, FaultServerThread, answer_text, model_usage
from conftest import fault_policy

CONTEXT_LENGTH = Fault("status", status=400, code="context_length_exceeded", error_type="invalid_request_error",
                       message="This model's maximum context length is 4096 tokens.")
LARGE_USAGE = model_usage("large", len(answer_text("large", "n1").split()))
BAD_PARAMETER = Fault("status", status=400, code="unsupported_value", error_type="invalid_request_error",
                      message="Unsupported value: 'temperature'.")


@pytest.fixture
def upstream(fault_upstream: FaultServerThread) -> FaultServerThread:
    return fault_upstream


policy = fault_policy


def ask(gw, nonce: str, stream: bool = False):
    messages = [{"role": "user", "content": f"hello chaos-id:{nonce}"}]
    client = gw.client()
    if stream:
        chunks = list(client.chat.completions.create(model="auto", messages=messages, stream=True,
                                                     stream_options={"include_usage": True}))
        return chunks
    return client.chat.completions.with_raw_response.create(model="auto", messages=messages)


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_rejection_falls_back_to_the_next_candidate(upstream, gateway_factory, stream):
    upstream.server.faults["small"] = CONTEXT_LENGTH
    gw = gateway_factory(policy(upstream, ["small", "large"]))
    if stream:
        chunks = ask(gw, "n1", stream=True)
        assert {c.model for c in chunks} == {"large"}
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == answer_text("large", "n1")
        assert chunks[-1].usage.model_dump(exclude_none=True) == LARGE_USAGE
    else:
        raw = ask(gw, "n1")
        answer = raw.parse()
        assert raw.headers["x-sigroute-model"] == "large" and answer.model == "large"
        assert answer.choices[0].message.content == answer_text("large", "n1")
        assert answer.usage.model_dump(exclude_none=True) == LARGE_USAGE
    assert upstream.calls("small") == 1 and upstream.calls("large") == 1


def test_context_length_rejection_without_another_candidate_keeps_its_code(upstream, gateway_factory):
    upstream.server.faults["small"] = CONTEXT_LENGTH
    gw = gateway_factory(policy(upstream, ["small"]))
    with pytest.raises(openai.BadRequestError) as caught:
        ask(gw, "n2")
    assert caught.value.code == "context_length_exceeded"
    assert "maximum context length" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_that_rejects_what_the_primary_accepted_moves_on(upstream, gateway_factory, stream):
    upstream.server.faults["primary"] = Fault("status", status=500)
    upstream.server.faults["picky"] = BAD_PARAMETER
    gw = gateway_factory(policy(upstream, ["primary", "picky", "spare"]))
    if stream:
        assert {c.model for c in ask(gw, "n3", stream=True)} == {"spare"}
    else:
        raw = ask(gw, "n3")
        assert raw.headers["x-sigroute-model"] == "spare" and raw.parse().model == "spare"
    assert [upstream.calls(m) for m in ("primary", "picky", "spare")] == [1, 1, 1]


def test_fallback_rejection_is_returned_when_no_candidate_is_left(upstream, gateway_factory):
    upstream.server.faults["primary"] = Fault("status", status=500)
    upstream.server.faults["picky"] = BAD_PARAMETER
    gw = gateway_factory(policy(upstream, ["primary", "picky"]))
    with pytest.raises(openai.BadRequestError) as caught:
        ask(gw, "n4")
    assert caught.value.code == "unsupported_value"
    assert "picky" in caught.value.message


def test_first_candidates_rejection_is_the_callers_mistake(upstream, gateway_factory):
    upstream.server.faults["primary"] = BAD_PARAMETER
    gw = gateway_factory(policy(upstream, ["primary", "spare"]))
    with pytest.raises(openai.BadRequestError) as caught:
        ask(gw, "n5")
    assert caught.value.code == "unsupported_value"
    assert upstream.calls("spare") == 0  # another model would not fix the request
