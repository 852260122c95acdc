"""The OpenAI chat-completions wire format: request checks and response/SSE encoding.

Requests are checked just enough to route them safely and to give a precise 400 (with `param`
naming the offending field) instead of an upstream's less helpful one. Everything else in the body
(tools, response_format, stop, seed, logprobs, vendor extensions, …) passes through untouched.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import orjson

from sigroute.bandits.tradeoff import TRADEOFF_HEADER, parse_dial
from sigroute.gateway.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
PART_TYPES = frozenset({"text", "image_url", "input_audio", "file", "refusal", "input_text", "input_image"})


def _bad(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param, code="invalid_value")


def parse_chat_request(raw: bytes, max_messages: int = 4096, max_tools: int = 512) -> dict[str, Any]:
    """Parse and check a chat-completion request body; raise `InvalidRequest` on a problem. The
    message and tool counts are bounded first, so a hostile body costs little to refuse."""
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
    if len(messages) > max_messages:
        raise _bad(f"'messages' has {len(messages)} entries; this gateway accepts at most {max_messages} "
                   "(server.max_messages)", "messages")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise _bad("'tools' must be a list", "tools")
    if tools is not None and len(tools) > max_tools:
        raise _bad(f"'tools' has {len(tools)} entries; this gateway accepts at most {max_tools} (server.max_tools)",
                   "tools")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _bad(f"{where} must be an object with 'role' and 'content'", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:   # (a list or an object is unhashable)
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
    return body


PRIVATE_FIELD = "sigroute"   # the body's private object: sigroute's own per-request options, never sent upstream
PRIVATE_OPTIONS = ("tradeoff",)


def take_tradeoff(body: dict[str, Any], headers: Mapping[str, str]) -> float | None:
    """The request's cost/quality dial (`bandits.tradeoff`) from the header `x-sigroute-tradeoff` or
    the body's private object ``{"sigroute": {"tradeoff": ...}}`` (the body's wins when both are
    given); the private object is removed from `body`, so it never reaches the upstream. A bad
    value is a 400 naming where it came from."""
    private = body.pop(PRIVATE_FIELD, None)
    dial = None
    value = headers.get(TRADEOFF_HEADER)
    if value is not None:
        try:
            dial = parse_dial(value)
        except ValueError as exc:
            raise InvalidRequest(f"header {TRADEOFF_HEADER}: {exc}", param=TRADEOFF_HEADER,
                                 code="invalid_value") from None
    if private is not None:
        if not isinstance(private, dict):
            raise _bad(f"'{PRIVATE_FIELD}' must be an object such as {{\"tradeoff\": 0.5}}", PRIVATE_FIELD)
        unknown = sorted(set(private) - set(PRIVATE_OPTIONS))
        if unknown:
            raise _bad(f"'{PRIVATE_FIELD}' has unknown option(s) {', '.join(unknown)}; known: "
                       f"{', '.join(PRIVATE_OPTIONS)}", f"{PRIVATE_FIELD}.{unknown[0]}")
        if "tradeoff" in private:
            try:
                dial = parse_dial(private["tradeoff"])
            except ValueError as exc:
                raise _bad(f"'{PRIVATE_FIELD}.tradeoff': {exc}", f"{PRIVATE_FIELD}.tradeoff") from None
    return dial


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


# --------------------------------------------------------------------------------------------
# streams <-> whole completions (for the cache: a streamed answer is stored whole and a cached
# answer is re-streamed as chunks)

FINISHED = frozenset({"stop", "tool_calls", "function_call"})  # "length": truncated; "content_filter": refused


class StreamAssembler:
    """Rebuilds the whole `chat.completion` from the chunks of a streamed one.

    Content and refusal deltas are concatenated per choice; tool-call deltas are merged by their
    `index` (id, type and function name taken from the first delta that has them, arguments
    concatenated). `completion()` returns the assembled body.
    """

    def __init__(self) -> None:
        self.id: str | None = None
        self.created: int | None = None
        self.system_fingerprint: str | None = None
        self.usage: dict | None = None
        self.choices: dict[int, dict[str, Any]] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        self.id = self.id or chunk.get("id")
        self.created = self.created or chunk.get("created")
        self.system_fingerprint = self.system_fingerprint or chunk.get("system_fingerprint")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for part in chunk.get("choices") or ():
            index = part.get("index", 0)
            choice = self.choices.setdefault(index, {"role": None, "content": [], "refusal": [], "tools": {},
                                                     "finish_reason": None})
            delta = part.get("delta") or {}
            if delta.get("role"):
                choice["role"] = delta["role"]
            if isinstance(delta.get("content"), str):
                choice["content"].append(delta["content"])
            if isinstance(delta.get("refusal"), str):
                choice["refusal"].append(delta["refusal"])
            for call in delta.get("tool_calls") or ():
                slot = choice["tools"].setdefault(call.get("index", 0), {"id": None, "type": "function",
                                                                         "name": "", "arguments": []})
                slot["id"] = slot["id"] or call.get("id")
                if call.get("type"):
                    slot["type"] = call["type"]
                function = call.get("function") or {}
                if function.get("name"):
                    slot["name"] = slot["name"] or function["name"]
                if isinstance(function.get("arguments"), str):
                    slot["arguments"].append(function["arguments"])
            if part.get("finish_reason"):
                choice["finish_reason"] = part["finish_reason"]

    def completion(self, model: str) -> dict[str, Any]:
        choices = []
        for index in sorted(self.choices):
            c = self.choices[index]
            message: dict[str, Any] = {"role": c["role"] or "assistant",
                                       "content": "".join(c["content"]) if c["content"] or not c["tools"] else None}
            if c["refusal"]:
                message["refusal"] = "".join(c["refusal"])
            if c["tools"]:
                message["tool_calls"] = [
                    {"id": t["id"], "type": t["type"], "function": {"name": t["name"], "arguments": "".join(t["arguments"])}}
                    for _, t in sorted(c["tools"].items())]
            choices.append({"index": index, "message": message, "finish_reason": c["finish_reason"]})
        body = {"id": self.id or "chatcmpl-assembled", "object": "chat.completion",
                "created": self.created or int(time.time()), "model": model, "choices": choices}
        if self.system_fingerprint:
            body["system_fingerprint"] = self.system_fingerprint
        if self.usage:
            body["usage"] = self.usage
        return body


def complete_answer(body: Any) -> bool:
    """Whether a completion body is a whole, successful answer worth keeping: at least one choice,
    every choice finished normally ("stop", "tool_calls") and carries content or tool calls;
    truncated ("length"), filtered or refused answers are not."""
    if not isinstance(body, dict) or body.get("error") is not None:
        return False
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    for choice in choices:
        finish_reason = choice.get("finish_reason") if isinstance(choice, dict) else None
        if not isinstance(finish_reason, str) or finish_reason not in FINISHED:
            return False
        message = choice.get("message") or {}
        if not isinstance(message, dict) or message.get("refusal"):
            return False
        if not (isinstance(message.get("content"), str) and message["content"]) and not message.get("tool_calls") \
                and not message.get("function_call"):
            return False
    return True


def completion_chunks(body: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A whole `chat.completion` as the chunks of a stream: per choice, one delta with the role
    and the whole content (and tool calls), then one with the finish reason; a usage chunk last
    when the caller asked for it (`stream_options.include_usage`)."""
    base = {"id": body.get("id"), "object": "chat.completion.chunk", "created": body.get("created"),
            "model": body.get("model")}
    if body.get("system_fingerprint"):
        base["system_fingerprint"] = body["system_fingerprint"]
    chunks = []
    for choice in body.get("choices") or ():
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": message.get("role", "assistant"), "content": message.get("content")}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        chunks.append({**base, "choices": [{"index": choice.get("index", 0), "delta": delta, "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": choice.get("index", 0), "delta": {},
                                            "finish_reason": choice.get("finish_reason")}]})
    if include_usage and body.get("usage"):
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return chunks


