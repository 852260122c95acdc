"""Calling backend models: transports, retries, fallback across candidates, circuit breakers.

Two transports sit behind one small protocol and behave identically (same errors, same retry and
streaming semantics):

- `OpenAICompatibleTransport` speaks HTTP directly to OpenAI-compatible servers (vLLM, SGLang,
  TGI's OpenAI API, OpenAI itself, …) over one keep-alive pool of `gateway.http1`, a small
  HTTP/1.1 client built for this (several times cheaper per call than httpx). It is the fast path.
- `LiteLLMTransport` goes through `litellm.acompletion` for every other provider (Anthropic,
  Azure, Bedrock, Gemini/Vertex, …). litellm is imported on first use only: its import alone
  takes seconds.

`Upstreams` runs a call over a ranked list of candidate models: each model is tried up to
`1 + retries` times on retryable failures (connection errors, timeouts, 429, 5xx) with exponential
backoff and jitter (honouring a short `Retry-After`), then the next candidate is tried. A circuit
breaker per model skips a model after `failure_threshold` consecutive failures for `cooldown_s`;
then one trial call is let through (half-open) and its outcome closes or re-opens the circuit.
A caller's mistake reported by the upstream (400, 413, 422) is returned to the caller as it is:
trying another model would not fix the request.

A stream is only committed to the caller once its first chunk has arrived, so failures before
that point retry and fall back like non-streamed calls. A stream that breaks after that raises
`UpstreamError(kind="stream_broken")` for the pipeline to turn into a final SSE error event.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping, Protocol, Sequence

import orjson

from sigroute.gateway import http1
from sigroute.gateway.errors import APIError, InvalidRequest, UpstreamFailed, Unavailable
from sigroute.policies.schema import ModelSpec, Policy

log = logging.getLogger("sigroute.upstream")

# Providers whose wire format is OpenAI's chat completions API.
OPENAI_COMPATIBLE_PREFIXES = ("openai/", "hosted_vllm/", "vllm/", "openai_compatible/", "custom_openai/",
                              "sglang/", "lm_studio/", "llamafile/", "deepseek/", "together_ai/",
                              "fireworks_ai/", "groq/", "mistral/", "openrouter/", "xai/", "perplexity/")
DEFAULT_API_BASES = {"openai/": "https://api.openai.com/v1"}


class UpstreamError(Exception):
    """A failed call to one model. `kind` says what happened; the flags say what to do next."""

    RETRYABLE = {"connect", "timeout", "rate_limited", "server", "stream_broken", "protocol"}
    FALLBACK = RETRYABLE | {"auth", "not_found", "unavailable"}

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after_s: float | None = None,
                 model: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.retry_after_s = retry_after_s
        self.model = model

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE

    @property
    def may_fall_back(self) -> bool:
        return self.kind in self.FALLBACK

    @property
    def counts_against_model(self) -> bool:
        """Whether this failure says something about the model's health (breaker input)."""
        return self.kind in self.FALLBACK

    def __str__(self) -> str:
        where = f"{self.model}: " if self.model else ""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{where}{self.kind}{status}: {self.message}"


def classify_status(status: int) -> str:
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status == 404:
        return "not_found"
    if status in (408, 504):
        return "timeout"
    if status >= 500:
        return "server"
    return "client"


def _parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_message(content: bytes) -> str:
    try:
        data = orjson.loads(content)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    except Exception:
        return content[:300].decode("utf-8", "replace") or "empty response"


@dataclass(frozen=True)
class ModelTarget:
    """A policy model resolved for calling: where, as what, with which key and limits."""

    name: str  # the policy's name for it
    spec: ModelSpec
    transport: str  # "openai" or "litellm"
    upstream_model: str  # the model name sent to the server (openai) or the litellm model string
    api_base: str | None
    api_key: str | None

    @classmethod
    def resolve(cls, name: str, spec: ModelSpec, environ: Mapping[str, str] = os.environ) -> "ModelTarget":
        api_key = environ.get(spec.api_key_env) if spec.api_key_env else None
        transport = spec.transport
        if transport == "auto":
            transport = "openai" if spec.provider.startswith(OPENAI_COMPATIBLE_PREFIXES) and (
                spec.api_base or spec.provider.startswith(tuple(DEFAULT_API_BASES))) else "litellm"
        if transport == "openai":
            prefix, _, model = spec.provider.partition("/")
            api_base = spec.api_base or DEFAULT_API_BASES.get(prefix + "/")
            if not api_base:
                raise ValueError(f"model '{name}': the direct OpenAI-compatible transport needs an api_base")
            return cls(name, spec, "openai", model, api_base.rstrip("/"), api_key)
        return cls(name, spec, "litellm", spec.provider, spec.api_base, api_key)


