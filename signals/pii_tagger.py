"""Names, places, street addresses and organisations: a token tagger on the shared encoder.

The structured detector (`signals.pii`) finds e-mails, cards, phones … with patterns; people,
places, addresses and organisations have no pattern. `PiiTagger` finds PERSON, LOCATION,
STREET_ADDRESS and ORGANIZATION with a small shipped head over the encoder's own word-piece
states — the last layer of the same all-MiniLM-L6-v2 forward pass that gives the request its
sentence embedding (`Encoder.encode_with_tokens`). No spaCy, no second model, nothing downloaded.

How a text is tagged:

1. Features per word piece: its last-layer state (384 numbers) and a few spelling facts of the
   word it belongs to, which the uncased encoder cannot see (starts with a capital, all capitals,
   holds a digit, all digits, first word of the text or of a sentence, first piece of its word,
   punctuation, a capital inside the word as in a "CamelCase" user handle), followed by the same
   for the piece before and the piece after.
2. The head (one hidden layer, ReLU, softmax over BIO tags: O, B-/I- × 4 types), numpy only:
   two small matrix products on one BLAS thread, about 1 ms for a sentence.
3. Decoding at word level (a word's tags are those of its first piece): a word is inside an
   entity when P(O) < 0.5; a run of such words on one line is one candidate, typed by the
   largest mean P(B-T) + P(I-T) over its words, and kept when that mean (its score) reaches T's
   threshold (chosen on the validation split, stored in the head's metadata). A run also ends
   before a word whose likeliest tag is B- of another type than the run's first word's
   ("Norway 0150": a country, then a postcode). Its character offsets are those of its first and
   last word in the original text, punctuation trimmed. A few shape rules (`_plausible`, chosen
   on the validation split) drop spans without a letter and addresses that are one word without
   a digit. A place that follows an address on the same line after a comma joins it ("12 Elm
   St, Tubize, Belgium" is one address, as the training data labels addresses on one line).

Texts longer than the encoder's window are tagged window by window (`RequestEmbedder
.embed_with_tokens` encodes what was left over); an entity cut by a window's edge may be split.

The head lives in ``signals/trained/pii_tagger/`` (``head.npz`` + ``head.json``: labels, feature
list, thresholds, the encoder fingerprint it was trained on, the training data's sha256 and the
split rule, and the validation and held-out scores). Retrain with
``python -m sigroute.signals.pii_tagger_training --out DIR``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

#: the types this tagger finds (policy names)
TAGGER_ENTITIES: tuple[str, ...] = ("PERSON", "LOCATION", "STREET_ADDRESS", "ORGANIZATION")
LABELS: tuple[str, ...] = ("O",) + tuple(f"{p}-{t}" for t in TAGGER_ENTITIES for p in ("B", "I"))
SPELLING_FEATURES: tuple[str, ...] = ("capitalized", "all_caps", "has_digit", "all_digits", "text_start",
                                      "sentence_start", "word_start", "punctuation", "inner_capital")
SHIPPED_DIR = Path(__file__).parent / "trained" / "pii_tagger"
HEAD_FORMAT = 1


class TaggerUnavailable(RuntimeError):
    """The shipped head is missing, unreadable, or was trained on another encoder."""


@dataclass(frozen=True, slots=True)
class TaggedSpan:
    type: str
    start: int
    end: int
    score: float


def spelling_features(text: str, offsets: np.ndarray, words: np.ndarray) -> np.ndarray:
    """(pieces, len(SPELLING_FEATURES)) float32: facts about the word each piece belongs to."""
    n = len(words)
    out = np.zeros((n, len(SPELLING_FEATURES)), dtype=np.float32)
    if n == 0:
        return out
    # word boundaries: the first and last piece of each word
    first_of_word: dict[int, int] = {}
    last_of_word: dict[int, int] = {}
    for i, w in enumerate(words.tolist()):
        first_of_word.setdefault(w, i)
        last_of_word[w] = i
    previous_word_text = ""
    previous_word = None
    for i in range(n):
        w = int(words[i])
        start = int(offsets[first_of_word[w], 0])
        end = int(offsets[last_of_word[w], 1])
        word = text[start:end]
        if w != previous_word and i > 0:
            previous_word_text = text[int(offsets[first_of_word[int(words[i - 1])], 0]):int(offsets[i - 1, 1])]
        row = out[i]
        row[0] = word[:1].isupper()
        row[1] = len(word) > 1 and word.isupper()
        row[2] = any(c.isdigit() for c in word)
        row[3] = word.isdigit()
        row[4] = first_of_word[w] == 0
        row[5] = row[4] or previous_word_text in (".", "!", "?", ":", "\n") or "\n" in text[
            int(offsets[i - 1, 1]) if i else 0:start]
        row[6] = first_of_word[w] == i
        row[7] = not any(c.isalnum() for c in word)
        row[8] = any(a.islower() and b.isupper() for a, b in zip(word, word[1:]))  # camelCase: a handle
        previous_word = w
    return out


class PiiTagger:
    """The shipped head: token states in, typed character spans out. Thread-safe (read-only)."""

    def __init__(self, weights: dict[str, np.ndarray], meta: dict[str, Any]):
        self.meta = meta
        self.labels: tuple[str, ...] = tuple(meta["labels"])
        self.thresholds: dict[str, float] = {t: float(v) for t, v in meta["thresholds"].items()}
        self.w1 = np.ascontiguousarray(weights["w1"], dtype=np.float32)
        self.b1 = np.ascontiguousarray(weights["b1"], dtype=np.float32)
        self.w2 = np.ascontiguousarray(weights["w2"], dtype=np.float32)
        self.b2 = np.ascontiguousarray(weights["b2"], dtype=np.float32)
        self.mean = np.ascontiguousarray(weights["mean"], dtype=np.float32)
        self.scale = np.ascontiguousarray(weights["scale"], dtype=np.float32)
        self._begin_label = np.array([label.startswith("B-") for label in self.labels])
        self._type_columns = {t: [self.labels.index(f"B-{t}"), self.labels.index(f"I-{t}")]
                              for t in TAGGER_ENTITIES}

    @classmethod
    def load(cls, directory: str | Path | None = None, encoder_fingerprint: str | None = None) -> "PiiTagger":
        directory = Path(directory) if directory is not None else SHIPPED_DIR
        try:
            meta = json.loads((directory / "head.json").read_text())
            with np.load(directory / "head.npz") as archive:
                weights = {k: archive[k] for k in archive.files}
        except (OSError, ValueError) as exc:
            raise TaggerUnavailable(f"no readable PII tagger head in {directory} ({exc}); retrain with "
                                    f"python -m sigroute.signals.pii_tagger_training --out {directory}") from exc
        if meta.get("format") != HEAD_FORMAT:
            raise TaggerUnavailable(f"PII tagger head in {directory} has format {meta.get('format')}, "
                                    f"this version reads {HEAD_FORMAT}")
        if meta.get("spelling_features") != list(SPELLING_FEATURES):
            raise TaggerUnavailable(f"PII tagger head in {directory} was trained on spelling features "
                                    f"{meta.get('spelling_features')}, this version computes {list(SPELLING_FEATURES)}; "
                                    f"retrain it")
        if encoder_fingerprint is not None and meta.get("encoder_fingerprint") != encoder_fingerprint:
            raise TaggerUnavailable(
                f"the PII tagger head in {directory} was trained on encoder {meta.get('encoder_fingerprint')}, "
                f"but the policy's encoder is {encoder_fingerprint}; retrain it for this encoder")
        return cls(weights, meta)

    # -- the head ------------------------------------------------------------------------------
    def features(self, text: str, states) -> np.ndarray:
        """Per piece: its state and spelling facts, then the same for the piece before and after."""
        return piece_features(text, states, int(self.meta.get("neighbors", 1)))

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """(pieces, labels) softmax probabilities."""
        x = (features - self.mean) * self.scale
        with _one_blas_thread():
            hidden = np.maximum(x @ self.w1 + self.b1, 0.0)
            logits = hidden @ self.w2 + self.b2
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        return logits

    # -- decoding ------------------------------------------------------------------------------
    def tag(self, text: str, windows: Sequence[Any] | Any, entities: Iterable[str] | None = None,
            thresholds: dict[str, float] | None = None) -> list[TaggedSpan]:
        """Spans of the wanted types (default: all four) in `text`, from its `TokenStates`
        (one, or a sequence of windows whose offsets all refer to `text`)."""
        if not isinstance(windows, (list, tuple)):
            windows = [windows]
        wanted = frozenset(TAGGER_ENTITIES if entities is None else entities) & frozenset(TAGGER_ENTITIES)
        if not wanted:
            return []
        limits = {**self.thresholds, **(thresholds or {})}
        spans: list[TaggedSpan] = []
        for states in windows:
            if len(states.words) == 0:
                continue
            probs = self.probabilities(self.features(text, states))
            spans.extend(self._decode(text, probs, states.offsets, states.words, wanted, limits))
        return spans

    def _decode(self, text: str, probs: np.ndarray, offsets: np.ndarray, words: np.ndarray,
                wanted: frozenset[str], limits: dict[str, float]) -> list[TaggedSpan]:
        # one row per word: the probabilities of its first piece, the offsets of the whole word
        word_ids = words.tolist()
        firsts: list[int] = []
        ends: list[int] = []
        for i, w in enumerate(word_ids):
            if i == 0 or w != word_ids[i - 1]:
                firsts.append(i)
                ends.append(int(offsets[i, 1]))
            else:
                ends[-1] = int(offsets[i, 1])
        word_probs = probs[firsts]
        by_type = np.stack([word_probs[:, cols].sum(axis=1) for cols in self._columns], axis=1)  # (words, types)
        inside = word_probs[:, 0] < self.word_threshold
        # a run ends before a word whose likeliest tag begins an entity of another type than the
        # run's first word ("Norway 0150": a country, then the postcode of an address)
        word_type = by_type.argmax(axis=1)
        begins = self._begin_label[word_probs.argmax(axis=1)]
        spans: list[TaggedSpan] = []
        k = 0
        while k < len(firsts):
            if not inside[k]:
                k += 1
                continue
            run_end = k
            while run_end + 1 < len(firsts) and inside[run_end + 1] and not _line_break(
                    text, ends[run_end], int(offsets[firsts[run_end + 1], 0])) and (
                    not (begins[run_end + 1] and word_type[run_end + 1] != word_type[k])):
                run_end += 1
            totals = by_type[k:run_end + 1].mean(axis=0)
            best = int(np.argmax(totals))
            kind = TAGGER_ENTITIES[best]
            score = float(totals[best])
            if score >= limits.get(kind, 0.5):
                start, end = _trim(text, int(offsets[firsts[k], 0]), ends[run_end])
                if end > start and _plausible(kind, text[start:end]):
                    spans.append(TaggedSpan(kind, start, end, score))
            k = run_end + 1
        spans = _places_joined_to_addresses(text, spans)
        return [s for s in spans if s.type in wanted]

    @property
    def word_threshold(self) -> float:
        """A word is part of an entity when P(O) is below 1 - this."""
        return 1.0 - float(self.meta.get("word_threshold", 0.5))

    @property
    def _columns(self) -> list[list[int]]:
        return [self._type_columns[t] for t in TAGGER_ENTITIES]


def piece_features(text: str, states, neighbors: int = 1) -> np.ndarray:
    base = np.concatenate([states.states, spelling_features(text, states.offsets, states.words)], axis=1)
    if not neighbors:
        return base
    parts = [base]
    for shift in range(1, neighbors + 1):
        before = np.zeros_like(base)
        after = np.zeros_like(base)
        if len(base) > shift:
            before[shift:] = base[:-shift]
            after[:-shift] = base[shift:]
        parts += [before, after]
    return np.concatenate(parts, axis=1)


def _plausible(kind: str, value: str) -> bool:
    """Shape rules chosen on the validation split: an address has letters, and a digit or
    more than one word (bare numbers there are phone numbers and postcodes, lone words labels
    such as "Phone:"); any entity has a letter."""
    if not any(c.isalpha() for c in value):
        return False
    if kind == "STREET_ADDRESS":
        return any(c.isdigit() for c in value) or len(value.split()) > 1
    return True


def _places_joined_to_addresses(text: str, spans: list[TaggedSpan]) -> list[TaggedSpan]:
    """An address written on one line takes in the town and country that follow it ("4 Elm St,
    Tubize, Belgium" is one STREET_ADDRESS, as the training data labels it): a LOCATION that
    follows a STREET_ADDRESS on the same line, separated only by a comma and spaces, joins it."""
    out: list[TaggedSpan] = []
    for span in spans:
        previous = out[-1] if out else None
        if (previous is not None and span.type == "LOCATION" and previous.type == "STREET_ADDRESS"
                and text[previous.end:span.start].strip(" ,") == "" and "," in text[previous.end:span.start]):
            out[-1] = TaggedSpan(previous.type, previous.start, span.end, previous.score)
        else:
            out.append(span)
    return out


def _line_break(text: str, end: int, start: int) -> bool:
    """Whether a line break separates two words (entities rarely run across lines)."""
    return "\n" in text[end:start]


_EDGE = " \t\n,.;:!?()[]{}\"'-"


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    """Drop punctuation and spaces at the edges of a span ("Boston." -> "Boston")."""
    while start < end and text[start] in _EDGE:
        start += 1
    while end > start and text[end - 1] in _EDGE:
        end -= 1
    return start, end


# OpenBLAS splits even a (30 × 1176) @ (1176 × 256) product over all cores; on a busy few-core
# machine the threads wait on each other: measured 30 ms a sentence instead of 0.7 ms on one
# thread. The head's products are run on one BLAS thread (threadpoolctl, ~20 µs a call).
_BLAS = None


def _one_blas_thread():
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController().select(user_api="blas")
        except Exception:  # no threadpoolctl: numpy's own threading
            _BLAS = False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=1)


_SHIPPED: dict[str, PiiTagger] = {}


def shipped_tagger(encoder_fingerprint: str | None = None) -> PiiTagger:
    """The process's copy of the shipped head (checked against the encoder's fingerprint)."""
    key = encoder_fingerprint or ""
    tagger = _SHIPPED.get(key)
    if tagger is None:
        tagger = _SHIPPED[key] = PiiTagger.load(None, encoder_fingerprint)
    return tagger


# --------------------------------------------------------------------------------------------
# glue for the `pii` signal and plugin (kept here so signals/pii.py only calls two functions)


def tagger_for(entities: Iterable[str], resources: Any) -> PiiTagger | None:
    """The shipped tagger when `entities` asks for one of its types, else None. Raises
    `signals.pii.PiiConfigError` when it is asked for and the policy has no encoder."""
    if not set(entities) & set(TAGGER_ENTITIES):
        return None
    from sigroute.signals.pii import PiiConfigError

    encoder = getattr(resources, "encoder", None)
    if encoder is None:
        raise PiiConfigError(f"PII types {sorted(set(entities) & set(TAGGER_ENTITIES))} are found by the token "
                             f"tagger on the shared encoder, which this policy did not load")
    try:
        return shipped_tagger(encoder.fingerprint)
    except TaggerUnavailable as exc:
        raise PiiConfigError(str(exc)) from exc


def scope_parts(ctx: Any, scope: str) -> list[str]:
    """The message texts that `ctx.text_for_scope(scope)` joins with newlines (each is tagged on
    its own, so the last user turn shares the forward pass of the request's embedding)."""
    if scope == "last_user":
        return [ctx.last_user_text]
    if scope == "user":
        return list(ctx.user_texts)
    if scope == "system":
        return [ctx.system_text]
    return [m.text for m in ctx.messages]


def tagged_entities(tagger: PiiTagger, text: str, parts: Sequence[str], states_of, wanted: Iterable[str]) -> list:
    """`PiiEntity`s the tagger finds in `text` = "\\n".join(parts), from each part's token states
    (`states_of(part)`); offsets refer to `text`."""
    from sigroute.signals.pii import PiiEntity

    if "\n".join(parts) != text:  # not the scope's own parts: nothing sound to map back
        return []
    out = []
    offset = 0
    wanted = frozenset(wanted)
    for part in parts:
        if part:
            for span in tagger.tag(part, states_of(part), wanted):
                start, end = span.start + offset, span.end + offset
                out.append(PiiEntity(span.type, start, end, span.score, text[start:end]))
        offset += len(part) + 1
    return out
