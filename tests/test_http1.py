"""gateway.upstream.http1 against real loopback servers: keep-alive, bodies, stale connections, timeouts,
the pool cap, cancellation and TLS."""

from __future__ import annotations

import asyncio
import base64
import select
import socket
import ssl
import subprocess
import threading
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from sigroute.gateway.upstream import ModelTarget, OpenAICompatibleTransport, UpstreamError, http1
from sigroute.policies.schema import ModelSpec
from tests.conftest import free_port


class RawServer:
    """A tiny HTTP/1.1 server whose answer to each request is written by `handler(server, conn_no,
    request_no_on_conn, body, writer)`; it counts connections and requests."""

    def __init__(self, handler, ssl_context: ssl.SSLContext | None = None):
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.requests: list[bytes] = []
        self.heads: list[bytes] = []
        self.open = 0
        self.max_open = 0
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> "RawServer":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    def url(self, path: str = "/echo") -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn_no = self.connections
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        n = 0
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                self.heads.append(head)
                self.requests.append(body)
                n += 1
                if await self.handler(self, conn_no, n, body, writer) is False:
                    return
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()


def reply(body: bytes, status: str = "200 OK", extra: str = "") -> bytes:
    return (f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n{extra}\r\n"
            .encode() + body)


async def echo(server, conn_no, n, body, writer):
    writer.write(reply(b'{"echo": ' + orjson.dumps(body.decode()) + b"}"))
    await writer.drain()


async def chunked(server, conn_no, n, body, writer):
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    for i in range(5):
        piece = f"data: {i}\n\n".encode()
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


@pytest.fixture
async def client():
    c = http1.Client()
    yield c
    await c.aclose()


# ------------------------------------------------------------------------------------------------


