"""gateway.upstream.direct, what the direct transports share: a streamed body's events under the
first-token and idle deadlines (against a scripted reader), an OpenAI-compatible stream's chunks,
and the native Anthropic transport's stream over `http1` against a small loopback server (its own
pace, its failures, its connection given back however the stream ends)."""

from __future__ import annotations

import asyncio

import pytest

from sigroute.gateway.sse import SSEDecoder
from sigroute.gateway.upstream import ModelTarget, UpstreamError
from sigroute.gateway.upstream.anthropic_messages import AnthropicMessagesTransport
from sigroute.gateway.upstream.direct import StreamEvents, chat_chunk, end_of_chat_stream
from sigroute.policies.schema import ModelSpec
from tests.test_http1 import RawServer, reply

HANG_S = 20.0  # generous: only to catch a hang, never a speed check


class Broken(Exception):
    pass


class Late(Exception):
    pass


def _target(api_base: str = "http://127.0.0.1:9", provider: str = "openai/m", **spec) -> ModelTarget:
    return ModelTarget.resolve("m", ModelSpec(provider=provider, api_base=api_base, **spec))


def _events(script, target: ModelTarget | None = None, *, first_by: float | None = None, **kwargs) -> StreamEvents:
    """Events read from `script`: each item a piece of the body, None (its end), an exception to
    raise, or a number of seconds to wait before the next item."""
    items = iter(script)

    async def read_chunk(timeout: float) -> bytes | None:
        async with asyncio.timeout(timeout):
            while True:
                item = next(items)
                if isinstance(item, (int, float)):
                    await asyncio.sleep(item)
                    continue
                if isinstance(item, BaseException):
                    raise item
                return item

    loop = asyncio.get_running_loop()
    target = target or _target(first_token_timeout_s=HANG_S, stream_idle_timeout_s=HANG_S)
    first_by = first_by if first_by is not None else loop.time() + target.spec.first_token_timeout_s
    return StreamEvents(read_chunk, kwargs.pop("decoder", None) or SSEDecoder(max_event_bytes=64, errors="strict"),
                        target, first_by, timeouts=(TimeoutError, Late), breaks=(Broken,), **kwargs)


async def _all(events: StreamEvents) -> list[str]:
    return [event.data async for event in events]


# ------------------------------------------------------------------------------------------------
# StreamEvents


async def test_events_come_one_by_one_however_the_body_is_cut():
    events = _events([b"data: a\n\ndata: b\n", b"\ndata: c\n\n", b": keep-alive\n", b"data: d\n\n", None])
    assert await _all(events) == ["a", "b", "c", "d"]
    assert events.unterminated is None


async def test_the_body_ends_in_an_unterminated_event():
    events = _events([b"data: a\n\ndata: [DONE]", None])
    assert await _all(events) == ["a"]
    assert events.unterminated is not None and events.unterminated.data == "[DONE]"
    end_of_chat_stream(events, "m")  # a last [DONE] without its blank line completes a chat stream

    events = _events([b'data: {"choices": []}\n\ndata: {"choi', None])
    assert len(await _all(events)) == 1
    with pytest.raises(UpstreamError) as info:
        end_of_chat_stream(events, "m")
    assert info.value.kind == "stream_broken" and info.value.message == "stream ended before [DONE]"

    events = _events([b"data: a\n\n", b"data: \xff", None])  # invalid UTF-8 left at the end: no event
    assert await _all(events) == ["a"] and events.unterminated is None


async def test_read_failures_are_upstream_errors():
    target = _target(first_token_timeout_s=7, stream_idle_timeout_s=3)
    with pytest.raises(UpstreamError) as info:
        await anext(_events([Late()], target))
    assert (info.value.kind, info.value.message) == ("timeout", "no first token within 7s")

    with pytest.raises(UpstreamError) as info:
        await anext(_events([Late()], target, first_late="no first token in time"))
    assert (info.value.kind, info.value.message) == ("timeout", "no first token in time")

    events = _events([b"data: a\n\n", Late()], target)
    await anext(events)
    with pytest.raises(UpstreamError) as info:
        await anext(events)
    assert (info.value.kind, info.value.message) == ("timeout", "stream stalled for 3s")

    with pytest.raises(UpstreamError) as info:
        await anext(_events([Broken("reset by peer")], target))
    assert (info.value.kind, info.value.message, info.value.model) == ("stream_broken", "Broken: reset by peer", "m")


async def test_what_cannot_be_decoded_is_a_protocol_error():
    with pytest.raises(UpstreamError) as info:
        await anext(_events([b"data: \xff\xfe\n\n"]))
    assert (info.value.kind, info.value.message) == ("protocol", "stream is not valid UTF-8")

    with pytest.raises(UpstreamError) as info:
        await anext(_events([b"data: " + b"x" * 100 + b"\n\n"]))  # the decoder's bound is 64 bytes
    assert info.value.kind == "protocol" and "larger than 64 bytes" in info.value.message

    # a lenient decoder replaces invalid UTF-8 (the aiohttp transport's)
    events = _events([b"data: \xff\n\n", None], decoder=SSEDecoder(max_event_bytes=64))
    assert await _all(events) == ["\ufffd"]


async def test_a_spent_first_token_budget_reads_nothing():
    events = _events([AssertionError("read after the deadline")], first_by=asyncio.get_running_loop().time() - 1)
    with pytest.raises(UpstreamError) as info:
        await anext(events)
    assert info.value.kind == "timeout"


