"""The simulated upstream: a real OpenAI-compatible HTTP server that impersonates several LLMs.

Tests, benchmarks and the demo point sigroute at it instead of real providers. It speaks the
OpenAI chat-completions wire format (plain and streamed), sleeps to imitate each model's latency,
answers the demo question bank with a per-category accuracy, and injects faults on demand. It is
built on Starlette with orjson and does no work it does not have to, because benchmarks use it as
the zero-cost baseline.

Configuration (YAML file, dict or `SimConfig`; unknown keys are rejected)::

    seed: 7                      # seeds the RNG that draws faults and answers (optional)
    models:
      sim-small:
        ttft_ms: 20              # time to first token
        tokens_per_s: 200        # decode speed (0 or absent = instant)
        completion_tokens: 24    # length of generic answers, in tokens (~ words)
        price: {input: 0.05, output: 0.08}            # USD / 1M tokens, informational
        accuracy: {default: 0.5, math: 0.3, law: 0.6}  # P(correct) per demo-question category
        reply: "SCORE: 1"        # optional: every answer is this fixed text (a judge with a set verdict)
        faults:                  # probabilities per request, all default 0
          error_rate: 0.0        # 500 with an OpenAI-shaped error
          rate_limit_rate: 0.0   # 429 with `retry-after: 1`
          timeout_rate: 0.0      # hang (up to 1 hour) until the client goes away
          break_stream_rate: 0.0 # streamed: send about half the chunks, then drop the connection

`error_rate + rate_limit_rate + timeout_rate` must not exceed 1: one uniform draw per request
picks at most one of them, so each rate is exactly its own probability. `break_stream_rate` is
drawn separately, for streamed requests that were not already failed.

Endpoints:

``POST /v1/chat/completions``
    OpenAI chat completions. `model` must be a configured name (else 404). Honours `stream`,
    `stream_options.include_usage`, `n`, `max_tokens` / `max_completion_tokens` (truncates, with
    finish_reason "length"). Non-streamed answers arrive after ttft + tokens / tokens_per_s;
    streamed ones send the first content chunk at ttft, then a few tokens per chunk at decode
    speed. `usage.prompt_tokens` is about a quarter of the characters of all message text;
    completion tokens are whitespace-separated words. Every response carries `x-sim-model`.
    `stop` (a string or a list) ends an answer before the first stop string in it, and the choice
    then names that string in `stop_reason` (as vLLM does).
    Content: a demo-bank question found in the last user message (see `format_question`) is
    answered ``The answer is (X).``, correct with probability accuracy[category]; a last user
    message containing ``[[sim:echo]]`` is echoed back verbatim; one containing
    ``[[sim:reply:TEXT]]`` is answered TEXT (the two characters ``\\n`` in it stand for a line break: ``[[sim:reply:unsafe\\nS1]]``
    plays Llama Guard); a model with ``reply: TEXT`` in its config answers TEXT to everything
    else; anything else gets
    `completion_tokens` words of deterministic filler (the same prompt gives the same text).
    Tools: when the request has `tools` and its last message is a user message containing
    ``[[sim:tool]]``, the answer calls the first tool (finish_reason "tool_calls") with the
    arguments ``{"text": <the user text without the marker>}``; streamed, the arguments arrive in
    two deltas. When the last message is a `tool` result, the answer is ``Tool said: <its text>``.
``POST /v1/messages``
    Anthropic Messages (its own small implementation), plain and streamed with Anthropic's event
    sequence; `max_tokens` is required; answers like chat completions (echo, filler, the demo
    bank, ``[[sim:tool]]`` → a `tool_use` of the first tool, a last `tool_result` → ``Tool said:
    <its text>``), truncating at `max_tokens` (stop_reason "max_tokens"). Errors are Anthropic-shaped;
    faults: `rate_limit_rate` → 429, `error_rate` → 500, `timeout_rate` → 529 (overloaded) at once.
    The body is recorded for ``/sim/last/{model}`` like a chat request's.
``GET /v1/models``, ``GET /v1/models/{name}``
    The configured models, OpenAI-shaped.
``GET /health``
    ``{"status": "ok"}``.
``GET /sim/stats``
    ``{"<model>": {calls, streamed, completed, cancelled, errors, rate_limited, timeouts,
    broken_streams}, ..., "total_calls": N}``. `cancelled` counts requests whose client went away
    before the response was complete (a hung "timeout" request that the client abandons counts
    as both `timeouts` and `cancelled`).
``GET /sim/last/{model}``
    The last request body that model received, as parsed JSON (404 if none yet).
``GET /sim/last_headers/{model}``
    The headers of that last request, names lower-cased (404 if none yet).
``POST /sim/reset``
    Zero the stats, forget the last bodies and re-seed the RNG. With ``?config=true`` also
    restore every model's settings (timings, accuracy, faults) to the loaded configuration.
``GET /sim/models/{name}``, ``PUT /sim/models/{name}``
    Read a model's current settings, or change some of them at runtime: the body is a partial
    model block, e.g. ``{"ttft_ms": 500}``; the keys given replace the current values.
``PUT /sim/models/{name}/faults``
    Replace that model's whole `faults` block (keys left out become 0).

Replay mode (``sigroute sim --outcomes DIR [--time-scale F]``, `create_replay_app`): instead of
a config, the models, prices and timings come from ``DIR/models.csv`` and every model answers the
recorded questions (``DIR/mmlu_pro/*.gz``, see `sigroute.gateway.sim.replay` for the layout and the rules)
exactly as it really did:

- A question is found in the last user message by its normalized text (with or without its
  lettered options "A. x" / "(A) x" / "A) x", any text around it; see `sim_replay.QuestionIndex`).
- The answer ends "The answer is (X).": the right letter when that model's recorded result is 1,
  else a deterministic wrong letter (also for a missing result: ``x-sim-outcome: no-record``).
  Neutral filler before it makes it exactly as long as the recorded (or imputed) answer, in
  characters; ``usage.completion_tokens`` = ceil(chars / 4) (the answer streams in 4-character
  tokens). A message with no known question gets a short generic answer
  (``x-sim-outcome: unknown-question``, still 200).
- Latency: (ttft_ms + completion_tokens / tokens_per_s) x time scale, streamed or not.
- `model` may carry a provider prefix (``hosted_vllm/NAME``): the part after the last '/' is used.
- Headers: ``x-sim-outcome`` (recorded | no-record | unknown-question), ``x-sim-question-id``,
  ``x-sim-correct`` (1 when the answer states the right letter; 0 if max_tokens cut it off),
  ``x-sim-cost-usd`` (prompt x input price + completion x output price, per million tokens).
- ``/sim/stats`` adds a ``replay`` block per model: questions, correct, no_record,
  unknown_question, cost_usd. Faults, reset and runtime settings work as usual; model settings
  show the scaled timings.

Python API: `load_sim_config`, `create_sim_app`, `run_sim`, `load_question_bank`,
`format_question`, `extract_answer_letter`; replay: `load_outcomes` → `Outcomes`,
`create_replay_app`, `replay_config`, `format_replay_question`.

Example::

    from sigroute.gateway.serving import ServerThread
    from sigroute.gateway.sim import create_sim_app

    app = create_sim_app({"models": {"sim-small": {"ttft_ms": 20, "tokens_per_s": 200}}})
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x")
        client.chat.completions.create(model="sim-small", messages=[{"role": "user", "content": "hi"}])
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import os
import random
import re
import sys
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from sigroute.gateway.sim.replay import (
    Outcomes,
    OutcomesError,
    ReplayAnswer,
    format_replay_question,
    load_outcomes,
    split_tokens,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_CONFIG_PATH",
    "DEMO_CONFIG_PATH",
    "DemoQuestion",
    "ECHO_MARKER",
    "Faults",
    "Outcomes",
    "OutcomesError",
    "Price",
    "SimConfig",
    "SimConfigError",
    "SimModel",
    "SimState",
    "SimulatedStreamBreak",
    "create_replay_app",
    "create_sim_app",
    "extract_answer_letter",
    "format_question",
    "format_replay_question",
    "load_outcomes",
    "load_question_bank",
    "load_sim_config",
    "replay_config",
    "run_sim",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
QUESTION_BANK_PATH = DATA_DIR / "demo_questions.json"
DEMO_CONFIG_PATH = DATA_DIR / "sim_demo.yaml"
DEFAULT_CONFIG_PATH = DEMO_CONFIG_PATH  # what `sigroute sim` and the demo use without --config

#: The 14 MMLU-Pro categories used by the demo question bank and by `accuracy`.
CATEGORIES: tuple[str, ...] = (
    "biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
    "history", "law", "math", "other", "philosophy", "physics", "psychology",
)
LETTERS = "ABCDEFGHIJ"
ECHO_MARKER = "[[sim:echo]]"
TOOL_MARKER = "[[sim:tool]]"
REPLY_DIRECTIVE = re.compile(r"\[\[sim:reply:(.*?)\]\]", re.DOTALL)  # [[sim:reply:unsafe\nS1]]
DEFAULT_ACCURACY = 0.5
HANG_S = 3600.0  # how long a "timeout" fault hangs when the client never gives up
CHUNK_TOKENS = 3  # tokens per streamed content chunk
MAX_QUESTION_CHARS = 4096  # only the last this many characters of a message are searched for a question


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


class SimConfigError(ValueError):
    """A simulator configuration that cannot be used; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Faults(_Strict):
    """Per-request fault probabilities."""

    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    rate_limit_rate: float = Field(0.0, ge=0.0, le=1.0)
    timeout_rate: float = Field(0.0, ge=0.0, le=1.0)
    break_stream_rate: float = Field(0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_draw(self) -> "Faults":
        total = self.error_rate + self.rate_limit_rate + self.timeout_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"error_rate + rate_limit_rate + timeout_rate must be at most 1 (got {total:g}); "
                "one draw per request picks at most one of these faults")
        return self


