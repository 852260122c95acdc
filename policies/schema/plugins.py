"""The per-decision plugins (`plugins:` of a decision): the options of each, and `Plugin`, the
`{name: {options}}` entry a decision lists. The plugins themselves are the top-level `plugins/`
package.

Each decision lists the plugins it runs; they run in the fixed order of `PLUGIN_ORDER`, whatever
the order in the file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from sigroute.policies.schema.base import Name, NamedOptions, Strict
from sigroute.policies.schema.signals import PiiSignal


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


HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")]


class HeaderChanges(Strict):
    set: dict[HeaderName, str] = Field(default_factory=dict)
    remove: tuple[HeaderName, ...] = ()


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


class Plugin(NamedOptions):
    """One plugin of a decision; written in YAML as `{name: {options}}` (or just `name` when its
    options all have defaults)."""

    registry = PLUGIN_OPTIONS
    shape = "each plugin is written {plugin_name: {options}}"
    unknown = "unknown plugin '{name}' (plugins available in this version: {known})"
