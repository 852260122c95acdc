"""Does sigroute keep serving when its upstreams misbehave, and never present a broken answer as whole?

A catalogue of upstream faults is sent through a real gateway (``sigroute serve`` in its own
process) in front of `benchmarks.chaos_upstream.FaultServer`, a raw-socket OpenAI-compatible server
that fails on purpose and records what it really did. Every request is graded from two sources
only: what the client received (status, headers, body or every SSE event, how the connection
ended, how long it took) and the fault server's record of each upstream call (which model answered,
with what text, finish reason and usage). The gateway's own claims (``x-sigroute-model``, ``model``,
``usage``) are checked against that record, never trusted.

Grades (`grade`):

- ``pass``  a complete answer that one upstream really sent whole, reported with the model and usage
  that upstream really sent (after retries or fallback if needed).
- ``safe``  a clear, OpenAI-shaped error with an upstream-failure status (400/413/422/429 relayed, or
  502/503/504), the error code a scenario requires (``context_length_exceeded``); or a stream that
  ends with an error event after text that one model really sent (no switch of model after bytes).
- ``fail``  no answer within the deadline (the sum of the configured timeouts of every attempt the
  gateway may make, plus slack); a 500 or any other 5xx that is not an upstream-failure status; an
  error that is not OpenAI-shaped or has the wrong code; a stream that stops without ``[DONE]`` and
  without an error event; text, finish reason, model or usage that no upstream sent (a truncated
  or altered answer presented as complete, a model switched mid-stream).

Each scenario injects one fault into the primary candidate of its own decision (its own models, so
breakers and counters do not leak between scenarios), streamed and not, without and with a healthy
fallback candidate; the expected grade is ``pass`` wherever a healthy candidate can still answer
(retry or fallback before any byte was sent) and ``safe`` otherwise. A scenario's grade is the worst
of its requests'. Scenarios run concurrently (``--parallel``); they do not share models.

The faults (`FAULTS`, plus the scenarios built in `catalogue`): 429 with ``Retry-After: 1``, with
none, with 120 s; 401; 500; 503; a TCP reset after the request; an orderly close without an answer;
bytes that are not HTTP; an accepted connection that never answers; a first token (or whole answer)
past the timeouts; SSE comments instead of the first token / instead of the next tokens; a stream
cut before its first chunk / mid-answer; stalled before / mid-answer (connection open); an
upstream error event first / mid-answer; invalid JSON, invalid UTF-8, JSON that is an array, and
JSON of the wrong shape (``choices`` not a list, no message, ``usage`` a string), each as the
first event and mid-answer; a whole answer without any choice; a whole JSON answer to a streamed
request; a stream ending cleanly without ``[DONE]``; 400 ``context_length_exceeded``; a
content-filtered answer (``finish_reason: content_filter``, relayed as such); a flapping primary
(odd calls 503); a fallback that rejects the request (400) with and without a third candidate;
a healthy model (attribution only); and, with the decision's cache on, a broken or filtered answer
followed by the identical request (never served from the cache) and three identical requests at
once during a fault (single flight: the followers are not handed the leader's failure).
``--transport litellm`` sends the same catalogue through litellm instead of the direct client.

Load phases (``--load-seconds`` each, 16 closed-loop clients, alternating streamed and whole
requests, every answer graded as above): one of three round-robin candidates is killed (its server
stopped, every connection aborted), slowed past its timeouts, or answers 429 ``Retry-After: 1``
from 10 % to 70 % of the phase, then recovers. Reported: success rate (target ≥ 99.9 %), the
slowest request against the deadline, and the faulty model's breaker as ``GET /metrics`` showed
it: episodes opened and closed (``sigroute_breaker_opened_total`` and
``sigroute_breaker_closed_total`` over the phase: a closing is a half-open trial that succeeded,
not the end of a cooldown) and the circuit's state (``sigroute_breaker_state``: closed / open /
half_open / rate_limited) at every change seen, polled every 0.2 s. After the phase, probe
requests are sent (one every 0.25 s, at most 15 s) until the circuit is closed again.

Operations faults (Redis outage, policy reloads, feedback during outages) come from
`benchmarks.chaos_ops.run_operations` (skipped with ``--skip-ops``: those keys are then null).

    python -m benchmarks.chaos [--quick] [--load-seconds 60] [--skip-ops] [--json PATH]

The last line printed is the summary: ``scenarios``, ``pass``, ``safe``, ``fail``,
``success_rate_with_healthy_candidate`` (every request that had a healthy candidate: catalogue
scenarios expecting ``pass`` and every load-phase request), ``redis_outage_5xx``,
``reload_failed_requests``, ``feedback_lost_unreported``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import orjson
import yaml

from benchmarks.chaos_upstream import Fault, FaultServer, Record
from benchmarks.loadgen import ServerProcess, machine_info, stats
from benchmarks.report import emit

GRADES = ("fail", "safe", "pass")  # worst first
UPSTREAM_FAILURE_STATUSES = {502, 503, 504}
RELAYED_ERROR_STATUSES = {400, 413, 422, 429}

RETRIES = 1
BACKOFF_MAX_S = 2.0
FAULTY_TIMEOUTS = {"timeout_s": 1.5, "first_token_timeout_s": 1.0, "stream_idle_timeout_s": 1.0}
HEALTHY_TIMEOUTS = {"timeout_s": 8.0, "first_token_timeout_s": 8.0, "stream_idle_timeout_s": 8.0}
LOAD_TIMEOUTS = {"timeout_s": 2.0, "first_token_timeout_s": 2.0, "stream_idle_timeout_s": 2.0}
SLOW_S = 4.0  # a slow fault's delay: well past FAULTY_TIMEOUTS
GAP_S = 0.02  # between streamed chunks of mid-answer faults: the first ones reach the client before the fault
DEADLINE_SLACK_S = 10.0


# ------------------------------------------------------------------------------------------------
# what the client saw

@dataclass
class Observation:
    """One request as the client saw it, nothing interpreted yet."""

    stream: bool
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    events: list[str] = field(default_factory=list)  # SSE data payloads, in order
    clean_end: bool = False  # the HTTP body ended as HTTP says (content-length reached / last chunk)
    transport_error: str | None = None
    hung: bool = False  # still unanswered at the client's hard limit
    elapsed_s: float = 0.0


class GatewayClient:
    """A keep-alive HTTP/1.1 connection that records every byte of an answer (SSE included)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()
            self.reader = self.writer = None

    async def chat(self, body: dict[str, Any], limit_s: float) -> Observation:
        obs = Observation(stream=bool(body.get("stream")))
        raw = orjson.dumps(body)
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit_s):
                await self._exchange(raw, obs)
        except TimeoutError:
            obs.hung = True
            await self.close()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, OSError) as exc:
            obs.transport_error = f"{type(exc).__name__}: {exc}"
            await self.close()
        obs.elapsed_s = time.monotonic() - started
        return obs

    async def _exchange(self, raw: bytes, obs: Observation) -> None:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 22)
        reader, writer = self.reader, self.writer
        writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
                      f"content-type: application/json\r\ncontent-length: {len(raw)}\r\n\r\n").encode() + raw)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head[:-4].decode("latin-1").split("\r\n")
        obs.status = int(lines[0].split(" ", 2)[1])
        for line in lines[1:]:
            key, _, value = line.partition(":")
            obs.headers[key.strip().lower()] = value.strip()
        parts: list[bytes] = []
        if obs.headers.get("transfer-encoding", "").lower() == "chunked":
            buffer = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                data = (await reader.readexactly(size + 2))[:-2]
                parts.append(data)
                if obs.stream:
                    buffer += data
                    buffer = _take_events(buffer, obs.events)
        else:
            length = int(obs.headers.get("content-length", "0"))
            parts.append(await reader.readexactly(length) if length else b"")
        obs.body = b"".join(parts)
        obs.clean_end = True
        if obs.stream and obs.status == 200 and not obs.headers.get("transfer-encoding"):
            _take_events(obs.body, obs.events)
        if obs.headers.get("connection", "").lower() == "close":
            await self.close()


