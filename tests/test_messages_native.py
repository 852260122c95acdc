"""A native Messages upstream (`anthropic/…` model with an api_base: here the simulated upstream's
own POST /v1/messages): a Messages request reaches it as the client sent it, streamed and not,
plugins' changes included; chat-completions requests reach it translated; its failures fall back
like any other upstream's."""

from __future__ import annotations

import copy

import anthropic
import pytest

from tests.conftest import base_policy
from tests.test_plugins import with_plugins

STREAMED = pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TOOL = {"name": "lookup", "description": "Look a word up", "cache_control": {"type": "ephemeral"},
        "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}}}
RICH = {
    "model": "auto", "max_tokens": 300, "temperature": 0.2, "top_p": 0.8, "top_k": 12,
    "stop_sequences": ["###"], "metadata": {"user_id": "user-7"},
    "system": [{"type": "text", "text": "You are a careful assistant."},
               {"type": "text", "text": "Long reference text.", "cache_control": {"type": "ephemeral"}}],
    "tools": [TOOL], "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?", "cache_control": {"type": "ephemeral"}},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": "I should look it up.", "signature": "c2lnbmF0dXJl"},
            {"type": "text", "text": "Let me check."},
            {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": {"text": "pixel"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "a tiny image"}]},
            {"type": "tool_result", "tool_use_id": "toolu_02", "content": "not found", "is_error": True},
            {"type": "text", "text": "Thanks. Anything else?"}]},
        {"role": "assistant", "content": "Nothing else."},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_03", "content": "final answer"}]}],
}


def native_policy(sim, **overrides):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["claude"]}], **overrides)
    policy["models"]["claude"] = {"provider": "anthropic/alpha", "api_base": sim.url}
    return policy


def client_for(gw) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)


def sdk_arguments(body: dict) -> dict:
    """`body` as the SDK's keyword arguments (this SDK version no longer offers the sampling
    parameters: they go in extra_body, and reach the wire all the same)."""
    sampling = {k: body[k] for k in ("temperature", "top_p", "top_k") if k in body}
    return {**{k: v for k, v in body.items() if k not in sampling}, "extra_body": sampling}


@STREAMED
def test_a_rich_messages_request_reaches_the_native_upstream_as_sent(sim, gateway_factory, stream):
    gw = gateway_factory(native_policy(sim))
    request = copy.deepcopy(RICH)
    client = client_for(gw)
    if stream:
        with client.messages.stream(**sdk_arguments(request)) as s:
            answer = s.get_final_message()
    else:
        answer = client.messages.create(**sdk_arguments(request))
    assert answer.content[0].text == "Tool said: final answer" and answer.model == "claude"
    expected = {**RICH, "model": "alpha", **({"stream": True} if stream else {})}
    assert sim.last_body("alpha") == expected


@STREAMED
def test_native_tool_calls_come_back_as_tool_use(sim, gateway_factory, stream):
    gw = gateway_factory(native_policy(sim))
    body = {"model": "auto", "max_tokens": 64, "tools": [TOOL],
            "messages": [{"role": "user", "content": "[[sim:tool]] Paris"}]}
    if stream:
        with client_for(gw).messages.stream(**body) as s:
            answer = s.get_final_message()
    else:
        answer = client_for(gw).messages.create(**body)
    assert answer.stop_reason == "tool_use"
    (call,) = answer.content
    assert call.type == "tool_use" and call.name == "lookup" and call.input == {"text": "Paris"}
    assert call.id.startswith("toolu_")


