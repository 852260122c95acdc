"""The OpenAI Responses API (`POST /v1/responses`) as an API surface of the pipeline.

A Responses request is translated once into the pipeline's internal form, a chat-completions body,
and the pipeline's answer once back into a Response object (or its event stream); everything in
between — signals, decisions, plugins, cache, selection, fallback, learning, metrics (labelled
``api="responses"``) — is the pipeline's, exactly as for a chat request.

Request → chat body (`ResponsesSurface.request`):

- ``instructions``        a system message first (this request's own: never inherited from the
                          response it continues, as OpenAI does);
- ``previous_response_id`` the stored conversation (its input and output, as chat messages) comes
                          next, so routing sees the whole conversation as a chat request with that
                          history would be seen; a response of another tenant is a 404;
- ``input``               a string (one user message) or items: messages (role user / assistant /
                          system / developer; content a string or parts input_text, input_image,
                          input_file, output_text), ``function_call`` items (→ the assistant's
                          ``tool_calls``) and ``function_call_output`` items (→ ``tool`` messages);
- ``tools`` (function tools only), ``tool_choice``, ``parallel_tool_calls``, ``text.format``
  (→ ``response_format``), ``max_output_tokens`` (→ ``max_tokens``), ``temperature``, ``top_p``,
  ``metadata``, ``user``, ``reasoning.effort`` (→ ``reasoning_effort``), ``stream`` (streams ask
  for usage, which the completed response reports).

A bad body is a 400 whose ``param`` names the field (``input[2].content[0].text``). The chat body is
a `ResponsesChatBody`: a plain dict to everything downstream, which also carries the parsed request
(`ResponsesCall`) to this surface's encoder — the surface protocol hands the encoder the body.

Answer → Response (`ResponsesEncoder`): text becomes a ``message`` output item with one
``output_text`` part, tool calls become ``function_call`` items; ``finish_reason: "length"`` makes
the response ``incomplete`` (``incomplete_details.reason: max_output_tokens``). Streamed, the
chat chunks become the Responses event sequence (``event: NAME`` + ``data`` with ``type`` and
``sequence_number``): response.created, response.in_progress, then per item
response.output_item.added, response.content_part.added, response.output_text.delta …,
response.output_text.done, response.content_part.done, response.output_item.done (for a tool call
response.function_call_arguments.delta … / .done), and response.completed (or
response.incomplete). A stream that breaks ends with an ``error`` event and response.failed.

Storing (`store`, default true): once an answer is complete — model, cache or plugin — the
encoder keeps it in the `ResponseStore` for ``server.responses_ttl``: the Response object for
``GET /v1/responses/{id}``, this turn's input items for ``GET …/input_items``, and the
conversation so far as chat messages for the next ``previous_response_id``. A response's id is its
request id with the ``resp_`` prefix (``x-sigroute-request-id: req_X`` ↔ ``resp_X``).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from sigroute.gateway.errors import APIError, InvalidRequest, Unavailable
from sigroute.gateway.response_store import ResponseStore, ResponseStoreUnavailable

if TYPE_CHECKING:
    from sigroute.gateway.auth import Principal
    from sigroute.policies.schema.server import Server

__all__ = ["ResponsesSurface", "ResponsesEncoder", "ResponsesCall", "ResponsesChatBody", "parse_responses_request",
           "OPENAPI_SCHEMAS"]

log = logging.getLogger("sigroute.responses")

MESSAGE_ROLES = frozenset({"user", "assistant", "system", "developer"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
UNSUPPORTED_FIELDS = {   # fields whose meaning this gateway cannot honour: refused rather than ignored
    "background": "background responses are not supported by this gateway; send the request without "
                  "'background' (or stream it)",
    "conversation": "conversations objects are not supported by this gateway; continue a conversation with "
                    "'previous_response_id'",
    "prompt": "stored prompt templates are not supported by this gateway; send the text as 'input' and "
              "'instructions'",
}


def _bad(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


# --------------------------------------------------------------------------------------------
# the request

@dataclass(slots=True)
class ResponsesCall:
    """A checked Responses request: what the encoder echoes back and what is stored."""

    model: str
    stream: bool = False
    store: bool = True
    instructions: str | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)     # function tools, Responses-shaped
    tool_choice: Any = "auto"
    parallel_tool_calls: bool = True
    text: dict[str, Any] = field(default_factory=lambda: {"format": {"type": "text"}})
    metadata: dict[str, str] = field(default_factory=dict)
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    user: str | None = None
    reasoning_effort: str | None = None
    input_items: list[dict[str, Any]] = field(default_factory=list)     # this turn's items, with ids
    input_messages: list[dict[str, Any]] = field(default_factory=list)  # the same, as chat messages
    history: list[dict[str, Any]] = field(default_factory=list)         # the continued conversation
    ttl_s: float = 30 * 86400.0


class ResponsesChatBody(dict):
    """The internal chat body of a Responses request; `call` is the request it was made from."""

    __slots__ = ("call",)


def _optional(body: dict, name: str, kind: type, what: str) -> Any:
    """`body[name]` if it is a `kind` (str, bool or dict), None if absent or null; else a 400."""
    value = body.get(name)
    if value is not None and not isinstance(value, kind):
        raise _bad(f"'{name}' must be {what}", name)
    return value


def _number(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"'{name}' must be a number between {low:g} and {high:g}", name)
    return value


def parse_responses_request(raw: bytes, server: "Server") -> ResponsesCall:
    """Parse and check a Responses request body (everything but the stored history); raise
    `InvalidRequest` naming the field on a problem."""
    if not raw:
        raise InvalidRequest("request body is empty; send a JSON object with 'model' and 'input'", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object with 'model' and 'input'", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: a model name or a routing entrypoint such as 'auto'",
                             param="model", code="missing_required_parameter")
    for name, why in UNSUPPORTED_FIELDS.items():
        if body.get(name) not in (None, False):
            raise _bad(why, name, code="unsupported_parameter")
    call = ResponsesCall(model=model, ttl_s=server.responses_ttl)
    call.stream = bool(_optional(body, "stream", bool, "true or false"))
    store = _optional(body, "store", bool, "true or false")
    call.store = True if store is None else store
    call.instructions = _optional(body, "instructions", str, "a string")
    previous = _optional(body, "previous_response_id", str, "the id of an earlier response ('resp_...')")
    if previous is not None and not previous:
        raise _bad("'previous_response_id' must be the id of an earlier response ('resp_...')", "previous_response_id")
    call.previous_response_id = previous
    call.temperature = _number(body, "temperature", 0, 2)
    call.top_p = _number(body, "top_p", 0, 1)
    limit = body.get("max_output_tokens")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise _bad("'max_output_tokens' must be a positive integer", "max_output_tokens")
    call.max_output_tokens = limit
    call.user = _optional(body, "user", str, "a string")
    parallel = _optional(body, "parallel_tool_calls", bool, "true or false")
    call.parallel_tool_calls = True if parallel is None else parallel
    call.metadata = _metadata(body.get("metadata"))
    reasoning = _optional(body, "reasoning", dict, "an object such as {\"effort\": \"low\"}")
    if reasoning is not None:
        effort = reasoning.get("effort")
        if effort is not None and not isinstance(effort, str):
            raise _bad("'reasoning.effort' must be a string such as 'low', 'medium' or 'high'", "reasoning.effort")
        call.reasoning_effort = effort
    call.tools = _tools(body.get("tools"), server.max_tools)
    call.tool_choice = _tool_choice(body.get("tool_choice"), bool(call.tools))
    call.text = _text(body.get("text"))
    for name, echoed in (("tools", call.tools), ("text", call.text)):   # echoed in the answer: it must encode
        try:
            orjson.dumps(echoed)
        except orjson.JSONEncodeError:
            raise _bad(f"'{name}' is nested too deeply (JSON schemas here may nest at most ~250 levels)", name) \
                from None
    if "input" not in body or body["input"] is None:
        raise InvalidRequest("'input' is required: a string, or a list of message / function_call / "
                             "function_call_output items", param="input", code="missing_required_parameter")
    call.input_items, call.input_messages = input_to_messages(body["input"], server.max_messages)
    return call


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("'metadata' must be an object of string values", "metadata")
    if len(value) > 16:
        raise _bad(f"'metadata' has {len(value)} keys; at most 16 are allowed", "metadata")
    for key, item in value.items():
        if len(key) > 64:
            raise _bad("'metadata' keys must be at most 64 characters", "metadata")
        if not isinstance(item, str) or len(item) > 512:
            raise _bad(f"'metadata.{key}' must be a string of at most 512 characters", f"metadata.{key}")
    return dict(value)


def _tools(value: Any, max_tools: int) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _bad("'tools' must be a list of function tools", "tools")
    if len(value) > max_tools:
        raise _bad(f"'tools' has {len(value)} entries; this gateway accepts at most {max_tools} (server.max_tools)",
                   "tools")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _bad(f"{where} must be an object such as {{\"type\": \"function\", \"name\": ...}}", where)
        kind = tool.get("type")
        if kind != "function":
            raise _bad(f"{where}.type is {kind!r}; this gateway supports only function tools "
                       "({\"type\": \"function\", \"name\", \"description\", \"parameters\"}); built-in tools "
                       "(web_search, file_search, computer_use, mcp, ...) are not available", f"{where}.type",
                       code="unsupported_tool")
        name = tool.get("name")
        if not isinstance(name, str) or not name:
            raise _bad(f"{where}.name is required: the function's name", f"{where}.name")
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad(f"{where}.description must be a string", f"{where}.description")
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise _bad(f"{where}.parameters must be a JSON Schema object", f"{where}.parameters")
        strict = tool.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise _bad(f"{where}.strict must be true or false", f"{where}.strict")
        tools.append({"type": "function", "name": name, "description": description, "parameters": parameters,
                      "strict": strict})
    return tools


def _tool_choice(value: Any, has_tools: bool) -> Any:
    if value is None:
        return "auto"
    if value in ("none", "auto", "required"):
        if value == "required" and not has_tools:
            raise _bad("'tool_choice' is 'required' but no 'tools' were given", "tool_choice")
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        if not isinstance(value.get("name"), str) or not value["name"]:
            raise _bad("'tool_choice.name' must name one of the function tools", "tool_choice.name")
        if not has_tools:
            raise _bad("'tool_choice' names a function but no 'tools' were given", "tool_choice")
        return {"type": "function", "name": value["name"]}
    raise _bad("'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...}",
               "tool_choice")


def _text(value: Any) -> dict[str, Any]:
    if value is None:
        return {"format": {"type": "text"}}
    if not isinstance(value, dict):
        raise _bad("'text' must be an object such as {\"format\": {\"type\": \"json_schema\", ...}}", "text")
    fmt = value.get("format")
    out = {k: v for k, v in value.items() if k == "verbosity" and isinstance(v, str)}
    if fmt is None:
        out["format"] = {"type": "text"}
        return out
    if not isinstance(fmt, dict):
        raise _bad("'text.format' must be an object with a 'type'", "text.format")
    kind = fmt.get("type")
    if kind in ("text", "json_object"):
        out["format"] = {"type": kind}
    elif kind == "json_schema":
        name, schema, strict = fmt.get("name"), fmt.get("schema"), fmt.get("strict")
        if not isinstance(name, str) or not name:
            raise _bad("'text.format.name' is required for json_schema: the schema's name", "text.format.name")
        if not isinstance(schema, dict):
            raise _bad("'text.format.schema' must be a JSON Schema object", "text.format.schema")
        if strict is not None and not isinstance(strict, bool):
            raise _bad("'text.format.strict' must be true or false", "text.format.strict")
        description = fmt.get("description")
        if description is not None and not isinstance(description, str):
            raise _bad("'text.format.description' must be a string", "text.format.description")
        out["format"] = {"type": "json_schema", "name": name, "schema": schema, "strict": strict,
                         **({"description": description} if description is not None else {})}
    else:
        raise _bad(f"'text.format.type' is {kind!r}; expected 'text', 'json_schema' or 'json_object'",
                   "text.format.type")
    return out


def input_to_messages(value: Any, max_items: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The `input` of a request as (Responses items with ids, chat messages)."""
    if isinstance(value, str):
        item = {"type": "message", "id": _new_id("msg"), "role": "user", "status": "completed",
                "content": [{"type": "input_text", "text": value}]}
        return [item], [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise _bad("'input' must be a string or a non-empty list of items", "input")
    if len(value) > max_items:
        raise _bad(f"'input' has {len(value)} items; this gateway accepts at most {max_items} (server.max_messages)",
                   "input")
    items: list[dict[str, Any]] = []
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(value):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object (a message, function_call or function_call_output item)", where)
        kind = item.get("type")
        if kind is None and "role" in item:
            kind = "message"
        if kind == "message":
            stored, message = _message_item(item, where)
            messages.append(message)
        elif kind == "function_call":
            stored, call = _function_call_item(item, where)
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":   # one assistant turn: its text and its calls
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            stored, message = _function_output_item(item, where)
            messages.append(message)
        else:
            raise _bad(f"{where}.type is {kind!r}; this gateway accepts 'message', 'function_call' and "
                       "'function_call_output' items", f"{where}.type", code="unsupported_value")
        items.append(stored)
    return items, messages


def _message_item(item: dict, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    role = item.get("role")
    if not isinstance(role, str) or role not in MESSAGE_ROLES:
        raise _bad(f"{where}.role is {role!r}; expected one of {', '.join(sorted(MESSAGE_ROLES))}", f"{where}.role")
    content = item.get("content")
    item_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else _new_id("msg")
    text_kind = "output_text" if role == "assistant" else "input_text"
    if isinstance(content, str):
        part = {"type": text_kind, "text": content, **({"annotations": []} if role == "assistant" else {})}
        return ({"type": "message", "id": item_id, "role": role, "status": "completed", "content": [part]},
                {"role": role, "content": content})
    if not isinstance(content, list) or not content:
        raise _bad(f"{where}.content must be a string or a non-empty list of content parts", f"{where}.content")
    stored_parts, chat_parts = [], []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise _bad(f"{at} must be an object with a 'type'", at)
        kind = part["type"]
        if kind in TEXT_PARTS or kind == "refusal":
            key = "refusal" if kind == "refusal" else "text"
            text = part.get(key)
            if not isinstance(text, str):
                raise _bad(f"{at}.{key} must be a string", f"{at}.{key}")
            chat_parts.append({"type": "text", "text": text})
            stored_parts.append({"type": text_kind, "text": text,
                                 **({"annotations": []} if role == "assistant" else {})})
            continue
        if role != "user":
            raise _bad(f"{at}.type is {kind!r}; {role} messages take only text parts", f"{at}.type")
        if kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise _bad(f"{at}.image_url must be the image's URL or a data: URL (images by file_id are not "
                           "supported by this gateway)", f"{at}.image_url")
            detail = part.get("detail") if part.get("detail") in ("low", "high", "auto") else "auto"
            chat_parts.append({"type": "image_url", "image_url": {"url": url, "detail": detail}})
            stored_parts.append({"type": "input_image", "image_url": url, "detail": detail})
        elif kind == "input_file":
            file = {k: part[k] for k in ("file_data", "file_id", "filename") if isinstance(part.get(k), str)}
            if "file_data" not in file and "file_id" not in file:
                raise _bad(f"{at} needs 'file_data' (base64) or 'file_id'", at)
            chat_parts.append({"type": "file", "file": file})
            stored_parts.append({"type": "input_file", **file})
        else:
            raise _bad(f"{at}.type is {kind!r}; expected input_text, input_image, input_file or output_text",
                       f"{at}.type")
    if role == "assistant":   # an assistant turn as chat text
        chat_content: Any = "".join(p["text"] for p in chat_parts)
    else:
        chat_content = chat_parts
    return ({"type": "message", "id": item_id, "role": role, "status": "completed", "content": stored_parts},
            {"role": role, "content": chat_content})


def _function_call_item(item: dict, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    for key in ("call_id", "name"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise _bad(f"{where}.{key} is required for a function_call item", f"{where}.{key}")
    arguments = item.get("arguments")
    if not isinstance(arguments, str):
        raise _bad(f"{where}.arguments must be the call's arguments as a JSON string", f"{where}.arguments")
    item_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else _new_id("fc")
    stored = {"type": "function_call", "id": item_id, "call_id": item["call_id"], "name": item["name"],
              "arguments": arguments, "status": "completed"}
    return stored, {"id": item["call_id"], "type": "function", "function": {"name": item["name"],
                                                                            "arguments": arguments}}


def _function_output_item(item: dict, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise _bad(f"{where}.call_id is required: the call_id of the function_call it answers", f"{where}.call_id")
    output = item.get("output")
    if isinstance(output, list):   # output as content parts: their text
        if not all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in output):
            raise _bad(f"{where}.output must be a string or a list of text parts", f"{where}.output")
        output = "".join(p.get("text", "") for p in output)
    if not isinstance(output, str):
        raise _bad(f"{where}.output must be the function's result as a string", f"{where}.output")
    item_id = item.get("id") if isinstance(item.get("id"), str) and item.get("id") else _new_id("fco")
    return ({"type": "function_call_output", "id": item_id, "call_id": call_id, "output": output,
             "status": "completed"},
            {"role": "tool", "tool_call_id": call_id, "content": output})


def chat_body(call: ResponsesCall, max_messages: int) -> ResponsesChatBody:
    """The pipeline's chat-completions body for `call` (its history already loaded)."""
    messages = ([{"role": "system", "content": call.instructions}] if call.instructions else []) \
        + call.history + call.input_messages
    if len(messages) > max_messages:
        raise _bad(f"the conversation has {len(messages)} messages with its history; this gateway accepts at most "
                   f"{max_messages} (server.max_messages); start a new conversation",
                   "previous_response_id" if call.history else "input")
    body = ResponsesChatBody(model=call.model, messages=messages)
    body.call = call
    if call.stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}   # the completed response reports usage
    if call.tools:
        body["tools"] = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters",
                                                                             "strict") if t[k] is not None}}
                         for t in call.tools]
        choice = call.tool_choice
        body["tool_choice"] = ({"type": "function", "function": {"name": choice["name"]}}
                               if isinstance(choice, dict) else choice)
        body["parallel_tool_calls"] = call.parallel_tool_calls
    fmt = call.text["format"]
    if fmt["type"] == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt["type"] == "json_schema":
        body["response_format"] = {"type": "json_schema", "json_schema": {
            k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}}
    for name, value in (("max_tokens", call.max_output_tokens), ("temperature", call.temperature),
                        ("top_p", call.top_p), ("user", call.user), ("reasoning_effort", call.reasoning_effort)):
        if value is not None:
            body[name] = value
    if call.metadata:
        body["metadata"] = dict(call.metadata)
    return body