def _take_events(buffer: bytes, out: list[str]) -> bytes:
    """Move the complete SSE events of `buffer` into `out` (their data); return the rest."""
    buffer = buffer.replace(b"\r\n", b"\n")
    while b"\n\n" in buffer:
        event, buffer = buffer.split(b"\n\n", 1)
        data = [line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")]
        if data:
            out.append(b"\n".join(data).decode("utf-8", "replace"))
    return buffer


# ------------------------------------------------------------------------------------------------
# grading

def _openai_error(body: bytes) -> dict[str, Any] | None:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str) and err["message"] and "type" in err:
        return err
    return None


def _well_formed_chunk(event: Any) -> bool:
    """A chat.completion.chunk: choices a list of objects whose delta is an object, usage an object or absent."""
    if not isinstance(event, dict) or not isinstance(event.get("choices"), list):
        return False
    if not isinstance(event.get("usage"), (dict, type(None))):
        return False
    return all(isinstance(c, dict) and isinstance(c.get("delta", {}), dict)
               and isinstance((c.get("delta") or {}).get("content"), (str, type(None))) for c in event["choices"])


def _sent_whole(records: Sequence[Record], content: str, finish: str | None) -> list[Record]:
    return [r for r in records if r.whole and r.content == content and r.finish_reason == finish]


