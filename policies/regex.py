"""Policy regular expressions: written in Python's syntax, run by RE2 in linear time.

A policy's regexes (keyword terms with `regex: true`, the `pattern` of header and metadata
signals) run against request text that an anonymous caller controls and that may be megabytes
long. Python's `re` backtracks: `(a+)+$` against 30 `a`s and a `b` takes seconds, against a
few hundred it never ends. So a policy regex is *translated* from Python's syntax into an RE2
pattern with the same meaning, and RE2 (an automaton; time linear in the text, never
exponential) runs it.

What the translation keeps exactly, because it computes it with Python itself:

- `\\w \\d \\s` (and `\\W \\D \\S`, inside or outside classes) are Unicode, as in Python: the
  translation writes out the code points Python's own `str.isalnum() / isdecimal() / isspace()`
  accept (RE2's own `\\w` is ASCII only); `(?a)` gives the ASCII meaning, as in Python.
- Case-insensitive matching (`(?i)`, or a signal's `case_sensitive: false`) follows Python's
  case rules (`ſ` matches `s`, `K` (Kelvin) matches `k`, `ẞ` matches `ß`): every character or
  class is expanded to the exact set of characters Python would accept, and RE2 matches
  case-sensitively.
- `\\b` and `\\B` are Unicode word boundaries (RE2's are ASCII only). RE2 has no Unicode word
  boundary, so each one is rewritten from what the pattern says about the characters on each side:
  next to letters or digits it becomes "the other side is not a word character", at the start or
  end of the match it consumes the neighbouring character (or matches the start/end of the text),
  and next to a single character class it narrows that class.
- `$` without `(?m)` also matches before a final newline, as in Python; `\\Z` is the end.
- `^ . (?s) (?m) (?x)`, groups (named or not), alternation, greedy and lazy repetition,
  `\\A`, escapes and `\\N{NAME}`: the same meaning as in Python.

What RE2 cannot run, and the policy loader refuses with a message saying what to write instead:
backreferences (`\\1`, `(?P=name)`), lookahead and lookbehind (`(?=…)`, `(?!…)`, `(?<=…)`,
`(?<!…)`), conditionals (`(?(1)…)`), atomic groups and possessive repeats (`(?>…)`, `a*+`),
repetition counts above 1000, `$` (without `(?m)`) anywhere but at the end of the pattern, a
`\\b`/`\\B` whose neighbours can be both word and non-word characters in ways the rewrite cannot
express, and patterns that compile to a program larger than RE2's memory budget.

Only *whether* a pattern occurs is ever asked (signals report the policy's terms, never the
matched text), which is what makes the consuming rewrites above exact.

    translate(r"\\bcafé\\b", case_sensitive=False)   # -> an RE2 pattern
    compile_regex(r"\\bcafé\\b", case_sensitive=False).search(b"un caf\\xc3\\xa9")
"""

from __future__ import annotations

import functools
import re
from typing import Any, Iterable

try:  # Python >= 3.11 names; the sre modules are the parser `re` itself uses
    import re._constants as _c
    import re._parser as _parser
except ImportError:  # pragma: no cover - Python < 3.11 is not supported, but fail clearly
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _parser  # type: ignore[no-redef]

__all__ = [
    "DEFAULT_SCAN_CHARS",
    "MAX_PROGRAM_SIZE",
    "MAX_REPEAT",
    "UnsupportedRegex",
    "check_regex",
    "compile_regex",
    "regex_error",
    "translate",
]

