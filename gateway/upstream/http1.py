"""A small asyncio HTTP/1.1 client with a keep-alive connection pool: the upstream fast path.

It does what `gateway.upstream` needs and nothing more, for a fraction of httpx's CPU cost per call:

- one pool per (scheme, host, port) with a cap on connections; callers beyond the cap wait in a
  FIFO queue and are handed a connection as one is released (no scanning of the pool);
- idle connections are reused last-in-first-out and closed after `keepalive_expiry` seconds;
- requests are sent from a prebuilt head (`Client.prepare`), so a call costs one `write`;
- responses are parsed by `httptools` (llhttp) straight from the socket's protocol callbacks:
  Content-Length, chunked and read-until-close bodies, ``Connection: close`` and HTTP/1.0;
- a request that fails on a reused connection before any byte of its response arrived (the
  server closed the idle connection) is retried once on another connection;
- timeouts: connect, read (idle time between two reads), write, pool (waiting for a free
  connection) and an optional total for the whole exchange;
- a connection goes back to the pool only after its response was read completely; a response
  left unfinished (closed early, an error, a cancelled task) closes its connection instead;
- ``https`` works too (``ssl.create_default_context()`` unless a context is given).

    client = Client()
    request = client.prepare("POST", "http://127.0.0.1:8000/v1/chat/completions",
                             {"content-type": "application/json"})
    response = await client.send(request, b'{"model": ...}')          # body read, connection back
    response.status_code, response.headers["content-type"], response.content
    response = await client.send(request, body, stream=True)          # headers only …
    try:
        async for piece in response.aiter_bytes():                    # … then the body as it comes
            ...
    finally:
        await response.aclose()
    await client.aclose()

Errors mirror httpx's tree: `TransportError` ⊃ `TimeoutException` (`ConnectTimeout`, `ReadTimeout`,
`WriteTimeout`, `PoolTimeout`), `NetworkError` (`ConnectError`, `ReadError`, `WriteError`) and
`RemoteProtocolError`; `StreamError` for misuse of a response's body (read twice, read after close).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl as _ssl
from dataclasses import dataclass
from typing import AsyncIterator, Mapping
from urllib.parse import urlsplit

import httptools

__all__ = [
    "Client", "Request", "Response", "Timeouts",
    "HTTPError", "TransportError", "TimeoutException", "ConnectTimeout", "ReadTimeout", "WriteTimeout",
    "PoolTimeout", "NetworkError", "ConnectError", "ReadError", "WriteError", "RemoteProtocolError",
    "StreamError", "ClientClosed",
]


# ------------------------------------------------------------------------------------------------
# errors


class HTTPError(Exception):
    """Base class of every error raised by this module."""


class TransportError(HTTPError):
    """The exchange with the server failed (network, timeout, malformed answer)."""


class TimeoutException(TransportError):
    pass


class ConnectTimeout(TimeoutException):
    pass


class ReadTimeout(TimeoutException):
    pass


class WriteTimeout(TimeoutException):
    pass


class PoolTimeout(TimeoutException):
    """No connection of the pool became free in time."""


class NetworkError(TransportError):
    pass


class ConnectError(NetworkError):
    pass


class ReadError(NetworkError):
    pass


class WriteError(NetworkError):
    pass


class RemoteProtocolError(TransportError):
    """The server broke the protocol: malformed response, or it closed the connection mid-response."""


class StreamError(HTTPError):
    """A response body was used wrongly: read again after it was consumed, or read after close."""


class ClientClosed(TransportError):
    """The client was closed."""


class _Stale(Exception):
    """Internal: a reused connection died before any byte of the response arrived (safe to retry)."""


# ------------------------------------------------------------------------------------------------
# requests and timeouts


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; None = no limit. `read` bounds each wait for more bytes (idle time), `total` the
    whole exchange from the call of `send` to the last body byte."""

    connect: float | None = 10.0
    read: float | None = None
    write: float | None = 30.0
    pool: float | None = 10.0
    total: float | None = None


DEFAULT_TIMEOUTS = Timeouts()


@dataclass(frozen=True, slots=True)
class Request:
    """A request's method, target and header block, built once by `Client.prepare` and sent many times."""

    method: str
    url: str
    key: tuple  # (scheme, host, port): the pool
    head: bytes  # request line + headers, without content-length and the blank line
    close: bool  # the request itself asks for "Connection: close"


# ------------------------------------------------------------------------------------------------
# one connection


_HIGH_WATER = 256 * 1024  # stop reading from the socket when this much body is buffered and unread