def grade(obs: Observation, records: Sequence[Record], *, deadline_s: float,
          include_usage: bool = True, error_code: str | None = None) -> tuple[str, str]:
    """(grade, why) of one request, from what the client saw and what the upstream really did
    (`records`: the fault server's record of every call made for this request)."""
    if obs.hung:
        return "fail", f"no complete answer within {obs.elapsed_s:.1f}s (the client gave up)"
    if obs.elapsed_s > deadline_s:
        return "fail", f"took {obs.elapsed_s:.1f}s, past the deadline of {deadline_s:.1f}s"
    if obs.status is None:
        return "fail", f"no answer: {obs.transport_error}"
    if obs.status != 200:
        if obs.transport_error or not obs.clean_end:
            return "fail", f"error answer broken off: {obs.transport_error}"
        err = _openai_error(obs.body)
        if err is None:
            return "fail", f"HTTP {obs.status} without an OpenAI-shaped error: {obs.body[:120]!r}"
        if obs.status not in UPSTREAM_FAILURE_STATUSES | RELAYED_ERROR_STATUSES:
            return "fail", f"HTTP {obs.status} ({err.get('code')}): not an upstream-failure status"
        if error_code is not None and err.get("code") != error_code:
            return "fail", f"HTTP {obs.status} with code {err.get('code')!r}, expected {error_code!r}"
        return "safe", f"HTTP {obs.status} {err.get('code')}"
    reported = obs.headers.get("x-sigroute-model")
    if not obs.stream:
        if not obs.clean_end:
            return "fail", f"answer broken off: {obs.transport_error}"
        try:
            body = orjson.loads(obs.body)
            choice = body["choices"][0]
            content, finish = choice["message"]["content"], choice["finish_reason"]
            if not isinstance(content, str) or not isinstance(body.get("usage"), (dict, type(None))):
                raise TypeError
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            return "fail", f"200 without a well-formed completion: {obs.body[:120]!r}"
        sent = _sent_whole(records, content, finish)
        if not sent:
            return "fail", "answer differs from every answer an upstream sent whole (truncated or altered)"
        return _check_attribution(sent, reported, body.get("model"), body.get("usage"), True)
    # a stream
    chunks, error, done = [], None, False
    for data in obs.events:
        if data.strip() == "[DONE]":
            done = True
            continue
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            return "fail", f"an SSE event that is not JSON reached the client: {data[:80]!r}"
        if isinstance(event, dict) and "error" in event and "choices" not in event:
            error = event["error"]
            continue
        if error is not None or done:
            return "fail", "chunks after the stream's end or error event"
        if not _well_formed_chunk(event):
            return "fail", f"an event that is not a chat.completion.chunk reached the client: {data[:80]!r}"
        chunks.append(event)
    models = {c.get("model") for c in chunks}
    if len(models) > 1:
        return "fail", f"one stream names several models: {sorted(map(str, models))}"
    content = "".join((ch.get("delta") or {}).get("content") or "" for c in chunks for ch in c.get("choices") or ())
    finishes = [ch.get("finish_reason") for c in chunks for ch in c.get("choices") or () if ch.get("finish_reason")]
    usage = next((c["usage"] for c in chunks if c.get("usage")), None)
    if error is not None:
        if not isinstance(error, dict) or not error.get("message"):
            return "fail", f"error event without a message: {error!r}"
        if done:
            return "fail", "an error event and [DONE] in one stream"
        # what was sent must be the beginning of what the reported model really sent
        if content and not any(r.content.startswith(content) and r.model == reported for r in records):
            return "fail", ("streamed text before the error event was not sent by the reported model "
                            "(switch or alteration)")
        if chunks and reported not in models:
            return "fail", f"x-sigroute-model {reported!r} but the chunks name {sorted(map(str, models))}"
        return "safe", f"error event after {len(content)} characters ({error.get('code')})"
    if not done or not obs.clean_end:
        return "fail", ("stream ended without [DONE] and without an error event (silent truncation)"
                        + (f": {obs.transport_error}" if obs.transport_error else ""))
    sent = _sent_whole(records, content, finishes[-1] if finishes else None)
    if not sent:
        return "fail", "streamed answer differs from every answer an upstream sent whole (truncated or altered)"
    return _check_attribution(sent, reported, models.pop() if models else None, usage, include_usage)


def _check_attribution(sent: Sequence[Record], header_model: str | None, body_model: str | None,
                       usage: Any, usage_expected: bool) -> tuple[str, str]:
    record = sent[-1]
    if header_model != record.model or body_model != record.model:
        return "fail", (f"answered by {record.model} but reported as {header_model!r} (header) / "
                        f"{body_model!r} (body)")
    if usage_expected and _token_counts(usage) != _token_counts(record.usage):
        return "fail", f"usage {usage} but {record.model} reported {record.usage}"
    return "pass", f"answered by {record.model}"


