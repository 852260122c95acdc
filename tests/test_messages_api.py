"""The Anthropic Messages surface (POST /v1/messages), driven with the official `anthropic` SDK
against a real gateway and the simulated upstream on loopback.

Each test names one behaviour: the SDK's calls (sync, async, streamed both ways, tools round trip)
work unchanged; what the OpenAI-compatible upstream receives (`/sim/last/<model>`) is the faithful
chat translation; errors come back in Anthropic's shape as the SDK's own exception classes.
"""

from __future__ import annotations

import asyncio

import anthropic
import httpx
import orjson
import pytest

from sigroute.gateway.auth import hash_key
from tests.conftest import base_policy

TOOLS = [{"name": "lookup", "description": "Look a word up", "input_schema": {
    "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}]
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


def client_for(gw, api_key: str = "unused", **kwargs) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=api_key, max_retries=0, **kwargs)


@pytest.fixture
def gw(sim, gateway_factory):
    return gateway_factory(base_policy(sim))


def events_of(response: httpx.Response) -> list[tuple[str, dict]]:
    """(event name, data) of each server-sent event of a Messages stream."""
    out = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        out.append((lines["event"], orjson.loads(lines["data"])))
    return out


def test_sync_create_answers_a_message(gw, sim):
    message = client_for(gw).messages.create(model="auto", max_tokens=64,
                                             messages=[{"role": "user", "content": "Hello there"}])
    assert message.type == "message" and message.role == "assistant" and message.model == "alpha"
    assert message.id.startswith("msg_") and message.stop_reason == "end_turn" and message.stop_sequence is None
    assert len(message.content) == 1 and message.content[0].type == "text" and message.content[0].text
    assert message.usage.input_tokens > 0 and message.usage.output_tokens == 8
    assert sim.last_body("alpha")["messages"] == [{"role": "user", "content": "Hello there"}]


def test_async_create(gw):
    async def ask():
        async with anthropic.AsyncAnthropic(base_url=gw.url, api_key="unused", max_retries=0) as client:
            return await client.messages.create(model="auto", max_tokens=64,
                                                messages=[{"role": "user", "content": "[[sim:echo]] async hello"}])

    message = asyncio.run(ask())
    assert message.content[0].text == "[[sim:echo]] async hello"


def test_stream_helper_assembles_the_message(gw):
    with client_for(gw).messages.stream(model="auto", max_tokens=64,
                                        messages=[{"role": "user", "content": "[[sim:echo]] one two three"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "[[sim:echo]] one two three" == final.content[0].text
    assert final.stop_reason == "end_turn" and final.model == "alpha" and final.id.startswith("msg_")
    assert final.usage.input_tokens > 0 and final.usage.output_tokens == 4   # the sim counts words


def test_stream_true_sends_anthropics_event_sequence(gw):
    r = gw.http.post("/v1/messages", json={"model": "auto", "max_tokens": 64, "stream": True,
                                           "messages": [{"role": "user", "content": "[[sim:echo]] a b"}]})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = events_of(r)
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert all(data["type"] == name for name, data in events)
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] > 0 and start["role"] == "assistant"
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None} and delta["usage"]["output_tokens"] == 3
    text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
    assert text == "[[sim:echo]] a b"
    # the SDK's raw event iterator reads the same stream
    stream = client_for(gw).messages.create(model="auto", max_tokens=64, stream=True,
                                            messages=[{"role": "user", "content": "[[sim:echo]] a b"}])
    assert [e.type for e in stream] == [name for name in names if name != "ping"]   # (the SDK skips pings)


def tool_round_trip(client, stream: bool):
    question = [{"role": "user", "content": "[[sim:tool]] weather in Paris"}]
    if stream:
        with client.messages.stream(model="auto", max_tokens=64, tools=TOOLS, messages=question) as s:
            first = s.get_final_message()
    else:
        first = client.messages.create(model="auto", max_tokens=64, tools=TOOLS, messages=question)
    assert first.stop_reason == "tool_use"
    (call,) = [b for b in first.content if b.type == "tool_use"]
    assert call.name == "lookup" and call.input == {"text": "weather in Paris"}
    history = question + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id,
                                                        "content": "sunny"}]}]
    second = client.messages.create(model="auto", max_tokens=64, tools=TOOLS, messages=history)
    assert second.content[0].text == "Tool said: sunny" and second.stop_reason == "end_turn"
    return call


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_tools_round_trip(gw, sim, stream):
    call = tool_round_trip(client_for(gw), stream)
    sent = sim.last_body("alpha")
    assert sent["tools"] == [{"type": "function", "function": {"name": "lookup", "parameters": TOOLS[0]["input_schema"],
                                                               "description": "Look a word up"}}]
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant" and assistant["tool_calls"] == [
        {"id": call.id, "type": "function", "function": {"name": "lookup", "arguments": '{"text":"weather in Paris"}'}}]
    assert tool == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


