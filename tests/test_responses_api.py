"""The OpenAI Responses API (`/v1/responses`) driven by the official `openai` SDK's Responses client
against a real gateway and the simulated upstream (what the upstream received is read back from
`/sim/last/<model>`), and the response store (memory and Redis) behind `previous_response_id`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import openai
import orjson
import pytest
import redis

from sigroute.gateway.response_store import MemoryResponseStore, RedisResponseStore, ResponseStoreUnavailable
from tests.conftest import ManualClock, base_policy
from tests.redis_cluster import (clean_cluster_url, clean_valkey_cluster_url, clean_valkey_url,  # noqa: F401
                                 cluster, valkey_cluster, valkey_url)

TOOLS = [{"type": "function", "name": "lookup", "description": "look something up",
          "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}]
KEY_A, KEY_B = "sk-tenant-a", "sk-tenant-b"


def keyed(sim, **overrides):
    keys = [{"key_sha256": hashlib.sha256(k.encode()).hexdigest(), "tenant": t} for k, t in ((KEY_A, "acme"),
                                                                                           (KEY_B, "globex"))]
    return base_policy(sim, auth={"keys": keys}, **overrides)


def sync_client(url: str):
    """A plain redis-py client for checking keys: one Redis, or a cluster (redis+cluster://host:port,...)."""
    if url.startswith("redis+cluster://"):
        rest = url.removeprefix("redis+cluster://")
        password = None
        if "@" in rest:
            secret, rest = rest.rsplit("@", 1)
            password = secret.split(":", 1)[-1] or None
        host, port = rest.split(",")[0].rsplit(":", 1)
        return redis.RedisCluster(host=host, port=int(port), password=password)
    return redis.Redis.from_url(url)


@pytest.fixture(params=["memory", "redis", "cluster"])
def store_url(request):
    """Each stored-response test runs on the memory store, on one Redis and on a Redis Cluster."""
    if request.param == "memory":
        return None
    return request.getfixturevalue("clean_redis_url" if request.param == "redis" else "clean_cluster_url")


def events_of(stream) -> list:
    return [event for event in stream]


# --------------------------------------------------------------------------------------------
# create, streamed and not

def test_create_with_a_string_input(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    raw = gw.client().responses.with_raw_response.create(model="auto", input="hello there",
                                                         instructions="answer briefly", max_output_tokens=50,
                                                         temperature=0.3, metadata={"team": "search"})
    response = raw.parse()
    assert response.object == "response" and response.status == "completed"
    assert response.id == "resp_" + raw.headers["x-sigroute-request-id"].removeprefix("req_")
    assert raw.headers["x-sigroute-decision"] == "default" and raw.headers["x-sigroute-model"] == "alpha"
    assert response.model == "alpha"
    assert response.output[0].type == "message" and response.output[0].role == "assistant"
    assert response.output_text and response.output_text == response.output[0].content[0].text
    assert response.instructions == "answer briefly" and response.metadata == {"team": "search"}
    usage = response.usage
    assert usage.output_tokens == 8 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    upstream = sim.last_body("alpha")
    assert upstream["messages"] == [{"role": "system", "content": "answer briefly"},
                                    {"role": "user", "content": "hello there"}]
    assert upstream["max_tokens"] == 50 and upstream["temperature"] == 0.3
    assert upstream["metadata"] == {"team": "search"}


def test_create_with_items_input(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    response = gw.client().responses.create(model="auto", input=[
        {"role": "developer", "content": "you are terse"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first question"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "first answer"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "look:"},
                                     {"type": "input_image", "image_url": "https://example.com/cat.png"}]}])
    assert response.status == "completed" and response.output_text
    assert sim.last_body("alpha")["messages"] == [
        {"role": "developer", "content": "you are terse"},
        {"role": "user", "content": [{"type": "text", "text": "first question"}]},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "text", "text": "look:"},
                                     {"type": "image_url", "image_url": {"url": "https://example.com/cat.png",
                                                                         "detail": "auto"}}]}]