class Price(_Strict):
    """USD per million tokens (informational: the sim never bills anyone)."""

    input: float = Field(0.0, ge=0.0)
    output: float = Field(0.0, ge=0.0)


class SimModel(_Strict):
    """One impersonated model."""

    ttft_ms: float = Field(0.0, ge=0.0)
    tokens_per_s: float = Field(0.0, ge=0.0)
    completion_tokens: int = Field(24, ge=0, le=100_000)
    price: Price = Field(default_factory=Price)
    accuracy: dict[str, float] = Field(default_factory=dict)
    faults: Faults = Field(default_factory=Faults)
    reply: str | None = Field(None, max_length=100_000,
                              description="every answer is this text (e.g. a guard's 'safe' or a judge's verdict), "
                                          "unless the last user message says otherwise with [[sim:reply:TEXT]]")

    @field_validator("accuracy")
    @classmethod
    def _check_accuracy(cls, value: dict[str, float]) -> dict[str, float]:
        for key, p in value.items():
            if key != "default" and key not in CATEGORIES:
                raise ValueError(f"unknown category {key!r}; use 'default' or one of: "
                                 + ", ".join(CATEGORIES))
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"accuracy for {key!r} must be between 0 and 1 (got {p})")
        return value

    def accuracy_for(self, category: str) -> float:
        return self.accuracy.get(category, self.accuracy.get("default", DEFAULT_ACCURACY))

    def latency_s(self, tokens: int) -> float:
        """Seconds from request to complete answer: ttft plus decode time of `tokens`."""
        decode = tokens / self.tokens_per_s if self.tokens_per_s > 0 else 0.0
        return self.ttft_ms / 1000.0 + decode


class SimConfig(_Strict):
    """The whole simulator configuration."""

    seed: int | None = None
    models: dict[str, SimModel] = Field(min_length=1)

    @field_validator("models")
    @classmethod
    def _check_names(cls, value: dict[str, SimModel]) -> dict[str, SimModel]:
        for name in value:
            if not name or name != name.strip():
                raise ValueError(f"model name {name!r} must be non-empty without surrounding spaces")
        return value


