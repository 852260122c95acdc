"""OpenTelemetry traces of the request journey (optional: `pip install 'sigroute[otel]'`; off by default).

A traced request is one SERVER span, ``chat <model asked for>`` (e.g. ``chat auto``), from the
moment the pipeline takes it until its answer is out — for a model's stream, until the stream ends
(finished, broken, or the caller gone; a cached or plugin answer is whole when its span ends, even
if it is then sent as stream events). Its children are the journey's steps:

    sigroute.signals   sigroute.decide   sigroute.plugins   sigroute.cache   sigroute.select
    chat <upstream model>   one CLIENT span per upstream attempt: retries and fallbacks each get
                            their own, a failed one has status ERROR and its `error.type`; a
                            streamed attempt ends at its first chunk (the stream is then committed)
    sigroute.answer    answer plugins, cache store and learning; for a stream, the relay to its end

Attributes follow the OpenTelemetry GenAI semantic conventions (`gen_ai.operation.name`,
`gen_ai.provider.name` and the older `gen_ai.system`, `gen_ai.request.model`, `.max_tokens`,
`.temperature`, `.top_p`, `gen_ai.response.model`, `.id`, `.finish_reasons`,
`gen_ai.usage.input_tokens`, `.output_tokens`, `error.type`, `server.address`) plus `sigroute.*`:
`request_id`, `api` (the surface), `tenant`, `entrypoint`, `decision`, `confidence`, `cache`
(hit-exact, hit-semantic, coalesced, miss, …, or off), `model` (the policy's model that answered),
`attempts`, `status`. Prompt and answer text never go on a span.

Trace context: the caller's W3C ``traceparent``/``tracestate`` is continued (the request span is
its child), and every upstream attempt sends its own ``traceparent`` (the attempt span as parent)
through `upstream.targets.CALL_HEADERS`, which the transports add to the prepared request.

Configuration (`Tracing.build`): the policy's `server.tracing`, each key left out falling back to
its standard OTEL_* variable (`settings_from`); the spans go to an OTLP/HTTP collector through a
batch processor (a background thread: exporting never blocks a request).

Off (the default), a request's trace is `NO_TRACE`, whose methods do nothing and return shared
no-op objects; this module then imports nothing of OpenTelemetry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

__all__ = ["Tracing", "TraceSettings", "settings_from", "NO_TRACE", "NoTrace", "RequestTrace"]

log = logging.getLogger("sigroute.tracing")

DEFAULT_ENDPOINT = "http://localhost:4318"
TRACES_PATH = "/v1/traces"

# a policy model's provider prefix → the GenAI conventions' well-known gen_ai.provider.name
PROVIDER_NAMES = {
    "openai": "openai", "azure": "azure.ai.openai", "azure_ai": "azure.ai.inference", "anthropic": "anthropic",
    "bedrock": "aws.bedrock", "gemini": "gcp.gemini", "vertex_ai": "gcp.vertex_ai", "groq": "groq",
    "mistral": "mistral_ai", "deepseek": "deepseek", "perplexity": "perplexity", "xai": "x_ai",
    "cohere": "cohere", "watsonx": "ibm.watsonx.ai",
}
STREAM_FAILURES = ("stream_broken", "internal_error")   # stream endings that are errors
MAX_NAME_CHARS = 256   # a caller's model name, as far as it goes on a span


# --------------------------------------------------------------------------------------------
# off


class _Nothing:
    """A shared no-op: the step and attempt 'spans' of an untraced request."""

    __slots__ = ()

    def __enter__(self) -> "_Nothing":
        return self

    def __exit__(self, *exc_info) -> bool:
        return False

    def failed(self, error) -> None:
        pass

    def answered(self, body) -> None:
        pass


_NOTHING = _Nothing()


def _no_exit(*exc_info) -> bool:
    return False


class NoTrace:
    """The trace of a request that is not traced: every method does nothing."""

    __slots__ = ()
    enabled = False

    def step(self, name: str) -> _Nothing:
        return _NOTHING

    def attempt(self, target, number: int, stream: bool) -> _Nothing:
        return _NOTHING

    def skipped(self, model: str, why: str) -> None:
        pass

    def streaming(self):
        return _no_exit

    def stream_ended(self, status: str, usage: Any) -> None:
        pass

    def close(self, *exc_info) -> bool:
        return False


NO_TRACE = NoTrace()


# --------------------------------------------------------------------------------------------
# configuration


@dataclass(frozen=True)
class TraceSettings:
    """Where and how traces go, resolved from the policy and the environment."""

    service_name: str
    endpoint: str                           # the full OTLP/HTTP traces URL
    sample_ratio: float
    headers: tuple[tuple[str, str], ...]    # sent with every export


def _traces_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith(TRACES_PATH) else base + TRACES_PATH


def _otlp_headers(value: str) -> tuple[tuple[str, str], ...]:
    """OTEL_EXPORTER_OTLP_HEADERS: ``name=value,name2=value2``, values percent-encoded."""
    pairs = []
    for item in value.split(","):
        name, sep, val = item.partition("=")
        if sep and name.strip():
            pairs.append((name.strip().lower(), unquote(val.strip())))
    return tuple(pairs)


def settings_from(spec, environ: Mapping[str, str]) -> TraceSettings | None:
    """The policy's `server.tracing` (`spec`) completed from the environment; None: tracing is off.

    Precedence, key by key: the policy, then the standard variable, then the default.
    On: `enabled`, else OTEL_TRACES_EXPORTER lists ``otlp``; OTEL_SDK_DISABLED=true: off in every case.
    Endpoint: `otlp_endpoint` (/v1/traces appended), else OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (as is),
    else OTEL_EXPORTER_OTLP_ENDPOINT (/v1/traces appended), else http://localhost:4318/v1/traces.
    Service name: `service_name`, else OTEL_SERVICE_NAME, else ``sigroute``. Sampling: `sample_ratio`,
    else OTEL_TRACES_SAMPLER_ARG, else 1.0. Export headers: `headers`, else
    OTEL_EXPORTER_OTLP_TRACES_HEADERS, else OTEL_EXPORTER_OTLP_HEADERS."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    enabled = spec.enabled
    if enabled is None:
        exporters = {e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",")}
        enabled = "otlp" in exporters
    if not enabled:
        return None
    if spec.otlp_endpoint:
        endpoint = _traces_url(spec.otlp_endpoint)
    elif environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        endpoint = environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"].strip()
    else:
        endpoint = _traces_url(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or DEFAULT_ENDPOINT)
    if urlsplit(endpoint).scheme not in ("http", "https"):
        raise ValueError(f"tracing: the OTLP endpoint {endpoint!r} is not an http:// or https:// URL")
    if spec.sample_ratio is not None:
        ratio = spec.sample_ratio
    elif environ.get("OTEL_TRACES_SAMPLER_ARG", "").strip():
        raw = environ["OTEL_TRACES_SAMPLER_ARG"].strip()
        try:
            ratio = float(raw)
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw!r} is not a sampling ratio between 0 and 1")
    else:
        ratio = 1.0
    if spec.headers is not None:
        headers = tuple((k.lower(), v) for k, v in spec.headers.items())
    else:
        headers = _otlp_headers(environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
                                or environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""))
    service = spec.service_name or environ.get("OTEL_SERVICE_NAME", "").strip() or "sigroute"
    return TraceSettings(service, endpoint, ratio, headers)