#: RE2's largest repetition count ({n,m} with n, m <= 1000).
MAX_REPEAT = 1000
#: Largest RE2 program (instructions) a policy regex may compile to. Measured: up to ~53,000
#: instructions RE2's DFA keeps ~2-10 ms per MiB; at ~66,000 it runs out of its default memory
#: budget (8 MiB) and falls back to its NFA, ~3.5 s per MiB (see benchmarks/regex_safety.py).
MAX_PROGRAM_SIZE = 40_000
#: Characters a policy regex reads at most by default: a longer text is searched in its first and
#: its last half of this many characters (the policy's keyword `scan_chars` overrides it). Ordinary
#: patterns read this in ~0.01-0.05 ms; RE2's own worst case (a wide counted repeat after a single
#: character, `a.{0,50}c`, on adversarial text) ~0.5-1 us per character, i.e. ~15-30 ms.
DEFAULT_SCAN_CHARS = 32_768

_MAX_CP = 0x10FFFF
Ranges = tuple[tuple[int, int], ...]  # sorted, disjoint, non-adjacent inclusive code point ranges
_ALL: Ranges = ((0, _MAX_CP),)
_NOTHING: Ranges = ()
_NEWLINE: Ranges = ((10, 10),)


class UnsupportedRegex(ValueError):
    """A valid Python regex that RE2 cannot run with the same meaning; the text says what to do."""


# --------------------------------------------------------------------------------------------
# sets of code points


def _ranges(pairs: Iterable[tuple[int, int]]) -> Ranges:
    out: list[list[int]] = []
    for lo, hi in sorted(pairs):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1][1] = hi
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def _union(*sets: Ranges) -> Ranges:
    return _ranges(p for s in sets for p in s)


def _complement(s: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in s:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= _MAX_CP:
        out.append((start, _MAX_CP))
    return tuple(out)


def _intersect(a: Ranges, b: Ranges) -> Ranges:
    return _complement(_union(_complement(a), _complement(b)))


def _from_predicate(pred) -> Ranges:
    out, start = [], None
    for cp in range(_MAX_CP + 1):
        if pred(chr(cp)):
            if start is None:
                start = cp
        elif start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, _MAX_CP))
    return tuple(out)


# Python's own definitions (Modules/_sre: SRE_UNI_IS_WORD = isalnum or '_', IS_DIGIT = decimal,
# IS_SPACE = Py_UNICODE_ISSPACE), computed once per process from the running Python's tables.
@functools.cache
def _unicode_category(name: str) -> Ranges:
    pred = {
        "word": lambda ch: ch.isalnum() or ch == "_",
        "digit": str.isdecimal,
        "space": str.isspace,
    }[name]
    return _from_predicate(pred)


_ASCII_CATEGORY: dict[str, Ranges] = {
    "word": _ranges([(48, 57), (65, 90), (95, 95), (97, 122)]),
    "digit": ((48, 57),),
    "space": _ranges([(9, 13), (32, 32)]),
}


def _category(name: str, flags: int) -> Ranges:
    return _ASCII_CATEGORY[name] if flags & _c.SRE_FLAG_ASCII else _unicode_category(name)


_CATEGORIES = {
    _c.CATEGORY_WORD: ("word", False), _c.CATEGORY_NOT_WORD: ("word", True),
    _c.CATEGORY_DIGIT: ("digit", False), _c.CATEGORY_NOT_DIGIT: ("digit", True),
    _c.CATEGORY_SPACE: ("space", False), _c.CATEGORY_NOT_SPACE: ("space", True),
}
_CATEGORY_SOURCE = {
    _c.CATEGORY_WORD: r"\w", _c.CATEGORY_NOT_WORD: r"\W", _c.CATEGORY_DIGIT: r"\d",
    _c.CATEGORY_NOT_DIGIT: r"\D", _c.CATEGORY_SPACE: r"\s", _c.CATEGORY_NOT_SPACE: r"\S",
}


def _word(flags: int) -> Ranges:
    return _category("word", flags)


# No character at or above this has another case (the last cased script, Adlam, ends at U+1E94B;
# a test checks this against the running Python's tables).
CASED_LIMIT = 0x20000