def _yaml_line(node: Any, loc: tuple) -> int | None:
    """1-based line of the YAML node at pydantic location `loc` (deepest one found)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if str(k.value) == str(key):
                    node = v
                    line = k.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _format_validation_error(exc: ValidationError, source: str, root_node: Any = None) -> str:
    lines = [f"invalid simulator config {source}:"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(part) for part in loc) or "<root>"
        line = _yaml_line(root_node, loc) if root_node is not None else None
        at = f" (line {line})" if line else ""
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown key (not allowed here; check the spelling)"
        lines.append(f"  {where}{at}: {message}")
    return "\n".join(lines)


def load_sim_config(source: "SimConfig | Mapping[str, Any] | str | os.PathLike[str]") -> SimConfig:
    """Load and validate a simulator config from a `SimConfig`, a dict, or a YAML file path.

    Raises `SimConfigError` naming the file, the key path and (for files) the line.
    """
    if isinstance(source, SimConfig):
        return source
    if isinstance(source, Mapping):
        try:
            return SimConfig.model_validate(dict(source))
        except ValidationError as exc:
            raise SimConfigError(_format_validation_error(exc, "(dict)")) from None
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SimConfigError(f"cannot read simulator config {path}: {exc.strerror or exc}") from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SimConfigError(f"invalid YAML in simulator config {path}{at}: {problem}") from None
    if not isinstance(data, dict):
        raise SimConfigError(f"simulator config {path} must be a mapping with a 'models' key")
    try:
        return SimConfig.model_validate(data)
    except ValidationError as exc:
        raise SimConfigError(_format_validation_error(exc, str(path), root)) from None


# --------------------------------------------------------------------------------------------
# The demo question bank
# --------------------------------------------------------------------------------------------


class DemoQuestion(_Strict):
    """One multiple-choice question of the demo bank."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    category: str
    question: str
    options: tuple[str, ...] = Field(min_length=4, max_length=6)
    answer: str

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str) -> str:
        if value not in CATEGORIES:
            raise ValueError(f"unknown category {value!r}")
        return value

    @model_validator(mode="after")
    def _answer_in_range(self) -> "DemoQuestion":
        if self.answer not in self.letters:
            raise ValueError(f"answer {self.answer!r} is not one of {', '.join(self.letters)}")
        return self

    @property
    def letters(self) -> str:
        return LETTERS[: len(self.options)]


@functools.lru_cache(maxsize=1)
def _question_bank() -> tuple[DemoQuestion, ...]:
    raw = json.loads(QUESTION_BANK_PATH.read_text(encoding="utf-8"))
    return tuple(DemoQuestion.model_validate(item) for item in raw)


def load_question_bank() -> list[DemoQuestion]:
    """The demo question bank (84 original questions, 6 per MMLU-Pro category)."""
    return list(_question_bank())


def format_question(q: DemoQuestion) -> str:
    """The user message the demo sends for `q`: stem, lettered options, answer instruction."""
    options = "\n".join(f"{letter}) {text}" for letter, text in zip(q.letters, q.options))
    return (f"{q.question}\n\n{options}\n\n"
            'Answer with the letter of the correct option, in the form "The answer is (X)."')


_ANSWER_RE = re.compile(r"answer is:?\s*\(?([A-J])\)?", re.IGNORECASE)


def extract_answer_letter(text: str | None) -> str | None:
    """The letter X of "The answer is (X)" in a model's answer, or None."""
    match = _ANSWER_RE.search(text or "")
    return match.group(1).upper() if match else None


_NON_WORD = re.compile(r"[\W_]+")


def _normalize(text: str) -> str:
    """Lower-case words separated by single spaces, punctuation dropped."""
    return _NON_WORD.sub(" ", text.lower()).strip()


class _QuestionIndex:
    """Finds which bank question (if any) a message contains, by its normalized stem.

    Matching ignores case, punctuation and spacing, and any text around the stem (a prefix such
    as "Question:", the options however they are laid out, extra instructions). Only messages
    the last `MAX_QUESTION_CHARS` characters are searched (questions come at the end of a prompt), and recent answers are memoized, so long prompts
    and repeated benchmark prompts cost next to nothing.
    """

    def __init__(self, questions: tuple[DemoQuestion, ...]):
        # Longest stems first, so a stem that happens to contain another one wins.
        self._stems = sorted(((f" {_normalize(q.question)} ", q) for q in questions),
                             key=lambda item: -len(item[0]))
        self._min_len = min((len(stem) - 2 for stem, _ in self._stems), default=0)
        self._cached_scan = functools.lru_cache(maxsize=1024)(self._scan)

    def find(self, text: str) -> DemoQuestion | None:
        if not self._stems or len(text) < self._min_len:
            return None
        return self._cached_scan(text[-MAX_QUESTION_CHARS:])

    def _scan(self, text: str) -> DemoQuestion | None:
        haystack = f" {_normalize(text)} "
        for stem, question in self._stems:
            if stem in haystack:
                return question
        return None


# --------------------------------------------------------------------------------------------
# Content: tokens, filler, answers
# --------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\s*\S+")

_FILLER_WORDS = (
    "the request was routed to a simulated model that answers with plain filler text so that "
    "latency cost and streaming behaviour can be measured without a real language model behind "
    "the gateway each word stands for one token and the text repeats in a fixed cycle starting "
    "at an offset derived from the prompt"
).split()


def _tokens(text: str) -> list[str]:
    """Split `text` into word tokens that concatenate back to exactly `text`."""
    parts = _TOKEN_RE.findall(text)
    if not parts:
        return [text] if text else []
    rest = len(text) - sum(map(len, parts))
    if rest:
        parts[-1] += text[-rest:]
    return parts


@functools.lru_cache(maxsize=2048)
def _filler(n_words: int, offset: int) -> tuple[str, ...]:
    words = [_FILLER_WORDS[(offset + i) % len(_FILLER_WORDS)] for i in range(n_words)]
    if not words:
        return ()
    words[0] = words[0].capitalize()
    words[-1] += "."
    return tuple(words[:1] + [" " + w for w in words[1:]])


