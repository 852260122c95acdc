"""gateway.upstream.aiohttp_transport, the HTTP client measured against the hand-written one (issue
15), against the real simulated upstream and small loopback servers: whole and streamed answers,
connection reuse, timeouts (one first-token budget), error mapping, no re-send of a POST, bounded
answers, egress proxies, and a gateway serving through it with the official OpenAI client."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from sigroute.gateway.upstream import ModelTarget, UpstreamError
from sigroute.gateway.upstream.aiohttp_transport import AiohttpTransport
from sigroute.policies.schema import ModelSpec
from tests.conftest import base_policy, free_port
from tests.test_http1 import ForwardProxy, RawServer, basic, echo, reply

HANG_S = 20.0  # generous: only to catch a hang, never a speed check
PAYLOAD = {"messages": [{"role": "user", "content": "[[sim:echo]] one two three"}]}


def _target(api_base: str, name: str = "m", **spec) -> ModelTarget:
    return ModelTarget.resolve(name, ModelSpec(provider=f"openai/{name}", api_base=api_base, **spec))


@pytest.fixture
async def transport():
    t = AiohttpTransport()
    yield t
    await t.aclose()


def _text(chunks: list[dict]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


async def sse_then_end(server, conn_no, n, body, writer):
    """A chunked SSE answer: two events and [DONE]; the chunked body's end comes a little later,
    so a reader that stops at [DONE] without reading on cannot give the connection back."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    for piece in (b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n',
                  b'data: {"choices": [{"index": 0, "delta": {"content": "b"}}]}\n\n', b"data: [DONE]\n\n"):
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


# ------------------------------------------------------------------------------------------------
# against the simulated upstream


async def test_whole_and_streamed_answers_from_the_sim(sim, transport):
    target = _target(sim.api_base, "alpha")
    for _ in range(2):
        data = await transport.complete(target, PAYLOAD)
        assert data["choices"][0]["message"]["content"] == "[[sim:echo]] one two three"
        assert data["usage"]["completion_tokens"] > 0
        chunks = [c async for c in transport.stream(target, {**PAYLOAD, "stream": True})]
        assert _text(chunks) == "[[sim:echo]] one two three"
    assert sim.calls("alpha") == 4
    assert sim.last_body("alpha")["model"] == "alpha" and sim.last_body("alpha")["stream"] is True
    assert transport.connections_in_use() == 0


async def test_upstream_errors_are_mapped_like_the_direct_transport(sim, transport):
    target = _target(sim.api_base, "alpha")
    sim.faults("alpha", rate_limit_rate=1.0)
    for call in (lambda: transport.complete(target, PAYLOAD),
                 lambda: anext(transport.stream(target, {**PAYLOAD, "stream": True}))):
        with pytest.raises(UpstreamError) as info:
            await call()
        assert (info.value.kind, info.value.status, info.value.retry_after_s) == ("rate_limited", 429, 1.0)
        assert info.value.model == "alpha" and info.value.message  # the upstream's own words, for the log
    sim.faults("alpha", error_rate=1.0)
    with pytest.raises(UpstreamError) as info:
        await transport.complete(target, PAYLOAD)
    assert (info.value.kind, info.value.status) == ("server", 500)
    sim.faults("alpha", break_stream_rate=1.0)
    with pytest.raises(UpstreamError) as info:
        async for _ in transport.stream(target, {**PAYLOAD, "stream": True}):
            pass
    assert info.value.kind == "stream_broken"
    with pytest.raises(UpstreamError) as info:  # nothing listens there
        await transport.complete(_target(f"http://127.0.0.1:{free_port()}/v1"), PAYLOAD)
    assert info.value.kind == "connect"


async def test_a_hung_upstream_is_a_timeout_within_the_models_limit(sim, transport):
    sim.faults("alpha", timeout_rate=1.0)  # the sim hangs (for an hour) before answering
    started = time.monotonic()
    with pytest.raises(UpstreamError) as info:
        await asyncio.wait_for(transport.complete(_target(sim.api_base, "alpha", timeout_s=0.3), PAYLOAD), HANG_S)
    assert info.value.kind == "timeout" and "no answer within 0.3s" in info.value.message
    with pytest.raises(UpstreamError) as info:
        await asyncio.wait_for(anext(transport.stream(_target(sim.api_base, "alpha", first_token_timeout_s=0.3),
                                                      {**PAYLOAD, "stream": True})), HANG_S)
    assert info.value.kind == "timeout" and "no first token within 0.3s" in info.value.message
    assert time.monotonic() - started < HANG_S