# --------------------------------------------------------------------------------------------
# the answer

def _usage(usage: Any) -> dict[str, Any] | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens") or 0
    completion = usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": usage.get("total_tokens") or prompt + completion}


def _status(finish_reason: Any) -> tuple[str, dict[str, str] | None]:
    if finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def output_items(message: dict[str, Any], response_id: str, item_status: str) -> list[dict[str, Any]]:
    """A chat completion's message as Responses output items."""
    out: list[dict[str, Any]] = []
    content, refusal = message.get("content"), message.get("refusal")
    parts = ([_text_part(content)] if isinstance(content, str) and content else []) \
        + ([{"type": "refusal", "refusal": refusal}] if isinstance(refusal, str) and refusal else [])
    if parts:
        out.append({"type": "message", "id": "msg_" + response_id[5:], "status": item_status, "role": "assistant",
                    "content": parts})
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        out.append({"type": "function_call", "id": f"fc_{response_id[5:]}_{i}",
                    "call_id": call.get("id") or _new_id("call"), "name": function.get("name") or "",
                    "arguments": function.get("arguments") or "", "status": "completed"})
    return out


def conversation_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Output items as the chat message that continues the conversation (none if nothing was said)."""
    text = "".join(p.get("text", "") for item in output if item["type"] == "message"
                   for p in item["content"] if p["type"] == "output_text")
    calls = [{"id": item["call_id"], "type": "function", "function": {"name": item["name"],
                                                                      "arguments": item["arguments"]}}
             for item in output if item["type"] == "function_call"]
    if not text and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


class ResponsesEncoder:
    """One request's answer as a Response object or its event stream; stores it once complete."""

    def __init__(self, surface: "ResponsesSurface", call: ResponsesCall, response_id: str, tenant: str):
        self.surface = surface
        self.call = call
        self.id = response_id
        self.tenant = tenant
        self.created_at = int(time.time())
        self.model = call.model
        self.sequence = 0
        self.items: list[dict[str, Any]] = []     # output items, in order (open ones included)
        self.text: list[str] | None = None        # the open message item's text so far
        self.arguments: list[str] | None = None   # the open function_call item's arguments so far
        self.calls: set[int] = set()              # chat tool-call indices seen
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self._delta_head: bytes | None = None     # the open message's text-delta event up to the delta

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None,
                 incomplete: dict[str, str] | None = None, error: dict[str, str] | None = None) -> dict[str, Any]:
        call = self.call
        return {"id": self.id, "object": "response", "created_at": self.created_at, "status": status,
                "background": False, "error": error, "incomplete_details": incomplete,
                "instructions": call.instructions, "max_output_tokens": call.max_output_tokens,
                "model": self.model, "output": output, "parallel_tool_calls": call.parallel_tool_calls,
                "previous_response_id": call.previous_response_id, "reasoning": {"effort": call.reasoning_effort,
                                                                                 "summary": None},
                "store": call.store, "temperature": call.temperature, "text": call.text,
                "tool_choice": call.tool_choice, "tools": call.tools, "top_p": call.top_p, "truncation": "disabled",
                "usage": usage, "user": call.user, "metadata": call.metadata}

    # a whole answer ----------------------------------------------------------------------------
    async def whole(self, body: dict[str, Any], encoded: bytes | None) -> bytes:
        self.model = body.get("model") or self.model
        choices = body.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        status, incomplete = _status(choice.get("finish_reason"))
        output = output_items(choice.get("message") or {}, self.id, status)
        response = self.response(status, output, _usage(body.get("usage")), incomplete)
        encoded_response = orjson.dumps(response)
        await self.surface.keep(self, response, encoded_response)
        return encoded_response

    # a stream ----------------------------------------------------------------------------------
    def _event(self, type_: str, **fields: Any) -> bytes:
        payload = {"type": type_, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def start(self) -> bytes:
        opening = self.response("in_progress", [], None)
        return self._event("response.created", response=opening) + self._event("response.in_progress",
                                                                               response=opening)

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        if isinstance(chunk.get("model"), str):
            self.model = chunk["model"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        out: list[bytes] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue   # (a Responses answer has one choice)
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self.arguments is not None:
                    out.append(self._close_call())
                if self.text is None:
                    out.append(self._open_message())
                self.text.append(text)
                out.append(self._text_delta(text))
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                function = call.get("function") or {}
                if call.get("index", 0) not in self.calls:
                    self.calls.add(call.get("index", 0))
                    out.append(self._close_message() if self.text is not None else b"")
                    out.append(self._close_call() if self.arguments is not None else b"")
                    out.append(self._open_call(call.get("id"), function.get("name")))
                item = self.items[-1]
                if function.get("name") and not item["name"]:
                    item["name"] = function["name"]
                arguments = function.get("arguments")
                if isinstance(arguments, str) and arguments and self.arguments is not None:
                    self.arguments.append(arguments)
                    out.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                           output_index=len(self.items) - 1, delta=arguments))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return b"".join(out)

    def _text_delta(self, text: str) -> bytes:
        """response.output_text.delta, the hot path of a stream: written directly (the same bytes
        `_event` would make)."""
        head = self._delta_head
        if head is None:
            head = self._delta_head = (b'data: {"type":"response.output_text.delta","item_id":'
                                       + orjson.dumps(self.items[-1]["id"])
                                       + b',"output_index":%d,"content_index":0,"delta":' % (len(self.items) - 1))
        self.sequence += 1
        return (b"event: response.output_text.delta\n" + head + orjson.dumps(text)
                + b',"logprobs":[],"sequence_number":%d}\n\n' % (self.sequence - 1))

    def _open_message(self) -> bytes:
        item = {"type": "message", "id": "msg_" + self.id[5:], "status": "in_progress", "role": "assistant",
                "content": []}
        if any(i["type"] == "message" for i in self.items):   # text again after a tool call: a new item
            item["id"] += f"_{len(self.items)}"
        self.items.append(item)
        self.text = []
        self._delta_head = None
        index = len(self.items) - 1
        return (self._event("response.output_item.added", output_index=index, item=item)
                + self._event("response.content_part.added", item_id=item["id"], output_index=index,
                              content_index=0, part=_text_part("")))

    def _close_message(self, status: str = "completed") -> bytes:
        index = next(i for i in range(len(self.items) - 1, -1, -1) if self.items[i]["type"] == "message")
        item, text = self.items[index], "".join(self.text or ())
        self.text = None
        part = _text_part(text)
        item["content"], item["status"] = [part], status
        return (self._event("response.output_text.done", item_id=item["id"], output_index=index, content_index=0,
                            text=text, logprobs=[])
                + self._event("response.content_part.done", item_id=item["id"], output_index=index, content_index=0,
                              part=part)
                + self._event("response.output_item.done", output_index=index, item=item))

    def _open_call(self, call_id: Any, name: Any) -> bytes:
        item = {"type": "function_call", "id": f"fc_{self.id[5:]}_{len(self.items)}",
                "call_id": call_id if isinstance(call_id, str) and call_id else _new_id("call"),
                "name": name if isinstance(name, str) else "", "arguments": "", "status": "in_progress"}
        self.items.append(item)
        self.arguments = []
        return self._event("response.output_item.added", output_index=len(self.items) - 1, item=item)

    def _close_call(self) -> bytes:
        index = next(i for i in range(len(self.items) - 1, -1, -1) if self.items[i]["type"] == "function_call")
        item = self.items[index]
        item["arguments"], item["status"] = "".join(self.arguments or ()), "completed"
        self.arguments = None
        return (self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                            arguments=item["arguments"])
                + self._event("response.output_item.done", output_index=index, item=item))

    async def end(self) -> bytes:
        status, incomplete = _status(self.finish_reason)
        out = []
        if self.text is not None:
            out.append(self._close_message("incomplete" if status == "incomplete" else "completed"))
        if self.arguments is not None:
            out.append(self._close_call())
        response = self.response(status, self.items, _usage(self.usage), incomplete)
        encoded_response = orjson.dumps(response)
        await self.surface.keep(self, response, encoded_response)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        out.append(b"event: %s\ndata: {\"type\":\"%s\",\"response\":%s,\"sequence_number\":%d}\n\n"
                   % (kind.encode(), kind.encode(), encoded_response, self.sequence))
        self.sequence += 1
        return b"".join(out)

    def error(self, message: str, code: str, type: str) -> bytes:
        for item in self.items:
            if item["status"] == "in_progress":
                item["status"] = "incomplete"
                if item["type"] == "message":
                    item["content"] = [_text_part("".join(self.text or ()))]
                else:
                    item["arguments"] = "".join(self.arguments or ())
        failed = self.response("failed", self.items, _usage(self.usage),
                               error={"code": "server_error", "message": message})
        return (self._event("error", code=code, message=message, param=None)
                + self._event("response.failed", response=failed))


