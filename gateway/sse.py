"""Server-sent events: one incremental decoder, shared by the upstream reader and the SDK.

It follows the WHATWG HTML standard's "event stream interpretation"
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation),
fed with bytes as they arrive from the network::

    decoder = SSEDecoder()
    for piece in pieces_of_the_body:
        for event in decoder.feed(piece):
            handle(event.data)              # also event.event, event.id, event.retry
    truncated = decoder.end()               # None when the stream ended on an event boundary

What the standard says, and what this decoder does:

- The stream is UTF-8. Lines end with CRLF, LF or a lone CR, mixed freely; a CR at the end of one
  piece followed by an LF at the start of the next is ONE line end. Lines are cut at the byte level
  and decoded whole, so a multi-byte character split across pieces is decoded correctly; invalid
  UTF-8 becomes U+FFFD (``errors="strict"``: `feed` / `end` raise `UnicodeDecodeError` instead,
  for readers of JSON payloads, which must be valid UTF-8). One leading byte order mark is
  ignored (also when it is split).
- ``:`` at the start of a line makes it a comment (keep-alives): ignored.
- ``name: value`` sets a field; exactly one space after the colon is dropped. A line without a
  colon is a field with an empty value (``data`` alone adds an empty data line).
- ``data`` lines of one event are joined with "\\n"; ``event`` names the event type (default
  "message"); ``id`` sets the last event id, unless it contains NUL (then the line is ignored);
  ``retry`` sets the reconnection time in milliseconds if it is all ASCII digits (else ignored);
  any other field is ignored.
- A blank line dispatches the event. An event whose data buffer is empty (no ``data`` line) is
  not dispatched; its ``event`` type is forgotten all the same.
- The last event id persists from event to event until a later ``id`` line changes it: each
  event carries the id in force when it was dispatched (the standard's ``lastEventId``).
  ``retry`` on an event is the value sent within that event's lines (None if none); the
  reconnection time in force is `SSEDecoder.retry`.

End of input. The standard discards an event that was not terminated by a blank line (and an
unterminated last line with it): `feed` never returns such an event. `end()` makes the end of the
input explicit and returns that discarded event (the last line counting even without its line
end), or None when the stream ended cleanly, so that a caller decides: follow the standard and
ignore it, report the stream as truncated, or accept it leniently. sigroute's callers are lenient
about a server that closes the connection right after its last ``data:`` line: the upstream reader
accepts a final ``data: [DONE]`` there (anything else still means the stream was cut short), and
the SDK handles that event like any other (and then still insists on ``[DONE]``).

Size: ``SSEDecoder(max_event_bytes=N)`` bounds what one event may hold while it is being read
(its data lines so far plus the unterminated line): beyond N `feed` raises `EventTooLarge` and
the decoder must not be used any more. Without it (the default) an event may grow without bound.

Work: each byte fed is looked at a bounded number of times, however the stream is cut. A line
that arrives in many pieces is kept as those pieces (never copied or searched again) until a
piece brings its line end; then it is joined once. Only the new piece is searched for line ends.
(The reader this replaced appended every piece to one buffer and searched it from its start:
quadratic in the length of a long line.)

Speed: this sits on the path of every streamed chunk, so there is no loop over bytes. The usual
piece, one event of one data line (``data: {…}\n\n``, or with CRLF), is recognized with a few
byte searches and decoded at once; any other piece is normalized to LF (CR and CRLF, two
`bytes.replace` calls, only if it holds a CR), cut at its last line end, decoded once and split
into lines, which a short loop interprets. On a typical OpenAI stream it costs about what the
line finder it replaced did (which handled only ``data:`` lines ending in LF), and less when a
read holds several events.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Event", "SSEDecoder", "EventTooLarge"]

_BOM = b"\xef\xbb\xbf"
_UNLIMITED = float("inf")


class EventTooLarge(ValueError):
    """An event (or one line) is larger than the decoder's ``max_event_bytes``."""


