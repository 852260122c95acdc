"""What can go wrong calling one model, in one vocabulary shared by every transport.

`UpstreamError.kind` says what happened; its flags say what the resilience loop does next (retry
the same model, fall back to the next one, count it against the model's breaker). The helpers
read an HTTP answer the same way for every transport: its status → a kind, its ``Retry-After``
(seconds or an HTTP date; OpenAI's ``retry-after-ms`` first when present) → seconds, its body → a short message for the logs and the caller (never credentials: only the
upstream's own error text is kept).

`unsendable_body` is the one failure that is the caller's before anything is sent: a request
that parsed (orjson reads up to 1024 levels of nesting) but cannot be serialized again for the
upstream (orjson writes at most 254). It is an `InvalidRequest` (400), not an `UpstreamError`: no
model was called, no breaker learns anything from it.
"""

from __future__ import annotations

import email.utils
import re
import time
from typing import Any, Mapping

import orjson

from sigroute.gateway.errors import InvalidRequest

__all__ = ["UpstreamError", "classify_status", "parse_retry_after", "retry_after", "error_message", "error_code",
           "unsendable_body", "well_formed", "MODEL_SPECIFIC_REJECTIONS"]

# rejections that say the request does not suit this model (another candidate may take it)
MODEL_SPECIFIC_REJECTIONS = frozenset({"context_length_exceeded"})
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class UpstreamError(Exception):
    """A failed call to one model. `kind` says what happened; the flags say what to do next.

    Kinds: ``connect``, ``timeout``, ``rate_limited``, ``server``, ``stream_broken``, ``protocol``
    (retryable); ``auth``, ``not_found``, ``unavailable`` (another model may work); ``client``
    (the upstream rejected the request itself: returned to the caller as it is, or, when the
    rejection is specific to this model (`model_specific`), the next candidate is tried).
    `code`: the upstream's own error code (OpenAI's ``error.code``), when it sent a plain one.
    """

    RETRYABLE = {"connect", "timeout", "rate_limited", "server", "stream_broken", "protocol"}
    FALLBACK = RETRYABLE | {"auth", "not_found", "unavailable"}

    def __init__(self, kind: str, message: str, *, status: int | None = None, retry_after_s: float | None = None,
                 model: str | None = None, code: str | None = None):
        super().__init__(message)
        self.code = code
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
    def model_specific(self) -> bool:
        """A rejection of the request that another model may not share (e.g. OpenAI's
        ``context_length_exceeded``: another candidate may have a larger context window)."""
        return self.kind == "client" and self.code in MODEL_SPECIFIC_REJECTIONS

    @property
    def counts_against_model(self) -> bool:
        """Whether this failure says something about the model's health (breaker input). A 429
        (``rate_limited``) does not: it is back pressure, the model is only held back for a while
        (see `breaker.Permit.held_back`)."""
        return self.kind in self.FALLBACK and self.kind != "rate_limited"

    def summary(self) -> str:
        """What a caller may see: the model, the kind of failure and the HTTP status, not the
        upstream's own words (they may name internal hosts and ports)."""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{self.model or 'upstream'}: {self.kind}{status}"

    def __str__(self) -> str:
        where = f"{self.model}: " if self.model else ""
        status = f" (HTTP {self.status})" if self.status else ""
        return f"{where}{self.kind}{status}: {self.message}"


def classify_status(status: int) -> str:
    """The kind of failure an HTTP status other than 200 reports."""
    if status == 429:
        return "rate_limited"
    if status in (401, 403, 407):  # 407: an egress proxy refused our credentials
        return "auth"
    if status == 404:
        return "not_found"
    if status in (408, 504):
        return "timeout"
    if status >= 500:
        return "server"
    return "client"


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds: a number of seconds, or an HTTP date (seconds from now);
    None if absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The delay an HTTP answer asks for, in seconds: ``retry-after-ms`` (OpenAI's, more precise)
    if present and valid, else ``Retry-After``. `headers`: lower-case names."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"))


def error_message(content: bytes) -> str:
    """The message of an upstream's error body (OpenAI-shaped or not), at most 500 characters."""
    try:
        data = orjson.loads(content)
        err = data.get("error", data) if isinstance(data, dict) else data
        if isinstance(err, dict):
            return str(err.get("message") or err)[:500]
        return str(err)[:500]
    except Exception:
        return content[:300].decode("utf-8", "replace") or "empty response"


def error_code(content: bytes) -> str | None:
    """The ``error.code`` of an upstream's OpenAI-shaped error body, if it is a plain identifier
    (lower-case letters, digits, underscores): safe to pass on to the caller."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) and _CODE.match(code) else None


def unsendable_body(exc: Exception) -> InvalidRequest:
    """The caller's error for a request body the upstream call cannot serialize (`exc`: the
    encoder's error)."""
    reason = str(exc)
    fix = ("JSON nested more than 254 levels deep cannot be sent upstream; flatten the deeply nested value"
           if "recursion" in reason.lower() else "send only plain JSON values")
    return InvalidRequest(f"the request body cannot be forwarded to the model ({reason}): {fix}",
                          code="invalid_request_body")


def well_formed(data: Any, part: str) -> bool:
    """Whether `data` has the shape the gateway relies on: an object whose ``choices`` (a list; may
    be absent or empty in a stream's usage chunk, not empty in a whole answer) holds objects whose
    `part` (``message`` / ``delta``) is an object with a string (or null) ``content``, and whose
    ``usage``, if any, is an object. Cheap: type checks only, on the path of every chunk."""
    if type(data) is not dict:
        return False
    usage = data.get("usage")
    if usage is not None and type(usage) is not dict:
        return False
    choices = data.get("choices")
    if choices is None:
        return part == "delta"
    if type(choices) is not list or (not choices and part == "message"):  # a whole answer has a choice
        return False
    for choice in choices:
        if type(choice) is not dict:
            return False
        inner = choice.get(part)
        if inner is None and part == "delta":
            continue
        if type(inner) is not dict:
            return False
        content = inner.get("content")
        if content is not None and type(content) is not str:
            return False
    return True
