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

from sigroute.gateway.upstream import http1
from sigroute.gateway.upstream.direct import (chat_body, chat_chunk, chat_headers, end_of_chat_stream, http1_events,
                                              json_answer, open_stream)
from sigroute.gateway.upstream.errors import UpstreamError, well_formed
from sigroute.gateway.upstream.targets import CALL_HEADERS, HeaderChanges, ModelTarget

__all__ = ["OpenAICompatibleTransport", "MAX_STREAM_EVENT_BYTES"]

MAX_STREAM_EVENT_BYTES = 8 * 1024 * 1024  # one server-sent event of a streamed answer


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
            headers = chat_headers(target, stream, changes)
            timeouts = http1.Timeouts(connect=min(10.0, target.spec.timeout_s), read=None, write=30.0, pool=10.0)
            prepared = (self.client.prepare("POST", f"{target.api_base}/chat/completions", headers), timeouts)
            self._prepared_by_target[key] = prepared
        call_headers = CALL_HEADERS.get()
        if call_headers:
            return prepared[0].with_headers(call_headers), prepared[1]
        return prepared

    async def complete(self, target: ModelTarget, payload: dict[str, Any],
                       headers: HeaderChanges | None = None) -> dict[str, Any]:
        request, timeouts = self._prepared(target, False, headers)
        data = await json_answer(self.client, request, chat_body(target, payload), timeouts, target)
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError("protocol", "response has no 'choices'", status=200, model=target.name)
        if not well_formed(data, "message"):
            raise UpstreamError("protocol", "response is not a chat completion (no choice, a choice without a "
                                "message object, or usage not an object)", status=200, model=target.name)
        return data

    async def stream(self, target: ModelTarget, payload: dict[str, Any],
                     headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]:
        request, timeouts = self._prepared(target, True, headers)
        body = chat_body(target, payload)
        first_token_by = asyncio.get_running_loop().time() + target.spec.first_token_timeout_s  # one budget
        async with open_stream(self.client, request, body, timeouts, target, first_token_by) as response:
            events = http1_events(response, target, first_token_by, self.max_event_bytes)
            async for event in events:
                chunk = chat_chunk(event.data, target.name)
                if chunk is None:  # [DONE]
                    await response.drain(target.spec.stream_idle_timeout_s)  # so the connection goes back to the pool
                    return
                if not well_formed(chunk, "delta"):
                    raise UpstreamError("protocol", "stream chunk is not a chat.completion.chunk (not an object, "
                                        "choices not a list of objects, a delta or usage not an object)",
                                        model=target.name)
                yield chunk
            end_of_chat_stream(events, target.name)  # a last [DONE] without its blank line is accepted

    def connections_in_use(self) -> int:
        """Connections a request or a stream is using now (open and not idle in the pool)."""
        return sum(s["open"] - s["idle"] for s in self.client.stats().values())

    async def aclose(self) -> None:
        await self.client.aclose()