def _token_counts(usage: Any) -> Any:
    """The counts a usage reports (details a client library adds, such as litellm's
    ``completion_tokens_details``, are not compared)."""
    if not isinstance(usage, dict):
        return usage
    return {k: usage.get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def worst(grades: Sequence[str]) -> str:
    return min(grades, key=GRADES.index) if grades else "pass"


# ------------------------------------------------------------------------------------------------
# the catalogue

@dataclass
class Scenario:
    name: str
    fault: Fault
    stream: bool
    roles: tuple[str, ...]  # candidates in ranking order: faulty | healthy | rejecter
    expected: str
    requests: int = 2
    error_code: str | None = None
    cache: bool = False  # the decision caches answers (exact tier; identical requests share a flight)
    identical: bool = False  # every request is the same (same text: cache and single flight apply)
    concurrent: bool = False  # the requests are sent at once, not one after the other
    key: str = ""  # decision / model prefix, set by `catalogue`

    def model(self, role: str) -> str:
        return f"{self.key}-{role}"

    @property
    def healthy_exists(self) -> bool:
        return self.expected == "pass"


REJECTION = Fault("status", status=400, code="unsupported_value", error_type="invalid_request_error",
                  message="Unsupported value: 'temperature' does not support 0.3 with this model.")
CONTEXT_LENGTH = Fault("status", status=400, code="context_length_exceeded", error_type="invalid_request_error",
                       message="This model's maximum context length is 4096 tokens. However, your messages "
                               "resulted in 5000 tokens. Please reduce the length of the messages.")

# name -> (fault, modes: "both" | "stream" | "whole", fails only after bytes were sent when streamed)
FAULTS: dict[str, tuple[Fault, str, bool]] = {
    "429-retry-after": (Fault("status", status=429, retry_after="1", code="rate_limit_exceeded",
                              error_type="rate_limit_error", message="Rate limit reached"), "both", False),
    "429-no-retry-after": (Fault("status", status=429, code="rate_limit_exceeded", error_type="rate_limit_error",
                                 message="Rate limit reached"), "both", False),
    "429-long-retry-after": (Fault("status", status=429, retry_after="120", code="rate_limit_exceeded",
                                   error_type="rate_limit_error", message="Rate limit reached"), "both", False),
    "401-misconfigured-key": (Fault("status", status=401, code="invalid_api_key", error_type="invalid_request_error",
                                    message="Incorrect API key provided"), "both", False),
    "500": (Fault("status", status=500), "both", False),
    "503": (Fault("status", status=503, message="overloaded"), "both", False),
    "tcp-reset": (Fault("reset"), "both", False),
    "never-answers": (Fault("never_answer"), "both", False),
    "slow-first-token": (Fault("slow", delay_s=SLOW_S), "both", False),
    "cut-before-first-chunk": (Fault("cut", after_chunks=0), "stream", False),
    "cut-mid-answer": (Fault("cut", after_chunks=2, chunk_gap_s=GAP_S), "both", True),
    "stalled-before-first-chunk": (Fault("stall", after_chunks=0), "stream", False),
    "stalled-mid-answer": (Fault("stall", after_chunks=2, chunk_gap_s=GAP_S), "both", True),
    "error-event-first": (Fault("error_event", after_chunks=0, message="upstream overloaded"), "stream", False),
    "error-event-mid-answer": (Fault("error_event", after_chunks=2, chunk_gap_s=GAP_S,
                                     message="upstream overloaded"), "stream", True),
    "malformed-first-chunk": (Fault("malformed", after_chunks=0), "stream", False),
    "malformed-mid-answer": (Fault("malformed", after_chunks=2, chunk_gap_s=GAP_S), "both", True),
    "missing-done": (Fault("no_done"), "stream", True),
    "context-length": (CONTEXT_LENGTH, "both", False),
    "closes-without-answer": (Fault("close_without_answer"), "both", False),
    "not-http": (Fault("garbage"), "both", False),
    "pings-instead-of-first-token": (Fault("pings", after_chunks=0), "both", False),
    "pings-instead-of-tokens": (Fault("pings", after_chunks=2, chunk_gap_s=GAP_S), "stream", True),
    "invalid-utf8-first-chunk": (Fault("bad_utf8", after_chunks=0), "both", False),
    "invalid-utf8-mid-answer": (Fault("bad_utf8", after_chunks=2, chunk_gap_s=GAP_S), "stream", True),
    "json-not-an-object-first": (Fault("not_object", after_chunks=0), "both", False),
    "json-not-an-object-mid-answer": (Fault("not_object", after_chunks=2, chunk_gap_s=GAP_S), "stream", True),
    "no-choices": (Fault("no_choices"), "whole", False),
    "json-instead-of-stream": (Fault("json_for_stream"), "stream", False),
    "wrong-shape-first": (Fault("bad_shape", after_chunks=0), "both", False),
    "wrong-shape-mid-answer": (Fault("bad_shape", after_chunks=2, chunk_gap_s=GAP_S), "stream", True),
}


def catalogue() -> list[Scenario]:
    out: list[Scenario] = []
    for name, (fault, modes, after_bytes) in FAULTS.items():
        for stream in (False, True):
            if (modes == "stream" and not stream) or (modes == "whole" and stream):
                continue
            for fallback in (False, True):
                streamed_after_bytes = stream and after_bytes
                expected = "pass" if fallback and not streamed_after_bytes else "safe"
                code = fault.code if name == "context-length" and not fallback else None
                out.append(Scenario(f"{name}/{'stream' if stream else 'whole'}/{'fallback' if fallback else 'alone'}",
                                    fault, stream, ("faulty", "healthy") if fallback else ("faulty",), expected,
                                    error_code=code))
    for stream in (False, True):
        mode = "stream" if stream else "whole"
        for fallback in (False, True):
            roles = ("faulty", "healthy") if fallback else ("faulty",)
            suffix = "fallback" if fallback else "alone"
            # a filtered answer is the model's answer: relayed as it is, with its finish reason
            out.append(Scenario(f"content-filter/{mode}/{suffix}", Fault("content_filter"), stream, roles, "pass"))
            # odd calls fail, even calls answer: the retry on the same model finds it answering
            out.append(Scenario(f"flapping-primary/{mode}/{suffix}", Fault("flapping"), stream, roles, "pass",
                                requests=4))
        out.append(Scenario(f"fallback-rejects/{mode}/alone", Fault("status", status=500), stream,
                            ("faulty", "rejecter"), "safe"))
        out.append(Scenario(f"fallback-rejects/{mode}/fallback", Fault("status", status=500), stream,
                            ("faulty", "rejecter", "healthy"), "pass"))
        # no fault: the answer reports the model and usage that produced it
        out.append(Scenario(f"healthy-attribution/{mode}/alone", Fault("ok"), stream, ("faulty",), "pass"))
        # the cache keeps only complete answers: a broken or filtered one is never served again, and
        # identical requests waiting on a failing one (single flight) are not handed its failure
        cut = Fault("cut", after_chunks=2, chunk_gap_s=0.2) if stream else Fault("cut")
        out.append(Scenario(f"cache-after-broken-answer/{mode}/alone", cut, stream, ("faulty",), "safe",
                            cache=True, identical=True))
        out.append(Scenario(f"cache-after-content-filter/{mode}/alone", Fault("content_filter"), stream,
                            ("faulty",), "pass", cache=True, identical=True))
        out.append(Scenario(f"identical-requests-during-fault/{mode}/alone", cut, stream, ("faulty",), "safe",
                            requests=3, cache=True, identical=True, concurrent=True))
        out.append(Scenario(f"identical-requests-during-fault/{mode}/fallback", Fault("slow", delay_s=SLOW_S),
                            stream, ("faulty", "healthy"), "pass", requests=3, cache=True, identical=True,
                            concurrent=True))
    for i, scenario in enumerate(out):
        scenario.key = f"c{i:02d}"
    return out


def model_block(name: str, api_base: str, timeouts: dict[str, float], transport: str = "auto") -> dict[str, Any]:
    return {"provider": f"openai/{name}", "api_base": api_base, "price": {"input": 1.0, "output": 2.0},
            "transport": transport, **timeouts}


def build_policy(scenarios: Sequence[Scenario], api_base: str, load_models: dict[str, list[tuple[str, str]]],
                 cooldown_s: float, transport: str = "auto") -> dict[str, Any]:
    """One decision per scenario and per load phase, each reached through its own entrypoint."""
    models: dict[str, Any] = {}
    decisions: list[dict[str, Any]] = []
    entrypoints: dict[str, Any] = {}
    for s in scenarios:
        names = []
        for role in s.roles:
            name = s.model(role)
            timeouts = HEALTHY_TIMEOUTS if role == "healthy" or s.fault.kind in ("flapping", "ok") else FAULTY_TIMEOUTS
            models[name] = model_block(name, api_base, timeouts, transport)
            names.append(name)
        decision = {"name": s.key, "rules": "keyword:chaos", "models": names, "algorithm": "static"}
        if s.cache:
            decision["cache"] = {"mode": "exact", "ttl": 600, "streams": True}
        decisions.append(decision)
        entrypoints[f"chaos-{s.key}"] = {"decisions": [s.key]}
    for phase, pairs in load_models.items():
        for name, base in pairs:
            models[name] = model_block(name, base, LOAD_TIMEOUTS, transport)
        decisions.append({"name": f"load-{phase}", "rules": "keyword:chaos", "models": [n for n, _ in pairs],
                          "algorithm": "round_robin"})
        entrypoints[f"load-{phase}"] = {"decisions": [f"load-{phase}"]}
    first = next(iter(models))
    decisions.append({"name": "default", "models": [first], "algorithm": "static"})
    return {"version": 1, "models": models, "signals": {"keyword": {"chaos": {"any": ["chaos"]}}},
            "decisions": decisions, "entrypoints": entrypoints, "routing": {"allow_direct_models": False},
            "server": {"rate_limit": {"requests_per_minute": 10_000_000}},
            "upstream": {"retries": RETRIES, "backoff_s": 0.05, "backoff_max_s": BACKOFF_MAX_S,
                         "breaker": {"failure_threshold": 5, "cooldown_s": cooldown_s}}}


def deadline_for(timeouts_per_candidate: Sequence[dict[str, float]]) -> float:
    """The longest the gateway may take by its configuration: every attempt of every candidate
    running into its timeouts (first token and one idle gap for streams), plus backoffs, plus slack."""
    total = 0.0
    for t in timeouts_per_candidate:
        attempt = max(t["timeout_s"], t["first_token_timeout_s"] + t["stream_idle_timeout_s"])
        total += (RETRIES + 1) * attempt + RETRIES * BACKOFF_MAX_S
    return total + DEADLINE_SLACK_S


def request_body(entrypoint: str, nonce: str, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": entrypoint, "temperature": 0.3,
                            "messages": [{"role": "user", "content": f"chaos test, please answer chaos-id:{nonce}"}]}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


async def run_scenario(s: Scenario, server: FaultServer, host: str, port: int) -> dict[str, Any]:
    for role in s.roles:
        server.faults[s.model(role)] = {"faulty": s.fault, "rejecter": REJECTION}.get(role, Fault())
    deadline = deadline_for([HEALTHY_TIMEOUTS if r == "healthy" or s.fault.kind in ("flapping", "ok")
                             else FAULTY_TIMEOUTS for r in s.roles])
    requests = []

    async def one(i: int, client: GatewayClient) -> None:
        nonce = f"{s.key}-0" if s.identical else f"{s.key}-{i}"
        obs = await client.chat(request_body(f"chaos-{s.key}", nonce, s.stream), deadline + 5.0)
        records = server.by_nonce.get(nonce, [])
        got, why = grade(obs, records, deadline_s=deadline, error_code=s.error_code)
        cache = obs.headers.get("x-sigroute-cache", "")
        if got == "pass" and cache.startswith("hit") and any(r.finish_reason == "content_filter" for r in records):
            got, why = "fail", f"a filtered answer was served from the cache ({cache})"
        err = _openai_error(obs.body) if obs.status not in (None, 200) else None
        requests.append({"grade": got, "why": why, "status": obs.status, "elapsed_s": round(obs.elapsed_s, 3),
                         "error_code": err.get("code") if err else None,
                         "x_sigroute_model": obs.headers.get("x-sigroute-model"),
                         "x_sigroute_attempts": obs.headers.get("x-sigroute-attempts"),
                         "x_sigroute_cache": cache or None,
                         "events": len(obs.events), "upstream_calls": [r.as_dict() for r in records]})
        if got == "fail":  # what the client saw, to debug with
            requests[-1]["client_saw"] = (obs.events[-6:] if obs.stream
                                          else obs.body[:600].decode("utf-8", "replace"))

    clients = [GatewayClient(host, port) for _ in range(s.requests if s.concurrent else 1)]
    try:
        if s.concurrent:
            await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
        else:
            for i in range(s.requests):
                await one(i, clients[0])
    finally:
        for c in clients:
            await c.close()
    got = worst([r["grade"] for r in requests])
    met = got != "fail" and (s.expected == "safe" or got == "pass")
    return {"name": s.name, "expected": s.expected, "got": got, "met": met,
            "candidates": list(s.roles), "stream": s.stream, "deadline_s": round(deadline, 1),
            "why": "; ".join(sorted({r["why"] for r in requests if r["grade"] == got})), "requests": requests}


async def run_catalogue(scenarios: Sequence[Scenario], server: FaultServer, host: str, port: int,
                        parallel: int, log) -> list[dict[str, Any]]:
    gate = asyncio.Semaphore(parallel)

    async def one(s: Scenario) -> dict[str, Any]:
        async with gate:
            result = await run_scenario(s, server, host, port)
        mark = "ok " if result["met"] else "!! "
        log(f"  {mark}{s.name:44s} expected {s.expected:4s} got {result['got']:4s} {result['why']}")
        return result

    return list(await asyncio.gather(*(one(s) for s in scenarios)))


# ------------------------------------------------------------------------------------------------
# load phases

LOAD_PHASES = {
    "killed": "its server stopped, every connection aborted",
    "slow": f"first token and whole answer {SLOW_S:g}s late, past its {LOAD_TIMEOUTS['timeout_s']:g}s timeouts",
    "rate-limited": "answers 429 with Retry-After: 1",
}

BREAKER_METRIC = re.compile(r'^(sigroute_breaker_state|sigroute_breaker_opened_total|sigroute_breaker_closed_total)'
                            r'\{([^}]*)\} ([0-9.eE+-]+)$')
METRIC_LABEL = re.compile(r'(\w+)="([^"]*)"')


async def http_get(host: str, port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n".encode())
        raw = await reader.read(-1)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" in head.lower():
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        return out
    return body


@dataclass
class BreakerView:
    """One model's circuit breaker as one scrape of ``GET /metrics`` shows it."""

    state: str = "unknown"  # sigroute_breaker_state: closed, open, half_open or rate_limited
    opened: float = 0.0  # sigroute_breaker_opened_total: episodes begun
    closed: float = 0.0  # sigroute_breaker_closed_total: episodes ended (a half-open trial succeeded)


async def read_breaker(host: str, port: int, model: str) -> BreakerView:
    text = (await http_get(host, port, "/metrics")).decode("utf-8", "replace")
    view = BreakerView()
    for line in text.splitlines():
        m = BREAKER_METRIC.match(line)
        if not m:
            continue
        labels = dict(METRIC_LABEL.findall(m.group(2)))
        if labels.get("model") != model:
            continue
        name, value = m.group(1), float(m.group(3))
        if name == "sigroute_breaker_state" and value == 1:
            view.state = labels.get("state", "unknown")
        elif name == "sigroute_breaker_opened_total":
            view.opened = value
        elif name == "sigroute_breaker_closed_total":
            view.closed = value
    return view


async def load_phase(phase: str, servers: list[FaultServer], models: list[str], host: str, port: int,
                     seconds: float, clients: int, log) -> dict[str, Any]:
    faulty_server, faulty = servers[0], models[0]
    deadline = deadline_for([LOAD_TIMEOUTS] * len(models))
    outcomes: dict[str, int] = {}
    failures: list[dict[str, Any]] = []
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    began = loop.time()
    end = began + seconds
    stop = asyncio.Event()
    states: list[tuple[float, str]] = []  # the faulty model's circuit per /metrics, when it changed

    def note(state: str) -> None:
        if not states or states[-1][1] != state:
            states.append((round(loop.time() - began, 2), state))

    async def client(c: int) -> None:
        conn = GatewayClient(host, port)
        i = 0
        try:
            while loop.time() < end:
                nonce = f"{phase}-{c}-{i}"
                stream = (i + c) % 2 == 1
                obs = await conn.chat(request_body(f"load-{phase}", nonce, stream), deadline + 5.0)
                got, why = grade(obs, faulty_server_records(servers, nonce), deadline_s=deadline)
                outcomes[got] = outcomes.get(got, 0) + 1
                latencies.append(obs.elapsed_s)
                if got != "pass" and len(failures) < 20:
                    failures.append({"nonce": nonce, "grade": got, "why": why, "status": obs.status,
                                     "at_s": round(loop.time() - began, 2)})
                i += 1
        finally:
            await conn.close()

    async def breaker_watch() -> None:
        while not stop.is_set():
            try:
                note((await read_breaker(host, port, faulty)).state)
            except OSError:
                pass
            try:
                await asyncio.wait_for(stop.wait(), 0.2)
            except TimeoutError:
                pass

    async def inject() -> None:
        await asyncio.sleep(0.1 * seconds)
        log(f"  {phase}: fault on {faulty} ({LOAD_PHASES[phase]})")
        if phase == "killed":
            await faulty_server.stop()
        elif phase == "slow":
            faulty_server.faults[faulty] = Fault("slow", delay_s=SLOW_S)
        else:
            faulty_server.faults[faulty] = Fault("status", status=429, retry_after="1", code="rate_limit_exceeded",
                                                 error_type="rate_limit_error", message="Rate limit reached")
        await asyncio.sleep(0.6 * seconds)
        log(f"  {phase}: {faulty} recovers")
        if phase == "killed":
            await faulty_server.start()
        faulty_server.faults.pop(faulty, None)

    start = await read_breaker(host, port, faulty)
    watcher = asyncio.ensure_future(breaker_watch())
    injector = asyncio.ensure_future(inject())
    await asyncio.gather(*(client(c) for c in range(clients)))
    await injector
    # after the phase: the circuit must close again once the model answers (a half-open trial
    # succeeds); without traffic nothing tries it, so a few probe requests are sent meanwhile
    probe = GatewayClient(host, port)
    probes = 0
    try:
        for _ in range(int(15 / 0.25)):
            if (await read_breaker(host, port, faulty)).state == "closed":
                break
            obs = await probe.chat(request_body(f"load-{phase}", f"{phase}-probe-{probes}", False), deadline + 5.0)
            probes += 1
            got, why = grade(obs, faulty_server_records(servers, f"{phase}-probe-{probes - 1}"), deadline_s=deadline)
            if got == "fail":
                failures.append({"nonce": f"{phase}-probe-{probes - 1}", "grade": got, "why": why})
            await asyncio.sleep(0.25)
    finally:
        await probe.close()
    stop.set()
    await watcher
    final = await read_breaker(host, port, faulty)
    note(final.state)
    total = sum(outcomes.values())
    ok = outcomes.get("pass", 0)
    over = sum(1 for t in latencies if t > deadline)
    result = {"phase": phase, "fault": LOAD_PHASES[phase], "faulty_model": faulty, "clients": clients,
              "seconds": seconds, "requests": total, "grades": outcomes,
              "success_rate": round(ok / total, 5) if total else None,
              "deadline_s": deadline, "over_deadline": over,
              "configured_bound_s": deadline - DEADLINE_SLACK_S,  # the deadline without its slack
              "over_configured_bound": sum(1 for t in latencies if t > deadline - DEADLINE_SLACK_S),
              "latency_s": stats(latencies, 3),
              "breaker_episodes_opened": final.opened - start.opened,
              "breaker_episodes_closed": final.closed - start.closed,
              "breaker_open_at_end": final.state == "open",
              "breaker_states": states,  # per /metrics: (seconds into the phase, state) at each change seen
              "breaker_state_at_end": final.state, "probes_after_phase": probes,
              "upstream_calls": {m: sum(s.calls.get(m, 0) for s in servers) for m in models},
              "failures": failures}
    log(f"  {phase}: {total} requests, success {result['success_rate']}, slowest {result['latency_s'].get('max')}s "
        f"(deadline {deadline:g}s), breaker episodes opened {result['breaker_episodes_opened']:g} / closed "
        f"{result['breaker_episodes_closed']:g}, states {' > '.join(s for _, s in states)}, at the end "
        f"{final.state}")
    return result


def faulty_server_records(servers: Sequence[FaultServer], nonce: str) -> list[Record]:
    return [r for s in servers for r in s.by_nonce.get(nonce, ())]


# ------------------------------------------------------------------------------------------------

async def run(args, log) -> dict[str, Any]:
    scenarios = catalogue()
    server = await FaultServer().start()
    load_servers = {phase: [await FaultServer().start() for _ in range(3)] for phase in LOAD_PHASES}
    load_models = {phase: [(f"load-{phase}-{c}", s.api_base) for c, s in zip("abc", servers)]
                   for phase, servers in load_servers.items()}
    for phase, servers in load_servers.items():
        for (name, _), s in zip(load_models[phase], servers):
            s.faults[name] = Fault()
    policy = build_policy(scenarios, server.api_base, load_models, args.cooldown_s, args.transport)
    result: dict[str, Any] = {"benchmark": "chaos", "config": vars(args), "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="sigroute-chaos-") as tmp:
        path = Path(tmp, "policy.yaml")
        path.write_text(yaml.safe_dump(policy, sort_keys=False))
        command = ["sigroute", "serve", "--policy", str(path), "--port", "{port}", "--log-level", "error"]
        # the gateway runs in its own process; its own event loop must not wait on ours
        gateway = await asyncio.to_thread(
            ServerProcess(command, env={"PYTHONUNBUFFERED": "1"}, name="sigroute").start)
        try:
            log(f"catalogue: {len(scenarios)} scenarios through {gateway.url}")
            result["scenarios"] = await run_catalogue(scenarios, server, gateway.host, gateway.port, args.parallel, log)
            result["load"] = []
            if args.load_seconds > 0:
                log(f"load: {args.clients} clients, {args.load_seconds:g}s per phase")
                for phase, servers in load_servers.items():
                    result["load"].append(await load_phase(phase, servers, [n for n, _ in load_models[phase]],
                                                           gateway.host, gateway.port, args.load_seconds,
                                                           args.clients, log))
            result["gateway_internal_errors"] = gateway.output().count("Traceback")
        finally:
            await asyncio.to_thread(gateway.stop)
            await server.stop()
            for servers in load_servers.values():
                for s in servers:
                    await s.stop()
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    scenarios = result.get("scenarios", [])
    counts = {g: sum(1 for s in scenarios if s["got"] == g) for g in GRADES}
    healthy_ok = healthy_total = 0
    for s in scenarios:
        if s["expected"] == "pass":
            healthy_total += len(s["requests"])
            healthy_ok += sum(1 for r in s["requests"] if r["grade"] == "pass")
    for phase in result.get("load", []):
        healthy_total += phase["requests"]
        healthy_ok += phase["grades"].get("pass", 0)
    ops = result.get("operations") or {}
    return {
        "scenarios": len(scenarios), "pass": counts["pass"], "safe": counts["safe"], "fail": counts["fail"],
        "below_expected": sum(1 for s in scenarios if not s["met"]),
        "success_rate_with_healthy_candidate": round(healthy_ok / healthy_total, 5) if healthy_total else None,
        "load_success": {p["phase"]: p["success_rate"] for p in result.get("load", [])},
        "load_over_deadline": sum(p["over_deadline"] for p in result.get("load", [])),
        "breaker_episodes": {p["phase"]: p["breaker_episodes_opened"] for p in result.get("load", [])},
        "breaker_closings": {p["phase"]: p["breaker_episodes_closed"] for p in result.get("load", [])},
        "gateway_internal_errors": result.get("gateway_internal_errors"),
        "redis_outage_5xx": ops.get("redis_outage_5xx"),
        "reload_failed_requests": ops.get("reload_failed_requests"),
        "feedback_lost_unreported": ops.get("feedback_lost_unreported"),
    }


def run_ops(quick: bool, result: dict[str, Any], log) -> dict[str, Any] | None:
    from benchmarks.chaos_ops import run_operations

    details: dict[str, Any] = {}
    result["operations_details"] = details
    return run_operations(quick=quick, json_details=details)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="load phases of 3 s, operations in their quick mode")
    parser.add_argument("--load-seconds", type=float, default=None, help="per load phase (default 60; --quick: 3)")
    parser.add_argument("--clients", type=int, default=16, help="closed-loop clients in the load phases")
    parser.add_argument("--parallel", type=int, default=8, help="catalogue scenarios run at once")
    parser.add_argument("--cooldown-s", type=float, default=2.0, help="the breakers' cooldown")
    parser.add_argument("--transport", choices=["auto", "openai", "litellm"], default="auto",
                        help="how the gateway calls the fault server (auto: its own HTTP client)")
    parser.add_argument("--skip-ops", action="store_true", help="skip the Redis / reload / feedback faults")
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.load_seconds is None:
        args.load_seconds = 3.0 if args.quick else 60.0
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    result = asyncio.run(run(args, log))
    result["operations"] = None if args.skip_ops else run_ops(args.quick, result, log)
    result["summary"] = summarize(result)
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
