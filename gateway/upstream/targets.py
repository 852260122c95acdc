"""Where a call goes and what carries it: `ModelTarget`, header changes, the `Transport` protocol.

A `ModelTarget` is a policy model resolved for calling (which transport, the model name the
server knows, the base URL, the API key read from the environment). Every transport implements
`Transport`: the same two calls, the same `UpstreamError` kinds, the same streaming contract, so
the resilience loop never asks which one it holds.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping, Protocol

from sigroute.policies.schema import ModelSpec

__all__ = ["ModelTarget", "HeaderChanges", "merged_headers", "CALL_HEADERS", "Transport",
           "OPENAI_COMPATIBLE_PREFIXES", "DEFAULT_API_BASES", "NATIVE", "payload_for"]

# Providers whose wire format is OpenAI's chat completions API.
OPENAI_COMPATIBLE_PREFIXES = ("openai/", "hosted_vllm/", "vllm/", "openai_compatible/", "custom_openai/",
                              "sglang/", "lm_studio/", "llamafile/", "deepseek/", "together_ai/",
                              "fireworks_ai/", "groq/", "mistral/", "openrouter/", "xai/", "perplexity/")
DEFAULT_API_BASES = {"openai/": "https://api.openai.com/v1"}
ANTHROPIC_API_BASE = "https://api.anthropic.com"   # the native Messages transport's default

# The private key under which an internal chat body keeps what only a native Anthropic Messages
# upstream can use (see `gateway.anthropic_wire`): on the body (marking that it carries such data),
# on messages, content parts, tool calls and tools, and as whole parts of type NATIVE.
NATIVE = "sigroute_anthropic"


@dataclass(frozen=True)
class ModelTarget:
    """A policy model resolved for calling: where, as what, with which key and limits."""

    name: str  # the policy's name for it
    spec: ModelSpec
    transport: str  # "openai", "anthropic" or "litellm"
    upstream_model: str  # the model name sent to the server (openai) or the litellm model string
    api_base: str | None
    api_key: str | None

    @classmethod
    def resolve(cls, name: str, spec: ModelSpec, environ: Mapping[str, str] = os.environ) -> "ModelTarget":
        api_key = environ.get(spec.api_key_env) if spec.api_key_env else None
        transport = spec.transport
        if transport == "auto":
            transport = "openai" if spec.provider.startswith(OPENAI_COMPATIBLE_PREFIXES) and (
                spec.api_base or spec.provider.startswith(tuple(DEFAULT_API_BASES))) else "litellm"
            if spec.provider.startswith("anthropic/") and spec.api_base:
                transport = "anthropic"
        if transport == "anthropic":   # Messages API: POST {api_base}/v1/messages
            model = spec.provider.partition("/")[2] if spec.provider.startswith("anthropic/") else spec.provider
            return cls(name, spec, "anthropic", model, (spec.api_base or ANTHROPIC_API_BASE).rstrip("/"), api_key)
        if transport == "openai":
            prefix, _, model = spec.provider.partition("/")
            api_base = spec.api_base or DEFAULT_API_BASES.get(prefix + "/")
            if not api_base:
                raise ValueError(f"model '{name}': the direct OpenAI-compatible transport needs an api_base")
            return cls(name, spec, "openai", model, api_base.rstrip("/"), api_key)
        return cls(name, spec, "litellm", spec.provider, spec.api_base, api_key)


# Per-decision header changes for upstream calls (the `headers` plugin): (headers to set, names to
# remove), both lower-cased; hashable, so prepared requests can be kept per change set.
HeaderChanges = tuple[tuple[tuple[str, str], ...], frozenset[str]]


def merged_headers(base: dict[str, str], changes: HeaderChanges | None) -> dict[str, str]:
    """A model's extra headers with a decision's changes applied."""
    if changes is None:
        return dict(base)
    to_set, to_remove = changes
    out = {k: v for k, v in base.items() if k.lower() not in to_remove}
    out.update(to_set)
    return out


# Headers of one upstream call alone (the W3C `traceparent`/`tracestate` of a traced attempt, set by
# `gateway.tracing` around each attempt of the resilience loop): (name, value) pairs, lower-case
# names, no line breaks. Transports add them to what they send; they are never part of a prepared
# request's cache key. Empty (the default, tracing off): nothing to add.
CALL_HEADERS: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("sigroute_call_headers",
                                                                   default=())


class Transport(Protocol):
    """Calls one model, adding `CALL_HEADERS` to the request. Failures are `UpstreamError`s (a body that cannot be serialized is the
    caller's `InvalidRequest`, see `errors.unsendable_body`).

    `stream` is an async generator of OpenAI chunk dicts: it ends normally only when the answer is
    complete (``[DONE]``, or a finish reason), raises `UpstreamError` (``stream_broken``,
    ``timeout``, …) otherwise, and closing it early releases the upstream response.
    """

    async def complete(self, target: ModelTarget, payload: dict[str, Any],
                       headers: HeaderChanges | None = None) -> dict[str, Any]: ...

    def stream(self, target: ModelTarget, payload: dict[str, Any],
               headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def _without_native(item: Any) -> Any:
    return {k: v for k, v in item.items() if k != NATIVE} if isinstance(item, dict) and NATIVE in item else item


def payload_for(target: ModelTarget, payload: dict[str, Any]) -> dict[str, Any]:
    """The body `target`'s transport sends: a native Messages upstream gets all of it; every other
    one gets it without the `NATIVE` data (a plain chat request). Costs one lookup for a body with
    none (every chat-completions request)."""
    if NATIVE not in payload or target.transport == "anthropic":
        return payload
    out = {k: v for k, v in payload.items() if k != NATIVE}
    messages = []
    for message in payload.get("messages") or ():
        message = _without_native(message)
        content = message.get("content")
        if isinstance(content, list):
            message = {**message, "content": [_without_native(p) for p in content
                                              if not (isinstance(p, dict) and p.get("type") == NATIVE)]}
        if message.get("tool_calls"):
            message = {**message, "tool_calls": [_without_native(c) for c in message["tool_calls"]]}
        messages.append(message)
    out["messages"] = messages
    if isinstance(out.get("tools"), list):
        out["tools"] = [_without_native(t) for t in out["tools"]]
    return out