@STREAMED
def test_plugin_changes_still_apply_to_what_the_native_upstream_receives(sim, gateway_factory, stream):
    policy = with_plugins(sim, [{"pii": {"action": "mask_and_restore"}}], models=("claude",))
    policy["models"]["claude"] = {"provider": "anthropic/alpha", "api_base": sim.url}
    gw = gateway_factory(policy)
    body = {"model": "auto", "max_tokens": 64, "top_k": 3,
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "[[sim:echo]] mail jane.roe@example.org now",
                 "cache_control": {"type": "ephemeral"}}]}]}
    if stream:
        with client_for(gw).messages.stream(**sdk_arguments(body)) as s:
            text = "".join(s.text_stream)
    else:
        text = client_for(gw).messages.create(**sdk_arguments(body)).content[0].text
    sent = sim.last_body("alpha")
    (block,) = sent["messages"][0]["content"]
    assert "jane.roe@example.org" not in block["text"] and "<EMAIL_ADDRESS_1>" in block["text"]
    assert block["cache_control"] == {"type": "ephemeral"} and sent["top_k"] == 3
    assert "jane.roe@example.org" in text and "<EMAIL_ADDRESS_1>" not in text


@STREAMED
def test_a_chat_completions_request_reaches_the_native_upstream_translated(sim, gateway_factory, stream):
    gw = gateway_factory(native_policy(sim))
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "[[sim:echo]] hello there"}]
    if stream:
        chunks = list(gw.client().chat.completions.create(model="auto", messages=messages, stream=True,
                                                          stream_options={"include_usage": True}))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert chunks[-1].usage.completion_tokens == 3
        assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    else:
        completion = gw.client().chat.completions.create(model="auto", messages=messages, temperature=1.5)
        text = completion.choices[0].message.content
        assert completion.choices[0].finish_reason == "stop" and completion.usage.completion_tokens == 3
    assert text == "[[sim:echo]] hello there"
    sent = sim.last_body("alpha")
    assert sent["system"] == "Be brief." and sent["max_tokens"] == 4096
    assert sent["messages"] == [{"role": "user", "content": "[[sim:echo]] hello there"}]
    if not stream:
        assert sent["temperature"] == 1   # Anthropic's range ends at 1


@STREAMED
@pytest.mark.parametrize("fault", ["error_rate", "rate_limit_rate", "timeout_rate"])
def test_a_failing_native_upstream_falls_back(sim, gateway_factory, stream, fault):
    policy = native_policy(sim)
    policy["decisions"] = [{"name": "default", "models": ["claude", "beta"], "algorithm": "static"}]
    gw = gateway_factory(policy)
    sim.faults("alpha", **{fault: 1.0})
    r = gw.http.post("/v1/messages", json={"model": "auto", "max_tokens": 32, "stream": stream,
                                           "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200 and r.headers["x-sigroute-model"] == "beta" and r.headers["x-sigroute-attempts"] == "2"
    kind = {"error_rate": "server", "rate_limit_rate": "rate_limited", "timeout_rate": "server"}[fault]
    assert f'sigroute_upstream_errors_total{{kind="{kind}",model="claude"}} 1.0' in gw.http.get("/metrics").text


@pytest.mark.parametrize("native", [True, False], ids=["native", "openai-compatible"])
def test_plugins_take_a_rich_request_with_blocks_chat_cannot_express(sim, gateway_factory, native):
    policy = with_plugins(sim, [{"jailbreak": {"block_above": 0.99}}, {"pii": {"action": "mask_and_restore"}},
                                {"system_prompt": {"text": "House rules.", "mode": "prepend"}}, {"response_guard": {}}],
                          models=("claude",) if native else ("alpha",))
    policy["models"]["claude"] = {"provider": "anthropic/alpha", "api_base": sim.url}
    gw = gateway_factory(policy)
    answer = client_for(gw).messages.create(**sdk_arguments(copy.deepcopy(RICH)))
    assert answer.content[0].text == "Tool said: final answer"
    sent = sim.last_body("alpha")
    if native:
        assert sent["thinking"] == RICH["thinking"] and sent["messages"][1]["content"][0]["type"] == "thinking"
        assert sent["system"] == [{"type": "text", "text": "House rules."}, *RICH["system"]]   # plugin + caller's
    else:
        assert "thinking" not in sent and sent["messages"][0]["role"] == "system"
