"""The clients people use, unchanged, against a real gateway on the Responses API: LangChain's
`ChatOpenAI` with `use_responses_api=True` (invoke, ainvoke, stream, tools, and
`use_previous_response_id`, where the gateway supplies the history), the simulated upstream behind."""

from __future__ import annotations

import asyncio

from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from tests.conftest import base_policy


def chat_model(gw, **options) -> ChatOpenAI:
    return ChatOpenAI(model="auto", base_url=gw.url + "/v1", api_key="unused", use_responses_api=True,
                      max_retries=0, **options)


@tool
def lookup(text: str) -> str:
    """Look something up."""
    return "sunny"


def test_langchain_invoke_ainvoke_and_stream(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    llm = chat_model(gw)
    message = llm.invoke("hello from langchain")
    assert message.text and message.response_metadata["id"].startswith("resp_")
    assert message.response_metadata["model_name"] == "alpha" and message.usage_metadata["output_tokens"] == 8
    assert sim.last_body("alpha")["messages"] == [{"role": "user", "content": "hello from langchain"}]
    assert asyncio.run(llm.ainvoke("and async")).text
    chunks = list(llm.stream("stream it"))
    assert len(chunks) > 2 and "".join(c.text for c in chunks) == llm.invoke("stream it").text
    assert sim.last_body("alpha")["messages"][-1]["content"] == "stream it"


def test_langchain_tool_calls_round_trip(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    llm = chat_model(gw).bind_tools([lookup])
    question = HumanMessage("weather in Paris [[sim:tool]]")
    asked = llm.invoke([question])
    [call] = asked.tool_calls
    assert call["name"] == "lookup" and call["args"] == {"text": "weather in Paris"}
    answered = llm.invoke([question, asked, ToolMessage(lookup.invoke(call["args"]), tool_call_id=call["id"])])
    assert answered.text == "Tool said: sunny"
    assert [m["role"] for m in sim.last_body("alpha")["messages"]] == ["user", "assistant", "tool"]


def test_langchain_with_previous_response_id_lets_the_gateway_keep_the_history(sim, gateway_factory):
    gw = gateway_factory(base_policy(sim))
    llm = chat_model(gw, use_previous_response_id=True)
    first = llm.invoke([HumanMessage("first turn")])
    second = llm.invoke([HumanMessage("first turn"), first, HumanMessage("second turn")])
    assert second.text
    assert sim.last_body("alpha")["messages"] == [{"role": "user", "content": "first turn"},
                                                  {"role": "assistant", "content": first.text},
                                                  {"role": "user", "content": "second turn"}]
