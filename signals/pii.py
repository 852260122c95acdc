"""Structured PII: a fast pattern detector, the `pii` signal, and mask/restore helpers.

`PiiDetector` finds e-mail addresses, phone numbers, payment cards, IBANs, US social security
numbers, IP addresses and a few more structured identifiers in text. Every recognizer is
sigroute's own: candidate patterns, validators and context words are in `signals.pii_recognizers`
(checksums, the IBAN length table, SSN rules, …); phone, card and IBAN matching are here.

* CREDIT_CARD: 12-19 digits in groups; Luhn always required; the issuer prefix (IIN) and the
  length decide the score; a 12-digit number needs a card word nearby ("card", "cc", "visa").
* IBAN_CODE: case-insensitive, spaced or not; the country's registered length, check digits and
  the ISO 13616 mod-97 checksum required.
* PHONE_NUMBER: one candidate pattern for international and national formats (+country code,
  (area) code, trunk "(0)", groups separated by space, dot or dash, extensions), then scored by
  structure (the `phonenumbers` package validates international numbers) and by context words
  ("phone", "call", "mobile", "fax", "reach me at" …). A bare group of digits with no phone-like
  shape and no phone word nearby is not reported. Dates, times, SSN-shaped and card-shaped
  numbers are rejected.
* US_SSN: 3-2-4 digits with one separator; the area, group and serial rules rule out numbers
  never issued; context words.
* IP_ADDRESS: dotted quads and IPv6 forms, parsed by the standard library's `ipaddress`.
* EMAIL_ADDRESS, URL: the domain is checked against the public suffix list that ships inside
  `tldextract` (never fetched: the detector builds its own offline extractor).

Scores: a validated checksum gives 1.0; a context word within a few words before (or just after)
the match adds 0.35 (to at least 0.4). `detect` keeps entities scoring at least `min_score`
(default 0.5), resolves overlaps (higher score wins, then the longer span) and returns them
sorted by start.

Cost: construction compiles a few dozen regular expressions and loads `phonenumbers` and
`tldextract` (tens of milliseconds; no NLP library, no model). Detection runs them, each behind a
cheap gate on the whole text (no run of 7 digits close together → no phone/card/SSN/NHS/ITIN
rule runs; no "@" → no e-mail rule), and phone verdicts (phonenumbers, ~100 µs each) are cached.
Measured with the default set: ~10-100 µs for a few sentences, ~0.3 ms for 2,000 characters.

Network: importing this module sets `TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS=""` (unless already set),
and the detector validates domains with a `tldextract.TLDExtract` that has no URLs and no disk
cache, so nothing is ever fetched.

PERSON, LOCATION, STREET_ADDRESS and ORGANIZATION are found by the token tagger on the shared
encoder (`signals.pii_tagger`): a `pii` signal or plugin that lists one of them runs it and
passes its findings to `detect(tagged=...)`. NRP (and spaCy's own PERSON/LOCATION/ORGANIZATION
with `PiiDetector(ner=True)`) needs a spaCy model package such as `en_core_web_sm`, offered only
when such a package is importable. Nothing is ever downloaded.
"""

from __future__ import annotations

import os

os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, ClassVar, Collection, Iterable, Mapping

from sigroute.signals.base import Signal, SignalResult
from sigroute.signals.context import RequestContext
from sigroute.signals.pii_recognizers import (
    EMAIL_CONTEXT,
    EMAIL_REGEX,
    PATTERN_SPECS,
    URL_BODY,
    URL_CONTEXT,
    card_brand_ok,
    iban_checksum_ok,
    iban_ok,
    luhn_ok,
)

__all__ = ["PiiDetector", "PiiEntity", "PiiConfigError", "Pii", "default_detector", "mask", "restore",
           "luhn_ok", "iban_checksum_ok", "iban_ok", "DEFAULT_ENTITIES", "STRUCTURED_ENTITIES",
           "OPTIONAL_ENTITIES", "PATTERN_ENTITIES", "NER_ENTITIES"]

# --------------------------------------------------------------------------------------------
# entity catalogue

