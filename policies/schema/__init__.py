"""The policy language: a pydantic model of the YAML file.

This package is the single source of truth for what a policy may contain. Every model forbids
unknown keys, so a typo is an error that names the key instead of a setting silently ignored.
`sigroute schema` exports the JSON Schema generated from these classes.

One module per section of the file:

- `base`: `Strict` (the base of every model), name patterns, durations, and `NamedOptions`
  (the `name` or `{name: {options}}` form of algorithms and plugins)
- `models`: `models:`, the backend models and their prices
- `signals`: `signals:` (heuristic and learned), `domains:` and `encoder:`
- `rule_trees`: the all/any/not trees of a decision's `rules:` (the engine that evaluates
  them is `policies/rules.py`)
- `algorithms`: a decision's `algorithm:`, with the features and rewards of learning ones
- `cache`: a decision's `cache:`
- `plugins`: a decision's `plugins:`
- `decisions`: `decisions:`
- `feedback`: `feedback:`, per-source feedback weights and implicit feedback
- `server`: `routing:`, `entrypoints:`, `auth:`, `server:` and `upstream:`
- `policy`: `Policy`, the root, with the checks that span sections, and `json_schema()`

Every public name is importable from here: `from sigroute.policies.schema import Policy`.
"""

from sigroute.policies.schema.algorithms import (
    ALGORITHM_OPTIONS,
    CONTEXTUAL_ALGORITHMS,
    FEATURE_GROUPS,
    Algorithm,
    CheapestOptions,
    EpsilonGreedyOptions,
    FastestOptions,
    FeatureGroup,
    HybridLinUCBOptions,
    LinUCBOptions,
    RewardSpec,
    RoundRobinOptions,
    StaticOptions,
    ThompsonOptions,
    WeightedOptions,
)
from sigroute.policies.schema.base import (
    ENV_NAME_PATTERN,
    NAME_PATTERN,
    Duration,
    Name,
    NamedOptions,
    Strict,
    parse_duration,
)
from sigroute.policies.schema.cache import CACHE_MODES, CacheSpec, CacheTuning, LoadAwareCache
from sigroute.policies.schema.decisions import Decision
from sigroute.policies.schema.feedback import Feedback, FeedbackWeightsSpec, ImplicitFeedback
from sigroute.policies.schema.models import Energy, ModelSpec, Price
from sigroute.policies.schema.plugins import (
    PLUGIN_OPTIONS,
    PLUGIN_ORDER,
    BlockAnswer,
    FastResponsePlugin,
    HallucinationPlugin,
    HeaderChanges,
    HeaderName,
    HeadersPlugin,
    JailbreakPlugin,
    ParamsPlugin,
    PiiPlugin,
    Plugin,
    ResponseGuardPlugin,
    SystemPromptPlugin,
)
from sigroute.policies.schema.policy import Policy, PolicyReferenceError, json_schema
from sigroute.policies.schema.rule_trees import (
    LEAF_PATTERN,
    AllRule,
    AnyRule,
    NotRule,
    RuleExpr,
    check_rule_syntax,
    rule_leaves,
)
from sigroute.policies.schema.server import (
    ApiKey,
    Auth,
    Breaker,
    CacheIndex,
    Entrypoint,
    RateLimit,
    Routing,
    Server,
    Tracing,
    Upstream,
)
from sigroute.policies.schema.signals import (
    BUILTIN_DOMAINS,
    BUILTIN_PII_TYPES,
    AuthzSignal,
    ComplexitySignal,
    ContextLengthSignal,
    ConversationSignal,
    DomainSignal,
    DomainSpec,
    EmbeddingSignal,
    EncoderSpec,
    FactCheckSignal,
    HeaderSignal,
    GuardCache,
    GuardSignal,
    JailbreakSignal,
    KeywordSignal,
    LanguageSignal,
    MetadataSignal,
    ModalitySignal,
    PiiSignal,
    DissatisfiedSignal,
    ReaskSignal,
    Sentences,
    Signals,
)

__all__ = [
    # base
    "ENV_NAME_PATTERN", "NAME_PATTERN", "Duration", "Name", "NamedOptions", "Strict", "parse_duration",
    # models
    "Energy", "ModelSpec", "Price",
    # signals
    "BUILTIN_DOMAINS", "BUILTIN_PII_TYPES", "AuthzSignal", "ComplexitySignal", "ContextLengthSignal",
    "ConversationSignal", "DomainSignal", "DomainSpec", "EmbeddingSignal", "EncoderSpec", "FactCheckSignal",
    "GuardCache", "GuardSignal", "HeaderSignal", "JailbreakSignal", "KeywordSignal", "LanguageSignal", "MetadataSignal", "ModalitySignal",
    "PiiSignal", "DissatisfiedSignal", "ReaskSignal", "Sentences", "Signals",
    # feedback
    "Feedback", "FeedbackWeightsSpec", "ImplicitFeedback",
    # rule trees
    "LEAF_PATTERN", "AllRule", "AnyRule", "NotRule", "RuleExpr", "check_rule_syntax", "rule_leaves",
    # algorithms
    "ALGORITHM_OPTIONS", "CONTEXTUAL_ALGORITHMS", "FEATURE_GROUPS", "Algorithm", "CheapestOptions",
    "EpsilonGreedyOptions", "FastestOptions", "FeatureGroup", "HybridLinUCBOptions", "LinUCBOptions", "RewardSpec",
    "RoundRobinOptions", "StaticOptions", "ThompsonOptions", "WeightedOptions",
    # cache
    "CACHE_MODES", "CacheSpec", "CacheTuning", "LoadAwareCache",
    # plugins
    "PLUGIN_OPTIONS", "PLUGIN_ORDER", "BlockAnswer", "FastResponsePlugin", "HallucinationPlugin", "HeaderChanges",
    "HeaderName", "HeadersPlugin", "JailbreakPlugin", "ParamsPlugin", "PiiPlugin", "Plugin", "ResponseGuardPlugin",
    "SystemPromptPlugin",
    # decisions
    "Decision",
    # server
    "ApiKey", "Auth", "Breaker", "CacheIndex", "Entrypoint", "RateLimit", "Routing", "Server", "Tracing", "Upstream",
    # policy
    "Policy", "PolicyReferenceError", "json_schema",
]
