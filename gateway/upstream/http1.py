"""A small asyncio HTTP/1.1 client with a keep-alive connection pool: the upstream fast path.

It does what `gateway.upstream` needs and nothing more, for a fraction of httpx's CPU cost per call:

- one pool per (scheme, host, port) with a cap on connections; callers beyond the cap wait in a
  FIFO queue and are handed a connection as one is released (no scanning of the pool);
- idle connections are reused last-in-first-out and closed after `keepalive_expiry` seconds; one
  the server has closed (or written to) while idle is dropped before it is used;
- requests are sent from a prebuilt head (`Client.prepare`), so a call costs one `write`;
- responses are parsed by `httptools` (llhttp) straight from the socket's protocol callbacks:
  Content-Length, chunked and read-until-close bodies, ``Connection: close`` and HTTP/1.0;
- timeouts: connect, read (idle time between two reads), write, pool (waiting for a free
  connection) and an optional total for the whole exchange;
- a connection goes back to the pool only after its response was read completely; a response
  left unfinished (closed early, an error, a cancelled task) closes its connection instead;
- ``https`` works too (``ssl.create_default_context()`` unless a context is given);
- bounded answers: a status line and headers of at most `MAX_RESPONSE_HEAD` bytes and
  `MAX_RESPONSE_HEADERS` fields, a body read whole (`aread`, ``send`` without ``stream``) of at
  most `MAX_RESPONSE_BODY` bytes (each overridable per client); beyond that `ResponseTooLarge`
  and the connection is closed. A streamed body is handed over piece by piece as it arrives
  (its reader bounds what it keeps: `gateway.sse.SSEDecoder`'s ``max_event_bytes``);
- egress proxies (`ProxyConfig`): ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY``, read once
  when the client is created.

**When a request is sent again.** Never when the server may have processed it. A request goes
out a second time, on a new connection, only if it provably did not reach the server whole:

- the reused idle connection turned out dead (closed by the server, found by the pool or when
  writing) before any byte of the request was written, or
- the connection died while part of the request was still in our own send buffer (never handed
  to the operating system): the server cannot have read a whole request.

Once the whole request was handed to the operating system, a connection that closes without a
byte of answer may mean "closed while idle, request lost" or "read, processed, then crashed" —
the client cannot tell. A non-idempotent request (POST, PATCH) then fails with
`RemoteProtocolError` (a completion must not be billed twice); an idempotent one (GET, HEAD,
PUT, DELETE, OPTIONS, TRACE) is sent once more if the connection was a reused one, as urllib3
and aiohttp do (their retries of a dropped keep-alive connection are for idempotent methods
only). Whether to try again after such an error is the caller's decision (`Upstreams` retries
according to the policy). A new connection that closes without answering is never retried.

**Proxies.** `ProxyConfig.from_environ` reads ``http_proxy``/``HTTP_PROXY`` (for ``http://``
URLs), ``https_proxy``/``HTTPS_PROXY`` (for ``https://``) and ``no_proxy``/``NO_PROXY`` (lower
case first; ``HTTP_PROXY`` is ignored when ``REQUEST_METHOD`` is set, as in CGI: "httpoxy"); a
client reads them once, when it is created (a later change of the environment needs a new
client). Plain HTTP goes to the proxy with the absolute URL as request target; HTTPS goes
through a ``CONNECT host:port`` tunnel, TLS end to end with the upstream. Only ``http://``
proxies are supported. Credentials in the proxy URL (``http://user:pass@proxy:3128``, percent-
encoded) are sent as ``Proxy-Authorization: Basic …`` (on ``CONNECT`` only, for HTTPS) and appear
in no error message or repr. ``NO_PROXY`` is a comma- (or space-) separated list: ``*`` (every
host), host names (``example.com`` also matches its subdomains, as does ``.example.com``), IP
addresses and CIDR ranges (``10.0.0.0/8``), each optionally with ``:port``. Loopback hosts
(``localhost``, ``*.localhost``, 127.0.0.0/8, ``::1``) are always reached directly: a proxy's
loopback is not ours.

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
`WriteTimeout`, `PoolTimeout`), `NetworkError` (`ConnectError` ⊃ `ProxyError`, `ReadError`,
`WriteError`) and `RemoteProtocolError` ⊃ `ResponseTooLarge`; `StreamError` for misuse of a
response's body (read twice, read after close).

`httptools` is required (the ``server`` extra installs it); there is no fallback parser.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ipaddress
import os
import select
import socket
import ssl as _ssl
from dataclasses import dataclass, field, replace
from typing import AsyncIterator, Mapping, Sequence
from urllib.parse import unquote, urlsplit

try:
    import httptools
except ImportError as exc:  # no fallback parser: say what to install
    raise ImportError("sigroute's upstream HTTP client needs httptools (llhttp): "
                      "pip install 'sigroute[server]' or pip install 'httptools>=0.6'") from exc

__all__ = [
    "Client", "Request", "Response", "Timeouts",
    "HTTPError", "TransportError", "TimeoutException", "ConnectTimeout", "ReadTimeout", "WriteTimeout",
    "PoolTimeout", "NetworkError", "ConnectError", "ProxyError", "ReadError", "WriteError",
    "RemoteProtocolError", "ResponseTooLarge", "StreamError", "ClientClosed", "ProxyConfig", "Proxy",
    "MAX_RESPONSE_BODY", "MAX_RESPONSE_HEAD", "MAX_RESPONSE_HEADERS", "IDEMPOTENT_METHODS",
]

MAX_RESPONSE_BODY = 64 * 1024 * 1024  # bytes of a body read whole (Client(max_body_size=...))
MAX_RESPONSE_HEAD = 64 * 1024  # bytes of a status line and headers (Client(max_head_size=...))
MAX_RESPONSE_HEADERS = 128  # header fields of one response (Client(max_headers=...))
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


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


class ProxyError(ConnectError):
    """The egress proxy could not be reached or would not open the way to the server."""


class ReadError(NetworkError):
    pass


class WriteError(NetworkError):
    pass


class RemoteProtocolError(TransportError):
    """The server broke the protocol: malformed response, or it closed the connection mid-response."""


class ResponseTooLarge(RemoteProtocolError):
    """The response's head or body is larger than the client accepts."""


