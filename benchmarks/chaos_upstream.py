"""A fault-injecting OpenAI-compatible upstream for `benchmarks.chaos`: raw asyncio sockets on loopback.

The simulated upstream (`sigroute.gateway.sim`) is a Starlette app: it cannot reset a TCP
connection, accept one and never answer, or send an invalid SSE line in the middle of a stream.
`FaultServer` speaks just enough HTTP/1.1 (``POST /v1/chat/completions`` with a ``content-length``
body, keep-alive, ``GET /health``) to do all of that, and keeps its own **record** of what it did
for every call, so a grader can judge what the gateway told its client against what really
happened upstream — never against the gateway's own claims.

Each call is answered as the `Fault` set for the requested upstream model says (``faults[model]``,
healthy when none is set). Every request carries a nonce in its last user message
(``chaos-id:<nonce>``); records are kept per nonce.

Kinds of `Fault`:

==================  ============================================================================
``ok``              a healthy answer (whole, or streamed in several chunks, then ``[DONE]``)
``status``          an OpenAI-shaped error with `status` (and ``Retry-After: retry_after``, the
                    error's `code` / `error_type`)
``reset``           read the request, then close the connection with a TCP RST, no answer
``never_answer``    read the request, then say nothing until the client closes the connection
``slow``            wait `delay_s`, then answer normally (past the model's timeout)
``cut``             streamed: send `after_chunks` content chunks, then close the connection in the
                    middle of the chunked body; whole: send half the declared body and close
``stall``           streamed: send `after_chunks` content chunks, then nothing, connection open;
                    whole: send the head and half the body, then nothing
``malformed``       streamed: after `after_chunks` chunks (0 = as the very first event) a
                    ``data:`` line of invalid JSON, then the rest and ``[DONE]``; whole: a
                    200 whose body is not JSON
``error_event``     streamed: after `after_chunks` chunks an OpenAI-shaped error event, then the
                    body ends (no finish reason, no ``[DONE]``); whole: as ``status``
``close_without_answer``  read the request, then close the connection in order (FIN), no answer
``garbage``         read the request, answer bytes that are not HTTP, close
``pings``           streamed: after `after_chunks` chunks only SSE comments (``: ping``), every
                    0.2 s, until the client closes; whole: as ``never_answer``
``bad_utf8``        an answer (whole, or one streamed event after `after_chunks`) with invalid UTF-8
``not_object``      a 200 whose JSON (whole, or one streamed event) is an array, not an object
``bad_shape``       a 200 object of the wrong shape: a choice without a message (streamed: ``choices``
                    a string), ``usage`` a string
``no_choices``      whole: a 200 completion whose ``choices`` is empty
``json_for_stream`` streamed: a whole JSON answer instead of a stream (a server ignoring ``stream``)
``no_done``         streamed: the whole answer (finish reason included), the chunked body ended
                    cleanly, but no ``data: [DONE]``
``content_filter``  an answer cut short by the provider's filter: ``finish_reason: content_filter``
``flapping``        odd calls of the model answer 503, even calls answer normally
==================  ============================================================================

An answer's text names the model and the nonce, and its usage is specific to the model
(``prompt_tokens`` = 100 + CRC32(model) mod 900), so an answer attributed to the wrong model, or
with another model's usage, cannot go unnoticed.

`stop()` kills the server (listener closed, every open connection aborted) and `start()` brings it
back on the same port: the load phase's "one candidate killed".
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["Fault", "FaultServer", "FaultServerThread", "Record", "answer_text", "model_usage", "NONCE_PATTERN"]

NONCE_PATTERN = re.compile(r"chaos-id:(\S+)")
WORDS = "river stone garden paper market window bridge silver autumn engine letter forest valley".split()


@dataclass(frozen=True)
class Fault:
    kind: str = "ok"
    status: int = 500
    retry_after: str | None = None
    code: str | None = None
    error_type: str = "server_error"
    message: str = "injected failure"
    delay_s: float = 5.0
    after_chunks: int = 2
    chunk_gap_s: float = 0.0  # pause after each streamed chunk (so chunks arrive in separate reads)


@dataclass
class Record:
    """What the fault server did with one call (one attempt of the gateway)."""

    model: str
    nonce: str | None
    stream: bool
    fault: str
    started: float
    outcome: str = "received"  # answered | status NNN | reset | no_answer | cut | stalled | malformed | no_done
    content: str = ""  # answer text actually written to the connection
    finish_reason: str | None = None  # the finish reason written, if one was
    usage: dict[str, int] | None = None  # the usage written, if it was
    done: bool = False  # `data: [DONE]` written (streams)
    whole: bool = False  # the whole answer was written (every chunk, finish reason; [DONE] unless no_done)

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "stream": self.stream, "fault": self.fault, "outcome": self.outcome,
                "content_chars": len(self.content), "finish_reason": self.finish_reason, "usage": self.usage,
                "done": self.done, "whole": self.whole}


def model_usage(model: str, completion_tokens: int) -> dict[str, int]:
    prompt = 100 + zlib.crc32(model.encode()) % 900
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


def answer_text(model: str, nonce: str | None, words: int = 12) -> str:
    return f"{model} answers {nonce}: " + " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(words)) + "."


def _error_body(fault: Fault) -> bytes:
    return orjson.dumps({"error": {"message": fault.message, "type": fault.error_type, "param": None,
                                   "code": fault.code}})


class _Closed(Exception):
    """The client went away."""


class FaultServer:
    """One OpenAI-compatible endpoint on loopback whose models fail as told (see the module doc)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, chunks: int = 6, answer_words: int = 12):
        self.host = host
        self.port = port
        self.faults: dict[str, Fault] = {}
        self.records: list[Record] = []
        self.by_nonce: dict[str, list[Record]] = {}
        self.calls: dict[str, int] = {}
        self.chunks = chunks
        self.answer_words = answer_words
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    @property
    def api_base(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> "FaultServer":
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True,
                                                  backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Kill: stop listening and abort every open connection (as a process crash would)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._connections):
            writer.transport.abort()
        self._connections.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    def reset_records(self) -> None:
        self.records.clear()
        self.by_nonce.clear()

    # serving -------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path = (lines[0].split(" ") + ["", ""])[:2]
                headers = {}
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    headers[key.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                body = await reader.readexactly(length) if length else b""
                if method == "GET" and path == "/health":
                    await self._send_whole(writer, 200, b'{"status":"ok"}')
                    continue
                if method != "POST" or not path.endswith("/chat/completions"):
                    await self._send_whole(writer, 404, orjson.dumps({"error": {"message": "not found"}}))
                    continue
                keep_open = await self._chat(reader, writer, orjson.loads(body))
                if not keep_open:
                    return
        except (_Closed, ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            return
        finally:
            self._connections.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.transport.close()

    async def _send_whole(self, writer: asyncio.StreamWriter, status: int, body: bytes,
                          extra: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} X", "content-type: application/json", f"content-length: {len(body)}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self._drain(writer)

    @staticmethod
    async def _drain(writer: asyncio.StreamWriter) -> None:
        if writer.transport.is_closing():
            raise _Closed
        try:
            await writer.drain()
        except ConnectionError:
            raise _Closed from None

    async def _chat(self, reader, writer, body: dict[str, Any]) -> bool:
        """Answer one chat call as its model's fault says; False when the connection must close."""
        model = str(body.get("model"))
        messages = body.get("messages") or [{}]
        match = NONCE_PATTERN.search(str(messages[-1].get("content", "")))
        nonce = match.group(1) if match else None
        stream = bool(body.get("stream"))
        fault = self.faults.get(model, Fault())
        self.calls[model] = self.calls.get(model, 0) + 1
        kind = fault.kind
        if kind == "flapping":
            kind = "status" if self.calls[model] % 2 == 1 else "ok"
            fault = Fault("status", status=503, message="flapping: unavailable this time")
        record = Record(model, nonce, stream, kind, time.monotonic())
        self.records.append(record)
        if nonce is not None:
            self.by_nonce.setdefault(nonce, []).append(record)

        if kind == "status":
            record.outcome = f"status {fault.status}"
            extra = {"retry-after": fault.retry_after} if fault.retry_after else None
            await self._send_whole(writer, fault.status, _error_body(fault), extra)
            return True
        if kind == "reset":
            record.outcome = "reset"
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if kind == "close_without_answer":
            record.outcome = "closed"
            writer.transport.close()  # an orderly close (FIN) after reading the request
            return False
        if kind == "garbage":
            record.outcome = "garbage"
            writer.write(b"SSH-2.0-OpenSSH_9.6 this is not HTTP\r\n\r\n")
            await self._drain(writer)
            writer.transport.close()
            return False
        if kind == "never_answer" or (kind == "pings" and not stream):
            record.outcome = "no_answer"
            await self._wait_for_close(reader)
            return False
        if kind == "slow":
            await asyncio.sleep(fault.delay_s)
            kind = "ok"
        text = answer_text(model, nonce, self.answer_words)
        finish = "content_filter" if kind == "content_filter" else "stop"
        if kind == "content_filter":
            text = text[: len(text) // 3]
        usage = model_usage(model, len(text.split()))
        if kind == "error_event" and not stream:
            record.outcome = f"status {fault.status}"
            await self._send_whole(writer, fault.status, _error_body(fault))
            return True
        if kind == "json_for_stream" and stream:  # a server that ignores `stream: true`
            record.outcome = "json_for_stream"
            await self._whole(reader, writer, Record(model, nonce, False, kind, 0.0), "ok", text, finish, usage, model)
            return True
        if stream:
            return await self._stream(reader, writer, body, record, kind, fault, text, finish, usage)
        return await self._whole(reader, writer, record, kind, text, finish, usage, model)

    @staticmethod
    async def _wait_for_close(reader: asyncio.StreamReader, limit_s: float = 300.0) -> None:
        try:
            async with asyncio.timeout(limit_s):
                while await reader.read(65536):
                    pass
        except (TimeoutError, ConnectionError):
            pass

    async def _whole(self, reader, writer, record: Record, kind: str, text: str, finish: str,
                     usage: dict[str, int], model: str) -> bool:
        answer = orjson.dumps({"id": f"chatcmpl-{record.nonce}", "object": "chat.completion",
                               "created": int(time.time()), "model": model,
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                            "finish_reason": finish}],
                               "usage": usage})
        broken = {"malformed": b'{"id": "chatcmpl-x", "choices": [ {"index": 0, "mess',
                  "bad_utf8": b'{"id": "chatcmpl-x", "choices": [{"index": 0, "message": {"role": "assistant", '
                              b'"content": "caf\xc3\x28 \xff"}, "finish_reason": "stop"}]}',
                  "not_object": b"[1, 2, 3]",
                  "no_choices": b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": []}',
                  "bad_shape": b'{"id": "chatcmpl-x", "object": "chat.completion", "choices": [{"index": 0, '
                               b'"finish_reason": "stop"}], "usage": "lots"}'}
        if kind in broken:
            record.outcome = kind
            await self._send_whole(writer, 200, broken[kind])
            return True
        if kind in ("cut", "stall"):
            head = ("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(answer)}\r\n\r\n").encode()
            writer.write(head + answer[: len(answer) // 2])
            await self._drain(writer)
            if kind == "cut":
                record.outcome = "cut"
                writer.transport.close()
                return False
            record.outcome = "stalled"
            await self._wait_for_close(reader)
            return False
        await self._send_whole(writer, 200, answer)
        record.outcome = "answered"
        record.content, record.finish_reason, record.usage, record.whole = text, finish, usage, True
        return True

    async def _stream(self, reader, writer, body: dict[str, Any], record: Record, kind: str, fault: Fault,
                      text: str, finish: str, usage: dict[str, int]) -> bool:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
        created = int(time.time())

        def event(payload: bytes) -> bytes:
            data = b"data: " + payload + b"\n\n"
            return f"{len(data):x}\r\n".encode() + data + b"\r\n"

        def chunk(delta: dict, finish_reason: str | None = None, usage_: dict | None = None) -> bytes:
            out = {"id": f"chatcmpl-{record.nonce}", "object": "chat.completion.chunk", "created": created,
                   "model": record.model,
                   "choices": [] if usage_ is not None else [{"index": 0, "delta": delta,
                                                              "finish_reason": finish_reason}]}
            if usage_ is not None:
                out["usage"] = usage_
            return event(orjson.dumps(out))

        words = text.split(" ")
        per = max(1, -(-len(words) // self.chunks))
        pieces = [" ".join(words[i:i + per]) + (" " if i + per < len(words) else "")
                  for i in range(0, len(words), per)]
        for i, piece in enumerate(pieces):
            if i == fault.after_chunks and kind in ("pings", "bad_utf8", "not_object", "bad_shape"):
                record.outcome = kind
                if kind == "pings":  # keep-alive comments, never another token
                    await self._drain(writer)
                    while not reader.at_eof():
                        writer.write(b"9\r\n: ping\n\n\n\r\n")
                        await self._drain(writer)
                        try:
                            async with asyncio.timeout(0.2):
                                if not await reader.read(65536):
                                    break
                        except TimeoutError:
                            pass
                    return False
                writer.write(event({"bad_utf8": b'{"id": "chatcmpl-x", "object": "chat.completion.chunk", "choices": '
                                                b'[{"index": 0, "delta": {"content": "caf\xc3\x28 \xff"}, '
                                                b'"finish_reason": null}]}',
                                    "not_object": b"[1, 2, 3]",
                                    "bad_shape": b'{"id": "chatcmpl-x", "object": "chat.completion.chunk", '
                                                 b'"choices": "none today", "usage": "lots"}'}[kind]))
            if i == fault.after_chunks and kind in ("cut", "stall", "malformed", "error_event"):
                if kind == "error_event":
                    record.outcome = "error_event"
                    writer.write(event(orjson.dumps({"error": {"message": fault.message, "type": "server_error",
                                                               "param": None, "code": None}})) + b"0\r\n\r\n")
                    await self._drain(writer)
                    return True
                if kind == "cut":
                    record.outcome = "cut"
                    writer.write(b"40\r\ndata: {\"id\": \"chatcmpl-cut\", \"obj")  # a chunk broken off
                    await self._drain(writer)
                    writer.transport.close()
                    return False
                if kind == "stall":
                    record.outcome = "stalled"
                    await self._drain(writer)
                    await self._wait_for_close(reader)
                    return False
                record.outcome = "malformed"
                writer.write(event(b'{"id": "chatcmpl-bad", "choices": [{"delta": {"content": "oops'))
            delta = {"content": piece}
            if i == 0:
                delta["role"] = "assistant"
            writer.write(chunk(delta))
            await self._drain(writer)
            record.content += piece
            if fault.chunk_gap_s:
                await asyncio.sleep(fault.chunk_gap_s)
        writer.write(chunk({}, finish))
        record.finish_reason = finish
        if include_usage:
            writer.write(chunk({}, usage_=usage))
            record.usage = usage
        if kind == "no_done":
            record.outcome = "no_done"
            writer.write(b"0\r\n\r\n")
            await self._drain(writer)
            record.whole = True
            return True
        writer.write(event(b"[DONE]") + b"0\r\n\r\n")
        await self._drain(writer)
        record.done = True
        if record.outcome == "received":
            record.outcome = "answered"
            record.whole = True
        return True


class FaultServerThread:
    """A `FaultServer` on its own event loop in a background thread (for synchronous tests):
    ``server.faults[...] = Fault(...)``, ``server.calls``, ``server.by_nonce`` as usual."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="fault-server")
        self.thread.start()
        self.server = asyncio.run_coroutine_threadsafe(FaultServer().start(), self.loop).result(10)

    def calls(self, model: str) -> int:
        return self.server.calls.get(model, 0)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> "FaultServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