def _otlp_provider(settings: TraceSettings):
    """A tracer provider exporting to the OTLP/HTTP collector in batches (a background thread)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise RuntimeError(f"server.tracing is on but OpenTelemetry is not installed ({exc.name} is missing); "
                           f"install it with: pip install 'sigroute[otel]'") from None
    provider = TracerProvider(resource=Resource.create({"service.name": settings.service_name}),
                              sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)))
    exporter = OTLPSpanExporter(endpoint=settings.endpoint, headers=dict(settings.headers) or None)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class Tracing:
    """Traces for one loaded policy: `start(journey)` gives a request its trace.

    A reload whose tracing settings did not change keeps the same tracer provider (no spans are
    lost at the swap); a provider built here is shut down (its last spans flushed) when the last
    pipeline using it is closed. A provider passed in (tests: an in-memory exporter) is the
    caller's to shut down."""

    def __init__(self, settings: TraceSettings | None = None, provider: Any = None, owned: bool = False):
        self.settings = settings
        self.provider = provider
        self.owned = owned
        self.holders = 1
        self.tracer = provider.get_tracer("sigroute") if provider is not None else None

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def build(cls, spec, environ: Mapping[str, str], *, provider: Any = None,
              previous: "Tracing | None" = None) -> "Tracing":
        """Tracing as `spec` (`server.tracing`) and `environ` say; `provider`: a tracer provider to
        use instead of an OTLP exporter (its own sampler and exporters apply)."""
        settings = settings_from(spec, environ)
        if settings is None:
            return cls()
        if provider is not None:
            return cls(settings, provider)
        if previous is not None and previous.owned and previous.settings == settings:
            previous.holders += 1
            return previous
        return cls(settings, _otlp_provider(settings), owned=True)

    def start(self, journey) -> "RequestTrace | NoTrace":
        if self.tracer is None:
            return NO_TRACE
        try:
            return RequestTrace(self.tracer, journey)
        except Exception:  # noqa: BLE001 - tracing never fails a request
            log.exception("request %s: starting its trace failed", journey.request_id)
            return NO_TRACE

    def release(self) -> None:
        """A pipeline using this is closed: shut the provider down (flushing its spans) with the last
        one. Blocks while flushing: call it off the event loop."""
        self.holders -= 1
        if self.holders <= 0 and self.owned and self.provider is not None:
            self.provider.shutdown()


