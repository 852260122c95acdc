"""gateway.upstream.http1 against real loopback servers: keep-alive, bodies, stale connections, timeouts,
the pool cap, cancellation and TLS."""

from __future__ import annotations

import asyncio
import ssl
import subprocess

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


async def test_stale_connection_is_retried_once_on_a_fresh_one(client):
    async def drop_second(server, conn_no, n, body, writer):
        if n == 2:  # read the request, then hang up without a byte: what a server closing an idle
            return False  # connection at the same moment looks like
        writer.write(reply(body))
        await writer.drain()

    async with RawServer(drop_second) as server:
        request = client.prepare("POST", server.url())
        assert (await client.send(request, b"a")).content == b"a"
        assert (await client.send(request, b"b")).content == b"b"  # retried transparently
        assert server.connections == 2
        assert server.requests == [b"a", b"b", b"b"]


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
