"""gateway.sse: the WHATWG event-stream interpretation, one rule per test, and cutting a stream
anywhere never changes what it decodes to."""

from __future__ import annotations

import random

import pytest

from sigroute.gateway.sse import Event, EventTooLarge, SSEDecoder


def decode(*pieces: bytes) -> list[Event]:
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events


def data(*pieces: bytes) -> list[str]:
    return [e.data for e in decode(*pieces)]


# line ends -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_every_line_end_works(eol):
    stream = b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    assert data(stream) == ["a\nb", "c"]


def test_line_ends_may_be_mixed():
    assert data(b"data: a\r\ndata: b\rdata: c\n\r\n") == ["a\nb\nc"]


def test_cr_at_the_end_of_a_piece_and_lf_at_the_start_of_the_next_are_one_line_end():
    # were they two line ends, the LF would be a blank line and "a" would be dispatched alone
    assert data(b"data: a\r", b"\ndata: b\r\n\r\n") == ["a\nb"]
    assert data(b"data: a\r", b"", b"\ndata: b\n\n") == ["a\nb"]  # an empty piece in between changes nothing


def test_cr_at_the_end_of_a_piece_followed_by_cr_is_a_blank_line():
    assert data(b"data: a\r", b"\rdata: b\n\n") == ["a", "b"]


def test_cr_lf_split_then_another_line_end():
    assert data(b"data: a\r", b"\n\r", b"\n") == ["a"]


# encoding --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["é", "€", "😀", "日本語"])
def test_multi_byte_characters_split_across_pieces(text):
    stream = f"data: {text}\n\n".encode()
    start = len(b"data: ")
    for cut in range(start + 1, start + len(text.encode())):
        assert data(stream[:cut], stream[cut:]) == [text], cut


def test_invalid_utf8_becomes_replacement_characters():
    assert data(b"data: a\xffb\n\n") == ["a\ufffdb"]


def test_a_leading_bom_is_ignored():
    assert data(b"\xef\xbb\xbfdata: a\n\n") == ["a"]


def test_a_bom_split_across_pieces_is_ignored():
    assert data(b"\xef", b"\xbb", b"\xbfdata: a\n\n") == ["a"]
    assert data(b"\xef\xbb", b"\xbfdata: a\n\n") == ["a"]