# --------------------------------------------------------------------------------------------
# on

_otel: Any = None   # the OpenTelemetry names used below, imported with the first traced request


def _api():
    global _otel
    if _otel is None:
        from types import SimpleNamespace

        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        _otel = SimpleNamespace(trace=trace, SpanKind=trace.SpanKind, Status=trace.Status,
                                StatusCode=trace.StatusCode, propagator=TraceContextTextMapPropagator())
    return _otel


def _usage(attrs: dict[str, Any], usage: Any) -> None:
    """The GenAI token counts of an OpenAI `usage` object, into `attrs`."""
    if isinstance(usage, dict):
        for key, attribute in (("prompt_tokens", "gen_ai.usage.input_tokens"),
                               ("completion_tokens", "gen_ai.usage.output_tokens")):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                attrs[attribute] = value


def _set_error(span, error_type: str, description: str) -> None:
    otel = _api()
    span.set_attribute("error.type", error_type)
    span.set_status(otel.Status(otel.StatusCode.ERROR, description))


class _StepSpan:
    """A child span of the request around one step; an exception leaving the step marks it error."""

    __slots__ = ("trace", "name", "span")

    def __init__(self, trace: "RequestTrace", name: str):
        self.trace, self.name, self.span = trace, name, None

    def __enter__(self):
        self.span = self.trace.tracer.start_span("sigroute." + self.name, context=self.trace.context)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is not None:
            _set_error(self.span, _error_type(exc), type(exc).__name__)
        self.span.end()
        return False


