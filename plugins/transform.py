"""Plugins that change the request or the answer by configuration alone: `fast_response`,
`params`, `system_prompt`, `headers`."""

from __future__ import annotations

import copy
from typing import Any

from sigroute.plugins.base import Blocked, Plugin, PluginState


class FastResponse(Plugin):
    """Answer with a fixed message; the model is never called."""

    name = "fast_response"

    def __init__(self, options):
        self.message = options.message

    async def on_request(self, ctx, state: PluginState):
        state.did(self.name, "answered")
        return Blocked(self.name, "refusal", self.message, "fast_response")


class Params(Plugin):
    """Cap max_tokens, clamp temperature, fill defaults, drop disallowed parameters."""

    name = "params"

    def __init__(self, options):
        self.options = options

    async def on_request(self, ctx, state: PluginState):
        o = self.options
        body = dict(ctx.body)
        changed = []
        for name in o.drop:
            if name in body:
                del body[name]
                changed.append(f"dropped {name}")
        for name, value in o.defaults.items():
            if body.get(name) is None:
                body[name] = copy.deepcopy(value)
                changed.append(f"default {name}")
        if o.max_tokens is not None:
            keys = [k for k in ("max_tokens", "max_completion_tokens") if body.get(k) is not None] or ["max_tokens"]
            for key in keys:
                if body.get(key) is None or body[key] > o.max_tokens:
                    body[key] = o.max_tokens
                    changed.append(f"capped {key}")
        temperature = body.get("temperature")
        if temperature is not None:
            clamped = temperature
            if o.temperature_min is not None:
                clamped = max(clamped, o.temperature_min)
            if o.temperature_max is not None:
                clamped = min(clamped, o.temperature_max)
            if clamped != temperature:
                body["temperature"] = clamped
                changed.append("clamped temperature")
        elif o.temperature_max is not None and o.temperature_max < 1:
            # an omitted temperature means the provider's default (1 for most): above the cap
            body["temperature"] = o.temperature_max
            changed.append("clamped temperature")
        if not changed:
            return ctx
        state.did(self.name, "changed", "; ".join(changed))
        return ctx.with_body(body)


class SystemPrompt(Plugin):
    """Insert, replace, prepend to or append to the system prompt."""

    name = "system_prompt"
    SYSTEM_ROLES = ("system", "developer")

    def __init__(self, options):
        self.mode = options.mode
        self.text = options.text

    async def on_request(self, ctx, state: PluginState):
        messages: list[dict[str, Any]] = list(ctx.body["messages"])
        first = next((i for i, m in enumerate(messages) if m.get("role") in self.SYSTEM_ROLES), None)
        if self.mode == "insert":
            if first is not None:
                return ctx
            messages.insert(0, {"role": "system", "content": self.text})
        elif self.mode == "replace":
            messages = [{"role": "system", "content": self.text}] + [
                m for m in messages if m.get("role") not in self.SYSTEM_ROLES]
        elif first is None:
            messages.insert(0, {"role": "system", "content": self.text})
        else:
            old = dict(messages[first])
            content = old.get("content")
            if isinstance(content, list):   # content parts: add a text part
                part = {"type": "text", "text": self.text}
                old["content"] = [part, *content] if self.mode == "prepend" else [*content, part]
            else:
                content = content or ""
                old["content"] = f"{self.text}\n\n{content}" if self.mode == "prepend" else f"{content}\n\n{self.text}"
            messages[first] = old
        state.did(self.name, self.mode)
        return ctx.with_body({**ctx.body, "messages": messages})


class Headers(Plugin):
    """Headers on the upstream call (applied by the transport) and on the answer."""

    name = "headers"

    def __init__(self, options):
        self.upstream = options.upstream
        self.response = options.response

    async def on_request(self, ctx, state: PluginState):
        state.response_headers.update({k.lower(): v for k, v in self.response.set.items()})
        state.removed_response_headers.update(k.lower() for k in self.response.remove)
        return ctx

    def upstream_changes(self) -> tuple[tuple[tuple[str, str], ...], frozenset[str]] | None:
        """(headers to set, header names to remove) for the upstream call, or None."""
        if not (self.upstream.set or self.upstream.remove):
            return None
        return (tuple(sorted((k.lower(), v) for k, v in self.upstream.set.items())),
                frozenset(k.lower() for k in self.upstream.remove))
