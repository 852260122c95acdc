"""API surfaces: the doors a request can come in by, each translated once each way.

sigroute's pipeline speaks one internal form: an OpenAI chat-completions body in, a
`chat.completion` (or its chunks) out. Every API the gateway serves — OpenAI chat completions,
Anthropic Messages, OpenAI Responses — is a `Surface`:

- `request(raw, principal)`   the caller's bytes → the internal chat body (checked: a bad body is an
                              error in this surface's own shape, naming the field the caller sent);
- `encoder(body)`             a fresh `AnswerEncoder` for one request, which turns the pipeline's
                              answer — whole, streamed chunk by chunk, or an error mid-stream — into
                              this surface's wire format;
- `error(exc)`                an `APIError` as this surface's error body (status and headers kept).

The pipeline never asks which door a request came in by: it calls `surface.request` at step 2 and
hands the encoder every byte it sends. `api` names the surface in metrics and logs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import orjson

from sigroute.gateway.errors import APIError
from sigroute.gateway.openai_wire import SSE_DONE, parse_chat_request, sse_event, stream_error_event

if TYPE_CHECKING:
    from sigroute.gateway.auth import Principal
    from sigroute.policies.schema.server import Server

__all__ = ["AnswerEncoder", "Surface", "ChatEncoder", "ChatSurface", "CHAT"]


class AnswerEncoder(Protocol):
    """One request's answer in a surface's wire format. Made per request (it may keep state across
    a stream: an Anthropic content block that is open, a Responses item being assembled)."""

    async def whole(self, body: dict[str, Any], encoded: bytes | None) -> bytes:
        """A whole `chat.completion` as this surface's JSON body. `encoded` is `body` already
        serialized as chat JSON when the pipeline has it (the chat surface sends it as is)."""

    def start(self) -> bytes:
        """Bytes to send before the first chunk of a stream (b"" if none)."""

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        """One `chat.completion.chunk` as this surface's SSE event(s) (b"" if it adds nothing)."""

    async def end(self) -> bytes:
        """The stream finished normally: the closing event(s)."""

    def error(self, message: str, code: str, type: str) -> bytes:
        """The stream broke after bytes were sent: an error event (never a silent cut)."""


class Surface(Protocol):
    api: str   # "chat.completions", "messages", "responses": the `api` label of metrics

    async def request(self, raw: bytes, principal: "Principal", server: "Server") -> dict[str, Any]: ...

    def encoder(self, body: dict[str, Any], request_id: str, principal: "Principal") -> AnswerEncoder: ...

    def error(self, exc: APIError) -> bytes: ...


class ChatEncoder:
    """OpenAI chat completions: the pipeline's own form, sent as is."""

    __slots__ = ()

    async def whole(self, body: dict[str, Any], encoded: bytes | None) -> bytes:
        return encoded if encoded is not None else orjson.dumps(body)

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: dict[str, Any]) -> bytes:
        return sse_event(chunk)

    async def end(self) -> bytes:
        return SSE_DONE

    def error(self, message: str, code: str, type: str) -> bytes:
        return stream_error_event(message, code, type)


_CHAT_ENCODER = ChatEncoder()


class ChatSurface:
    """POST /v1/chat/completions."""

    api = "chat.completions"

    async def request(self, raw: bytes, principal: "Principal", server: "Server") -> dict[str, Any]:
        return parse_chat_request(raw, server.max_messages, server.max_tools)

    def encoder(self, body: dict[str, Any], request_id: str, principal: "Principal") -> ChatEncoder:
        return _CHAT_ENCODER   # stateless: one for all requests

    def error(self, exc: APIError) -> bytes:
        return exc.json()


CHAT = ChatSurface()