# Characters whose case-insensitive matching can differ from case-sensitive matching: every
# character with a different lower/upper/casefold form, those forms, and Python's extra cases.
@functools.cache
def _cased() -> tuple[int, ...]:
    found: set[int] = set()
    for cp in range(CASED_LIMIT):
        ch = chr(cp)
        forms = (ch.lower(), ch.upper(), ch.casefold())
        if any(f != ch for f in forms):
            found.add(cp)
            found.update(ord(f) for f in forms if len(f) == 1)
    try:
        from re._casefix import _EXTRA_CASES  # the pairs Python's `re` adds to simple case folding

        for key, values in _EXTRA_CASES.items():
            found.add(key)
            found.update(values)
    except ImportError:  # pragma: no cover
        pass
    return tuple(sorted(found))


def _python_class_source(op, av) -> str:
    """Python regex source for one single-character item (to ask Python what it matches)."""
    def lit(cp: int) -> str:
        return re.escape(chr(cp))

    if op is _c.LITERAL:
        return lit(av)
    if op is _c.NOT_LITERAL:
        return f"[^{lit(av)}]"
    parts = []
    for iop, iav in av:
        if iop is _c.NEGATE:
            parts.append("^")
        elif iop is _c.LITERAL:
            parts.append(lit(iav))
        elif iop is _c.RANGE:
            parts.append(f"{lit(iav[0])}-{lit(iav[1])}")
        elif iop is _c.CATEGORY:
            parts.append(_CATEGORY_SOURCE[iav])
        else:  # pragma: no cover - the parser produces nothing else inside a class
            raise UnsupportedRegex(f"unexpected class item {iop}")
    return "[" + "".join(parts) + "]"


@functools.lru_cache(maxsize=4096)
def _case_insensitive(op, av_key, flags: int, exact: Ranges) -> Ranges:
    """`exact` (the case-sensitive set) adjusted on every cased character to what Python's `re`
    matches with IGNORECASE: asks Python itself, character by character."""
    probe = re.compile(_python_class_source(op, _unfreeze(av_key)), flags & ~_c.SRE_FLAG_VERBOSE)
    cased = _cased()
    matched = [(cp, cp) for cp in cased if probe.fullmatch(chr(cp)) is not None]
    cased_ranges = _ranges((cp, cp) for cp in cased)
    return _union(_intersect(exact, _complement(cased_ranges)), _ranges(matched))


def _freeze(av) -> Any:
    if isinstance(av, list):
        return tuple(_freeze(x) for x in av)
    if isinstance(av, tuple):
        return tuple(_freeze(x) for x in av)
    return av


def _unfreeze(av) -> Any:
    if isinstance(av, tuple) and av and isinstance(av[0], tuple):
        return [tuple(x) for x in av]
    return av


def _char_set(op, av, flags: int) -> Ranges:
    """The exact set of characters one single-character item matches under `flags`."""
    if op is _c.ANY:
        return _ALL if flags & _c.SRE_FLAG_DOTALL else _complement(_NEWLINE)
    if op is _c.LITERAL:
        exact: Ranges = ((av, av),)
    elif op is _c.NOT_LITERAL:
        exact = _complement(((av, av),))
    else:  # IN
        negate = False
        members: list[Ranges] = []
        for iop, iav in av:
            if iop is _c.NEGATE:
                negate = True
            elif iop is _c.LITERAL:
                members.append(((iav, iav),))
            elif iop is _c.RANGE:
                members.append(((iav[0], iav[1]),))
            elif iop is _c.CATEGORY:
                name, negated = _CATEGORIES[iav]
                cat = _category(name, flags)
                members.append(_complement(cat) if negated else cat)
            else:  # pragma: no cover
                raise UnsupportedRegex(f"unexpected class item {iop}")
        exact = _union(*members)
        if negate:
            exact = _complement(exact)
    if flags & _c.SRE_FLAG_IGNORECASE:
        exact = _case_insensitive(op, _freeze(av), flags & (_c.SRE_FLAG_IGNORECASE | _c.SRE_FLAG_ASCII), exact)
    return exact