async def test_keep_alive_reuses_one_connection(client):
    async with RawServer(echo) as server:
        request = client.prepare("POST", server.url(), {"content-type": "application/json"})
        for i in range(10):
            response = await client.send(request, f"n{i}".encode())
            assert response.status_code == 200
            assert orjson.loads(response.content) == {"echo": f"n{i}"}
            assert response.headers["content-type"] == "application/json"
        assert server.connections == 1
        assert len(server.requests) == 10
        head = server.heads[0].decode()
        assert head.startswith("POST /echo HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{server.port}\r\n" in head and "content-length: 2\r\n" in head
        assert client.stats()[f"http://127.0.0.1:{server.port}"] == {"open": 1, "idle": 1, "waiting": 0}


async def test_get_without_body(client):
    async with RawServer(echo) as server:
        response = await client.get(server.url("/x?y=1"))
        assert response.status_code == 200
        assert server.heads[0].startswith(b"GET /x?y=1 HTTP/1.1\r\n")
        assert b"content-length" not in server.heads[0]


async def test_chunked_streaming_and_reuse(client):
    async with RawServer(chunked) as server:
        request = client.prepare("POST", server.url())
        response = await client.send(request, b"{}", stream=True)
        assert response.status_code == 200 and response.headers["transfer-encoding"] == "chunked"
        pieces = [piece async for piece in response.aiter_bytes()]
        assert b"".join(pieces) == b"".join(f"data: {i}\n\n".encode() for i in range(5))
        assert len(pieces) >= 2  # delivered as it came, not all at the end
        assert response.is_closed
        # the connection went back to the pool
        response = await client.send(request, b"{}")
        assert response.content.endswith(b"data: 4\n\n")
        assert server.connections == 1


async def test_body_until_close(client):
    async def until_close(server, conn_no, n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"part two")
        await writer.drain()
        return False  # close the connection: that ends the body

    async with RawServer(until_close) as server:
        response = await client.post(server.url())
        assert response.content == b"part one, part two"
        response = await client.post(server.url())  # a new connection, the old one is gone
        assert response.content == b"part one, part two"
        assert server.connections == 2


async def test_server_closing_idle_connection_is_detected(client):
    async def then_close(server, conn_no, n, body, writer):
        writer.write(reply(b"{}"))
        await writer.drain()
        await asyncio.sleep(0.05)
        return False

    async with RawServer(then_close) as server:
        request = client.prepare("POST", server.url())
        assert (await client.send(request, b"1")).status_code == 200
        await asyncio.sleep(0.2)  # the server has closed the idle connection by now
        assert (await client.send(request, b"2")).status_code == 200
        assert server.connections == 2


async def test_post_read_and_dropped_without_answer_is_not_sent_again(client):
    """The server read the request and hung up without a byte of answer: it may have processed
    it (a completion billed), so a POST is not sent again (and the next one works)."""
    async def drop_second(server, conn_no, n, body, writer):
        if n == 2:  # read the whole request, then hang up without a byte
            return False
        writer.write(reply(body))
        await writer.drain()

    async with RawServer(drop_second) as server:
        request = client.prepare("POST", server.url())
        assert (await client.send(request, b"a")).content == b"a"
        with pytest.raises(http1.RemoteProtocolError) as info:
            await client.send(request, b"b")
        assert "not sent again" in str(info.value)
        assert server.requests == [b"a", b"b"]  # exactly one request "b" reached the server
        assert (await client.send(request, b"c")).content == b"c"  # on a new connection
        assert server.requests == [b"a", b"b", b"c"] and server.connections == 2


async def test_idempotent_request_dropped_without_answer_is_sent_again_once(client):
    async def drop_second(server, conn_no, n, body, writer):
        if n == 2:
            return False
        writer.write(reply(b"ok"))
        await writer.drain()

    async with RawServer(drop_second) as server:
        request = client.prepare("GET", server.url())
        assert (await client.send(request)).content == b"ok"
        assert (await client.send(request)).content == b"ok"  # GET may be repeated: retried transparently
        assert len(server.requests) == 3 and server.connections == 2


class ThreadedServer:
    """A blocking HTTP server in a thread (so the test's event loop can be kept from noticing what
    it does): answers each request with `ok`; `close_idle()` closes the open connections."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                body, buffer = buffer[:length], buffer[length:]
                with self.lock:
                    self.requests.append(body)
                conn.sendall(reply(b"ok"))
        except OSError:
            return

    def close_idle(self) -> None:
        with self.lock:
            for conn in self.conns:
                conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self.conns.clear()

    def close(self) -> None:
        self.sock.close()
        self.close_idle()


async def test_idle_connection_the_server_closed_is_not_used(client):
    """The server closes an idle keep-alive connection and the event loop has not yet seen it:
    the pool finds it dead before writing, and the POST goes, once, on a new connection."""
    server = ThreadedServer()
    try:
        request = client.prepare("POST", f"http://127.0.0.1:{server.port}/x")
        assert (await client.send(request, b"1")).content == b"ok"
        idle = client._pools[("http", "127.0.0.1", server.port)].idle[0]
        server.close_idle()  # no await in between: the loop cannot deliver the news
        # (blocking on purpose) until the server's FIN is in our socket
        assert select.select([idle.transport.get_extra_info("socket").fileno()], [], [], 30)[0]
        assert not idle.closed  # the event loop has not seen it
        assert (await client.send(request, b"2")).content == b"ok"
        assert server.requests == [b"1", b"2"]
    finally:
        server.close()


async def test_request_cut_off_while_being_sent_is_sent_again():
    """A reused connection dies while part of a POST is still in our send buffer: the server
    never had the whole request, so it is sent again on a new connection."""
    big = b"x" * (16 * 1024 * 1024)  # more than the socket buffers hold while the server reads nothing

    async def serve(reader, writer):
        seen.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                if length == len(big) and len(seen) == 1:  # the big one on the first connection:
                    writer.transport.abort()  # hang up (RST) without reading its body
                    return
                body = await reader.readexactly(length)
                bodies.append(len(body))
                writer.write(reply(b"ok"))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    seen: list[int] = []
    bodies: list[int] = []
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    client = http1.Client()
    try:
        request = client.prepare("POST", f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x")
        assert (await client.send(request, b"small")).content == b"ok"
        assert (await client.send(request, big)).content == b"ok"
        assert bodies == [5, len(big)] and len(seen) == 2  # received whole exactly once, on a new connection
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_fresh_connection_closed_without_answer_is_not_retried(client):
    async def hang_up(server, conn_no, n, body, writer):
        return False

    async with RawServer(hang_up) as server:
        with pytest.raises(http1.RemoteProtocolError):
            await client.post(server.url(), body=b"x")
        assert server.connections == 1


async def test_response_broken_off_is_not_retried(client):
    async def half(server, conn_no, n, body, writer):
        if n == 1:
            writer.write(reply(b"ok"))
            await writer.drain()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly this")
        await writer.drain()
        return False

    async with RawServer(half) as server:
        request = client.prepare("POST", server.url())
        await client.send(request, b"1")
        with pytest.raises(http1.RemoteProtocolError):
            await client.send(request, b"2")
        assert server.connections == 1  # some of the answer had come: no retry


async def test_connection_close_is_honoured(client):
    async def close_header(server, conn_no, n, body, writer):
        writer.write(reply(b"{}", extra="connection: close\r\n"))
        await writer.drain()
        await asyncio.sleep(0.2)  # keep the socket open: the client must close it on its own

    async with RawServer(close_header) as server:
        request = client.prepare("POST", server.url())
        for _ in range(3):
            assert (await client.send(request, b"{}")).status_code == 200
        assert server.connections == 3
        assert client.stats()[f"http://127.0.0.1:{server.port}"]["open"] == 0


async def test_request_connection_close_is_honoured(client):
    async with RawServer(echo) as server:
        request = client.prepare("POST", server.url(), {"connection": "close"})
        for _ in range(2):
            assert (await client.send(request, b"x")).status_code == 200
        assert server.connections == 2


async def test_http10_answer_is_not_kept(client):
    async def old(server, conn_no, n, body, writer):
        writer.write(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    async with RawServer(old) as server:
        for _ in range(2):
            assert (await client.post(server.url())).content == b"ok"
        assert server.connections == 2


async def test_read_timeout(client):
    async def silent(server, conn_no, n, body, writer):
        await asyncio.sleep(5)

    async with RawServer(silent) as server:
        request = client.prepare("POST", server.url())
        with pytest.raises(http1.ReadTimeout):
            await client.send(request, b"{}", timeouts=http1.Timeouts(read=0.2))
        with pytest.raises(http1.TimeoutException):
            await client.send(request, b"{}", timeouts=http1.Timeouts(total=0.2))
        assert client.stats()[f"http://127.0.0.1:{server.port}"]["open"] == 0


async def test_read_timeout_between_chunks(client):
    async def stalls(server, conn_no, n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(5)

    async with RawServer(stalls) as server:
        response = await client.send(client.prepare("POST", server.url()), b"", stream=True,
                                     timeouts=http1.Timeouts(read=0.2))
        assert await response.read_chunk() == b"hello"
        with pytest.raises(http1.ReadTimeout):
            await response.read_chunk()
        assert response.is_closed


async def test_connect_refused(client):
    port = free_port()
    with pytest.raises(http1.ConnectError):
        await client.post(f"http://127.0.0.1:{port}/x", body=b"{}")
    assert isinstance(http1.ConnectError("x"), http1.TransportError)


async def test_malformed_response(client):
    async def garbage(server, conn_no, n, body, writer):
        writer.write(b"this is not http\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with RawServer(garbage) as server:
        with pytest.raises(http1.RemoteProtocolError):
            await client.post(server.url())


async def test_pool_cap_queues_waiters_in_order():
    async def slow(server, conn_no, n, body, writer):
        await asyncio.sleep(0.1)
        writer.write(reply(body))
        await writer.drain()

    client = http1.Client(max_connections_per_host=2)
    try:
        async with RawServer(slow) as server:
            request = client.prepare("POST", server.url())
            tasks = []
            for i in range(6):
                tasks.append(asyncio.ensure_future(client.send(request, str(i).encode())))
                await asyncio.sleep(0.005)  # start them in a known order
            assert client.stats()[f"http://127.0.0.1:{server.port}"]["waiting"] == 4
            answers = await asyncio.gather(*tasks)
            assert [a.content for a in answers] == [str(i).encode() for i in range(6)]
            assert server.connections == 2 and server.max_open == 2
            assert server.requests == [str(i).encode() for i in range(6)]  # first come, first served
            with pytest.raises(http1.PoolTimeout):
                await asyncio.gather(*(client.send(request, b"x", timeouts=http1.Timeouts(pool=0.05))
                                       for _ in range(3)))
    finally:
        await client.aclose()


async def test_cancelled_waiter_leaves_the_queue():
    async def slow(server, conn_no, n, body, writer):
        await asyncio.sleep(0.1)
        writer.write(reply(body))
        await writer.drain()

    client = http1.Client(max_connections_per_host=1)
    try:
        async with RawServer(slow) as server:
            request = client.prepare("POST", server.url())
            first = asyncio.ensure_future(client.send(request, b"1"))
            await asyncio.sleep(0.01)
            second = asyncio.ensure_future(client.send(request, b"2"))
            await asyncio.sleep(0.01)
            second.cancel()
            assert (await first).content == b"1"
            assert (await client.send(request, b"3")).content == b"3"
            assert server.requests == [b"1", b"3"] and server.connections == 1
    finally:
        await client.aclose()


async def test_cancelled_stream_does_not_return_its_connection(client):
    async with RawServer(chunked) as server:
        request = client.prepare("POST", server.url())
        got_one = asyncio.Event()

        async def consume():
            response = await client.send(request, b"", stream=True)
            try:
                async for _ in response.aiter_bytes():
                    got_one.set()
            finally:
                await response.aclose()

        task = asyncio.ensure_future(consume())
        await got_one.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert client.stats()[f"http://127.0.0.1:{server.port}"] == {"open": 0, "idle": 0, "waiting": 0}
        response = await client.send(request, b"")
        assert response.content.endswith(b"data: 4\n\n")
        assert server.connections == 2


async def test_closing_a_response_early_closes_its_connection(client):
    async with RawServer(chunked) as server:
        request = client.prepare("POST", server.url())
        response = await client.send(request, b"", stream=True)
        assert await response.read_chunk() is not None
        await response.aclose()
        with pytest.raises(http1.StreamError):
            await response.read_chunk()
        assert client.stats()[f"http://127.0.0.1:{server.port}"]["open"] == 0


async def test_cancelled_before_headers_closes_the_connection(client):
    async def slow(server, conn_no, n, body, writer):
        await asyncio.sleep(0.2)
        writer.write(reply(b"late"))
        await writer.drain()

    async with RawServer(slow) as server:
        request = client.prepare("POST", server.url())
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await client.send(request, b"")
        assert client.stats()[f"http://127.0.0.1:{server.port}"]["open"] == 0
        assert (await client.send(request, b"")).content == b"late"  # never the old answer


async def test_idle_connections_expire():
    client = http1.Client(keepalive_expiry=0.1)
    try:
        async with RawServer(echo) as server:
            request = client.prepare("POST", server.url())
            await client.send(request, b"1")
            assert client.stats()[f"http://127.0.0.1:{server.port}"]["idle"] == 1
            await asyncio.sleep(0.3)
            assert client.stats()[f"http://127.0.0.1:{server.port}"] == {"open": 0, "idle": 0, "waiting": 0}
            await client.send(request, b"2")
            assert server.connections == 2
    finally:
        await client.aclose()


async def test_lifo_reuse(client):
    async def slow(server, conn_no, n, body, writer):
        await asyncio.sleep(0.02)
        writer.write(reply(str(conn_no).encode()))
        await writer.drain()

    async with RawServer(slow) as server:
        request = client.prepare("POST", server.url())
        await asyncio.gather(*(client.send(request, b"") for _ in range(3)))
        assert server.connections == 3
        # sequential calls keep using the most recently released connection; the others stay idle
        used = {(await client.send(request, b"")).content for _ in range(4)}
        assert len(used) == 1 and server.connections == 3


async def test_closed_client_refuses(client):
    async with RawServer(echo) as server:
        request = client.prepare("POST", server.url())
        await client.send(request, b"")
        await client.aclose()
        with pytest.raises(http1.ClientClosed):
            await client.send(request, b"")


async def test_https(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    client = http1.Client(ssl_context=client_context)
    try:
        async with RawServer(echo, ssl_context=server_context) as server:
            request = client.prepare("POST", server.url())
            for i in range(3):
                assert orjson.loads((await client.send(request, b"s")).content) == {"echo": "s"}
            assert server.connections == 1
        untrusting = http1.Client()  # the default context does not trust a self-signed certificate
        try:
            async with RawServer(echo, ssl_context=server_context) as server:
                with pytest.raises(http1.ConnectError):
                    await untrusting.post(server.url())
        finally:
            await untrusting.aclose()
    finally:
        await client.aclose()


# ------------------------------------------------------------------------------------------------
# against the simulated upstream, and through OpenAICompatibleTransport


async def test_sim_stream_and_reuse(sim_server, client):
    request = client.prepare("POST", sim_server.url + "/v1/chat/completions", {"content-type": "application/json"})
    body = orjson.dumps({"model": "alpha", "messages": [{"role": "user", "content": "hi"}], "stream": True})
    for _ in range(3):
        response = await client.send(request, body, stream=True)
        data = b"".join([piece async for piece in response.aiter_bytes()])
        assert data.rstrip().endswith(b"data: [DONE]")
    assert client.stats()[sim_server.url]["open"] == 1


def _target(url: str, **spec) -> ModelTarget:
    return ModelTarget.resolve("m", ModelSpec(provider="openai/m", api_base=url, **spec))


async def test_transport_maps_errors():
    async def answers(server, conn_no, n, body, writer):
        path = server.heads[-1].split(b" ")[1]
        if path.startswith(b"/limited"):
            writer.write(reply(b'{"error": {"message": "slow down"}}', "429 Too Many Requests",
                               "retry-after: 2\r\n"))
        elif path.startswith(b"/stream"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            piece = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
            return False  # broken off mid-stream
        else:
            writer.write(reply(b"not json"))
        await writer.drain()

    transport = OpenAICompatibleTransport()
    try:
        async with RawServer(answers) as server:
            base = f"http://127.0.0.1:{server.port}"
            with pytest.raises(UpstreamError) as info:
                await transport.complete(_target(base + "/limited"), {"messages": []})
            assert (info.value.kind, info.value.status, info.value.retry_after_s) == ("rate_limited", 429, 2.0)
            assert info.value.message == "slow down"
            with pytest.raises(UpstreamError) as info:
                await transport.complete(_target(base + "/plain"), {"messages": []})
            assert info.value.kind == "protocol"
            chunks = transport.stream(_target(base + "/stream"), {"messages": []})
            assert (await anext(chunks))["choices"][0]["delta"]["content"] == "x"
            with pytest.raises(UpstreamError) as info:
                await anext(chunks)
            assert info.value.kind == "stream_broken"
        with pytest.raises(UpstreamError) as info:
            await transport.complete(_target(f"http://127.0.0.1:{free_port()}"), {"messages": []})
        assert info.value.kind == "connect"
    finally:
        await transport.aclose()


async def test_transport_stream_stall_is_a_timeout():
    async def stalls(server, conn_no, n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n: keep-alive\n\n'
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
        for _ in range(10):  # comments do not count as progress
            await asyncio.sleep(0.05)
            writer.write(b"d\r\n: keep-alive\n\r\n")
        await asyncio.sleep(5)

    transport = OpenAICompatibleTransport()
    try:
        async with RawServer(stalls) as server:
            chunks = transport.stream(_target(f"http://127.0.0.1:{server.port}", stream_idle_timeout_s=0.2),
                                      {"messages": []})
            await anext(chunks)
            with pytest.raises(UpstreamError) as info:
                await anext(chunks)
            assert info.value.kind == "timeout" and "stalled for 0.2s" in info.value.message
    finally:
        await transport.aclose()


async def test_transport_stream_follows_the_sse_standard():
    """Multi-line data, CR and CRLF line ends, a BOM, comments, pieces cut anywhere (inside CRLFs
    and UTF-8 characters), and a last `data: [DONE]` the server closed without its blank line."""
    events = ('\ufeff: hello\r\n\r\n'
              'data: {"choices": [{"index": 0, "delta": {"content": "Grü"}}]}\r\n\r\n'
              'event: message\rdata: {"choices": [{"index": 0,\rdata: "delta": {"content": "ße"}}]}\r\r'
              ': keep-alive\n\n').encode()

    async def answers(server, conn_no, n, body, writer):
        path = server.heads[-1].split(b" ")[1]
        stream = events + (b"data: [DONE]" if path.startswith(b"/done") else b'data: {"choices": []}')
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i in range(0, len(stream), 7):
            piece = stream[i:i + 7]
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    transport = OpenAICompatibleTransport()
    try:
        async with RawServer(answers) as server:
            base = f"http://127.0.0.1:{server.port}"
            chunks = [c async for c in transport.stream(_target(base + "/done"), {"messages": []})]
            assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == "Grüße"
            assert transport.client.stats()[base]["idle"] == 1  # complete: the connection is reused
            with pytest.raises(UpstreamError) as info:  # the body ends without [DONE]
                async for _ in transport.stream(_target(base + "/cut"), {"messages": []}):
                    pass
            assert info.value.kind == "stream_broken" and "[DONE]" in info.value.message
    finally:
        await transport.aclose()


# ------------------------------------------------------------------------------------------------
# bounded answers


async def test_body_larger_than_the_limit_is_refused_and_its_connection_closed():
    async def large(server, conn_no, n, body, writer):
        if body == b"chunked":  # no length announced: counted as it comes
            writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(5):
                writer.write(b"190\r\n" + b"y" * 400 + b"\r\n")
            writer.write(b"0\r\n\r\n")
        else:
            writer.write(reply(b"x" * int(body)))
        await writer.drain()

    client = http1.Client(max_body_size=1000)
    try:
        async with RawServer(large) as server:
            request = client.prepare("POST", server.url())
            assert len((await client.send(request, b"1000")).content) == 1000  # at the limit: fine
            for body in (b"1001", b"chunked"):
                with pytest.raises(http1.ResponseTooLarge) as info:
                    await client.send(request, body)
                assert "exceeds 1000 bytes" in str(info.value)
                assert client.stats()[f"http://127.0.0.1:{server.port}"]["open"] == 0
            response = await client.send(request, b"5000", stream=True)  # a stream is not bound by it
            assert len(b"".join([piece async for piece in response.aiter_bytes()])) == 5000
    finally:
        await client.aclose()
    assert http1.Client().max_body_size == http1.MAX_RESPONSE_BODY == 64 * 1024 * 1024


@pytest.mark.parametrize("head", ["huge header", "endless header", "many headers"])
async def test_response_head_beyond_the_limits_is_refused(client, head):
    async def answers(server, conn_no, n, body, writer):
        if head == "huge header":
            writer.write(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (200 * 1024) + b"\r\ncontent-length: 2\r\n\r\nok")
        elif head == "endless header":  # never ends: refused once too much of it has come
            writer.write(b"HTTP/1.1 200 OK\r\nx-big: ")
            for _ in range(100):
                writer.write(b"a" * 4096)
                await writer.drain()
        else:
            fields = "".join(f"x-h{i}: {i}\r\n" for i in range(1000))
            writer.write(f"HTTP/1.1 200 OK\r\n{fields}content-length: 2\r\n\r\nok".encode())
        await writer.drain()
        await asyncio.sleep(5)

    async with RawServer(answers) as server:
        with pytest.raises(http1.ResponseTooLarge) as info:
            async with asyncio.timeout(30):  # (without a bound, an endless header is read forever)
                await client.post(server.url())
        limit = (f"{http1.MAX_RESPONSE_HEADERS} header fields" if head == "many headers"
                 else f"exceed {http1.MAX_RESPONSE_HEAD} bytes")
        assert limit in str(info.value)
        assert client.stats()[f"http://127.0.0.1:{server.port}"]["open"] == 0


async def test_transport_maps_oversized_answers_to_protocol_errors():
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"z" * 3000 + b'"}}]}\n\n'

    async def answers(server, conn_no, n, body, writer):
        if server.heads[-1].split(b" ")[1].startswith(b"/stream"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(event), 100):  # one event, in small pieces
                piece = event[i:i + 100]
                writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                await writer.drain()
            await asyncio.sleep(1)
        else:
            writer.write(reply(b'{"choices": []}' + b" " * 3000))
            await writer.drain()

    transport = OpenAICompatibleTransport(max_body_size=2000, max_event_bytes=2000)
    try:
        async with RawServer(answers) as server:
            base = f"http://127.0.0.1:{server.port}"
            with pytest.raises(UpstreamError) as info:
                await transport.complete(_target(base + "/whole"), {"messages": []})
            assert info.value.kind == "protocol" and "exceeds 2000 bytes" in info.value.message
            with pytest.raises(UpstreamError) as info:
                await anext(transport.stream(_target(base + "/stream"), {"messages": []}))
            assert info.value.kind == "protocol" and "larger than 2000 bytes" in info.value.message
    finally:
        await transport.aclose()


# ------------------------------------------------------------------------------------------------
# the first-token budget


@pytest.mark.parametrize("transport_kind", ["openai", "litellm"])
async def test_transport_first_token_limit_is_one_budget_from_the_call(transport_kind):
    """Headers after 0.35 s, the first event 0.35 s later: each wait is under the 0.5 s limit, the
    two together are not."""
    async def slow_start(server, conn_no, n, body, writer):
        await asyncio.sleep(0.35)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.35)
        piece = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\ndata: [DONE]\n\n'
        writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(piece), piece))
        await writer.drain()

    from sigroute.gateway.upstream import LiteLLMTransport

    transport = OpenAICompatibleTransport() if transport_kind == "openai" else LiteLLMTransport()
    try:
        async with RawServer(slow_start) as server:
            target = ModelTarget.resolve("m", ModelSpec(provider="hosted_vllm/m", transport=transport_kind,
                                                        api_base=f"http://127.0.0.1:{server.port}/v1",
                                                        first_token_timeout_s=0.5))
            chunks = transport.stream(target, {"messages": [{"role": "user", "content": "hi"}]})
            with pytest.raises(UpstreamError) as info:
                await anext(chunks)
            assert info.value.kind == "timeout" and "no first token within 0.5s" in info.value.message
    finally:
        await transport.aclose()


# ------------------------------------------------------------------------------------------------
# egress proxies


class ForwardProxy:
    """A tiny forward proxy on loopback. It logs each connection's request line and the
    Proxy-Authorization it got, resolves names only it knows (`hosts`: name → loopback port), passes
    plain requests on (without Proxy-Authorization) and opens CONNECT tunnels; with `require`, a
    request without that Proxy-Authorization gets 407."""

    def __init__(self, hosts: dict[str, int], require: str | None = None):
        self.hosts = hosts
        self.require = require
        self.lines: list[str] = []
        self.auth: list[str | None] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def __aenter__(self) -> "ForwardProxy":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            line, *fields = head.split("\r\n")
            self.lines.append(line)
            kept = [f for f in fields if f and not f.lower().startswith("proxy-authorization:")]
            auth = next((f.split(":", 1)[1].strip() for f in fields if f.lower().startswith("proxy-authorization:")),
                        None)
            self.auth.append(auth)
            if self.require is not None and auth != self.require:
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                return
            method, target, version = line.split(" ")
            if method == "CONNECT":
                host, target = target.rpartition(":")[0], None
            else:
                parts = urlsplit(target)
                host, target = parts.hostname, parts.path + (f"?{parts.query}" if parts.query else "")
            if host not in self.hosts:
                writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
                await writer.drain()
                return
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.hosts[host])
            if target is None:
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.write(("\r\n".join([f"{method} {target} {version}", *kept]) + "\r\n\r\n").encode("latin-1"))
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(up_reader, writer))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass  # (cancelled: the test is over)
        finally:
            writer.close()
            if upstream is not None:
                upstream.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def basic(credentials: str) -> str:
    return "Basic " + base64.b64encode(credentials.encode()).decode()


async def test_plain_http_goes_through_the_proxy_with_its_credentials():
    async with RawServer(echo) as server, ForwardProxy({"upstream.test": server.port}) as proxy:
        # a name only the proxy can resolve: the answer proves the request went through it
        proxies = http1.ProxyConfig.from_environ({"HTTP_PROXY": proxy.url("user:p%40ss@")})
        client = http1.Client(proxies=proxies)
        try:
            request = client.prepare("POST", f"http://upstream.test:{server.port}/echo")
            for body in (b"one", b"two"):
                assert orjson.loads((await client.send(request, body)).content) == {"echo": body.decode()}
        finally:
            await client.aclose()
        assert proxy.lines == [f"POST http://upstream.test:{server.port}/echo HTTP/1.1"]  # absolute form, kept alive
        assert proxy.auth == [basic("user:p@ss")]
        assert f"host: upstream.test:{server.port}\r\n".encode() in server.heads[0]
        assert b"proxy-authorization" not in server.heads[0].lower()


async def test_https_goes_through_a_connect_tunnel(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=upstream.test", "-addext", "subjectAltName=DNS:upstream.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with RawServer(echo, ssl_context=server_context) as server, \
            ForwardProxy({"upstream.test": server.port}) as proxy:
        proxies = http1.ProxyConfig.from_environ({"https_proxy": proxy.url("user:secret@"),
                                                  "HTTP_PROXY": "http://127.0.0.1:9"})
        client = http1.Client(proxies=proxies, ssl_context=ssl.create_default_context(cafile=str(cert)))
        try:
            request = client.prepare("POST", f"https://upstream.test:{server.port}/echo")
            for body in (b"one", b"two"):
                assert orjson.loads((await client.send(request, body)).content) == {"echo": body.decode()}
        finally:
            await client.aclose()
        assert proxy.lines == [f"CONNECT upstream.test:{server.port} HTTP/1.1"]
        assert proxy.auth == [basic("user:secret")]
        assert server.heads[0].startswith(b"POST /echo HTTP/1.1\r\n")  # origin form, inside the tunnel
        assert b"proxy-authorization" not in server.heads[0].lower()


async def test_proxy_credentials_appear_in_no_error(tmp_path):
    secret = "s3cr3t-pw"
    async with RawServer(echo) as server, ForwardProxy({"upstream.test": server.port}, require="nope") as proxy:
        env = {"HTTPS_PROXY": proxy.url(f"user:{secret}@"), "HTTP_PROXY": proxy.url(f"user:{secret}@")}
        proxies = http1.ProxyConfig.from_environ(env)
        client = http1.Client(proxies=proxies)
        try:
            with pytest.raises(http1.ProxyError) as refused:  # CONNECT answered 407
                await client.post(f"https://upstream.test:{server.port}/echo")
            assert "407" in str(refused.value)
            answer = await client.post(f"http://upstream.test:{server.port}/echo")  # plain: the proxy's 407
            assert answer.status_code == 407
        finally:
            await client.aclose()
        dead = http1.Client(proxies=http1.ProxyConfig.from_environ({"HTTP_PROXY": f"http://user:{secret}@127.0.0.1:{free_port()}"}))
        try:
            with pytest.raises(http1.ConnectError) as unreachable:
                await dead.post("http://upstream.test/x")
            assert "through the proxy 127.0.0.1:" in str(unreachable.value)
        finally:
            await dead.aclose()
        with pytest.raises(ValueError) as unsupported:
            http1.ProxyConfig.from_environ({"HTTPS_PROXY": f"socks5://user:{secret}@127.0.0.1:1080"})
        assert "HTTPS_PROXY" in str(unsupported.value)
        encoded = base64.b64encode(f"user:{secret}".encode()).decode()
        for text in (str(refused.value), str(unreachable.value), str(unsupported.value), repr(proxies),
                     repr(client.prepare("POST", f"http://upstream.test:{server.port}/echo"))):
            assert secret not in text and encoded not in text


def test_no_proxy_rules():
    config = http1.ProxyConfig.from_environ({
        "HTTP_PROXY": "http://proxy:3128", "HTTPS_PROXY": "proxy:3129",
        "NO_PROXY": "internal.example, .corp.test,10.0.0.0/8, 192.168.1.5, api.other:8443, [fd00::1]"})
    direct = [("http", "internal.example", 80), ("https", "a.b.internal.example", 443), ("http", "corp.test", 80),
              ("http", "x.corp.test", 80), ("http", "10.1.2.3", 80), ("https", "192.168.1.5", 443),
              ("https", "api.other", 8443), ("http", "fd00::1", 80),
              # loopback is always direct, listed or not
              ("http", "localhost", 8000), ("http", "127.0.0.1", 8000), ("https", "::1", 443),
              ("http", "model.localhost", 80)]
    proxied = [("http", "notinternal.example", 80), ("https", "example.com", 443), ("http", "11.0.0.1", 80),
               ("https", "api.other", 443), ("http", "corp.test.evil", 80)]
    for scheme, host, port in direct:
        assert config.proxy_for(scheme, host, port) is None, host
    for scheme, host, port in proxied:
        proxy = config.proxy_for(scheme, host, port)
        assert proxy is not None and (proxy.host, proxy.port) == ("proxy", 3129 if scheme == "https" else 3128), host
    assert http1.ProxyConfig.from_environ({"HTTP_PROXY": "http://p:1", "no_proxy": "*"}).proxy_for("http", "a.b", 80) \
        is None
    # lower case first; HTTP_PROXY is ignored under CGI (httpoxy)
    assert http1.ProxyConfig.from_environ({"http_proxy": "http://low:1", "HTTP_PROXY": "http://up:2"}).http.host == "low"
    assert http1.ProxyConfig.from_environ({"HTTP_PROXY": "http://up:2", "REQUEST_METHOD": "GET"}).http is None
    assert http1.ProxyConfig.from_environ({}).proxy_for("https", "api.openai.com", 443) is None


async def test_upstream_calls_use_the_proxy_read_once_from_the_environment():
    completion = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "via proxy"}}]}'

    async def answer(server, conn_no, n, body, writer):
        writer.write(reply(completion))
        await writer.drain()

    from sigroute.gateway.upstream import Upstreams
    from sigroute.policies.schema import Policy

    async with RawServer(answer) as server, ForwardProxy({"models.test": server.port}) as proxy:
        policy = Policy.model_validate({
            "version": 1, "models": {"m": {"provider": "openai/m", "api_base": f"http://models.test:{server.port}/v1"}},
            "decisions": [{"name": "default", "models": ["m"]}], "upstream": {"retries": 0}})
        environ = {"HTTP_PROXY": proxy.url()}
        upstreams = Upstreams(policy, environ=environ)
        environ.clear()  # read once, when the transport was made: a later change has no effect
        try:
            result = await upstreams.call(["m"], {"messages": [{"role": "user", "content": "hi"}]}, False)
            assert result.body["choices"][0]["message"]["content"] == "via proxy"
        finally:
            await upstreams.aclose()
        assert proxy.lines == [f"POST http://models.test:{server.port}/v1/chat/completions HTTP/1.1"]


# ------------------------------------------------------------------------------------------------


def test_httptools_is_declared_in_the_server_extra():
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    server = pyproject["project"]["optional-dependencies"]["server"]
    declared = [d for d in server if d.replace(" ", "").startswith("httptools>=")]
    assert declared, "gateway/upstream/http1.py imports httptools: the server extra must declare it"
    import httptools

    floor = tuple(int(x) for x in declared[0].split(">=")[1].split(".")[:2])
    assert tuple(int(x) for x in httptools.__version__.split(".")[:2]) >= floor


def test_the_network_guard_covers_uvloop_servers_too():
    """Gateways in tests run on uvloop, whose connections bypass `socket.connect`: the suite's
    network guard must stop them as well (a test must never reach the network)."""
    import uvloop

    from tests.conftest import NetworkBlocked

    async def reach_out():
        loop = asyncio.get_running_loop()
        with pytest.raises(NetworkBlocked):
            await loop.create_connection(asyncio.Protocol, "192.0.2.1", 80)   # TEST-NET-1, never routed

    uvloop.run(reach_out())
