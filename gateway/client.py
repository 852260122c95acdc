"""The sigroute Python SDK: talk to a sigroute gateway and see how each request was routed.

The gateway speaks the OpenAI API, so any OpenAI client works against it. This client adds what
the OpenAI client hides: which decision matched, which model answered, with what confidence, how
many attempts it took and (on request) every signal's verdict, plus `/v1/route/explain`, typed
errors and careful retries. It needs only httpx and the standard library (orjson when present):
it never imports torch, faiss, litellm or the gateway's own server code, so it is cheap to use
from any application.

Example (start a gateway first: ``sigroute serve``)::

    from sigroute.gateway.client import Client, RateLimited

    with Client("http://127.0.0.1:8080", api_key="sk-my-key") as client:
        answer = client.chat("Why does my Python loop never end?")
        print(answer.text)
        print(answer.routing.decision, answer.routing.model, answer.routing.confidence)

        with client.stream("Tell me a short story") as stream:
            print("streaming from", stream.routing.model)
            for chunk in stream:
                print(chunk["choices"][0]["delta"].get("content") or "", end="", flush=True)

        why = client.explain("Why does my Python loop never end?")
        print(why.decision, why.model, why.matched_signals)

The async client has the same methods, awaited::

    import asyncio
    from sigroute.gateway.client import AsyncClient

    async def main():
        async with AsyncClient("http://127.0.0.1:8080") as client:
            answer = await client.chat("hello", debug=True)
            print(answer.routing.signals)
            stream = await client.stream("hello")
            print(await stream.text())

    asyncio.run(main())

Errors are exceptions carrying the gateway's OpenAI-shaped error (`status`, `type`, `code`,
`param`, `message`)::

    SigrouteError                  any failure (base class)
    ├── BadRequest                 400, 409, 413, 422: fix the request
    ├── AuthenticationError        401: missing or wrong API key
    ├── PermissionDenied           403: the key lacks a role (e.g. admin for reload)
    ├── NotFound                   404: unknown model/entrypoint or route
    │   └── FeedbackNotSupported   the gateway (an older version) has no POST /v1/feedback
    ├── RateLimited                429: `retry_after` seconds to wait
    ├── UpstreamError              502/504: every candidate model failed or timed out
    ├── Unavailable                503: every candidate is out of service; `retry_after`
    ├── StreamBroken               a stream ended with an error event or without [DONE]
    └── APIConnectionError         the gateway could not be reached (`APITimeoutError` for timeouts)

Retries (up to `max_retries`, default 2) happen only when they are safe and useful: a 429 or 503
whose `retry-after` is at most `max_retry_wait` seconds (the client sleeps that long; without a
`retry-after` it backs off exponentially), and a connection that failed before the request was
sent. Nothing else is retried: not a 4xx other than 429, not a 502/504 (the gateway has already
tried every fallback model), not a request whose connection broke after it was sent, and never a
stream once its first byte arrived.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Mapping, NamedTuple, Self, Sequence, Union

import httpx

from sigroute.gateway.sse import SSEDecoder  # standard library only

try:  # orjson is a dependency of the gateway, but the client works without it
    import orjson

    def _dumps(value: Any) -> bytes:
        return orjson.dumps(value)

    def _loads(data: bytes | str) -> Any:
        return orjson.loads(data)

    _JSONDecodeError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised only where orjson is absent
    import json

    def _dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    def _loads(data: bytes | str) -> Any:
        return json.loads(data)

    _JSONDecodeError = json.JSONDecodeError

__all__ = [
    "Client", "AsyncClient", "RoutedCompletion", "RoutedMessage", "RoutedResponse", "RoutingInfo", "SignalVerdict",
    "Explanation", "ChatStream", "AsyncChatStream",
    "SigrouteError", "BadRequest", "AuthenticationError", "PermissionDenied", "NotFound",
    "FeedbackNotSupported", "RateLimited", "UpstreamError", "Unavailable", "StreamBroken",
    "APIConnectionError", "APITimeoutError",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
USER_AGENT = "sigroute-python/0.1.0"

Messages = Union[str, Mapping[str, Any], Sequence[Mapping[str, Any]]]


# errors ------------------------------------------------------------------------------------------

class SigrouteError(Exception):
    """A failure reported by (or on the way to) the gateway.

    Attributes mirror the gateway's OpenAI-shaped error body: `message`, `type`, `code`, `param`;
    plus the HTTP `status` (None when no response arrived), the `request_id` when the gateway sent
    one, `retry_after` seconds when it said how long to wait, and the parsed `body`.
    """

    def __init__(self, message: str, *, status: int | None = None, type: str | None = None,
                 code: str | None = None, param: str | None = None, request_id: str | None = None,
                 retry_after: float | None = None, body: Any = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        parts = [self.message]
        details = [f"{name}={value}" for name, value in
                   (("status", self.status), ("code", self.code), ("param", self.param),
                    ("request_id", self.request_id)) if value is not None]
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r})"


class BadRequest(SigrouteError):
    """The request was rejected as malformed or too large (400, 409, 413, 422); `param` names the field."""


class AuthenticationError(SigrouteError):
    """401: send a valid key (`api_key=` or the SIGROUTE_API_KEY environment variable)."""


class PermissionDenied(SigrouteError):
    """403: the key is valid but lacks a role the operation needs."""


class NotFound(SigrouteError):
    """404: the model/entrypoint is not offered, or the route does not exist on this gateway."""


class FeedbackNotSupported(NotFound):
    """The gateway answered 404 for POST /v1/feedback itself: this gateway version has no feedback endpoint."""


class RateLimited(SigrouteError):
    """429: the caller's rate limit is exhausted, or every candidate model is rate-limited upstream
    (code `upstream_rate_limited`); wait `retry_after` seconds."""


class UpstreamError(SigrouteError):
    """502 (every candidate model failed) or 504 (the last failure was a timeout)."""


class Unavailable(SigrouteError):
    """503: every candidate model is out of service for now; `retry_after` says for how long."""


class StreamBroken(SigrouteError):
    """A stream ended badly: the gateway sent an error event, or the stream stopped without
    `data: [DONE]`. `partial_text` holds the text received before the break and `chunks` how
    many chunks arrived; the answer is incomplete and must not be used as if it were whole."""

    def __init__(self, message: str, *, partial_text: str = "", chunks: int = 0, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.partial_text = partial_text
        self.chunks = chunks


class APIConnectionError(SigrouteError):
    """No usable response: the gateway could not be reached or the connection broke.

    `sent` is False when the failure happened before the request left this process (connection
    refused, connect timeout, no free pooled connection): only those are retried.
    """

    def __init__(self, message: str, *, sent: bool, **kwargs: Any):
        super().__init__(message, **kwargs)
        self.sent = sent


class APITimeoutError(APIConnectionError):
    """The request timed out (connecting, sending or waiting for the answer)."""


_ERRORS_BY_STATUS: dict[int, type[SigrouteError]] = {
    400: BadRequest, 409: BadRequest, 413: BadRequest, 422: BadRequest,
    401: AuthenticationError, 403: PermissionDenied, 404: NotFound, 429: RateLimited,
    502: UpstreamError, 504: UpstreamError, 503: Unavailable,
}


def _parse_retry_after(value: str | None) -> float | None:
    """`retry-after` as seconds: either a number of seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_from_response(status: int, headers: httpx.Headers, content: bytes, url: str) -> SigrouteError:
    """Build the exception for an error response, from its OpenAI-shaped body when it has one."""
    request_id = headers.get("x-sigroute-request-id")
    retry_after = _parse_retry_after(headers.get("retry-after"))
    body: Any = None
    try:
        body = _loads(content) if content else None
    except (_JSONDecodeError, ValueError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    cls = _ERRORS_BY_STATUS.get(status, SigrouteError)
    if isinstance(error, dict):
        message = str(error.get("message") or f"HTTP {status}")
        return cls(message, status=status, type=error.get("type"), code=error.get("code"),
                   param=error.get("param"), request_id=request_id, retry_after=retry_after, body=body)
    text = content[:300].decode("utf-8", "replace").strip()
    message = f"HTTP {status} from {url}" + (f": {text}" if text else "") + \
        " (not an OpenAI-shaped error: is this a sigroute gateway?)"
    return cls(message, status=status, request_id=request_id, retry_after=retry_after, body=body)


def _connection_error(exc: httpx.TransportError, url: str) -> APIConnectionError:
    before_send = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request to {url} timed out ({type(exc).__name__}: {detail})", sent=not before_send)
    return APIConnectionError(f"could not talk to the sigroute gateway at {url} ({type(exc).__name__}: {detail})",
                              sent=not before_send)


# results -----------------------------------------------------------------------------------------

class SignalVerdict(NamedTuple):
    """One signal's verdict as reported by the gateway in debug mode."""

    matched: bool
    confidence: float


def _float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _parse_signals(value: str | None) -> dict[str, SignalVerdict] | None:
    if value is None:
        return None
    try:
        raw = _loads(value)
    except (_JSONDecodeError, ValueError):
        return None
    if not isinstance(raw, dict):
        return None
    out: dict[str, SignalVerdict] = {}
    for key, verdict in raw.items():
        if isinstance(verdict, (list, tuple)) and len(verdict) >= 2:
            out[key] = SignalVerdict(bool(verdict[0]), float(verdict[1]))
        elif isinstance(verdict, dict):
            out[key] = SignalVerdict(bool(verdict.get("matched")), float(verdict.get("confidence") or 0.0))
    return out


@dataclass(frozen=True)
class RoutingInfo:
    """How the gateway routed one request, read from its `x-sigroute-*` response headers.

    `decision` is the policy decision that matched ("direct" when a concrete model was named),
    `model` the model that answered, `confidence` the decision's confidence, `overhead_ms` the time
    the gateway itself added, `attempts` how many upstream attempts it took (1 unless a fallback
    happened) and `signals` every evaluated signal's verdict when the request was sent with
    ``debug=True`` (None otherwise).

    Cache: `cache` is how the decision's cache treated the request ("hit-exact", "hit-semantic",
    "coalesced", "miss", "refresh", or why it was not used, e.g. "bypass"; None when the decision
    has no cache), `cache_similarity` the similarity of a semantic hit. Plugins: `plugins` lists
    what the decision's plugins did, e.g. ``("jailbreak:warn(0.412)", "pii:masked(2)")``, and
    `blocked_by` names the plugin that answered instead of a model.
    """

    request_id: str | None
    decision: str | None
    model: str | None
    confidence: float | None
    overhead_ms: float | None
    attempts: int = 1
    signals: dict[str, SignalVerdict] | None = None
    cache: str | None = None
    cache_similarity: float | None = None
    plugins: tuple[str, ...] = ()
    blocked_by: str | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> "RoutingInfo":
        attempts = headers.get("x-sigroute-attempts")
        return cls(
            request_id=headers.get("x-sigroute-request-id"),
            decision=headers.get("x-sigroute-decision"),
            model=headers.get("x-sigroute-model"),
            confidence=_float(headers.get("x-sigroute-confidence")),
            overhead_ms=_float(headers.get("x-sigroute-overhead-ms")),
            attempts=int(attempts) if attempts and attempts.isdigit() else 1,
            signals=_parse_signals(headers.get("x-sigroute-signals")),
            cache=headers.get("x-sigroute-cache"),
            cache_similarity=_float(headers.get("x-sigroute-cache-similarity")),
            plugins=tuple(p for p in (headers.get("x-sigroute-plugins") or "").split(",") if p),
            blocked_by=headers.get("x-sigroute-blocked-by"),
        )

    @property
    def fell_back(self) -> bool:
        """True when the first-choice model failed and another one answered."""
        return self.attempts > 1

    @property
    def cached(self) -> bool:
        """True when the answer came from the cache (or from an identical request in flight)."""
        return self.cache in ("hit-exact", "hit-semantic", "coalesced")


def _content_text(content: Any) -> str | None:
    """A message's content as text: a string, or the text parts of a content-part list joined."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return str(content)


def _of_type(items: Any, kind: str) -> list[dict[str, Any]]:
    """The items of a body's list (content blocks, output items) whose `type` is `kind`."""
    return [item for item in items or () if item.get("type") == kind]


@dataclass(frozen=True)
class _Routed:
    """What every routed answer has: its body `raw` (a dict), the gateway's routing headers as a
    `RoutingInfo`, and the body's `usage` and `id`."""

    raw: dict[str, Any]
    routing: RoutingInfo

    @property
    def usage(self) -> dict[str, Any] | None:
        return self.raw.get("usage")

    @property
    def id(self) -> str | None:
        return self.raw.get("id")


@dataclass(frozen=True)
class RoutedCompletion(_Routed):
    """A chat completion and how it was routed.

    `raw` is the OpenAI response body (a dict); `text` the first choice's message content;
    `routing` the gateway's routing headers as a `RoutingInfo`.
    """

    @property
    def text(self) -> str | None:
        choices = self.choices
        if not choices:
            return None
        return _content_text((choices[0].get("message") or {}).get("content"))

    @property
    def choices(self) -> list[dict[str, Any]]:
        return self.raw.get("choices") or []

    @property
    def model(self) -> str | None:
        return self.raw.get("model") or self.routing.model

    @property
    def finish_reason(self) -> str | None:
        choices = self.choices
        return choices[0].get("finish_reason") if choices else None


@dataclass(frozen=True)
class RoutedMessage(_Routed):
    """An Anthropic Messages answer (`POST /v1/messages`) and how it was routed. `raw` is the
    Message body; `text` its text blocks joined; `tool_uses` its tool_use blocks."""

    @property
    def text(self) -> str:
        return "".join(block.get("text", "") for block in _of_type(self.raw.get("content"), "text"))

    @property
    def tool_uses(self) -> list[dict[str, Any]]:
        return _of_type(self.raw.get("content"), "tool_use")

    @property
    def stop_reason(self) -> str | None:
        return self.raw.get("stop_reason")


@dataclass(frozen=True)
class RoutedResponse(_Routed):
    """An OpenAI Responses answer (`POST /v1/responses`) and how it was routed. `raw` is the
    Response object; `text` its output text; `id` what `previous_response_id` continues."""

    @property
    def text(self) -> str:
        return "".join(part.get("text", "") for item in _of_type(self.raw.get("output"), "message")
                       for part in _of_type(item.get("content"), "output_text"))

    @property
    def function_calls(self) -> list[dict[str, Any]]:
        return _of_type(self.raw.get("output"), "function_call")

    @property
    def status(self) -> str | None:
        return self.raw.get("status")


@dataclass(frozen=True)
class Explanation:
    """The gateway's account of how it would route a request (`POST /v1/route/explain`).

    `raw` is the full report. For an entrypoint such as "auto": `signals` maps "type:name" to
    {matched, confidence, value, ms, used_by_rules}; `decisions` lists every decision's verdict;
    `winner` the chosen decision with its candidates and selection. `decision`, `model` (the model
    the selector would pick) and `confidence` are shortcuts. For a concrete model the report is
    smaller (`direct` is True and there are no signals or verdicts).
    """

    raw: dict[str, Any]

    @property
    def direct(self) -> bool:
        return bool(self.raw.get("direct"))

    @property
    def entrypoint(self) -> str | None:
        return self.raw.get("entrypoint")

    @property
    def strategy(self) -> str | None:
        return self.raw.get("strategy")

    @property
    def winner(self) -> dict[str, Any]:
        return self.raw.get("winner") or {}

    @property
    def decision(self) -> str | None:
        return self.winner.get("decision") if "winner" in self.raw else self.raw.get("decision")

    @property
    def confidence(self) -> float | None:
        return self.winner.get("confidence") if "winner" in self.raw else (1.0 if self.direct else None)

    @property
    def selection(self) -> dict[str, Any] | None:
        return self.winner.get("selection") if "winner" in self.raw else self.raw.get("selection")

    @property
    def model(self) -> str | None:
        """The model the decision's algorithm would pick now (None if no candidate is available)."""
        selection = self.selection
        return selection.get("model") if selection else None

    @property
    def candidates(self) -> list[str]:
        return list(self.winner.get("candidates") or [])

    @property
    def selection_error(self) -> str | None:
        return self.winner.get("selection_error")

    @property
    def signals(self) -> dict[str, dict[str, Any]]:
        return self.raw.get("signals") or {}

    @property
    def matched_signals(self) -> list[str]:
        return [key for key, verdict in self.signals.items() if verdict.get("matched")]

    @property
    def decisions(self) -> list[dict[str, Any]]:
        return self.raw.get("decisions") or []

    @property
    def prompt_tokens(self) -> int | None:
        return self.raw.get("prompt_tokens")


# streams -----------------------------------------------------------------------------------------

_DONE = object()


class _StreamState:
    """What both stream classes share: SSE decoding, bookkeeping and how a stream fails."""

    def __init__(self, routing: RoutingInfo):
        self.routing = routing
        self.done = False
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.model: str | None = routing.model
        self._parts: list[str] = []
        self.decoder = SSEDecoder()

    def collected_text(self) -> str:
        return "".join(self._parts)

    def broken(self, message: str, **kwargs: Any) -> StreamBroken:
        return StreamBroken(message, partial_text=self.collected_text(), chunks=self.chunks,
                            request_id=self.routing.request_id, **kwargs)

    def handle(self, data: str) -> Any:
        """One event's data → a chunk dict, `_DONE`, or a raised StreamBroken."""
        if data == "[DONE]":
            self.done = True
            return _DONE
        try:
            chunk = _loads(data)
        except (_JSONDecodeError, ValueError):
            raise self.broken(f"the stream sent an event that is not JSON: {data[:200]!r}",
                              code="invalid_event") from None
        if isinstance(chunk, dict) and "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            raise self.broken(str(error.get("message") or "the stream failed"), type=error.get("type"),
                              code=error.get("code"), param=error.get("param"), body=chunk)
        if not isinstance(chunk, dict):
            raise self.broken(f"the stream sent an event that is not an object: {data[:200]!r}",
                              code="invalid_event")
        self.chunks += 1
        if chunk.get("model"):
            self.model = chunk["model"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            content = _content_text((choice.get("delta") or {}).get("content"))
            if content:
                self._parts.append(content)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return chunk

    def feed(self, piece: bytes) -> Iterator[dict[str, Any]]:
        """The chunks of the events a piece of the body completes, up to [DONE] (then `done` is set)."""
        for event in self.decoder.feed(piece):
            result = self.handle(event.data)
            if result is _DONE:
                return
            yield result

    def connection_broken(self, exc: httpx.TransportError) -> StreamBroken:
        return self.broken(f"the connection broke mid-stream ({type(exc).__name__}: {exc}); "
                           "the answer is incomplete", code="connection_broken")

    def end(self) -> list[dict[str, Any]]:
        """The body ended: handle a last event the server did not terminate with a blank line
        (which the SSE standard discards; see `sigroute.gateway.sse`), then insist on [DONE].
        Returns that last event's chunk, if it was one."""
        last = self.decoder.end()
        if last is not None and not self.done:
            result = self.handle(last.data)
            if result is not _DONE:
                return [result]
        if not self.done:
            raise self.broken("the stream ended without [DONE]: the answer is incomplete", code="stream_incomplete")
        return []


class _Closing:
    """`with obj:` ... closes it (`close()`) at the end."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()   # type: ignore[attr-defined]


class _AsyncClosing:
    """`async with obj:` ... closes it (`await aclose()`) at the end."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()   # type: ignore[attr-defined]


class _Stream:
    """What both stream classes show: the routing, and what the chunks so far said."""

    def __init__(self, response: httpx.Response, routing: RoutingInfo):
        self.response = response
        self._state = _StreamState(routing)
        self._events = self._iterate()

    def _iterate(self) -> Any:
        """The subclass's generator of chunks (sync or async), started by the constructor."""
        raise NotImplementedError

    routing = property(lambda self: self._state.routing)
    done = property(lambda self: self._state.done, doc="True once [DONE] arrived.")
    usage = property(lambda self: self._state.usage)
    model = property(lambda self: self._state.model)
    finish_reason = property(lambda self: self._state.finish_reason)


class ChatStream(_Stream, _Closing):
    """A streamed chat completion (sync). Iterate it for OpenAI chunk dicts.

    `routing` is available as soon as `stream()` returns, before the first chunk. `text()` reads
    the rest and returns the whole answer text (including chunks already iterated). Iteration
    raises `StreamBroken` if the gateway reports an error mid-stream or the stream ends without
    `[DONE]`. Use it as a context manager (or call `close()`) to release the connection when you
    stop early.
    """

    def _iterate(self) -> Iterator[dict[str, Any]]:
        state = self._state
        try:
            try:
                for piece in self.response.iter_bytes():
                    yield from state.feed(piece)
                    if state.done:
                        return
            except httpx.TransportError as exc:
                raise state.connection_broken(exc) from exc
            yield from state.end()
        finally:
            self.response.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        return next(self._events)

    def text(self) -> str:
        """Read the stream to its end and return the whole answer text."""
        for _ in self:
            pass
        return self._state.collected_text()

    def close(self) -> None:
        self._events.close()
        self.response.close()


class AsyncChatStream(_Stream, _AsyncClosing):
    """A streamed chat completion (async): `async for chunk in stream`, `await stream.text()`.

    Same behaviour as `ChatStream`; use `async with` (or `await aclose()`) to stop early.
    """

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        state = self._state
        try:
            try:
                async for piece in self.response.aiter_bytes():
                    for chunk in state.feed(piece):
                        yield chunk
                    if state.done:
                        return
            except httpx.TransportError as exc:
                raise state.connection_broken(exc) from exc
            for chunk in state.end():
                yield chunk
        finally:
            await self.response.aclose()

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._events.__anext__()

    async def text(self) -> str:
        """Read the stream to its end and return the whole answer text."""
        async for _ in self:
            pass
        return self._state.collected_text()

    async def aclose(self) -> None:
        await self._events.aclose()
        await self.response.aclose()

    close = aclose


# clients -----------------------------------------------------------------------------------------

def _messages(messages: Messages) -> list[dict[str, Any]]:
    """A str becomes one user message; a single message dict is wrapped in a list."""
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if isinstance(messages, Mapping):
        return [dict(messages)]
    if isinstance(messages, Sequence):
        return [dict(m) for m in messages]
    raise TypeError(f"messages must be a str, a message dict or a list of message dicts, not {type(messages).__name__}")


def _normalize_base_url(base_url: str) -> str:
    """Accept the gateway's root ("http://host:8080") or the OpenAI-style base ("…/v1")."""
    url = base_url.rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    return url


class _ClientCore:
    """Configuration, request building, error mapping and the retry rule shared by both clients."""

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float | httpx.Timeout | None,
                 default_model: str, headers: Mapping[str, str] | None, max_retries: int,
                 max_retry_wait: float, backoff_s: float, http_client: Any, http_class: type):
        self._owns_http = http_client is None
        self._http = http_client or http_class(timeout=timeout)
        self.base_url = _normalize_base_url(base_url or os.environ.get("SIGROUTE_BASE_URL") or DEFAULT_BASE_URL)
        self.api_key = api_key if api_key is not None else os.environ.get("SIGROUTE_API_KEY")
        self.timeout = timeout
        self.default_model = default_model
        self.max_retries = max(0, int(max_retries))
        self.max_retry_wait = max_retry_wait
        self.backoff_s = backoff_s
        self.default_headers = {"user-agent": USER_AGENT, "accept": "application/json"}
        if self.api_key:
            self.default_headers["authorization"] = f"Bearer {self.api_key}"
        self.default_headers.update({k.lower(): v for k, v in (headers or {}).items()})

    def _headers(self, extra: Mapping[str, str] | None = None, *, debug: bool = False,
                 body: bool = False, stream: bool = False) -> dict[str, str]:
        headers = dict(self.default_headers)
        if body:
            headers["content-type"] = "application/json"
        if stream:
            headers["accept"] = "text/event-stream"
        if debug:
            headers["x-sigroute-debug"] = "1"
        headers.update({k.lower(): v for k, v in (extra or {}).items()})
        return headers

    def _chat_body(self, messages: Messages, model: str | None, params: dict[str, Any], stream: bool) -> bytes:
        if "stream" in params:
            if bool(params.pop("stream")) != stream:
                raise ValueError("chat() returns a whole answer and stream() a stream; "
                                 "do not pass stream= to either")
        body: dict[str, Any] = {"model": model or self.default_model, "messages": _messages(messages)}
        body.update(params)
        if stream:
            body["stream"] = True
        return _dumps(body)

    def _message_body(self, messages: Messages, model: str | None, max_tokens: int, system: Any,
                      params: dict[str, Any]) -> bytes:
        if params.pop("stream", False):
            raise ValueError("message() returns a whole answer; stream Messages with the anthropic SDK "
                             "(RoutingInfo.from_headers reads the routing of its raw response)")
        body: dict[str, Any] = {"model": model or self.default_model, "max_tokens": max_tokens,
                                "messages": _messages(messages)}
        if system is not None:
            body["system"] = system
        body.update(params)
        return _dumps(body)

    def _response_body(self, input: Any, model: str | None, previous_response_id: str | None,
                       params: dict[str, Any]) -> bytes:
        if params.pop("stream", False):
            raise ValueError("respond() returns a whole answer; stream Responses with the openai SDK "
                             "(RoutingInfo.from_headers reads the routing of its raw response)")
        body: dict[str, Any] = {"model": model or self.default_model, "input": input}
        if previous_response_id is not None:
            body["previous_response_id"] = previous_response_id
        body.update(params)
        return _dumps(body)

    def _routed(self, response: httpx.Response, cls, what: str):
        raw = self._json(response)
        if not isinstance(raw, dict):
            raise SigrouteError(f"expected {what}, got {type(raw).__name__}", status=response.status_code)
        return cls(raw, RoutingInfo.from_headers(response.headers))

    def _request(self, method: str, url: str, content: bytes | None, headers: dict[str, str]) -> httpx.Request:
        return self._http.build_request(method, url, content=content, headers=headers, timeout=self.timeout)

    def _retry_wait(self, attempt: int, error: SigrouteError) -> float:
        """Seconds to wait before retry number `attempt + 1`; raises `error` when it must not be retried."""
        delay = self._retry_delay(attempt, error)
        if delay is None:
            raise error
        return delay

    def _retry_delay(self, attempt: int, error: SigrouteError) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None when it must not be retried."""
        if attempt >= self.max_retries:
            return None
        backoff = min(self.backoff_s * (2 ** attempt), self.max_retry_wait) * (0.8 + 0.4 * random.random())
        if isinstance(error, APIConnectionError):
            return backoff if not error.sent else None
        if error.status in (429, 503):
            if error.retry_after is None:
                return backoff
            if error.retry_after <= self.max_retry_wait:
                return error.retry_after
        return None

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        try:
            return _loads(response.content)
        except (_JSONDecodeError, ValueError):
            raise SigrouteError(f"the gateway answered {response.status_code} with a body that is not JSON: "
                                f"{response.content[:200]!r}", status=response.status_code,
                                request_id=response.headers.get("x-sigroute-request-id")) from None

    def _completion(self, response: httpx.Response) -> RoutedCompletion:
        raw = self._json(response)
        if not isinstance(raw, dict):
            raise SigrouteError(f"expected a chat completion object, got {type(raw).__name__}",
                                status=response.status_code)
        return RoutedCompletion(raw, RoutingInfo.from_headers(response.headers))

    @staticmethod
    def _feedback_body(request_id: str, score: float | None, thumbs: bool | str | None,
                       label: str | None) -> bytes:
        if not request_id:
            raise ValueError("feedback needs the request_id of the answer (RoutedCompletion.routing.request_id)")
        if score is None and thumbs is None and label is None:
            raise ValueError("feedback needs at least one of score, thumbs or label")
        body: dict[str, Any] = {"request_id": request_id}
        if score is not None:
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise TypeError(f"score must be a number, not {type(score).__name__}")
            body["score"] = float(score)
        if thumbs is not None:
            if isinstance(thumbs, bool):
                thumbs = "up" if thumbs else "down"
            if thumbs not in ("up", "down"):
                raise ValueError(f"thumbs must be True/False or 'up'/'down', not {thumbs!r}")
            body["thumbs"] = thumbs
        if label is not None:
            body["label"] = str(label)
        return _dumps(body)

    @staticmethod
    def _feedback_error(error: SigrouteError, url: str) -> SigrouteError:
        """A 404 for the route itself (not for an unknown request id) means: no feedback endpoint."""
        if isinstance(error, NotFound) and not error.code and (
                error.type is None or "no route" in error.message):
            return FeedbackNotSupported(
                f"this gateway has no feedback endpoint (POST {url} answered 404: {error.message}); "
                "feedback was NOT recorded. Upgrade the gateway to a version that accepts /v1/feedback.",
                status=404, type=error.type, code="feedback_not_supported", request_id=error.request_id,
                body=error.body)
        return error


class Client(_ClientCore, _Closing):
    """Synchronous client for a sigroute gateway.

    Args:
        base_url: the gateway's address; "…/v1" is accepted too. Default: $SIGROUTE_BASE_URL or
            http://127.0.0.1:8080.
        api_key: sent as `Authorization: Bearer …`. Default: $SIGROUTE_API_KEY, else none.
        timeout: seconds (or an `httpx.Timeout`) for each HTTP request.
        default_model: the entrypoint or model used when a call names none.
        headers: extra headers sent with every request.
        max_retries: how many times a safely retryable failure is retried (see the module doc).
        max_retry_wait: the longest `retry-after` (seconds) the client will sleep for; a longer one
            is raised at once as `RateLimited`/`Unavailable` with its `retry_after`.
        backoff_s: first backoff delay when the server gives no `retry-after`; doubles each retry.
        http_client: an `httpx.Client` to use instead of the client's own (it is not closed by
            `close()`; its base URL, headers and timeout are not used: this client's are).

    Example::

        with Client("http://127.0.0.1:8080") as client:
            answer = client.chat([{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "What is 2+2?"}], temperature=0)
            assert answer.routing.request_id.startswith("req_")
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = 60, default_model: str = "auto",
                 headers: Mapping[str, str] | None = None, max_retries: int = 2, *,
                 max_retry_wait: float = 30.0, backoff_s: float = 0.5, http_client: httpx.Client | None = None):
        super().__init__(base_url, api_key, timeout, default_model, headers, max_retries, max_retry_wait, backoff_s,
                         http_client, httpx.Client)

    # transport ------------------------------------------------------------------------------------
    def _send(self, method: str, path: str, *, content: bytes | None = None, headers: dict[str, str],
              stream: bool = False, accept: tuple[int, ...] = ()) -> httpx.Response:
        """Send with the retry rule; return a successful (or `accept`ed) response, else raise."""
        url = self.base_url + path
        attempt = 0
        while True:
            outcome = self._send_once(method, url, content, headers, stream, accept)
            if isinstance(outcome, httpx.Response):
                return outcome
            time.sleep(self._retry_wait(attempt, outcome))
            attempt += 1

    def _send_once(self, method: str, url: str, content: bytes | None, headers: dict[str, str], stream: bool,
                   accept: tuple[int, ...]) -> httpx.Response | SigrouteError:
        """One try: the response when it succeeded (or is `accept`ed), else the error it means."""
        try:
            response = self._http.send(self._request(method, url, content, headers), stream=stream)
        except httpx.TransportError as exc:
            return _connection_error(exc, url)
        if response.status_code < 400 or response.status_code in accept:
            return response
        try:
            response.read()
        finally:
            response.close()
        return _error_from_response(response.status_code, response.headers, response.content, url)

    def _get_json(self, path: str, headers: Mapping[str, str] | None = None,
                  accept: tuple[int, ...] = ()) -> Any:
        response = self._send("GET", path, headers=self._headers(headers), accept=accept)
        return self._json(response)

    # API ------------------------------------------------------------------------------------------
    def chat(self, messages: Messages, model: str | None = None, *, debug: bool = False,
             headers: Mapping[str, str] | None = None, **params: Any) -> RoutedCompletion:
        """Create a chat completion; return it with its routing.

        `messages` is a str (one user message), a message dict or a list of them. `model` is an
        entrypoint ("auto") or a concrete model; default `default_model`. Other keyword arguments
        (temperature, max_tokens, tools, …) go into the request body as they are. `debug=True`
        asks the gateway for every signal's verdict (`routing.signals`).

        >>> client.chat("hi", temperature=0).routing.model    # doctest: +SKIP
        'llama-8b'
        """
        body = self._chat_body(messages, model, params, stream=False)
        response = self._send("POST", "/v1/chat/completions", content=body,
                              headers=self._headers(headers, debug=debug, body=True))
        return self._completion(response)

    def message(self, messages: Messages, model: str | None = None, *, max_tokens: int = 1024,
                system: Any = None, headers: Mapping[str, str] | None = None, **params: Any) -> RoutedMessage:
        """Send an Anthropic Messages request (`POST /v1/messages`); return the Message with its
        routing. `messages` as for `chat` (content may be Anthropic content blocks); `system`,
        `tools`, `stop_sequences`, … as the Messages API takes them.

        >>> client.message("hi", max_tokens=64).text    # doctest: +SKIP
        """
        body = self._message_body(messages, model, max_tokens, system, params)
        response = self._send("POST", "/v1/messages", content=body, headers=self._headers(headers, body=True))
        return self._routed(response, RoutedMessage, "an Anthropic Message")

    def respond(self, input: Any, model: str | None = None, *, previous_response_id: str | None = None,
                headers: Mapping[str, str] | None = None, **params: Any) -> RoutedResponse:
        """Create an OpenAI Responses answer (`POST /v1/responses`); return it with its routing.
        `input` is a string or a list of input items; `previous_response_id` continues a
        conversation the gateway stored (`RoutedResponse.id` of an earlier answer); `instructions`,
        `tools`, `text`, `max_output_tokens`, … as the Responses API takes them.

        >>> first = client.respond("Name a prime.")                               # doctest: +SKIP
        >>> client.respond("And the next one?", previous_response_id=first.id)    # doctest: +SKIP
        """
        body = self._response_body(input, model, previous_response_id, params)
        response = self._send("POST", "/v1/responses", content=body, headers=self._headers(headers, body=True))
        return self._routed(response, RoutedResponse, "a Response object")

    def stream(self, messages: Messages, model: str | None = None, *, debug: bool = False,
               headers: Mapping[str, str] | None = None, **params: Any) -> ChatStream:
        """Start a streamed chat completion; return a `ChatStream` of chunk dicts.

        Errors before the stream starts (401, 404, 429, 502 …) raise here; `stream.routing` is
        available right away. Pass `stream_options={"include_usage": True}` for `stream.usage`.

        >>> with client.stream("Tell me a story") as s:      # doctest: +SKIP
        ...     story = s.text()
        """
        body = self._chat_body(messages, model, params, stream=True)
        response = self._send("POST", "/v1/chat/completions", content=body, stream=True,
                              headers=self._headers(headers, debug=debug, body=True, stream=True))
        return ChatStream(response, RoutingInfo.from_headers(response.headers))

    def explain(self, messages: Messages, model: str | None = None, headers: Mapping[str, str] | None = None,
                **params: Any) -> Explanation:
        """Ask how the gateway would route this request, without calling any model.

        >>> why = client.explain("Why does my Python loop never end?")   # doctest: +SKIP
        >>> why.decision, why.model, why.matched_signals                   # doctest: +SKIP
        ('coding', 'llama-70b', ['keyword:code'])
        """
        body = self._chat_body(messages, model, params, stream=False)
        response = self._send("POST", "/v1/route/explain", content=body, headers=self._headers(headers, body=True))
        return Explanation(self._json(response))

    def models(self) -> list[dict[str, Any]]:
        """The entrypoints and (if the policy allows calling them directly) models on offer:
        OpenAI model objects, each with `sigroute.kind` "entrypoint" or "model"."""
        return list(self._get_json("/v1/models").get("data") or [])

    def health(self) -> dict[str, Any]:
        """Liveness: `{"status": "ok"}` while the process is up."""
        return self._get_json("/health")

    def ready(self) -> dict[str, Any]:
        """Readiness report; `status` is "ready", or "unavailable" (HTTP 503) when every model's
        circuit is open. Not retried and not raised: a probe wants the answer."""
        response = self._send("GET", "/ready", headers=self._headers(), accept=(503,))
        return self._json(response)

    def reload(self) -> dict[str, Any]:
        """Make the gateway reload its policy file (needs an admin key when auth is on)."""
        response = self._send("POST", "/v1/admin/reload", headers=self._headers())
        return self._json(response)

    def feedback(self, request_id: str, score: float | None = None, thumbs: bool | str | None = None,
                 label: str | None = None) -> dict[str, Any]:
        """Report how good an answer was, so the gateway's learned selectors can use it.

        Sends `{request_id, score?, thumbs?, label?}` to `POST /v1/feedback` (`thumbs` True/False
        is sent as "up"/"down") and returns the gateway's receipt (`status` "recorded" or
        "duplicate", the decision and model credited). Raises `NotFound` (code
        `unknown_request_id`) for an id that is not waiting for feedback (unknown, expired, not
        routed by a learning decision, or another tenant's), `BadRequest` (409
        `feedback_conflict`) when the answer was already rated differently, and
        `FeedbackNotSupported` when the gateway has no such endpoint: feedback is never silently
        dropped.

        >>> answer = client.chat("hi")                                   # doctest: +SKIP
        >>> client.feedback(answer.routing.request_id, thumbs=True)     # doctest: +SKIP
        """
        body = self._feedback_body(request_id, score, thumbs, label)
        try:
            response = self._send("POST", "/v1/feedback", content=body, headers=self._headers(body=True))
        except NotFound as exc:
            raise self._feedback_error(exc, self.base_url + "/v1/feedback") from None
        return self._json(response) if response.content else {}

    # lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r}, default_model={self.default_model!r})"