def test_only_one_leading_bom_is_ignored():
    # the second BOM is part of the first line's field name, which no field has: the line is ignored
    assert data(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n") == ["b"]


def test_a_bom_later_in_the_stream_is_data():
    assert data(b"data: a\n\ndata: \xef\xbb\xbfb\n\n") == ["a", "\ufeffb"]


# fields ----------------------------------------------------------------------------------------------

def test_comments_are_ignored():
    assert data(b": keep-alive\n:\ndata: a\n: inside an event\ndata: b\n\n") == ["a\nb"]


def test_a_comment_alone_dispatches_nothing():
    assert decode(b": ping\n\n: ping\n\n") == []


def test_data_without_a_colon_is_an_empty_data_line():
    assert data(b"data\n\n") == [""]
    assert data(b"data\ndata\n\n") == ["\n"]
    assert data(b"data: a\ndata\n\n") == ["a\n"]


def test_exactly_one_space_after_the_colon_is_dropped():
    assert data(b"data:a\n\ndata: a\n\ndata:  a\n\ndata: a \n\n") == ["a", "a", " a", "a "]


def test_field_values_keep_further_colons():
    assert data(b'data: {"a": "b:c"}\n\n') == ['{"a": "b:c"}']


def test_unknown_fields_are_ignored():
    assert decode(b"foo: bar\ndata: a\nDATA: b\nData: c\n\n") == [Event("a")]


def test_event_names_the_type_and_resets_after_dispatch():
    assert [(e.event, e.data) for e in decode(b"event: delta\ndata: a\n\ndata: b\n\n")] == [
        ("delta", "a"), ("message", "b")]


def test_an_empty_event_field_means_message():
    assert decode(b"event\ndata: a\n\n")[0].event == "message"


def test_an_event_without_data_is_not_dispatched_and_forgets_its_type():
    assert decode(b"event: lonely\n\n") == []
    assert decode(b"event: lonely\nid: 3\n\ndata: next\n\n") == [Event("next", "message", "3")]


def test_id_persists_until_changed_and_an_empty_id_resets_it():
    events = decode(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: c\n\nid\ndata: d\n\n")
    assert [(e.id, e.data) for e in events] == [("1", "a"), ("1", "b"), ("2", "c"), ("", "d")]


def test_an_id_containing_nul_is_ignored():
    decoder = SSEDecoder()
    events = decoder.feed(b"id: 7\ndata: a\n\nid: 8\x009\ndata: b\n\n")
    assert [e.id for e in events] == ["7", "7"]
    assert decoder.last_event_id == "7"


@pytest.mark.parametrize("value, expected", [
    (b"10", 10), (b"0", 0), (b"1.5", None), (b"-1", None), (b"", None), (b"1x", None), (b" 10", None),
    ("\u0663".encode(), None),  # an Arabic-Indic digit: a digit, but not an ASCII one
])
def test_retry_only_if_all_ascii_digits(value, expected):
    decoder = SSEDecoder()
    (event,) = decoder.feed(b"retry: " + value + b"\ndata: a\n\n")
    assert event.retry == expected
    assert decoder.retry == expected


def test_retry_is_kept_by_the_decoder_and_reported_on_its_own_event():
    decoder = SSEDecoder()
    events = decoder.feed(b"retry: 500\n\ndata: a\n\nretry: 250\ndata: b\n\n")
    assert [(e.data, e.retry) for e in events] == [("a", None), ("b", 250)]
    assert decoder.retry == 250


def test_nothing_is_dispatched_before_the_blank_line():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n") == []
    assert decoder.feed(b"data: b\n") == []
    assert decoder.feed(b"\n") == [Event("a\nb")]


def test_the_usual_one_line_piece_honours_state_left_by_earlier_pieces():
    # "data: …\n\n" pieces take a fast path: it must still see an event type, id or data lines
    # that earlier pieces left pending
    assert decode(b"event: e\nid: 4\nretry: 9\n", b"data: x\n\n") == [Event("x", "e", "4", 9)]
    assert data(b"data: a\n", b"data: b\n\n") == ["a\nb"]
    assert data(b"da", b"ta: a\n\n") == ["a"]
    assert data(b"data: a\r\n", b"data: b\r\n\r\n") == ["a\nb"]
    assert data(b"data: a\n\ndata: b") == ["a"]


# end of input ----------------------------------------------------------------------------------------

def test_end_returns_the_event_the_standard_discards():
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\n\ndata: b\nevent: x\n") == [Event("a")]
    assert decoder.end() == Event("b", "x")


def test_end_counts_an_unterminated_last_line():
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\ndata: [DO")
    decoder.feed(b"NE]")
    assert decoder.end() == Event("[DONE]")


def test_end_after_a_clean_stream_returns_none():
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\n: bye\n")
    assert decoder.end() is None
    decoder.feed(b"event: x\n")  # lines without data never make an event
    assert decoder.end() is None


def test_end_resets_for_a_new_stream_keeping_the_last_id():
    decoder = SSEDecoder()
    decoder.feed(b"id: 5\ndata: a\n\ndata: half")
    assert decoder.end() == Event("half", id="5")
    assert decoder.feed(b"\xef\xbb\xbfdata: b\n\n") == [Event("b", id="5")]  # the new stream's BOM is ignored


# cutting a stream anywhere -----------------------------------------------------------------------------

STREAM = (
    b"\xef\xbb\xbf: welcome\r\n"
    b"retry: 3000\n"
    b'data: {"choices": [{"delta": {"content": "Gr\xc3\xbc\xc3\x9fe \xf0\x9f\x98\x80"}}]}\n\n'
    b"event: update\rid: 42\rdata: line one\rdata: line two\r\r"
    b"data\r\n\r\n"
    b"data: crlf one\r\ndata: crlf two\r\n\r\n"
    b'data: {"choices": [{"delta": {"content": "\xe2\x82\xac"}}]}\r\n\r\n'
    b"event: nothing\n\n"
    b"id: bad\x00id\ndata:no space\nfoo: bar\n\n"
    b"data: [DONE]\n\n"
    b"data: tail without end"
)


def _cut(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:])]


def _decode_all(pieces: list[bytes]) -> tuple[list[Event], Event | None]:
    decoder = SSEDecoder()
    events = []
    for piece in pieces:
        events += decoder.feed(piece)
    return events, decoder.end()


def test_the_reference_stream_decodes_as_the_standard_says():
    events, last = _decode_all([STREAM])
    assert [(e.event, e.data, e.id, e.retry) for e in events] == [
        ("message", '{"choices": [{"delta": {"content": "Grüße 😀"}}]}', "", 3000),
        ("update", "line one\nline two", "42", None),
        ("message", "", "42", None),
        ("message", "crlf one\ncrlf two", "42", None),
        ("message", '{"choices": [{"delta": {"content": "€"}}]}', "42", None),
        ("message", "no space", "42", None),
        ("message", "[DONE]", "42", None),
    ]
    assert last == Event("tail without end", id="42")


def test_byte_by_byte_and_in_one_piece_decode_the_same():
    whole = _decode_all([STREAM])
    assert _decode_all([STREAM[i:i + 1] for i in range(len(STREAM))]) == whole


def test_every_single_cut_decodes_the_same():
    whole = _decode_all([STREAM])
    for cut in range(1, len(STREAM)):
        assert _decode_all(_cut(STREAM, [cut])) == whole, cut


@pytest.mark.parametrize("seed", range(20))
def test_random_cuts_decode_the_same(seed):
    rng = random.Random(seed)
    whole = _decode_all([STREAM])
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(2, 40)))
        assert _decode_all(_cut(STREAM, cuts)) == whole, cuts