@dataclass(slots=True)
class Event:
    """One dispatched server-sent event."""

    data: str
    event: str = "message"
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    """Incremental event-stream decoder: `feed(bytes) -> [Event, …]`, then `end()`.

    `last_event_id` and `retry` (the reconnection time, ms, or None) are the stream-level state
    the standard keeps across events; they survive `end()`, as for a reconnection.
    """

    __slots__ = ("last_event_id", "retry", "max_event_bytes", "errors", "_partial", "_partial_size", "_data",
                 "_data_size", "_event", "_event_retry", "_skip_lf", "_start", "_special")

    def __init__(self, max_event_bytes: int | None = None, errors: str = "replace") -> None:
        self.last_event_id = ""
        self.retry: int | None = None
        self.max_event_bytes = max_event_bytes  # None: no limit
        self.errors = errors  # "replace" (the standard's U+FFFD) or "strict" (UnicodeDecodeError)
        self._partial: list[bytes] = []   # bytes of the current line, not yet terminated (pieces as fed)
        self._partial_size = 0            # their total length
        self._data: list[str] = []        # data lines of the event being read
        self._data_size = 0               # their total length (characters)
        self._event = ""                  # event type buffer
        self._event_retry: int | None = None
        self._skip_lf = False             # the previous piece ended with CR: a leading LF is part of that line end
        self._start: bytes | None = b""   # the first bytes of the stream, until a BOM is ruled in or out
        self._special = True              # _skip_lf or _start is set: `feed` looks at the piece's first bytes

    def feed(self, chunk: bytes) -> list[Event]:
        """The events completed by `chunk` (a piece of the body, any size, cut anywhere)."""
        if self._special:  # the stream's first bytes (a BOM?), or the previous piece ended with CR
            chunk = self._special_start(chunk)
        cr = chunk.find(b"\r")  # (find: faster than `in`)
        if cr >= 0:
            if (cr == len(chunk) - 4 and chunk.endswith(b"\r\n\r\n") and chunk.startswith(b"data: ")
                    and chunk.find(b"\n") == cr + 1 and not self._partial and not self._data):
                return [self._one(chunk[6:-4])]  # the usual case, with CRLF line ends
            if chunk[-1] == 13:  # "\r": the LF of a CRLF may start the next piece
                self._skip_lf = self._special = True
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        last = chunk.rfind(b"\n")
        if last < 0:
            if chunk:
                self._partial.append(chunk)
                self._partial_size += len(chunk)
                if self.max_event_bytes is not None:
                    self._check_size()
            return []
        if self._partial:  # the piece completes a line begun earlier
            tail = len(chunk) - last
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
            self._partial = []
            self._partial_size = 0
            last = len(chunk) - tail
        if (last == len(chunk) - 1 and chunk.find(b"\n") == last - 1 and chunk.startswith(b"data: ")
                and not self._data):
            return [self._one(chunk[6:-2])]  # the usual case: one event of one data line, "data: …\n\n"
        if last + 1 < len(chunk):
            self._partial.append(chunk[last + 1:])
            self._partial_size = len(chunk) - last - 1
        events = self._lines(chunk[:last].decode("utf-8", self.errors).split("\n"))
        if self.max_event_bytes is not None:
            self._check_size()
        return events

    def end(self) -> Event | None:
        """The input is over. Returns the event the standard discards here (lines after the last
        blank line, an unterminated last line included) as it would have been dispatched, or None
        if the stream ended on an event boundary (or left nothing that would dispatch). Resets the
        decoder for a new stream; `last_event_id` and `retry` are kept (as set by every line, the
        returned event's included)."""
        lines = []
        if self._start:  # a stream of fewer than three bytes that began like a BOM
            self._partial.insert(0, self._start)
        if self._partial:
            lines.append(b"".join(self._partial).decode("utf-8", self.errors))
        self._partial = []
        self._partial_size = 0
        events = self._lines(lines + [""])  # as if a blank line had followed
        self._skip_lf = False
        self._start = b""
        self._special = True
        return events[0] if events else None

    # ---------------------------------------------------------------------------------------------

    def _check_size(self) -> None:
        if self._partial_size + self._data_size > self.max_event_bytes:
            self._too_large()

    def _too_large(self) -> None:
        raise EventTooLarge(f"a server-sent event is larger than {self.max_event_bytes} bytes")

    def _special_start(self, chunk: bytes) -> bytes:
        """Drop a leading BOM of the stream, or the LF of a CRLF split across pieces."""
        if self._start is not None:
            head = self._start + chunk
            if len(head) < 3 and _BOM.startswith(head):  # maybe a BOM: wait for more
                self._start = head
                return b""
            self._start = None
            chunk = head[3:] if head.startswith(_BOM) else head
        if self._skip_lf and chunk:
            self._skip_lf = False
            if chunk[0] == 10:  # "\n"
                chunk = chunk[1:]
        self._special = self._skip_lf or self._start is not None
        return chunk

    def _one(self, data: bytes) -> Event:
        """Dispatch an event whose only line was `data: <data>`."""
        if self.max_event_bytes is not None and len(data) > self.max_event_bytes:
            self._too_large()
        event = Event(data.decode("utf-8", self.errors), self._event or "message", self.last_event_id, self._event_retry)
        self._event = ""
        self._event_retry = None
        return event

    def _lines(self, lines: list[str]) -> list[Event]:
        """Interpret complete lines (without their line ends); the events they dispatch."""
        events: list[Event] = []
        data = self._data
        size = self._data_size
        limit = self.max_event_bytes if self.max_event_bytes is not None else _UNLIMITED
        for line in lines:
            if line.startswith("data:"):  # by far the most common line
                data.append(line[6:] if line.startswith(" ", 5) else line[5:])
                size += len(line)
            elif not line:  # a blank line: dispatch
                if size > limit:
                    self._too_large()
                if data:
                    events.append(Event(data[0] if len(data) == 1 else "\n".join(data), self._event or "message",
                                        self.last_event_id, self._event_retry))
                    data = self._data = []
                size = 0
                self._event = ""
                self._event_retry = None
            elif line[0] != ":":  # (a comment otherwise)
                name, colon, value = line.partition(":")
                if colon and value.startswith(" "):
                    value = value[1:]
                if name == "event":
                    self._event = value
                elif name == "data":  # "data" with no colon: an empty data line
                    data.append(value)
                    size += len(line)
                elif name == "id":
                    if "\0" not in value:
                        self.last_event_id = value
                elif name == "retry":
                    if value.isascii() and value.isdigit():
                        self.retry = self._event_retry = int(value)
        self._data_size = size
        return events