class AsyncClient(_ClientCore, _AsyncClosing):
    """Asynchronous client for a sigroute gateway: the same API as `Client`, awaited.

    `stream()` is awaited too and returns an `AsyncChatStream` (`async for chunk in stream`).

    Example::

        async with AsyncClient("http://127.0.0.1:8080") as client:
            answer = await client.chat("hello")
            async with await client.stream("hello") as stream:
                async for chunk in stream:
                    ...
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 timeout: float | httpx.Timeout | None = 60, default_model: str = "auto",
                 headers: Mapping[str, str] | None = None, max_retries: int = 2, *,
                 max_retry_wait: float = 30.0, backoff_s: float = 0.5,
                 http_client: httpx.AsyncClient | None = None):
        super().__init__(base_url, api_key, timeout, default_model, headers, max_retries, max_retry_wait, backoff_s,
                         http_client, httpx.AsyncClient)

    async def _send(self, method: str, path: str, *, content: bytes | None = None, headers: dict[str, str],
                    stream: bool = False, accept: tuple[int, ...] = ()) -> httpx.Response:
        url = self.base_url + path
        attempt = 0
        while True:
            outcome = await self._send_once(method, url, content, headers, stream, accept)
            if isinstance(outcome, httpx.Response):
                return outcome
            await asyncio.sleep(self._retry_wait(attempt, outcome))
            attempt += 1

    async def _send_once(self, method: str, url: str, content: bytes | None, headers: dict[str, str],
                         stream: bool, accept: tuple[int, ...]) -> httpx.Response | SigrouteError:
        try:
            response = await self._http.send(self._request(method, url, content, headers), stream=stream)
        except httpx.TransportError as exc:
            return _connection_error(exc, url)
        if response.status_code < 400 or response.status_code in accept:
            return response
        try:
            await response.aread()
        finally:
            await response.aclose()
        return _error_from_response(response.status_code, response.headers, response.content, url)

    async def _get_json(self, path: str) -> Any:
        response = await self._send("GET", path, headers=self._headers())
        return self._json(response)

    async def chat(self, messages: Messages, model: str | None = None, *, debug: bool = False,
                   headers: Mapping[str, str] | None = None, **params: Any) -> RoutedCompletion:
        """See `Client.chat`."""
        body = self._chat_body(messages, model, params, stream=False)
        response = await self._send("POST", "/v1/chat/completions", content=body,
                                    headers=self._headers(headers, debug=debug, body=True))
        return self._completion(response)

    async def message(self, messages: Messages, model: str | None = None, *, max_tokens: int = 1024,
                      system: Any = None, headers: Mapping[str, str] | None = None,
                      **params: Any) -> RoutedMessage:
        """See `Client.message`."""
        body = self._message_body(messages, model, max_tokens, system, params)
        response = await self._send("POST", "/v1/messages", content=body, headers=self._headers(headers, body=True))
        return self._routed(response, RoutedMessage, "an Anthropic Message")

    async def respond(self, input: Any, model: str | None = None, *, previous_response_id: str | None = None,
                      headers: Mapping[str, str] | None = None, **params: Any) -> RoutedResponse:
        """See `Client.respond`."""
        body = self._response_body(input, model, previous_response_id, params)
        response = await self._send("POST", "/v1/responses", content=body, headers=self._headers(headers, body=True))
        return self._routed(response, RoutedResponse, "a Response object")

    async def stream(self, messages: Messages, model: str | None = None, *, debug: bool = False,
                     headers: Mapping[str, str] | None = None, **params: Any) -> AsyncChatStream:
        """See `Client.stream`; returns an `AsyncChatStream`."""
        body = self._chat_body(messages, model, params, stream=True)
        response = await self._send("POST", "/v1/chat/completions", content=body, stream=True,
                                    headers=self._headers(headers, debug=debug, body=True, stream=True))
        return AsyncChatStream(response, RoutingInfo.from_headers(response.headers))

    async def explain(self, messages: Messages, model: str | None = None,
                      headers: Mapping[str, str] | None = None, **params: Any) -> Explanation:
        """See `Client.explain`."""
        body = self._chat_body(messages, model, params, stream=False)
        response = await self._send("POST", "/v1/route/explain", content=body,
                                    headers=self._headers(headers, body=True))
        return Explanation(self._json(response))

    async def models(self) -> list[dict[str, Any]]:
        """See `Client.models`."""
        return list((await self._get_json("/v1/models")).get("data") or [])

    async def health(self) -> dict[str, Any]:
        """See `Client.health`."""
        return await self._get_json("/health")

    async def ready(self) -> dict[str, Any]:
        """See `Client.ready`."""
        response = await self._send("GET", "/ready", headers=self._headers(), accept=(503,))
        return self._json(response)

    async def reload(self) -> dict[str, Any]:
        """See `Client.reload`."""
        response = await self._send("POST", "/v1/admin/reload", headers=self._headers())
        return self._json(response)

    async def feedback(self, request_id: str, score: float | None = None, thumbs: bool | str | None = None,
                       label: str | None = None) -> dict[str, Any]:
        """See `Client.feedback`."""
        body = self._feedback_body(request_id, score, thumbs, label)
        try:
            response = await self._send("POST", "/v1/feedback", content=body, headers=self._headers(body=True))
        except NotFound as exc:
            raise self._feedback_error(exc, self.base_url + "/v1/feedback") from None
        return self._json(response) if response.content else {}

    async def close(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    aclose = close

    def __repr__(self) -> str:
        return f"AsyncClient(base_url={self.base_url!r}, default_model={self.default_model!r})"
