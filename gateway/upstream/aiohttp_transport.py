"""The direct transport over aiohttp's client: the measured alternative to `http1`.

`AiohttpTransport` implements the same `Transport` protocol as `OpenAICompatibleTransport` with
the same semantics wherever aiohttp allows, so that the overhead benchmark compares the two HTTP
clients and nothing else (``python -m benchmarks.overhead --compare-clients``; the decision and
its numbers are in the README, "Upstream HTTP client"). It is not what the gateway uses: the
benchmark (and the tests) inject it through ``create_app(..., transports={"openai": ...})``; no
policy option selects it. It needs the ``aiohttp`` extra (``pip install 'sigroute[aiohttp]'``).

What it keeps from the direct transport:

- timeouts: a whole answer within the model's ``timeout_s``; connecting within
  ``min(10, timeout_s)`` and a free pooled connection within 10 s; a stream's first event within
  ``first_token_timeout_s`` of the call (one budget: connecting, sending, the response head and
  the first event all come out of it), each next one within ``stream_idle_timeout_s`` of being
  asked for (keep-alive comments do not count); else ``UpstreamError("timeout")``;
- streams decoded by the one server-sent-events decoder (`sigroute.gateway.sse`), complete only at
  ``data: [DONE]`` (its connection then goes back to the pool), ``stream_broken`` otherwise;
- bounds: a whole answer (or an error body) of at most ``max_body_size`` bytes, one streamed event
  of at most ``max_event_bytes``, a response head of at most `http1.MAX_RESPONSE_HEADERS` fields
  (aiohttp bounds each line to 8,190 bytes rather than the whole head) → ``UpstreamError
  ("protocol")``, the connection closed; aiohttp's reader pauses the socket beyond its buffer
  (``read_bufsize``), so a fast upstream cannot fill memory either;
- egress proxies: ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` of `environ` read once with
  `http1.ProxyConfig` (the same rules: loopback always direct, CIDR ranges, ``host:port``) and
  passed to aiohttp per request. Not ``trust_env=True``: aiohttp 3.14 then looks the proxy up
  with `asyncio.to_thread` on every request (and reads ``~/.netrc`` for credentials in another
  thread), which would cost a thread hop per call and make the measurement about that;
- never sent twice: aiohttp retries a request on a reused keep-alive connection that closed only
  for idempotent methods (``GET``, ``PUT``, … — `aiohttp.client.IDEMPOTENT_METHODS`), never a
  ``POST``; a POST on a connection that died is an ``UpstreamError("connect")`` left to the
  resilience loop (tested in tests/test_aiohttp_transport.py). Unlike `http1`, it does not send a
  POST again even when it provably never left (a stale pooled connection found dead before the
  write): that costs a retry of the resilience loop, never a double billing;
- no cookies kept (a ``Set-Cookie`` of one upstream answer must not travel with other callers'
  requests: `aiohttp.DummyCookieJar`), no redirects followed, no ``Accept-Encoding`` offered
  (`http1` offers none either: a compressed stream would be held back by the compressor).
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Mapping

import orjson

try:
    import aiohttp
except ImportError as exc:  # an optional extra: say what to install
    raise ImportError("the aiohttp transport needs aiohttp: pip install 'sigroute[aiohttp]'") from exc
from yarl import URL

from sigroute.gateway.sse import SSEDecoder
from sigroute.gateway.upstream import http1
from sigroute.gateway.upstream.direct import StreamEvents, chat_body, chat_chunk, chat_headers, end_of_chat_stream
from sigroute.gateway.upstream.errors import UpstreamError, classify_status, error_message, retry_after
from sigroute.gateway.upstream.openai_compatible import MAX_STREAM_EVENT_BYTES
from sigroute.gateway.upstream.targets import CALL_HEADERS, HeaderChanges, ModelTarget

__all__ = ["AiohttpTransport"]

POOL_WAIT_S = 10.0  # the longest wait for a free pooled connection (as `http1`'s pool timeout)


class _BodyTooLarge(Exception):
    pass


class _Prepared:
    """What a target's calls share, built once: URL, headers, proxy and timeouts."""

    __slots__ = ("url", "headers", "proxy", "proxy_headers", "timeout")

    def __init__(self, url: URL, headers: dict[str, str], proxy: str | None, proxy_headers: dict[str, str] | None,
                 timeout: aiohttp.ClientTimeout):
        self.url = url
        self.headers = headers
        self.proxy = proxy
        self.proxy_headers = proxy_headers
        self.timeout = timeout