async def test_a_gateway_serves_chats_and_streams_through_it(sim, gateway_factory):
    """The official OpenAI client against a gateway whose direct transport is aiohttp's; a failing
    first model falls back to the next one (the error kinds drive the resilience loop)."""
    transport = AiohttpTransport()
    gw = gateway_factory(base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}]),
                         transports={"openai": transport})
    client = gw.client()
    messages = [{"role": "user", "content": "[[sim:echo]] repeat exactly this"}]
    whole = client.chat.completions.create(model="auto", messages=messages)
    assert whole.choices[0].message.content == "[[sim:echo]] repeat exactly this" and whole.model == "alpha"
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in
                       client.chat.completions.create(model="auto", messages=messages, stream=True)
                       if chunk.choices)
    assert streamed == "[[sim:echo]] repeat exactly this"
    assert sim.calls("alpha") == 2
    sim.faults("alpha", error_rate=1.0)
    fallback = client.chat.completions.create(model="auto", messages=messages)
    assert fallback.model == "beta" and sim.calls("alpha") == 3 and sim.calls("beta") == 1
    assert transport.session is not None and not transport.session.closed  # it carried the calls


# ------------------------------------------------------------------------------------------------
# against small loopback servers


async def test_connections_are_reused_after_whole_answers_and_complete_streams(transport):
    async with RawServer(echo) as answers, RawServer(sse_then_end) as streams:
        for _ in range(3):
            with pytest.raises(UpstreamError):  # the echo is JSON without choices: a protocol error …
                await transport.complete(_target(answers.url("/v1")), PAYLOAD)
            assert _text([c async for c in transport.stream(_target(streams.url("/v1")), PAYLOAD)]) == "ab"
        assert answers.connections == 1 and len(answers.requests) == 3  # … read whole: the connection is kept
        assert streams.connections == 1 and len(streams.requests) == 3


async def test_a_stream_closed_early_closes_its_connection(transport):
    async with RawServer(sse_then_end) as server:
        chunks = transport.stream(_target(server.url("/v1")), PAYLOAD)
        assert (await anext(chunks))["choices"][0]["delta"]["content"] == "a"
        await chunks.aclose()
        assert _text([c async for c in transport.stream(_target(server.url("/v1")), PAYLOAD)]) == "ab"
        assert server.connections == 2  # the unfinished answer's connection was not reused
        assert transport.connections_in_use() == 0


async def test_a_post_the_server_read_and_dropped_is_not_sent_again(transport):
    """The server read the whole request on a reused connection and hung up without answering:
    it may have been processed (a completion billed), so it is not sent again (aiohttp retries a
    dropped keep-alive connection only for idempotent methods)."""
    async def drop_second(server, conn_no, n, body, writer):
        if n == 2:
            return False
        writer.write(reply(b'{"choices": [], "n": %d}' % len(server.requests)))
        await writer.drain()

    async with RawServer(drop_second) as server:
        target = _target(server.url("/v1"))
        assert (await transport.complete(target, PAYLOAD))["n"] == 1
        with pytest.raises(UpstreamError) as info:
            await transport.complete(target, PAYLOAD)
        assert info.value.kind == "connect"  # retryable by the policy, not by the client
        assert len(server.requests) == 2  # exactly one copy of the second request reached the server
        assert (await transport.complete(target, PAYLOAD))["n"] == 3  # on a new connection
        assert server.connections == 2


async def test_first_token_limit_is_one_budget_from_the_call(transport):
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

    async with RawServer(slow_start) as server:
        chunks = transport.stream(_target(server.url("/v1"), first_token_timeout_s=0.5), PAYLOAD)
        with pytest.raises(UpstreamError) as info:
            await anext(chunks)
        assert info.value.kind == "timeout" and "no first token within 0.5s" in info.value.message


