"""Recorded per-question outcomes for the simulated upstream's replay mode (`sigroute sim --outcomes`).

A replay directory is laid out like the shared ``routing/`` data::

    DIR/models.csv                      model,family,params_b,active_params_b,hosting,
                                        price_in_per_mtok,price_out_per_mtok,ttft_ms,tokens_per_s
    DIR/mmlu_pro/questions.jsonl.gz     question_id, category, src, question, options[], answer
    DIR/mmlu_pro/correctness.csv.gz     question_id, category, src, one column per model: 1 / 0 / empty
    DIR/mmlu_pro/output_chars.csv.gz    question_id, one column per model: answer length in characters

`DIR` may also be the folder that holds the three ``.gz`` files, with ``models.csv`` one level up.

`load_outcomes(DIR)` reads it all (no pandas; numpy arrays) into an `Outcomes`, which the sim serves
and which benchmarks reuse for the ground truth: questions, per-model correctness and answer
lengths, model prices and latency, and `find(text)`, the same question matcher the sim uses.

Rules (documented here because results depend on them):

- Served models are the rows of ``models.csv``, in that order. A model without a column in a CSV
  has no record for any question; CSV columns that are not in ``models.csv`` are ignored (both are
  listed in `Outcomes.warnings`). Questions without a CSV row have no record either.
- Correctness: 1 / 0; an empty cell (or a missing one) is "no record" (-1 in `Outcomes.correct`).
  The sim answers a no-record question wrong and says so (``x-sim-outcome: no-record``).
- Answer length: a value of 0, an empty cell or a missing one is "not recorded" and is imputed as
  the median (rounded) over the models that have that question's length; if none has it, the
  model's own median over its recorded lengths; if the model has none, the median of every
  recorded length; if nothing is recorded at all, `FALLBACK_CHARS`. `Outcomes.chars_recorded`
  tells recorded values from imputed ones.
- The wrong letter of a wrong answer is chosen by a hash of ``question_id:model`` among the
  question's other letters (among all of A-J when the question has a single option), so it is
  deterministic and never the right one.
- Exactly duplicated questions (same text and options, different ids) cannot be told apart from
  a prompt; `find` returns the first one in ``questions.jsonl`` order.
"""

from __future__ import annotations

import bisect
import csv
import functools
import gzip
import json
import math
import os
import re
import time
import warnings as _warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # numpy is imported lazily: `gateway.sim` imports this module at start-up
    import numpy as np

__all__ = [
    "FALLBACK_CHARS",
    "Outcomes",
    "OutcomesError",
    "ReplayAnswer",
    "ReplayModel",
    "ReplayQuestion",
    "format_replay_question",
    "load_outcomes",
]

LETTERS = "ABCDEFGHIJ"
MODELS_FILE = "models.csv"
SUBDIR = "mmlu_pro"
QUESTIONS_FILE = "questions.jsonl.gz"
CORRECTNESS_FILE = "correctness.csv.gz"
CHARS_FILE = "output_chars.csv.gz"
GZ_FILES = (QUESTIONS_FILE, CORRECTNESS_FILE, CHARS_FILE)
MODEL_COLUMNS = ("model", "family", "params_b", "active_params_b", "hosting", "price_in_per_mtok",
                 "price_out_per_mtok", "ttft_ms", "tokens_per_s")
FALLBACK_CHARS = 300  # answer length when a table records no length at all
CHARS_PER_TOKEN = 4
MAX_SEARCH_CHARS = 32768  # only the last this many characters of a message are searched
ANCHOR_WORDS = 6  # questions are indexed by their first this many normalized words
MIN_STEM_CHARS = 40  # shorter stems also need most of their options in the text to match


class OutcomesError(ValueError):
    """An outcomes directory that cannot be used; the message names the file and the problem."""


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayModel:
    """One row of models.csv. Prices are USD per million tokens; timings are unscaled."""

    name: str
    family: str
    params_b: float | None
    active_params_b: float | None
    hosting: str
    price_in: float
    price_out: float
    ttft_ms: float
    tokens_per_s: float

    def latency_s(self, completion_tokens: int, time_scale: float = 1.0) -> float:
        """ttft + completion_tokens / tokens_per_s, in seconds, times `time_scale`."""
        decode = completion_tokens / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        return (self.ttft_ms / 1000.0 + decode) * time_scale

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_in + completion_tokens * self.price_out) / 1e6