def _message_text(message: Any) -> str:
    """The text of one chat message (string content or the text parts of a content list)."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content
                         if isinstance(part, dict) and isinstance(part.get("text"), str))
    return ""


# --------------------------------------------------------------------------------------------
# Runtime state
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class ModelStats:
    calls: int = 0
    streamed: int = 0
    completed: int = 0
    cancelled: int = 0
    errors: int = 0
    rate_limited: int = 0
    timeouts: int = 0
    broken_streams: int = 0


@dataclass(slots=True)
class ReplayStats:
    questions: int = 0  # answers to a recorded question (no-record ones included)
    correct: int = 0  # of those, answers that state the right letter
    no_record: int = 0
    unknown_question: int = 0
    cost_usd: float = 0.0


class SimState:
    """Everything the running simulator knows: current model settings, stats, RNG, last bodies.

    Lives on `app.state.sim`. Only touched from the server's event loop, so it needs no locks.
    In replay mode `replay` holds the recorded outcomes and `replay_stats` their counters.
    """

    def __init__(self, config: SimConfig, outcomes: Outcomes | None = None):
        self.config = config
        self.models: dict[str, SimModel] = dict(config.models)
        self.replay = outcomes
        if outcomes is not None:
            unknown = [name for name in self.models if name not in outcomes.models]
            if unknown:
                raise SimConfigError(f"replay mode: model{'s' if len(unknown) > 1 else ''} "
                                     f"{', '.join(unknown)} not in {outcomes.root.parent}/models.csv")
        self.replay_stats: dict[str, ReplayStats] = {}
        self.stats: dict[str, ModelStats] = {name: ModelStats() for name in self.models}
        self.last_body: dict[str, Any] = {}
        self.last_headers: dict[str, dict[str, str]] = {}
        self.rng = random.Random(config.seed)
        self.questions = _QuestionIndex(_question_bank())
        self._ids = itertools.count(1)
        self._id_prefix = f"chatcmpl-sim{os.urandom(3).hex()}-"

    def reset(self, restore_config: bool = False) -> None:
        self.stats = {name: ModelStats() for name in self.models}
        self.replay_stats = {}
        self.last_body.clear()
        self.last_headers.clear()
        self.rng.seed(self.config.seed)
        if restore_config:
            self.models = dict(self.config.models)

    def next_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids)}"

    def resolve(self, name: str) -> str | None:
        """The served model a request names: exact; in replay mode also the part after the
        last '/' (``hosted_vllm/NAME``). None if unknown."""
        if name in self.models:
            return name
        if self.replay is not None:
            tail = name.rsplit("/", 1)[-1]
            if tail in self.models:
                return tail
        return None

    def stats_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: asdict(stats) for name, stats in self.stats.items()}
        if self.replay is not None:
            for name in self.stats:
                out[name]["replay"] = asdict(self.replay_stats.get(name) or ReplayStats())
        out["total_calls"] = sum(stats.calls for stats in self.stats.values())
        return out

    def draw_fault(self, faults: Faults) -> str | None:
        """At most one of "rate_limit", "error", "timeout", from one uniform draw."""
        if not (faults.rate_limit_rate or faults.error_rate or faults.timeout_rate):
            return None
        u = self.rng.random()
        if u < faults.rate_limit_rate:
            return "rate_limit"
        u -= faults.rate_limit_rate
        if u < faults.error_rate:
            return "error"
        u -= faults.error_rate
        if u < faults.timeout_rate:
            return "timeout"
        return None

    def answer_tokens(self, spec: SimModel, user_text: str) -> list[str] | tuple[str, ...]:
        """The tokens of one answer to a request whose last user message is `user_text`."""
        directive = REPLY_DIRECTIVE.search(user_text)
        if directive is not None:   # the literal two characters \n stand for a line break
            return _tokens(directive.group(1).replace("\\n", "\n"))
        if spec.reply is not None:
            return _tokens(spec.reply)
        if ECHO_MARKER in user_text:
            return _tokens(user_text)
        question = self.questions.find(user_text)
        if question is not None:
            letter = question.answer
            if self.rng.random() >= spec.accuracy_for(question.category):
                letter = self.rng.choice([x for x in question.letters if x != question.answer])
            return ("The", " answer", " is", f" ({letter}).")
        return _filler(spec.completion_tokens, zlib.crc32(user_text.encode()) % len(_FILLER_WORDS))


# --------------------------------------------------------------------------------------------
# HTTP helpers
# --------------------------------------------------------------------------------------------


class SimulatedStreamBreak(Exception):
    """Raised on purpose to make uvicorn drop a streamed response's connection mid-body."""