#: Structured types the issue targets; on by default.
STRUCTURED_ENTITIES: tuple[str, ...] = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS",
)
#: Default set: the structured types plus other checksum-validated or strongly-shaped identifiers.
DEFAULT_ENTITIES: tuple[str, ...] = STRUCTURED_ENTITIES + ("CRYPTO", "UK_NHS", "US_ITIN")
#: Available on request: weaker, context-dependent or not personal on their own.
OPTIONAL_ENTITIES: tuple[str, ...] = (
    "URL", "DATE_TIME", "MAC_ADDRESS", "US_BANK_NUMBER", "US_PASSPORT", "US_DRIVER_LICENSE",
    "MEDICAL_LICENSE", "ABA_ROUTING_NUMBER",
)
PATTERN_ENTITIES: tuple[str, ...] = DEFAULT_ENTITIES + OPTIONAL_ENTITIES
#: Need a spaCy model package (PiiDetector(ner=True)).
NER_ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION", "ORGANIZATION", "NRP")
_SPACY_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION",
                 "FAC": "LOCATION", "ORG": "ORGANIZATION", "NORP": "NRP"}
SPACY_MODELS = ("en_core_web_lg", "en_core_web_md", "en_core_web_sm", "en_core_web_trf")

#: Found by the token tagger on the shared encoder (signals.pii_tagger); see `Pii` below.
from sigroute.signals.pii_tagger import TAGGER_ENTITIES  # noqa: E402

CONTEXT_BOOST = 0.35  # what a context word adds to a candidate's score
CONTEXT_MIN = 0.4  # the least a candidate with a context word scores
_PREFIX_CHARS = 48  # context window before a match (~5 words)
_SUFFIX_CHARS = 12  # and after it ("555 0100-Office", "(fax)")


class PiiConfigError(ValueError):
    """An entity type that this detector cannot provide (unknown, or NER without a model)."""


@dataclass(frozen=True, slots=True)
class PiiEntity:
    type: str
    start: int
    end: int
    score: float
    text: str  # the matched value; never put it in logs or signal values

    def as_span(self) -> dict[str, Any]:
        """The entity without its text: safe for logs and explain output."""
        return {"type": self.type, "start": self.start, "end": self.end, "score": round(self.score, 4)}


# --------------------------------------------------------------------------------------------
# validators


# --------------------------------------------------------------------------------------------
# rules


@dataclass(slots=True)
class _Rule:
    entity: str
    name: str
    regex: Any  # compiled `re` pattern
    score: float
    gate: str  # cheap test of the whole text that must pass before the regex runs
    context: Any = None  # compiled regex over the lower-cased window, or None
    # -> None (keep score) | False (drop) | float (new score)
    check: Callable[[str], Any] | None = None
    group: int = 0  # which regex group is the entity
    suffix_context: Any = None  # context words after the match (default: `context`)
    veto: Any = None  # compiled regex over the lower-cased text just before the match: drop it

    def __post_init__(self) -> None:
        if self.suffix_context is None:
            self.suffix_context = self.context


def _context_regex(words: Iterable[str]) -> Any:
    words = sorted({w.strip().lower() for w in words if w and w.strip()}, key=len, reverse=True)
    if not words:
        return None
    # a context word must start a word ("cc" in "cc 4111…", not in "account"); it may be a prefix
    # of a longer word ("phone" in "phones", "call" in "calling").
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(re.escape(w) for w in words) + ")")


# Gates: each is evaluated at most once per text, and only if a requested rule uses it.
_GATES: dict[str, Callable[[str], bool]] = {
    "always": lambda t: True,
    "digits": re.compile(r"\d\d").search,
    # 7+ digits close together (a "numeric island"): every phone, card, SSN, NHS, ITIN, account
    # number has one; ordinary prose with years and prices mostly has none.
    "d7": re.compile(r"\d(?:[\s.\-/()]{0,3}\d){6}").search,
    "ip4": re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d").search,
    "ip6": re.compile(r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f]{0,4}:").search,
    "at": lambda t: "@" in t,
    "dot": lambda t: "." in t,
    "iban": re.compile(r"[A-Za-z]{2}\d\d").search,
    "mac": re.compile(r"[0-9A-Fa-f]{2}[:-][0-9A-Fa-f]{2}|[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}").search,
}

