"""The `guard` signal: a verdict from a guard model of the policy (Llama Guard, Prompt Guard, …).

Unlike every other signal it is asynchronous: it calls a model. The signal engine starts it
before the other signals and the embedding, so the guard's round trip overlaps them instead of
following them (`signals.engine`). The call itself goes through a `GuardBackend` the gateway
hands in (`gateway.guarding`), which uses the same upstream layer as routed requests: the guard
model's api_base, key, transport, breaker and retries come from its entry under `models:`.

How the guard is asked and read, per `format`:

| format         | sent (chat completions)                     | answer read                          | matched when               |
|----------------|---------------------------------------------|--------------------------------------|----------------------------|
| `llama_guard`  | the user (and assistant) turns, as they are; | "safe" or "unsafe" + a line "S1,S10" | unsafe (in `categories`,   |
|                | vLLM's Llama Guard chat template wraps them  |                                      | when the policy lists some)|
| `prompt_guard` | the text as one user message                 | BENIGN / INJECTION / JAILBREAK,      | not BENIGN and score ≥     |
|                |                                             | optionally a score, or JSON          | `threshold`                |
| `score`        | the text as one user message                 | a number in [0, 1]                   | score ≥ `threshold`        |

A timeout, an upstream failure, or an answer that does not read as a verdict (`malformed`) is
resolved by `on_error`: `open` → not matched, `closed` → matched (confidence 1). Each evaluation
is reported to the backend's `observe(signal, outcome, seconds)` with outcome one of safe,
unsafe, cached, timeout, error, malformed (the gateway counts them in
`sigroute_guard_requests_total` and times real calls in `sigroute_guard_seconds`).

Verdicts are cached in the process (`VerdictCache`, LRU + TTL) under the sha256 of what the guard
reads, so a repeated prompt costs no second call; failures are not cached. No request text is
kept in the cache, logged, or put in a metric label.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from sigroute.signals.base import Signal, SignalResult
from sigroute.signals.context import RequestContext

logger = logging.getLogger(__name__)


class GuardBackend(Protocol):
    """What a guard signal needs from the gateway: a model call and a place to report outcomes."""

    async def complete(self, model: str, messages: list[dict[str, str]], max_tokens: int, request_id: str,
                       trace: Any = None) -> str:
        """The text of `model`'s answer to `messages` (raises on any failure); `trace`: the request's."""

    def observe(self, signal: str, outcome: str, seconds: float | None) -> None:
        """One evaluation's outcome; `seconds` is the guard call's duration (None when none was made)."""


class MalformedVerdict(ValueError):
    """The guard answered something that is not a verdict in its format."""


@dataclass(frozen=True, slots=True)
class Verdict:
    unsafe: bool
    score: float                       # 1/0 for llama_guard; the classifier's score otherwise
    categories: tuple[str, ...] = ()   # llama_guard's S1..S14
    label: str | None = None           # prompt_guard's label


# --------------------------------------------------------------------------------------------
# reading verdicts

_CATEGORY = re.compile(r"\bS(\d{1,2})\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?|\.\d+)(?![\w.])")
_PROMPT_GUARD_LABELS = ("benign", "injection", "jailbreak", "malicious", "unsafe", "safe")


def read_llama_guard(text: str) -> Verdict:
    """"safe", or "unsafe" followed (usually on the next line) by categories "S1,S10"."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise MalformedVerdict("empty answer")
    first = lines[0].strip(" .:*`\"'").lower()
    word = first.split()[0] if first.split() else ""
    if word == "safe":
        return Verdict(False, 0.0)
    if word != "unsafe":
        raise MalformedVerdict("the answer starts with neither 'safe' nor 'unsafe'")
    found = []
    for match in _CATEGORY.finditer(" ".join(lines)):
        category = f"S{int(match.group(1))}"
        if category not in found:
            found.append(category)
    return Verdict(True, 1.0, tuple(found))


def _score_in(text: str) -> float | None:
    match = _NUMBER.search(text)
    if match is None:
        return None
    score = float(match.group(1))
    if not 0.0 <= score <= 1.0:
        raise MalformedVerdict("the score is outside [0, 1]")
    return score