# --------------------------------------------------------------------------------------------
# the surface

def _not_found(response_id: str, param: str | None) -> APIError:
    return APIError(f"Response with id '{response_id}' not found: no response of this API key's tenant has it (it "
                    "may have been created with store: false, deleted, or kept longer than server.responses_ttl)",
                    status=404, type="invalid_request_error", param=param, code="response_not_found")


class ResponsesSurface:
    """POST /v1/responses, and the stored responses behind GET/DELETE /v1/responses/{id}."""

    api = "responses"

    def __init__(self, store: ResponseStore):
        self.store = store

    async def request(self, raw: bytes, principal: "Principal", server: "Server") -> ResponsesChatBody:
        call = parse_responses_request(raw, server)
        if call.previous_response_id is not None:
            record = await self._record(principal.tenant, call.previous_response_id, "previous_response_id")
            call.history = record["messages"]
        return chat_body(call, server.max_messages)

    def encoder(self, body: dict[str, Any], request_id: str, principal: "Principal") -> ResponsesEncoder:
        call = getattr(body, "call", None)
        if call is None:   # (only a body this surface made reaches here)
            raise TypeError("the Responses surface's encoder needs the body its request() made")
        return ResponsesEncoder(self, call, "resp_" + request_id.removeprefix("req_"), principal.tenant)

    def error(self, exc: APIError) -> bytes:
        return exc.json()   # the Responses API's errors are OpenAI-shaped

    # the store ---------------------------------------------------------------------------------
    async def keep(self, encoder: ResponsesEncoder, response: dict[str, Any], encoded_response: bytes) -> None:
        """Store a complete answer (unless the request said `store: false`): the record is
        ``{"response", "input_items", "messages"}`` (`encoded_response` is `response` as JSON, spliced
        in rather than encoded again). A store failure does not fail the answer already produced: it
        is logged, and the response cannot be continued."""
        call = encoder.call
        if not call.store:
            return
        record = (b'{"response":' + encoded_response + b',"input_items":' + orjson.dumps(call.input_items)
                  + b',"messages":' + orjson.dumps(call.history + call.input_messages
                                                   + conversation_messages(response["output"])) + b"}")
        try:
            await self.store.put(encoder.tenant, encoder.id, record, call.ttl_s)
        except (ResponseStoreUnavailable, OSError) as exc:
            log.warning("response %s was answered but not stored: %s", encoder.id, exc)

    async def _record(self, tenant: str, response_id: str, param: str | None) -> dict[str, Any]:
        try:
            raw = await self.store.get(tenant, response_id)
        except ResponseStoreUnavailable as exc:
            log.warning("reading response %s failed: %s", response_id, exc)
            raise Unavailable("stored responses cannot be read right now (their store is unavailable); retry later",
                              code="response_store_unavailable", headers={"retry-after": "1"}) from None
        if raw is None:
            raise _not_found(response_id, param)
        return orjson.loads(raw)

    async def retrieve(self, tenant: str, response_id: str) -> bytes:
        """GET /v1/responses/{id}."""
        return orjson.dumps((await self._record(tenant, response_id, "response_id"))["response"])

    async def delete(self, tenant: str, response_id: str) -> bytes:
        """DELETE /v1/responses/{id}."""
        try:
            removed = await self.store.delete(tenant, response_id)
        except ResponseStoreUnavailable as exc:
            log.warning("deleting response %s failed: %s", response_id, exc)
            raise Unavailable("stored responses cannot be deleted right now (their store is unavailable); retry later",
                              code="response_store_unavailable", headers={"retry-after": "1"}) from None
        if not removed:
            raise _not_found(response_id, "response_id")
        return orjson.dumps({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, tenant: str, response_id: str, limit: int, order: str, after: str | None) -> bytes:
        """GET /v1/responses/{id}/input_items: this response's input items, a cursor page."""
        items = list((await self._record(tenant, response_id, "response_id"))["input_items"])
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item.get("id") for item in items]
            if after not in ids:
                raise _bad(f"'after' is {after!r}, which is not an input item of response '{response_id}'", "after")
            items = items[ids.index(after) + 1:]
        page = items[:limit]
        return orjson.dumps({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                             "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})


# --------------------------------------------------------------------------------------------
# The OpenAPI description of the bodies (merged into GET /openapi.json by `gateway.app`)

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TEXT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": True,
              "properties": {"type": {"enum": ["input_text", "output_text"]}, "text": {"type": "string"}}}
_IMAGE_PART = {"type": "object", "required": ["type", "image_url"], "additionalProperties": True,
               "properties": {"type": {"const": "input_image"}, "image_url": {"type": "string", "minLength": 1},
                              "detail": {"enum": ["low", "high", "auto"]}}}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "ResponsesInputItem": {"anyOf": [
        {"type": "object", "required": ["role", "content"], "additionalProperties": True,
         "description": "a message",
         "properties": {"type": {"const": "message"}, "role": {"enum": sorted(MESSAGE_ROLES)},
                        "content": {"anyOf": [{"type": "string"},
                                              {"type": "array", "items": {"anyOf": [_TEXT_PART, _IMAGE_PART]}}]}}},
        {"type": "object", "required": ["type", "call_id", "name", "arguments"], "additionalProperties": True,
         "description": "a function call the model made earlier",
         "properties": {"type": {"const": "function_call"}, "call_id": {"type": "string", "minLength": 1},
                        "name": {"type": "string", "minLength": 1}, "arguments": {"type": "string"}}},
        {"type": "object", "required": ["type", "call_id", "output"], "additionalProperties": True,
         "description": "the result of a function call",
         "properties": {"type": {"const": "function_call_output"}, "call_id": {"type": "string", "minLength": 1},
                        "output": {"type": "string"}}}]},
    "ResponsesRequest": {
        "type": "object", "required": ["model", "input"], "additionalProperties": True,
        "description": "OpenAI Responses API; routed like a chat completion whose messages are the instructions, "
                       "the stored conversation of previous_response_id, and the input",
        "properties": {
            "model": {"type": "string", "minLength": 1, "examples": ["auto"],
                      "description": "a routing entrypoint (e.g. 'auto') or, if the policy allows, a model"},
            "input": {"anyOf": [{"type": "string"}, {"type": "array", "minItems": 1, "maxItems": 4096,
                                                     "items": _ref("ResponsesInputItem")}]},
            "instructions": {"type": ["string", "null"]},
            "previous_response_id": {"type": ["string", "null"], "minLength": 1},
            "store": {"type": ["boolean", "null"]},
            "stream": {"type": ["boolean", "null"]},
            "tools": {"type": "array", "maxItems": 512, "items": {
                "type": "object", "required": ["type", "name"], "additionalProperties": True,
                "properties": {"type": {"const": "function"}, "name": {"type": "string", "minLength": 1},
                               "description": {"type": ["string", "null"]},
                               "parameters": {"type": ["object", "null"]}, "strict": {"type": ["boolean", "null"]}}}},
            "tool_choice": {"anyOf": [{"enum": ["none", "auto"]}, {
                "type": "object", "required": ["type", "name"],
                "properties": {"type": {"const": "function"}, "name": {"type": "string", "minLength": 1}}}]},
            "parallel_tool_calls": {"type": ["boolean", "null"]},
            "text": {"type": "object", "properties": {"format": {"anyOf": [
                {"type": "object", "required": ["type"], "properties": {"type": {"enum": ["text", "json_object"]}}},
                {"type": "object", "required": ["type", "name", "schema"],
                 "properties": {"type": {"const": "json_schema"}, "name": {"type": "string", "minLength": 1},
                                "schema": {"type": "object"}, "strict": {"type": ["boolean", "null"]}}}]}}},
            "max_output_tokens": {"type": ["integer", "null"], "minimum": 1},
            "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
            "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "metadata": {"type": ["object", "null"], "maxProperties": 16,
                         "propertyNames": {"maxLength": 64},
                         "additionalProperties": {"type": "string", "maxLength": 512}},
            "user": {"type": "string"}}},
    "ResponsesResponse": {
        "type": "object", "required": ["id", "object", "created_at", "status", "model", "output"],
        "properties": {"id": {"type": "string"}, "object": {"const": "response"},
                       "created_at": {"type": "number"},
                       "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
                       "model": {"type": "string"}, "output": {"type": "array", "items": {"type": "object"}},
                       "usage": {"type": ["object", "null"]}, "previous_response_id": {"type": ["string", "null"]}}},
    "ResponsesStreamEvent": {
        "type": "object", "required": ["event", "data"],
        "description": "one server-sent event of a streamed response: `event: TYPE` and `data: {type, "
                       "sequence_number, ...}`, from response.created to response.completed (or "
                       "response.incomplete); a failure after the first byte is an `error` event and "
                       "response.failed",
        "properties": {"event": {"type": "string"}, "data": {
            "type": "string", "contentMediaType": "application/json",
            "contentSchema": {"type": "object", "required": ["type", "sequence_number"]}}}},
    "ResponsesDeleted": {
        "type": "object", "required": ["id", "object", "deleted"],
        "properties": {"id": {"type": "string"}, "object": {"const": "response"}, "deleted": {"const": True}}},
    "ResponsesInputItemList": {
        "type": "object", "required": ["object", "data", "has_more"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {"type": "object"}},
                       "first_id": {"type": ["string", "null"]}, "last_id": {"type": ["string", "null"]},
                       "has_more": {"type": "boolean"}}},
}