class _Connection(asyncio.Protocol):
    """A socket plus the parsing state of the response currently being received on it."""

    __slots__ = ("pool", "loop", "transport", "closed", "reused", "idle_since", "in_pool", "parser",
                 "status", "headers", "headers_done", "chunks", "buffered", "complete", "keep_alive",
                 "eof_body", "error", "received", "waiter", "paused", "write_paused", "drain_waiter")

    def __init__(self, pool: "_Pool"):
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self.in_pool = False
        self.parser = None
        self.waiter: asyncio.Future | None = None
        self.paused = False
        self.write_paused = False
        self.drain_waiter: asyncio.Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.headers_done = False
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.eof_body = False  # body delimited by the end of the connection
        self.error: BaseException | None = None
        self.received = False

    # asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):
                pass

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes nobody asked for: the connection can no longer be trusted
            self.close()
            return
        self.received = True
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RemoteProtocolError("the server tried to switch protocols"))
        except httptools.HttpParserError as exc:
            self._fail(RemoteProtocolError(f"malformed response from the server: {exc}"))
        if self.buffered > _HIGH_WATER and not self.complete and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self):
        return None  # close the transport; connection_lost follows

    def connection_lost(self, exc) -> None:
        self.closed = True
        if self.in_pool:
            self.pool.forget_idle(self)
        if self.parser is not None and not self.complete and self.error is None:
            if self.headers_done and self.eof_body:
                self.complete = True  # a body without length ends with the connection
                self.keep_alive = False
            elif not self.received:
                self.error = _Stale()
            else:
                self.error = RemoteProtocolError("the server closed the connection before the response was "
                                                 "complete" + (f" ({exc})" if exc else ""))
        self._wake()
        drain = self.drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        drain = self.drain_waiter
        if drain is not None and not drain.done():
            drain.set_result(None)

    # httptools callbacks -------------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # informational (100 Continue, 103 Early Hints): the real answer follows
            self.headers = {}
            return
        self.status = status
        self.headers_done = True
        headers = self.headers
        self.eof_body = ("content-length" not in headers and "transfer-encoding" not in headers
                         and status not in (204, 304))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if not self.headers_done:  # the end of an informational response
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()

    # ---------------------------------------------------------------------------------------------
    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self.close()

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    @staticmethod
    def _timed_out(waiter: asyncio.Future, error: type[BaseException], message: str) -> None:
        if not waiter.done():
            waiter.set_exception(error(message))

    async def wait(self, timeout: float | None, error: type[TimeoutException]) -> None:
        """Until something happens on the connection (bytes, end, error) or `timeout` passes."""
        waiter = self.loop.create_future()
        self.waiter = waiter
        if timeout is None:
            try:
                await waiter
            finally:
                self.waiter = None
            return
        if timeout <= 0:
            self.waiter = None
            raise error("timed out")
        handle = self.loop.call_later(timeout, self._timed_out, waiter, error, "no data from the server for %gs"
                                      % timeout)
        try:
            await waiter
        finally:
            self.waiter = None
            handle.cancel()

    def begin(self) -> None:
        """Prepare to receive a response."""
        self._reset()
        self.parser = httptools.HttpResponseParser(self)

    def take_body(self) -> bytes:
        chunks = self.chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self.chunks = []
        self.buffered = 0
        if self.paused and not self.closed:
            self.paused = False
            self.transport.resume_reading()
        return data

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None and not self.chunks

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()


# ------------------------------------------------------------------------------------------------
# the pool of one origin