# --- phone ------------------------------------------------------------------------------------
# One candidate: optional +CC, optional (area) or trunk (0), then 2-6 groups of digits separated
# by a single space, dot, dash or slash; or one run of 7-15 digits. An extension may follow.
_PHONE = re.compile(
    r"(?<![\w+/.\-:$€£#])"
    r"(?:\+\d{1,3}[ .\-]?(?:\(0\)[ .\-]?)?|00\d{1,3}[ .\-])?"
    r"(?:\(\d{1,5}\)[ .\-]?)?"
    r"\d{1,15}(?:[ .\-/]\d{1,10}){0,5}"
    r"(?:\s?(?:x|ext\.?|extension)\s?\d{1,6})?"
    r"(?![\w/%]|[.,\-]\d|:\d)",
    re.IGNORECASE,
)
_INTL_00 = re.compile(r"00\d{1,3}[ .\-]")
_PHONE_BODY = re.compile(r"^(?:\+\d{1,3}[ .\-]?(?:\(0\)[ .\-]?)?|00\d{1,3}[ .\-])?(?:\(\d{1,5}\)[ .\-]?)?")
# Before the number. Generic words that often precede other numbers ("number", "office",
# "home") are left out: "license number 1234-56-7890", "offices at 1200 5th Avenue".
PHONE_CONTEXT = (
    "phone", "telephone", "tel", "cell", "cellphone", "mobile", "mob", "call", "fax", "desk:",
    "office:", "home:", "work:", "contact", "reach", "dial", "text me", "sms", "whatsapp",
    "messages to", "message me", "answering", "hotline", "landline", "ph:", "ph.", "t:", "m:",
    "my number", "phone number", "ring",
)
# Words right before a number that say it is something else.
_PHONE_VETO = re.compile(r"\b(?:isbn|issn|zip|postcode|postal code|order|invoice|ticket|ref|reference|version|"
                         r"ver|serial|model|part|sku|case|id)\b[\s:#.]*(?:no\.?|number|nr\.?|#)?[\s:#.]*$")
_IP_VETO = re.compile(r"\b(?:version|ver\.?|v|release|build|rev)\s*$")
# Right after the number ("555 0100-Office", "555 0101 fax").
PHONE_SUFFIX_CONTEXT = ("office", "fax", "mobile", "cell", "home", "work", "desk", "phone", "tel")
_DATE_LIKE = re.compile(
    r"^(?:\d{4}[\-./]\d{1,2}[\-./]\d{1,2}|\d{1,2}[\-./]\d{1,2}[\-./](?:\d{4}|\d{2}))(?:\s+\d{1,2})?$"
)
_SSN_SHAPE = re.compile(r"^\d{3}([\- .])\d{2}\1\d{4}$")


def _phone_check_factory() -> Callable[[str], Any]:
    import phonenumbers

    # phonenumbers costs ~100 µs a number; conversations resend their history every turn, so the
    # verdicts are cached (bounded; keyed by the candidate string).
    @lru_cache(maxsize=4096)
    def check(candidate: str) -> Any:
        digits = re.sub(r"\D", "", candidate.split("x")[0].split("X")[0].split("ext")[0])
        n = len(digits)
        if n < 7 or n > 15:
            return False
        if _DATE_LIKE.match(candidate) or _SSN_SHAPE.match(candidate):
            return False
        if len(set(digits)) == 1:
            return False
        body = _PHONE_BODY.sub("", candidate, count=1)
        seps = set(re.sub(r"[\dxX]|ext\.?|extension", "", body.split("x")[0]))
        if ("." in seps or "/" in seps) and len(seps) > 1:
            return False  # "2.20 9.11 10.07", "5/8 125 3/4": numbers in a table, not a phone
        if set(digits) <= {"0", "1"}:
            return False  # binary
        plus = candidate.startswith("+") or bool(_INTL_00.match(candidate))
        paren = "(" in candidate
        groups = len(re.findall(r"\d+", candidate))
        if groups == 1 and not plus:
            # a bare run of digits: only a complete 10-11 digit national number looks like a phone
            score = 0.3 if 9 <= n <= 12 else 0.15
        elif plus or paren:
            score = 0.5
        else:
            score = 0.4
        if plus:
            try:
                num = phonenumbers.parse(candidate, None)
                if phonenumbers.is_valid_number(num):
                    score = 0.75
                elif phonenumbers.is_possible_number(num):
                    score = max(score, 0.5)
            except phonenumbers.NumberParseException:
                pass
        else:
            nanp = digits[1:] if n == 11 and digits[0] == "1" else digits
            if len(nanp) == 10 and nanp[0] in "23456789" and nanp[3] in "23456789" and (paren or groups >= 3):
                score = max(score, 0.6)  # NANP shape (NXX) NXX-XXXX, optionally after a 1
        return score

    return check


