"""The native Anthropic transport: POST {api_base}/v1/messages, for models whose provider is `anthropic/…`.

The pipeline's body is an OpenAI chat request; this transport sends it as a Messages request and
reads the answer back as a `chat.completion` (or its chunks), so the resilience loop, the plugins
and the Messages surface see what they see from every other transport (`targets.Transport`).

No lossy round trip: a request that came in by the Messages surface (`gateway.anthropic_wire`) is
translated back to exactly what the caller sent (apart from `model`, and from what plugins
changed). The translation of `anthropic_wire` is invertible for what chat can say (system as a
string or as text blocks, text and image blocks, tool_use / tool_result turns, tools and
tool_choice, stop_sequences, temperature / top_p / top_k, metadata.user_id), and what chat cannot
say travels with the body under `targets.NATIVE` and is put back here: a block's cache_control or
citations, a tool_result's is_error, blocks with no chat form (thinking, document, …), and
top-level fields (thinking, service_tier, …). A request from the chat surface is translated the
same way (max_tokens defaults to `DEFAULT_MAX_TOKENS`, which Messages requires; a temperature
above Anthropic's 1 is capped at 1).

Answers: text blocks become the message's content, tool_use blocks its tool calls; stop reasons
end_turn / stop_sequence / max_tokens / tool_use / refusal become stop / stop / length /
tool_calls / content_filter, and the matched stop string is kept in the choice's `stop_reason` (as
vLLM does) so the Messages surface reports `stop_sequence`. Thinking blocks of an answer are not
relayed (the chat form has no place for them).

Wire: the shared `http1` client (one keep-alive pool), `x-api-key` and `anthropic-version`
headers (the model's `extra_headers` may override the version), the model's timeouts
(whole call `timeout_s`; the first chunk of a stream within `first_token_timeout_s`, each next
read of the body within `stream_idle_timeout_s` — paced per read, not per event as the
OpenAI-compatible transport does, so Anthropic's keep-alive pings keep a slow stream alive).
Errors are the same `UpstreamError` kinds, read from the status (Anthropic's 529 "overloaded" is a
retryable server error); a stream is complete only at `message_stop`, and one that ends before it or
sends an `error` event is ``stream_broken``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Mapping

import orjson

from sigroute.gateway.upstream import http1
from sigroute.gateway.upstream.direct import http1_events, json_answer, open_stream
from sigroute.gateway.upstream.errors import UpstreamError, error_message, unsendable_body
from sigroute.gateway.upstream.targets import CALL_HEADERS, NATIVE, HeaderChanges, ModelTarget, merged_headers

__all__ = ["AnthropicMessagesTransport", "chat_to_messages", "completion_from_message", "ANTHROPIC_VERSION",
           "DEFAULT_MAX_TOKENS"]

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
MAX_STREAM_EVENT_BYTES = 8 * 1024 * 1024
FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls",
                  "refusal": "content_filter", "pause_turn": "stop"}


# --------------------------------------------------------------------------------------------
# chat → Messages

def _native(item: Any) -> dict[str, Any]:
    extra = item.get(NATIVE) if isinstance(item, dict) else None
    return extra if isinstance(extra, dict) else {}


def _block(part: Any) -> dict[str, Any] | None:
    """A chat content part as a Messages content block (None: nothing Messages can carry)."""
    if isinstance(part, str):
        return {"type": "text", "text": part}
    if not isinstance(part, dict):
        return None
    kind, extra = part.get("type"), _native(part)
    if kind == NATIVE:
        return extra.get("block")
    if kind == "text":
        return {"type": "text", "text": part.get("text", ""), **extra}
    if kind == "image_url":
        url = (part.get("image_url") or {}).get("url", "")
        head, comma, data = url.partition(",")
        if url.startswith("data:") and head.endswith(";base64") and comma:
            source = {"type": "base64", "media_type": head[5:-7], "data": data}
        else:
            source = {"type": "url", "url": url}
        return {"type": "image", "source": source, **extra}
    return None


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [b for b in map(_block, content or ()) if b is not None]


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None = None
    if choice in ("auto", "none"):
        out = {"type": choice}
    elif choice == "required":
        out = {"type": "any"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        out = {"type": "tool", "name": choice["function"].get("name")}
    if parallel is False:
        out = {**(out or {"type": "auto"}), "disable_parallel_tool_use": True}
    return out


def chat_to_messages(payload: dict[str, Any], model: str) -> dict[str, Any]:
    """The Messages request for a chat body (see the module docstring)."""
    system: list[dict[str, Any]] = []
    system_is_text = False
    messages: list[dict[str, Any]] = []
    results_turn: dict[str, Any] | None = None   # the user turn the last tool results went into
    for message in payload.get("messages") or ():
        role, content, extra = message.get("role"), message.get("content"), _native(message)
        if role in ("system", "developer"):
            system_is_text = isinstance(content, str) and not system
            system.extend(_blocks(content))
            continue
        if role == "tool" or role == "function":
            result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id", "")}
            if not extra.get("no_content"):
                result["content"] = content if isinstance(content, str) else _blocks(content)
            result.update({k: v for k, v in extra.items() if k not in ("message", "no_content", "new_turn")})
            if results_turn is None or messages[-1] is not results_turn or extra.get("new_turn"):
                results_turn = {"role": "user", "content": [], **(extra.get("message") or {})}
                messages.append(results_turn)
            results_turn["content"].append(result)
            continue
        if role == "user":
            if extra.get("same_turn") and results_turn is not None and messages[-1] is results_turn:
                results_turn["content"].extend(_blocks(content))
                continue
            turn_extra = {k: v for k, v in extra.items() if k != "same_turn"}
            messages.append({"role": "user", "content": content if isinstance(content, str) else _blocks(content),
                             **turn_extra})
            continue
        # assistant
        calls = message.get("tool_calls") or []
        if isinstance(content, str) and not calls:
            messages.append({"role": "assistant", "content": content, **extra})
            continue
        blocks = _blocks(content)
        for call in calls:
            function = call.get("function") or {}
            try:
                arguments = orjson.loads(function.get("arguments") or "{}")
            except orjson.JSONDecodeError:
                arguments = {"arguments": function.get("arguments")}
            blocks.append({"type": "tool_use", "id": call.get("id", ""), "name": function.get("name", ""),
                           "input": arguments, **_native(call)})
        messages.append({"role": "assistant", "content": blocks, **extra})
    out: dict[str, Any] = {"model": model, "messages": messages,
                           "max_tokens": payload.get("max_tokens") or payload.get("max_completion_tokens")
                           or DEFAULT_MAX_TOKENS}
    if system:
        out["system"] = system[0]["text"] if system_is_text and len(system) == 1 else system
    if payload.get("temperature") is not None:
        out["temperature"] = min(payload["temperature"], 1)
    for name in ("top_p", "top_k"):
        if payload.get(name) is not None:
            out[name] = payload[name]
    stop = payload.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    if payload.get("stream"):
        out["stream"] = True
    if payload.get("user"):
        out["metadata"] = {"user_id": payload["user"]}
    tools = [t for t in payload.get("tools") or () if isinstance(t, dict) and isinstance(t.get("function"), dict)]
    if tools:
        out["tools"] = []
        for tool in tools:
            function = tool["function"]
            spec = {"name": function.get("name", "")}
            if function.get("description") is not None:
                spec["description"] = function["description"]
            spec["input_schema"] = function.get("parameters") or {"type": "object", "properties": {}}
            out["tools"].append({**spec, **_native(tool)})
    choice = _tool_choice(payload.get("tool_choice"), payload.get("parallel_tool_calls"))
    if choice is not None:
        out["tool_choice"] = choice
    out.update((_native(payload).get("fields") or {}))
    return out


# --------------------------------------------------------------------------------------------
# Messages → chat

def _usage(usage: Any, input_tokens: int | None = None) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    prompt = usage.get("input_tokens")
    prompt = int(prompt if isinstance(prompt, int) else (input_tokens or 0))
    completion = int(usage.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _choice_end(stop_reason: Any, stop_sequence: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"finish_reason": FINISH_REASONS.get(stop_reason, "stop") if stop_reason else None}
    if isinstance(stop_sequence, str):
        out["stop_reason"] = stop_sequence   # (vLLM's field: which stop string matched)
    return out


def completion_from_message(message: dict[str, Any], model: str) -> dict[str, Any]:
    text, calls = [], []
    for block in message.get("content") or ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            text.append(block["text"])
        elif block.get("type") == "tool_use":
            calls.append({"id": block.get("id", ""), "type": "function",
                          "function": {"name": block.get("name", ""),
                                       "arguments": orjson.dumps(block.get("input") or {}).decode()}})
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    choice = {"index": 0, "message": reply, **_choice_end(message.get("stop_reason"), message.get("stop_sequence"))}
    return {"id": message.get("id") or "msg", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [choice], "usage": _usage(message.get("usage"))}


class _ChunkMaker:
    """Anthropic stream events → chat chunks, for one stream."""

    def __init__(self, model: str, include_usage: bool):
        self.base = {"id": "msg", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        self.include_usage = include_usage
        self.input_tokens: int | None = None
        self.blocks: dict[int, int | None] = {}   # content block index → tool call index (None: text or other)
        self.tools = 0

    def _chunk(self, delta: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": None}]
        return {**self.base, "choices": choices, **extra}

    def chunks(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            self.base["id"] = message.get("id") or "msg"
            self.input_tokens = (message.get("usage") or {}).get("input_tokens")
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            index = event.get("index", 0)
            if block.get("type") == "tool_use":
                self.blocks[index] = self.tools
                self.tools += 1
                return [self._chunk({"tool_calls": [{"index": self.blocks[index], "id": block.get("id", ""),
                                                     "type": "function",
                                                     "function": {"name": block.get("name", ""), "arguments": ""}}]})]
            self.blocks[index] = None
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                tool = self.blocks.get(event.get("index", 0))
                if tool is not None:
                    return [self._chunk({"tool_calls": [{"index": tool,
                                                         "function": {"arguments": delta.get("partial_json", "")}}]})]
            return []
        if kind == "message_delta":
            delta = event.get("delta") or {}
            end = _choice_end(delta.get("stop_reason"), delta.get("stop_sequence"))
            out = [{**self.base, "choices": [{"index": 0, "delta": {}, **end}]}]
            if self.include_usage:
                out.append(self._chunk(None, usage=_usage(event.get("usage"), self.input_tokens)))
            return out
        return []


# --------------------------------------------------------------------------------------------
# the transport

class AnthropicMessagesTransport:
    """Direct HTTP to an Anthropic Messages API (Anthropic's, or a server that speaks it)."""

    def __init__(self, max_connections: int = 1000, *, environ: Mapping[str, str] | None = None,
                 max_body_size: int = http1.MAX_RESPONSE_BODY, max_event_bytes: int = MAX_STREAM_EVENT_BYTES):
        self.client = http1.Client(max_connections_per_host=max_connections, keepalive_expiry=30.0,
                                   proxies=http1.ProxyConfig.from_environ(environ), max_body_size=max_body_size)
        self.max_event_bytes = max_event_bytes
        self._prepared_by_target: dict[tuple, tuple[http1.Request, http1.Timeouts]] = {}

    def _prepared(self, target: ModelTarget, stream: bool, changes: HeaderChanges | None):
        key = (target.name, target.api_base, stream, changes)
        prepared = self._prepared_by_target.get(key)
        if prepared is None:
            headers = {"content-type": "application/json", "anthropic-version": ANTHROPIC_VERSION,
                       "accept": "text/event-stream" if stream else "application/json"}
            if target.api_key:
                headers["x-api-key"] = target.api_key
            headers.update(merged_headers(target.spec.extra_headers, changes))
            base = target.api_base.rstrip("/")
            url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
            timeouts = http1.Timeouts(connect=min(10.0, target.spec.timeout_s), read=None, write=30.0, pool=10.0)
            prepared = self._prepared_by_target[key] = (self.client.prepare("POST", url, headers), timeouts)
        call_headers = CALL_HEADERS.get()   # this call's own (a trace's traceparent)
        if call_headers:
            return prepared[0].with_headers(call_headers), prepared[1]
        return prepared

    @staticmethod
    def _body(target: ModelTarget, payload: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(chat_to_messages(payload, target.upstream_model))
        except orjson.JSONEncodeError as exc:
            raise unsendable_body(exc) from None

    async def complete(self, target: ModelTarget, payload: dict[str, Any],
                       headers: HeaderChanges | None = None) -> dict[str, Any]:
        request, timeouts = self._prepared(target, False, headers)
        data = await json_answer(self.client, request, self._body(target, payload), timeouts, target)
        if not isinstance(data, dict) or data.get("type") != "message" or not isinstance(data.get("content"), list):
            raise UpstreamError("protocol", "response is not a Message (type 'message' with a content list)",
                                status=200, model=target.name)
        return completion_from_message(data, target.upstream_model)

    async def stream(self, target: ModelTarget, payload: dict[str, Any],
                     headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]:
        request, timeouts = self._prepared(target, True, headers)
        body = self._body(target, payload)
        spec = target.spec
        loop = asyncio.get_running_loop()
        first_by = loop.time() + spec.first_token_timeout_s   # one budget, from the call
        async with open_stream(self.client, request, body, timeouts, target, first_by) as response:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            maker = _ChunkMaker(target.upstream_model, include_usage)
            events = http1_events(response, target, first_by, self.max_event_bytes, first_late="no first token in time")
            first = True
            while True:
                # this transport's own pace: the first-token budget lasts until the first chunk, and
                # each read of the body (not each event) gets stream_idle_timeout_s
                arrived = await events.read(first_by if first else loop.time() + spec.stream_idle_timeout_s, first)
                if arrived is None:
                    raise UpstreamError("stream_broken", "stream ended before message_stop", model=target.name)
                for event in arrived:
                    try:
                        data = orjson.loads(event.data)
                    except orjson.JSONDecodeError:
                        raise UpstreamError("protocol", "stream event is not JSON", model=target.name) from None
                    if not isinstance(data, dict):
                        raise UpstreamError("protocol", "stream event is not an object", model=target.name)
                    kind = data.get("type")
                    if kind == "error":
                        raise UpstreamError("stream_broken", f"upstream sent an error event: "
                                            f"{error_message(event.data.encode())}", model=target.name)
                    if kind == "message_stop":
                        await response.drain(spec.stream_idle_timeout_s)   # the connection goes back to the pool
                        return
                    for chunk in maker.chunks(data):
                        first = False
                        yield chunk

    def connections_in_use(self) -> int:
        return sum(s["open"] - s["idle"] for s in self.client.stats().values())

    async def aclose(self) -> None:
        await self.client.aclose()
