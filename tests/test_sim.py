"""The simulated upstream (gateway/sim.py), exercised over real HTTP on loopback."""

from __future__ import annotations

import collections
import json
import time

import httpx
import openai
import pytest

from sigroute.gateway.serving import ServerThread
from sigroute.gateway.sim import (
    CATEGORIES,
    DEMO_CONFIG_PATH,
    SimConfigError,
    create_sim_app,
    extract_answer_letter,
    format_question,
    load_question_bank,
    load_sim_config,
)

CONFIG = {
    "seed": 1,
    "models": {
        "fast": {"completion_tokens": 12},
        "paced": {"ttft_ms": 30, "tokens_per_s": 400, "completion_tokens": 20},
        "always-right": {"accuracy": {"default": 1.0}},
        "always-wrong": {"accuracy": {"default": 0.0}},
        "coin": {"accuracy": {"default": 0.5}},
        "mathy": {"accuracy": {"default": 0.0, "math": 1.0}},
        "org/slashed": {"completion_tokens": 3},
    },
}
HELLO = [{"role": "user", "content": "Say something nice about routers."}]


@pytest.fixture(scope="module")
def server():
    with ServerThread(create_sim_app(CONFIG)) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(autouse=True)
def fresh(http):
    assert http.post("/sim/reset", params={"config": "true"}).status_code == 200


def stats(http, model=None):
    data = http.get("/sim/stats").json()
    return data[model] if model else data


def wait_for(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def assert_openai_error(response, status):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


# --- plain and streamed completions ----------------------------------------------------------


def test_models_list(client, http):
    assert [m.id for m in client.models.list()] == list(CONFIG["models"])
    assert http.get("/v1/models/org/slashed").json()["id"] == "org/slashed"
    assert_openai_error(http.get("/v1/models/nope"), 404)
    assert http.get("/health").json() == {"status": "ok"}


def test_non_stream_completion(client):
    raw = client.chat.completions.with_raw_response.create(model="fast", messages=HELLO)
    assert raw.headers["x-sim-model"] == "fast"
    r = raw.parse()
    assert r.object == "chat.completion" and r.model == "fast" and r.id
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert len(choice.message.content.split()) == 12
    chars = sum(len(m["content"]) for m in HELLO)
    assert r.usage.prompt_tokens == (chars + 3) // 4
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    again = client.chat.completions.create(model="fast", messages=HELLO)
    assert again.choices[0].message.content == choice.message.content  # deterministic filler


def test_stream_completion(client):
    plain = client.chat.completions.create(model="paced", messages=HELLO).choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="paced", messages=HELLO, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.model == "paced" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    first = chunks[0].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    content_chunks = [c for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) > 3  # a few tokens per chunk
    assert "".join(c.choices[0].delta.content for c in content_chunks) == plain
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finals) == 1 and finals[0].choices[0].finish_reason == "stop"
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.completion_tokens == 20
    assert usage.usage.total_tokens == usage.usage.prompt_tokens + 20