async def test_iterated_comments_are_no_progress_but_each_read_has_its_own_deadline():
    """Iterated, the next event must come within stream_idle_timeout_s (0.5 s) of being asked
    for, whatever arrives that completes no event; `read`, the step below, times each piece."""
    target = _target(first_token_timeout_s=HANG_S, stream_idle_timeout_s=0.5)
    script = [b"data: a\n\n"] + [0.05, b": keep-alive\n"] * 25 + [b"data: b\n\n", None]
    events = _events(script, target)
    assert (await anext(events)).data == "a"
    with pytest.raises(UpstreamError) as info:
        await asyncio.wait_for(anext(events), HANG_S)
    assert (info.value.kind, info.value.message) == ("timeout", "stream stalled for 0.5s")

    events = _events(script, target)
    loop = asyncio.get_running_loop()
    seen = []
    while (read := await events.read(loop.time() + 0.5, False)) is not None:
        seen += [event.data for event in read]
    assert seen == ["a", "b"]


def test_chat_chunks():
    assert chat_chunk(" [DONE] ", "m") is None
    assert chat_chunk('{"choices": []}', "m") == {"choices": []}
    with pytest.raises(UpstreamError) as info:
        chat_chunk("{not json", "m")
    assert (info.value.kind, info.value.message) == ("protocol", "stream chunk is not JSON")
    with pytest.raises(UpstreamError) as info:
        chat_chunk('{"error": {"message": "overloaded"}}', "m")
    assert (info.value.kind, info.value.message) == ("stream_broken", "upstream sent an error event: overloaded")
    assert chat_chunk('{"error": null, "choices": []}', "m") == {"error": None, "choices": []}


# ------------------------------------------------------------------------------------------------
# the native Anthropic transport's stream

MESSAGE_EVENTS = [
    b'event: message_start\ndata: {"type": "message_start", '
    b'"message": {"id": "msg_1", "usage": {"input_tokens": 3}}}\n\n',
    b'event: content_block_start\ndata: {"type": "content_block_start", "index": 0, '
    b'"content_block": {"type": "text", "text": ""}}\n\n',
    b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
    b'"delta": {"type": "text_delta", "text": "hello"}}\n\n',
    b'event: message_delta\ndata: {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, '
    b'"usage": {"output_tokens": 1}}\n\n',
    b'event: message_stop\ndata: {"type": "message_stop"}\n\n',
]
PAYLOAD = {"messages": [{"role": "user", "content": "hi"}], "stream": True}


def _messages_stream(events: list[bytes], stall_after: int | None = None):
    async def handler(server, conn_no, n, body, writer):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        for i, piece in enumerate(events):
            if i == stall_after:
                await asyncio.sleep(HANG_S)
            writer.write(b"%x\r\n%b\r\n" % (len(piece), piece))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    return handler


@pytest.fixture
async def messages():
    transport = AnthropicMessagesTransport()
    yield transport
    await transport.aclose()


def _anthropic(server: RawServer, **spec) -> ModelTarget:
    return _target(server.url(""), provider="anthropic/claude", **spec)


async def test_a_messages_stream_completes_and_gives_its_connection_back(messages):
    async with RawServer(_messages_stream(MESSAGE_EVENTS)) as server:
        for _ in range(2):
            chunks = [chunk async for chunk in messages.stream(_anthropic(server), PAYLOAD)]
            assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "hello"
            assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
            assert messages.connections_in_use() == 0
        assert server.connections == 1  # the second stream reused the first one's connection


async def _consume(chunks) -> None:
    async for _ in chunks:
        pass


@pytest.mark.parametrize("events, stall_after, spec, failure", [
    (MESSAGE_EVENTS[:3], None, {}, ("stream_broken", "stream ended before message_stop")),
    (MESSAGE_EVENTS, 2, {"stream_idle_timeout_s": 0.2}, ("timeout", "stream stalled for 0.2s")),
    (MESSAGE_EVENTS, 0, {"first_token_timeout_s": 0.2}, ("timeout", "no first token in time")),
], ids=["no-message-stop", "stalled", "no-first-token"])
async def test_a_messages_stream_that_breaks_off_or_stalls(messages, events, stall_after, spec, failure):
    async with RawServer(_messages_stream(events, stall_after)) as server:
        with pytest.raises(UpstreamError) as info:
            await asyncio.wait_for(_consume(messages.stream(_anthropic(server, **spec), PAYLOAD)), HANG_S)
        assert (info.value.kind, info.value.message) == failure
        assert messages.connections_in_use() == 0


async def test_a_messages_stream_left_early_or_refused_closes_its_connection(messages):
    async with RawServer(_messages_stream(MESSAGE_EVENTS, stall_after=3)) as server:
        chunks = messages.stream(_anthropic(server), PAYLOAD)
        await anext(chunks)
        assert messages.connections_in_use() == 1
        await chunks.aclose()  # the consumer leaves mid-stream
        assert messages.connections_in_use() == 0

    async def overloaded(server, conn_no, n, body, writer):
        writer.write(reply(b'{"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}',
                           "529 Overloaded", "retry-after: 2\r\n"))
        await writer.drain()

    async with RawServer(overloaded) as server:
        with pytest.raises(UpstreamError) as info:
            await anext(messages.stream(_anthropic(server), PAYLOAD))
        assert (info.value.kind, info.value.status, info.value.retry_after_s) == ("server", 529, 2.0)
        assert "busy" in info.value.message
        assert messages.connections_in_use() == 0