class _HideSimulatedBreaks(logging.Filter):
    """Keeps uvicorn from logging a traceback for each deliberately broken stream."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedStreamBreak)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideSimulatedBreaks) for f in logger.filters):
        logger.addFilter(_HideSimulatedBreaks())


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, headers=headers,
                    media_type="application/json")


def _error(status: int, message: str, type_: str = "invalid_request_error", *,
           param: str | None = None, code: str | None = None,
           headers: Mapping[str, str] | None = None) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return _json(body, status, headers)


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def _pause(watcher: asyncio.Future, delay: float) -> bool:
    """Wait `delay` seconds unless the client disconnects first; True if it did."""
    if watcher.done():
        return True
    if delay <= 0:
        return False
    done, _ = await asyncio.wait((watcher,), timeout=delay)
    return bool(done)


@dataclass(slots=True)
class _ChatRequest:
    body: dict
    model: str
    messages: list
    stream: bool
    n: int
    max_tokens: int | None
    include_usage: bool


def _parse_chat(body: bytes) -> _ChatRequest | Response:
    """Validate the parts of a chat request the sim uses; an OpenAI-shaped 400 otherwise."""
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _error(400, f"We could not parse the JSON body of your request ({exc}). "
                           "Send a JSON object as in the OpenAI chat completions API.")
    if not isinstance(req, dict):
        return _error(400, "The request body must be a JSON object.")
    model = req.get("model")
    if not isinstance(model, str) or not model:
        return _error(400, "You must provide a model parameter (a string).", param="model")
    messages = req.get("messages")
    if not isinstance(messages, list) or not messages:
        return _error(400, "'messages' must be a non-empty array of message objects.",
                      param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return _error(400, f"messages[{i}] must be an object with a string 'role'.",
                          param=f"messages.[{i}]")
    stream = req.get("stream") or False
    if not isinstance(stream, bool):
        return _error(400, "'stream' must be a boolean.", param="stream")
    n = req.get("n")
    n = 1 if n is None else n
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        return _error(400, "'n' must be an integer between 1 and 128.", param="n")
    max_tokens = req.get("max_completion_tokens")
    param = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, param = req.get("max_tokens"), "max_tokens"
    if max_tokens is not None and (not isinstance(max_tokens, int) or isinstance(max_tokens, bool)
                                   or max_tokens < 1):
        return _error(400, f"'{param}' must be a positive integer.", param=param)
    options = req.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return _ChatRequest(req, model, messages, stream, n, max_tokens, include_usage)


# --------------------------------------------------------------------------------------------
# Chat completions
# --------------------------------------------------------------------------------------------


async def chat_completions(request: Request) -> Response:
    loop = asyncio.get_running_loop()
    start = loop.time()
    state: SimState = request.app.state.sim
    parsed = _parse_chat(await request.body())
    if isinstance(parsed, Response):
        return parsed
    name = state.resolve(parsed.model)
    if name is None:
        return _unknown_model(state, parsed.model)
    spec = state.models[name]
    headers = {"x-sim-model": name}
    stats = state.stats[name]
    stats.calls += 1
    if parsed.stream:
        stats.streamed += 1
    state.last_body[name] = parsed.body  # never mutated: the sim only reads requests
    state.last_headers[name] = dict(request.headers)

    fault = state.draw_fault(spec.faults)
    if fault == "rate_limit":
        stats.rate_limited += 1
        return _error(429, f"Rate limit reached for {name} (simulated). Retry after 1 second.",
                      "rate_limit_error", code="rate_limit_exceeded",
                      headers={**headers, "retry-after": "1"})
    if fault == "error":
        stats.errors += 1
        return _error(500, f"The server had an error while processing your request (simulated "
                           f"fault of {name}).", "server_error", headers=headers)
    if fault == "timeout":
        stats.timeouts += 1
        if await _sleep_unless_disconnected(request.receive, HANG_S):
            stats.cancelled += 1
            return Response(status_code=499)  # nobody is listening any more
        return _error(504, f"Simulated timeout of {name}.", "timeout", headers=headers)

    user_text = ""
    for message in reversed(parsed.messages):
        if message.get("role") == "user":
            user_text = _message_text(message)
            break
    last = parsed.messages[-1]
    tools = parsed.body.get("tools")
    if tools and isinstance(tools, list) and last.get("role") == "user" and TOOL_MARKER in user_text:
        return await _tool_call(request, state, stats, spec, name, parsed, user_text, headers, start)
    tool_answer = _tokens("Tool said: " + _message_text(last)) if last.get("role") == "tool" else None
    prompt_tokens = max(1, (sum(len(_message_text(m)) for m in parsed.messages) + 3) // 4)
    replay = state.replay.respond(name, user_text) if state.replay is not None else None
    answers: list[list[str] | tuple[str, ...]] = []
    finish: list[str] = []
    stops = parsed.body.get("stop")
    stops = [stops] if isinstance(stops, str) else [x for x in stops if isinstance(x, str) and x] \
        if isinstance(stops, list) else []
    matched: list[str | None] = []   # per answer: the stop string it ended at (vLLM's `stop_reason`)
    for _ in range(parsed.n):
        if tool_answer is not None:
            tokens = tool_answer
        else:
            tokens = split_tokens(replay.text) if replay is not None else state.answer_tokens(spec, user_text)
        tokens, stopped_at = _cut_at_stop(tokens, stops)
        matched.append(stopped_at)
        if parsed.max_tokens is not None and len(tokens) > parsed.max_tokens:
            answers.append(tokens[: parsed.max_tokens])
            finish.append("length")
        else:
            answers.append(tokens)
            finish.append("stop")
    completion_tokens = sum(map(len, answers))
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    if replay is not None:
        headers.update(_replay_headers(state, name, spec, replay, usage, "length" in finish))
    created = int(time.time())
    completion_id = state.next_id()

    if parsed.stream:
        breaks = bool(spec.faults.break_stream_rate) and state.rng.random() < spec.faults.break_stream_rate
        return _StreamedCompletion(stats, spec, name, completion_id, created, start, answers,
                                   finish, usage if parsed.include_usage else None, breaks, headers, matched)

    delay = start + spec.latency_s(max(map(len, answers))) - loop.time()
    if delay > 0 and await _sleep_unless_disconnected(request.receive, delay):
        stats.cancelled += 1
        return Response(status_code=499)
    stats.completed += 1
    return _json({
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": name,
        "system_fingerprint": "sigroute-sim",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": "".join(tokens)},
             "logprobs": None, "finish_reason": reason, **({"stop_reason": stop} if stop else {})}
            for i, (tokens, reason, stop) in enumerate(zip(answers, finish, matched))
        ],
        "usage": usage,
    }, headers=headers)


async def _tool_call(request: Request, state: SimState, stats: ModelStats, spec: SimModel, name: str,
                     parsed: _ChatRequest, user_text: str, headers: dict[str, str], start: float) -> Response:
    """An answer that calls the request's first tool (see the module docstring)."""
    tool = parsed.body["tools"][0]
    function = tool.get("function") if isinstance(tool, dict) else None
    tool_name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(tool_name, str):
        return _error(400, "tools[0].function.name must be a string.", param="tools")
    arguments = orjson.dumps({"text": user_text.replace(TOOL_MARKER, "").strip()}).decode()
    call_id = "call_" + state.next_id().rsplit("-", 1)[-1]
    prompt_tokens = max(1, (sum(len(_message_text(m)) for m in parsed.messages) + 3) // 4)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": 8, "total_tokens": prompt_tokens + 8}
    created, completion_id = int(time.time()), state.next_id()
    delay = start + spec.ttft_ms / 1000.0 - asyncio.get_running_loop().time()
    if delay > 0 and await _sleep_unless_disconnected(request.receive, delay):
        stats.cancelled += 1
        return Response(status_code=499)
    stats.completed += 1
    base = {"id": completion_id, "created": created, "model": name, "system_fingerprint": "sigroute-sim"}
    if not parsed.stream:
        return _json({**base, "object": "chat.completion", "choices": [{
            "index": 0, "logprobs": None, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": None, "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": tool_name, "arguments": arguments}}]}}],
            "usage": usage}, headers=headers)
    half = len(arguments) // 2

    def event(delta: dict | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
        return b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": choices,
                                         **extra}) + b"\n\n"

    body = (event({"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call_id, "type": "function", "function": {"name": tool_name, "arguments": ""}}]})
            + event({"tool_calls": [{"index": 0, "function": {"arguments": arguments[:half]}}]})
            + event({"tool_calls": [{"index": 0, "function": {"arguments": arguments[half:]}}]})
            + event({}, "tool_calls"))
    options = parsed.body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        body += event(None, usage=usage)
    return Response(body + b"data: [DONE]\n\n", media_type="text/event-stream",
                    headers={**headers, "cache-control": "no-cache"})


def _cut_at_stop(tokens: list[str] | tuple[str, ...], stops: list[str]) -> tuple[list[str] | tuple[str, ...], str | None]:
    """The tokens before the first stop string in their text, and that string (None: no stop string)."""
    text = "".join(tokens)
    hits = [(text.find(stop), stop) for stop in stops if stop in text]
    if not hits:
        return tokens, None
    at, stop = min(hits)
    kept: list[str] = []
    used = 0
    for token in tokens:
        if used + len(token) >= at:
            if at > used:
                kept.append(token[:at - used])
            break
        kept.append(token)
        used += len(token)
    return kept, stop


# --------------------------------------------------------------------------------------------
# Anthropic Messages (its own small implementation: the sim imports no gateway code)
# --------------------------------------------------------------------------------------------


def _anthropic_error(status: int, message: str, type_: str = "invalid_request_error",
                     headers: Mapping[str, str] | None = None) -> Response:
    return _json({"type": "error", "error": {"type": type_, "message": message}}, status, headers)


def _block_text(content: Any) -> str:
    """The text of a Messages content (a string or blocks; tool_result blocks give their content's text)."""
    if isinstance(content, str):
        return content
    texts = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            texts.append(_block_text(block.get("content")))
    return "\n".join(texts)


def _sse(name: str, data: dict) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


async def messages(request: Request) -> Response:
    """POST /v1/messages: an Anthropic Messages answer (see the module docstring)."""
    start = asyncio.get_running_loop().time()
    state: SimState = request.app.state.sim
    try:
        req = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return _anthropic_error(400, f"The body is not JSON ({exc}).")
    if not isinstance(req, dict) or not isinstance(req.get("model"), str):
        return _anthropic_error(400, "model: a string is required.")
    messages_, max_tokens = req.get("messages"), req.get("max_tokens")
    if not isinstance(messages_, list) or not messages_ or not all(isinstance(m, dict) for m in messages_):
        return _anthropic_error(400, "messages: a non-empty list of message objects is required.")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return _anthropic_error(400, "max_tokens: a positive integer is required.")
    name = state.resolve(req["model"])
    if name is None:
        return _anthropic_error(404, f"model: {req['model']} (not a model of this simulator)", "not_found_error")
    spec, stats = state.models[name], state.stats[name]
    stats.calls += 1
    stream = req.get("stream") is True
    if stream:
        stats.streamed += 1
    state.last_body[name] = req
    state.last_headers[name] = dict(request.headers)
    headers = {"x-sim-model": name}
    fault = state.draw_fault(spec.faults)
    if fault == "rate_limit":
        stats.rate_limited += 1
        return _anthropic_error(429, f"Rate limit reached for {name} (simulated).", "rate_limit_error",
                                {**headers, "retry-after": "1"})
    if fault in ("error", "timeout"):
        stats.errors += 1
        return _anthropic_error(529 if fault == "timeout" else 500, f"Simulated fault of {name}.",
                                "overloaded_error" if fault == "timeout" else "api_error", headers)

    last = messages_[-1]
    last_content = last.get("content")
    results = [b for b in last_content if isinstance(b, dict) and b.get("type") == "tool_result"] \
        if isinstance(last_content, list) else []
    user_text = _block_text(last_content) if last.get("role") == "user" else ""
    tools = req.get("tools")
    blocks: list[dict] = []
    stop_reason = "end_turn"
    if tools and isinstance(tools, list) and isinstance(tools[0], dict) and TOOL_MARKER in user_text and not results:
        call = {"type": "tool_use", "id": "toolu_" + state.next_id().rsplit("-", 1)[-1], "name": tools[0].get("name"),
                "input": {"text": user_text.replace(TOOL_MARKER, "").strip()}}
        blocks.append(call)
        tokens: list[str] | tuple[str, ...] = []
        stop_reason = "tool_use"
    else:
        if results:
            tokens = _tokens("Tool said: " + _block_text(results[-1].get("content")))
        else:
            tokens = state.answer_tokens(spec, user_text)
        if len(tokens) > max_tokens:
            tokens, stop_reason = tokens[:max_tokens], "max_tokens"
        blocks.append({"type": "text", "text": "".join(tokens)})
    input_tokens = max(1, (len(_block_text(req.get("system") or "")) +
                           sum(len(_block_text(m.get("content"))) for m in messages_) + 3) // 4)
    usage = {"input_tokens": input_tokens, "output_tokens": len(tokens) or 8}
    message_id = "msg_sim" + state.next_id().rsplit("-", 1)[-1]
    delay = start + spec.latency_s(len(tokens)) - asyncio.get_running_loop().time()
    if delay > 0 and await _sleep_unless_disconnected(request.receive, delay):
        stats.cancelled += 1
        return Response(status_code=499)
    stats.completed += 1
    message = {"id": message_id, "type": "message", "role": "assistant", "model": name, "content": blocks,
               "stop_reason": stop_reason, "stop_sequence": None, "usage": usage}
    if not stream:
        return _json(message, headers=headers)
    body = _sse("message_start", {"type": "message_start", "message": {
        **message, "content": [], "stop_reason": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})
    body += _sse("ping", {"type": "ping"})
    for index, block in enumerate(blocks):
        if block["type"] == "text":
            body += _sse("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {"type": "text", "text": ""}})
            for first in range(0, len(tokens), CHUNK_TOKENS):
                body += _sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": {
                    "type": "text_delta", "text": "".join(tokens[first:first + CHUNK_TOKENS])}})
        else:   # a tool call: its input in two pieces
            arguments = orjson.dumps(block["input"]).decode()
            half = len(arguments) // 2
            body += _sse("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": {**block, "input": {}}})
            for piece in (arguments[:half], arguments[half:]):
                body += _sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": {"type": "input_json_delta", "partial_json": piece}})
        body += _sse("content_block_stop", {"type": "content_block_stop", "index": index})
    body += _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason,
                                                                      "stop_sequence": None},
                                   "usage": {"output_tokens": usage["output_tokens"]}})
    body += _sse("message_stop", {"type": "message_stop"})
    return Response(body, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})