def test_streamed_tool_call_arrives_as_input_json_deltas(gw):
    r = gw.http.post("/v1/messages", json={"model": "auto", "max_tokens": 64, "stream": True, "tools": TOOLS,
                                           "messages": [{"role": "user", "content": "[[sim:tool]] hi"}]})
    events = events_of(r)
    starts = [d for n, d in events if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["tool_use"]
    assert starts[0]["content_block"]["name"] == "lookup" and starts[0]["content_block"]["id"].startswith("call_")
    partial = [d["delta"]["partial_json"] for n, d in events if n == "content_block_delta"]
    assert len(partial) == 2 and orjson.loads("".join(partial)) == {"text": "hi"}
    assert [d for n, d in events if n == "message_delta"][0]["delta"]["stop_reason"] == "tool_use"


def test_the_upstream_receives_a_faithful_chat_translation(gw, sim):
    client_for(gw).messages.create(
        model="auto", max_tokens=77, stop_sequences=["END", "STOP"], metadata={"user_id": "user-42"},
        extra_body={"temperature": 0.5, "top_p": 0.9, "top_k": 40},   # (this SDK version no longer offers them)
        system=[{"type": "text", "text": "You are terse."}, {"type": "text", "text": "Answer in French."}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True}, tools=TOOLS,
        messages=[
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.png"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."},
                                              {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                                               "input": {"text": "pixel"}}]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "a pixel"}]},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "oops", "is_error": True},
                {"type": "text", "text": "So?"}]}])
    sent = sim.last_body("alpha")
    assert sent == {
        "model": "alpha", "max_tokens": 77, "temperature": 0.5, "top_p": 0.9, "top_k": 40, "stop": ["END", "STOP"],
        "user": "user-42", "tool_choice": "required", "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "Look a word up",
                                                    "parameters": TOOLS[0]["input_schema"]}}],
        "messages": [
            {"role": "system", "content": [{"type": "text", "text": "You are terse."},
                                           {"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Let me look."}],
             "tool_calls": [{"id": "toolu_1", "type": "function",
                             "function": {"name": "lookup", "arguments": '{"text":"pixel"}'}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": [{"type": "text", "text": "a pixel"}]},
            {"role": "tool", "tool_call_id": "toolu_2", "content": "oops"},   # is_error: for a native upstream only
            {"role": "user", "content": [{"type": "text", "text": "So?"}]}]}


def test_system_prompt_string_and_tool_choice_variants(gw, sim):
    client = client_for(gw)
    for choice, expected in [({"type": "auto"}, "auto"), ({"type": "none"}, "none"),
                             ({"type": "tool", "name": "lookup"}, {"type": "function", "function": {"name": "lookup"}})]:
        client.messages.create(model="auto", max_tokens=16, system="Be kind.", tools=TOOLS, tool_choice=choice,
                               messages=[{"role": "user", "content": "hi"}])
        sent = sim.last_body("alpha")
        assert sent["messages"][0] == {"role": "system", "content": "Be kind."}
        assert sent["tool_choice"] == expected and "parallel_tool_calls" not in sent


def test_fields_without_a_chat_equivalent_do_not_reach_an_openai_compatible_upstream(gw, sim):
    client_for(gw).messages.create(
        model="auto", max_tokens=16, extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}},
        system=[{"type": "text", "text": "cached part", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi"},
                  {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm", "signature": "sig"},
                                                    {"type": "text", "text": "Hello"}]},
                  {"role": "user", "content": "again"}])
    sent = sim.last_body("alpha")
    assert "sigroute_anthropic" not in orjson.dumps(sent).decode() and "thinking" not in sent
    assert sent["messages"][0] == {"role": "system", "content": [{"type": "text", "text": "cached part"}]}
    assert sent["messages"][2] == {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}