def _cp(cp: int) -> str:
    ch = chr(cp)
    if ch.isascii() and ch.isalnum():
        return ch
    return f"\\x{{{cp:X}}}"


def _emit_set(s: Ranges) -> str:
    if not s:
        return r"[^\x00-\x{10FFFF}]"  # matches nothing
    if s == _ALL:
        return r"(?s:.)"
    if len(s) == 1 and s[0][0] == s[0][1]:
        return _cp(s[0][0])
    body = "".join(_cp(lo) if lo == hi else f"{_cp(lo)}-{_cp(hi)}" for lo, hi in s)
    return f"[{body}]"


# --------------------------------------------------------------------------------------------
# neighbours of a position (for \b, \B)

_SINGLE = (_c.LITERAL, _c.NOT_LITERAL, _c.ANY, _c.IN)
_REPEATS = (_c.MAX_REPEAT, _c.MIN_REPEAT)


class _Edge:
    """What can stand next to a position: characters `chars`; `anchor` if the start/end of the
    text can (counts as a non-word neighbour); `outside` if the match's own edge can (then the
    neighbour is text the pattern does not describe)."""

    __slots__ = ("chars", "anchor", "outside")

    def __init__(self, chars: Ranges = _NOTHING, anchor: bool = False, outside: bool = False):
        self.chars, self.anchor, self.outside = chars, anchor, outside

    def __or__(self, other: "_Edge") -> "_Edge":
        return _Edge(_union(self.chars, other.chars), self.anchor or other.anchor, self.outside or other.outside)


def _item_edge(op, av, flags: int, forward: bool) -> tuple[_Edge, bool]:
    """(characters a match of this item can start (forward) / end with, whether it can be empty
    — i.e. the walk continues past it)."""
    if op in _SINGLE:
        return _Edge(_char_set(op, av, flags)), False
    if op is _c.SUBPATTERN:
        group, add, delete, body = av
        return _seq_edge(list(body), (flags | add) & ~delete, forward)
    if op is _c.BRANCH:
        edge, open_ = _Edge(), False
        for alt in av[1]:
            e, o = _seq_edge(list(alt), flags, forward)
            edge, open_ = edge | e, open_ or o
        return edge, open_
    if op in _REPEATS:
        lo, hi, body = av
        e, o = _seq_edge(list(body), flags, forward)
        return e, o or lo == 0
    if op is _c.AT:
        at = av
        if not forward and (at is _c.AT_BEGINNING_STRING or at is _c.AT_BEGINNING):
            # before \A: the start of the text; before ^: the start or "\n" (multiline)
            return _Edge(_NEWLINE if flags & _c.SRE_FLAG_MULTILINE else _NOTHING, anchor=True), False
        if forward and (at is _c.AT_END_STRING or at is _c.AT_END):
            # after \Z: the end; after $: "\n" or the end
            return _Edge(_NOTHING if at is _c.AT_END_STRING else _NEWLINE, anchor=True), False
        return _Edge(), True  # other assertions are zero-width: look past them
    return _Edge(), True  # refused elsewhere


def _seq_edge(items: list, flags: int, forward: bool) -> tuple[_Edge, bool]:
    edge = _Edge()
    for op, av in (items if forward else reversed(items)):
        e, open_ = _item_edge(op, av, flags, forward)
        edge = edge | e
        if not open_:
            return edge, False
    return edge, True


# --------------------------------------------------------------------------------------------
# translation


def _has_boundary(items) -> bool:
    for op, av in items:
        if op is _c.AT and av in (_c.AT_BOUNDARY, _c.AT_NON_BOUNDARY):
            return True
        if op is _c.SUBPATTERN and _has_boundary(av[3]):
            return True
        if op is _c.BRANCH and any(_has_boundary(alt) for alt in av[1]):
            return True
        if op in _REPEATS and _has_boundary(av[2]):
            return True
    return False


