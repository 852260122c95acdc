"""`hallucination`: are the answer's statements supported by the context the request supplied?

Only requests that carry grounding context are checked: the text of the messages whose roles the
plugin lists (tool and function results and system messages by default; add `user` for documents
pasted into the question) must hold at least `min_context_words` words, and, unless
`require_fact_check: false`, the `fact_check` estimate of the request must reach
`fact_check_threshold` (creative writing, code and opinion need no check). Everything else skips
the plugin entirely: no embedding, no delay.

`GroundingChecker` does the work, also used by `benchmarks.hallucination`:

1. the answer is split into claims: sentences of at least `min_claim_words` words, questions and
   obvious hedges ("I'm not sure", "I don't know") left out;
2. the context is split into sentences, and pairs of neighbouring sentences (a claim often draws on
   two), all embedded with the claims in ONE encoder call;
3. a claim's *support* is its highest cosine similarity with a context unit; a claim is
   unsupported when support < `threshold`, or when it states a number that does not occur in the
   context (numbers are normalized: 1,200 = 1200, 12.0 = 12), or when it names a capitalized entity
   absent from the context and its support is below `threshold + entity_margin`.

What it can and cannot catch (see the README's benchmark numbers): wrong numbers and names that
the context does not contain are caught reliably; a claim that reuses the context's own words to
say something false (a swapped relation, a negation) is often missed: embedding similarity
measures topic, not truth. There is no entailment model that runs in milliseconds on CPU.

Actions: ``header`` (``x-sigroute-unsupported``: the unsupported claims as a JSON list of
[start, end] character offsets into the answer), ``annotate`` (a note listing them is appended to
the answer), ``block`` (the answer is replaced by `message`). On streams the check runs when the
answer is complete: ``annotate`` appends the note as a last content delta; ``block`` holds the
whole answer back until it is checked (so streaming gives no early tokens there); ``header``
cannot follow a stream whose headers went out first, so streamed answers are only counted in
metrics (``sigroute_plugin_actions_total{action="unsupported"}``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

import numpy as np

from sigroute.plugins.base import Plugin, PluginState

_SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])|\n+")
_WORD = re.compile(r"[A-Za-z0-9][\w'’-]*")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w])|(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w])")
_ENTITY = re.compile(r"(?<!^)(?<![.!?]\s)\b[A-Z][a-zA-Z]+(?:\s+[A-Z][a-zA-Z]+)*")
_HEDGE = re.compile(r"\b(i'?m not sure|i do not know|i don'?t know|i cannot (?:verify|confirm)|as an ai)\b", re.I)
_NOT_ENTITIES = frozenset("I The A An This That These Those It Its However Also In On At For And But Or If When "
                          "While Yes No So Then There Here We You They He She My Our Your".split())


def number_forms(text: str) -> set[str]:
    """Numbers in `text`, normalized (thousands separators dropped, 12.0 -> 12)."""
    out = set()
    for raw in _NUMBER.findall(text):
        value = raw.replace(",", "").lstrip("+")
        try:
            number = float(value)
        except ValueError:
            continue
        out.add(str(int(number)) if number.is_integer() else repr(number))
    return out


def entity_names(text: str) -> set[str]:
    names = set()
    for m in _ENTITY.finditer(text):
        words = [w for w in m.group(0).split() if w not in _NOT_ENTITIES]
        if words:
            names.add(" ".join(words).casefold())
    return names


def sentences(text: str) -> list[tuple[str, int, int]]:
    out, pos = [], 0
    for part in _SENTENCE_BREAK.split(text):
        start = text.find(part, pos)
        if part.strip():
            lead = len(part) - len(part.lstrip())
            out.append((part.strip(), start + lead, start + lead + len(part.strip())))
        pos = start + len(part)
    return out


@dataclass
class Claim:
    text: str
    start: int
    end: int
    support: float = 0.0
    reasons: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        return not self.reasons


class GroundingChecker:
    def __init__(self, threshold: float = 0.6, entity_margin: float = 0.15, min_claim_words: int = 4,
                 max_claims: int = 24):
        self.threshold = threshold
        self.entity_margin = entity_margin
        self.min_claim_words = min_claim_words
        self.max_claims = max_claims

    def claims(self, answer: str) -> list[Claim]:
        out = []
        for text, start, end in sentences(answer):
            if len(_WORD.findall(text)) < self.min_claim_words or text.endswith("?") or _HEDGE.search(text):
                continue
            out.append(Claim(text, start, end))
        return out[:self.max_claims]

    @staticmethod
    def context_units(context: str) -> list[str]:
        parts = [s for s, _, _ in sentences(context)]
        return parts + [f"{a} {b}" for a, b in zip(parts, parts[1:])]

    async def check(self, answer: str, context: str,
                    embed: Callable[[Sequence[str]], Awaitable[np.ndarray]]) -> list[Claim]:
        """Every claim of `answer` with its support and, if unsupported, the reasons."""
        claims = self.claims(answer)
        units = self.context_units(context)
        if not claims or not units:
            return claims
        vectors = await embed([c.text for c in claims] + units)
        sims = vectors[:len(claims)] @ vectors[len(claims):].T
        context_numbers = number_forms(context)
        context_lower = context.casefold()
        for claim, row in zip(claims, sims):
            claim.support = float(row.max())
            if claim.support < self.threshold:
                claim.reasons.append("dissimilar")
            missing_numbers = number_forms(claim.text) - context_numbers
            if missing_numbers:
                claim.reasons.append("numbers:" + ",".join(sorted(missing_numbers)))
            missing_names = [n for n in entity_names(claim.text) if n not in context_lower]
            if missing_names and claim.support < self.threshold + self.entity_margin and "dissimilar" not in claim.reasons:
                claim.reasons.append("names")
        return claims


@dataclass
class Grounding:
    context: str


class Hallucination(Plugin):
    name = "hallucination"

    def __init__(self, options, resources):
        from sigroute.policies.schema import FactCheckSignal
        from sigroute.signals.learned import FactCheck

        if resources is None:
            raise ValueError("the hallucination plugin needs the sentence encoder, which was not loaded")
        self.options = options
        self.checker = GroundingChecker(options.threshold, options.entity_margin, options.min_claim_words)
        self.fact_check = (FactCheck.build("hallucination", FactCheckSignal(threshold=options.fact_check_threshold),
                                           resources) if options.require_fact_check else None)

    async def on_request(self, ctx, state: PluginState):
        o = self.options
        context = "\n".join(m.text for m in ctx.messages if m.role in o.context_roles and m.text.strip())
        if len(_WORD.findall(context)) < o.min_context_words:
            return ctx
        if self.fact_check is not None:
            if not ctx.embedding_text.strip():
                return ctx
            await ctx.ensure_embeddings((ctx.embedding_text,))
            if not self.fact_check.evaluate(ctx).matched:
                return ctx
        state.grounding = Grounding(context)
        state.embed = ctx.embedder.embed
        return ctx

    async def verdict(self, text: str, state: PluginState) -> list[Claim]:
        claims = await self.checker.check(text, state.grounding.context, state.embed)
        bad = [c for c in claims if not c.supported]
        state.did(self.name, "unsupported" if bad else "supported", str(len(bad)) if bad else "")
        return bad

    def note(self, bad: list[Claim]) -> str:
        listed = "; ".join(f"\u201c{c.text}\u201d" for c in bad)
        return f"\n\n{self.options.note} {listed}"

    async def on_response(self, body: dict[str, Any], state: PluginState) -> dict[str, Any]:
        if state.grounding is None:
            return body
        for choice in body.get("choices") or ():
            message = choice.get("message") or {}
            text = message.get("content")
            if not isinstance(text, str) or not text:
                continue
            bad = await self.verdict(text, state)
            if not bad:
                continue
            action = self.options.action
            if action == "header":
                state.response_headers["x-sigroute-unsupported"] = "[" + ",".join(
                    f"[{c.start},{c.end}]" for c in bad) + "]"
            elif action == "annotate":
                message["content"] = text + self.note(bad)
            else:
                message["content"] = self.options.message
        return body

    def stream_filter(self, state: PluginState):
        return None if state.grounding is None else GroundingFilter(self, state)


class GroundingFilter:
    """Checks a streamed answer when its choice finishes (see the module docstring)."""

    def __init__(self, plugin: Hallucination, state: PluginState):
        self.plugin = plugin
        self.state = state
        self.text: dict[int, str] = {}
        self.hold = plugin.options.action == "block"

    def feed(self, index: int, text: str) -> str:
        self.text[index] = self.text.get(index, "") + text
        return "" if self.hold else text

    async def flush(self, index: int) -> str:
        text = self.text.pop(index, "")
        if not text:
            return ""
        bad = await self.plugin.verdict(text, self.state)
        if self.plugin.options.action == "block":
            return self.plugin.options.message if bad else text
        if self.plugin.options.action == "annotate" and bad:
            return self.plugin.note(bad)
        return ""

    def pending_indices(self) -> list[int]:
        return [i for i, t in self.text.items() if t]
