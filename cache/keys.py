"""Isolation keys of the cache: the partition a request belongs to, and its exact-match key.

A cached answer may only be served to a request in the *same partition*. `partition_key` hashes a
canonical JSON of everything that may change what a correct answer is, or who may see it:

* ``tenant`` (always) and ``user`` (pass it only when the policy scopes the cache per user;
  ``None`` shares entries across a tenant's users);
* ``decision`` (the policy branch: its plugins, system prompt and models differ);
* ``models``: the candidate model set (order-insensitive: it is sorted);
* ``system_prompt``: a fingerprint (sha256) of the system prompt(s) *as sent upstream*, after
  plugins (``None`` and ``""`` are the same: no system prompt). Whitespace is collapsed;
* ``tools``, ``response_format``: canonical JSON (object keys sorted, list order kept: the order
  of tools is part of the prompt);
* ``params``: generation parameters. Pass the request's remaining body parameters; every key is
  included **except** those in `IGNORED_PARAMS` (transport, bookkeeping and keys covered
  elsewhere) and ``None`` values (an explicit null means "the default"). Unknown parameters are
  therefore included: a new provider option splits the partition rather than risking a wrong
  answer. Numbers are canonical (``1`` and ``1.0`` are the same temperature). The parameters
  that typically matter: temperature, top_p, top_k, max_tokens, max_completion_tokens, stop,
  seed, n, presence_penalty, frequency_penalty, repetition_penalty, logit_bias, logprobs,
  top_logprobs, tool_choice, parallel_tool_calls, reasoning_effort, modalities, ...;
* ``history``: the conversation before the message being answered (without system messages,
  which ``system_prompt`` covers). The semantic tier compares only the last user message, so
  two conversations share a partition only when everything before that message is identical;
* ``stream``: a streamed and a non-streamed answer are stored (and replayed) differently.

`exact_key(partition, messages)` is the exact-match key *and the document id*: a hash of the
partition and the normalized conversation. Normalization: Unicode NFC, whitespace runs collapsed
to one space, leading/trailing whitespace stripped, **case preserved** ("Paris" and "paris" may
be different questions: code, identifiers, acronyms; the semantic tier catches case variants when
the policy allows it). Every message's role, name, content (text parts joined in order; non-text
parts such as images by canonical JSON), tool calls and tool call id count.

Both keys are 32 hex characters (the first 128 bits of a sha256), stable across processes,
machines and Python versions (they are shared through Redis).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import unicodedata
from typing import Any, Iterable, Mapping

__all__ = ["IGNORED_PARAMS", "KEY_VERSION", "exact_key", "normalize_text", "partition_key"]

KEY_VERSION = 2

# Request keys that never change the answer's content, or are covered by another argument.
IGNORED_PARAMS = frozenset({
    "model", "messages", "stream", "stream_options", "tools", "functions", "response_format",
    "user", "metadata", "store", "service_tier", "extra_headers", "timeout", "request_id",
})

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, stripped; case preserved."""
    return _WS.sub(" ", unicodedata.normalize("NFC", text)).strip()


def _canon(value: Any) -> Any:
    """A JSON-able, canonical copy: integral floats become ints, dict keys sorted on dump."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return repr(value)
        return int(value) if value.is_integer() else value
    if isinstance(value, int):
        return value
    if isinstance(value, Mapping):
        return {str(k): _canon(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
    if hasattr(value, "model_dump"):  # pydantic models (wire schema objects)
        return _canon(value.model_dump(exclude_none=True))
    return str(value)


def _dumps(value: Any) -> str:
    return json.dumps(_canon(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return normalize_text(content)
    if isinstance(content, (list, tuple)):
        out = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                out.append(normalize_text(str(part.get("text", ""))))
            elif isinstance(part, str):
                out.append(normalize_text(part))
            else:
                out.append(_dumps(part))
        return "\n".join(out)
    return _dumps(content)


def partition_key(*, tenant: str, user: str | None = None, decision: str, models: Iterable[str],
                  system_prompt: str | list | None = None, tools: Any = None, response_format: Any = None,
                  params: Mapping[str, Any] | None = None, stream: bool = False,
                  history: Iterable[Any] = ()) -> str:
    """The isolation partition of a request (32 hex chars); see the module docstring."""
    if not isinstance(tenant, str) or not tenant:
        raise ValueError(f"tenant must be a non-empty string, got {tenant!r}")
    system = _content_text(system_prompt)
    kept = {k: v for k, v in (params or {}).items() if k not in IGNORED_PARAMS and v is not None}
    doc = {
        "v": KEY_VERSION,
        "tenant": tenant,
        "user": user,
        "decision": decision,
        "models": sorted(set(models)),
        "system": _hash(system) if system else None,
        "tools": tools or None,
        "response_format": response_format or None,
        "params": kept,
        "stream": bool(stream),
        "history": _hash(_dumps([_message_repr(m) for m in history])) if history else None,
    }
    return _hash(_dumps(doc))


def _message_repr(message: Any) -> dict:
    if hasattr(message, "model_dump"):
        message = message.model_dump(exclude_none=True)
    if not isinstance(message, Mapping):
        raise ValueError(f"a message must be a mapping with 'role' and 'content', got {type(message).__name__}")
    out = {"role": message.get("role"), "content": _content_text(message.get("content"))}
    for key in ("name", "tool_call_id", "tool_calls", "function_call"):
        if message.get(key) is not None:
            out[key] = message[key]
    return out


def exact_key(partition: str, messages: Iterable[Any]) -> str:
    """The exact-match key (= document id) of a conversation within `partition` (32 hex chars)."""
    return _hash(_dumps({"v": KEY_VERSION, "p": partition, "m": [_message_repr(m) for m in messages]}))