def _is_boundary(item) -> bool:
    return item[0] is _c.AT and item[1] in (_c.AT_BOUNDARY, _c.AT_NON_BOUNDARY)


def _single_run(item, flags: int) -> tuple[Ranges, int, Any, bool] | None:
    """(set, min, max, lazy) if `item` is one single-character item, possibly repeated at least
    once (x, [a-z], x+, x{2,5}); max is None for unbounded. None otherwise."""
    op, av = item
    if op in _SINGLE:
        return _char_set(op, av, flags), 1, 1, False
    if op in _REPEATS:
        lo, hi, body = av
        body = list(body)
        if lo >= 1 and len(body) == 1 and body[0][0] in _SINGLE:
            return (_char_set(body[0][0], body[0][1], flags), lo, None if hi is _c.MAXREPEAT else hi,
                    op is _c.MIN_REPEAT)
    return None


def _emit_run(s: Ranges, lo: int, hi: Any, lazy: bool) -> str:
    """s{lo,hi} (lo, hi already reduced by the character written out separately)."""
    if hi is not None and hi == 0:
        return ""
    quant = f"{{{lo},{'' if hi is None else hi}}}"
    return f"{_emit_set(s)}{quant}{'?' if lazy else ''}"


class _Translator:
    def __init__(self, pattern: str, boundaries: bool):
        self.pattern = pattern
        self.boundaries = boundaries  # whether edges are needed at all

    def refuse(self, what: str, fix: str) -> UnsupportedRegex:
        return UnsupportedRegex(
            f"unsupported regular expression {self.pattern!r}: {what}; policy regexes run on RE2, which matches "
            f"in time linear in the text and has no backtracking features. {fix}"
        )

    def edges(self, items: list, i: int, flags: int, left: _Edge, right: _Edge) -> tuple[_Edge, _Edge]:
        """What stands before and after items[i], looking through zero-width items and into the
        enclosing context when everything on that side can be empty."""
        if not self.boundaries:
            return left, right
        before, open_b = _seq_edge(items[:i], flags, forward=False)
        after, open_a = _seq_edge(items[i + 1:], flags, forward=True)
        return (before | left if open_b else before), (after | right if open_a else after)

    def seq(self, items: list, flags: int, left: _Edge, right: _Edge, initial: bool, final: bool) -> str:
        """RE2 source for a sequence. `initial` / `final`: nothing at all (not even a zero-width
        assertion) can come before / after it in a match, so a rewrite may consume the text's
        neighbouring character there."""
        out: list[str] = []
        replaced: dict[int, str] = {}
        for i, (op, av) in enumerate(items):
            if i in replaced:
                out.append(replaced[i])
                continue
            if self.boundaries and _has_boundary([(op, av)]):  # only boundaries need their neighbours
                l_edge, r_edge = self.edges(items, i, flags, left, right)
            else:
                l_edge, r_edge = left, right
            if _is_boundary((op, av)):
                out.append(self.boundary(av is _c.AT_BOUNDARY, items, i, flags, l_edge, r_edge, replaced,
                                         initial and i == 0, final and i == len(items) - 1))
                continue
            if self.boundaries and i + 1 < len(items) and _is_boundary(items[i + 1]):
                narrowed = self.narrow_before_boundary(items, i, flags, left, right, final and i + 2 == len(items))
                if narrowed is not None:
                    out.append(narrowed)
                    replaced[i + 1] = ""
                    continue
            out.append(self.item(op, av, flags, l_edge, r_edge, initial and i == 0, final and i == len(items) - 1))
        return "".join(out)

    def item(self, op, av, flags: int, left: _Edge, right: _Edge, initial: bool, final: bool) -> str:
        if op in _SINGLE:
            return _emit_set(_char_set(op, av, flags))
        if op is _c.SUBPATTERN:
            group, add, delete, body = av
            return "(?:" + self.seq(list(body), (flags | add) & ~delete, left, right, initial, final) + ")"
        if op is _c.BRANCH:
            return "(?:" + "|".join(self.seq(list(alt), flags, left, right, initial, final) for alt in av[1]) + ")"
        if op in _REPEATS:
            lo, hi, body = av
            unbounded = hi is _c.MAXREPEAT
            if lo > MAX_REPEAT or (not unbounded and hi > MAX_REPEAT):
                raise self.refuse(f"repetition count {{{lo},{'' if unbounded else hi}}} is above RE2's limit of "
                                  f"{MAX_REPEAT}", "Use counts of at most 1000, or a plain + or *.")
            body_list = list(body)
            inner_left, inner_right = left, right
            if self.boundaries and (unbounded or hi > 1):  # later rounds follow earlier ones
                last, _ = _seq_edge(body_list, flags, forward=False)
                first, _ = _seq_edge(body_list, flags, forward=True)
                inner_left, inner_right = left | last, right | first
            once = not unbounded and hi <= 1
            inner = self.seq(body_list, flags, inner_left, inner_right, initial and once, final and once)
            if unbounded:
                quant = {0: "*", 1: "+"}.get(lo, f"{{{lo},}}")
            elif lo == hi:
                quant = f"{{{lo}}}"
            elif lo == 0 and hi == 1:
                quant = "?"
            else:
                quant = f"{{{lo},{hi}}}"
            if op is _c.MIN_REPEAT:
                quant += "?"
            return f"(?:{inner}){quant}"
        if op is _c.AT:
            return self.anchor(av, flags, final)
        if op is _c.GROUPREF:
            raise self.refuse(f"backreference \\{av} (or (?P=name))",
                              "Write the repeated text out, or match each part with its own signal and combine "
                              "them in the decision's rules.")
        if op is _c.GROUPREF_EXISTS:
            raise self.refuse("conditional group (?(...)...|...)", "Write the alternatives with |.")
        if op in (_c.ASSERT, _c.ASSERT_NOT):
            direction, _ = av
            if direction < 0:
                kind = "lookbehind " + ("(?<=...)" if op is _c.ASSERT else "(?<!...)")
            else:
                kind = "lookahead " + ("(?=...)" if op is _c.ASSERT else "(?!...)")
            raise self.refuse(kind,
                              "Match the surrounding text itself, or give the condition its own keyword signal "
                              "and combine the signals in the decision's rules (all / not).")
        if op is getattr(_c, "ATOMIC_GROUP", None) or op is getattr(_c, "POSSESSIVE_REPEAT", None):
            raise self.refuse("atomic group (?>...) or possessive repeat (*+, ++, ?+, {m,n}+)",
                              "RE2 never backtracks, so write the group or repeat without the '>' or the extra '+'.")
        raise self.refuse(f"construct {op}", "Simplify the pattern.")  # pragma: no cover

    def anchor(self, at, flags: int, final: bool) -> str:
        multiline = flags & _c.SRE_FLAG_MULTILINE
        if at is _c.AT_BEGINNING_STRING:
            return r"\A"
        if at is _c.AT_END_STRING:
            return r"\z"
        if at is _c.AT_BEGINNING:
            return "(?m:^)" if multiline else r"\A"
        if at is _c.AT_END:
            if multiline:
                return "(?m:$)"
            if final:  # Python's $: the end, or just before a newline that ends the text
                return r"(?:\n?\z)"
            raise self.refuse("'$' before the end of the pattern",
                              "Move $ to the end of the pattern, or write \\Z (end of text) or (?m)$ (end of "
                              "any line).")
        raise self.refuse(f"anchor {at}", "Simplify the pattern.")  # pragma: no cover

    @staticmethod
    def kinds(edge: _Edge, word: Ranges) -> set[str]:
        k = set()
        if _intersect(edge.chars, word):
            k.add("w")
        if _intersect(edge.chars, _complement(word)) or edge.anchor:
            k.add("n")
        return k

    def boundary(self, is_b: bool, items: list, i: int, flags: int, left: _Edge, right: _Edge,
                 replaced: dict[int, str], initial: bool, final: bool) -> str:
        """\\b (is_b) or \\B at items[i], Unicode as in Python, from what stands on each side.

        A boundary holds where exactly one side is a word character (the start and end of the
        text count as non-word). Each case below is an exact rewrite for a search."""
        word = _word(flags)
        nonword = _complement(word)
        lk, rk = self.kinds(left, word), self.kinds(right, word)
        w, n = _emit_set(word), _emit_set(nonword)

        def needed(known: set[str]) -> Ranges:  # what the other side must be
            return word if (known == {"n"}) == is_b else nonword

        # Both sides decided by the pattern: the boundary always or never holds.
        if not left.outside and not right.outside and len(lk) == 1 and len(rk) == 1:
            return "" if (lk != rk) == is_b else _emit_set(_NOTHING)
        # One side is text beyond the match: consume that neighbour (or match the text's edge).
        if initial and left.outside and not lk and not right.outside and len(rk) == 1:
            return w if needed(rk) is word else rf"(?:\A|{n})"
        if final and right.outside and not rk and not left.outside and len(lk) == 1:
            return w if needed(lk) is word else rf"(?:{n}|\z)"
        # The left side decided, one (repeated) character class on the right: narrow its first character.
        run = _single_run(items[i + 1], flags) if i + 1 < len(items) else None
        if run is not None and not left.outside and len(lk) == 1:
            s, lo, hi, lazy = run
            replaced[i + 1] = _emit_set(_intersect(s, needed(lk))) + _emit_run(s, lo - 1, None if hi is None else hi - 1,
                                                                              lazy)
            return ""
        # At the start of the match, before one (repeated) character class: both ways, spelled out.
        if run is not None and initial and left.outside and not lk:
            s, lo, hi, lazy = run
            rest = _emit_run(s, lo - 1, None if hi is None else hi - 1, lazy)
            s_w, s_n = _emit_set(_intersect(s, word)), _emit_set(_intersect(s, nonword))
            if is_b:
                replaced[i + 1] = rf"(?:(?:\A|{n}){s_w}|{w}{s_n}){rest}"
            else:
                replaced[i + 1] = rf"(?:(?:\A|{n}){s_n}|{w}{s_w}){rest}"
            return ""
        name = r"\b" if is_b else r"\B"
        raise self.refuse(
            f"the word boundary {name} (item {i + 1} of its sequence) has neighbours that can be word or non-word "
            f"characters in ways sigroute cannot rewrite (RE2 knows no Unicode word boundary, so sigroute "
            f"rewrites {name} from what stands on each side)",
            f"Put {name} between a word character (a letter, digit, _, \\w, \\d) and a non-word character, a "
            f"single character class, or the start/end of the pattern, e.g. \\bword\\b.")

    def narrow_before_boundary(self, items: list, i: int, flags: int, left: _Edge, right: _Edge,
                               final: bool) -> str | None:
        """items[i] written with its last character narrowed for the boundary at items[i + 1],
        when the right side of that boundary is decided and items[i] is one (repeated) class."""
        run = _single_run(items[i], flags)
        if run is None:
            return None
        op, av = items[i + 1]
        is_b = av is _c.AT_BOUNDARY
        _, r_edge = self.edges(items, i + 1, flags, left, right)
        word = _word(flags)
        rk = self.kinds(r_edge, word)
        s, lo, hi, lazy = run
        if len(self.kinds(_Edge(s), word)) == 1:
            return None  # already decided: the boundary itself resolves it
        rest = _emit_run(s, lo - 1, None if hi is None else hi - 1, lazy)
        nonword = _complement(word)
        if not r_edge.outside and len(rk) == 1:
            keep = word if (rk == {"n"}) == is_b else nonword
            return rest + _emit_set(_intersect(s, keep))
        if final and r_edge.outside and not rk:  # at the end of the match: both ways, spelled out
            s_w, s_n = _emit_set(_intersect(s, word)), _emit_set(_intersect(s, nonword))
            w, n = _emit_set(word), _emit_set(nonword)
            if is_b:
                return rf"{rest}(?:{s_w}(?:{n}|\z)|{s_n}{w})"
            return rf"{rest}(?:{s_w}{w}|{s_n}(?:{n}|\z))"
        return None


