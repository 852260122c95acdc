"""`RequestContext`: the normalized view of one chat-completion request that signals read.

OpenAI messages come in several shapes: `content` as a string, as a list of typed parts
(`text`, `image_url`, `input_audio`, `file`), or absent (assistant tool calls). The context flattens
each message to its text once, remembers which kinds of parts it carried, and computes the derived
facts that signals need (last user turn, token count, turn count, …) lazily, at most once.

Signals never mutate the context; the pipeline owns it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

PART_KINDS = {
    "text": "text",
    "input_text": "text",
    "image_url": "image",
    "input_image": "image",
    "image": "image",
    "input_audio": "audio",
    "audio": "audio",
    "audio_url": "audio",
    "file": "file",
    "input_file": "file",
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: resolved from the API key by the gateway."""

    tenant: str = "default"
    user: str | None = None
    roles: tuple[str, ...] = ()
    key_id: str = "anonymous"


ANONYMOUS = Principal()


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    text: str
    kinds: frozenset[str]  # kinds of content parts: text, image, audio, file
    has_tool_calls: bool = False


def _flatten_content(content: Any) -> tuple[str, frozenset[str]]:
    if content is None:
        return "", frozenset()
    if isinstance(content, str):
        return content, frozenset({"text"}) if content else frozenset()
    if isinstance(content, list):
        texts: list[str] = []
        kinds: set[str] = set()
        for part in content:
            if isinstance(part, str):
                texts.append(part)
                kinds.add("text")
                continue
            if not isinstance(part, Mapping):
                continue
            ptype = part.get("type", "text")
            kind = PART_KINDS.get(ptype, "other")
            kinds.add(kind)
            if kind == "text":
                text = part.get("text")
                if isinstance(text, str):
                    texts.append(text)
        return "\n".join(texts), frozenset(kinds)
    return str(content), frozenset({"text"})


def normalize_messages(raw: Any) -> tuple[Message, ...]:
    """Turn the request's `messages` into `Message`s; the caller has validated the list's shape."""
    out = []
    for m in raw or ():
        text, kinds = _flatten_content(m.get("content"))
        out.append(Message(role=str(m.get("role", "user")), text=text, kinds=kinds,
                           has_tool_calls=bool(m.get("tool_calls"))))
    return tuple(out)