def _replay_headers(state: SimState, name: str, spec: SimModel, replay: ReplayAnswer,
                    usage: dict[str, int], truncated: bool) -> dict[str, str]:
    """The x-sim-* headers of a replayed answer; also counts it in `state.replay_stats`."""
    cost = (usage["prompt_tokens"] * spec.price.input
            + usage["completion_tokens"] * spec.price.output) / 1e6
    stats = state.replay_stats.get(name)
    if stats is None:
        stats = state.replay_stats[name] = ReplayStats()
    stats.cost_usd += cost
    headers = {"x-sim-outcome": replay.outcome, "x-sim-cost-usd": repr(cost)}
    if replay.question is None:
        stats.unknown_question += 1
        return headers
    # A truncated answer (max_tokens) lost its final sentence, so it is not a correct answer.
    correct = replay.correct and not truncated
    stats.questions += 1
    stats.correct += correct
    stats.no_record += replay.outcome == "no-record"
    headers["x-sim-question-id"] = str(replay.question.question_id)
    headers["x-sim-correct"] = "1" if correct else "0"
    return headers


async def _sleep_unless_disconnected(receive: Receive, delay: float) -> bool:
    """Sleep `delay` seconds, racing the ASGI `http.disconnect`; True if the client left."""
    watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        return await _pause(watcher, delay)
    finally:
        if not watcher.done():
            watcher.cancel()