# Per-decision header changes for upstream calls (the `headers` plugin): (headers to set, names to
# remove), both lower-cased; hashable, so prepared requests can be kept per change set.
HeaderChanges = tuple[tuple[tuple[str, str], ...], frozenset[str]]


def _merged_headers(base: dict[str, str], changes: HeaderChanges | None) -> dict[str, str]:
    if changes is None:
        return dict(base)
    to_set, to_remove = changes
    out = {k: v for k, v in base.items() if k.lower() not in to_remove}
    out.update(to_set)
    return out


class Transport(Protocol):
    async def complete(self, target: ModelTarget, payload: dict[str, Any],
                       headers: HeaderChanges | None = None) -> dict[str, Any]: ...

    def stream(self, target: ModelTarget, payload: dict[str, Any],
               headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


class OpenAICompatibleTransport:
    """Direct HTTP to OpenAI-compatible servers over a shared keep-alive pool (`gateway.http1`)."""

    def __init__(self, max_connections: int = 1000, max_keepalive: int = 200):
        # max_keepalive is kept for compatibility: idle connections are capped by max_connections
        # per host and closed after 30 s unused
        self.client = http1.Client(max_connections_per_host=max_connections, keepalive_expiry=30.0)
        self._prepared_by_target: dict[tuple, tuple[http1.Request, http1.Timeouts]] = {}

    def _prepared(self, target: ModelTarget, stream: bool,
                  changes: HeaderChanges | None = None) -> tuple[http1.Request, http1.Timeouts]:
        """Request head and timeouts of a target (and header change set), built once."""
        key = (target.name, target.api_base, stream, changes)
        prepared = self._prepared_by_target.get(key)
        if prepared is None:
            headers = {"content-type": "application/json",
                       "accept": "text/event-stream" if stream else "application/json"}
            if target.api_key:
                headers["authorization"] = f"Bearer {target.api_key}"
            headers.update(_merged_headers(target.spec.extra_headers, changes))
            timeouts = http1.Timeouts(connect=min(10.0, target.spec.timeout_s), read=None, write=30.0, pool=10.0)
            prepared = (self.client.prepare("POST", f"{target.api_base}/chat/completions", headers), timeouts)
            self._prepared_by_target[key] = prepared
        return prepared

    @staticmethod
    def _body(target: ModelTarget, payload: dict[str, Any]) -> bytes:
        body = dict(payload)
        body["model"] = target.upstream_model
        return orjson.dumps(body)

    async def complete(self, target: ModelTarget, payload: dict[str, Any],
                       headers: HeaderChanges | None = None) -> dict[str, Any]:
        request, timeouts = self._prepared(target, False, headers)
        try:
            async with asyncio.timeout(target.spec.timeout_s):
                response = await self.client.send(request, self._body(target, payload), timeouts=timeouts)
        except TimeoutError:
            raise UpstreamError("timeout", f"no answer within {target.spec.timeout_s:g}s", model=target.name) from None
        except http1.TimeoutException as exc:
            raise UpstreamError("timeout", f"{type(exc).__name__}", model=target.name) from None
        except http1.TransportError as exc:
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc}", model=target.name) from None
        if response.status_code != 200:
            raise UpstreamError(classify_status(response.status_code), _error_message(response.content),
                                status=response.status_code, model=target.name,
                                retry_after_s=_parse_retry_after(response.headers.get("retry-after")))
        try:
            data = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            raise UpstreamError("protocol", "response is not JSON", status=200, model=target.name) from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError("protocol", "response has no 'choices'", status=200, model=target.name)
        return data

    async def stream(self, target: ModelTarget, payload: dict[str, Any],
                     headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]:
        request, timeouts = self._prepared(target, True, headers)
        spec = target.spec
        try:
            async with asyncio.timeout(spec.first_token_timeout_s):
                response = await self.client.send(request, self._body(target, payload), stream=True,
                                                  timeouts=timeouts)
        except TimeoutError:
            raise UpstreamError("timeout", f"no response within {spec.first_token_timeout_s:g}s",
                                model=target.name) from None
        except http1.TimeoutException as exc:
            raise UpstreamError("timeout", f"{type(exc).__name__}", model=target.name) from None
        except http1.TransportError as exc:
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc}", model=target.name) from None
        try:
            if response.status_code != 200:
                try:
                    content = await response.aread()
                except (http1.TransportError, http1.StreamError):
                    content = b""
                raise UpstreamError(classify_status(response.status_code), _error_message(content),
                                    status=response.status_code, model=target.name,
                                    retry_after_s=_parse_retry_after(response.headers.get("retry-after")))
            finished = False
            lines = _sse_data_lines(response, spec.first_token_timeout_s, spec.stream_idle_timeout_s)
            while True:
                try:
                    data = await anext(lines)
                except StopAsyncIteration:
                    break
                except _Stalled as exc:
                    raise UpstreamError("timeout", f"stream stalled for {exc.seconds:g}s", model=target.name) from None
                except (http1.TransportError, http1.StreamError) as exc:
                    raise UpstreamError("stream_broken", f"{type(exc).__name__}: {exc}", model=target.name) from None
                if data == b"[DONE]":
                    finished = True
                    await _drain(response, spec.stream_idle_timeout_s)  # so the connection goes back to the pool
                    break
                try:
                    chunk = orjson.loads(data)
                except orjson.JSONDecodeError:
                    raise UpstreamError("protocol", "stream chunk is not JSON", model=target.name) from None
                if isinstance(chunk, dict) and "error" in chunk and "choices" not in chunk:
                    err = chunk["error"]
                    message = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                    raise UpstreamError("stream_broken", f"upstream sent an error event: {message}", model=target.name)
                yield chunk
            if not finished:
                raise UpstreamError("stream_broken", "stream ended before [DONE]", model=target.name)
        finally:
            await response.aclose()  # a response not read to its end closes its connection

    async def aclose(self) -> None:
        await self.client.aclose()


