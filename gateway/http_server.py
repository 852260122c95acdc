"""The gateway's HTTP/1.1 server protocol: uvicorn's httptools protocol with the limits a server
that faces untrusted clients needs, which uvicorn itself does not enforce.

- **Head deadline.** A request's head (request line and headers) must be complete within
  `header_timeout_s` of its first byte, and a new connection must send its first request within
  that time. Clients that trickle headers (slowloris) or connect and say nothing are answered
  408 and disconnected, so they cannot hold sockets for ever.
- **Head size.** A head larger than `max_header_bytes` is answered 431 and the connection closed
  as soon as that many bytes are buffered (the parser never holds more than the limit plus one
  read); a head with more than `max_headers` fields is answered 431 before the application sees it.

The request body is bounded at the ASGI level: its size by `server.max_request_bytes`, its arrival
by `server.body_timeout_s` (`gateway.app.read_body`). Limits come from the policy's `server:`
section when the server starts (`server_options`); a policy reload does not change them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("sigroute.http")

REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` with a head deadline and head size limits (class attributes, set by
    `guarded_protocol`)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_deadline: asyncio.TimerHandle | None = None
        self._reading_head = True     # between the start of a request (or of the connection) and its headers
        self._head_bytes = 0
        self._header_count = 0
        self._refused = False         # answered by `_refuse`: nothing more is read or run

    # the head deadline ---------------------------------------------------------------------------
    def _arm_head_deadline(self) -> None:
        self._disarm_head_deadline()
        self._head_deadline = self.loop.call_later(self.header_timeout_s, self._head_timed_out)

    def _disarm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self._reading_head and not self.transport.is_closing():
            self._refuse(408, f"the request's headers did not arrive within {self.header_timeout_s:g}s",
                         "request_timeout")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_deadline()     # a connection that never sends a request is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_deadline()
        super().connection_lost(exc)

    # the head's size -----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        super().data_received(data)
        if self._reading_head and self.parser is not None and not self.transport.is_closing():
            self._head_bytes += len(data)   # what the parser holds of a head still incomplete
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, f"the request's headers exceed {self.max_header_bytes} bytes",
                             "request_header_fields_too_large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._arm_head_deadline()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._refused:
            super().on_message_complete()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._disarm_head_deadline()
        if self._header_count > self.max_headers:
            self._refuse(431, f"the request has {self._header_count} header fields; at most {self.max_headers} "
                              "are accepted", "request_header_fields_too_large")
            return
        super().on_headers_complete()

    # refusing ------------------------------------------------------------------------------------
    def _refuse(self, status: int, message: str, code: str) -> None:
        """Answer with an OpenAI-shaped error and close the connection; the application never runs."""
        self._reading_head = False
        self._refused = True
        self._disarm_head_deadline()
        body = orjson.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                       "code": code}})
        head = [b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status])]
        for name, value in self.server_state.default_headers:
            head.append(name + b": " + value + b"\r\n")
        head.append(b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()
        log.info("refused a request from %s: %s", self.client[0] if self.client else "?", code)


def guarded_protocol(header_timeout_s: float, max_header_bytes: int, max_headers: int) -> type[GuardedHttpProtocol]:
    """A `GuardedHttpProtocol` class with these limits (uvicorn's `http=` option takes a class)."""
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), {
        "header_timeout_s": header_timeout_s, "max_header_bytes": max_header_bytes, "max_headers": max_headers})


def server_options(policy: Any) -> dict[str, Any]:
    """uvicorn options for serving `policy`: the guarded protocol with the policy's limits."""
    server = policy.server
    return {"http": guarded_protocol(server.header_timeout_s, server.max_header_bytes, server.max_headers)}