class _StreamedCompletion(Response):
    """A streamed chat completion, paced at the model's speed, that notices a departed client.

    Written as its own ASGI response (rather than a StreamingResponse over a generator) so that
    one pending `receive()` both paces the chunks and detects disconnects, and so that a
    simulated break can abort the connection mid-body.
    """

    media_type = "text/event-stream"

    def __init__(self, stats: ModelStats, spec: SimModel, name: str, completion_id: str,
                 created: int, start: float, answers: list, finish: list[str],
                 usage: dict | None, breaks: bool, headers: dict[str, str],
                 stop_reasons: list[str | None] | None = None):
        self.status_code = 200
        self.background = None
        self.init_headers({**headers, "cache-control": "no-cache",
                           "content-type": "text/event-stream; charset=utf-8"})
        self.stats, self.spec, self.start = stats, spec, start
        self.answers, self.finish, self.usage, self.breaks = answers, finish, usage, breaks
        self.stop_reasons = stop_reasons or [None] * len(answers)
        self.base = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                     "model": name, "system_fingerprint": "sigroute-sim"}

    def _event(self, choices: list, **extra: Any) -> bytes:
        return b"data: " + orjson.dumps({**self.base, "choices": choices, **extra}) + b"\n\n"

    def _steps(self) -> list[tuple[int, bytes]]:
        """(tokens emitted before this chunk, SSE bytes) for each content chunk."""
        steps = []
        longest = max(map(len, self.answers))
        for first in range(0, longest, CHUNK_TOKENS):
            choices = [{"index": i, "delta": {"content": "".join(tokens[first:first + CHUNK_TOKENS])},
                        "logprobs": None, "finish_reason": None}
                       for i, tokens in enumerate(self.answers) if first < len(tokens)]
            steps.append((first, self._event(choices)))
        return steps

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        spec, stats = self.spec, self.stats
        ttft = spec.ttft_ms / 1000.0
        per_token = 1.0 / spec.tokens_per_s if spec.tokens_per_s > 0 else 0.0
        steps = self._steps()
        watcher = asyncio.ensure_future(_wait_for_disconnect(receive))
        try:
            if await _pause(watcher, self.start + ttft - loop.time()):
                stats.cancelled += 1
                return
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            # The role chunk goes out together with the first content chunk, at ttft.
            pending = self._event([{"index": i, "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None, "finish_reason": None}
                                   for i in range(len(self.answers))])
            if self.breaks:
                steps = steps[: len(steps) // 2]
            for emitted, event in steps:
                if await _pause(watcher, self.start + ttft + emitted * per_token - loop.time()):
                    stats.cancelled += 1
                    return
                await send({"type": "http.response.body", "body": pending + event, "more_body": True})
                pending = b""
            if self.breaks:
                if pending:
                    await send({"type": "http.response.body", "body": pending, "more_body": True})
                stats.broken_streams += 1
                # uvicorn answers an exception after the response started by closing the
                # connection: the client sees a chunked body that never ends properly.
                raise SimulatedStreamBreak("simulated broken stream")
            tail = self._event([{"index": i, "delta": {}, "logprobs": None, "finish_reason": reason,
                                 **({"stop_reason": stop} if stop else {})}
                                for i, (reason, stop) in enumerate(zip(self.finish, self.stop_reasons))])
            if self.usage is not None:
                tail += self._event([], usage=self.usage)
            tail += b"data: [DONE]\n\n"
            longest = max(map(len, self.answers))
            if await _pause(watcher, self.start + ttft + longest * per_token - loop.time()):
                stats.cancelled += 1
                return
            await send({"type": "http.response.body", "body": pending + tail, "more_body": False})
            stats.completed += 1
        finally:
            if not watcher.done():
                watcher.cancel()


# --------------------------------------------------------------------------------------------
# Other endpoints
# --------------------------------------------------------------------------------------------


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "sigroute-sim"}


async def list_models(request: Request) -> Response:
    state: SimState = request.app.state.sim
    return _json({"object": "list", "data": [_model_card(name) for name in state.models]})


async def get_model(request: Request) -> Response:
    found = _path_model(request)
    if isinstance(found, Response):
        return found
    state, name = found
    return _json(_model_card(name))


async def health(request: Request) -> Response:
    return _json({"status": "ok"})


async def stats(request: Request) -> Response:
    return _json(request.app.state.sim.stats_json())


async def reset(request: Request) -> Response:
    state: SimState = request.app.state.sim
    restore = request.query_params.get("config", "").lower() in ("1", "true", "yes")
    state.reset(restore_config=restore)
    return _json({"status": "reset", "config_restored": restore})


async def last_body(request: Request) -> Response:
    return _last_received(request, "last_body")


async def last_headers(request: Request) -> Response:
    return _last_received(request, "last_headers")


def _last_received(request: Request, what: str) -> Response:
    """The body or headers (`what`: the SimState attribute) of the path's model's last request."""
    found = _path_model(request)
    if isinstance(found, Response):
        return found
    state, name = found
    seen = getattr(state, what)
    if name not in seen:
        return _error(404, f"Model '{name}' has not received a request since the last reset.",
                      code="no_request")
    return _json(seen[name])


def _path_model(request: Request) -> tuple[SimState, str] | Response:
    """The simulator's state and the configured model the path's `{name}` (or its alias) names, or
    the 404 to answer when it names none."""
    state: SimState = request.app.state.sim
    name = state.resolve(request.path_params["name"])
    if name is None:
        return _unknown_model(state, request.path_params["name"])
    return state, name


def _unknown_model(state: SimState, name: str) -> Response:
    return _error(404, f"The model '{name}' does not exist in this simulator. Configured models: "
                       f"{', '.join(state.models)}.", param="model", code="model_not_found")


async def _json_object(request: Request) -> dict | Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError as exc:
        return _error(400, f"The body must be JSON ({exc}).")
    if not isinstance(body, dict):
        return _error(400, "The body must be a JSON object.")
    return body


def _validation_message(exc: ValidationError, prefix: str = "") -> str:
    return "; ".join(f"{prefix}{'.'.join(str(p) for p in err['loc']) or '<body>'}: {err['msg']}"
                     for err in exc.errors())


async def get_model_settings(request: Request) -> Response:
    found = _path_model(request)
    if isinstance(found, Response):
        return found
    state, name = found
    return _json(state.models[name].model_dump())


async def put_model_settings(request: Request) -> Response:
    """Replace the given top-level keys of a model's settings, e.g. {"ttft_ms": 500}."""
    found = _path_model(request)
    if isinstance(found, Response):
        return found
    state, name = found
    body = await _json_object(request)
    if isinstance(body, Response):
        return body
    try:
        updated = SimModel.model_validate({**state.models[name].model_dump(), **body})
    except ValidationError as exc:
        return _error(400, f"Invalid settings for model '{name}': {_validation_message(exc)}")
    state.models[name] = updated
    return _json(updated.model_dump())


async def put_faults(request: Request) -> Response:
    """Replace a model's faults block; keys left out become 0."""
    found = _path_model(request)
    if isinstance(found, Response):
        return found
    state, name = found
    body = await _json_object(request)
    if isinstance(body, Response):
        return body
    try:
        faults = Faults.model_validate(body)
    except ValidationError as exc:
        return _error(400, f"Invalid faults for model '{name}': {_validation_message(exc)}")
    state.models[name] = state.models[name].model_copy(update={"faults": faults})
    return _json(faults.model_dump())


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: f"Unknown path {request.url.path}. The simulator serves /v1/chat/completions, "
                    "/v1/models and /sim/*.",
               405: f"Method {request.method} is not allowed on {request.url.path}."}
    return _error(exc.status_code, message.get(exc.status_code, str(exc.detail)),
                  headers=getattr(exc, "headers", None))


