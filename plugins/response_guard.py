"""`response_guard`: answers that leak the system prompt or repeat instructions injected through
tool results.

Detection works on words (case folded, punctuation dropped):

* **system-prompt leak**: the answer contains `min_words` consecutive words of the system prompt
  the model was given (after the `system_prompt` plugin);
* **injected instruction**: a tool/function result contained instruction-like text (cues such as
  "ignore previous instructions", "you must now", "tell the user to", "visit http…") and the
  answer repeats `min_words` consecutive words of that sentence, or a link or address that
  appears only inside it.

Actions: ``header`` (``x-sigroute-response-guard: leak|injection``; for streams only in the
``x-sigroute-plugins`` summary of later requests' metrics, since stream headers go out first),
``redact`` (the repeated words become ``[withheld]``), ``block`` (the answer is replaced by
`message`). On streams the guard holds back the last ``min_words - 1`` words of the answer until
more arrive or the stream ends, so a leak is caught before any of its words reach the caller.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from sigroute.plugins.base import Plugin, PluginState

_WORD = re.compile(r"[\w'’-]+", re.UNICODE)
_LINK = re.compile(r"https?://[^\s)\]>\"']+|www\.[^\s)\]>\"']+|[\w.+-]+@[\w-]+\.[\w.-]+", re.IGNORECASE)
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+|\n+")
_INSTRUCTION_CUES = re.compile(
    r"\b(ignore|disregard|forget)\b.{0,40}\b(instructions?|prompts?|rules|above|previous|prior)\b"
    r"|\byou (must|should|will) (now|always|instead)\b|\bnew instructions?\b|\bsystem prompt\b"
    r"|\b(tell|instruct|ask|urge) the user to\b|\b(visit|go to|click|download|send .{0,30} to)\b.{0,60}(https?://|www\.)"
    r"|\bdo not (tell|mention|reveal)\b|\bassistant[, ]+(must|should)\b|\bas an ai (without|with no)\b",
    re.IGNORECASE)


def words_with_spans(text: str) -> list[tuple[str, int, int]]:
    return [(m.group(0).casefold().replace("’", "'"), m.start(), m.end()) for m in _WORD.finditer(text)]


def shingles(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class GuardContext:
    """What the guard compares answers with, taken from the request as sent upstream."""

    system: set[tuple[str, ...]]
    injected: set[tuple[str, ...]]
    links: set[str]


def find_repeats(text: str, ctx: GuardContext, n: int) -> list[tuple[str, int, int]]:
    """(kind, start, end) character spans of `text` that repeat guarded material."""
    words = words_with_spans(text)
    spans: list[tuple[str, int, int]] = []
    for i in range(len(words) - n + 1):
        gram = tuple(w for w, _, _ in words[i:i + n])
        kind = "leak" if gram in ctx.system else "injection" if gram in ctx.injected else None
        if kind:
            start, end = words[i][1], words[i + n - 1][2]
            if spans and spans[-1][0] == kind and start <= spans[-1][2]:
                spans[-1] = (kind, spans[-1][1], end)
            else:
                spans.append((kind, start, end))
    for m in _LINK.finditer(text):
        if m.group(0).rstrip(".,;:").casefold() in ctx.links:
            spans.append(("injection", m.start(), m.start() + len(m.group(0).rstrip(".,;:"))))
    return sorted(spans, key=lambda s: s[1])


def redact(text: str, spans, offset: int = 0) -> str:
    """`text` (which starts at `offset` of the whole answer) with the spans replaced by
    [withheld]; a span that began before `offset` was marked already and is just dropped."""
    out, pos = [], 0
    for _, start, end in spans:
        marker = "[withheld]" if start >= offset else ""
        start, end = max(start - offset, pos), min(end - offset, len(text))
        if start >= end:
            continue
        out += [text[pos:start], marker]
        pos = end
    out.append(text[pos:])
    return "".join(out)


class ResponseGuard(Plugin):
    name = "response_guard"

    def __init__(self, options):
        self.options = options
        self.n = options.min_words

    async def on_request(self, ctx, state: PluginState):
        o = self.options
        system_words, injected_words, links = [], [], set()
        for message in ctx.messages:
            if o.system_prompt_leak and message.role in ("system", "developer"):
                system_words.append([w for w, _, _ in words_with_spans(message.text)])
            if o.injected_instructions and message.role in ("tool", "function"):
                for sentence in _SENTENCE_BREAK.split(message.text):
                    if _INSTRUCTION_CUES.search(sentence):
                        injected_words.append([w for w, _, _ in words_with_spans(sentence)])
                        links.update(l.rstrip(".,;:").casefold() for l in _LINK.findall(sentence))
        if system_words or injected_words:
            other = "\n".join(m.text for m in ctx.messages if m.role not in ("tool", "function"))
            links = {l for l in links if l not in other.casefold()}   # only links the injection brought in
            state.guard = GuardContext(
                system=set().union(*(shingles(w, self.n) for w in system_words)) if system_words else set(),
                injected=set().union(*(shingles(w, min(self.n, len(w))) for w in injected_words if w))
                if injected_words else set(), links=links)
        return ctx

    def _act(self, text: str, state: PluginState) -> str:
        spans = find_repeats(text, state.guard, self.n)
        if not spans:
            return text
        kinds = sorted({k for k, _, _ in spans})
        state.did(self.name, self.options.action, "+".join(kinds))
        state.response_headers["x-sigroute-response-guard"] = ",".join(kinds)
        if self.options.action == "redact":
            return redact(text, spans)
        if self.options.action == "block":
            return self.options.message
        return text

    def on_response(self, body: dict[str, Any], state: PluginState) -> dict[str, Any]:
        if state.guard is None:
            return body
        for choice in body.get("choices") or ():
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = self._act(message["content"], state)
        return body

    def stream_filter(self, state: PluginState):
        if state.guard is None:
            return None
        return GuardFilter(self, state)


class GuardFilter:
    """Streams an answer through the guard, holding back the words that could still complete a
    repeat; once a block is decided, the rest of that choice is dropped and the message sent."""

    def __init__(self, guard: ResponseGuard, state: PluginState):
        self.guard = guard
        self.state = state
        self.text: dict[int, str] = {}      # everything received per choice
        self.sent: dict[int, int] = {}      # characters of it already passed on
        self.blocked: set[int] = set()

    def _safe_end(self, text: str) -> int:
        """Where the held-back tail starts: the last min_words - 1 complete words (and a word still
        being written) may yet become part of a repeat."""
        words = words_with_spans(text)
        keep = self.guard.n - 1 + (1 if words and words[-1][2] == len(text) else 0)
        if len(words) <= keep:
            return 0
        return words[-keep][1]

    def _emit(self, index: int, final: bool) -> str:
        text = self.text.get(index, "")
        spans = find_repeats(text, self.state.guard, self.guard.n)
        sent = self.sent.get(index, 0)
        if spans and index not in self.blocked:
            action = self.guard.options.action
            kinds = sorted({k for k, _, _ in spans})
            if (self.guard.name, action, "+".join(kinds)) not in self.state.actions:
                self.state.did(self.guard.name, action, "+".join(kinds))
            if action == "block":
                self.blocked.add(index)
                self.sent[index] = len(text)
                return ("\n\n" if sent else "") + self.guard.options.message
            if action == "redact":
                # redact inside the unsent part; spans reaching into sent text start at `sent`
                end = len(text) if final else self._safe_end(text)
                end = min(len(text), max(end, max((e for _, s, e in spans if s < end), default=end)))
                if end <= sent:
                    return ""
                out = redact(text[sent:end], [sp for sp in spans if sp[2] > sent and sp[1] < end], offset=sent)
                self.sent[index] = end
                return out
        if index in self.blocked:
            self.sent[index] = len(text)
            return ""
        end = len(text) if final else self._safe_end(text)
        if end <= sent:
            return ""
        self.sent[index] = end
        return text[sent:end]

    def feed(self, index: int, text: str) -> str:
        self.text[index] = self.text.get(index, "") + text
        return self._emit(index, final=False)

    def flush(self, index: int) -> str:
        return self._emit(index, final=True)

    def pending_indices(self) -> list[int]:
        return [i for i, t in self.text.items() if self.sent.get(i, 0) < len(t)]
