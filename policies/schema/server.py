"""How the gateway serves a policy: routing among decisions (`routing:`), the virtual model
names callers send (`entrypoints:`), API keys and roles (`auth:`), request limits (`server:`),
and retries, backoff and circuit breakers for upstream calls (`upstream:`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from sigroute.policies.schema.base import ENV_NAME_PATTERN, Duration, Name, Strict


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
    """A caller's limits: requests per minute, model tokens per minute, or both. Each is a token
    bucket that holds `burst` (`token_burst`) and refills at the rate per minute."""

    requests_per_minute: PositiveFloat | None = Field(None, description="requests per minute; null: no request limit")
    burst: PositiveInt | None = Field(None, description="request bucket size; default: a minute's worth, at least 1")
    tokens_per_minute: PositiveFloat | None = Field(
        None, description="model tokens (prompt + completion) per minute: each request reserves its estimate "
        "before the call (prompt tokens + max_tokens, or completion_tokens_estimate) and settles with the "
        "answer's real usage after it; null: no token limit")
    token_burst: PositiveInt | None = Field(None, description="token bucket size; default: a minute's worth")
    scope: Literal["key", "tenant"] = Field(
        "key", description="key: each API key has its own buckets; tenant: every key of the tenant that sets "
        "this limit with scope tenant takes from one pair of buckets (the tenant's)")
    completion_tokens_estimate: int = Field(
        256, ge=0, description="completion tokens reserved before the call for a request that sets no "
        "max_tokens / max_completion_tokens (settled with the real usage afterwards)")

    @model_validator(mode="after")
    def _some_limit(self) -> "RateLimit":
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("set requests_per_minute, tokens_per_minute or both")
        if self.burst is not None and self.requests_per_minute is None:
            raise ValueError("burst sizes the request bucket: set requests_per_minute with it")
        if self.token_burst is not None and self.tokens_per_minute is None:
            raise ValueError("token_burst sizes the token bucket: set tokens_per_minute with it")
        return self


class ApiKey(Strict):
    """An API key and who holds it. Give the key as its SHA-256 or by environment variable."""

    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    key_env: str | None = Field(None, pattern=ENV_NAME_PATTERN, description="variable holding the key")
    tenant: Name
    user: str | None = None
    roles: tuple[str, ...] = ()
    rate_limit: RateLimit | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "ApiKey":
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError("give exactly one of key_sha256 or key_env")
        return self


OPERATOR_SURFACES = ("admin", "explain")   # what `server.open_without_auth` may open
PUBLIC_ENDPOINTS = ("ready", "metrics")     # what `auth.public_endpoints` may open


class Auth(Strict):
    """API keys and what their roles allow. Chat completions, feedback and `/v1/models` need any
    valid key; the operator surfaces need a role: `admin_roles` for reload and cache deletion,
    `explain_roles` for `/v1/route/explain` and the `x-sigroute-debug` header (which reveal signal
    scores, e.g. the jailbreak classifier's: an oracle for crafting attacks), `metrics_roles` for
    `/metrics` (its labels name tenants). `/health` is always public; `/ready` is public unless
    removed from `public_endpoints`."""

    keys: tuple[ApiKey, ...] = Field(..., min_length=1)
    admin_roles: tuple[str, ...] = Field(("admin",), description="roles allowed to use admin endpoints")
    explain_roles: tuple[str, ...] = Field(
        ("admin",), description="roles allowed to call /v1/route/explain and to get signals with x-sigroute-debug")
    metrics_roles: tuple[str, ...] = Field(("admin", "metrics"), description="roles allowed to read /metrics")
    public_endpoints: tuple[Literal[PUBLIC_ENDPOINTS], ...] = Field(
        ("ready",), description="endpoints answered without a key (for probes and scrapers): ready, metrics")


_HeaderName = Annotated[str, Field(pattern=r"^[A-Za-z0-9-]+$")]
_HeaderValue = Annotated[str, Field(pattern=r"^[^\r\n]*$")]


class Tracing(Strict):
    """OpenTelemetry traces of each request (`gateway.tracing`; needs `pip install 'sigroute[otel]'`).
    Each key left out falls back to the standard OTEL_* environment variable named in its
    description, then to the default: a key written here wins over the environment."""

    enabled: bool | None = Field(
        None, description="true: export a trace of every sampled request; false: never; unset: on only when "
        "OTEL_TRACES_EXPORTER=otlp (OTEL_SDK_DISABLED=true turns tracing off in every case)")
    service_name: str | None = Field(
        None, min_length=1, max_length=256, description="the traces' service.name; else OTEL_SERVICE_NAME, "
        "else 'sigroute'")
    otlp_endpoint: str | None = Field(
        None, pattern=r"^https?://[^\s]+$", description="the collector's OTLP/HTTP URL, e.g. http://collector:4318 "
        "(/v1/traces is appended unless the URL ends with it); else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else "
        "OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318")
    sample_ratio: float | None = Field(
        None, ge=0.0, le=1.0, description="share of new traces recorded (a caller's sampled traceparent is "
        "always followed); else OTEL_TRACES_SAMPLER_ARG, else 1.0")
    headers: dict[_HeaderName, _HeaderValue] | None = Field(
        None, description="headers sent with every export (e.g. an API key of the tracing backend); else "
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS / OTEL_EXPORTER_OTLP_HEADERS (better for secrets)")


class CacheIndex(Strict):
    """Where the semantic cache keeps its vector index. `faiss` (default): in each replica's
    memory, rebuilt from the document store at start and kept in step through its event stream.
    `qdrant`: one Qdrant collection shared by every replica (`pip install 'sigroute[qdrant]'`),
    so no replica holds the whole index or rebuilds it at start; give a server `url`, or a local
    `path` (qdrant-client's embedded mode: brute force, one process at a time). Read once at start:
    a reload does not move the index."""

    engine: Literal["faiss", "qdrant"] = Field("faiss", description="faiss: in process; qdrant: shared")
    url: str | None = Field(None, pattern=r"^https?://[^\s]+$", description="a Qdrant server, e.g. http://qdrant:6333")
    path: str | None = Field(None, min_length=1, description="a folder for Qdrant's local (embedded) mode")
    collection: str = Field("sigroute-cache", pattern=r"^[A-Za-z0-9_.-]{1,200}$",
                            description="the Qdrant collection (one for every partition; searches filter on it)")
    api_key_env: str | None = Field(None, pattern=ENV_NAME_PATTERN, description="variable holding Qdrant's API key")
    timeout_s: PositiveFloat = Field(5.0, description="each Qdrant request's timeout")

    @model_validator(mode="after")
    def _where(self) -> "CacheIndex":
        if self.engine == "qdrant" and (self.url is None) == (self.path is None):
            raise ValueError("the qdrant cache index needs exactly one of url (a server) or path (local mode)")
        if self.engine == "faiss" and (self.url or self.path or self.api_key_env):
            raise ValueError("url, path and api_key_env are for engine: qdrant (faiss is in process)")
        return self


class Server(Strict):
    """Limits on what callers send. The header limits apply to the HTTP server from its start (a
    reload does not change them); the body limits apply per request."""

    max_request_bytes: PositiveInt = Field(4 * 1024 * 1024, description="larger bodies get 413")
    body_timeout_s: PositiveFloat = Field(30.0, description="a request body must arrive within this time (else 408)")
    header_timeout_s: PositiveFloat = Field(
        10.0, description="a request's headers must arrive within this time of its first byte, and a new "
        "connection must start a request within it (else 408 and the connection is closed)")
    max_header_bytes: int = Field(64 * 1024, ge=1024, description="larger request heads get 431")
    max_headers: int = Field(100, ge=8, description="requests with more header fields get 431")
    max_messages: PositiveInt = Field(
        4096, description="chat requests with more messages get 400 (bounds the work one request costs)")
    max_tools: PositiveInt = Field(512, description="chat requests with more tools get 400")
    responses_ttl: Duration = Field(
        30 * 86400.0, gt=0, description="how long a stored Responses API answer (`POST /v1/responses` with `store`) "
        "can be retrieved and continued by `previous_response_id`: seconds or '1h', '7d'; default 30 days, as OpenAI")
    rate_limit: RateLimit | None = Field(None, description="applies to callers when auth is off")
    feedback_rate_limit: RateLimit | None = Field(
        RateLimit(requests_per_minute=6000, burst=600),
        description="POST /v1/feedback per caller (API key), apart from the chat rate limit; null: none")
    rate_limit_store_failure: Literal["open", "closed"] = Field(
        "open", description="when the shared rate-limit store (Redis) cannot be reached: open admits the request "
        "unchecked, closed refuses it with 503 and Retry-After; either is counted in "
        "sigroute_rate_limit_store_errors_total")
    learned_state_idle_ttl: Duration | None = Field(
        None, gt=0, description="a tenant's learned state (each learning decision's sums) expires after this long "
        "without learning from that tenant's requests: seconds or '30d'; the TTL restarts at every flush of "
        "learned statistics (in Redis a native key TTL), and replicas forget a tenant idle that long so they do "
        "not restore what expired; null (default): kept until `sigroute bandit gc` or `reset` removes it")
    cache_idle_ttl: Duration | None = Field(
        None, gt=0, description="a cached answer not used for this long is dropped before its own TTL ends "
        "(each hit restarts it, never past the answer's TTL), so a tenant's or partition's cache that nobody "
        "reads leaves Redis: seconds or '7d'; null (default): answers live their TTL")
    log_prompts: bool = Field(False, description="prompts and answers are never logged unless this is true")
    open_without_auth: tuple[Literal[OPERATOR_SURFACES], ...] = Field(
        (), description="with no `auth` section nobody is authenticated, so the operator surfaces are refused "
        "unless listed here (for local development): admin (reload, cache deletion), explain (/v1/route/explain "
        "and x-sigroute-debug)")
    tracing: Tracing = Field(Tracing(), description="OpenTelemetry traces (off by default)")
    cache_index: CacheIndex = Field(CacheIndex(), description="where the semantic cache's vector index lives: "
                                    "in process (faiss, default) or shared by every replica (qdrant)")


class Breaker(Strict):
    failure_threshold: PositiveInt = Field(5, description="consecutive failures that open the circuit")
    cooldown_s: PositiveFloat = Field(30.0, description="how long an open circuit rejects calls")


class Upstream(Strict):
    retries: int = Field(1, ge=0, le=10, description="extra attempts on the same model before falling back")
    backoff_s: float = Field(0.05, ge=0, description="first retry delay, doubled each time (plus jitter)")
    backoff_max_s: float = Field(2.0, ge=0)
    breaker: Breaker = Breaker()
