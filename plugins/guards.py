"""Safety plugins on the request: `jailbreak` and `pii`.

`jailbreak` reads the shipped jailbreak head's score for the request's user turns (the same score
the `jailbreak` signal reports; computed once per request when both are used) and acts on the
graduated thresholds of its options.

`pii` finds personal data in every message with the pattern detector of `signals.pii` and
`block`s the request, `redact`s it (typed placeholders reach the model and stay in the answer) or
`mask_and_restore`s it: placeholders reach the model and the original values are put back in its
answer, whole or streamed (`RestoreFilter` holds back the end of a delta that could be the start
of a placeholder until the next delta decides). The same value gets the same placeholder in every
message of the request. The mapping lives in the request's `PluginState` only: never logged, never
in metrics, never in the cache (a request with findings skips the cache unless the plugin's
``cache: true``; then the cache keeps the masked answer to the masked request).
"""

from __future__ import annotations

import json
import re
from typing import Any

from sigroute.plugins.base import Blocked, Plugin, PluginState, Reroute


class Jailbreak(Plugin):
    name = "jailbreak"

    def __init__(self, options, resources):
        from sigroute.policies.schema import JailbreakSignal
        from sigroute.signals.learned import Jailbreak as JailbreakScore

        if resources is None:
            raise ValueError("the jailbreak plugin needs the sentence encoder, which was not loaded")
        self.options = options
        self.scorer = JailbreakScore("plugin", JailbreakSignal(turns=options.turns), resources.head("jailbreak"))

    async def on_request(self, ctx, state: PluginState):
        texts = self.scorer.embedding_texts(ctx)
        if not texts:
            return ctx
        await ctx.ensure_embeddings(texts)
        score = self.scorer.evaluate(ctx).confidence
        o = self.options
        if o.block_above is not None and score >= o.block_above:
            state.did(self.name, "block")
            return Blocked(self.name, o.response, o.message, "jailbreak_detected")
        if o.reroute_above is not None and score >= o.reroute_above:
            state.did(self.name, "reroute", o.reroute_to)
            return Reroute(self.name, o.reroute_to)
        if o.warn_above is not None and score >= o.warn_above:
            state.did(self.name, "warn", f"{score:.3f}")
            state.response_headers["x-sigroute-jailbreak"] = f"{score:.3f}"
        return ctx


class _Masker:
    """Placeholders shared by every text of one request: the same value, the same placeholder."""

    def __init__(self, taken: str):
        self.taken = taken          # all text of the request: a placeholder must not occur in it
        self.mapping: dict[str, str] = {}
        self._by_value: dict[tuple[str, str], str] = {}
        self._counts: dict[str, int] = {}

    def mask(self, text: str, entities) -> str:
        parts, pos = [], 0
        for e in sorted(entities, key=lambda e: e.start):
            if e.start < pos:
                continue
            original = text[e.start:e.end]
            key = (e.type, original)
            placeholder = self._by_value.get(key)
            if placeholder is None:
                n = self._counts.get(e.type, 0)
                while True:
                    n += 1
                    placeholder = f"<{e.type}_{n}>"
                    if placeholder not in self.taken:
                        break
                self._counts[e.type] = n
                self._by_value[key] = placeholder
                self.mapping[placeholder] = original
            parts += [text[pos:e.start], placeholder]
            pos = e.end
        parts.append(text[pos:])
        return "".join(parts)