def test_stream_with_create_gives_the_responses_event_sequence(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    events = events_of(gw.client().responses.create(model="auto", input="stream this", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert done.status == "completed" and done.output_text == text and done.usage.output_tokens == 8
    assert sim.last_body("alpha")["stream"] is True


def test_stream_helper_and_the_streamed_answer_is_stored(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    client = gw.client()
    with client.responses.stream(model="auto", input="stream with the helper") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and final.status == "completed"
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_a_length_limited_answer_is_incomplete(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    response = gw.client().responses.create(model="auto", input="a long answer", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    streamed = events_of(gw.client().responses.create(model="auto", input="a long answer", max_output_tokens=3,
                                                      stream=True))
    assert streamed[-1].type == "response.incomplete"
    assert streamed[-1].response.incomplete_details.reason == "max_output_tokens"


def test_a_broken_stream_ends_with_an_error_event_and_response_failed(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]))
    sim.faults("slow", break_stream_rate=1.0)
    events = events_of(gw.client().responses.create(model="auto", input="tell me a story", stream=True))
    types = [e.type for e in events]
    assert "response.output_text.delta" in types, "some text arrives before the break"
    assert types[-2:] == ["error", "response.failed"] and "response.completed" not in types
    assert events[-2].code == "stream_broken" and "mid-stream" in events[-2].message
    assert events[-1].response.status == "failed" and events[-1].response.error.code == "server_error"


# --------------------------------------------------------------------------------------------
# stored responses: retrieve, delete, continue; memory and Redis

def test_retrieve_delete_and_input_items(sim, gateway_factory, store_url):
    gw = gateway_factory(base_policy(sim), redis_url=store_url)
    client = gw.client()
    created = client.responses.create(model="auto", input="remember me", instructions="be kind")
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == created.output_text
    assert fetched.instructions == "be kind" and fetched.usage.output_tokens == created.usage.output_tokens
    items = list(client.responses.input_items.list(created.id))
    assert len(items) == 1 and items[0].role == "user" and items[0].content[0].text == "remember me"
    client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.retrieve(created.id)
    assert err.value.body["code"] == "response_not_found" and created.id in err.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(created.id)


def test_input_items_pages_in_either_order(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    client = gw.client()
    created = client.responses.create(model="auto", input=[{"role": "user", "content": f"part {i}"}
                                                           for i in range(5)])
    newest_first = [i.content[0].text for i in client.responses.input_items.list(created.id, limit=2)]
    assert newest_first == [f"part {i}" for i in (4, 3, 2, 1, 0)]   # the SDK follows `after` across pages
    oldest_first = client.responses.input_items.list(created.id, order="asc", limit=3)
    assert [i.content[0].text for i in oldest_first.data] == ["part 0", "part 1", "part 2"] and oldest_first.has_more


def test_a_three_turn_conversation_sends_the_whole_history_upstream(sim, gateway_factory, store_url):
    gw = gateway_factory(base_policy(sim), redis_url=store_url)
    client = gw.client()
    first = client.responses.create(model="auto", input="turn one", instructions="first instructions")
    second = client.responses.create(model="auto", input="turn two", previous_response_id=first.id)
    with client.responses.stream(model="auto", input="turn three", previous_response_id=second.id,
                                 instructions="third instructions") as stream:
        third = stream.get_final_response()
    assert third.previous_response_id == second.id and second.previous_response_id == first.id
    assert sim.last_body("alpha")["messages"] == [   # instructions are the request's own, not inherited
        {"role": "system", "content": "third instructions"},
        {"role": "user", "content": "turn one"}, {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "turn two"}, {"role": "assistant", "content": second.output_text},
        {"role": "user", "content": "turn three"}]
    fourth = client.responses.create(model="auto", input="turn four", previous_response_id=third.id)
    assert fourth.status == "completed"
    assert sim.last_body("alpha")["messages"][-2:] == [{"role": "assistant", "content": third.output_text},
                                                      {"role": "user", "content": "turn four"}]


def test_another_tenants_response_is_not_found(sim, gateway_factory, store_url):
    gw = gateway_factory(keyed(sim), redis_url=store_url)
    mine, theirs = gw.client(KEY_A), gw.client(KEY_B)
    created = mine.responses.create(model="auto", input="private to acme")
    for attempt in (lambda: theirs.responses.retrieve(created.id),
                    lambda: theirs.responses.create(model="auto", input="hi", previous_response_id=created.id),
                    lambda: theirs.responses.delete(created.id),
                    lambda: list(theirs.responses.input_items.list(created.id))):
        with pytest.raises(openai.NotFoundError) as err:
            attempt()
        assert err.value.body["type"] == "invalid_request_error" and err.value.body["code"] == "response_not_found"
    assert mine.responses.retrieve(created.id).output_text == created.output_text   # still there for acme
    calls = sim.calls("alpha")
    with pytest.raises(openai.NotFoundError) as err:
        theirs.responses.create(model="auto", input="hi", previous_response_id=created.id)
    assert err.value.body["param"] == "previous_response_id"
    assert sim.calls("alpha") == calls   # refused before any model call


def test_store_false_is_not_kept(sim, gateway_factory, store_url):
    gw = gateway_factory(base_policy(sim), redis_url=store_url)
    client = gw.client()
    for stream in (False, True):
        if stream:
            with client.responses.stream(model="auto", input="forget me", store=False) as s:
                response = s.get_final_response()
        else:
            response = client.responses.create(model="auto", input="forget me", store=False)
        assert response.store is False and response.output_text
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model="auto", input="continue", previous_response_id=response.id)


# --------------------------------------------------------------------------------------------
# tools and structured output

@pytest.mark.parametrize("stream", [False, True])
def test_function_tools_round_trip(sim, gateway_factory, stream):
    gw = gateway_factory(base_policy(sim))
    client = gw.client()

    def create(**body):
        if not stream:
            return client.responses.create(model="auto", tools=TOOLS, **body)
        with client.responses.stream(model="auto", tools=TOOLS, **body) as s:
            return s.get_final_response()

    asked = create(input="weather in Paris [[sim:tool]]", tool_choice="auto")
    [call] = asked.output
    assert call.type == "function_call" and call.name == "lookup" and call.call_id
    assert json.loads(call.arguments) == {"text": "weather in Paris"}
    upstream = sim.last_body("alpha")
    assert upstream["tools"] == [{"type": "function", "function": {
        "name": "lookup", "description": "look something up", "parameters": TOOLS[0]["parameters"]}}]
    assert upstream["tool_choice"] == "auto" and upstream["parallel_tool_calls"] is True
    answered = create(previous_response_id=asked.id,
                      input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}])
    assert answered.output_text == "Tool said: sunny"
    assert sim.last_body("alpha")["messages"] == [
        {"role": "user", "content": "weather in Paris [[sim:tool]]"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.call_id, "type": "function", "function": {"name": "lookup", "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": "sunny"}]


def test_streamed_tool_call_events(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    events = events_of(gw.client().responses.create(model="auto", input="find [[sim:tool]] cats", tools=TOOLS,
                                                    stream=True))
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.function_call_arguments.delta", "response.function_call_arguments.delta",
                     "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == events[5].arguments == events[-1].response.output[0].arguments


def test_function_call_items_in_the_input_become_tool_calls(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    response = gw.client().responses.create(model="auto", tools=TOOLS, tool_choice={"type": "function",
                                                                                    "name": "lookup"}, input=[
        {"role": "user", "content": "two lookups"},
        {"type": "function_call", "call_id": "c1", "name": "lookup", "arguments": "{\"text\": \"a\"}"},
        {"type": "function_call", "call_id": "c2", "name": "lookup", "arguments": "{\"text\": \"b\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "A"},
        {"type": "function_call_output", "call_id": "c2", "output": "B"}])
    assert response.output_text == "Tool said: B"
    upstream = sim.last_body("alpha")
    assert upstream["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert [m["role"] for m in upstream["messages"]] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in upstream["messages"][1]["tool_calls"]] == ["c1", "c2"]


def test_text_format_reaches_upstream_as_response_format(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    gw.client().responses.create(model="auto", input="a city", text={"format": {
        "type": "json_schema", "name": "place", "schema": schema, "strict": True}})
    assert sim.last_body("alpha")["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "place", "schema": schema, "strict": True}}
    response = gw.client().responses.create(model="auto", input="any json", text={"format": {"type": "json_object"}})
    assert sim.last_body("alpha")["response_format"] == {"type": "json_object"}
    assert response.text.format.type == "json_object"


@pytest.mark.parametrize("body, param", [
    ({"model": "auto"}, "input"),
    ({"input": "hi"}, "model"),
    ({"model": "auto", "input": []}, "input"),
    ({"model": "auto", "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ({"model": "auto", "input": [{"role": "user", "content": []}]}, "input[0].content"),
    ({"model": "auto", "input": [{"role": "user", "content": [{"type": "input_text"}]}]}, "input[0].content[0].text"),
    ({"model": "auto", "input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
    ({"model": "auto", "input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"model": "auto", "input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"model": "auto", "input": [{"type": "function_call_output", "call_id": "c", "output": 3}]}, "input[0].output"),
    ({"model": "auto", "input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "auto", "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "auto", "input": "hi", "tool_choice": "required"}, "tool_choice"),
    ({"model": "auto", "input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}}, "text.format.name"),
    ({"model": "auto", "input": "hi", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "auto", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ({"model": "auto", "input": "hi", "temperature": 3}, "temperature"),
    ({"model": "auto", "input": "hi", "store": "yes"}, "store"),
    ({"model": "auto", "input": "hi", "metadata": {"n": 1}}, "metadata.n"),
    ({"model": "auto", "input": "hi", "background": True}, "background"),
    ({"model": "auto", "input": "hi", "previous_response_id": ""}, "previous_response_id"),
])
def test_bad_bodies_get_a_precise_400(sim, gateway_factory, body, param):
    gw = gateway_factory(base_policy(sim))
    r = gw.http.post("/v1/responses", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and error["message"]
    assert sim.calls("alpha") == 0


def test_non_json_and_too_many_items_are_refused(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim, server={"max_messages": 3, "open_without_auth": ["explain"]}))
    assert gw.http.post("/v1/responses", content=b"{nope").json()["error"]["code"] == "invalid_json"
    r = gw.http.post("/v1/responses", json={"model": "auto", "input": [{"role": "user", "content": "x"}] * 4})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    client = gw.client()
    first = client.responses.create(model="auto", input="one")      # 2 messages stored
    with pytest.raises(openai.BadRequestError) as err:               # 2 + 2 > 3
        client.responses.create(model="auto", input="two", previous_response_id=first.id, instructions="x")
    assert err.value.body["param"] == "previous_response_id" and "max_messages" in err.value.body["message"]


# --------------------------------------------------------------------------------------------
# the store itself, the same tests on memory and Redis

SERVER_URLS = {"redis": "clean_redis_url", "valkey": "clean_valkey_url", "cluster": "clean_cluster_url",
               "valkey-cluster": "clean_valkey_cluster_url"}


@pytest.fixture(params=["memory", *SERVER_URLS])
def store(request):
    """The store tests run on memory, one redis-server, one valkey-server, and a 3+3 cluster of each
    (tests/redis_cluster.py)."""
    if request.param == "memory":
        store = MemoryResponseStore(clock=ManualClock())
    else:
        # what the store does, not how fast: a busy cluster node may take longer than the 0.5 s default
        store = RedisResponseStore(request.getfixturevalue(SERVER_URLS[request.param]), socket_timeout=5.0,
                                   connect_timeout=5.0)
    yield store
    asyncio.run(store.aclose())


def test_store_keeps_records_per_tenant(store):
    async def scenario():
        await store.put("acme", "resp_1", b"one", 60)
        assert await store.get("acme", "resp_1") == b"one"
        assert await store.get("globex", "resp_1") is None
        assert not await store.delete("globex", "resp_1")
        await store.put("acme", "resp_1", b"replaced", 60)
        assert await store.get("acme", "resp_1") == b"replaced"
        assert await store.delete("acme", "resp_1")
        assert await store.get("acme", "resp_1") is None
        assert not await store.delete("acme", "resp_1")
        await store.aclose()

    asyncio.run(scenario())


def test_store_records_expire(store):
    async def put():
        await store.put("acme", "resp_short", b"x", 0.3)
        await store.put("acme", "resp_long", b"y", 3600)
        await store.aclose()

    asyncio.run(put())
    if isinstance(store, MemoryResponseStore):
        store.clock.advance(0.5)
    else:   # Redis expires it natively: poll (a generous bound, not a timing assertion)
        deadline = time.monotonic() + 10
        client = sync_client(store.url)
        while client.exists(store.key("acme", "resp_short")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0 < client.pttl(store.key("acme", "resp_long")) <= 3600 * 1000
        client.close()

    async def get():
        assert await store.get("acme", "resp_short") is None
        assert await store.get("acme", "resp_long") == b"y"
        await store.aclose()

    asyncio.run(get())


def test_memory_store_is_bounded_oldest_first():
    async def scenario():
        store = MemoryResponseStore(max_entries=3, max_bytes=10)
        for i in range(4):
            await store.put("t", f"r{i}", b"ab", 60)
        assert len(store) == 3 and await store.get("t", "r0") is None and await store.get("t", "r3") == b"ab"
        await store.put("t", "big", b"1234567", 60)      # 3 entries, and 6 + 7 > 10: the oldest go until it fits
        assert await store.get("t", "r1") is None and await store.get("t", "r2") is None
        assert await store.get("t", "r3") == b"ab" and await store.get("t", "big") == b"1234567"
        await store.put("t", "huge", b"x" * 11, 60)      # larger than the whole store: not kept
        assert await store.get("t", "huge") is None and await store.get("t", "big") == b"1234567"

    asyncio.run(scenario())


def test_redis_store_keys_are_hash_tagged_per_tenant_with_a_ttl(sim, gateway_factory, clean_redis_url):
    gw = gateway_factory(base_policy(sim, server={"responses_ttl": "1h", "open_without_auth": ["explain"]}),
                         redis_url=clean_redis_url)
    created = gw.client().responses.create(model="auto", input="where am I kept?")
    client = redis.Redis.from_url(clean_redis_url)
    key = f"sigroute:responses:{{default}}:{created.id}"
    assert client.exists(key) and 0 < client.pttl(key) <= 3600 * 1000
    assert orjson.loads(client.get(key))["response"]["id"] == created.id
    client.close()


def test_redis_store_unreachable_is_a_clear_error():
    async def scenario():
        store = RedisResponseStore("redis://:secret@127.0.0.1:1/0")
        with pytest.raises(ResponseStoreUnavailable) as err:
            await store.get("acme", "resp_1")
        assert "127.0.0.1:1" in str(err.value) and "secret" not in str(err.value)
        await store.aclose()

    asyncio.run(scenario())


def test_two_gateways_on_one_redis_share_conversations(sim, gateway_factory, clean_redis_url):
    one = gateway_factory(base_policy(sim), redis_url=clean_redis_url)
    two = gateway_factory(base_policy(sim), redis_url=clean_redis_url)
    first = one.client().responses.create(model="auto", input="started on one")
    second = two.client().responses.create(model="auto", input="continued on two", previous_response_id=first.id)
    assert sim.last_body("alpha")["messages"][:2] == [{"role": "user", "content": "started on one"},
                                                      {"role": "assistant", "content": first.output_text}]
    assert one.client().responses.retrieve(second.id).previous_response_id == first.id
    two.client().responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        one.client().responses.retrieve(first.id)


def test_stored_responses_expire_after_the_policy_ttl(sim, gateway_factory, store_url):
    gw = gateway_factory(base_policy(sim, server={"responses_ttl": 1, "open_without_auth": ["explain"]}),
                         redis_url=store_url)
    store = gw.app.state.responses.store
    if isinstance(store, MemoryResponseStore):
        store.clock = ManualClock()
    client = gw.client()
    created = client.responses.create(model="auto", input="short-lived")
    assert client.responses.retrieve(created.id).id == created.id
    if isinstance(store, MemoryResponseStore):
        store.clock.advance(1.5)
    else:
        probe = sync_client(store_url)
        deadline = time.monotonic() + 10
        while probe.exists(store.key("default", created.id)) and time.monotonic() < deadline:
            time.sleep(0.05)
        probe.close()
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="auto", input="too late", previous_response_id=created.id)


def test_an_unreachable_redis_store_still_answers_and_says_what_it_cannot_do(sim, gateway_factory):
    from tests.conftest import free_port

    gw = gateway_factory(base_policy(sim), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    client = gw.client()
    answered = client.responses.create(model="auto", input="answered, not stored")   # the answer still comes
    assert answered.output_text
    for attempt in (lambda: client.responses.retrieve(answered.id),
                    lambda: client.responses.create(model="auto", input="more", previous_response_id=answered.id)):
        with pytest.raises(openai.InternalServerError) as err:
            attempt()
        assert err.value.status_code == 503 and err.value.body["code"] == "response_store_unavailable"


def test_stored_responses_need_a_key_when_auth_is_on(sim, gateway_factory):
    gw = gateway_factory(keyed(sim))
    created = gw.client(KEY_A).responses.create(model="auto", input="mine")
    assert gw.http.get(f"/v1/responses/{created.id}").status_code == 401
    assert gw.http.delete(f"/v1/responses/{created.id}").status_code == 401
    assert gw.http.post("/v1/responses", json={"model": "auto", "input": "hi"}).status_code == 401
    assert gw.http.get(f"/v1/responses/{created.id}", headers={"authorization": f"Bearer {KEY_A}"}).status_code == 200


def test_hostile_bodies_get_a_clear_error_even_when_no_model_is_called(sim, gateway_factory):
    """A body nested deeper than the answer can echo is refused up front (a plugin answering without a
    model would otherwise fail encoding the Response); huge and deep bodies cost a 4xx, not a 500."""
    from tests.test_plugins import with_plugins

    gw = gateway_factory(with_plugins(sim, [{"fast_response": {"message": "Closed today."}}]))
    nested: object = {"type": "string"}
    for _ in range(300):
        nested = {"type": "array", "items": nested}
    for body, param in (({"tools": [{"type": "function", "name": "f", "parameters": nested}]}, "tools"),
                        ({"text": {"format": {"type": "json_schema", "name": "s", "schema": nested}}}, "text")):
        r = gw.http.post("/v1/responses", json={"model": "auto", "input": "hi", **body})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text[:300]
    huge = gw.http.post("/v1/responses", content=b'{"model": "auto", "input": "' + b"x" * (5 * 2**20) + b'"}')
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "request_too_large"
    too_deep = b'{"model": "auto", "input": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    deep = gw.http.post("/v1/responses", content=too_deep)
    assert deep.status_code == 400 and deep.json()["error"]["code"] == "invalid_json"
    assert gw.client().responses.create(model="auto", input="still serving").output_text == "Closed today."
    assert sim.stats()["total_calls"] == 0


# --------------------------------------------------------------------------------------------
# an upstream that says something and then calls two tools at once (the sim calls one)

class TalkThenCallTwoTools:
    """A chat-completions upstream answering "Let me check." plus two parallel tool calls; it keeps
    the bodies it received."""

    TEXT = "Let me check."
    CALLS = [("call_a", "lookup", '{"text": "Paris"}'), ("call_b", "lookup", '{"text": "Rome"}')]

    def __init__(self):
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, StreamingResponse
        from starlette.routing import Route

        from sigroute.gateway.serving import ServerThread

        self.bodies: list[dict] = []

        async def chat(request):
            body = await request.json()
            self.bodies.append(body)
            base = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
            if not body.get("stream"):
                return JSONResponse({**base, "object": "chat.completion", "choices": [{
                    "index": 0, "finish_reason": "tool_calls", "message": {
                        "role": "assistant", "content": self.TEXT, "tool_calls": [
                            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                            for i, n, a in self.CALLS]}}],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}})

            def event(delta=None, finish=None, usage=None):
                chunk = {**base, "choices": [] if usage else [{"index": 0, "delta": delta or {},
                                                               "finish_reason": finish}]}
                if usage:
                    chunk["usage"] = usage
                return b"data: " + orjson.dumps(chunk) + b"\n\n"

            async def events():
                yield event({"role": "assistant", "content": ""})
                yield event({"content": "Let me "})
                yield event({"content": "check."})
                for index, (call_id, name, arguments) in enumerate(self.CALLS):
                    yield event({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                                 "function": {"name": name, "arguments": arguments[:5]}}]})
                    yield event({"tool_calls": [{"index": index, "function": {"arguments": arguments[5:]}}]})
                yield event(finish="tool_calls")
                yield event(usage={"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16})
                yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        self.server = ServerThread(Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])]))


@pytest.fixture
def two_tools():
    upstream = TalkThenCallTwoTools()
    upstream.server.start()
    yield upstream
    upstream.server.stop()


@pytest.mark.parametrize("stream", [False, True])
def test_text_and_parallel_tool_calls_become_three_output_items(two_tools, gateway_factory, stream):
    gw = gateway_factory({"version": 1, "models": {"agent": {"provider": "openai/agent",
                                                             "api_base": two_tools.server.url + "/v1"}},
                          "decisions": [{"name": "default", "models": ["agent"]}], "upstream": {"retries": 0}})
    client = gw.client()
    if stream:
        with client.responses.stream(model="auto", input="weather in two cities?", tools=TOOLS) as s:
            events = list(s)
            response = s.get_final_response()
        types = [e.type for e in events]
        assert types.count("response.output_item.added") == 3 and types.count("response.output_item.done") == 3
        assert types.count("response.function_call_arguments.done") == 2
        assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Let me check."
    else:
        response = client.responses.create(model="auto", input="weather in two cities?", tools=TOOLS)
    message, *calls = response.output
    assert message.type == "message" and response.output_text == "Let me check."
    assert [(c.type, c.call_id, c.name, c.arguments) for c in calls] == [
        ("function_call", i, n, a) for i, n, a in TalkThenCallTwoTools.CALLS]
    assert len({item.id for item in response.output}) == 3
    assert response.usage.total_tokens == 16
    client.responses.create(model="auto", previous_response_id=response.id, tools=TOOLS, input=[
        {"type": "function_call_output", "call_id": "call_a", "output": "sunny"},
        {"type": "function_call_output", "call_id": "call_b", "output": "rainy"}])
    assert two_tools.bodies[-1]["messages"][1:] == [
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
            for i, n, a in TalkThenCallTwoTools.CALLS]},
        {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_b", "content": "rainy"}]
