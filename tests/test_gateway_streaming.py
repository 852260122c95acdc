"""Streaming through the gateway, and the litellm transport path."""

from __future__ import annotations

import openai

from tests.conftest import base_policy


def test_stream_with_openai_client(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto", stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "stream please"}])
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-sigroute-model"] == "alpha"
    assert raw.headers["x-sigroute-decision"] == "default"
    chunks = list(raw.parse())
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.model == "alpha" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 8  # the sim's configured completion length
    assert any(c.choices and c.choices[0].finish_reason == "stop" for c in chunks)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 8


def test_stream_and_non_stream_give_the_same_text(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    client = gw.client()
    messages = [{"role": "user", "content": "[[sim:echo]] repeat exactly this"}]
    whole = client.chat.completions.create(model="auto", messages=messages).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(model="auto", messages=messages, stream=True) if c.choices)
    assert whole == streamed
    assert "repeat exactly this" in whole


def test_litellm_transport_non_stream_and_stream(sim, gateway_factory):
    policy = base_policy(sim)
    policy["models"]["alpha"]["transport"] = "litellm"
    gw = gateway_factory(policy)
    client = gw.client()
    completion = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "via litellm"}])
    assert completion.model == "alpha"
    assert completion.choices[0].message.content
    chunks = list(client.chat.completions.create(model="auto", stream=True,
                                                 messages=[{"role": "user", "content": "via litellm"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sim.calls("alpha") == 2
    assert sim.last_body("alpha")["model"] == "alpha"


def test_litellm_transport_maps_errors_and_falls_back(sim, gateway_factory):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}])
    policy["models"]["alpha"]["transport"] = "litellm"
    gw = gateway_factory(policy)
    sim.faults("alpha", rate_limit_rate=1.0)
    raw = gw.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "hi"}])
    assert raw.headers["x-sigroute-model"] == "beta"
    assert 'sigroute_upstream_errors_total{kind="rate_limited",model="alpha"} 1.0' in gw.http.get("/metrics").text