class Pii(Plugin):
    name = "pii"

    def __init__(self, options, resources=None):
        from sigroute.signals import pii_tagger
        from sigroute.signals.pii import _norm_value, default_detector

        self.options = options
        self.detector = default_detector()
        listed = options.entities
        base = self.detector.resolve(listed) if listed else self.detector.default_entities
        self.entities = frozenset(base - {a.upper() for a in options.allow})
        self.allowed_values = frozenset(_norm_value(v) for v in options.allow_values)
        self._norm = _norm_value
        # names, places, addresses, organisations: the token tagger on the shared encoder
        self._tagging = pii_tagger
        self.tagger = pii_tagger.tagger_for(self.entities, resources)

    def _find(self, text: str, ctx):
        tagged = () if self.tagger is None else self._tagging.tagged_entities(
            self.tagger, text, [text], ctx.token_states, self.entities)
        found = self.detector.detect(text, self.entities, min_score=self.options.threshold, tagged=tagged)
        return [e for e in found if self._norm(e.text) not in self.allowed_values]

    @staticmethod
    def _texts(messages) -> list[str]:
        texts = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, str):
                texts.append(content)
            elif isinstance(content, list):
                texts.extend(p["text"] for p in content
                             if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str))
        return [t for t in texts if t]

    async def on_request(self, ctx, state: PluginState):
        messages = ctx.body["messages"]
        if self.tagger is not None:  # every message's word-piece states, in one encoder call
            await ctx.ensure_embeddings((), self._texts(messages))
        return self._mask(ctx, state, messages)

    def _mask(self, ctx, state: PluginState, messages):
        findings: list[tuple[int, int | None, str, list]] = []   # (message, part or None, text, entities)
        for i, message in enumerate(messages):
            content = message.get("content")
            if isinstance(content, str):
                found = self._find(content, ctx)
                if found:
                    findings.append((i, None, content, found))
            elif isinstance(content, list):
                for j, part in enumerate(content):
                    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                        found = self._find(part["text"], ctx)
                        if found:
                            findings.append((i, j, part["text"], found))
        if not findings:
            return ctx
        count = sum(len(f) for *_, f in findings)
        o = self.options
        state.private = "pii"   # personal data found: the request is never judged or copied (gateway.judging)
        if o.action == "block":
            state.did(self.name, "block")
            return Blocked(self.name, o.response, o.message, "pii_detected")
        masker = _Masker("\n".join(m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
                                   for m in messages))
        new_messages = [dict(m) for m in messages]
        for i, j, text, found in findings:
            masked = masker.mask(text, found)
            if j is None:
                new_messages[i]["content"] = masked
            else:
                parts = [dict(p) if isinstance(p, dict) else p for p in new_messages[i]["content"]]
                parts[j]["text"] = masked
                new_messages[i]["content"] = parts
        if o.action == "mask_and_restore":
            state.pii_mapping.update(masker.mapping)
        state.did(self.name, "masked" if o.action == "mask_and_restore" else "redacted", str(count))
        if not o.cache:
            state.skip_cache = "pii"
        return ctx.with_body({**ctx.body, "messages": new_messages})

    # the answer ---------------------------------------------------------------------------------
    def on_response(self, body: dict[str, Any], state: PluginState) -> dict[str, Any]:
        mapping = state.pii_mapping
        if not mapping:
            return body
        rx = _placeholder_regex(mapping)
        for choice in body.get("choices") or ():
            message = choice.get("message") or {}
            if isinstance(message.get("content"), str):
                message["content"] = rx.sub(lambda m: mapping[m.group(0)], message["content"])
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                if isinstance(function.get("arguments"), str):   # JSON text: values go in escaped
                    function["arguments"] = rx.sub(lambda m: json.dumps(mapping[m.group(0)])[1:-1],
                                                   function["arguments"])
        return body

    def stream_filter(self, state: PluginState):
        return RestoreFilter(state.pii_mapping) if state.pii_mapping else None


def _placeholder_regex(mapping) -> re.Pattern:
    return re.compile("|".join(re.escape(p) for p in sorted(mapping, key=len, reverse=True)))


class RestoreFilter:
    """Restores placeholders in streamed content, across delta boundaries."""

    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping
        self.rx = _placeholder_regex(mapping)
        self.longest = max(len(p) for p in mapping)
        self.pending: dict[int, str] = {}

    def feed(self, index: int, text: str) -> str:
        buffer = self.pending.pop(index, "") + text
        out = self.rx.sub(lambda m: self.mapping[m.group(0)], buffer)
        # hold back a tail that could still become a placeholder ("<EMAIL_ADD" ...)
        cut = out.rfind("<")
        if cut != -1 and len(out) - cut < self.longest and any(p.startswith(out[cut:]) for p in self.mapping):
            self.pending[index] = out[cut:]
            return out[:cut]
        return out

    def flush(self, index: int) -> str:
        return self.pending.pop(index, "")

    def pending_indices(self) -> list[int]:
        return list(self.pending)
