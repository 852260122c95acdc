"""The direct transport: HTTP to OpenAI-compatible servers (vLLM, SGLang, TGI's OpenAI API, OpenAI …).

It is the fast path: one keep-alive pool of `http1` (our small HTTP/1.1 client, several times
cheaper per call than httpx), request heads built once per target, bodies encoded with orjson,
streams read with the one server-sent-events decoder (`sigroute.gateway.sse`).

Streams: the first event must arrive within the model's ``first_token_timeout_s`` of the call
(one budget: connecting, sending, the response's head and the first event all come out of it),
and each next one within ``stream_idle_timeout_s`` of being asked for (bytes that complete no
event, such as keep-alive comments, do not count), else ``UpstreamError("timeout")``. A stream
is complete only at ``data: [DONE]``; its connection then goes back to the pool. A stream that
ends without it, breaks off, or sends an error event raises ``UpstreamError("stream_broken")``;
closing the stream early closes its connection.

Shape: what the gateway relays must be what a client can read. A whole answer, or a streamed
event, that is not valid UTF-8, not JSON, or not shaped like a chat completion (chunk) (an object;
``choices`` a list of objects whose ``message`` / ``delta`` is an object with string content;
``usage`` an object) is ``UpstreamError("protocol")``: retried and fallen back from before the
first chunk, an error event after it — never relayed.

Bounds: a whole answer larger than ``max_body_size`` (`http1.MAX_RESPONSE_BODY`, 64 MiB), a
response head beyond `http1.MAX_RESPONSE_HEAD` / `http1.MAX_RESPONSE_HEADERS`, or one streamed
event larger than ``max_event_bytes`` (`MAX_STREAM_EVENT_BYTES`, 8 MiB) is
``UpstreamError("protocol")``, and its connection is closed.

Egress proxies: ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` of `environ` (default ``os.environ``)
are read once, when the transport is created (see `http1.ProxyConfig`).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Mapping

import orjson

from sigroute.gateway.sse import EventTooLarge, SSEDecoder
from sigroute.gateway.upstream import http1
from sigroute.gateway.upstream.errors import (UpstreamError, classify_status, error_code, error_message, retry_after,
                                              unsendable_body, well_formed)
from sigroute.gateway.upstream.targets import CALL_HEADERS, HeaderChanges, ModelTarget, merged_headers

__all__ = ["OpenAICompatibleTransport", "MAX_STREAM_EVENT_BYTES"]

MAX_STREAM_EVENT_BYTES = 8 * 1024 * 1024  # one server-sent event of a streamed answer


def _transport_error(exc: http1.TransportError, model: str) -> UpstreamError:
    """An `http1` failure as an `UpstreamError` (a timeout, an oversized answer, or a connection failure)."""
    if isinstance(exc, http1.TimeoutException):
        return UpstreamError("timeout", f"{type(exc).__name__}", model=model)
    if isinstance(exc, http1.ResponseTooLarge):
        return UpstreamError("protocol", str(exc), model=model)
    return UpstreamError("connect", f"{type(exc).__name__}: {exc}", model=model)


class OpenAICompatibleTransport:
    """Direct HTTP to OpenAI-compatible servers over a shared keep-alive pool (`http1`)."""

    def __init__(self, max_connections: int = 1000, max_keepalive: int = 200, *,
                 environ: Mapping[str, str] | None = None, max_body_size: int = http1.MAX_RESPONSE_BODY,
                 max_event_bytes: int = MAX_STREAM_EVENT_BYTES):
        # max_keepalive is kept for compatibility: idle connections are capped by max_connections
        # per host and closed after 30 s unused
        self.client = http1.Client(max_connections_per_host=max_connections, keepalive_expiry=30.0,
                                   proxies=http1.ProxyConfig.from_environ(environ), max_body_size=max_body_size)
        self.max_event_bytes = max_event_bytes
        self._prepared_by_target: dict[tuple, tuple[http1.Request, http1.Timeouts]] = {}

    def _prepared(self, target: ModelTarget, stream: bool,
                  changes: HeaderChanges | None = None) -> tuple[http1.Request, http1.Timeouts]:
        """Request head and timeouts of a target (and header change set), built once; this call's
        own headers (`CALL_HEADERS`: a trace's traceparent) are appended to a copy of the head."""
        key = (target.name, target.api_base, stream, changes)
        prepared = self._prepared_by_target.get(key)
        if prepared is None:
            headers = {"content-type": "application/json",
                       "accept": "text/event-stream" if stream else "application/json"}
            if target.api_key:
                headers["authorization"] = f"Bearer {target.api_key}"
            headers.update(merged_headers(target.spec.extra_headers, changes))
            timeouts = http1.Timeouts(connect=min(10.0, target.spec.timeout_s), read=None, write=30.0, pool=10.0)
            prepared = (self.client.prepare("POST", f"{target.api_base}/chat/completions", headers), timeouts)
            self._prepared_by_target[key] = prepared
        call_headers = CALL_HEADERS.get()
        if call_headers:
            return prepared[0].with_headers(call_headers), prepared[1]
        return prepared

    @staticmethod
    def _body(target: ModelTarget, payload: dict[str, Any]) -> bytes:
        body = dict(payload)
        body["model"] = target.upstream_model
        try:
            return orjson.dumps(body)
        except orjson.JSONEncodeError as exc:  # parsed, but too deep (or odd) to send again
            raise unsendable_body(exc) from None

    async def complete(self, target: ModelTarget, payload: dict[str, Any],
                       headers: HeaderChanges | None = None) -> dict[str, Any]:
        request, timeouts = self._prepared(target, False, headers)
        body = self._body(target, payload)
        try:
            async with asyncio.timeout(target.spec.timeout_s):
                response = await self.client.send(request, body, timeouts=timeouts)
        except TimeoutError:
            raise UpstreamError("timeout", f"no answer within {target.spec.timeout_s:g}s", model=target.name) from None
        except http1.TransportError as exc:
            raise _transport_error(exc, target.name) from None
        if response.status_code != 200:
            raise UpstreamError(classify_status(response.status_code), error_message(response.content),
                                status=response.status_code, model=target.name,
                                retry_after_s=retry_after(response.headers), code=error_code(response.content))
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamError("protocol", "response is not JSON", status=200, model=target.name) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError("protocol", "response has no 'choices'", status=200, model=target.name)
        if not well_formed(data, "message"):
            raise UpstreamError("protocol", "response is not a chat completion (no choice, a choice without a "
                                "message object, or usage not an object)", status=200, model=target.name)
        return data

    async def stream(self, target: ModelTarget, payload: dict[str, Any],
                     headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]:
        request, timeouts = self._prepared(target, True, headers)
        body = self._body(target, payload)
        spec = target.spec
        loop = asyncio.get_running_loop()
        first_token_by = loop.time() + spec.first_token_timeout_s  # one budget, from the call
        try:
            async with asyncio.timeout_at(first_token_by):
                response = await self.client.send(request, body, stream=True, timeouts=timeouts)
        except TimeoutError:
            raise UpstreamError("timeout", f"no first token within {spec.first_token_timeout_s:g}s",
                                model=target.name) from None
        except http1.TransportError as exc:
            raise _transport_error(exc, target.name) from None
        try:
            if response.status_code != 200:
                try:
                    content = await response.aread()
                except (http1.TransportError, http1.StreamError):
                    content = b""
                raise UpstreamError(classify_status(response.status_code), error_message(content),
                                    status=response.status_code, model=target.name,
                                    retry_after_s=retry_after(response.headers), code=error_code(content))
            decoder = SSEDecoder(max_event_bytes=self.max_event_bytes, errors="strict")
            events: list = []
            taken = 0
            first = True
            while True:
                if taken < len(events):
                    event = events[taken]
                    taken += 1
                else:  # read until some event is complete
                    # the first event: what is left of the first-token budget; the next ones:
                    # stream_idle_timeout_s from the moment they are asked for
                    deadline = first_token_by if first else loop.time() + spec.stream_idle_timeout_s
                    while True:
                        left = deadline - loop.time()
                        try:
                            if left <= 0:
                                raise http1.ReadTimeout
                            piece = await response.read_chunk(left)
                        except http1.ReadTimeout:
                            raise UpstreamError("timeout", f"no first token within {spec.first_token_timeout_s:g}s"
                                                if first else f"stream stalled for {spec.stream_idle_timeout_s:g}s",
                                                model=target.name) from None
                        except (http1.TransportError, http1.StreamError) as exc:
                            raise UpstreamError("stream_broken", f"{type(exc).__name__}: {exc}",
                                                model=target.name) from None
                        if piece is None:  # the body ended; accept a last [DONE] without its blank line
                            try:
                                last = decoder.end()
                            except UnicodeDecodeError:
                                last = None
                            if last is not None and last.data.strip() == "[DONE]":
                                return
                            raise UpstreamError("stream_broken", "stream ended before [DONE]", model=target.name)
                        try:
                            events = decoder.feed(piece)
                        except EventTooLarge as exc:
                            raise UpstreamError("protocol", str(exc), model=target.name) from None
                        except UnicodeDecodeError:
                            raise UpstreamError("protocol", "stream is not valid UTF-8", model=target.name) from None
                        if events:
                            break
                    event = events[0]
                    taken = 1
                first = False
                data = event.data
                if not data.startswith("{") and data.strip() == "[DONE]":
                    await response.drain(spec.stream_idle_timeout_s)  # so the connection goes back to the pool
                    return
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError("protocol", "stream chunk is not JSON", model=target.name) from None
                if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                    err = chunk["error"]
                    message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                    raise UpstreamError("stream_broken", f"upstream sent an error event: {message}", model=target.name)
                if not well_formed(chunk, "delta"):
                    raise UpstreamError("protocol", "stream chunk is not a chat.completion.chunk (not an object, "
                                        "choices not a list of objects, a delta or usage not an object)",
                                        model=target.name)
                yield chunk
        finally:
            await response.aclose()  # a response not read to its end closes its connection

    def connections_in_use(self) -> int:
        """Connections a request or a stream is using now (open and not idle in the pool)."""
        return sum(s["open"] - s["idle"] for s in self.client.stats().values())

    async def aclose(self) -> None:
        await self.client.aclose()
