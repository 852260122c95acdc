"""Calling backend models: transports, retries, fallback across candidates, circuit breakers.

One concept per module:

- `errors`             `UpstreamError` and its kinds; reading an HTTP error (status, Retry-After, message)
- `targets`            `ModelTarget` (a policy model resolved for calling), header changes, the `Transport` protocol
- `http1`              our small pooled HTTP/1.1 client (the fast path's wire): never sends a request twice
                       when the server may have processed it; egress proxies; bounded answers
- `openai_compatible`  `OpenAICompatibleTransport`: direct HTTP to OpenAI-compatible servers, streams read
                       with `sigroute.gateway.sse`
- `direct`             what the direct transports share: calls and streams over `http1` with their failures as
                       `UpstreamError`s (the response held by a context manager), a stream's events read under
                       the model's first-token and idle deadlines
- `anthropic_messages` `AnthropicMessagesTransport`: direct HTTP to Anthropic Messages APIs (`anthropic/…` models),
                       translating chat ↔ Messages without losing what a Messages request carried
- `litellm_transport`  `LiteLLMTransport`: every other provider, through litellm (imported on first use)
- `breaker`            `CircuitBreaker` and the `Permit` a call holds (a half-open trial is always given back);
                       one opening per episode; a 429 holds the model back for its Retry-After
- `load`               `ModelLoad`: calls in flight and latency per model (the load-aware cache's saturation)
- `stream`             `UpstreamStream`: a committed stream that owns its response, permit and in-flight count
- `resilience`         `Upstreams`: the retries/fallback loop; `CallResult`, `Attempt`

The transports behave identically (same errors, same retry and streaming semantics), so
`Upstreams` never asks which one it holds; tests inject their own through
``Upstreams(transports={"openai": …})``.
"""

from sigroute.gateway.upstream.anthropic_messages import AnthropicMessagesTransport
from sigroute.gateway.upstream.breaker import CircuitBreaker, Permit
from sigroute.gateway.upstream.errors import UpstreamError, classify_status, error_message, parse_retry_after
from sigroute.gateway.upstream.litellm_transport import LiteLLMTransport
from sigroute.gateway.upstream.load import CountedCall, ModelLoad
from sigroute.gateway.upstream.openai_compatible import OpenAICompatibleTransport
from sigroute.gateway.upstream.resilience import Attempt, CallResult, Observer, Upstreams
from sigroute.gateway.upstream.stream import UpstreamStream
from sigroute.gateway.upstream.targets import HeaderChanges, ModelTarget, Transport

__all__ = [
    "Upstreams", "CallResult", "Attempt", "Observer", "UpstreamStream",
    "UpstreamError", "classify_status", "error_message", "parse_retry_after",
    "ModelTarget", "HeaderChanges", "Transport",
    "OpenAICompatibleTransport", "AnthropicMessagesTransport", "LiteLLMTransport",
    "CircuitBreaker", "Permit", "ModelLoad", "CountedCall",
]