async def _server_error(request: Request, exc: Exception) -> Response:
    return _error(500, f"Simulator bug: {type(exc).__name__}: {exc}", "server_error")


# --------------------------------------------------------------------------------------------
# App and runner
# --------------------------------------------------------------------------------------------


def create_sim_app(config: "SimConfig | Mapping[str, Any] | str | os.PathLike[str]",
                   outcomes: "Outcomes | str | os.PathLike[str] | None" = None) -> Starlette:
    """The simulator as a Starlette ASGI app; its `SimState` is `app.state.sim`.

    With `outcomes` (an `Outcomes` or a directory for `load_outcomes`) it runs in replay mode:
    every configured model must be one of the outcomes' models (see `create_replay_app`, which
    builds that config from models.csv)."""
    if outcomes is not None and not isinstance(outcomes, Outcomes):
        outcomes = load_outcomes(outcomes)
    state = SimState(load_sim_config(config), outcomes)
    _install_log_filter()
    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", get_model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/sim/stats", stats, methods=["GET"]),
        Route("/sim/reset", reset, methods=["POST"]),
        Route("/sim/last/{name:path}", last_body, methods=["GET"]),
        Route("/sim/last_headers/{name:path}", last_headers, methods=["GET"]),
        Route("/sim/models/{name:path}/faults", put_faults, methods=["PUT"]),
        Route("/sim/models/{name:path}", get_model_settings, methods=["GET"]),
        Route("/sim/models/{name:path}", put_model_settings, methods=["PUT"]),
    ]
    app = Starlette(routes=routes,
                    exception_handlers={HTTPException: _http_exception, Exception: _server_error})
    app.state.sim = state
    return app


def replay_config(outcomes: Outcomes, time_scale: float = 1.0, seed: int | None = None) -> SimConfig:
    """A sim config serving every model of `outcomes` with its models.csv timings times
    `time_scale` (ttft_ms x scale, tokens_per_s / scale; 0 = no waiting) and its prices."""
    if not (isinstance(time_scale, (int, float)) and math.isfinite(time_scale) and time_scale >= 0):
        raise SimConfigError(f"time_scale must be a number >= 0 (got {time_scale!r})")
    models = {}
    for name, m in outcomes.models.items():
        tokens_per_s = m.tokens_per_s / time_scale if time_scale > 0 and m.tokens_per_s > 0 else 0.0
        models[name] = SimModel(ttft_ms=m.ttft_ms * time_scale, tokens_per_s=tokens_per_s,
                                price=Price(input=m.price_in, output=m.price_out))
    return SimConfig(seed=seed, models=models)


def create_replay_app(outcomes: "Outcomes | str | os.PathLike[str]", time_scale: float = 1.0,
                      seed: int | None = None) -> Starlette:
    """The simulator in replay mode: the models of `outcomes` (an `Outcomes` or a directory for
    `load_outcomes`) answer its questions as they really did, at models.csv speed x `time_scale`."""
    if not isinstance(outcomes, Outcomes):
        outcomes = load_outcomes(outcomes)
    return create_sim_app(replay_config(outcomes, time_scale, seed), outcomes=outcomes)


def run_sim(config_path: "str | os.PathLike[str] | None" = None, host: str = "127.0.0.1",
            port: int = 8100, log_level: str = "warning",
            outcomes: "str | os.PathLike[str] | None" = None, time_scale: float = 1.0) -> None:
    """Serve the simulator until interrupted (`sigroute sim`). Default config: the demo one.
    With `outcomes` (a directory), serve replay mode instead; `config_path` must then be None."""
    import uvicorn

    from sigroute.gateway.serving import best_http, best_loop

    if outcomes is not None:
        if config_path is not None:
            raise SimConfigError("replay mode takes its models from the outcomes directory; "
                                 "do not give a sim config as well")
        loaded = load_outcomes(outcomes)
        app = create_replay_app(loaded, time_scale)
        for warning in loaded.warnings:
            print(f"sigroute sim: warning: {warning}", file=sys.stderr, flush=True)
        print(f"sigroute sim: replaying {len(loaded)} questions x {len(loaded.models)} models from "
              f"{loaded.root} (loaded in {loaded.load_s:.2f} s, time scale {time_scale:g})", flush=True)
    else:
        app = create_sim_app(config_path if config_path is not None else DEMO_CONFIG_PATH)
    names = ", ".join(app.state.sim.models)
    print(f"sigroute sim: http://{host}:{port}/v1 serving {names}", flush=True)
    uvicorn.run(app, host=host, port=port, loop=best_loop(), http=best_http(),
                access_log=False, log_level=log_level, timeout_graceful_shutdown=1)