class _AttemptSpan:
    """A CLIENT span around one upstream attempt; while it is open, the calls a transport makes
    carry its traceparent (`CALL_HEADERS`)."""

    __slots__ = ("trace", "target", "number", "stream", "span", "token", "started", "outcome")

    def __init__(self, trace: "RequestTrace", target, number: int, stream: bool):
        self.trace, self.target, self.number, self.stream = trace, target, number, stream
        self.span = self.token = None
        self.outcome = None   # "failed" | "answered"

    def __enter__(self):
        from sigroute.gateway.upstream.targets import CALL_HEADERS

        otel, target = _api(), self.target
        provider = target.spec.provider.partition("/")[0]
        provider = PROVIDER_NAMES.get(provider, provider)
        attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.system": provider,
                      "gen_ai.request.model": target.upstream_model, "gen_ai.request.stream": self.stream,
                      "sigroute.model": target.name, "sigroute.attempt": self.number,
                      "sigroute.request_id": self.trace.journey.request_id}
        if target.api_base:
            parts = urlsplit(target.api_base)
            if parts.hostname:
                attributes["server.address"] = parts.hostname
                if parts.port:
                    attributes["server.port"] = parts.port
        self.span = self.trace.tracer.start_span(f"chat {target.upstream_model}", context=self.trace.context,
                                                 kind=otel.SpanKind.CLIENT, attributes=attributes)
        carrier: dict[str, str] = {}
        otel.propagator.inject(carrier, context=otel.trace.set_span_in_context(self.span))
        self.token = CALL_HEADERS.set(tuple(carrier.items()))
        self.started = time.perf_counter()
        return self

    def failed(self, error) -> None:
        """The attempt failed with `error` (an `UpstreamError`)."""
        self.outcome = "failed"
        if error.status:
            self.span.set_attribute("http.response.status_code", error.status)
        _set_error(self.span, error.kind, error.summary())

    def answered(self, body: dict) -> None:
        """The model answered: `body` is its whole answer, or the first chunk of its stream."""
        self.outcome = "answered"
        attrs: dict[str, Any] = {}
        if self.stream:
            attrs["gen_ai.response.time_to_first_chunk"] = time.perf_counter() - self.started
        if isinstance(body, dict):
            for key, attribute in (("model", "gen_ai.response.model"), ("id", "gen_ai.response.id")):
                if isinstance(body.get(key), str):
                    attrs[attribute] = body[key]
            reasons = [c.get("finish_reason") for c in body.get("choices") or () if isinstance(c, dict)]
            if reasons and all(isinstance(r, str) for r in reasons):
                attrs["gen_ai.response.finish_reasons"] = reasons
            _usage(attrs, body.get("usage"))
        self.span.set_attributes(attrs)

    def __exit__(self, exc_type, exc, tb) -> bool:
        from sigroute.gateway.upstream.targets import CALL_HEADERS

        CALL_HEADERS.reset(self.token)
        if exc is not None and self.outcome is None:   # a rejection raised, a cancellation …
            _set_error(self.span, _error_type(exc), type(exc).__name__)
        self.span.end()
        return False


class _Propagating(_Nothing):
    """An upstream attempt of a request that is not sampled: no span, but the upstream still gets
    the trace context (flagged not sampled), so the trace stays one across services."""

    __slots__ = ("trace", "token")

    def __init__(self, trace: "RequestTrace"):
        self.trace = trace

    def __enter__(self):
        from sigroute.gateway.upstream.targets import CALL_HEADERS

        carrier: dict[str, str] = {}
        _api().propagator.inject(carrier, context=self.trace.context)
        self.token = CALL_HEADERS.set(tuple(carrier.items()))
        return self

    def __exit__(self, *exc_info) -> bool:
        from sigroute.gateway.upstream.targets import CALL_HEADERS

        CALL_HEADERS.reset(self.token)
        return False