def test_anthropic_version_header_and_bearer_or_x_api_key(sim, gateway_factory):
    key = "sk-messages-1"
    gw = gateway_factory(base_policy(sim, auth={"keys": [{"key_sha256": hash_key(key), "tenant": "t1"}]}))
    body = {"model": "auto", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
    by_x_api_key = gw.http.post("/v1/messages", json=body,
                                headers={"x-api-key": key, "anthropic-version": "2023-06-01"})
    by_bearer = gw.http.post("/v1/messages", json=body, headers={"authorization": f"Bearer {key}"})
    assert by_x_api_key.status_code == by_bearer.status_code == 200
    assert client_for(gw, api_key=key).messages.create(**body).content[0].text
    with pytest.raises(anthropic.AuthenticationError) as caught:
        client_for(gw, api_key="sk-wrong").messages.create(**body)
    assert caught.value.status_code == 401
    assert caught.value.body == {"type": "error", "error": {"type": "authentication_error", "message": "invalid API key"}}
    missing = gw.http.post("/v1/messages", json=body)
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    # count_tokens authenticates like /v1/messages
    counted = gw.http.post("/v1/messages/count_tokens", json={"model": "auto", "messages": body["messages"]})
    assert counted.status_code == 401 and counted.json()["type"] == "error"


def test_missing_max_tokens_is_an_anthropic_400_naming_the_field(gw):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client_for(gw, timeout=10).messages.create(model="auto", max_tokens=None,  # type: ignore[arg-type]
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 400
    error = caught.value.body["error"]
    assert caught.value.body["type"] == "error" and error["type"] == "invalid_request_error"
    assert "'max_tokens' is required" in error["message"]


@pytest.mark.parametrize("body, field", [
    ({"model": "auto", "max_tokens": 0, "messages": [{"role": "user", "content": "x"}]}, "'max_tokens'"),
    ({"model": "auto", "max_tokens": 5, "temperature": 1.5, "messages": [{"role": "user", "content": "x"}]},
     "'temperature'"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"text": "x"}]}]},
     "messages[0].content[0]"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64"}}]}]}, "messages[0].content[0].source"),
    ({"model": "auto", "max_tokens": 5, "tools": [{"name": "t"}], "messages": [{"role": "user", "content": "x"}]},
     "tools[0].input_schema"),
    ({"model": "auto", "max_tokens": 5, "tool_choice": {"type": "tool"}, "messages": [{"role": "user", "content": "x"}]},
     "tool_choice.name"),
    ({"model": "auto", "max_tokens": 5, "stop_sequences": "END", "messages": [{"role": "user", "content": "x"}]},
     "'stop_sequences'"),
    ({"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "content": "x"}]}]}, "messages[0].content[0].tool_use_id"),
])
def test_bad_bodies_get_precise_anthropic_errors(gw, body, field):
    r = gw.http.post("/v1/messages", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert field in r.json()["error"]["message"]


def test_unknown_model_and_bad_json_and_wrong_method(gw):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client_for(gw).messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "no-such-model" in caught.value.body["error"]["message"]
    r = gw.http.post("/v1/messages", content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    r = gw.http.get("/v1/messages")
    assert r.status_code == 405 and r.json()["type"] == "error" and r.headers["allow"] == "POST"


def test_count_tokens_is_the_gateways_own_count(gw):
    messages = [{"role": "user", "content": "How many tokens are in this question?"}]
    counted = client_for(gw).messages.count_tokens(model="auto", messages=messages, system="Be brief.")
    explained = gw.http.post("/v1/route/explain?api=messages",
                             json={"model": "auto", "max_tokens": 5, "system": "Be brief.", "messages": messages})
    assert explained.status_code == 200 and explained.json()["api"] == "messages"
    assert counted.input_tokens == explained.json()["prompt_tokens"] > 0
    r = gw.http.post("/v1/messages/count_tokens", json={"model": "auto", "messages": []})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_stop_sequences_reach_the_upstream_as_stop(gw, sim):
    message = client_for(gw).messages.create(model="auto", max_tokens=64, stop_sequences=["###"],
                                             messages=[{"role": "user", "content": "hi"}])
    assert sim.last_body("alpha")["stop"] == ["###"] and message.stop_reason == "end_turn"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_matched_stop_sequence_is_reported(gw, stream):
    """An upstream that names the stop string it ended at (vLLM's `stop_reason`; the sim does too)."""
    body = dict(model="auto", max_tokens=64, stop_sequences=["nope", "STOP"],
                messages=[{"role": "user", "content": "[[sim:echo]] keep this STOP not this"}])
    if stream:
        with client_for(gw).messages.stream(**body) as s:
            message = s.get_final_message()
    else:
        message = client_for(gw).messages.create(**body)
    assert message.content[0].text == "[[sim:echo]] keep this "
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "STOP"


def test_a_stream_that_breaks_ends_with_an_error_event(gw, sim):
    sim.http.put("/sim/models/alpha", json={"completion_tokens": 60}).raise_for_status()
    sim.faults("alpha", break_stream_rate=1.0)
    r = gw.http.post("/v1/messages", json={"model": "auto", "max_tokens": 256, "stream": True,
                                           "messages": [{"role": "user", "content": "tell me a long story"}]})
    events = events_of(r)
    assert events[0][0] == "message_start" and "content_block_delta" in [n for n, _ in events]
    name, data = events[-1]
    assert name == "error" and data["type"] == "error" and data["error"]["type"] == "api_error"
    assert "failed mid-stream" in data["error"]["message"]
    with pytest.raises(anthropic.APIStatusError):   # the SDK raises on the error event
        with client_for(gw).messages.stream(model="auto", max_tokens=256,
                                            messages=[{"role": "user", "content": "tell me a long story"}]) as s:
            "".join(s.text_stream)


HOSTILE = [b"", b"[]", b"null", b'"x"', b"{}", b'{"model": 1}', b'{"model": "auto", "max_tokens": true}',
           b'{"model": "auto", "max_tokens": 1e400}', b'{"model": "auto", "max_tokens": 99999999999999999999999}',
           b'{"model": "auto", "max_tokens": 5, "messages": {}}',
           b'{"model": "auto", "max_tokens": 5, "messages": [null]}',
           b'{"model": "auto", "max_tokens": 5, "messages": [{"role": ["user"], "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": 5}]}',
           b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": ["text"]}]}]}',
           b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "text"}]}]}',
           b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image", "source": "x"}]}]}',
           b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "assistant", "content": [{"type": "tool_use"}]}]}',
           b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": [5]}]}]}',
           b'{"model": "auto", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "a", "content": {}}]}]}',
           b'{"model": "auto", "max_tokens": 5, "system": 5, "messages": [{"role": "user", "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "system": [{"type": "text", "text": 5}], "messages": [{"role": "user", "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "tools": {}, "messages": [{"role": "user", "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "tools": [{"name": "t", "input_schema": {}, "type": "bash_20250124"}], "messages": [{"role": "user", "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "tool_choice": "auto", "messages": [{"role": "user", "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "tool_choice": {"type": ["auto"]}, "messages": [{"role": "user", "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "metadata": {"user_id": 5}, "messages": [{"role": "user", "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "top_k": -1, "messages": [{"role": "user", "content": "x"}]}',
           b'{"model": "auto", "max_tokens": 5, "stream": "yes", "messages": [{"role": "user", "content": "x"}]}']


def test_hostile_bodies_get_anthropic_400s_never_a_500(gw):
    for raw in HOSTILE:
        r = gw.http.post("/v1/messages", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, (raw, r.status_code, r.text)
        body = r.json()
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error" and body["error"]["message"]


def test_max_tokens_truncation_is_stop_reason_max_tokens(gw):
    message = client_for(gw).messages.create(model="auto", max_tokens=3, messages=[{"role": "user", "content": "hi"}])
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == 3


def test_a_body_too_large_is_anthropics_request_too_large(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, server={"max_request_bytes": 2000}))
    r = gw.http.post("/v1/messages", json={"model": "auto", "max_tokens": 5,
                                           "messages": [{"role": "user", "content": "x" * 5000}]})
    assert r.status_code == 413
    assert r.json() == {"type": "error", "error": {"type": "request_too_large", "message": r.json()["error"]["message"]}}
    assert "2000" in r.json()["error"]["message"]
