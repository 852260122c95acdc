"""The OpenAI chat-completions wire format: request checks and response/SSE encoding.

Requests are checked just enough to route them safely and to give a precise 400 (with `param`
naming the offending field) instead of an upstream's less helpful one. Everything else in the body
(tools, response_format, stop, seed, logprobs, vendor extensions, …) passes through untouched.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal", "input_text", "input_image"})


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def parse_chat_request(raw: bytes) -> dict[str, Any]:
    """Parse and check a chat-completion request body; raise `InvalidRequest` on a problem."""
    if not raw:
        raise InvalidRequest("request body is empty; send a JSON object with 'model' and 'messages'",
                             code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object with 'model' and 'messages'", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required: a model name or a routing entrypoint such as 'auto'",
                             param="model", code="missing_required_parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty list of {role, content} objects",
                             param="messages", code="missing_required_parameter")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if role not in ROLES:
            raise _bad(f"{where}.role is {role!r}; expected one of {', '.join(sorted(ROLES))}", f"{where}.role")
        content = message.get("content")
        if content is None:
            if role not in ("assistant", "tool", "function"):
                raise _bad(f"{where}.content is required for role '{role}'", f"{where}.content")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise _bad(f"{where}.content[{j}] must be an object with a 'type'", f"{where}.content[{j}]")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise _bad(f"{where}.content[{j}].text must be a string", f"{where}.content[{j}].text")
        elif not isinstance(content, str):
            raise _bad(f"{where}.content must be a string or a list of content parts", f"{where}.content")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("'stream' must be true or false", "stream")
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise _bad(f"'{name}' must be a positive integer", name)
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
        raise _bad("'n' must be an integer between 1 and 128", "n")
    temperature = body.get("temperature")
    if temperature is not None and (not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
                                    or not 0 <= temperature <= 2):
        raise _bad("'temperature' must be a number between 0 and 2", "temperature")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("'tools' must be a list", "tools")
    return body


def sse_event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def stream_error_event(message: str, code: str, type: str = "upstream_error") -> bytes:
    return sse_event({"error": {"message": message, "type": type, "param": None, "code": code}})


def model_list(entrypoints: dict[str, Any], models: list[str]) -> dict[str, Any]:
    created = int(time.time())
    data = [{"id": name, "object": "model", "created": created, "owned_by": "sigroute",
             "sigroute": {"kind": "entrypoint", "description": getattr(entry, "description", None)}}
            for name, entry in entrypoints.items()]
    data += [{"id": name, "object": "model", "created": created, "owned_by": "sigroute",
              "sigroute": {"kind": "model"}} for name in models]
    return {"object": "list", "data": data}
