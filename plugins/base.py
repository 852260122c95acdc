"""What every plugin shares: the per-request state, the answer of a plugin that stops a request,
and the contract.

A plugin is built once per loaded policy from its options (`policies.schema.PLUGIN_OPTIONS`) and
is stateless across requests; everything that belongs to one request lives in `PluginState`.

Contract (all methods optional except `name`):

* ``async on_request(ctx, state) -> RequestContext | Blocked | Reroute``: before the model call.
  Return the (possibly new) context to go on, `Blocked` to answer without calling a model, or
  `Reroute` to send the request to another decision. A plugin never raises for a request it
  dislikes: it returns `Blocked`.
* ``on_response(body, state) -> body`` (or a coroutine returning it): a whole chat completion
  (model or cache answer), after the call.
* ``stream_filter(state) -> ContentFilter | None``: for a streamed answer, a filter that sees the
  text of every content delta, per choice, in order, and may hold text back until it can decide
  (``feed(index, text) -> text out``, ``flush(index) -> text out`` (or a coroutine) when that choice finishes,
  ``pending_indices()`` for a stream that ends without finishing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class Blocked:
    """A plugin's answer instead of the model's: a refusal (a normal completion) or an error."""

    plugin: str
    response: str          # "refusal" | "error"
    message: str
    code: str              # error code (e.g. "jailbreak_detected", "pii_detected")


@dataclass
class Reroute:
    """Send the request to another decision of the policy."""

    plugin: str
    decision: str


@dataclass
class PluginState:
    """Everything the plugins of one request share; it lives only as long as the request."""

    actions: list[tuple[str, str, str]] = field(default_factory=list)   # (plugin, action, detail)
    response_headers: dict[str, str] = field(default_factory=dict)
    removed_response_headers: set[str] = field(default_factory=set)
    pii_mapping: dict[str, str] = field(default_factory=dict)   # placeholder -> original value
    skip_cache: str | None = None                           # why the cache must not be used
    private: str | None = None                              # why the text may go to no other model than the
                                                            # chosen one (no judge, no shadow copy): e.g. "pii"
    skip: set[str] = field(default_factory=set)             # plugins not to run again (after a reroute)
    guard: Any = None                                       # response_guard: what answers must not repeat
    grounding: Any = None                                   # hallucination: the context answers must follow
    embed: Any = None                                       # hallucination: the request's embedder

    def did(self, plugin: str, action: str, detail: str = "") -> None:
        self.actions.append((plugin, action, detail))

    def header(self) -> str:
        """The x-sigroute-plugins value: "plugin:action[(detail)]", comma-separated, in order."""
        return ",".join(f"{p}:{a}({d})" if d else f"{p}:{a}" for p, a, d in self.actions)

    def apply_to(self, headers: dict[str, str]) -> None:
        """Put what the plugins did and the response headers they set (or removed) on an answer."""
        if self.actions:
            headers["x-sigroute-plugins"] = self.header()
        if self.response_headers:
            headers.update(self.response_headers)
        for name in self.removed_response_headers:
            headers.pop(name, None)


class ContentFilter(Protocol):
    def feed(self, index: int, text: str) -> str: ...

    def flush(self, index: int) -> str: ...

    def pending_indices(self) -> list[int]: ...   # choices with text held back


class Plugin:
    name: str = ""

    async def on_request(self, ctx: Any, state: PluginState) -> Any:
        return ctx

    def on_response(self, body: dict[str, Any], state: PluginState) -> dict[str, Any]:
        return body

    def stream_filter(self, state: PluginState) -> ContentFilter | None:
        return None