# --- card ---------------------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\w\-.+])\d{4}(?:[ \-]?\d{1,7}){1,4}(?![\w\-]|\.\d)")
CARD_CONTEXT = ("credit", "card", "visa", "mastercard", "master card", "cc", "amex", "american express",
                "discover", "jcb", "diners", "maestro", "debit", "payment", "pay with", "charge",
                "cvv", "expir")


def _card_check(candidate: str) -> Any:
    digits = candidate.replace(" ", "").replace("-", "")
    if not digits.isdigit() or not 12 <= len(digits) <= 19:
        return False
    if " " in candidate and "-" in candidate:
        return False
    if len(set(digits)) == 1 or not luhn_ok(digits):
        return False
    if card_brand_ok(digits):
        return 1.0 if len(digits) >= 13 else 0.3  # 12 digits: only with a card word nearby
    return 0.3


# --- IBAN ---------------------------------------------------------------------------------------
_IBAN = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){11,30}(?![A-Za-z0-9])")
IBAN_CONTEXT = ("iban", "bank", "account", "transfer", "wire", "transaction", "sepa")


def _iban_check(candidate: str) -> Any:
    return 1.0 if iban_ok(candidate) else False


# Trailing groups that a greedy IBAN match may have swallowed ("… GB29NWBK60161331926819 2024"):
# try shorter prefixes cut at a separator.
def _iban_trim(text: str, start: int, end: int, check: Callable[[str], Any]) -> tuple[int, int, Any]:
    value = check(text[start:end])
    while value is False:
        cut = max(text.rfind(" ", start, end), text.rfind("-", start, end))
        if cut <= start:
            return start, end, False
        end = cut
        value = check(text[start:end])
    return start, end, value


# --------------------------------------------------------------------------------------------
# the detector