class StreamError(HTTPError):
    """A response body was used wrongly: read again after it was consumed, or read after close."""


class ClientClosed(TransportError):
    """The client was closed."""


class _Unanswered(Exception):
    """Internal: a connection died before any byte of the response arrived. `unsent`: the request
    provably did not reach the server whole (safe to send again, whatever the method)."""

    def __init__(self, unsent: bool):
        super().__init__("the server closed the connection without answering")
        self.unsent = unsent


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
    head: bytes = field(repr=False)  # request line + headers, without content-length and the blank line
    close: bool = False  # the request itself asks for "Connection: close"

    def with_headers(self, headers: Sequence[tuple[str, str]]) -> "Request":
        """This request with `headers` appended to its head, for one call (a trace's `traceparent`):
        the prepared head is reused as it is, never rebuilt."""
        lines = []
        for name, value in headers:
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise ValueError(f"header {name!r} contains a line break")
            lines.append(f"{name}: {value}\r\n")
        return replace(self, head=self.head + "".join(lines).encode("latin-1"))


# ------------------------------------------------------------------------------------------------
# egress proxies


class Proxy:
    """An ``http://`` forward proxy: where it is and the ``Proxy-Authorization`` value to send
    (None without credentials). Its repr never shows the credentials."""

    __slots__ = ("host", "port", "authorization")

    def __init__(self, host: str, port: int, authorization: str | None = None):
        self.host = host
        self.port = port
        self.authorization = authorization

    @classmethod
    def from_url(cls, url: str, variable: str = "proxy URL") -> "Proxy":
        """Parse ``[http://][user:password@]host[:port]`` (`variable` names the setting in errors,
        which never quote the URL: it may hold a password)."""
        url = url.strip()
        if "://" not in url:
            url = "http://" + url
        parts = urlsplit(url)
        if parts.scheme.lower() != "http":
            raise ValueError(f"{variable}: unsupported proxy scheme {parts.scheme!r}; only http:// proxies are "
                             f"supported (HTTPS goes through them with CONNECT)")
        try:
            port = parts.port or 80
        except ValueError:
            raise ValueError(f"{variable}: the proxy URL has an invalid port") from None
        if not parts.hostname:
            raise ValueError(f"{variable}: the proxy URL has no host")
        authorization = None
        if parts.username is not None or parts.password is not None:
            user, password = unquote(parts.username or ""), unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
            authorization = f"Basic {token}"
        return cls(parts.hostname, port, authorization)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"<Proxy {self.address}{' with credentials' if self.authorization else ''}>"


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ProxyConfig:
    """Which proxy, if any, a URL goes through: ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` as read
    once (`from_environ`), or given explicitly. ``ProxyConfig()`` is "always direct"."""

    __slots__ = ("http", "https", "_any", "_names", "_networks")

    def __init__(self, http: Proxy | None = None, https: Proxy | None = None, no_proxy: str = ""):
        self.http = http
        self.https = https
        self._any = False
        self._names: list[tuple[str, int | None]] = []  # (host or domain, port or None)
        self._networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
        for entry in no_proxy.replace(" ", ",").split(","):
            entry = entry.strip().lower()
            if not entry:
                continue
            if entry == "*":
                self._any = True
                continue
            host, port = entry, None
            if entry.startswith("["):  # [v6]:port
                host, _, rest = entry[1:].partition("]")
                port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
            elif entry.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
                name, _, number = entry.partition(":")
                if number.isdigit():
                    host, port = name, int(number)
            try:
                self._networks.append((ipaddress.ip_network(host, strict=False), port))
                continue
            except ValueError:
                pass
            host = host.removeprefix("*").lstrip(".").rstrip(".")
            if host:
                self._names.append((host, port))

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> "ProxyConfig":
        """The proxies of an environment (default: ``os.environ``, read now)."""
        env = os.environ if environ is None else environ

        def read(name: str, upper: bool = True) -> str:
            return env.get(name.lower()) or (env.get(name) if upper else None) or ""

        http = read("HTTP_PROXY", upper="REQUEST_METHOD" not in env)  # httpoxy: not under CGI
        https = read("HTTPS_PROXY")
        return cls(Proxy.from_url(http, "HTTP_PROXY") if http.strip() else None,
                   Proxy.from_url(https, "HTTPS_PROXY") if https.strip() else None,
                   read("NO_PROXY"))

    def bypass(self, host: str, port: int) -> bool:
        """Whether `host` is reached directly (loopback, or listed in ``NO_PROXY``)."""
        host = host.lower().rstrip(".")
        if self._any or _loopback(host):
            return True
        for name, only in self._names:
            if (only is None or only == port) and (host == name or host.endswith("." + name)):
                return True
        if self._networks:
            try:
                address = ipaddress.ip_address(host)
            except ValueError:
                return False
            for network, only in self._networks:
                if (only is None or only == port) and address in network:
                    return True
        return False

    def proxy_for(self, scheme: str, host: str, port: int) -> Proxy | None:
        """The proxy a request to ``scheme://host:port`` goes through, or None for direct."""
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.bypass(host, port):
            return None
        return proxy

    def __repr__(self) -> str:
        return f"<ProxyConfig http={self.http!r} https={self.https!r}>"