# --------------------------------------------------------------------------------------------
# The OpenAPI description (GET /openapi.json) of the bodies the endpoints read and answer, as JSON
# Schema. The endpoints read raw bytes (parse_chat_request and friends check them), so FastAPI
# cannot infer these; they document exactly what those checks accept, so that a client generator
# or a fuzzer (tests/test_schemathesis.py) builds meaningful requests. `gateway.app` attaches them
# to the routes.

def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_TEXT_PART = {"type": "object", "required": ["type", "text"], "additionalProperties": True,
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_OTHER_PART = {"type": "object", "required": ["type"], "additionalProperties": True,
               "properties": {"type": {"enum": sorted(PART_TYPES - {"text"})}}}
_CONTENT = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"anyOf": [_TEXT_PART, _OTHER_PART]}}]}

OPENAPI_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "description": "Every error sigroute answers, OpenAI-shaped",
        "properties": {"error": {
            "type": "object", "required": ["message", "type", "param", "code"], "additionalProperties": False,
            "properties": {"message": {"type": "string", "minLength": 1},
                           "type": {"type": "string", "minLength": 1},
                           "param": {"type": ["string", "null"]},
                           "code": {"type": "string", "minLength": 1}}}}},
    "ChatMessage": {"anyOf": [
        {"type": "object", "required": ["role", "content"], "additionalProperties": True,
         "properties": {"role": {"enum": ["system", "developer", "user"]}, "content": _CONTENT}},
        {"type": "object", "required": ["role"], "additionalProperties": True,
         "properties": {"role": {"enum": ["assistant", "tool", "function"]},
                        "content": {"anyOf": [_CONTENT, {"type": "null"}]}}}]},
    "ChatCompletionRequest": {
        "type": "object", "required": ["model", "messages"], "additionalProperties": True,
        "description": "OpenAI chat completions; fields not listed here pass through to the upstream untouched",
        "properties": {
            "model": {"type": "string", "minLength": 1,
                      "description": "a routing entrypoint (e.g. 'auto') or, if the policy allows, a model",
                      "examples": ["auto"]},
            "messages": {"type": "array", "minItems": 1, "maxItems": 4096, "items": _ref("ChatMessage"),
                         "description": "at most server.max_messages entries"},
            "stream": {"type": "boolean"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "n": {"type": "integer", "minimum": 1, "maximum": 128},
            "temperature": {"type": "number", "minimum": 0, "maximum": 2},
            "tools": {"type": "array", "maxItems": 512, "items": {"type": "object"},
                      "description": "at most server.max_tools entries"}}},
    "ChatCompletion": {
        "type": "object", "required": ["id", "object", "model", "choices"],
        "properties": {"id": {"type": "string"}, "object": {"const": "chat.completion"},
                       "model": {"type": "string"}, "created": {"type": "integer"},
                       "choices": {"type": "array", "items": {
                           "type": "object", "required": ["index", "message"],
                           "properties": {"index": {"type": "integer"}, "message": {"type": "object"},
                                          "finish_reason": {"type": ["string", "null"]}}}},
                       "usage": {"type": ["object", "null"]}}},
    "ChatCompletionStreamEvent": {
        "type": "object", "required": ["data"],
        "description": "one server-sent event of a streamed completion: `data: {chunk}` events, then "
                       "`data: [DONE]`; a failure after the first byte is an event whose data is an error",
        "properties": {"data": {"anyOf": [
            {"const": "[DONE]"},
            {"type": "string", "contentMediaType": "application/json", "contentSchema": {"anyOf": [
                {"type": "object", "required": ["object", "choices"],
                 "properties": {"object": {"const": "chat.completion.chunk"}, "choices": {"type": "array"}}},
                _ref("Error")]}}]}}},
    "FeedbackRequest": {
        "type": "object", "required": ["request_id"], "additionalProperties": False,
        "properties": {"request_id": {"type": "string", "minLength": 1,
                                      "description": "the x-sigroute-request-id header of the answer"},
                       "score": {"type": "number", "minimum": 0, "maximum": 1},
                       "thumbs": {"enum": ["up", "down"]},
                       "label": {"enum": ["correct", "incorrect"]},
                       "comment": {"type": "string"}},
        "anyOf": [{"required": ["score"]}, {"required": ["thumbs"]}, {"required": ["label"]}]},
    "Feedback": {
        "type": "object", "required": ["object", "request_id", "status", "quality"],
        "properties": {"object": {"const": "feedback"}, "request_id": {"type": "string"},
                       "status": {"enum": ["recorded", "duplicate"]}, "quality": {"type": "number"}}},
    "ModelList": {
        "type": "object", "required": ["object", "data"],
        "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": {
            "type": "object", "required": ["id", "object"],
            "properties": {"id": {"type": "string"}, "object": {"const": "model"}}}}}},
    "Dashboard": {"type": "object", "required": ["object", "policy", "decisions", "learning", "cache", "upstreams",
                                                 "recent"],
                  "description": "what the operator's dashboard (/ui) shows; see gateway/dashboard.py",
                  "properties": {"object": {"const": "dashboard"}}},
    "PrometheusText": {"type": "string", "description": "Prometheus text exposition format"},
    "RouteExplanation": {"type": "object", "description": "every signal, every decision's verdict and the choice"},
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}},
    "Readiness": {
        "type": "object", "required": ["status", "models"],
        "properties": {"status": {"enum": ["ready", "unavailable"]},
                       "models": {"type": "object", "additionalProperties": {"type": "string"}}}},
    "Reloaded": {"type": "object", "required": ["status", "decisions", "models"],
                 "properties": {"status": {"const": "reloaded"}, "decisions": {"type": "array"},
                                "models": {"type": "array"}}},
    "CacheDeleted": {"type": "object", "required": ["object", "deleted"],
                     "properties": {"object": {"const": "cache.deleted"},
                                    "deleted": {"anyOf": [{"const": "all"}, {"type": "integer", "minimum": 0}]}}},
}