def _error_type(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else type(exc).__name__


class RequestTrace:
    """The spans of one traced request. Attributes that describe the request as a whole are read
    from its `Journey` when the request span ends (`close`), so the steps need not report them."""

    enabled = True

    def __init__(self, tracer, journey):
        otel = _api()
        self.tracer = tracer
        self.journey = journey
        parent = otel.propagator.extract(journey.headers)
        started_ns = time.time_ns() - int((time.perf_counter() - journey.started) * 1e9)
        self.span = tracer.start_span("chat", context=parent, kind=otel.SpanKind.SERVER, start_time=started_ns,
                                      attributes={"gen_ai.operation.name": "chat",
                                                  "sigroute.request_id": journey.request_id,
                                                  "sigroute.api": journey.api})
        self.context = otel.trace.set_span_in_context(self.span)
        self.recording = self.span.is_recording()   # False: not sampled, only the context is passed on
        self.answer = None            # the answer span of a stream
        self.stream_status = None     # how the stream ended
        self.usage = None             # the usage a stream reported
        self.closed = False

    def step(self, name: str) -> "_StepSpan | _Nothing":
        return _StepSpan(self, name) if self.recording else _NOTHING

    def attempt(self, target, number: int, stream: bool) -> "_AttemptSpan | _Propagating":
        return _AttemptSpan(self, target, number, stream) if self.recording else _Propagating(self)

    def skipped(self, model: str, why: str) -> None:
        """A candidate model was not called (circuit open, held back by a 429)."""
        self.span.add_event("sigroute.model_skipped", {"sigroute.model": model, "sigroute.reason": why})

    def streaming(self):
        """The answer is streamed: start its span and return the exit callback that ends it (the
        request's exit stack, which the stream closes on every ending, holds it)."""
        if not self.recording:
            return _no_exit
        self.answer = self.tracer.start_span("sigroute.answer", context=self.context,
                                             attributes={"gen_ai.request.stream": True})
        return self._answer_done

    def _answer_done(self, *exc_info) -> bool:
        if self.answer is not None:
            status = self.stream_status or "client_disconnected"
            self.answer.set_attribute("sigroute.status", status)
            if status in STREAM_FAILURES:
                _set_error(self.answer, status, f"the stream ended with {status}")
            self.answer.end()
        return False

    def stream_ended(self, status: str, usage: Any) -> None:
        """How the stream ended: 200, stream_broken, client_disconnected, internal_error."""
        self.stream_status, self.usage = status, usage

    def close(self, exc_type, exc, tb) -> bool:
        """The exit callback of the request's exit stack: end the request span (for a stream, when
        the stream is over). Never raises."""
        if self.closed:
            return False
        self.closed = True
        try:
            if self.recording:
                self._describe(exc)
        except Exception:  # noqa: BLE001 - tracing never fails a request
            log.exception("request %s: describing its trace failed", self.journey.request_id)
        self.span.end()
        return False

    def _describe(self, exc: BaseException | None) -> None:
        span, journey = self.span, self.journey
        ctx, route, result = journey.ctx, journey.route, journey.result
        attrs: dict[str, Any] = {}   # set at once: one lock taken, not one per attribute
        if journey.principal is not None:
            attrs["sigroute.tenant"] = journey.principal.tenant
        if ctx is not None:
            if route is not None:   # a model name the policy knows: a name of bounded cardinality
                span.update_name(f"chat {ctx.model}")
            attrs["gen_ai.request.model"] = str(ctx.model)[:MAX_NAME_CHARS]
            attrs["gen_ai.request.stream"] = bool(ctx.stream)
            body = ctx.body
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
            if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
                attrs["gen_ai.request.max_tokens"] = max_tokens
            for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
                value = body.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    attrs[f"gen_ai.request.{key}"] = float(value)
        headers = journey.response_headers
        if route is not None:
            attrs["sigroute.entrypoint"] = route.entrypoint_label
            attrs["sigroute.decision"] = route.decision_name
            attrs["sigroute.confidence"] = float(route.confidence)
            attrs["sigroute.cache"] = headers.get("x-sigroute-cache", "off")
        if "x-sigroute-blocked-by" in headers:
            attrs["sigroute.blocked_by"] = headers["x-sigroute-blocked-by"]
        model = result.model if result is not None else headers.get("x-sigroute-model")
        if model:
            attrs["sigroute.model"] = attrs["gen_ai.response.model"] = model
        if result is not None:
            attrs["sigroute.attempts"] = sum(1 for a in result.attempts if a.error is not None) + 1
            _usage(attrs, result.body.get("usage") if result.body is not None else self.usage)
        if isinstance(exc, asyncio.CancelledError):   # the caller left before the answer
            attrs["sigroute.status"] = "client_disconnected"
        elif exc is not None:
            status = getattr(exc, "status", 500)
            attrs["http.response.status_code"] = status
            attrs["sigroute.status"] = str(status)
            if isinstance(status, int) and status < 500:
                attrs["error.type"] = _error_type(exc)   # the caller's mistake: not our error
            else:
                _set_error(span, _error_type(exc), getattr(exc, "message", None) or type(exc).__name__)
        elif self.answer is not None:
            status = self.stream_status or "client_disconnected"
            attrs["sigroute.status"] = status
            if status in STREAM_FAILURES:
                _set_error(span, status, f"the stream ended with {status}")
        else:
            attrs["sigroute.status"] = "200"
        span.set_attributes(attrs)
