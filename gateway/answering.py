"""Steps 9–11 of the journey as an answer goes out: whole, streamed, or one sigroute already has.

`Answer` is what the HTTP layer sends: a JSON body or an SSE stream, plus headers, plus the
callbacks it awaits once a stream is over (finished, broken, or never begun).

`Answering` turns what the pipeline has into an `Answer`:

- `whole(journey)`     a model's non-streamed answer: answer plugins (9), cache store and the
                       followers of a single flight (10), learning and metrics (11).
- `streamed(journey, held)`  a model's stream, relayed chunk by chunk through the plugins' stream
                       filters; when it ends, the assembled answer is stored and learned from.
                       `held` is the request's exit stack (the upstream stream, its breaker verdict
                       and in-flight count, the single-flight lease): the answer takes over what it
                       holds (the last thing `streamed` does, so nothing is lost if building the
                       answer fails) and gives it back on every ending — finished, broken upstream,
                       client gone, plugin error, or never started. A stream that breaks, upstream
                       or in the gateway itself, ends with an error event: never a silent cut.
- `cached(journey, answer)`  a cached or coalesced answer: answer plugins, headers, and a pending
                       record so feedback can report it wrong.
- `blocked(journey, blocked)`  a plugin answered instead of a model (refusal or error).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import orjson

from sigroute.gateway.activity import Activity, RequestRecord
from sigroute.gateway.caching import CachedAnswer, Caching
from sigroute.gateway.errors import APIError, InvalidRequest
from sigroute.gateway.journey import Journey
from sigroute.gateway.learning import Learning
from sigroute.gateway.metrics import Metrics
from sigroute.gateway.openai_wire import StreamAssembler, complete_answer, completion_chunks
from sigroute.gateway.ratelimit import streamed_text
from sigroute.gateway.upstream import UpstreamError
from sigroute.plugins.base import Blocked
from sigroute.plugins.chain import PolicyPlugins
from sigroute.signals.context import RequestContext

log = logging.getLogger("sigroute.answering")


@dataclass
class Answer:
    """What the HTTP layer sends back: a JSON body or an SSE stream, plus headers."""

    status: int
    headers: dict[str, str]
    body: bytes | None = None
    stream: AsyncIterator[bytes] | None = None
    on_close: list[Any] = field(default_factory=list)  # coroutine functions the HTTP layer awaits when a
                                                        # stream is over (finished, broken or never begun)


async def ready_answer(body: dict[str, Any], journey: Journey, headers: dict[str, str]) -> Answer:
    """An answer sigroute already has (cached, or a plugin's), in the request's surface format:
    whole, or as stream events if the request streamed (with the usage chunk when
    `stream_options.include_usage` asks for it)."""
    ctx, encoder = journey.ctx, journey.encoder
    if not ctx.stream:
        return Answer(200, headers, body=await encoder.whole(body, None))
    chunks = completion_chunks(body, bool((ctx.body.get("stream_options") or {}).get("include_usage")))

    async def events() -> AsyncIterator[bytes]:
        opening = encoder.start()
        if opening:
            yield opening
        for chunk in chunks:
            event = encoder.chunk(chunk)
            if event:
                yield event
        yield await encoder.end()

    return Answer(200, headers, stream=events())


async def _through(filters, index: int, text: str, final: bool) -> str:
    for f in filters:
        text = f.feed(index, text)
        if final:
            tail = f.flush(index)
            text += await tail if inspect.isawaitable(tail) else tail
    return text


async def filter_chunk(chunk: dict[str, Any], filters) -> dict[str, Any]:
    """Run a streamed chunk's content deltas through the plugins' content filters; a choice's
    finish flushes what they held back into that chunk."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if not isinstance(delta, dict):
            continue
        text = delta.get("content")
        final = bool(choice.get("finish_reason"))
        if isinstance(text, str) or final:
            out = await _through(filters, choice.get("index", 0), text or "", final)
            if isinstance(text, str) or out:
                delta["content"] = out
    return chunk


async def flush_filters(filters, like: dict[str, Any]) -> list[dict[str, Any]]:
    """Chunks with whatever the filters still hold when a stream ends without a finish reason."""
    out = []
    indices = sorted({i for f in filters for i in f.pending_indices()})
    for index in indices:
        text = await _through(filters, index, "", True)
        if text:
            out.append({"id": like.get("id"), "object": "chat.completion.chunk", "created": like.get("created"),
                        "model": like.get("model"),
                        "choices": [{"index": index, "delta": {"content": text}, "finish_reason": None}]})
    return out


def answer_text(body: dict[str, Any]) -> str | None:
    """The text of a whole answer's first choice (None when it has none)."""
    try:
        content = body["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None
    return content if isinstance(content, str) else None


def chunk_text(chunk: dict[str, Any]) -> str:
    """The first choice's text in a streamed chunk ("" when it has none)."""
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) == 0:
            delta = choice.get("delta")
            text = delta.get("content") if isinstance(delta, dict) else None
            return text if isinstance(text, str) else ""
    return ""


class Answering:
    def __init__(self, plugins: PolicyPlugins, caching: Caching, learning: Learning, metrics: Metrics,
                 activity: Activity | None = None, implicit=None, background=None):
        self.plugins = plugins
        self.caching = caching
        self.learning = learning
        self.metrics = metrics
        self.activity = activity
        self.implicit = implicit   # gateway.implicit.ImplicitFeedback: remembers served answers (None: off)
        self.background = background   # gateway.judging.BackgroundFeedback: judge and shadow (None: off)

    def _follows_up(self, journey: Journey) -> bool:
        """Whether this answer's text is remembered for implicit feedback from a follow-up turn."""
        return self.implicit is not None and self.implicit.enabled and journey.feedback_pending

    def _count(self, journey: Journey, model: str, status: str, elapsed_s: float, usage: Any = None) -> None:
        route = journey.route
        journey.counted = True
        self.metrics.latency.labels(route.decision_name).observe(elapsed_s)
        self.metrics.requests.labels(journey.api, route.entrypoint_label, route.decision_name, model, status).inc()
        joules = self.learning.energy_joules(model, usage) if usage is not None else None
        if joules:
            self.metrics.energy_joules.labels(model).inc(joules)
        if self.activity is not None:
            self.activity.record(self._record(journey, model, status, elapsed_s, usage))

    def _record(self, journey: Journey, model: str, status: str, elapsed_s: float, usage: Any) -> RequestRecord:
        """What the operator's dashboard keeps of a request (never its text)."""
        route, result = journey.route, journey.result
        choice = route.choice
        arms = None
        if choice is not None and choice.means:
            arms = {arm: (mean, abs(choice.scores.get(arm, mean) - mean)) for arm, mean in choice.means.items()}
        return RequestRecord(
            at=time.time(), request_id=journey.request_id, api=journey.api, entrypoint=route.entrypoint_label,
            decision=route.decision_name, model=model, status=status, latency_ms=elapsed_s * 1000,
            cache=journey.response_headers.get("x-sigroute-cache") if model == "cache" else None,
            category=journey.plan.category if journey.caching else None,
            fallbacks=sum(1 for a in result.attempts if a.error is not None or a.skipped) if result is not None else 0,
            cost_usd=self.learning.cost_usd(model, usage) if result is not None else None,
            plugins=[f"{plugin}:{action}" for plugin, action, _ in journey.plugins.actions], arms=arms)

    def failed(self, journey: Journey, error: APIError) -> None:
        """A routed request that ended in an error before any answer was counted (every candidate
        failed, a plugin's error, …): counted for the dashboard as well as in the metrics."""
        if journey.counted or journey.route is None:
            return
        model = journey.result.model if journey.result is not None else "none"
        self._count(journey, model, str(error.status), journey.elapsed_s())

    def _timing_headers(self, journey: Journey, elapsed_s: float) -> float:
        """x-sigroute-overhead-ms (time in sigroute itself) and -upstream-ms; returns the overhead."""
        upstream_ms = journey.result.upstream_ms if journey.result is not None else 0.0
        overhead = max(0.0, elapsed_s - upstream_ms / 1000)
        journey.response_headers["x-sigroute-overhead-ms"] = f"{overhead * 1000:.3f}"
        if journey.result is not None:
            journey.response_headers["x-sigroute-upstream-ms"] = f"{upstream_ms:.3f}"
        self.metrics.overhead.observe(overhead)
        return overhead

    # a model's whole answer ----------------------------------------------------------------------
    async def whole(self, journey: Journey) -> Answer:
        result, name = journey.result, journey.route.decision_name
        body = result.body
        body["model"] = result.model
        journey.usage = body.get("usage")   # what the model spent (a token limit settles with it)
        encoded = orjson.dumps(body)       # the answer to the request as sent upstream (what the cache keeps)
        if self.plugins.changes_answers(name):                                   # 9
            body = await self.plugins.after(name, body, journey.plugins)
            answer_bytes = await journey.encoder.whole(body, None)
        else:
            answer_bytes = await journey.encoder.whole(body, encoded)
        journey.plugins.apply_to(journey.response_headers)
        if journey.caching:                                                      # 10
            await self.caching.store(journey, encoded if complete_answer(body) else None)
        elapsed = journey.elapsed_s()
        self._timing_headers(journey, elapsed)
        self.learning.learn(journey, ok=True, latency_ms=elapsed * 1000, usage=body.get("usage"))   # 11
        if self._follows_up(journey):
            await self.implicit.remember(journey, answer_text(body))
        if self.background is not None:   # judge / shadow, in the background: the caller waits for neither
            self.background.answered(journey, answer_text(body))
        self._count(journey, result.model, "200", elapsed, body.get("usage"))
        return Answer(200, journey.response_headers, body=answer_bytes)

    # a model's stream ----------------------------------------------------------------------------
    def streamed(self, journey: Journey, request_held: AsyncExitStack) -> Answer:
        result, name, headers = journey.result, journey.route.decision_name, journey.response_headers
        stream, model = result.stream, result.model
        self._timing_headers(journey, journey.elapsed_s())
        self.metrics.ttft.labels(name).observe(journey.elapsed_s())
        assembler = StreamAssembler() if journey.caching else None
        filters = self.plugins.filters(name, journey.plugins)
        journey.plugins.apply_to(headers)
        encoder = journey.encoder
        began = False
        judged = self.background is not None and self.background.wants(journey)
        told: list[str] | None = [] if self._follows_up(journey) or judged else None   # the text as the caller saw it

        async def events() -> AsyncIterator[bytes]:
            nonlocal began
            began = True
            usage = None
            status = "failed"   # until the stream is relayed to its end
            try:
                first = stream.first_chunk
                first["model"] = model
                if assembler is not None:
                    assembler.add(first)
                opening = encoder.start()
                if first.get("usage"):
                    usage = first["usage"]
                counted = journey.streamed_text    # kept when a token limit must count the answer
                if counted is not None:
                    counted.extend(streamed_text(first))
                shown = await filter_chunk(first, filters) if filters else first
                if told is not None:
                    told.append(chunk_text(shown))
                event = encoder.chunk(shown)
                if opening or event:
                    yield opening + event
                async for chunk in stream:
                    chunk["model"] = model
                    if chunk.get("usage"):
                        usage = chunk["usage"]
                    if counted is not None:
                        counted.extend(streamed_text(chunk))
                    if assembler is not None:
                        assembler.add(chunk)
                    shown = await filter_chunk(chunk, filters) if filters else chunk
                    if told is not None:
                        told.append(chunk_text(shown))
                    event = encoder.chunk(shown)
                    if event:
                        yield event
                for tail in await flush_filters(filters, first):
                    if told is not None:
                        told.append(chunk_text(tail))
                    event = encoder.chunk(tail)
                    if event:
                        yield event
                if told is not None and self._follows_up(journey):   # before the last event: a follow-up may
                    await self.implicit.remember(journey, "".join(told))   # come as soon as the caller has it
                yield await encoder.end()
                status = "200"
                if judged:
                    self.background.answered(journey, "".join(told))
                if assembler is not None:                                        # 10
                    body = assembler.completion(model)
                    await self.caching.store(journey, orjson.dumps(body) if complete_answer(body) else None)
            except UpstreamError as exc:
                status = "stream_broken"
                self.metrics.stream_breaks.labels(model).inc()
                log.warning("request %s: the stream of upstream model %s broke: %s", journey.request_id, model, exc)
                yield encoder.error(
                    f"the upstream model '{model}' failed mid-stream ({exc.kind}); the answer above is "
                    f"incomplete (details in the gateway log under request {journey.request_id})",
                    code="stream_broken", type="upstream_error")
            except (asyncio.CancelledError, GeneratorExit):
                status = "client_disconnected"
                self.metrics.client_disconnects.inc()
                raise
            except Exception:  # noqa: BLE001 - a bug of ours (a plugin's filter, …): still never a silent cut
                status = "internal_error"
                self.metrics.errors.labels("500", "internal_error").inc()
                log.exception("request %s: relaying the stream of model %s failed", journey.request_id, model)
                yield encoder.error(
                    f"the gateway failed while relaying the answer of model '{model}'; the answer above is "
                    f"incomplete (details in the gateway log under request {journey.request_id})",
                    code="internal_error", type="server_error")
            finally:
                journey.trace.stream_ended(status, usage)
                if assembler is not None and status != "200":
                    self.metrics.cache_stores.labels(journey.plan.category, "incomplete").inc()
                journey.usage = usage
                await held.aclose()   # the upstream stream, its breaker verdict, the single-flight lease, tokens
                elapsed = journey.elapsed_s()
                self.learning.learn(journey, ok=status == "200", latency_ms=elapsed * 1000, usage=usage)   # 11
                self._count(journey, model, status, elapsed, usage)

        async def close() -> None:
            """The HTTP layer is done with the answer; if the stream never began (the caller left
            first), give back what the request holds here."""
            if not began:
                self.metrics.client_disconnects.inc()
            await held.aclose()

        request_held.push(journey.trace.streaming())   # the answer's span: ends with the stream
        held = request_held.pop_all()   # from here the stream gives back what the request holds
        return Answer(200, headers, stream=events(), on_close=[close])

    # answers sigroute already has ----------------------------------------------------------------
    async def cached(self, journey: Journey, cached: CachedAnswer) -> Answer:
        body = orjson.loads(cached.response)
        body["id"] = "chatcmpl-" + journey.request_id[4:]
        body["created"] = int(time.time())
        model = body.get("model", "")
        name, headers = journey.route.decision_name, journey.response_headers
        body = await self.plugins.after(name, body, journey.plugins)              # 9, on the cached answer
        journey.plugins.apply_to(headers)
        headers["x-sigroute-cache"] = cached.kind
        headers["x-sigroute-model"] = model
        await self.learning.keep_cache_hit(journey, cached.doc_id, model)
        elapsed = journey.elapsed_s()
        self._timing_headers(journey, elapsed)
        self._count(journey, "cache", "200", elapsed)
        if journey.ctx.stream:
            self.metrics.ttft.labels(name).observe(elapsed)
        return await ready_answer(body, journey, headers)

    async def blocked(self, journey: Journey, blocked: Blocked) -> Answer:
        """A plugin answered instead of a model (the model was never called)."""
        headers = journey.response_headers
        journey.plugins.apply_to(headers)
        headers["x-sigroute-blocked-by"] = blocked.plugin
        elapsed = journey.elapsed_s()
        headers["x-sigroute-overhead-ms"] = f"{elapsed * 1000:.3f}"
        if blocked.response == "error":
            self._count(journey, "none", "400", elapsed)
            raise InvalidRequest(blocked.message, code=blocked.code, headers=headers)
        self._count(journey, "none", "200", elapsed)
        body = {"id": "chatcmpl-" + journey.request_id[4:], "object": "chat.completion", "created": int(time.time()),
                "model": f"sigroute/{blocked.plugin}",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": blocked.message},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}}
        return await ready_answer(body, journey, headers)
