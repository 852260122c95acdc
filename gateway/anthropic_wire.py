"""The Anthropic Messages API (`POST /v1/messages`) as a surface of the pipeline.

A Messages request is translated once into the pipeline's internal form, an OpenAI chat body, and
the answer (a `chat.completion` or its chunks) once back into a Message or Anthropic's events.

Request → chat body (`messages_to_chat`):

  system (string or text blocks)     a first `system` message (string, or text parts)
  text block                         a text part
  image block                        an `image_url` part: a base64 source as a `data:` URL, a url source as is
  tool_use blocks (assistant)        the assistant message's `tool_calls` (`input` JSON-encoded as arguments)
  tool_result blocks (user)          one `tool` message each, in order (text or text/image parts);
                                     the rest of that user turn follows as a user message
  tools / tool_choice                function tools; auto/any/tool/none → auto/required/{function}/none;
                                     disable_parallel_tool_use → parallel_tool_calls: false
  stop_sequences, metadata.user_id   stop, user
  max_tokens, temperature, top_p, top_k, stream   the same names (top_k is a vLLM extension); a
                                     stream also asks for the usage chunk (stream_options.include_usage)

What has no chat equivalent — a block's `cache_control` or `citations`, a tool_result's
`is_error`, blocks such as `thinking` or `document`, top-level fields such as `thinking` or
`service_tier` — is kept in the chat body under the private key `NATIVE` ("sigroute_anthropic"):
on the element it belongs to (a part, a message, a tool call, a tool), and a block with no chat
form as a part of type `NATIVE`. The top-level `NATIVE` entry marks a body that carries such data.
A native Messages upstream (`gateway.upstream.anthropic_messages`) puts it all back; every other
transport receives the body without it (`gateway.upstream.targets.payload_for`), so an
OpenAI-compatible server gets a plain, faithful chat request.

Answer → Message (`message_from_completion`, `MessagesEncoder`): content becomes a text block,
tool calls `tool_use` blocks (arguments parsed back into `input`); finish reasons stop / length /
tool_calls become end_turn (or stop_sequence, when the upstream says which stop string matched,
as vLLM does in `stop_reason`) / max_tokens / tool_use. A stream is Anthropic's event sequence:
message_start, ping, content_block_start / _delta (text_delta, input_json_delta) / _stop per
block, message_delta (stop_reason, usage), message_stop; a stream that breaks ends with an
`error` event.

Errors are Anthropic-shaped, `{"type": "error", "error": {"type", "message"}}`, with the gateway's
status: 400 invalid_request_error, 401 authentication_error, 403 permission_error, 404
not_found_error, 409 conflict_error, 413 request_too_large, 429 rate_limit_error (Retry-After
kept), 500 and 502 api_error, 504 timeout_error, 503 overloaded_error. Anthropic itself answers
overload with the non-standard status 529; sigroute keeps 503, which proxies, load balancers and
the SDK's retry logic all understand as "try again later", with Anthropic's `overloaded_error` type.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import orjson

from sigroute.gateway.errors import APIError, InvalidRequest
from sigroute.gateway.upstream.targets import NATIVE

if TYPE_CHECKING:
    from sigroute.gateway.auth import Principal
    from sigroute.policies.schema.server import Server

__all__ = ["NATIVE", "MessagesSurface", "MessagesEncoder", "MESSAGES", "messages_to_chat",
           "message_from_completion", "anthropic_error", "count_tokens", "OPENAPI_SCHEMAS"]

# Top-level request fields the translation reads; every other one is kept for a native upstream.
TRANSLATED = frozenset({"model", "messages", "system", "max_tokens", "stop_sequences", "stream", "temperature",
                        "top_p", "top_k", "metadata", "tools", "tool_choice"})
ROLES = ("user", "assistant")
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "invalid_request_error",
               409: "conflict_error", 413: "request_too_large", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
               504: "timeout_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "function_call": "tool_use",
                "content_filter": "refusal"}
_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+);base64,(.*)", re.S)


# --------------------------------------------------------------------------------------------
# errors

def anthropic_error(exc: APIError) -> bytes:
    """An `APIError` as Anthropic's error body (the status and headers stay the APIError's)."""
    kind = ERROR_TYPES.get(exc.status) or ("api_error" if exc.status >= 500 else "invalid_request_error")
    return orjson.dumps({"type": "error", "error": {"type": kind, "message": exc.message}})


def _bad(message: str, param: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


# --------------------------------------------------------------------------------------------
# request → chat body

def _number(body: dict, name: str, low: float, high: float) -> None:
    value = body.get(name)
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high):
        raise _bad(f"'{name}' must be a number between {low:g} and {high:g}", name)


def _extras(block: dict, known: tuple[str, ...]) -> dict[str, Any] | None:
    """The fields of `block` the chat form cannot carry (cache_control, citations, …)."""
    extra = {k: v for k, v in block.items() if k not in known}
    return extra or None


class _Translation:
    """One request's translation; `native` records whether something was kept for a native upstream."""

    def __init__(self) -> None:
        self.native = False

    def keep(self, target: dict, extra: dict | None) -> dict:
        if extra:
            target[NATIVE] = extra
            self.native = True
        return target

    def opaque(self, block: dict) -> dict:
        """A block with no chat form: a part only a native upstream sees."""
        self.native = True
        return {"type": NATIVE, NATIVE: {"block": block}}

    def text_part(self, block: dict, where: str) -> dict:
        if not isinstance(block.get("text"), str):
            raise _bad(f"{where}.text must be a string", f"{where}.text")
        return self.keep({"type": "text", "text": block["text"]}, _extras(block, ("type", "text")))

    def image_part(self, block: dict, where: str) -> dict:
        source = block.get("source")
        if not isinstance(source, dict):
            raise _bad(f"{where}.source must be an object: {{type: base64, media_type, data}} or {{type: url, url}}",
                       f"{where}.source")
        kind = source.get("type")
        if kind == "base64":
            media_type, data = source.get("media_type"), source.get("data")
            if not isinstance(media_type, str) or not isinstance(data, str):
                raise _bad(f"{where}.source needs string 'media_type' and 'data' for a base64 image",
                           f"{where}.source")
            url = f"data:{media_type};base64,{data}"
        elif kind == "url":
            if not isinstance(source.get("url"), str):
                raise _bad(f"{where}.source.url must be a string", f"{where}.source.url")
            url = source["url"]
        else:
            return self.opaque(block)   # (a file id: only a native upstream can resolve it)
        return self.keep({"type": "image_url", "image_url": {"url": url}}, _extras(block, ("type", "source")))

    def parts(self, content: list, where: str, allowed: tuple[str, ...]) -> list[dict]:
        out = []
        for j, block in enumerate(content):
            here = f"{where}[{j}]"
            kind = block.get("type")
            if kind not in allowed:
                out.append(self.opaque(block))
            elif kind == "text":
                out.append(self.text_part(block, here))
            else:
                out.append(self.image_part(block, here))
        return out

    def tool_call(self, block: dict, where: str) -> dict:
        if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
            raise _bad(f"{where} (tool_use) needs string 'id' and 'name'", where)
        arguments = orjson.dumps(block.get("input") if block.get("input") is not None else {}).decode()
        return self.keep({"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}},
                         _extras(block, ("type", "id", "name", "input")))

    def tool_message(self, block: dict, where: str) -> dict:
        if not isinstance(block.get("tool_use_id"), str):
            raise _bad(f"{where}.tool_use_id must be a string (the id of the tool_use it answers)",
                       f"{where}.tool_use_id")
        content = block.get("content")
        extra = _extras(block, ("type", "tool_use_id", "content"))
        if content is None:   # (a native upstream gets the result without content, as sent)
            content, extra = "", {**(extra or {}), "no_content": True}
        elif isinstance(content, list):
            content = self.parts(_blocks(content, f"{where}.content"), f"{where}.content", ("text", "image"))
        elif not isinstance(content, str):
            raise _bad(f"{where}.content must be a string or a list of content blocks", f"{where}.content")
        return self.keep({"role": "tool", "tool_call_id": block["tool_use_id"], "content": content}, extra)

    def message(self, message: Any, i: int) -> list[dict]:
        """One Messages message as chat messages (a user turn with tool results may become several)."""
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object with 'role' and 'content'", where)
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise _bad(f"{where}.role is {role!r}; expected 'user' or 'assistant'", f"{where}.role")
        extra = _extras(message, ("role", "content"))
        if isinstance(content, str):
            return [self.keep({"role": role, "content": content}, extra)]
        if not isinstance(content, list):
            raise _bad(f"{where}.content must be a string or a list of content blocks", f"{where}.content")
        blocks = _blocks(content, f"{where}.content")
        if role == "assistant":
            calls = [self.tool_call(b, f"{where}.content[{j}]") for j, b in enumerate(blocks) if b["type"] == "tool_use"]
            others = [b for b in blocks if b["type"] != "tool_use"]
            out: dict[str, Any] = {"role": "assistant",
                                   "content": self.parts(others, f"{where}.content", ("text",)) if others else None}
            if calls:
                out["tool_calls"] = calls
            return [self.keep(out, extra)]
        results = [self.tool_message(b, f"{where}.content[{j}]") for j, b in enumerate(blocks)
                   if b["type"] == "tool_result"]
        others = [b for b in blocks if b["type"] != "tool_result"]
        if not results:
            return [self.keep({"role": "user", "content": self.parts(blocks, f"{where}.content", ("text", "image"))},
                              extra)]
        if extra:   # the turn's own extra fields ride on its first result
            self.keep(results[0], {**results[0].get(NATIVE, {}), "message": extra})
        if others:   # the rest of the same user turn (a native upstream joins it back to the results)
            rest = {"role": "user", "content": self.parts(others, f"{where}.content", ("text", "image"))}
            results.append(self.keep(rest, {"same_turn": True}))
        return results


def _native_of(item: dict) -> dict:
    return item.get(NATIVE) or {}


def _blocks(content: list, where: str) -> list[dict]:
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _bad(f"{where}[{j}] must be a content block: an object with a string 'type'", f"{where}[{j}]")
    return content


def _tools(tools: Any, max_tools: int, translation: _Translation) -> list[dict]:
    if not isinstance(tools, list):
        raise _bad("'tools' must be a list of {name, description, input_schema}", "tools")
    if len(tools) > max_tools:
        raise _bad(f"'tools' has {len(tools)} entries; this gateway accepts at most {max_tools} (server.max_tools)",
                   "tools")
    out = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise _bad(f"{where} must be an object with a non-empty string 'name'", f"{where}.name")
        if tool.get("type") not in (None, "custom"):
            raise _bad(f"{where} is a server tool ({tool['type']!r}); this gateway routes client tools only "
                       "(name, description, input_schema)", f"{where}.type")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _bad(f"{where}.input_schema must be a JSON Schema object", f"{where}.input_schema")
        function: dict[str, Any] = {"name": tool["name"], "parameters": schema}
        if tool.get("description") is not None:
            if not isinstance(tool["description"], str):
                raise _bad(f"{where}.description must be a string", f"{where}.description")
            function["description"] = tool["description"]
        out.append(translation.keep({"type": "function", "function": function},
                                    _extras(tool, ("name", "description", "input_schema"))))
    return out


def _tool_choice(choice: Any, chat: dict) -> None:
    if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
        raise _bad("'tool_choice' must be {type: auto | any | tool | none} (with 'name' for type tool)",
                   "tool_choice.type")
    kind = choice["type"]
    if kind == "tool":
        if not isinstance(choice.get("name"), str) or not choice["name"]:
            raise _bad("'tool_choice.name' is required for type 'tool'", "tool_choice.name")
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[kind]
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _bad("'tool_choice.disable_parallel_tool_use' must be true or false",
                   "tool_choice.disable_parallel_tool_use")
    if disable:
        chat["parallel_tool_calls"] = False


def messages_to_chat(raw: bytes, max_messages: int = 4096, max_tools: int = 512, *,
                     counting: bool = False) -> dict[str, Any]:
    """Parse and check a Messages request; return the internal chat body. `InvalidRequest` (naming
    the field) on a problem. `counting`: a count_tokens body (no max_tokens needed)."""
    if not raw:
        raise InvalidRequest("request body is empty; send a JSON object with 'model', 'max_tokens' and 'messages'",
                             code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object with 'model', 'max_tokens' and 'messages'",
                             code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("'model' is required: a model name or a routing entrypoint such as 'auto'", "model",
                   "missing_required_parameter")
    max_tokens = body.get("max_tokens")
    if max_tokens is None and not counting:
        raise _bad("'max_tokens' is required (as in Anthropic's API): the most tokens the answer may have",
                   "max_tokens", "missing_required_parameter")
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1):
        raise _bad("'max_tokens' must be a positive integer", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("'messages' must be a non-empty list of {role, content} objects", "messages",
                   "missing_required_parameter")
    if len(messages) > max_messages:
        raise _bad(f"'messages' has {len(messages)} entries; this gateway accepts at most {max_messages} "
                   "(server.max_messages)", "messages")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    _number(body, "temperature", 0, 1)
    _number(body, "top_p", 0, 1)
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise _bad("'top_k' must be a non-negative integer", "top_k")
    stops = body.get("stop_sequences")
    if stops is not None and (not isinstance(stops, list) or not all(isinstance(s, str) for s in stops)):
        raise _bad("'stop_sequences' must be a list of strings", "stop_sequences")

    translation = _Translation()
    chat: dict[str, Any] = {"model": model}
    chat_messages: list[dict] = []
    system = body.get("system")
    if isinstance(system, str):
        if system:
            chat_messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        blocks = _blocks(system, "system")
        if blocks:
            chat_messages.append({"role": "system", "content": translation.parts(blocks, "system", ("text",))})
    elif system is not None:
        raise _bad("'system' must be a string or a list of text blocks", "system")
    for i, message in enumerate(messages):
        translated = translation.message(message, i)
        previous = chat_messages[-1] if chat_messages else None
        if previous is not None and translated[0].get("role") == "tool" and (
                previous.get("role") == "tool" or _native_of(previous).get("same_turn")):
            # two user turns of tool results in a row: mark where the second begins (a native upstream
            # would otherwise join them into one)
            translation.keep(translated[0], {**_native_of(translated[0]), "new_turn": True})
        chat_messages.extend(translated)
    chat["messages"] = chat_messages
    if max_tokens is not None:
        chat["max_tokens"] = max_tokens
    for name in ("temperature", "top_p", "top_k"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if stops:
        chat["stop"] = stops
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _bad("'metadata' must be an object such as {\"user_id\": \"...\"}", "metadata")
        user = metadata.get("user_id")
        if user is not None and not isinstance(user, str):
            raise _bad("'metadata.user_id' must be a string", "metadata.user_id")
        if user:
            chat["user"] = user
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"], max_tools, translation)
    if body.get("tool_choice") is not None:
        _tool_choice(body["tool_choice"], chat)
    fields = {k: v for k, v in body.items() if k not in TRANSLATED}
    if metadata and set(metadata) - {"user_id"}:
        fields["metadata"] = metadata
    if fields or translation.native:
        chat[NATIVE] = {"fields": fields}
    return chat


# --------------------------------------------------------------------------------------------
# answer → Message

def _tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments (a JSON string) as the object Anthropic's `input` must be."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        return {"arguments": arguments}   # not JSON: kept whole rather than lost
    return value if isinstance(value, dict) else {"value": value}


def _stop(choice: dict[str, Any], stop_sequences: list[str]) -> tuple[str | None, str | None]:
    """(stop_reason, stop_sequence) of a chat choice; a stop string is known when the upstream
    names it (vLLM's `stop_reason`)."""
    finish = choice.get("finish_reason")
    matched = choice.get("stop_reason")
    if finish == "stop" and isinstance(matched, str) and matched in stop_sequences:
        return "stop_sequence", matched
    return STOP_REASONS.get(finish, "end_turn" if finish else None), None


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, dict) else {}
    return {"input_tokens": int(usage.get("prompt_tokens") or 0), "output_tokens": int(usage.get("completion_tokens") or 0)}


def message_from_completion(body: dict[str, Any], message_id: str, stop_sequences: list[str]) -> dict[str, Any]:
    choices = body.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    text = _text_of(message.get("content")) or (message.get("refusal") if isinstance(message.get("refusal"), str) else "")
    if text:
        content.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        content.append({"type": "tool_use", "id": call.get("id") or f"toolu_{len(content)}",
                        "name": function.get("name", ""), "input": _tool_input(function.get("arguments"))})
    stop_reason, stop_sequence = _stop(choice, stop_sequences)
    return {"id": message_id, "type": "message", "role": "assistant", "model": body.get("model"),
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": _usage(body.get("usage"))}


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class MessagesEncoder:
    """One request's answer as a Message, or as Anthropic's stream events.

    The stream's state: whether message_start went out, the content block open now (its index and
    kind: "text", or the chat index of the tool call it carries), the stop reason and usage seen.
    """

    __slots__ = ("message_id", "stop_sequences", "chat_body", "started", "block", "open", "stop_reason",
                 "stop_sequence", "usage", "model")

    def __init__(self, body: dict[str, Any], request_id: str):
        self.message_id = "msg_" + request_id.removeprefix("req_")
        self.stop_sequences = body.get("stop") or []
        self.chat_body = body
        self.started = False
        self.block = -1            # index of the last content block opened
        self.open: Any = None      # what the open block carries: "text", ("tool", chat index), or None
        self.stop_reason: str | None = None
        self.stop_sequence: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None

    async def whole(self, body: dict[str, Any], encoded: bytes | None) -> bytes:
        return orjson.dumps(message_from_completion(body, self.message_id, self.stop_sequences))

    def start(self) -> bytes:
        return b""   # message_start needs the model: it goes out with the first chunk

    def _message_start(self) -> bytes:
        self.started = True
        from sigroute.signals.context import normalize_messages
        from sigroute.signals.tokens import count_message_tokens

        input_tokens = count_message_tokens(normalize_messages(self.chat_body.get("messages")))
        return (_event("message_start", {"type": "message_start", "message": {
                    "id": self.message_id, "type": "message", "role": "assistant", "model": self.model,
                    "content": [], "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": input_tokens, "output_tokens": 0}}})
                + _event("ping", {"type": "ping"}))

    def _close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _event("content_block_stop", {"type": "content_block_stop", "index": self.block})

    def _open(self, carries: Any, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.block += 1
        self.open = carries
        return out + _event("content_block_start", {"type": "content_block_start", "index": self.block,
                                                    "content_block": block})

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        out = b""
        if not self.started:
            self.model = chunk.get("model")
            out = self._message_start()
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.open != "text":
                    out += self._open("text", {"type": "text", "text": ""})
                out += _event("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                      "delta": {"type": "text_delta", "text": text}})
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                index = call.get("index", 0)
                function = call.get("function") if isinstance(call.get("function"), dict) else {}
                if self.open != ("tool", index):
                    out += self._open(("tool", index), {"type": "tool_use", "id": call.get("id") or f"toolu_{index}",
                                                        "name": function.get("name", ""), "input": {}})
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments:
                    out += _event("content_block_delta", {"type": "content_block_delta", "index": self.block,
                                                          "delta": {"type": "input_json_delta",
                                                                    "partial_json": arguments}})
            if choice.get("finish_reason"):
                self.stop_reason, self.stop_sequence = _stop(choice, self.stop_sequences)
        return out

    async def end(self) -> bytes:
        out = b"" if self.started else self._message_start()
        out += self._close()
        usage = _usage(self.usage)
        return out + _event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": self.stop_reason or "end_turn",
                                                        "stop_sequence": self.stop_sequence},
                                              "usage": {"output_tokens": usage["output_tokens"],
                                                        **({"input_tokens": usage["input_tokens"]}
                                                           if self.usage else {})}}) \
            + _event("message_stop", {"type": "message_stop"})

    def error(self, message: str, code: str, type: str) -> bytes:
        return _event("error", {"type": "error", "error": {"type": "api_error", "message": message}})


class MessagesSurface:
    """POST /v1/messages (Anthropic Messages)."""

    api = "messages"

    async def request(self, raw: bytes, principal: "Principal", server: "Server") -> dict[str, Any]:
        return messages_to_chat(raw, server.max_messages, server.max_tools)

    def encoder(self, body: dict[str, Any], request_id: str, principal: "Principal") -> MessagesEncoder:
        return MessagesEncoder(body, request_id)

    def error(self, exc: APIError) -> bytes:
        return anthropic_error(exc)


MESSAGES = MessagesSurface()


def count_tokens(raw: bytes, server: "Server") -> dict[str, int]:
    """POST /v1/messages/count_tokens: the prompt's tokens as the gateway counts them (the count
    routing uses, `RequestContext.prompt_tokens`)."""
    from sigroute.signals.context import RequestContext

    body = messages_to_chat(raw, server.max_messages, server.max_tools, counting=True)
    return {"input_tokens": RequestContext.from_body("count", body).prompt_tokens}


# --------------------------------------------------------------------------------------------
# The OpenAPI description of the Messages routes (merged into /openapi.json by `gateway.app`).

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_BLOCK = {"type": "object", "required": ["type"], "additionalProperties": True,
          "properties": {"type": {"type": "string", "minLength": 1}}}
_TEXT_BLOCK = {"type": "object", "required": ["type", "text"], "additionalProperties": True,
               "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_MESSAGE = {"type": "object", "required": ["role", "content"], "additionalProperties": True,
            "properties": {"role": {"enum": list(ROLES)},
                           "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_BLOCK}]}}}
_REQUEST_PROPERTIES = {
    "model": {"type": "string", "minLength": 1, "examples": ["auto"],
              "description": "a routing entrypoint (e.g. 'auto') or, if the policy allows, a model"},
    "messages": {"type": "array", "minItems": 1, "maxItems": 4096, "items": _MESSAGE},
    "system": {"anyOf": [{"type": "string"}, {"type": "array", "items": _TEXT_BLOCK}]},
    "max_tokens": {"type": "integer", "minimum": 1},
    "stop_sequences": {"type": "array", "items": {"type": "string"}},
    "stream": {"type": "boolean"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0},
    "metadata": {"type": "object", "properties": {"user_id": {"type": ["string", "null"]}}},
    "tools": {"type": "array", "maxItems": 512, "items": {
        "type": "object", "required": ["name", "input_schema"], "additionalProperties": True,
        "properties": {"name": {"type": "string", "minLength": 1}, "description": {"type": "string"},
                       "input_schema": {"type": "object"}}}},
    "tool_choice": {"type": "object", "required": ["type"], "additionalProperties": True,
                    "properties": {"type": {"enum": ["auto", "any", "none"]},
                                   "disable_parallel_tool_use": {"type": "boolean"}}},
}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "AnthropicError": {
        "type": "object", "required": ["type", "error"],
        "description": "Every error of the Messages routes, Anthropic-shaped",
        "properties": {"type": {"const": "error"}, "error": {
            "type": "object", "required": ["type", "message"],
            "properties": {"type": {"enum": sorted(set(ERROR_TYPES.values()))},
                           "message": {"type": "string", "minLength": 1}}}}},
    "MessagesRequest": {
        "type": "object", "required": ["model", "max_tokens", "messages"], "additionalProperties": True,
        "description": "Anthropic Messages; content blocks text, image, tool_use, tool_result; fields not listed "
                       "here reach a native Messages upstream untouched",
        "properties": _REQUEST_PROPERTIES},
    "CountTokensRequest": {
        "type": "object", "required": ["model", "messages"], "additionalProperties": True,
        "properties": {k: v for k, v in _REQUEST_PROPERTIES.items() if k != "max_tokens"}},
    "MessageTokensCount": {"type": "object", "required": ["input_tokens"],
                           "properties": {"input_tokens": {"type": "integer", "minimum": 0}}},
    "Message": {
        "type": "object", "required": ["id", "type", "role", "model", "content", "stop_reason", "usage"],
        "properties": {"id": {"type": "string"}, "type": {"const": "message"}, "role": {"const": "assistant"},
                       "model": {"type": ["string", "null"]},
                       "content": {"type": "array", "items": _BLOCK},
                       "stop_reason": {"type": ["string", "null"]}, "stop_sequence": {"type": ["string", "null"]},
                       "usage": {"type": "object", "required": ["input_tokens", "output_tokens"]}}},
    "MessageStreamEvent": {
        "type": "object", "required": ["event", "data"],
        "description": "one server-sent event: message_start, ping, content_block_start / _delta / _stop, "
                       "message_delta, message_stop; a failure after the first byte is an `error` event",
        "properties": {"event": {"enum": ["message_start", "ping", "content_block_start", "content_block_delta",
                                          "content_block_stop", "message_delta", "message_stop", "error"]},
                       "data": {"type": "string", "contentMediaType": "application/json"}}},
}
