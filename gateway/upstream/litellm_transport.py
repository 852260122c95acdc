"""The litellm transport: every provider litellm knows (Anthropic, Azure, Bedrock, Gemini/Vertex, …).

Calls go through `litellm.acompletion` with litellm's own retries off (the resilience loop
retries), and every litellm exception is mapped to an `UpstreamError` kind, so that this
transport behaves like the direct one. litellm is imported on first use only: its import alone
takes seconds (and it must never be imported by the SDK).

Streams: the first chunk must come within ``first_token_timeout_s`` of the call (one budget for
the request and the first chunk), each next one within ``stream_idle_timeout_s``; a stream is
complete once a chunk carries a finish reason.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, AsyncIterator

from sigroute.gateway.upstream.errors import UpstreamError, classify_status, retry_after, well_formed
from sigroute.gateway.upstream.targets import CALL_HEADERS, HeaderChanges, ModelTarget, merged_headers

__all__ = ["LiteLLMTransport"]


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
        extra = merged_headers(target.spec.extra_headers, headers)
        extra.update(CALL_HEADERS.get())   # this call's own (a trace's traceparent)
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
        code = "context_length_exceeded" if name == "ContextWindowExceededError" else None
        return UpstreamError(kind, f"{name}: {message}", status=status if isinstance(status, int) else None,
                             model=target.name, retry_after_s=self._retry_after(exc) if kind == "rate_limited" else None,
                             code=code)

    @staticmethod
    def _retry_after(exc: Exception) -> float | None:
        """The upstream's Retry-After, from the headers litellm keeps with its exception (if any)."""
        for headers in (getattr(exc, "litellm_response_headers", None),
                        getattr(getattr(exc, "response", None), "headers", None)):
            try:
                if headers:
                    return retry_after({str(k).lower(): str(v) for k, v in dict(headers).items()})
            except Exception:
                continue
        return None

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
        data = response.model_dump(exclude_none=True)
        if not well_formed(data, "message"):
            raise UpstreamError("protocol", "response is not a chat completion (no choice, a choice without a "
                                "message object, or usage not an object)", status=200, model=target.name)
        return data

    async def stream(self, target: ModelTarget, payload: dict[str, Any],
                     headers: HeaderChanges | None = None) -> AsyncIterator[dict[str, Any]]:
        litellm = self._lib()
        spec = target.spec
        loop = asyncio.get_running_loop()
        first_token_by = loop.time() + spec.first_token_timeout_s  # one budget, from the call
        try:
            async with asyncio.timeout_at(first_token_by):
                response = await litellm.acompletion(**self._kwargs(target, payload, True, headers))
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            raise UpstreamError("timeout", f"no first token within {spec.first_token_timeout_s:g}s",
                                model=target.name) from None
        except Exception as exc:
            raise self._map(exc, target) from None
        iterator = response.__aiter__()
        first = True
        finished = False
        try:
            while True:
                try:
                    async with asyncio.timeout_at(first_token_by if first
                                                  else loop.time() + spec.stream_idle_timeout_s):
                        chunk = await iterator.__anext__()
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    raise
                except TimeoutError:
                    raise UpstreamError("timeout", f"no first token within {spec.first_token_timeout_s:g}s" if first
                                        else f"stream stalled for {spec.stream_idle_timeout_s:g}s",
                                        model=target.name) from None
                except Exception as exc:
                    mapped = self._map(exc, target)
                    if mapped.kind in ("connect", "server", "protocol"):
                        mapped.kind = "stream_broken"
                    raise mapped from None
                first = False
                data = chunk.model_dump(exclude_none=True)
                if not well_formed(data, "delta"):
                    raise UpstreamError("protocol", "stream chunk is not a chat.completion.chunk", model=target.name)
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