def read_prompt_guard(text: str, threshold: float) -> Verdict:
    """A label (BENIGN, INJECTION, JAILBREAK …) with an optional score, as text ("JAILBREAK 0.97",
    "label: INJECTION, score: 0.8") or JSON ({"label": …, "score": …}); without a score, the label
    counts as certain."""
    stripped = text.strip()
    label, score = None, None
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            raise MalformedVerdict("the answer is not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("label"), str):
            raise MalformedVerdict("the JSON answer has no 'label'")
        label = data["label"].strip().lower()
        raw = data.get("score")
        if raw is not None:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0.0 <= raw <= 1.0:
                raise MalformedVerdict("the JSON answer's 'score' is not a number in [0, 1]")
            score = float(raw)
    else:
        lowered = stripped.lower()
        label = next((l for l in _PROMPT_GUARD_LABELS if re.search(rf"\b{l}\b", lowered)), None)
        score = _score_in(lowered)
    if label not in _PROMPT_GUARD_LABELS:
        raise MalformedVerdict("no known label (BENIGN, INJECTION, JAILBREAK) in the answer")
    benign = label in ("benign", "safe")
    if score is None:
        score = 0.0 if benign else 1.0
    # the score is the label's probability: a benign label's score says how sure it is benign
    attack_score = 1.0 - score if benign else score
    return Verdict(not benign and attack_score >= threshold, attack_score, (), label.upper())


def read_score(text: str, threshold: float) -> Verdict:
    """A number in [0, 1] (the probability the text is unsafe), possibly with words around it."""
    score = _score_in(text.strip())
    if score is None:
        raise MalformedVerdict("no number in the answer")
    return Verdict(score >= threshold, score)


# --------------------------------------------------------------------------------------------
# the cache


class VerdictCache:
    """Least-recently-used verdicts with a time to live, under a hash of the guarded text."""

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.size, self.ttl_s, self.clock = size, ttl_s, clock
        self._entries: OrderedDict[str, tuple[float, Verdict]] = OrderedDict()

    def get(self, key: str) -> Verdict | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, verdict = entry
        if self.clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return verdict

    def put(self, key: str, verdict: Verdict) -> None:
        if self.size <= 0:
            return
        self._entries[key] = (self.clock() + self.ttl_s, verdict)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# --------------------------------------------------------------------------------------------
# the signal


class Guard(Signal):
    """`signals.guard.<name>`: a guard model's verdict (see the module docstring)."""

    type = "guard"
    is_async = True

    def __init__(self, name: str, config: Any, backend: GuardBackend | None):
        super().__init__(name, config)
        self.backend = backend
        self.cache = VerdictCache(config.cache.size, config.cache.ttl)

    @classmethod
    def build(cls, name, config, resources, backend: GuardBackend | None = None):
        return cls(name, config, backend)

    def guard_messages(self, ctx: RequestContext) -> list[dict[str, str]]:
        """What the guard is sent: the last user message, or (input: conversation, llama_guard)
        the user and assistant turns, consecutive turns of one role joined, starting with a user
        turn (as Llama Guard's chat template requires)."""
        if self.config.input == "last_user" or self.config.format != "llama_guard":
            text = ctx.last_user_text if self.config.input == "last_user" else "\n\n".join(ctx.user_texts)
            return [{"role": "user", "content": text}] if text.strip() else []
        turns: list[dict[str, str]] = []
        for message in ctx.messages:
            if message.role not in ("user", "assistant") or not message.text.strip():
                continue
            if turns and turns[-1]["role"] == message.role:
                turns[-1]["content"] += "\n\n" + message.text
            elif turns or message.role == "user":
                turns.append({"role": message.role, "content": message.text})
        return turns

    def read(self, text: str) -> Verdict:
        fmt = self.config.format
        if fmt == "llama_guard":
            verdict = read_llama_guard(text)
            wanted = self.config.categories
            if verdict.unsafe and wanted and not set(verdict.categories) & set(wanted):
                return Verdict(False, verdict.score, verdict.categories)
            return verdict
        if fmt == "prompt_guard":
            return read_prompt_guard(text, self.config.threshold)
        return read_score(text, self.config.threshold)

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        raise TypeError("the guard signal is asynchronous: the engine awaits evaluate_async")

    async def evaluate_async(self, ctx: RequestContext, trace: Any = None) -> SignalResult:
        messages = self.guard_messages(ctx)
        if not messages:
            return SignalResult(False, 0.0, {"reason": "no text to guard"})
        key = hashlib.sha256(json.dumps([self.config.model, self.config.format, messages],
                                        ensure_ascii=False).encode()).hexdigest()
        verdict = self.cache.get(key)
        if verdict is not None:
            self._observe("cached", None)
            return self._result(verdict, cached=True)
        if self.backend is None:
            return self._failed("error", None)
        started = time.perf_counter()
        try:
            answer = await asyncio.wait_for(
                self.backend.complete(self.config.model, messages, self.config.max_tokens, ctx.request_id, trace),
                self.config.timeout)
        except asyncio.TimeoutError:
            return self._failed("timeout", time.perf_counter() - started, ctx)
        except MalformedVerdict:   # an answer without text
            return self._failed("malformed", time.perf_counter() - started, ctx)
        except Exception as exc:  # an upstream failure of any kind: on_error decides
            return self._failed("error", time.perf_counter() - started, ctx, exc)
        took = time.perf_counter() - started
        try:
            verdict = self.read(answer)
        except MalformedVerdict:
            return self._failed("malformed", took, ctx)
        self.cache.put(key, verdict)
        self._observe("unsafe" if verdict.unsafe else "safe", took)
        return self._result(verdict, cached=False)

    def _result(self, verdict: Verdict, cached: bool) -> SignalResult:
        value: dict[str, Any] = {"verdict": "unsafe" if verdict.unsafe else "safe",
                                 "score": round(verdict.score, 4), "model": self.config.model}
        if verdict.categories:
            value["categories"] = list(verdict.categories)
        if verdict.label is not None:
            value["label"] = verdict.label
        if cached:
            value["cached"] = True
        return SignalResult(verdict.unsafe, verdict.score, value)

    def _failed(self, outcome: str, seconds: float | None, ctx: RequestContext | None = None,
                exc: Exception | None = None) -> SignalResult:
        self._observe(outcome, seconds)
        # the outcome and the error's type only: an upstream's message may quote the request
        logger.warning("guard %s: %s%s (request %s); on_error: %s", self.key, outcome,
                       f" ({type(exc).__name__})" if exc is not None else "",
                       getattr(ctx, "request_id", "?"), self.config.on_error)
        closed = self.config.on_error == "closed"
        return SignalResult(closed, 1.0 if closed else 0.0,
                            {"verdict": "unsafe" if closed else "safe", "failure": outcome,
                             "on_error": self.config.on_error, "model": self.config.model})

    def _observe(self, outcome: str, seconds: float | None) -> None:
        if self.backend is not None:
            try:
                self.backend.observe(self.key, outcome, seconds)
            except Exception:  # metrics must never fail a request
                logger.exception("guard %s: reporting the outcome failed", self.key)