@dataclass(eq=False)
class RequestContext:
    """Everything sigroute knows about one request while it is routed."""

    request_id: str
    body: Mapping[str, Any]
    messages: tuple[Message, ...]
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-cased names
    principal: Principal = ANONYMOUS
    # Set by the pipeline when some signal needs embeddings (a signals.encoder.RequestEmbedder).
    embedder: Any = None
    _vectors: dict[str, Any] = field(default_factory=dict, repr=False)
    _token_states: dict[str, Any] = field(default_factory=dict, repr=False)
    memo: dict[Any, Any] = field(default_factory=dict, repr=False)  # per-request results signals share
    # the caller's cost/quality dial in [0, 1] (bandits.tradeoff), None when the request set none
    tradeoff: float | None = None

    @classmethod
    def from_body(cls, request_id: str, body: Mapping[str, Any], headers: Mapping[str, str] | None = None,
                  principal: Principal = ANONYMOUS, embedder: Any = None) -> "RequestContext":
        return cls(request_id=request_id, body=body, messages=normalize_messages(body.get("messages")),
                   headers=headers or {}, principal=principal, embedder=embedder)

    def with_body(self, body: Mapping[str, Any]) -> "RequestContext":
        """The same request with another body (a plugin changed it): same id, caller and headers;
        embeddings computed so far are reused (they are keyed by text), per-request results are not."""
        return RequestContext(request_id=self.request_id, body=body, messages=normalize_messages(body.get("messages")),
                              headers=self.headers, principal=self.principal, embedder=self.embedder,
                              _vectors=self._vectors, _token_states=self._token_states, tradeoff=self.tradeoff)

    # request parameters ---------------------------------------------------------------------
    @property
    def model(self) -> str:
        return str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        return bool(self.body.get("stream", False))

    @property
    def max_output_tokens(self) -> int | None:
        value = self.body.get("max_completion_tokens") or self.body.get("max_tokens")
        return int(value) if isinstance(value, (int, float)) and value > 0 else None

    @cached_property
    def metadata(self) -> Mapping[str, Any]:
        meta = self.body.get("metadata")
        out = dict(meta) if isinstance(meta, Mapping) else {}
        if "user" not in out and isinstance(self.body.get("user"), str):
            out["user"] = self.body["user"]
        return out

    # derived text ---------------------------------------------------------------------------
    @cached_property
    def last_user_text(self) -> str:
        for m in reversed(self.messages):
            if m.role == "user":
                return m.text
        return ""

    @cached_property
    def user_texts(self) -> tuple[str, ...]:
        return tuple(m.text for m in self.messages if m.role == "user")

    @cached_property
    def system_text(self) -> str:
        return "\n".join(m.text for m in self.messages if m.role in ("system", "developer"))

    @cached_property
    def all_text(self) -> str:
        return "\n".join(m.text for m in self.messages)

    def text_for_scope(self, scope: str) -> str:
        if scope == "last_user":
            return self.last_user_text
        if scope == "user":
            return "\n".join(self.user_texts)
        if scope == "system":
            return self.system_text
        return self.all_text

    # derived facts --------------------------------------------------------------------------
    @cached_property
    def user_turns(self) -> int:
        return sum(1 for m in self.messages if m.role == "user")

    @cached_property
    def has_tools(self) -> bool:
        return bool(self.body.get("tools") or self.body.get("functions"))

    @cached_property
    def has_system_prompt(self) -> bool:
        return any(m.role in ("system", "developer") for m in self.messages)

    @cached_property
    def modalities(self) -> frozenset[str]:
        kinds: set[str] = set()
        for m in self.messages:
            kinds |= m.kinds
        return frozenset(kinds)

    @cached_property
    def prompt_tokens(self) -> int:
        """Prompt size in tokens, counted with a real BPE tokenizer (see signals.tokens)."""
        from sigroute.signals.tokens import count_message_tokens

        return count_message_tokens(self.messages)

    # embeddings -----------------------------------------------------------------------------
    @cached_property
    def embedding_text(self) -> str:
        """The text behind the request's embedding (the encoder's `input` setting)."""
        scope = getattr(self.embedder, "input", "last_user")
        return self.text_for_scope(scope)

    async def ensure_embeddings(self, texts: Any, token_texts: Any = ()) -> None:
        """Embed every text not embedded yet for this request, in one encoder call; with
        `token_texts`, also keep those texts' word-piece states (for the PII token tagger), from
        the same pass: a text wanted both ways is run through the encoder once."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._vectors))
        wanted = list(dict.fromkeys(t for t in token_texts if t not in self._token_states))
        if not missing and not wanted:
            return
        if self.embedder is None:
            raise RuntimeError("this request has no encoder: no signal of the policy declared it needs one")
        if wanted:
            asked = set(wanted)
            # embeddings still needed ride along in the token pass when they are the encoder's own
            batch = wanted + [t for t in missing if t not in asked and self.embedder.embeds_whole(t)]
            vectors, windows = await self.embedder.embed_with_tokens(batch)
            for text, vector, states in zip(batch, vectors, windows):
                self._token_states[text] = states
                if text not in self._vectors and self.embedder.embeds_whole(text):
                    self._vectors[text] = vector
            missing = [t for t in missing if t not in self._vectors]
            if not missing:
                return
        vectors = await self.embedder.embed(missing)
        for text, vector in zip(missing, vectors):
            self._vectors[text] = vector

    def token_states(self, text: str) -> list:
        """The word-piece states of `text` (a list of windows), computed by `ensure_embeddings`."""
        try:
            return self._token_states[text]
        except KeyError:
            raise KeyError("text's token states were not computed for this request; list it in "
                           "ensure_embeddings(token_texts=...)") from None

    def vector(self, text: str):
        """The unit embedding of `text`, which `ensure_embeddings` computed earlier for this request."""
        try:
            return self._vectors[text]
        except KeyError:
            raise KeyError("text was not embedded for this request; the signal engine embeds what "
                           "signals list in embedding_texts()") from None

    @property
    def embedding_vector(self):
        """The request's embedding (computed by `embedding()` or the signal engine)."""
        return self.vector(self.embedding_text)

    async def embedding(self):
        """The request's embedding, computed at most once."""
        await self.ensure_embeddings((self.embedding_text,))
        return self.embedding_vector