def _translate(pattern: str, flags: int) -> str:
    try:
        re.compile(pattern, flags)  # Python's own verdict (and its messages) on what is valid
        parsed = _parser.parse(pattern, flags)
    except (re.error, OverflowError, RecursionError) as exc:
        raise ValueError(f"invalid regular expression {pattern!r}: {exc}") from None
    state_flags = parsed.state.flags
    if not state_flags & _c.SRE_FLAG_ASCII:
        state_flags |= _c.SRE_FLAG_UNICODE
    items = list(parsed)
    t = _Translator(pattern, _has_boundary(items))
    edge = _Edge(outside=True)
    return t.seq(items, state_flags, edge, edge, initial=True, final=True)


@functools.lru_cache(maxsize=1024)
def translate(pattern: str, case_sensitive: bool = True) -> str:
    """The RE2 pattern that matches wherever Python's `re.search(pattern, text)` would (with
    `re.IGNORECASE` unless `case_sensitive`). Raises `ValueError` for an invalid Python regex and
    `UnsupportedRegex` (a ValueError) for one RE2 cannot run; both messages quote the pattern."""
    return _translate(pattern, 0 if case_sensitive else re.IGNORECASE)


def _re2():
    try:
        import re2
    except ImportError:  # pragma: no cover - a server install always has it
        raise ImportError("policy regexes run on RE2: install google-re2 (pip install 'sigroute[server]')") from None
    return re2