# ------------------------------------------------------------------------------------------------
# one connection


_HIGH_WATER = 256 * 1024  # stop reading from the socket when this much body is buffered and unread


class _Connection(asyncio.Protocol):
    """A socket plus the parsing state of the response currently being received on it."""

    __slots__ = ("pool", "loop", "transport", "closed", "reused", "idle_since", "in_pool", "parser",
                 "status", "headers", "headers_done", "chunks", "buffered", "complete", "keep_alive",
                 "eof_body", "error", "received", "waiter", "paused", "write_paused", "drain_waiter",
                 "head_bytes", "header_bytes", "header_count", "max_head", "max_headers")

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
        self.write_paused = False  # part of the request is still in our send buffer
        self.drain_waiter: asyncio.Future | None = None
        self.max_head = pool.client.max_head_size
        self.max_headers = pool.client.max_headers
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
        self.head_bytes = 0  # bytes received before the response's headers were complete
        self.header_bytes = 0  # size of the header fields parsed
        self.header_count = 0

    # asyncio.Protocol ----------------------------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        try:
            # pause_writing() as soon as anything waits in our send buffer, resume_writing() once it
            # is all handed to the OS: `write_paused` then says whether a request left us whole
            transport.set_write_buffer_limits(high=0)
        except (AttributeError, NotImplementedError):
            pass
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
        head = not self.headers_done
        if head:
            self.head_bytes += len(data)
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(RemoteProtocolError("the server tried to switch protocols"))
        except httptools.HttpParserError as exc:  # (a callback's own error, set first, is kept)
            self._fail(RemoteProtocolError(f"malformed response from the server: {exc}"))
        if head and not self.headers_done and self.head_bytes > self.max_head and self.error is None:
            self._fail(ResponseTooLarge(f"the response's status line and headers exceed {self.max_head} bytes"))
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
                self.error = _Unanswered(unsent=self.write_paused)
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
        self.header_count += 1
        self.header_bytes += len(name) + len(value) + 4
        if self.header_count > self.max_headers or self.header_bytes > self.max_head:
            if self.error is None:
                self.error = ResponseTooLarge(
                    f"the response has more than {self.max_headers} header fields"
                    if self.header_count > self.max_headers else
                    f"the response's status line and headers exceed {self.max_head} bytes")
            raise self.error  # stops the parser (it raises HttpParserCallbackError)
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

    def peer_gone(self) -> bool:
        """An idle connection the server closed (or wrote to: nothing is expected) whose news the
        event loop has not delivered yet: readable means it cannot be used."""
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

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
        self.proxy = client.proxies.proxy_for(scheme, host, port)  # None: direct
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
                if conn.closed or self.loop.time() - conn.idle_since >= self.expiry or conn.peer_gone():
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
        """Open a connection in a slot already taken (directly, through the proxy, or through a
        tunnel of the proxy); the slot is given back if it fails."""
        limit = _limit(timeouts.connect, deadline, self.loop)
        ssl_context = self.client._ssl_context() if self.scheme == "https" else None
        proxy = self.proxy
        via = f" through the proxy {proxy.address}" if proxy is not None else ""
        try:
            if self.client.closed:
                raise ClientClosed("the HTTP client is closed")
            try:
                async with asyncio.timeout(limit):
                    if proxy is None:
                        _, conn = await self.loop.create_connection(
                            lambda: _Connection(self), self.host, self.port, ssl=ssl_context,
                            server_hostname=self.host if ssl_context is not None else None)
                    elif ssl_context is None:  # plain HTTP: requests go to the proxy in absolute form
                        _, conn = await self.loop.create_connection(lambda: _Connection(self), proxy.host, proxy.port)
                    else:
                        conn = await self._tunnel(proxy, ssl_context)
            except TimeoutError:
                raise ConnectTimeout(f"connecting to {self.host}:{self.port}{via} took longer than {limit:g}s") from None
            except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
                raise ConnectError(f"cannot connect to {self.host}:{self.port}{via}: {exc}") from None
        except BaseException:
            self._free_slot()
            raise
        self.connections.add(conn)
        return conn

    async def _tunnel(self, proxy: Proxy, ssl_context: _ssl.SSLContext) -> _Connection:
        """A TLS connection to the server inside a ``CONNECT`` tunnel through `proxy`."""
        transport, handshake = await self.loop.create_connection(
            lambda: _TunnelHandshake(self.loop, self.client.max_head_size), proxy.host, proxy.port)
        try:
            authority = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
            lines = [f"CONNECT {authority} HTTP/1.1", f"host: {authority}"]
            if proxy.authorization:
                lines.append(f"proxy-authorization: {proxy.authorization}")
            transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head, extra = await handshake.answer
            status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            parts = status_line.split(" ", 2)
            status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
            if not 200 <= status < 300:
                reason = parts[2][:100] if len(parts) > 2 else ""
                raise ProxyError(f"the proxy {proxy.address} refused to open a tunnel to {authority}: "
                                 f"{status or 'malformed answer'} {reason}".rstrip())
            if extra:
                raise ProxyError(f"the proxy {proxy.address} sent data before the tunnel to {authority} was used")
            conn = _Connection(self)
            tls = await self.loop.start_tls(transport, conn, ssl_context, server_hostname=self.host)
            conn.connection_made(tls)
            return conn
        except BaseException:
            handshake.answer.cancel()
            transport.close()
            raise

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