@dataclass(frozen=True, slots=True)
class ReplayQuestion:
    """One multiple-choice question; `row` is its index in `Outcomes.questions` and the arrays."""

    row: int
    question_id: Any  # as in questions.jsonl (an int in the shared data)
    category: str
    src: str
    question: str
    options: tuple[str, ...]
    answer: str

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]

    @property
    def prompt(self) -> str:
        """The question as the benchmark sends it (see `format_replay_question`)."""
        return format_replay_question(self)


@dataclass(frozen=True, slots=True)
class ReplayAnswer:
    """What one model answers to one question (or to a request with no known question)."""

    text: str
    question: ReplayQuestion | None
    letter: str | None  # the letter stated at the end of `text`
    correct: bool
    outcome: str  # "recorded", "no-record" or "unknown-question"


def format_replay_question(q: ReplayQuestion) -> str:
    """``question\\n\\nA. option\\nB. option...``: the prompt format benchmarks send to the sim."""
    options = "\n".join(f"{letter}. {text}" for letter, text in zip(LETTERS, q.options))
    return f"{q.question}\n\n{options}"


# --------------------------------------------------------------------------------------------
# Matching a prompt to a question
# --------------------------------------------------------------------------------------------

_NON_WORD = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation dropped (as `gateway.sim` does)."""
    return _NON_WORD.sub(" ", text.lower()).strip()


class QuestionIndex:
    """Finds which question (if any) a text contains, in time linear in the text, not the bank.

    Each question stem is normalized (case, punctuation and spacing ignored) and indexed by its
    first `ANCHOR_WORDS` words. A text is normalized once; at each word that starts some stem the
    anchors are looked up in a dict and candidates verified word for word against their whole
    stem. A question's options are looked for (in order) between its stem and the next long stem
    found, however they are laid out ("A. x", "(A) x", "A) x", ...); candidates sharing a stem are
    told apart by the share, then the number, of their options found. A stem shorter than
    `MIN_STEM_CHARS` normalized characters counts only when at least half of its options follow
    it, so short generic stems ("Which of these is true?") do not match unrelated prompts. A stem
    found inside the stem or options of a question found before it is ignored (a short stem such
    as "4 3" inside another question's options). Of the rest, the one ending last wins (the asked
    question comes after any few-shot examples), then the longest stem, then the best option
    match, then file order. Tested on the 9,626 shared questions: each one's own prompt, bare,
    wrapped in instructions or after two few-shot examples, finds it (or its exact duplicate).
    """

    def __init__(self, questions: Sequence[ReplayQuestion]):
        self._questions = questions
        self._stems: list[list[str]] = []
        self._short: set[int] = set()  # stems shorter than MIN_STEM_CHARS
        self._by_anchor: dict[str, list[int]] = {}
        # first two words of a stem (its only word for one-word stems) -> anchor lengths to try
        starts: dict[str, set[int]] = {}
        for i, q in enumerate(questions):
            norm = normalize(q.question)
            words = norm.split(" ") if norm else []
            self._stems.append(words)
            if len(norm) < MIN_STEM_CHARS:
                self._short.add(i)
            if not words:
                continue
            k = min(ANCHOR_WORDS, len(words))
            self._by_anchor.setdefault(" ".join(words[:k]), []).append(i)
            starts.setdefault(" ".join(words[:2]), set()).add(k)
        self._starts = {key: tuple(sorted(ks, reverse=True)) for key, ks in starts.items()}
        self._single = {key for key in self._starts if " " not in key}
        self._options: dict[int, tuple[str, ...]] = {}  # normalized lazily, on first hit
        self._cached_find = functools.lru_cache(maxsize=4096)(self._find)

    def find(self, text: str) -> ReplayQuestion | None:
        if not text:
            return None
        return self._cached_find(text[-MAX_SEARCH_CHARS:])

    def _normalized_options(self, i: int) -> tuple[str, ...]:
        options = self._options.get(i)
        if options is None:
            options = tuple(f" {o} " for o in map(normalize, self._questions[i].options) if o)
            self._options[i] = options
        return options

    def _find(self, text: str) -> ReplayQuestion | None:
        norm = normalize(text)
        if not norm:
            return None
        words = norm.split(" ")
        n_words = len(words)
        by_start, single, by_anchor, stems = self._starts, self._single, self._by_anchor, self._stems
        hits: list[tuple[int, int]] = []  # (start word, question index)
        for i in range(n_words):
            lengths = by_start.get(words[i] + " " + words[i + 1]) if i + 1 < n_words else None
            if words[i] in single:
                lengths = (lengths or ()) + (1,)
            if not lengths:
                continue
            for k in lengths:
                candidates = by_anchor.get(" ".join(words[i:i + k])) if i + k <= n_words else None
                if candidates:
                    for c in candidates:
                        stem = stems[c]
                        if words[i:i + len(stem)] == stem:
                            hits.append((i, c))
        if not hits:
            return None
        starts = [0] * (n_words + 1)  # character offset of each word in `norm`
        pos = 0
        for j, word in enumerate(words):
            starts[j] = pos
            pos += len(word) + 1
        starts[n_words] = len(norm) + 1  # so that starts[end] - 1 is where a stem ends
        # A question's options are looked for between its stem and the next long stem found.
        bounds = sorted({i for i, c in hits if c not in self._short})
        accepted = []  # (start word, stem end word, span end char, key, question index)
        for i, c in hits:
            stem = stems[c]
            end = i + len(stem)
            k = bisect.bisect_left(bounds, end)
            stop = starts[bounds[k]] - 1 if k < len(bounds) else len(norm)
            region = f" {norm[starts[end]:stop]} " if end < n_words else ""
            options = self._normalized_options(c)
            matched, span_end, at = 0, starts[end] - 1, 0
            for o in options:  # in order, so that repeated option texts are each found once
                found = region.find(o, at)
                if found >= 0:
                    at = found + len(o) - 1
                    span_end = max(span_end, starts[end] + at - 1)
                    matched += 1
                elif o in region:
                    matched += 1
            if c in self._short and (not options or matched * 2 < len(options)):
                continue
            fraction = matched / len(options) if options else 0.0
            accepted.append((i, end, span_end, (end, len(stem), fraction, matched, -c), c))
        # A stem found inside a question found before it (in its stem or its options) is part
        # of that question's text, not a question of its own.
        accepted.sort(key=lambda hit: (hit[0], -hit[1]))
        kept: list[tuple[int, int, int, tuple, int]] = []
        for hit in accepted:
            i, end = hit[0], hit[1]
            if not any((j < i or e > end) and starts[end] - 1 <= span for j, e, span, _, _ in kept):
                kept.append(hit)  # (same start and stem: duplicates, told apart by their options)
        if not kept:
            return None
        best = max(kept, key=lambda hit: hit[3])[4]
        return self._questions[best]


# --------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------

_FILLER = (
    "Let us work through the question step by step and weigh each of the options in turn before "
    "settling on the one that fits the facts best while ruling out the others that do not hold."
).split()
_FILLER_CYCLE = " ".join(_FILLER) + " "
_FILLER_STARTS = [m.start() for m in re.finditer(r"\S+", _FILLER_CYCLE)]
UNKNOWN_QUESTION_ANSWER = ("This simulated model replays recorded answers to benchmark questions, "
                           "and this request contains none of them.")


@functools.lru_cache(maxsize=8192)
def answer_text(chars: int, letter: str, offset: int = 0) -> str:
    """Neutral filler ending in "The answer is (X).", exactly `chars` characters long when
    `chars` exceeds the final sentence (otherwise just the final sentence)."""
    final = f"The answer is ({letter})."
    body = chars - len(final) - 1
    if body <= 0:
        return final
    start = _FILLER_STARTS[offset % len(_FILLER_STARTS)]
    repeats = (start + body) // len(_FILLER_CYCLE) + 2
    filler = (_FILLER_CYCLE * repeats)[start:start + body - 1] + "."
    filler = filler[0].upper() + filler[1:]
    return filler.replace(" .", "..") + " " + final


# --------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Outcomes:
    """Recorded outcomes of `models` on `questions`; arrays are indexed [question row, model column].

    `correct`: int8, 1 / 0 / -1 (no record). `output_chars`: int32, answer lengths in characters
    with unrecorded ones imputed (see the module docstring); `chars_recorded` says which are real.
    Model columns follow `model_names` (models.csv order).
    """

    root: Path  # the folder holding the three .gz files
    models: dict[str, ReplayModel]
    questions: tuple[ReplayQuestion, ...]
    correct: "np.ndarray"
    output_chars: "np.ndarray"
    chars_recorded: "np.ndarray"
    warnings: list[str] = field(default_factory=list)
    load_s: float = 0.0

    def __post_init__(self) -> None:
        self.model_names: tuple[str, ...] = tuple(self.models)
        self._column = {name: j for j, name in enumerate(self.model_names)}
        self._row = {q.question_id: q.row for q in self.questions}
        self._row.update({str(q.question_id): q.row for q in self.questions})
        self._index = QuestionIndex(self.questions)

    def __len__(self) -> int:
        return len(self.questions)

    def __repr__(self) -> str:
        return f"<Outcomes {len(self.questions)} questions x {len(self.models)} models from {self.root}>"

    # lookups ----------------------------------------------------------------------------------

    def resolve_model(self, name: str) -> str | None:
        """The served model a request's `model` means: exact, else the part after the last '/'
        (so ``hosted_vllm/NAME`` is NAME); None if neither is known."""
        if name in self._column:
            return name
        tail = name.rsplit("/", 1)[-1]
        return tail if tail in self._column else None

    def column(self, model: str) -> int:
        resolved = self.resolve_model(model)
        if resolved is None:
            raise KeyError(f"unknown model {model!r}; known: {', '.join(self.model_names)}")
        return self._column[resolved]

    def question(self, question_id: Any) -> ReplayQuestion:
        return self.questions[self._row[question_id]]

    def _rc(self, question: "ReplayQuestion | Any", model: str) -> tuple[ReplayQuestion, int, int]:
        q = question if isinstance(question, ReplayQuestion) else self.question(question)
        return q, q.row, self.column(model)

    def outcome(self, question: "ReplayQuestion | Any", model: str) -> int | None:
        """1 (recorded correct), 0 (recorded wrong) or None (no record)."""
        _, r, c = self._rc(question, model)
        value = int(self.correct[r, c])
        return None if value < 0 else value

    def chars(self, question: "ReplayQuestion | Any", model: str) -> int:
        """Answer length in characters (recorded or imputed)."""
        _, r, c = self._rc(question, model)
        return int(self.output_chars[r, c])

    def answer(self, question: "ReplayQuestion | Any", model: str) -> ReplayAnswer:
        """Exactly what the sim answers when `model` is asked `question`."""
        q, r, c = self._rc(question, model)
        name = self.model_names[c]
        recorded = int(self.correct[r, c])
        if recorded == 1:
            letter = q.answer
        else:
            others = [x for x in q.letters if x != q.answer] or [x for x in LETTERS if x != q.answer]
            letter = others[zlib.crc32(f"{q.question_id}:{name}".encode()) % len(others)]
        offset = zlib.crc32(f"{name}:{q.question_id}".encode())
        text = answer_text(int(self.output_chars[r, c]), letter, offset)
        return ReplayAnswer(text, q, letter, recorded == 1, "recorded" if recorded >= 0 else "no-record")

    def completion_tokens(self, question: "ReplayQuestion | Any", model: str) -> int:
        """Tokens the sim reports for that answer: ceil(len(answer text) / 4)."""
        return -(-len(self.answer(question, model).text) // CHARS_PER_TOKEN)

    def find(self, text: str) -> ReplayQuestion | None:
        """The question `text` contains (see `QuestionIndex`), or None."""
        return self._index.find(text)

    def respond(self, model: str, text: str) -> ReplayAnswer:
        """What the sim answers when `model` gets a user message `text`: the recorded outcome of
        the question found in it, or a short generic answer when there is none."""
        question = self.find(text)
        if question is None:
            return ReplayAnswer(UNKNOWN_QUESTION_ANSWER, None, None, False, "unknown-question")
        return self.answer(question, model)

    def accuracy(self, model: str) -> float:
        """Share of questions the model answers correctly (no record counts as wrong)."""
        return float((self.correct[:, self.column(model)] == 1).mean()) if self.questions else 0.0


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _locate(directory: Path) -> tuple[Path, Path]:
    """(models.csv path, folder of the .gz files) for either accepted layout."""
    if not directory.is_dir():
        raise OutcomesError(f"outcomes directory {directory} does not exist (or is not a directory)")
    if any((directory / name).exists() for name in GZ_FILES):
        gz_dir, models = directory, directory.parent / MODELS_FILE
    else:
        gz_dir, models = directory / SUBDIR, directory / MODELS_FILE
        if not gz_dir.exists() and not models.exists():
            raise OutcomesError(
                f"{directory} is not an outcomes directory: expected {MODELS_FILE} and {SUBDIR}/ "
                f"({', '.join(GZ_FILES)}) in it, or the three .gz files in it with {MODELS_FILE} "
                "one level up")
    missing = [str(p) for p in (models, *(gz_dir / name for name in GZ_FILES)) if not p.is_file()]
    if missing:
        raise OutcomesError(f"outcomes directory {directory}: missing file"
                            f"{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return models, gz_dir


def _number(value: str, path: Path, line: int, column: str, optional: bool = False) -> float | None:
    value = value.strip()
    if optional and value == "":
        return None
    try:
        number = float(value)
    except ValueError:
        raise OutcomesError(f"{path}:{line}: column {column!r} must be a number (got {value!r})") from None
    if not math.isfinite(number) or number < 0:
        raise OutcomesError(f"{path}:{line}: column {column!r} must be a non-negative number (got {value!r})")
    return number


def _read_models(path: Path) -> dict[str, ReplayModel]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise OutcomesError(f"cannot read {path}: {exc}") from None
    if not rows:
        raise OutcomesError(f"{path} is empty")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in MODEL_COLUMNS if c not in header]
    if missing:
        raise OutcomesError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    at = {c: header.index(c) for c in MODEL_COLUMNS}
    models: dict[str, ReplayModel] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise OutcomesError(f"{path}:{line}: expected {len(header)} columns, got {len(row)}")
        get = {c: row[i].strip() for c, i in at.items()}
        name = get["model"]
        if not name:
            raise OutcomesError(f"{path}:{line}: empty model name")
        if name in models:
            raise OutcomesError(f"{path}:{line}: model {name!r} is listed twice")
        models[name] = ReplayModel(
            name=name, family=get["family"],
            params_b=_number(get["params_b"], path, line, "params_b", optional=True),
            active_params_b=_number(get["active_params_b"], path, line, "active_params_b", optional=True),
            hosting=get["hosting"],
            price_in=_number(get["price_in_per_mtok"], path, line, "price_in_per_mtok"),
            price_out=_number(get["price_out_per_mtok"], path, line, "price_out_per_mtok"),
            ttft_ms=_number(get["ttft_ms"], path, line, "ttft_ms"),
            tokens_per_s=_number(get["tokens_per_s"], path, line, "tokens_per_s"))
    if not models:
        raise OutcomesError(f"{path} lists no models")
    return models


def _read_questions(path: Path) -> tuple[ReplayQuestion, ...]:
    questions: list[ReplayQuestion] = []
    seen: set[str] = set()
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    item = json.loads(text)
                    qid, question, options, answer = (item["question_id"], item["question"],
                                                      item["options"], item["answer"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise OutcomesError(f"{path}:{line}: not a question record ({type(exc).__name__}: "
                                        f"{exc}); need question_id, question, options, answer") from None
                if (not isinstance(question, str) or not isinstance(options, list) or not options
                        or len(options) > len(LETTERS) or not all(isinstance(o, str) for o in options)):
                    raise OutcomesError(f"{path}:{line}: 'question' must be a string and 'options' "
                                        f"a list of 1 to {len(LETTERS)} strings")
                if not isinstance(answer, str) or answer not in LETTERS[: len(options)]:
                    raise OutcomesError(f"{path}:{line}: answer {answer!r} is not one of the "
                                        f"{len(options)} option letters")
                if str(qid) in seen:
                    raise OutcomesError(f"{path}:{line}: question_id {qid!r} appears twice")
                seen.add(str(qid))
                questions.append(ReplayQuestion(len(questions), qid, str(item.get("category", "")),
                                                str(item.get("src", "")), question, tuple(options), answer))
    except (OSError, EOFError, UnicodeDecodeError, zlib.error) as exc:
        raise OutcomesError(f"cannot read {path}: {exc}") from None
    if not questions:
        raise OutcomesError(f"{path} holds no questions")
    return tuple(questions)


def _read_table(path: Path, first_model_column: int, models: Sequence[str], rows: dict[str, int],
                valid, what: str, warnings: list[str]) -> "np.ndarray":
    """A per-question x per-model float table from a gz CSV, in (question row, model column)
    order; NaN where a cell is empty or missing. `valid(values)` is a vectorized check."""
    import numpy as np

    order: list[int] = []
    cells: list[list[str]] = []
    lines: list[int] = []
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[0].strip() != "question_id":
                raise OutcomesError(f"{path}: the first column must be question_id")
            names = [h.strip() for h in header[first_model_column:]]
            width = len(names)
            for line, row in enumerate(reader, start=2):
                r = rows.get(row[0].strip()) if row else None
                if r is None:
                    continue
                part = row[first_model_column:first_model_column + width]
                if len(part) < width:
                    part += [""] * (width - len(part))
                order.append(r)
                cells.append(part)
                lines.append(line)
    except (OSError, EOFError, UnicodeDecodeError, zlib.error, csv.Error) as exc:
        raise OutcomesError(f"cannot read {path}: {exc}") from None
    where = {name: j for j, name in enumerate(names)}
    absent = [m for m in models if m not in where]
    if absent:
        warnings.append(f"{path.name}: no column for {', '.join(absent)} (no record)")
    known = set(models)
    extra = [n for n in names if n not in known]
    if extra:
        warnings.append(f"{path.name}: ignoring columns not in models.csv: {', '.join(extra)}")
    out = np.full((len(rows), len(models)), np.nan)
    take = [(where[m], c) for c, m in enumerate(models) if m in where]
    if not cells or not take:
        return out
    raw = np.array(cells, dtype=str)[:, [j for j, _ in take]]
    blank = raw == ""
    try:
        values = np.where(blank, "nan", raw).astype(np.float64)
    except ValueError:  # something unusual (spaces, text): cell by cell, to say where
        values = np.full(raw.shape, np.nan)
        for (x, y), cell in np.ndenumerate(raw):
            if cell.strip():
                try:
                    values[x, y] = float(cell)
                except ValueError:
                    raise OutcomesError(f"{path}:{lines[x]}: {what} for model "
                                        f"{models[take[y][1]]!r} must be a number, not {cell!r}") from None
    bad = ~np.isnan(values) & ~valid(values)
    if bad.any():
        x, y = map(int, np.argwhere(bad)[0])
        raise OutcomesError(f"{path}:{lines[x]}: bad {what} {raw[x, y]!r} for model {models[take[y][1]]!r}")
    out[np.asarray(order)[:, None], np.asarray([c for _, c in take])[None, :]] = values
    return out


def _impute(chars: "np.ndarray") -> tuple["np.ndarray", "np.ndarray"]:
    """(imputed int32 lengths, recorded mask): 0 = not recorded → question median, else model
    median, else global median, else FALLBACK_CHARS (medians over recorded values, rounded)."""
    import numpy as np

    recorded = chars > 0
    values = np.where(recorded, chars, np.nan).astype(np.float64)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows/columns: handled below
        by_question = np.nanmedian(values, axis=1) if values.size else np.zeros(len(values))
        by_model = np.nanmedian(values, axis=0) if values.size else np.zeros(values.shape[1])
    overall = float(np.median(chars[recorded])) if recorded.any() else float(FALLBACK_CHARS)
    by_model = np.where(np.isnan(by_model), overall, by_model)
    fill = np.where(np.isnan(by_question)[:, None], by_model[None, :], by_question[:, None])
    filled = np.where(recorded, values, fill)
    return np.rint(filled).astype(np.int32), recorded


def load_outcomes(directory: "str | os.PathLike[str]") -> Outcomes:
    """Read a replay directory (see the module docstring). Raises `OutcomesError` naming the
    missing or malformed file."""
    t0 = time.perf_counter()
    models_path, gz_dir = _locate(Path(directory))
    models = _read_models(models_path)
    questions = _read_questions(gz_dir / QUESTIONS_FILE)
    rows = {str(q.question_id): q.row for q in questions}
    names = list(models)
    warnings: list[str] = []
    import numpy as np

    correct = _read_table(gz_dir / CORRECTNESS_FILE, 3, names, rows,
                          lambda v: (v == 0) | (v == 1), "correctness (1 or 0)", warnings)
    correct = np.where(np.isnan(correct), -1, correct).astype(np.int8)
    raw_chars = _read_table(gz_dir / CHARS_FILE, 1, names, rows,
                            lambda v: (v >= 0) & (v == np.floor(v)) & np.isfinite(v),
                            "output length (a whole number >= 0)", warnings)
    raw_chars = np.where(np.isnan(raw_chars), 0, raw_chars).astype(np.int64)
    chars, recorded = _impute(raw_chars)
    return Outcomes(root=gz_dir, models=models, questions=questions, correct=correct,
                    output_chars=chars, chars_recorded=recorded, warnings=warnings,
                    load_s=time.perf_counter() - t0)


def split_tokens(text: str) -> list[str]:
    """`text` in pieces of `CHARS_PER_TOKEN` characters: one piece per reported token."""
    return [text[i:i + CHARS_PER_TOKEN] for i in range(0, len(text), CHARS_PER_TOKEN)]