class _Stalled(Exception):
    """No complete `data:` line arrived within the allowed time."""

    def __init__(self, seconds: float):
        super().__init__(f"stream stalled for {seconds:g}s")
        self.seconds = seconds


async def _drain(response: http1.Response, timeout_s: float) -> None:
    """Read what is left of a finished stream (the chunked terminator); closing a response with
    unread body would close its connection instead of returning it to the pool."""
    await response.drain(timeout_s)


async def _sse_data_lines(response: http1.Response, first_timeout_s: float,
                          idle_timeout_s: float) -> AsyncIterator[bytes]:
    """Yield the payload of each `data:` line of a server-sent-event stream.

    The first line must come within `first_timeout_s` and each next one within `idle_timeout_s`
    of being asked for (bytes that complete no `data:` line, e.g. comments, do not count);
    otherwise `_Stalled` is raised. Transport errors of `gateway.http1` pass through.
    """
    loop = asyncio.get_running_loop()
    allowed = first_timeout_s
    buffer = b""
    while True:
        deadline = loop.time() + allowed
        while True:
            newline = buffer.find(b"\n")
            if newline >= 0:
                line = buffer[:newline]
                buffer = buffer[newline + 1:]
                if line.startswith(b"data:"):
                    break
                continue
            left = deadline - loop.time()
            if left <= 0:
                raise _Stalled(allowed)
            try:
                piece = await response.read_chunk(left)
            except http1.ReadTimeout:
                raise _Stalled(allowed) from None
            if piece is None:
                if buffer.startswith(b"data:"):
                    yield buffer[5:].strip()
                return
            buffer = piece if not buffer else buffer + piece
        yield line[5:].strip()
        allowed = idle_timeout_s