# work and size ---------------------------------------------------------------------------------------

class Counted(bytes):
    """A piece of the stream that counts the bytes its searches look at (`Counted.scanned`)."""

    scanned = 0

    def _count(self) -> None:
        Counted.scanned += len(self)

    def find(self, *args):
        self._count()
        return bytes.find(self, *args)

    def rfind(self, *args):
        self._count()
        return bytes.rfind(self, *args)

    def index(self, *args):
        self._count()
        return bytes.index(self, *args)

    def count(self, *args):
        self._count()
        return bytes.count(self, *args)

    def replace(self, *args):
        self._count()
        return bytes.replace(self, *args)

    def split(self, *args, **kwargs):
        self._count()
        return bytes.split(self, *args, **kwargs)

    def partition(self, *args):
        self._count()
        return bytes.partition(self, *args)

    def __contains__(self, item):
        self._count()
        return bytes.__contains__(self, item)


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_a_long_line_in_many_pieces_is_kept_as_is_and_searched_once(eol):
    """10 MB of one event in 10,000 pieces: each piece is kept as the very object that was fed
    (nothing before it is copied) and searched a bounded number of times (not again with every
    new piece): the work is linear in the stream, not quadratic."""
    payload = b"x" * (10 * 1024 * 1024)
    stream = b"data: " + payload + eol + eol
    size = 1024
    pieces = [Counted(stream[i:i + size]) for i in range(0, len(stream), size)]
    decoder = SSEDecoder()
    Counted.scanned = 0
    events = []
    for i, piece in enumerate(pieces):
        events += decoder.feed(piece)
        if i and not events and bytes.find(piece, b"\n") < 0 and bytes.find(piece, b"\r") < 0:
            # (the first piece is looked at for a byte order mark)
            assert decoder._partial[-1] is piece and len(decoder._partial) == i + 1  # held, not copied
    assert [len(e.data) for e in events] == [len(payload)]
    assert Counted.scanned <= 3 * len(stream)


def test_max_event_bytes_bounds_one_event_not_the_stream():
    small = b"data: " + b"a" * 50 + b"\n\n"
    decoder = SSEDecoder(max_event_bytes=100)
    assert len(decoder.feed(small * 100)) == 100  # many small events in one large piece: fine
    assert len(decoder.feed(b"data: " + b"b" * 100 + b"\n\n")) == 1  # at the limit: fine
    for pieces in ([b"data: " + b"c" * 101 + b"\n\n"],  # one line, whole
                   [b"data: " + b"c" * 60, b"c" * 60],  # one line, unterminated
                   [b"data: " + b"c" * 40 + b"\r\n", b"data: " + b"c" * 40 + b"\r\n", b"data: " + b"c" * 40 + b"\r\n"],
                   [b": " + b"comment" * 20],  # any line counts
                   [(b"data: " + b"c" * 30 + b"\n") * 4 + b"\n"]):  # lines of one event, in one piece
        decoder = SSEDecoder(max_event_bytes=100)
        with pytest.raises(EventTooLarge):
            for piece in pieces:
                decoder.feed(piece)
    assert len(SSEDecoder().feed(b"data: " + b"d" * 10_000_000 + b"\n\n")) == 1  # no limit by default