async def test_a_stalled_stream_is_a_timeout_and_comments_are_no_progress(transport):
    async def stalls(server, conn_no, n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        piece = b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n'
        writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        await writer.drain()
        for _ in range(10):
            await asyncio.sleep(0.05)
            writer.write(b"d\r\n: keep-alive\n\r\n")
        await asyncio.sleep(HANG_S)

    async with RawServer(stalls) as server:
        chunks = transport.stream(_target(server.url("/v1"), stream_idle_timeout_s=0.2), PAYLOAD)
        await anext(chunks)
        with pytest.raises(UpstreamError) as info:
            await asyncio.wait_for(anext(chunks), HANG_S)
        assert info.value.kind == "timeout" and "stalled for 0.2s" in info.value.message
        await chunks.aclose()


async def test_an_error_event_in_the_stream_breaks_it(transport):
    async def error_event(server, conn_no, n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b'data: {"choices": [{"index": 0, "delta": {"content": "x"}}]}\n\n',
                      b'data: {"error": {"message": "overloaded"}}\n\n'):
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(error_event) as server:
        chunks = transport.stream(_target(server.url("/v1")), PAYLOAD)
        assert (await anext(chunks))["choices"][0]["delta"]["content"] == "x"
        with pytest.raises(UpstreamError) as info:
            await anext(chunks)
        assert info.value.kind == "stream_broken" and "overloaded" in info.value.message


async def test_oversized_answers_are_protocol_errors():
    big = b'{"choices": [], "pad": "' + b"x" * 5000 + b'"}'

    async def answers(server, conn_no, n, body, writer):
        path = server.heads[-1].split(b" ")[1]
        if path.startswith(b"/declared"):
            writer.write(reply(big))
        elif path.startswith(b"/chunked"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            for i in range(0, len(big), 1000):
                writer.write(b"%x\r\n%b\r\n" % (len(big[i:i + 1000]), big[i:i + 1000]))
            writer.write(b"0\r\n\r\n")
        else:  # one streamed event larger than the limit
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            event = b"data: " + big + b"\n\n"
            writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(event), event))
        await writer.drain()

    transport = AiohttpTransport(max_body_size=4096, max_event_bytes=4096)
    try:
        async with RawServer(answers) as server:
            for path in ("/declared", "/chunked"):
                with pytest.raises(UpstreamError) as info:
                    await transport.complete(_target(server.url(path)), PAYLOAD)
                assert info.value.kind == "protocol" and "exceeds 4096 bytes" in info.value.message
            with pytest.raises(UpstreamError) as info:
                await anext(transport.stream(_target(server.url("/event")), PAYLOAD))
            assert info.value.kind == "protocol"
        # within the limits the same answers are fine
        roomy = AiohttpTransport()
        try:
            async with RawServer(answers) as server:
                assert (await roomy.complete(_target(server.url("/chunked")), PAYLOAD))["pad"] == "x" * 5000
        finally:
            await roomy.aclose()
    finally:
        await transport.aclose()


async def test_calls_go_through_the_proxy_of_the_environment_with_its_credentials():
    async with RawServer(echo) as server, ForwardProxy({"upstream.test": server.port}) as proxy:
        transport = AiohttpTransport(environ={"HTTP_PROXY": proxy.url("user:p%40ss@"), "NO_PROXY": "direct.test"})
        try:
            # a name only the proxy can resolve: an answer proves the request went through it
            with pytest.raises(UpstreamError) as info:  # (the echo has no choices)
                await transport.complete(_target(f"http://upstream.test:{server.port}/v1"), PAYLOAD)
            assert info.value.kind == "protocol" and info.value.status == 200
            assert proxy.lines == [f"POST http://upstream.test:{server.port}/v1/chat/completions HTTP/1.1"]
            assert proxy.auth == [basic("user:p@ss")]
            assert orjson.loads(server.requests[0])["model"] == "m"
            # loopback is always reached directly
            with pytest.raises(UpstreamError):
                await transport.complete(_target(server.url("/v1")), PAYLOAD)
            assert len(proxy.lines) == 1 and len(server.requests) == 2
        finally:
            await transport.aclose()