def _client_error(exc: aiohttp.ClientError, model: str) -> UpstreamError:
    """An aiohttp failure before the answer's body as an `UpstreamError`, in `http1`'s vocabulary:
    a timeout; a malformed or oversized response head (``protocol``); else a connection failure."""
    if isinstance(exc, TimeoutError):  # ConnectionTimeoutError, SocketTimeoutError
        return UpstreamError("timeout", type(exc).__name__, model=model)
    if isinstance(exc, aiohttp.ClientResponseError) and not isinstance(exc, aiohttp.ClientHttpProxyError):
        return UpstreamError("protocol", f"{type(exc).__name__}: {exc.message}", model=model)
    return UpstreamError("connect", f"{type(exc).__name__}: {exc}", model=model)


class AiohttpTransport:
    """Direct HTTP to OpenAI-compatible servers over one `aiohttp.ClientSession` (created on first
    use, inside the event loop that uses it; a closed transport opens a new one when used again)."""

    def __init__(self, max_connections: int = 1000, *, environ: Mapping[str, str] | None = None,
                 max_body_size: int = http1.MAX_RESPONSE_BODY, max_event_bytes: int = MAX_STREAM_EVENT_BYTES,
                 keepalive_expiry: float = 30.0):
        self.max_connections = max_connections
        self.keepalive_expiry = keepalive_expiry
        self.proxies = http1.ProxyConfig.from_environ(environ)
        self.max_body_size = max_body_size
        self.max_event_bytes = max_event_bytes
        self._session: aiohttp.ClientSession | None = None
        self._prepared_by_target: dict[tuple, _Prepared] = {}
        self._in_use = 0  # calls and streams holding a connection (or about to)

    def _client(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.max_connections,
                                             keepalive_timeout=self.keepalive_expiry)
            session = self._session = aiohttp.ClientSession(
                connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False,
                skip_auto_headers=("Accept-Encoding",), max_headers=http1.MAX_RESPONSE_HEADERS,
                timeout=aiohttp.ClientTimeout(total=None))
        return session

    def _prepared(self, target: ModelTarget, stream: bool, changes: HeaderChanges | None = None) -> _Prepared:
        key = (target.name, target.api_base, stream, changes)
        prepared = self._prepared_by_target.get(key)
        if prepared is None:
            headers = chat_headers(target, stream, changes)
            for name, value in headers.items():
                if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                    raise ValueError(f"header {name!r} contains a line break")
            url = URL(f"{target.api_base}/chat/completions")
            proxy = self.proxies.proxy_for(url.scheme, url.host or "", url.port or 0)
            proxy_url = proxy_headers = None
            if proxy is not None:
                proxy_url = f"http://{proxy.address}"
                if proxy.authorization and url.scheme == "https":  # sent on the CONNECT only
                    proxy_headers = {"Proxy-Authorization": proxy.authorization}
                elif proxy.authorization:
                    # plain HTTP: every request goes to the proxy and carries the credentials
                    # (aiohttp 3.14 sends `proxy_headers` on CONNECT only, and its `proxy_auth`
                    # is deprecated)
                    headers["proxy-authorization"] = proxy.authorization
            # connect: waiting for a pooled connection and opening one; sock_connect: opening one
            timeout = aiohttp.ClientTimeout(total=None, connect=POOL_WAIT_S,
                                            sock_connect=min(10.0, target.spec.timeout_s))
            prepared = self._prepared_by_target[key] = _Prepared(url, headers, proxy_url, proxy_headers, timeout)
        return prepared

    async def _send(self, prepared: _Prepared, body: bytes) -> aiohttp.ClientResponse:
        call_headers = CALL_HEADERS.get()   # this call's own (a trace's traceparent)
        headers = {**prepared.headers, **dict(call_headers)} if call_headers else prepared.headers
        return await self._client().request("POST", prepared.url, data=body, headers=headers,
                                            proxy=prepared.proxy, proxy_headers=prepared.proxy_headers,
                                            timeout=prepared.timeout, allow_redirects=False)

    async def _read_body(self, response: aiohttp.ClientResponse) -> bytes:
        """The whole body, at most `max_body_size` bytes (else `_BodyTooLarge`)."""
        limit = self.max_body_size
        declared = response.content_length
        if declared is not None:
            if declared > limit:
                raise _BodyTooLarge(f"the response body ({declared} bytes) exceeds {limit} bytes")
            return await response.read()
        parts = []
        size = 0
        while piece := await response.content.readany():
            size += len(piece)
            if size > limit:
                raise _BodyTooLarge(f"the response body exceeds {limit} bytes")
            parts.append(piece)
        return b"".join(parts)

    async def complete(self, target: ModelTarget, payload: dict[str, Any],
                       headers: HeaderChanges | None = None) -> dict[str, Any]:
        prepared = self._prepared(target, False, headers)
        body = chat_body(target, payload)
        self._in_use += 1
        response = None
        try:
            async with asyncio.timeout(target.spec.timeout_s):
                response = await self._send(prepared, body)
                content = await self._read_body(response)
        except _BodyTooLarge as exc:
            raise UpstreamError("protocol", str(exc), model=target.name) from None
        except aiohttp.ClientPayloadError as exc:  # the body broke off
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc}", model=target.name) from None
        except aiohttp.ClientError as exc:
            raise _client_error(exc, target.name) from None
        except TimeoutError:
            raise UpstreamError("timeout", f"no answer within {target.spec.timeout_s:g}s", model=target.name) from None
        finally:
            self._in_use -= 1
            if response is not None:
                response.release()  # back to the pool when read to its end, closed otherwise
        if response.status != 200:
            raise UpstreamError(classify_status(response.status), error_message(content), status=response.status,
                                model=target.name, retry_after_s=retry_after(response.headers))
        try:
            data = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise UpstreamError("protocol", "response is not JSON", status=200, model=target.name) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError("protocol", "response has no 'choices'", status=200, model=target.name)
        return data

    async def stream(self, target: ModelTarget, payload: dict[str, Any],
                     headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]:
        prepared = self._prepared(target, True, headers)
        body = chat_body(target, payload)
        spec = target.spec
        loop = asyncio.get_running_loop()
        first_token_by = loop.time() + spec.first_token_timeout_s  # one budget, from the call
        self._in_use += 1
        response = None
        try:
            try:
                async with asyncio.timeout_at(first_token_by):
                    response = await self._send(prepared, body)
            except aiohttp.ClientError as exc:
                raise _client_error(exc, target.name) from None
            except TimeoutError:
                raise UpstreamError("timeout", f"no first token within {spec.first_token_timeout_s:g}s",
                                    model=target.name) from None
            if response.status != 200:
                try:
                    async with asyncio.timeout(spec.stream_idle_timeout_s):
                        content = await self._read_body(response)
                except (TimeoutError, aiohttp.ClientError, _BodyTooLarge):
                    content = b""
                raise UpstreamError(classify_status(response.status), error_message(content),
                                    status=response.status, model=target.name,
                                    retry_after_s=retry_after(response.headers))
            reader = response.content

            async def read_chunk(timeout: float) -> bytes | None:
                async with asyncio.timeout(timeout):
                    return await reader.readany() or None

            events = StreamEvents(read_chunk, SSEDecoder(max_event_bytes=self.max_event_bytes), target, first_token_by,
                                  timeouts=(TimeoutError,), breaks=(aiohttp.ClientError,))
            async for event in events:
                chunk = chat_chunk(event.data, target.name)
                if chunk is None:  # [DONE]
                    await self._drain(response, spec.stream_idle_timeout_s)  # so the connection is reused
                    return
                yield chunk
            end_of_chat_stream(events, target.name)  # a last [DONE] without its blank line is accepted
        finally:
            self._in_use -= 1
            if response is not None:
                response.release()  # back to the pool when read to its end, closed otherwise

    @staticmethod
    async def _drain(response: aiohttp.ClientResponse, timeout: float) -> None:
        """Read what follows ``[DONE]`` (the chunked body's end) so that the connection can be
        reused; a response that does not end in time is closed on release."""
        try:
            async with asyncio.timeout(timeout):
                while await response.content.readany():
                    pass
        except (TimeoutError, aiohttp.ClientError):
            pass

    @property
    def session(self) -> aiohttp.ClientSession | None:
        """The aiohttp session calls go through (None before the first call and after `aclose`)."""
        return self._session

    def connections_in_use(self) -> int:
        """Calls and streams using a connection now."""
        return self._in_use

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()
