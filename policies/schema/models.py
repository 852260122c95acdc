"""The backend models a policy routes to (`models:`): how each is called and what it costs."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, field_validator, model_validator

from sigroute.policies.schema.base import ENV_NAME_PATTERN, Strict


class Price(Strict):
    """Declared price in USD per million tokens."""

    input: float = Field(0.0, ge=0, description="USD per 1M prompt tokens")
    output: float = Field(0.0, ge=0, description="USD per 1M completion tokens")


class Energy(Strict):
    """Declared energy an answer costs, in joules: per prompt token, per completion token and per
    request (any combination). Declared by the operator, not measured by sigroute."""

    prompt_j_per_token: float = Field(0.0, ge=0, description="joules per prompt token")
    completion_j_per_token: float = Field(0.0, ge=0, description="joules per completion token")
    per_request_j: float = Field(0.0, ge=0, description="joules per request, whatever its length")

    @model_validator(mode="after")
    def _declares_something(self) -> "Energy":
        if self.prompt_j_per_token + self.completion_j_per_token + self.per_request_j <= 0:
            raise ValueError("declare at least one of prompt_j_per_token, completion_j_per_token, per_request_j "
                             "above 0 (or leave energy out)")
        return self

    def joules(self, prompt_tokens: float, completion_tokens: float) -> float:
        """The declared energy of one answer of these lengths."""
        return (self.per_request_j + prompt_tokens * self.prompt_j_per_token
                + completion_tokens * self.completion_j_per_token)


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
        pattern=ENV_NAME_PATTERN,
        description="name of the environment variable that holds the API key (never the key itself)",
    )
    price: Price = Price()
    energy: Energy | None = Field(
        None, description="declared energy per token or per request (for `reward: {energy: w}` and the "
                          "sigroute_energy_joules_total metric); a model without it counts as the most "
                          "energy-hungry in rewards")
    context_window: PositiveInt | None = Field(None, description="maximum prompt + completion tokens")
    tags: tuple[str, ...] = ()
    timeout_s: PositiveFloat = Field(60.0, description="limit for a whole non-streamed call")
    first_token_timeout_s: PositiveFloat = Field(30.0, description="limit until the first streamed chunk")
    stream_idle_timeout_s: PositiveFloat = Field(30.0, description="limit between two streamed chunks")
    transport: Literal["auto", "openai", "anthropic", "litellm"] = Field(
        "auto",
        description="'openai': direct HTTP to an OpenAI-compatible server; 'anthropic': direct HTTP to an "
        "Anthropic Messages API (POST {api_base}/v1/messages, default api_base https://api.anthropic.com); "
        "'litellm': through litellm; 'auto': direct for openai/, hosted_vllm/ and other OpenAI-compatible "
        "providers with an api_base, anthropic for anthropic/ providers with an api_base, litellm for everything else",
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
