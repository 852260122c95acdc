"""What the direct HTTP transports share: calls over `http1` with their failures as `UpstreamError`s,
and the server-sent events of a streamed answer read under the model's deadlines.

- `chat_headers`, `chat_body`: a chat request's headers and body for a target (`openai_compatible`,
  `aiohttp_transport`).
- `json_answer`: a whole call over `http1` within the model's ``timeout_s``; the JSON of its 200
  response, else its `UpstreamError` (`openai_compatible`, `anthropic_messages`).
- `open_stream`: an async context manager that sends a streamed call over `http1` within the
  first-token budget, raises a non-200 answer as its `UpstreamError`, and closes the response
  whatever ends the block (an error, a cancellation, a consumer that stops early); the connection
  goes back to the pool only when the body was read to its end.
- `StreamEvents`: the events of a streamed body, whichever client reads it (`http1_events` for
  `http1`; the aiohttp transport passes its own reader), every failure an `UpstreamError`.
- `chat_chunk`, `end_of_chat_stream`: an OpenAI-compatible stream's events as chunks, complete at
  ``[DONE]``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator, Awaitable, Callable, Mapping

import orjson

from sigroute.gateway.sse import Event, EventTooLarge, SSEDecoder
from sigroute.gateway.upstream import http1
from sigroute.gateway.upstream.errors import (UpstreamError, classify_status, error_code, error_message, retry_after,
                                              unsendable_body)
from sigroute.gateway.upstream.targets import HeaderChanges, ModelTarget, merged_headers

__all__ = ["transport_error", "status_error", "chat_headers", "chat_body", "json_answer", "open_stream",
           "StreamEvents", "http1_events", "chat_chunk", "end_of_chat_stream"]


def transport_error(exc: http1.TransportError, model: str) -> UpstreamError:
    """An `http1` failure as an `UpstreamError` (a timeout, an oversized answer, or a connection failure)."""
    if isinstance(exc, http1.TimeoutException):
        return UpstreamError("timeout", type(exc).__name__, model=model)
    if isinstance(exc, http1.ResponseTooLarge):
        return UpstreamError("protocol", str(exc), model=model)
    return UpstreamError("connect", f"{type(exc).__name__}: {exc}", model=model)


def status_error(status: int, content: bytes, headers: Mapping[str, str], model: str) -> UpstreamError:
    """A non-200 answer as an `UpstreamError`: its kind from the status, message and code from the body."""
    return UpstreamError(classify_status(status), error_message(content), status=status, model=model,
                         retry_after_s=retry_after(headers), code=error_code(content))


def chat_headers(target: ModelTarget, stream: bool, changes: HeaderChanges | None) -> dict[str, str]:
    """The headers of a chat request to the target (its key as a bearer token, its extra headers and
    the header changes; this call's own `CALL_HEADERS` are added per call)."""
    headers = {"content-type": "application/json", "accept": "text/event-stream" if stream else "application/json"}
    if target.api_key:
        headers["authorization"] = f"Bearer {target.api_key}"
    headers.update(merged_headers(target.spec.extra_headers, changes))
    return headers


def chat_body(target: ModelTarget, payload: dict[str, Any]) -> bytes:
    """A chat request's body as sent to the target: the payload with the target's own model name."""
    body = dict(payload)
    body["model"] = target.upstream_model
    try:
        return orjson.dumps(body)
    except orjson.JSONEncodeError as exc:  # parsed, but too deep (or odd) to send again
        raise unsendable_body(exc) from None


async def json_answer(client: http1.Client, request: http1.Request, body: bytes, timeouts: http1.Timeouts,
                      target: ModelTarget) -> Any:
    """A whole call's answer within the model's ``timeout_s``: the JSON of its 200 response (a
    response that is not JSON is ``protocol``)."""
    try:
        async with asyncio.timeout(target.spec.timeout_s):
            response = await client.send(request, body, timeouts=timeouts)
    except TimeoutError:
        raise UpstreamError("timeout", f"no answer within {target.spec.timeout_s:g}s", model=target.name) from None
    except http1.TransportError as exc:
        raise transport_error(exc, target.name) from None
    if response.status_code != 200:
        raise status_error(response.status_code, response.content, response.headers, target.name)
    try:
        return orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise UpstreamError("protocol", "response is not JSON", status=200, model=target.name) from None


@contextlib.asynccontextmanager
async def open_stream(client: http1.Client, request: http1.Request, body: bytes, timeouts: http1.Timeouts,
                      target: ModelTarget, first_by: float) -> AsyncIterator[http1.Response]:
    """A streamed call's response (status 200, body unread), sent by `first_by` (loop time: the end of
    the call's first-token budget); closed when the block is left, however it is left."""
    try:
        async with asyncio.timeout_at(first_by):
            response = await client.send(request, body, stream=True, timeouts=timeouts)
    except TimeoutError:
        raise UpstreamError("timeout", f"no first token within {target.spec.first_token_timeout_s:g}s",
                            model=target.name) from None
    except http1.TransportError as exc:
        raise transport_error(exc, target.name) from None
    async with response:  # a response not read to its end closes its connection
        if response.status_code != 200:
            try:
                content = await response.aread()
            except (http1.TransportError, http1.StreamError):
                content = b""
            raise status_error(response.status_code, content, response.headers, target.name)
        yield response


class StreamEvents:
    """The server-sent events of a streamed body, every failure an `UpstreamError`.

    Iterated, it keeps the OpenAI-compatible pace: the first event by `first_by` (loop time: what is
    left of the call's first-token budget), each next one within the model's
    ``stream_idle_timeout_s`` of being asked for (bytes that complete no event, such as keep-alive
    comments, do not count), else ``timeout``. The iteration ends with the body; `unterminated` is
    then the event the body ended in without its blank line (None if none, or if not valid UTF-8).
    `read` is the step below, for a transport with a pace of its own: one piece of the body.

    `read_chunk(timeout)` returns the body bytes received since the last call (waiting up to
    `timeout` seconds for some), or None at the end of the body; an exception of `timeouts` it
    raises is a ``timeout``, one of `breaks` ``stream_broken``. An event larger than the decoder's
    bound, or invalid UTF-8 (a strict decoder), is ``protocol``.
    """

    def __init__(self, read_chunk: Callable[[float], Awaitable[bytes | None]], decoder: SSEDecoder,
                 target: ModelTarget, first_by: float, *, timeouts: tuple[type[BaseException], ...],
                 breaks: tuple[type[BaseException], ...], first_late: str | None = None):
        spec = target.spec
        self._read_chunk = read_chunk
        self._decoder = decoder
        self._model = target.name
        self._first_by = first_by
        self._idle_s = spec.stream_idle_timeout_s
        self._first_late = first_late or f"no first token within {spec.first_token_timeout_s:g}s"
        self._timeouts = timeouts
        self._breaks = breaks
        self._loop = asyncio.get_running_loop()
        self._events: list[Event] = []
        self._taken = 0
        self._first = True
        self.unterminated: Event | None = None

    def __aiter__(self) -> "StreamEvents":
        return self

    async def __anext__(self) -> Event:
        if self._taken < len(self._events):
            event = self._events[self._taken]
            self._taken += 1
            return event
        # read until some event is complete: the first one by what is left of the first-token
        # budget; the next ones within stream_idle_timeout_s from the moment they are asked for
        first = self._first
        deadline = self._first_by if first else self._loop.time() + self._idle_s
        while True:
            events = await self.read(deadline, first)
            if events is None:
                raise StopAsyncIteration
            if events:
                break
        self._events = events
        self._taken = 1
        self._first = False
        return events[0]

    async def read(self, deadline: float, first: bool) -> list[Event] | None:
        """The events that the next piece of the body completes (often none), or None at its end
        (`unterminated` then set). A ``timeout`` unless the piece comes by `deadline` (loop time),
        told as one for the `first` token or as a stalled stream."""
        left = deadline - self._loop.time()
        if left <= 0:
            raise self._late(first)
        try:
            piece = await self._read_chunk(left)
        except self._timeouts:
            raise self._late(first) from None
        except self._breaks as exc:
            raise UpstreamError("stream_broken", f"{type(exc).__name__}: {exc}", model=self._model) from None
        if piece is None:
            try:
                self.unterminated = self._decoder.end()
            except UnicodeDecodeError:
                self.unterminated = None
            return None
        try:
            return self._decoder.feed(piece)
        except EventTooLarge as exc:
            raise UpstreamError("protocol", str(exc), model=self._model) from None
        except UnicodeDecodeError:
            raise UpstreamError("protocol", "stream is not valid UTF-8", model=self._model) from None


    def _late(self, first: bool) -> UpstreamError:
        return UpstreamError("timeout", self._first_late if first else f"stream stalled for {self._idle_s:g}s",
                             model=self._model)


def http1_events(response: http1.Response, target: ModelTarget, first_by: float, max_event_bytes: int,
                 first_late: str | None = None) -> StreamEvents:
    """The events of an `http1` streamed response (strictly UTF-8, each at most `max_event_bytes`)."""
    return StreamEvents(response.read_chunk, SSEDecoder(max_event_bytes=max_event_bytes, errors="strict"), target,
                        first_by, timeouts=(http1.ReadTimeout,), breaks=(http1.TransportError, http1.StreamError),
                        first_late=first_late)


def chat_chunk(data: str, model: str) -> dict[str, Any] | None:
    """An OpenAI-compatible stream event's data as its chunk, None for ``[DONE]``. Not JSON is
    ``protocol``; an error event (``error`` without ``choices``) is ``stream_broken``."""
    if not data.startswith("{") and data.strip() == "[DONE]":
        return None
    try:
        chunk = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("protocol", "stream chunk is not JSON", model=model) from None
    if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
        err = chunk["error"]
        message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
        raise UpstreamError("stream_broken", f"upstream sent an error event: {message}", model=model)
    return chunk


def end_of_chat_stream(events: StreamEvents, model: str) -> None:
    """The body of an OpenAI-compatible stream ended before a complete ``[DONE]`` event: complete
    all the same if it ended in ``data: [DONE]`` without its blank line, else ``stream_broken``."""
    last = events.unterminated
    if last is None or last.data.strip() != "[DONE]":
        raise UpstreamError("stream_broken", "stream ended before [DONE]", model=model)
