"""Clients built on the Anthropic Messages API, unchanged, against a real gateway: LangChain's
`ChatAnthropic` (invoke, stream, tool calls bound with `bind_tools`, and a tool round trip)."""

from __future__ import annotations

import pytest

langchain_anthropic = pytest.importorskip("langchain_anthropic")
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage  # noqa: E402

from tests.conftest import base_policy  # noqa: E402


@pytest.fixture
def chat_model(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    return langchain_anthropic.ChatAnthropic(model="auto", base_url=gw.url, api_key="unused", max_tokens=128,
                                             max_retries=0)


def test_invoke_with_a_system_prompt(chat_model, sim):
    answer = chat_model.invoke([SystemMessage("Be brief."), HumanMessage("[[sim:echo]] hello langchain")])
    assert answer.content == "[[sim:echo]] hello langchain"
    assert answer.response_metadata["model"] == "alpha" and answer.response_metadata["stop_reason"] == "end_turn"
    assert answer.usage_metadata["output_tokens"] == 3
    assert sim.last_body("alpha")["messages"][0] == {"role": "system", "content": "Be brief."}


def test_stream(chat_model):
    pieces = [chunk.content for chunk in chat_model.stream("[[sim:echo]] one two three four five")]
    text = "".join(p if isinstance(p, str) else "".join(b.get("text", "") for b in p) for p in pieces)
    assert text == "[[sim:echo]] one two three four five" and len(pieces) > 2


def test_tool_round_trip(chat_model):
    def lookup(text: str) -> str:
        """Look a word up."""
        return "found " + text

    with_tools = chat_model.bind_tools([lookup])
    question = HumanMessage("[[sim:tool]] anthropic")
    first = with_tools.invoke([question])
    (call,) = first.tool_calls
    assert call["name"] == "lookup" and call["args"] == {"text": "anthropic"}
    second = with_tools.invoke([question, first, ToolMessage(lookup(**call["args"]), tool_call_id=call["id"])])
    assert second.content == "Tool said: found anthropic"
