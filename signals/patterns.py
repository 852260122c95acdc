"""Policy regexes at request time: RE2, over a bounded part of the text.

A policy regex (a keyword term with `regex: true`, a header or metadata `pattern`) is translated
to RE2 by `policies.regex` when the policy loads, so it runs in time linear in the text, never
backtracking. Linear is not free: RE2 reads a few hundred MB/s on ordinary patterns, and a
pattern with a wide counted repeat (`a.{0,50}c`) can push its automaton out of memory on
adversarial text, down to ~1-2 MB/s. So each regex also reads a bounded amount of text,
`scan_chars` characters (default `DEFAULT_SCAN_CHARS`, 32,768):

- a text of at most `scan_chars` characters is searched whole, with exactly Python's semantics;
- a longer text is searched in two windows, its first `scan_chars // 2` characters and its last
  `scan_chars - scan_chars // 2`; the middle is not read. A match must lie inside one window
  (a match that starts in the middle, straddles a window's inner edge, or needs the character
  just outside it, as a rewritten `\\b` does, is not found). Anchors keep their meaning: `\\A`
  and `^` only match at the real start of the text, `\\Z` and `$` only at its real end (each window
  is searched with one character of real context beyond its inner edge).

The text is encoded to UTF-8 once per signal evaluation and shared by all its regexes.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence

from sigroute.policies.regex import DEFAULT_SCAN_CHARS, compile_regex

__all__ = ["DEFAULT_SCAN_CHARS", "PolicyRegex", "Window", "scan_windows"]

Window = tuple[bytes, int, int]  # (UTF-8 data, start byte, end byte): search data[start:end] in context


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate must not fail a request


def scan_windows(text: str, scan_chars: int = DEFAULT_SCAN_CHARS) -> tuple[Window, ...]:
    """The parts of `text` a policy regex reads (see the module docstring)."""
    n = len(text)
    if n <= scan_chars:
        data = _utf8(text)
        return ((data, 0, len(data)),)
    head_chars = scan_chars // 2
    tail_chars = scan_chars - head_chars
    head = _utf8(text[: head_chars + 1])  # + the next character, as context only
    tail = _utf8(text[n - tail_chars - 1:])  # + the character before, as context only
    return (
        (head, 0, len(head) - len(_utf8(text[head_chars]))),
        (tail, len(_utf8(text[n - tail_chars - 1])), len(tail)),
    )


def _occurs(program) -> Callable[[bytes, int, int], bool]:
    """A function (data, start, end) -> whether `program` matches in data[start:end].

    google-re2's `search` wraps each call in a generator and a match object (~3 us); RE2's own
    `Match` (pybind11) is ~1 us, and only whether a match exists is needed, so it is called
    directly when this google-re2 exposes it (`_regexp`), through `search` otherwise."""
    raw = getattr(program, "_regexp", None)
    anchor = getattr(getattr(_re2_module(), "_Anchor", None), "UNANCHORED", None)
    if raw is not None and anchor is not None and hasattr(raw, "Match"):
        match = raw.Match

        def occurs(data: bytes, start: int, end: int) -> bool:
            return match(anchor, data, start, end)[0][0] != -1
    else:  # pragma: no cover - other google-re2 layouts
        search = program.search

        def occurs(data: bytes, start: int, end: int) -> bool:
            return search(data, start, end) is not None
    return occurs


def _re2_module():
    import re2

    return re2


class PolicyRegex:
    """One policy regex, compiled for RE2: `search(text)` says whether it occurs in `text`
    (within the scanned windows), as `re.search(pattern, text)` would."""

    __slots__ = ("pattern", "scan_chars", "occurs", "_on_empty")

    def __init__(self, pattern: str, case_sensitive: bool = True, scan_chars: int = DEFAULT_SCAN_CHARS):
        self.pattern = pattern
        self.scan_chars = scan_chars
        #: occurs(data, start, end): whether the regex matches in UTF-8 `data[start:end]`, the rest
        #: of `data` being context (what `\b`, `^`, `$` see)
        self.occurs = _occurs(compile_regex(pattern, case_sensitive))
        # Python's `\B` never matches an empty text (before 3.14); ask Python for that one case.
        self._on_empty = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE).search("") is not None

    def search(self, text: str) -> bool:
        if not text:
            return self._on_empty
        if len(text) <= self.scan_chars:  # the common case: one window, the whole text
            data = text.encode("utf-8", "surrogatepass")
            return self.occurs(data, 0, len(data))
        return self.search_windows(scan_windows(text, self.scan_chars))

    def search_windows(self, windows: Sequence[Window]) -> bool:
        """Whether the regex occurs in one of `windows` (from `scan_windows` of a non-empty text)."""
        occurs = self.occurs
        for data, start, end in windows:
            if occurs(data, start, end):
                return True
        return False

    def __repr__(self) -> str:
        return f"PolicyRegex({self.pattern!r})"