class _TunnelHandshake(asyncio.Protocol):
    """Reads a proxy's answer to ``CONNECT`` (its head, at most `limit` bytes): `answer` is
    (head without the blank line, number of bytes after it)."""

    def __init__(self, loop, limit: int):
        self.answer: asyncio.Future = loop.create_future()
        self.buffer = bytearray()
        self.limit = limit

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        start = max(0, len(self.buffer) - 3)  # (only the new bytes are searched)
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n", start)
        if end >= 0:
            self.answer.set_result((bytes(self.buffer[:end]), len(self.buffer) - end - 4))
        elif len(self.buffer) > self.limit:
            self.answer.set_exception(ProxyError(f"the proxy's answer to CONNECT exceeds {self.limit} bytes"))

    def connection_lost(self, exc) -> None:
        if not self.answer.done():
            self.answer.set_exception(ProxyError("the proxy closed the connection before answering CONNECT"))


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
                 "_done", "_consumed", "max_body_size")

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
        self.max_body_size = pool.client.max_body_size  # for `aread`

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
                    if isinstance(error, _Unanswered):
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
        """The whole body (read once; later calls return it again). A body larger than
        `max_body_size` raises `ResponseTooLarge` (and closes the connection)."""
        if self._content is not None:
            return self._content
        if self._consumed:
            raise StreamError("the response body was already read as a stream")
        self._consumed = True
        limit = self.max_body_size
        declared = self.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self._abort()
            raise ResponseTooLarge(f"the response body ({declared} bytes) exceeds {limit} bytes")
        parts = []
        size = 0
        while True:
            piece = await self.read_chunk()
            if piece is None:
                break
            size += len(piece)
            if size > limit:
                self._abort()
                raise ResponseTooLarge(f"the response body exceeds {limit} bytes")
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
                 timeouts: Timeouts = DEFAULT_TIMEOUTS, ssl_context: _ssl.SSLContext | None = None,
                 proxies: ProxyConfig | None = None, max_body_size: int = MAX_RESPONSE_BODY,
                 max_head_size: int = MAX_RESPONSE_HEAD, max_headers: int = MAX_RESPONSE_HEADERS):
        """`proxies`: None reads ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY`` from ``os.environ``
        now (once for this client); ``ProxyConfig()`` never uses a proxy."""
        if max_connections_per_host < 1:
            raise ValueError("max_connections_per_host must be at least 1")
        self.max_connections_per_host = max_connections_per_host
        self.keepalive_expiry = keepalive_expiry
        self.timeouts = timeouts
        self._ssl = ssl_context
        self.proxies = ProxyConfig.from_environ() if proxies is None else proxies
        self.max_body_size = max_body_size
        self.max_head_size = max_head_size
        self.max_headers = max_headers
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
        names = {k.lower() for k in (headers or {})}
        proxy = self.proxies.proxy_for(scheme, host, port) if scheme == "http" else None  # (https: a tunnel)
        if proxy is not None:
            target = f"http://{host_header}{target}"  # absolute form, for the proxy
        lines = [f"{method.upper()} {target} HTTP/1.1"]
        if "host" not in names:
            lines.append(f"host: {host_header}")
        if proxy is not None and proxy.authorization and "proxy-authorization" not in names:
            lines.append(f"proxy-authorization: {proxy.authorization}")
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
        except _Unanswered as unanswered:  # (only from a reused connection)
            if not (unanswered.unsent or request.method in IDEMPOTENT_METHODS):
                raise RemoteProtocolError(
                    "the server closed the connection without answering after the whole request was sent; "
                    "it may have been processed, so it was not sent again") from None
            # the request provably did not reach the server (or may be repeated): once more, on a new connection
            conn = await pool.acquire(timeouts, deadline, use_idle=False)
            try:
                response = await self._exchange(conn, pool, request, data, timeouts, deadline)
            except _Unanswered:
                raise RemoteProtocolError("the server closed the connection without answering") from None
        if not stream:
            await response.aread()
        return response

    async def _exchange(self, conn: _Connection, pool: _Pool, request: Request, data: bytes,
                        timeouts: Timeouts, deadline: float | None) -> Response:
        """Write the request and read the response head. Raises `_Unanswered` when a reused
        connection died before answering; the connection is never left half-used in the pool."""
        try:
            conn.begin()
            if conn.closed or conn.transport.is_closing():  # nothing written yet
                raise _Unanswered(unsent=True) if conn.reused else ConnectError(
                    "the connection closed before the request was sent")
            conn.transport.write(data)
            if conn.transport.is_closing() and not conn.received:
                # the write failed at once (the transport closes itself on a send error): not a
                # byte of the request reached the server
                raise _Unanswered(unsent=True) if conn.reused else WriteError(
                    "the connection failed while sending the request")
            if conn.write_paused:
                await self._drain_writes(conn, timeouts, deadline)
            read = timeouts.read
            while not conn.headers_done:
                error = conn.error
                if error is not None:
                    if isinstance(error, _Unanswered) and not conn.reused:
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
        # a connection lost meanwhile left its error (`_Unanswered`, unsent: the request was not all
        # handed to the OS) for the caller to find

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