def _options():
    options = _re2().Options()
    options.log_errors = False
    options.never_capture = True  # only "does it occur" is ever asked
    return options


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str, case_sensitive: bool = True):
    """The compiled RE2 program (search it with UTF-8 bytes: `.search(data, pos, endpos)`)."""
    re2 = _re2()

    source = translate(pattern, case_sensitive)
    try:
        program = re2.compile(source, _options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise UnsupportedRegex(
            f"unsupported regular expression {pattern!r}: RE2 cannot compile it ({detail}); {_TOO_LARGE_FIX}"
        ) from None
    if program.programsize > MAX_PROGRAM_SIZE:
        raise UnsupportedRegex(
            f"unsupported regular expression {pattern!r}: it compiles to {program.programsize:,} RE2 instructions, "
            f"more than the {MAX_PROGRAM_SIZE:,} allowed (beyond that RE2's fast automaton runs out of memory and "
            f"matching gets up to a thousand times slower); {_TOO_LARGE_FIX}"
        )
    return program


_TOO_LARGE_FIX = (
    "every \\w, \\W, \\b, \\d, \\s and case-insensitive letter is written out as the exact set of characters "
    "Python gives it (about 2,600 instructions for each \\w, \\W or \\b), and counted repeats {n} copy their "
    "body n times. Use fewer or smaller counted repeats of \\w and \\W, or a narrower class such as [A-Za-z0-9_]."
)


def regex_error(pattern: str, case_sensitive: bool = True) -> str | None:
    """Why `pattern` cannot be a policy regex (a sentence quoting it), or None if it can."""
    try:
        compile_regex(pattern, case_sensitive)
    except ValueError as exc:
        return str(exc)
    return None


def check_regex(pattern: str, case_sensitive: bool = True) -> None:
    """Raise `ValueError` with a message that quotes the pattern if it cannot be a policy regex."""
    message = regex_error(pattern, case_sensitive)
    if message is not None:
        raise ValueError(message)