class PiiDetector:
    """Find structured PII in text. Thread-safe after construction; build once, reuse."""

    def __init__(self, ner: bool = False, default_entities: Collection[str] = DEFAULT_ENTITIES,
                 min_score: float = 0.5, spacy_model: str | None = None):
        self.min_score = float(min_score)
        self._rules: dict[str, list[_Rule]] = {}
        self._tld = None
        self._build_rules()
        self._nlp = None
        if ner:
            self._nlp = _load_spacy(spacy_model)
        self.supported_entities: frozenset[str] = frozenset(self._rules) | (
            frozenset(NER_ENTITIES) if self._nlp is not None else frozenset()) | frozenset(TAGGER_ENTITIES)
        self.default_entities: frozenset[str] = self.resolve(default_entities)
        self.detect("warm up: mail a.b@example.com, call +1 212 555 0100, card 4111 1111 1111 1111, "
                    "IBAN GB82 WEST 1234 5698 7654 32, 10.0.0.1, https://example.org, 2024-01-02")

    # -- construction -------------------------------------------------------------------------
    def _build_rules(self) -> None:
        import tldextract

        # Offline public-suffix check: the snapshot bundled with tldextract, no URLs, no disk cache.
        self._tld = tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)
        tld = self._tld

        def domain_ok(value: str) -> Any:
            return None if tld(value.rsplit("@", 1)[-1]).fqdn else False

        def add(rule: _Rule) -> None:
            self._rules.setdefault(rule.entity, []).append(rule)

        # e-mail: our pattern, the offline domain check (a real public suffix → 1.0)
        add(_Rule("EMAIL_ADDRESS", "email", EMAIL_REGEX, 0.5, "at", _context_regex(EMAIL_CONTEXT),
                  lambda v: 1.0 if domain_ok(v) is None else False))
        add(_Rule("PHONE_NUMBER", "phone", _PHONE, 0.4, "d7", _context_regex(PHONE_CONTEXT), _phone_check_factory(),
                  suffix_context=_context_regex(PHONE_SUFFIX_CONTEXT), veto=_PHONE_VETO))
        add(_Rule("CREDIT_CARD", "card", _CARD, 0.3, "d7", _context_regex(CARD_CONTEXT), _card_check))
        add(_Rule("IBAN_CODE", "iban", _IBAN, 0.5, "iban", _context_regex(IBAN_CONTEXT), _iban_check))
        for spec in PATTERN_SPECS:
            add(_Rule(spec.entity, spec.name, spec.regex, spec.score, spec.gate, _context_regex(spec.context),
                      spec.check, veto=_IP_VETO if spec.entity == "IP_ADDRESS" else None))
        self._add_url_rules(domain_ok)

    def _add_url_rules(self, domain_ok: Callable[[str], Any]) -> None:
        """URLs, bounded on both sides (so "Mr.De" in "Mr.Derman" is not a candidate); scheme or
        www → 0.6; a bare domain needs a lower-case (or all upper-case) TLD, and a bare two-letter
        TLD without a path scores 0.3 (needs a context word such as "website")."""
        ctx = _context_regex(URL_CONTEXT)

        def host_of(value: str) -> str:
            return re.sub(r"^(?i:https?://)", "", value).split("/")[0].split("?")[0].split("#")[0].split(":")[0]

        def with_scheme(value: str) -> Any:
            return None if domain_ok(host_of(value)) is None else False

        def bare(value: str) -> Any:
            host = host_of(value)
            tld = host.rsplit(".", 1)[-1]
            if not (tld.islower() or tld.isupper()) or domain_ok(host) is False:
                return False
            if host.lower().startswith("www"):
                return 0.6
            if len(tld) == 2 and "/" not in value:
                return 0.3
            return None

        rules = self._rules.setdefault("URL", [])
        rules.append(_Rule("URL", "url (scheme)", re.compile(r"(?i)\bhttps?://" + URL_BODY + r"(?<![.,;:!?)])"),
                           0.6, "dot", ctx, with_scheme))
        rules.append(_Rule("URL", "url (bare)",
                           re.compile(r"(?i)(?<![\w.@/\-])" + URL_BODY + r"(?<![.,;:!?)])(?![\w\-@])"),
                           0.5, "dot", ctx, bare))

    def clear_caches(self) -> None:
        """Forget cached verdicts (phone validation); for cold-path benchmarks."""
        for rules in self._rules.values():
            for rule in rules:
                clear = getattr(rule.check, "cache_clear", None)
                if clear is not None:
                    clear()

    def resolve(self, entities: Collection[str] | None) -> frozenset[str]:
        """Validate entity names; None → the default set."""
        if entities is None:
            return getattr(self, "default_entities", None) or frozenset(DEFAULT_ENTITIES)
        wanted = frozenset(str(e).upper() for e in entities)
        unknown = wanted - self.supported_entities
        if unknown:
            ner_missing = sorted(unknown & set(NER_ENTITIES))
            if ner_missing:
                raise PiiConfigError(
                    f"PII entity types {ner_missing} need named-entity recognition: construct the "
                    f"detector with ner=True and install a spaCy model package (one of {list(SPACY_MODELS)}); "
                    f"sigroute never downloads models")
            raise PiiConfigError(
                f"unknown PII entity types {sorted(unknown)}; available: {sorted(self.supported_entities)}")
        return wanted

    # -- detection ----------------------------------------------------------------------------
    def detect(self, text: str, entities: Collection[str] | None = None,
               min_score: float | None = None, tagged: Iterable[PiiEntity] = ()) -> list[PiiEntity]:
        """Entities of the requested types (default set when None) scoring at least `min_score`,
        non-overlapping, sorted by start. `tagged`: entities the token tagger found in `text`
        (signals.pii_tagger); those of requested types join before overlaps are resolved."""
        if not text:
            return []
        wanted = self.default_entities if entities is None else (
            entities if isinstance(entities, frozenset) and entities <= self.supported_entities
            else self.resolve(entities))
        floor = self.min_score if min_score is None else float(min_score)
        gates: dict[str, bool] = {}
        found: list[PiiEntity] = []
        lower: str | None = None
        for entity in wanted:
            rules = self._rules.get(entity)
            if rules is None:
                continue
            for rule in rules:
                g = gates.get(rule.gate)
                if g is None:
                    g = gates[rule.gate] = bool(_GATES[rule.gate](text))
                if not g:
                    continue
                for m in rule.regex.finditer(text):
                    start, end = m.span(rule.group)
                    if start == end:
                        continue
                    if _part_of_number(text, start, end):
                        continue
                    if rule.veto is not None:
                        if lower is None:
                            lower = text.lower()
                        if rule.veto.search(lower, max(0, start - 24), start):
                            continue
                    score = rule.score
                    if rule.check is not None:
                        if entity == "IBAN_CODE":
                            start, end, verdict = _iban_trim(text, start, end, rule.check)
                        else:
                            verdict = rule.check(text[start:end])
                        if verdict is False:
                            continue
                        if verdict is not None and verdict is not True:
                            score = float(verdict)
                        elif verdict is True:
                            score = 1.0
                    if score < 1.0 and rule.context is not None and score + CONTEXT_BOOST >= floor:
                        if lower is None:
                            lower = text.lower()
                        if rule.context.search(lower, max(0, start - _PREFIX_CHARS), start) or \
                                rule.suffix_context.search(lower, end, min(len(text), end + _SUFFIX_CHARS)):
                            score = min(1.0, max(CONTEXT_MIN, score + CONTEXT_BOOST))
                    if score >= floor:
                        found.append(PiiEntity(entity, start, end, score, text[start:end]))
        if self._nlp is not None and wanted & set(NER_ENTITIES):
            found.extend(self._ner(text, wanted, floor))
        found.extend(e for e in tagged if e.type in wanted and e.score >= floor)
        return _resolve_overlaps(found)

    def _ner(self, text: str, wanted: frozenset[str], floor: float) -> list[PiiEntity]:
        out = []
        score = 0.85  # a spaCy entity: no checksum, but a model's judgement in context
        if score < floor:
            return out
        for ent in self._nlp(text).ents:
            etype = _SPACY_LABELS.get(ent.label_)
            if etype in wanted:
                out.append(PiiEntity(etype, ent.start_char, ent.end_char, score, ent.text))
        return out