class LiteLLMTransport:
    """Every provider litellm knows, with errors mapped to `UpstreamError` kinds."""

    def __init__(self):
        self._litellm = None

    def _lib(self):
        if self._litellm is None:
            os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
            import litellm  # slow import: only when a policy model needs it

            litellm.telemetry = False
            litellm.suppress_debug_info = True
            self._litellm = litellm
        return self._litellm

    def _kwargs(self, target: ModelTarget, payload: dict[str, Any], stream: bool,
                headers: HeaderChanges | None = None) -> dict[str, Any]:
        kwargs = {k: v for k, v in payload.items() if k not in ("model", "stream")}
        kwargs.update(model=target.upstream_model, stream=stream, num_retries=0,
                      timeout=target.spec.timeout_s if not stream else target.spec.first_token_timeout_s)
        if target.api_base:
            kwargs["api_base"] = target.api_base
        if target.api_key:
            kwargs["api_key"] = target.api_key
        elif target.api_base:
            # self-hosted OpenAI-compatible servers often need no key, but litellm insists on one
            kwargs["api_key"] = "no-key"
        extra = _merged_headers(target.spec.extra_headers, headers)
        if extra:
            kwargs["extra_headers"] = extra
        return kwargs

    def _map(self, exc: Exception, target: ModelTarget) -> UpstreamError:
        if isinstance(exc, UpstreamError):
            return exc
        status = getattr(exc, "status_code", None)
        name = type(exc).__name__
        message = str(getattr(exc, "message", exc))[:500]
        if name in ("Timeout", "APITimeoutError") or isinstance(exc, (TimeoutError, asyncio.TimeoutError)):
            kind = "timeout"
        elif name == "APIConnectionError" and status in (None, 500):
            kind = "connect"
        elif name in ("ContextWindowExceededError", "BadRequestError", "UnprocessableEntityError",
                      "UnsupportedParamsError", "ContentPolicyViolationError"):
            kind = "client"
        elif isinstance(status, int):
            kind = classify_status(status)
        else:
            kind = "server"
        return UpstreamError(kind, f"{name}: {message}", status=status if isinstance(status, int) else None,
                             model=target.name)

    async def complete(self, target: ModelTarget, payload: dict[str, Any],
                       headers: HeaderChanges | None = None) -> dict[str, Any]:
        litellm = self._lib()
        try:
            async with asyncio.timeout(target.spec.timeout_s):
                response = await litellm.acompletion(**self._kwargs(target, payload, False, headers))
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            raise UpstreamError("timeout", f"no answer within {target.spec.timeout_s:g}s", model=target.name) from None
        except Exception as exc:
            raise self._map(exc, target) from None
        return response.model_dump(exclude_none=True)

    async def stream(self, target: ModelTarget, payload: dict[str, Any],
                     headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]:
        litellm = self._lib()
        spec = target.spec
        try:
            async with asyncio.timeout(spec.first_token_timeout_s):
                response = await litellm.acompletion(**self._kwargs(target, payload, True, headers))
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            raise UpstreamError("timeout", f"no response within {spec.first_token_timeout_s:g}s",
                                model=target.name) from None
        except Exception as exc:
            raise self._map(exc, target) from None
        iterator = response.__aiter__()
        deadline = spec.first_token_timeout_s
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout(deadline):
                        chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    raise UpstreamError("timeout", f"stream stalled for {deadline:g}s", model=target.name) from None
                except Exception as exc:
                    mapped = self._map(exc, target)
                    if mapped.kind in ("connect", "server", "protocol"):
                        mapped.kind = "stream_broken"
                    raise mapped from None
                deadline = spec.stream_idle_timeout_s
                data = chunk.model_dump(exclude_none=True)
                if any(c.get("finish_reason") for c in data.get("choices") or ()):
                    finished = True
                yield data
        finally:
            close = getattr(response, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    pass
        if not finished:
            raise UpstreamError("stream_broken", "stream ended without a finish_reason", model=target.name)

    async def aclose(self) -> None:
        return None


# ------------------------------------------------------------------------------------------------
# breakers


class CircuitBreaker:
    """Closed → (failure_threshold consecutive failures) → open for cooldown_s → half-open trial."""

    def __init__(self, failure_threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        if self.clock() - self.opened_at >= self.cooldown_s:
            return "half_open"
        return "open"

    def available(self) -> bool:
        """Whether a call may be sent now (without reserving the half-open trial)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.trial_in_flight)

    def acquire(self) -> bool:
        """Reserve a call; in half-open state only one trial at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def retry_in_s(self) -> float:
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None
        self.trial_in_flight = False

    def record_failure(self) -> bool:
        """Count a failure; returns True if this opened (or re-opened) the circuit."""
        self.trial_in_flight = False
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            return True
        return False


# ------------------------------------------------------------------------------------------------
# retries and fallback


@dataclass
class Attempt:
    model: str
    error: UpstreamError | None = None
    skipped: str | None = None  # why the model was not tried (e.g. "circuit open")


class ModelLoad:
    SMOOTHING = 0.2

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.latency_ms: dict[str, float] = {}

    def start(self, model: str) -> None:
        self.in_flight[model] = self.in_flight.get(model, 0) + 1

    def end(self, model: str, latency_ms: float | None) -> None:
        self.in_flight[model] = max(0, self.in_flight.get(model, 0) - 1)
        if latency_ms is not None:
            old = self.latency_ms.get(model)
            self.latency_ms[model] = latency_ms if old is None else old + self.SMOOTHING * (latency_ms - old)

    def saturated(self, models, bound) -> bool:
        def busy(m: str) -> bool:
            return ((bound.in_flight_above is not None and self.in_flight.get(m, 0) >= bound.in_flight_above)
                    or (bound.latency_above_ms is not None and self.latency_ms.get(m, 0.0) >= bound.latency_above_ms))
        return bool(models) and all(busy(m) for m in models)


class UpstreamStream:
    def __init__(self, upstreams, model, first, chunks, started):
        self.upstreams, self.model, self.first_chunk, self._chunks, self._started = upstreams, model, first, chunks, started
        self.error = None
        self.finished = False
        self._closed = False

    async def __aiter__(self):
        try:
            async for chunk in self._chunks:
                yield chunk
        except UpstreamError as exc:
            self.error = exc
            raise
        self.finished = True

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._chunks.aclose()
        self.upstreams.record_stream_end(self.model, self.error)
        self.upstreams.load.end(self.model, (time.perf_counter() - self._started) * 1000)


@dataclass
class CallResult:
    model: str
    body: dict[str, Any] | None = None  # non-streamed answer
    stream: UpstreamStream | None = None
    attempts: list[Attempt] = field(default_factory=list)
    ttft_ms: float = 0.0
    upstream_ms: float = 0.0  # time spent waiting on upstreams, retries and backoff included

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()


class Observer(Protocol):
    def upstream_error(self, model: str, kind: str) -> None: ...

    def fallback(self, from_model: str, to_model: str) -> None: ...

    def breaker_opened(self, model: str) -> None: ...


class _NoObserver:
    def upstream_error(self, model, kind):
        pass

    def fallback(self, from_model, to_model):
        pass

    def breaker_opened(self, model):
        pass


class Upstreams:
    """The policy's models, ready to call, with retries, fallback and a breaker each."""

    def __init__(self, policy: Policy, observer: Observer | None = None, environ: Mapping[str, str] = os.environ,
                 transports: Mapping[str, Transport] | None = None, rng: random.Random | None = None):
        self.targets = {name: ModelTarget.resolve(name, spec, environ) for name, spec in policy.models.items()}
        settings = policy.upstream
        self.retries = settings.retries
        self.backoff_s = settings.backoff_s
        self.backoff_max_s = settings.backoff_max_s
        self.breakers = {name: CircuitBreaker(settings.breaker.failure_threshold, settings.breaker.cooldown_s)
                         for name in policy.models}
        self.transports: dict[str, Transport] = dict(transports or {})
        self.transports.setdefault("openai", OpenAICompatibleTransport())
        if "litellm" not in self.transports:
            self.transports["litellm"] = LiteLLMTransport()
        self.observer = observer or _NoObserver()
        self.rng = rng or random.Random()
        self.load = ModelLoad()

    def saturated(self, models, bound) -> bool:
        return self.load.saturated(self.available(models), bound)

    def retry_in_s(self, models) -> float:
        return min(self.breakers[m].retry_in_s() for m in models)

    def adopt_breakers(self, previous: "Upstreams", policy: Policy) -> None:
        """After a reload: keep the circuit state of models whose definition did not change."""
        for name, breaker in previous.breakers.items():
            old = previous.targets.get(name)
            if name in self.breakers and old is not None and old.spec == policy.models[name]:
                breaker.failure_threshold = policy.upstream.breaker.failure_threshold
                breaker.cooldown_s = policy.upstream.breaker.cooldown_s
                self.breakers[name] = breaker

    def available(self, models: Sequence[str]) -> list[str]:
        return [m for m in models if self.breakers[m].available()]

    def breaker_states(self) -> dict[str, str]:
        return {name: b.state for name, b in self.breakers.items()}

    def _backoff(self, attempt: int, error: UpstreamError) -> float | None:
        """Delay before retrying the same model, or None to move on to the next one."""
        if error.retry_after_s is not None:
            return error.retry_after_s if error.retry_after_s <= self.backoff_max_s else None
        delay = min(self.backoff_max_s, self.backoff_s * (2 ** attempt))
        return delay * (0.5 + self.rng.random() / 2)

    def _fail(self, model: str, error: UpstreamError) -> None:
        self.observer.upstream_error(model, error.kind)
        if error.counts_against_model and self.breakers[model].record_failure():
            self.observer.breaker_opened(model)

    async def call(self, ranking: Sequence[str], payload: dict[str, Any], stream: bool,
                   headers: HeaderChanges | None = None) -> CallResult:
        """Try `ranking` in order until one model answers; raise an `APIError` if none does.
        `headers` changes the headers of every upstream call (the `headers` plugin)."""
        attempts: list[Attempt] = []
        started = time.perf_counter()
        previous: str | None = None
        for model in ranking:
            breaker = self.breakers[model]
            if not breaker.acquire():
                attempts.append(Attempt(model, skipped=f"circuit open, retry in {breaker.retry_in_s():.1f}s"))
                continue
            if previous is not None:
                self.observer.fallback(previous, model)
            previous = model
            target = self.targets[model]
            transport = self.transports[target.transport]
            for attempt in range(self.retries + 1):
                if attempt > 0 and not breaker.acquire():
                    break
                t0 = time.perf_counter()
                try:
                    if stream:
                        chunks = transport.stream(target, payload, headers)
                        try:
                            first = await anext(chunks)
                        except StopAsyncIteration:
                            raise UpstreamError("stream_broken", "stream ended before any chunk", model=model) from None
                        now = time.perf_counter()
                        self.load.start(model)
                        return CallResult(model, stream=UpstreamStream(self, model, first, chunks, t0), attempts=attempts,
                                          ttft_ms=(now - t0) * 1000, upstream_ms=(now - started) * 1000)
                    self.load.start(model)
                    try:
                        body = await transport.complete(target, payload, headers)
                    finally:
                        self.load.end(model, (time.perf_counter() - t0) * 1000)
                    now = time.perf_counter()
                    breaker.record_success()
                    return CallResult(model, body=body, attempts=attempts, ttft_ms=(now - t0) * 1000,
                                      upstream_ms=(now - started) * 1000)
                except asyncio.CancelledError:
                    breaker.trial_in_flight = False
                    raise
                except UpstreamError as error:
                    error.model = model
                    attempts.append(Attempt(model, error=error))
                    if error.kind == "client":
                        breaker.trial_in_flight = False
                        raise InvalidRequest(
                            f"model '{model}' rejected the request: {error.message}",
                            status=error.status if error.status in (400, 413, 422) else 400,
                            code="upstream_rejected") from None
                    self._fail(model, error)
                    if not error.retryable or attempt == self.retries:
                        break
                    delay = self._backoff(attempt, error)
                    if delay is None:
                        break
                    await asyncio.sleep(delay)
        raise self._exhausted(ranking, attempts)

    def _exhausted(self, ranking: Sequence[str], attempts: list[Attempt]) -> APIError:
        errors = [a.error for a in attempts if a.error is not None]
        if not errors:
            soonest = min((self.breakers[m].retry_in_s() for m in ranking), default=0.0)
            return Unavailable(
                f"every candidate model ({', '.join(ranking)}) is failing and temporarily taken out of "
                f"service (circuit open); retry in {soonest:.0f}s",
                code="all_circuits_open", headers={"retry-after": str(max(1, round(soonest)))})
        summary = "; ".join(str(e) if e else f"{a.model}: {a.skipped}"
                            for a in attempts for e in [a.error])
        if all(e.kind == "timeout" for e in errors):
            return UpstreamFailed(f"every candidate model timed out: {summary}", status=504, code="upstream_timeout")
        return UpstreamFailed(f"every candidate model failed: {summary}", code="upstream_failed")

    def record_stream_end(self, model: str, error: UpstreamError | None) -> None:
        """Called by the pipeline when a committed stream finishes or breaks."""
        if error is None:
            self.breakers[model].record_success()
        else:
            self._fail(model, error)

    async def aclose(self) -> None:
        for transport in self.transports.values():
            await transport.aclose()