class _Pool:
    def __init__(self, client: "Client", scheme: str, host: str, port: int):
        self.client = client
        self.loop = client._loop()
        self.scheme = scheme
        self.host = host
        self.port = port
        self.max_connections = client.max_connections_per_host
        self.expiry = client.keepalive_expiry
        self.idle: list[_Connection] = []  # a stack: the most recently used on top
        self.connections: set[_Connection] = set()
        self.total = 0  # connections open or being opened (slots taken)
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.sweeper: asyncio.TimerHandle | None = None

    # slots ---------------------------------------------------------------------------------------
    async def acquire(self, timeouts: Timeouts, deadline: float | None, use_idle: bool = True) -> _Connection:
        if use_idle:
            idle = self.idle
            while idle:
                conn = idle.pop()
                conn.in_pool = False
                if conn.closed or self.loop.time() - conn.idle_since >= self.expiry:
                    self._drop(conn)
                    continue
                return conn
        if self.total < self.max_connections:
            self.total += 1
            return await self._open(timeouts, deadline)
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        limit = _limit(timeouts.pool, deadline, self.loop)
        handle = None
        if limit is not None:
            handle = self.loop.call_later(max(0.0, limit), _Connection._timed_out, waiter, PoolTimeout,
                                          f"no free connection to {self.host}:{self.port} within {limit:g}s")
        try:
            conn = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._hand_back(waiter.result())  # handed a connection or slot just as we gave up
            else:
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    pass
            raise
        finally:
            if handle is not None:
                handle.cancel()
        if conn is None:  # a slot: open a connection of our own
            return await self._open(timeouts, deadline)
        return conn

    async def _open(self, timeouts: Timeouts, deadline: float | None) -> _Connection:
        """Open a connection in a slot already taken; the slot is given back if it fails."""
        limit = _limit(timeouts.connect, deadline, self.loop)
        ssl_context = self.client._ssl_context() if self.scheme == "https" else None
        try:
            if self.client.closed:
                raise ClientClosed("the HTTP client is closed")
            try:
                async with asyncio.timeout(limit):
                    _, conn = await self.loop.create_connection(
                        lambda: _Connection(self), self.host, self.port, ssl=ssl_context,
                        server_hostname=self.host if ssl_context is not None else None)
            except TimeoutError:
                raise ConnectTimeout(f"connecting to {self.host}:{self.port} took longer than {limit:g}s") from None
            except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
                raise ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from None
        except BaseException:
            self._free_slot()
            raise
        self.connections.add(conn)
        return conn

    def _free_slot(self) -> None:
        """A slot was given up: let the first waiter open a connection in it, or free it."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.total -= 1

    def _hand_back(self, conn: _Connection | None) -> None:
        if conn is None:
            self._free_slot()
        else:
            self.release(conn)

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self.connections.discard(conn)
        self.total -= 1

    # after a response --------------------------------------------------------------------------
    def release(self, conn: _Connection) -> None:
        """Return a connection whose response was read completely (or close it if it cannot be reused)."""
        conn.parser = None
        if not conn.reusable() or self.client.closed:
            self.discard(conn)
            return
        conn.reused = True
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        conn.in_pool = True
        self.idle.append(conn)
        if self.sweeper is None:
            self.sweeper = self.loop.call_at(conn.idle_since + self.expiry, self._sweep)

    def discard(self, conn: _Connection) -> None:
        """Close a connection that cannot be reused; its slot goes to the next waiter."""
        conn.parser = None
        conn.close()
        if conn in self.connections:
            self.connections.discard(conn)
            self._free_slot()

    def forget_idle(self, conn: _Connection) -> None:
        """An idle connection was closed by the server."""
        conn.in_pool = False
        try:
            self.idle.remove(conn)
        except ValueError:
            return
        self.connections.discard(conn)
        self.total -= 1

    def _sweep(self) -> None:
        self.sweeper = None
        idle = self.idle
        now = self.loop.time()
        while idle and idle[0].idle_since + self.expiry <= now:
            conn = idle.pop(0)
            conn.in_pool = False
            self._drop(conn)
        if idle:
            self.sweeper = self.loop.call_at(idle[0].idle_since + self.expiry, self._sweep)

    def close(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None
        for conn in list(self.connections):
            conn.close()
        self.connections.clear()
        self.idle.clear()
        self.total = 0
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ClientClosed("the HTTP client is closed"))


def _limit(timeout: float | None, deadline: float | None, loop) -> float | None:
    if deadline is None:
        return timeout
    left = deadline - loop.time()
    return left if timeout is None or left < timeout else timeout


# ------------------------------------------------------------------------------------------------
# responses


class Response:
    """Status and headers of an answer; its body read whole (`content`) or as it arrives (`aiter_bytes`)."""

    __slots__ = ("status_code", "headers", "request", "_conn", "_pool", "_timeouts", "_deadline", "_content",
                 "_done", "_consumed")

    def __init__(self, status_code: int, headers: dict[str, str], request: Request, conn: _Connection,
                 pool: _Pool, timeouts: Timeouts, deadline: float | None):
        self.status_code = status_code
        self.headers = headers  # lower-case names; repeated headers joined with ", "
        self.request = request
        self._conn: _Connection | None = conn
        self._pool = pool
        self._timeouts = timeouts
        self._deadline = deadline
        self._content: bytes | None = None
        self._done = False  # the body was read to the end (or the response closed)
        self._consumed = False

    @property
    def content(self) -> bytes:
        if self._content is None:
            raise StreamError("the body of a streamed response has not been read; use `await response.aread()`")
        return self._content

    @property
    def is_closed(self) -> bool:
        return self._conn is None

    async def read_chunk(self, timeout: float | None = ...) -> bytes | None:  # type: ignore[assignment]
        """The body bytes received since the last call (waiting for some if there are none), or None
        at the end of the body. `timeout` overrides the read timeout (seconds; None: no limit)."""
        conn = self._conn
        if conn is None:
            if self._done:
                return None
            raise StreamError("the response is closed")
        if timeout is ...:
            timeout = self._timeouts.read
        try:
            while True:
                if conn.chunks:
                    return conn.take_body()
                if conn.complete:
                    self._finish()
                    return None
                error = conn.error
                if error is not None:
                    if isinstance(error, _Stale):
                        error = RemoteProtocolError("the server closed the connection before the response was "
                                                    "complete")
                    raise error
                if self._deadline is not None:
                    left = self._deadline - conn.loop.time()
                    await conn.wait(left if timeout is None or left < timeout else timeout, ReadTimeout)
                else:
                    await conn.wait(timeout, ReadTimeout)
        except BaseException:
            self._abort()
            raise

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives (pieces as received; at least one byte each)."""
        if self._consumed:
            raise StreamError("the response body was already read")
        self._consumed = True
        try:
            while True:
                piece = await self.read_chunk()
                if piece is None:
                    return
                yield piece
        finally:
            if not self._done:
                self._abort()

    aiter_raw = aiter_bytes

    async def aread(self) -> bytes:
        """The whole body (read once; later calls return it again)."""
        if self._content is not None:
            return self._content
        if self._consumed:
            raise StreamError("the response body was already read as a stream")
        self._consumed = True
        parts = []
        while True:
            piece = await self.read_chunk()
            if piece is None:
                break
            parts.append(piece)
        self._content = parts[0] if len(parts) == 1 else b"".join(parts)
        return self._content

    async def drain(self, timeout: float | None = None) -> bool:
        """Read and drop the rest of the body so that the connection can be reused; True if it all came."""
        try:
            while await self.read_chunk(timeout) is not None:
                pass
            return True
        except (TransportError, StreamError):
            return False

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        self._done = True
        if conn is not None:
            if self.request.close:
                conn.keep_alive = False
            self._pool.release(conn)

    def _abort(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.discard(conn)

    async def aclose(self) -> None:
        """Finish with the response: a fully read one's connection is reused, any other is closed."""
        conn = self._conn
        if conn is None:
            return
        if conn.complete and not conn.chunks:
            self._finish()
        else:
            self._abort()

    async def __aenter__(self) -> "Response":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<Response [{self.status_code}]>"


# ------------------------------------------------------------------------------------------------
# the client


class Client:
    """Pooled HTTP/1.1 client; one per process is enough. Create and use it within one event loop."""

    def __init__(self, *, max_connections_per_host: int = 100, keepalive_expiry: float = 30.0,
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, ssl_context: _ssl.SSLContext | None = None):
        if max_connections_per_host < 1:
            raise ValueError("max_connections_per_host must be at least 1")
        self.max_connections_per_host = max_connections_per_host
        self.keepalive_expiry = keepalive_expiry
        self.timeouts = timeouts
        self._ssl = ssl_context
        self._pools: dict[tuple, _Pool] = {}
        self.closed = False

    @staticmethod
    def _loop():
        return asyncio.get_running_loop()

    def _ssl_context(self) -> _ssl.SSLContext:
        if self._ssl is None:
            self._ssl = _ssl.create_default_context()
        return self._ssl

    def prepare(self, method: str, url: str, headers: Mapping[str, str] | None = None) -> Request:
        """Build a request's head once; `send` it many times with different bodies."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if method.upper() in ("HEAD", "CONNECT"):
            raise ValueError(f"{method.upper()} requests are not supported by this client")
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {url!r}: only http and https")
        host = parts.hostname
        if not host:
            raise ValueError(f"no host in URL {url!r}")
        default_port = 443 if scheme == "https" else 80
        port = parts.port or default_port
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header += f":{port}"
        lines = [f"{method.upper()} {target} HTTP/1.1"]
        names = {k.lower() for k in (headers or {})}
        if "host" not in names:
            lines.append(f"host: {host_header}")
        close = False
        for name, value in (headers or {}).items():
            low = name.lower()
            if low in ("content-length", "transfer-encoding"):
                continue  # set per call from the body
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} contains a line break")
            if low == "connection" and value.strip().lower() == "close":
                close = True
            lines.append(f"{name}: {value}")
        head = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        return Request(method.upper(), url, (scheme, host, port), head, close)

    def _pool(self, request: Request) -> _Pool:
        pool = self._pools.get(request.key)
        if pool is None:
            if self.closed:
                raise ClientClosed("the HTTP client is closed")
            pool = self._pools[request.key] = _Pool(self, *request.key)
        return pool

    async def send(self, request: Request, body: bytes = b"", *, stream: bool = False,
                   timeouts: Timeouts | None = None) -> Response:
        """Send `request` with `body`. Without `stream` the body is read and the connection is back in
        the pool when this returns; with `stream` only the headers are read: iterate the body
        (`aiter_bytes`, `read_chunk`, `aread`) and `aclose` the response."""
        if self.closed:
            raise ClientClosed("the HTTP client is closed")
        timeouts = timeouts or self.timeouts
        pool = self._pool(request)
        loop = pool.loop
        deadline = loop.time() + timeouts.total if timeouts.total is not None else None
        if body or request.method in ("POST", "PUT", "PATCH"):
            data = b"%bcontent-length: %d\r\n\r\n%b" % (request.head, len(body), body)
        else:
            data = request.head + b"\r\n"
        conn = await pool.acquire(timeouts, deadline)
        try:
            response = await self._exchange(conn, pool, request, data, timeouts, deadline)
        except _Stale:
            # the server had closed this idle connection: once more, on another one
            conn = await pool.acquire(timeouts, deadline, use_idle=False)
            try:
                response = await self._exchange(conn, pool, request, data, timeouts, deadline)
            except _Stale:
                raise RemoteProtocolError("the server closed the connection without answering") from None
        if not stream:
            await response.aread()
        return response

    async def _exchange(self, conn: _Connection, pool: _Pool, request: Request, data: bytes,
                        timeouts: Timeouts, deadline: float | None) -> Response:
        """Write the request and read the response head. Raises `_Stale` when a reused connection
        died before answering; the connection is never left half-used in the pool."""
        try:
            conn.begin()
            if conn.closed or conn.transport.is_closing():
                raise _Stale() if conn.reused else ConnectError("the connection closed before the request was sent")
            conn.transport.write(data)
            if conn.write_paused:
                await self._drain_writes(conn, timeouts, deadline)
            read = timeouts.read
            while not conn.headers_done:
                error = conn.error
                if error is not None:
                    if isinstance(error, _Stale) and not conn.reused:
                        raise RemoteProtocolError("the server closed the connection without answering")
                    raise error
                if deadline is None:
                    await conn.wait(read, ReadTimeout)
                else:
                    await conn.wait(_limit(read, deadline, conn.loop), ReadTimeout)
        except BaseException:
            pool.discard(conn)
            raise
        return Response(conn.status, conn.headers, request, conn, pool, timeouts, deadline)

    @staticmethod
    async def _drain_writes(conn: _Connection, timeouts: Timeouts, deadline: float | None) -> None:
        limit = _limit(timeouts.write, deadline, conn.loop)
        while conn.write_paused and not conn.closed:
            conn.drain_waiter = conn.loop.create_future()
            try:
                async with asyncio.timeout(limit):
                    await conn.drain_waiter
            except TimeoutError:
                raise WriteTimeout(f"sending the request took longer than {limit:g}s") from None
            finally:
                conn.drain_waiter = None
        if conn.closed and conn.error is None and not conn.received:
            raise _Stale() if conn.reused else WriteError("the connection closed while sending the request")

    async def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                      body: bytes = b"", timeouts: Timeouts | None = None) -> Response:
        """One-off convenience: prepare and send, body read."""
        return await self.send(self.prepare(method, url, headers), body, timeouts=timeouts)

    async def get(self, url: str, **kwargs) -> Response:
        return await self.request("GET", url, **kwargs)

    async def post(self, url: str, **kwargs) -> Response:
        return await self.request("POST", url, **kwargs)

    def stats(self) -> dict[str, dict[str, int]]:
        """Per origin: connections open, idle, and callers waiting for one."""
        return {f"{s}://{h}:{p}": {"open": len(pool.connections), "idle": len(pool.idle),
                                   "waiting": sum(1 for w in pool.waiters if not w.done())}
                for (s, h, p), pool in self._pools.items()}

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail, later ones raise `ClientClosed`."""
        self.closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            pool.close()
        await asyncio.sleep(0)  # let the transports run their close callbacks

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