def _part_of_number(text: str, start: int, end: int) -> bool:
    """Whether a match that starts or ends with a digit continues a decimal or a grouped number
    ("0.2617993833", "10,000 1001", "4,00033.44")."""
    if start >= 2 and text[start].isdigit() and text[start - 1] in ".," and text[start - 2].isdigit():
        return True
    if end + 1 < len(text) and text[end - 1].isdigit() and text[end] in ".," and text[end + 1].isdigit():
        return True
    return False


def _resolve_overlaps(found: list[PiiEntity]) -> list[PiiEntity]:
    if len(found) < 2:
        return found
    found.sort(key=lambda e: (-e.score, -(e.end - e.start), e.start))
    kept: list[PiiEntity] = []
    for e in found:
        if all(e.end <= k.start or e.start >= k.end for k in kept):
            kept.append(e)
    kept.sort(key=lambda e: e.start)
    return kept


def _load_spacy(name: str | None):
    import importlib.util

    candidates = (name,) if name else SPACY_MODELS
    for model in candidates:
        if model and importlib.util.find_spec(model) is not None:
            import spacy

            return spacy.load(model, disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
    raise PiiConfigError(
        f"ner=True needs an installed spaCy model package ({', '.join(c for c in candidates if c)}); none is "
        f"importable. Install one (e.g. the en_core_web_sm wheel) or use the pattern types only; "
        f"sigroute never downloads models")


_DEFAULT_LOCK = threading.Lock()


@lru_cache(maxsize=None)
def _cached_detector(ner: bool) -> PiiDetector:
    return PiiDetector(ner=ner)


def default_detector(ner: bool = False) -> PiiDetector:
    """The process-wide detector (built on first use; with ner=True that loads spaCy and its model)."""
    with _DEFAULT_LOCK:
        return _cached_detector(ner)


# --------------------------------------------------------------------------------------------
# mask / restore


def mask(text: str, entities: Iterable[PiiEntity]) -> tuple[str, dict[str, str]]:
    """Replace each entity by a placeholder such as `<EMAIL_ADDRESS_1>`.

    Returns the masked text and the mapping placeholder → original value. The same value (same
    type, same text) gets the same placeholder everywhere; placeholders already present in the
    text are skipped so that `restore` cannot touch text that was there before.
    """
    ents = sorted(entities, key=lambda e: e.start)
    mapping: dict[str, str] = {}
    by_value: dict[tuple[str, str], str] = {}
    counters: dict[str, int] = {}
    parts: list[str] = []
    pos = 0
    for e in ents:
        if e.start < pos:  # overlapping input: keep the first
            continue
        original = text[e.start:e.end]
        key = (e.type, original)
        placeholder = by_value.get(key)
        if placeholder is None:
            n = counters.get(e.type, 0)
            while True:
                n += 1
                placeholder = f"<{e.type}_{n}>"
                if placeholder not in text:
                    break
            counters[e.type] = n
            by_value[key] = placeholder
            mapping[placeholder] = original
        parts.append(text[pos:e.start])
        parts.append(placeholder)
        pos = e.end
    parts.append(text[pos:])
    return "".join(parts), mapping


def restore(text: str, mapping: Mapping[str, str]) -> str:
    """Put the original values back in place of the placeholders `mask` produced."""
    if not mapping or not text:
        return text
    rx = re.compile("|".join(re.escape(p) for p in sorted(mapping, key=len, reverse=True)))
    return rx.sub(lambda m: mapping[m.group(0)], text)


# --------------------------------------------------------------------------------------------
# the signal


def _norm_value(value: str) -> str:
    return " ".join(value.split()).casefold()


class Pii(Signal):
    """`signals.pii.<name>`: matches when the request's text holds personal data.

    Config: `entities` (types that trigger; empty = the detector's default set), `allow` (types
    that never trigger), `allow_values` (values that never trigger, compared case-insensitively
    with whitespace normalized), `threshold` (minimum score), `scope` (last_user | user | all).
    The value lists the triggering entities' types, spans and scores, never their text.
    """

    type: ClassVar[str] = "pii"
    needs_embedding: ClassVar[bool] = False

    @classmethod
    def build(cls, name: str, config: Any, resources: Any) -> "Pii":
        return cls(name, config, resources=resources)

    @staticmethod
    def config_needs_encoder(config: Any) -> bool:
        """Whether this configuration asks for a type the token tagger finds (then the policy loads the encoder)."""
        return bool(set(getattr(config, "entities", None) or ()) & set(TAGGER_ENTITIES))

    def __init__(self, name: str, config: Any, detector: PiiDetector | None = None, resources: Any = None):
        super().__init__(name, config)
        self.detector = detector or default_detector()
        listed = list(getattr(config, "entities", None) or ())
        base = self.detector.resolve(listed) if listed else self.detector.default_entities
        allow = {str(a).upper() for a in (getattr(config, "allow", None) or ())}
        self.entities: frozenset[str] = frozenset(base - allow)
        self.allow_values: frozenset[str] = frozenset(
            _norm_value(v) for v in (getattr(config, "allow_values", None) or ()))
        threshold = getattr(config, "threshold", None)
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.scope = getattr(config, "scope", None) or "user"
        # names, places, addresses, organisations: the token tagger, on word-piece states the
        # signal engine computes with the request's embedding (needs_embedding, token_texts)
        from sigroute.signals import pii_tagger

        self._tagging = pii_tagger
        self.tagger = pii_tagger.tagger_for(self.entities, resources)
        self.needs_embedding = self.tagger is not None

    def embedding_texts(self, ctx: RequestContext) -> tuple[str, ...]:
        return ()

    def token_texts(self, ctx: RequestContext) -> tuple[str, ...]:
        return tuple(self._tagging.scope_parts(ctx, self.scope)) if self.tagger is not None else ()

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        text = ctx.text_for_scope(self.scope)
        if not text or not self.entities:
            return SignalResult(False, 0.0, {"entities": []})
        tagged = () if self.tagger is None else self._tagging.tagged_entities(
            self.tagger, text, self._tagging.scope_parts(ctx, self.scope), ctx.token_states, self.entities)
        found = self.detector.detect(text, self.entities, min_score=self.threshold, tagged=tagged)
        if self.allow_values:
            found = [e for e in found if _norm_value(e.text) not in self.allow_values]
        if not found:
            return SignalResult(False, 0.0, {"entities": []})
        return SignalResult(True, max(e.score for e in found), {"entities": [e.as_span() for e in found]})