def test_stream_wire_format(http):
    body = {"model": "fast", "messages": HELLO, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-sim-model"] == "fast"
        text = r.read().decode()
    events = text.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert all("usage" not in p for p in payloads)  # no usage chunk unless asked for


def test_max_tokens_truncates(client):
    r = client.chat.completions.create(model="fast", messages=HELLO, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert len(r.choices[0].message.content.split()) == 5
    assert r.usage.completion_tokens == 5
    r = client.chat.completions.create(model="fast", messages=HELLO, max_completion_tokens=7)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 7
    r = client.chat.completions.create(model="fast", messages=HELLO, max_tokens=100)
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 12
    chunks = list(client.chat.completions.create(model="fast", messages=HELLO, max_tokens=4,
                                                 stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 4
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"


def test_n_choices(client):
    r = client.chat.completions.create(model="fast", messages=HELLO, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert r.usage.completion_tokens == 36
    chunks = list(client.chat.completions.create(model="fast", messages=HELLO, n=2, stream=True))
    texts = collections.defaultdict(str)
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] += choice.delta.content or ""
    assert len(texts) == 2 and all(len(t.split()) == 12 for t in texts.values())


def test_tools_and_content_parts_get_text_answers(client):
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    r = client.chat.completions.create(model="fast", messages=HELLO, tools=tools)
    assert r.choices[0].message.content and r.choices[0].finish_reason == "stop"
    parts = [{"role": "user", "content": [{"type": "text", "text": "first [[sim:echo]]"},
                                          {"type": "text", "text": "second"}]}]
    r = client.chat.completions.create(model="fast", messages=parts)
    assert r.choices[0].message.content == "first [[sim:echo]]\nsecond"


def test_latency_is_simulated(client):
    # Lower bounds only: ttft 30 ms + 20 tokens at 400 tok/s = 80 ms.
    t0 = time.perf_counter()
    client.chat.completions.create(model="paced", messages=HELLO)
    assert time.perf_counter() - t0 >= 0.075
    t0 = time.perf_counter()
    stream = client.chat.completions.create(model="paced", messages=HELLO, stream=True)
    next(iter(stream))
    assert time.perf_counter() - t0 >= 0.025
    for _ in stream:
        pass
    assert time.perf_counter() - t0 >= 0.075


# --- errors ------------------------------------------------------------------------------------


def test_unknown_model_is_404(client, http):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-nope", messages=HELLO)
    error = assert_openai_error(
        http.post("/v1/chat/completions", json={"model": "gpt-nope", "messages": HELLO}), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "fast" in error["message"]  # lists the configured models


@pytest.mark.parametrize("body, param", [
    (b"{not json", None),
    (b"[1, 2]", None),
    (json.dumps({"model": "fast"}).encode(), "messages"),
    (json.dumps({"model": "fast", "messages": []}).encode(), "messages"),
    (json.dumps({"messages": HELLO}).encode(), "model"),
    (json.dumps({"model": "fast", "messages": HELLO, "n": 0}).encode(), "n"),
    (json.dumps({"model": "fast", "messages": HELLO, "max_tokens": 0}).encode(), "max_tokens"),
    (json.dumps({"model": "fast", "messages": HELLO, "stream": "yes"}).encode(), "stream"),
])
def test_malformed_requests_are_400(http, body, param):
    response = http.post("/v1/chat/completions", content=body,
                         headers={"content-type": "application/json"})
    assert assert_openai_error(response, 400)["param"] == param


def test_unknown_path_and_method_are_openai_shaped(http):
    assert_openai_error(http.get("/v2/whatever"), 404)
    assert_openai_error(http.get("/v1/chat/completions"), 405)


# --- faults ------------------------------------------------------------------------------------


def test_error_fault_then_recovery(client, http):
    assert http.put("/sim/models/fast/faults", json={"error_rate": 1.0}).status_code == 200
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="fast", messages=HELLO)
    response = http.post("/v1/chat/completions", json={"model": "fast", "messages": HELLO})
    assert assert_openai_error(response, 500)["type"] == "server_error"
    assert response.headers["x-sim-model"] == "fast"
    assert http.put("/sim/models/fast/faults", json={}).json()["error_rate"] == 0.0
    assert client.chat.completions.create(model="fast", messages=HELLO).choices[0].message.content
    s = stats(http, "fast")
    assert (s["calls"], s["errors"], s["completed"]) == (3, 2, 1)


def test_rate_limit_fault(client, http):
    http.put("/sim/models/fast/faults", json={"rate_limit_rate": 1.0})
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="fast", messages=HELLO)
    assert caught.value.response.headers["retry-after"] == "1"
    assert stats(http, "fast")["rate_limited"] == 1


def test_break_stream_fault(client, http):
    http.put("/sim/models/paced/faults", json={"break_stream_rate": 1.0})
    received = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        for chunk in client.chat.completions.create(model="paced", messages=HELLO, stream=True):
            received.append(chunk)
    assert 1 <= len(received) < 8  # the role chunk and about half the content, then nothing
    assert not any(c.choices and c.choices[0].finish_reason for c in received)
    # Non-streamed requests are unaffected by break_stream_rate.
    assert client.chat.completions.create(model="paced", messages=HELLO).choices[0].message.content
    s = stats(http, "paced")
    assert (s["broken_streams"], s["completed"], s["streamed"]) == (1, 1, 1)


def test_timeout_fault_counts_cancelled(http, server):
    http.put("/sim/models/fast/faults", json={"timeout_rate": 1.0})
    t0 = time.perf_counter()
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/chat/completions", json={"model": "fast", "messages": HELLO},
                   timeout=0.3)
    assert time.perf_counter() - t0 < 2
    assert wait_for(lambda: stats(http, "fast")["cancelled"] == 1)
    s = stats(http, "fast")
    assert (s["timeouts"], s["completed"]) == (1, 0)


def test_client_leaving_early_is_cancelled(http, server):
    http.put("/sim/models/paced", json={"ttft_ms": 5000})
    with pytest.raises(httpx.TimeoutException):
        httpx.post(server.url + "/v1/chat/completions", json={"model": "paced", "messages": HELLO},
                   timeout=0.2)
    assert wait_for(lambda: stats(http, "paced")["cancelled"] == 1)
    # Mid-stream: 40 tokens at 20 tok/s take 2 s; read one chunk, then hang up.
    http.put("/sim/models/paced", json={"ttft_ms": 0, "tokens_per_s": 20, "completion_tokens": 40})
    body = {"model": "paced", "messages": HELLO, "stream": True}
    with httpx.Client(base_url=server.url) as own:
        with own.stream("POST", "/v1/chat/completions", json=body) as r:
            next(r.iter_lines())
    assert wait_for(lambda: stats(http, "paced")["cancelled"] == 2)
    assert stats(http, "paced")["completed"] == 0


def test_runtime_settings_validation(http):
    assert_openai_error(http.put("/sim/models/fast/faults", json={"error_rate": 2}), 400)
    error = assert_openai_error(
        http.put("/sim/models/fast/faults", json={"error_rate": 0.6, "timeout_rate": 0.6}), 400)
    assert "at most 1" in error["message"]
    assert_openai_error(http.put("/sim/models/fast/faults", json={"eror_rate": 1}), 400)
    assert_openai_error(http.put("/sim/models/nope/faults", json={}), 404)
    assert_openai_error(http.put("/sim/models/fast", json={"ttft_ms": -1}), 400)
    assert_openai_error(http.put("/sim/models/fast", content=b"nope"), 400)
    updated = http.put("/sim/models/fast", json={"ttft_ms": 5}).json()
    assert updated["ttft_ms"] == 5 and updated["completion_tokens"] == 12  # partial update
    assert http.get("/sim/models/fast").json() == updated
    http.put("/sim/models/org/slashed/faults", json={"error_rate": 1})
    assert http.get("/sim/models/org/slashed").json()["faults"]["error_rate"] == 1
    http.post("/sim/reset", params={"config": "true"})
    assert http.get("/sim/models/fast").json()["ttft_ms"] == 0


def test_fault_rates_are_statistically_right(http):
    http.put("/sim/models/fast/faults", json={"error_rate": 0.3, "rate_limit_rate": 0.2})
    codes = collections.Counter(
        http.post("/v1/chat/completions", json={"model": "fast", "messages": HELLO}).status_code
        for _ in range(300))
    assert 60 <= codes[500] <= 120 and 35 <= codes[429] <= 85
    assert codes[200] == 300 - codes[500] - codes[429]


# --- content -----------------------------------------------------------------------------------


def ask_all(http, model, questions):
    letters = []
    for q in questions:
        body = {"model": model, "messages": [{"role": "user", "content": format_question(q)}]}
        content = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        assert content.startswith("The answer is (")
        letters.append(extract_answer_letter(content))
    return letters


def test_accuracy_on_question_bank(http):
    bank = load_question_bank()
    assert ask_all(http, "always-right", bank) == [q.answer for q in bank]
    wrong = ask_all(http, "always-wrong", bank)
    for q, letter in zip(bank, wrong):
        assert letter != q.answer and letter in q.letters
    assert set(wrong) >= {"A", "B", "C", "D"}  # wrong letters are spread out
    mathy = ask_all(http, "mathy", bank)
    for q, letter in zip(bank, mathy):
        assert (letter == q.answer) == (q.category == "math")
    coin = ask_all(http, "coin", bank * 3)
    share = sum(letter == q.answer for q, letter in zip(bank * 3, coin)) / len(coin)
    assert 0.35 <= share <= 0.65


def test_question_matching_is_robust(http):
    q = load_question_bank()[10]
    variants = [
        "Question: " + q.question.upper() + "\n(A) x (B) y (C) z (D) w\nThink step by step.",
        "  ".join(q.question.replace(",", " ").split()),
        format_question(q).replace("\n", " "),
    ]
    for text in variants:
        body = {"model": "always-right", "messages": [{"role": "user", "content": text}]}
        r = http.post("/v1/chat/completions", json=body).json()
        assert r["choices"][0]["message"]["content"] == f"The answer is ({q.answer})."
    body = {"model": "always-right", "messages": [{"role": "user", "content": q.question[:-12]}]}
    content = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    assert not content.startswith("The answer is")  # a partial stem is not a match


def test_echo_and_last_body(client, http):
    messages = [{"role": "system", "content": "You are a careful router."},
                {"role": "user", "content": "  repeat\n exactly [[sim:echo]]  "}]
    r = client.chat.completions.create(model="org/slashed", messages=messages, temperature=0.2)
    assert r.choices[0].message.content == "  repeat\n exactly [[sim:echo]]  "
    streamed = client.chat.completions.create(model="org/slashed", messages=messages, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) \
        == messages[1]["content"]
    last = http.get("/sim/last/org/slashed").json()
    assert last["messages"] == messages and last["stream"] is True
    headers = http.get("/sim/last_headers/org/slashed").json()
    assert headers["content-type"] == "application/json" and "openai" in headers["user-agent"].lower()
    for what in ("last", "last_headers"):
        assert assert_openai_error(http.get(f"/sim/{what}/fast"), 404)["code"] == "no_request"  # nothing received yet
        assert assert_openai_error(http.get(f"/sim/{what}/nope"), 404)["code"] == "model_not_found"


def test_stats_counting_and_reset(client, http):
    client.chat.completions.create(model="fast", messages=HELLO)
    list(client.chat.completions.create(model="fast", messages=HELLO, stream=True))
    client.chat.completions.create(model="coin", messages=HELLO)
    data = stats(http)
    assert data["fast"] == {"calls": 2, "streamed": 1, "completed": 2, "cancelled": 0, "errors": 0,
                            "rate_limited": 0, "timeouts": 0, "broken_streams": 0}
    assert data["coin"]["calls"] == 1 and data["total_calls"] == 3
    assert set(data) == set(CONFIG["models"]) | {"total_calls"}
    http.post("/sim/reset")
    assert stats(http)["total_calls"] == 0 and stats(http, "fast")["completed"] == 0


# --- configuration and question bank -----------------------------------------------------------


def test_config_loading(tmp_path):
    demo = load_sim_config(DEMO_CONFIG_PATH)
    assert 3 <= len(demo.models) <= 4
    for spec in demo.models.values():
        assert 10 <= spec.ttft_ms <= 80 and 100 <= spec.tokens_per_s <= 400
    assert load_sim_config(CONFIG).models["fast"].completion_tokens == 12
    assert load_sim_config(demo) is demo

    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m:\n    ttft_ms: 5\n    faults:\n      eror_rate: 0.1\n")
    with pytest.raises(SimConfigError) as caught:
        load_sim_config(bad)
    message = str(caught.value)
    assert "bad.yaml" in message and "models.m.faults.eror_rate" in message and "line 5" in message

    bad.write_text("models:\n  m: {accuracy: {maths: 0.5}}\n")
    with pytest.raises(SimConfigError, match="unknown category 'maths'"):
        load_sim_config(bad)
    bad.write_text("models:\n  m: [unclosed\n")
    with pytest.raises(SimConfigError, match="invalid YAML.*line"):
        load_sim_config(bad)
    with pytest.raises(SimConfigError, match="models"):
        load_sim_config({"models": {}})
    with pytest.raises(SimConfigError, match="tokens_per_s"):
        load_sim_config({"models": {"m": {"tokens_per_s": -1}}})
    with pytest.raises(SimConfigError, match="cannot read"):
        load_sim_config(tmp_path / "missing.yaml")


def test_question_bank_is_valid():
    bank = load_question_bank()
    assert 80 <= len(bank) <= 90
    assert len({q.id for q in bank}) == len(bank)
    per_category = collections.Counter(q.category for q in bank)
    assert set(per_category) == set(CATEGORIES) and len(CATEGORIES) == 14
    assert all(count == 6 for count in per_category.values())
    for q in bank:
        assert 4 <= len(q.options) <= 6 and len(set(q.options)) == len(q.options)
        assert q.answer in q.letters
    # Answers are spread over the letters, so "always A" is no strategy.
    assert max(collections.Counter(q.answer for q in bank).values()) < len(bank) / 3
    # No stem is contained in another, so matching is unambiguous.
    stems = [" ".join(q.question.lower().split()) for q in bank]
    assert not any(a != b and a in b for a in stems for b in stems)


def test_format_question_and_extract():
    q = load_question_bank()[0]
    text = format_question(q)
    lines = text.splitlines()
    assert lines[0] == q.question
    assert [line[:3] for line in lines[2:2 + len(q.options)]] == [f"{x}) " for x in q.letters]
    assert "letter of the correct option" in lines[-1]
    assert extract_answer_letter("The answer is (C).") == "C"
    assert extract_answer_letter("so the answer is: b") == "B"
    assert extract_answer_letter("no idea") is None


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                                 "parameters": {"type": "object",
                                                                "properties": {"text": {"type": "string"}}}}}


def test_tool_call_answer_whole_and_streamed(client):
    ask = [{"role": "user", "content": "[[sim:tool]] weather in Oslo"}]
    whole = client.chat.completions.create(model="fast", messages=ask, tools=[WEATHER_TOOL])
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"text": "weather in Oslo"}
    chunks = list(client.chat.completions.create(model="fast", messages=ask, tools=[WEATHER_TOOL], stream=True))
    pieces = [c.choices[0].delta.tool_calls[0].function.arguments for c in chunks
              if c.choices and c.choices[0].delta.tool_calls]
    assert len([p for p in pieces if p]) == 2 and json.loads("".join(pieces)) == {"text": "weather in Oslo"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # without tools, or without the marker, the answer is text
    plain = client.chat.completions.create(model="fast", messages=ask)
    assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.content


def test_tool_result_is_answered(client):
    history = [{"role": "user", "content": "[[sim:tool]] weather in Oslo"},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"}]
    answer = client.chat.completions.create(model="fast", messages=history, tools=[WEATHER_TOOL])
    assert answer.choices[0].message.content == "Tool said: sunny, 21 C"
    assert answer.choices[0].finish_reason == "stop"
