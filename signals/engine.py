"""`SignalEngine`: builds a policy's signals once and evaluates them per request.

Demand-driven: on the request path only the signals some decision's rules read (`engine.used`)
are computed. If any of them needs embeddings, the engine first collects every text they read
(usually just the request's embedding text) and embeds them in one micro-batched encoder call,
so the signals themselves stay synchronous and cheap. Asynchronous signals (`is_async`: the
`guard` signal, which calls a guard model) are started first, as tasks, and awaited last, so their
round trip overlaps the embedding and the other signals. A signal that raises does not fail the
request: its result is unmatched with an `{"error": ...}` value, and the failure is logged without
any request text.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Iterable, Mapping

from sigroute.signals.base import Signal, SignalResult
from sigroute.signals.context import RequestContext
from sigroute.signals.registry import SIGNAL_TYPES

logger = logging.getLogger(__name__)

Plan = tuple[tuple[str, Signal], ...]


class SignalEngine:
    """All signals of one policy, built once (a new policy builds a new engine)."""

    def __init__(self, policy, types: Mapping[str, type[Signal]] = SIGNAL_TYPES, resources=None,
                 guard_backend=None):
        """`guard_backend` (a `signals.guard.GuardBackend`) is how `guard` signals call their model."""
        signals: dict[str, Signal] = {}
        for key, config in policy.signals.declared().items():
            type_name, name = key.split(":", 1)
            cls = types.get(type_name)
            if cls is None:
                known = ", ".join(sorted(types))
                raise ValueError(
                    f"signal '{key}': sigroute has no implementation of signal type '{type_name}' "
                    f"(implemented: {known})"
                )
            if cls.is_async:
                signals[key] = cls.build(name, config, resources, guard_backend)
            else:
                signals[key] = cls.build(name, config, resources)
        self.signals: Mapping[str, Signal] = signals
        # Policy validation guarantees every referenced signal is declared.
        self.used: frozenset[str] = frozenset(k for k in policy.used_signals() if k in signals)
        self._used_plan: Plan = self._plan(sorted(self.used))
        self._used_needs_embedding = any(s.needs_embedding for _, s in self._used_plan)
        self._all_plan: Plan = self._plan(signals)

    @property
    def needs_embedding(self) -> bool:
        """Whether the request path (the used signals) needs the request's embedding."""
        return self._used_needs_embedding

    def _plan(self, keys: Iterable[str]) -> Plan:
        plan = []
        for key in keys:
            signal = self.signals.get(key)
            if signal is None:
                raise KeyError(f"signal '{key}' is not declared in this policy")
            plan.append((key, signal))
        return tuple(plan)

    async def evaluate(self, ctx: RequestContext, keys: Iterable[str] | None = None,
                       trace=None) -> dict[str, SignalResult]:
        """Results of the given signals (default: those the decisions read), keyed 'type:name'.
        `trace` (the request's, opaque here) goes to the model calls of asynchronous signals."""
        if keys is None:
            plan, needs_embedding = self._used_plan, self._used_needs_embedding
        else:
            plan = self._plan(keys)
            needs_embedding = any(s.needs_embedding for _, s in plan)
        started = _start_async(ctx, plan, trace)
        try:
            embedding_error = await _ensure_embeddings(ctx, plan) if needs_embedding else None
            results: dict[str, SignalResult] = {}
            for key, signal in plan:
                if signal.is_async:
                    continue
                if embedding_error is not None and signal.needs_embedding:
                    results[key] = embedding_error
                    continue
                try:
                    results[key] = signal.evaluate(ctx)
                except Exception as exc:  # one broken signal must not fail the request
                    results[key] = _failed(key, ctx, exc)
            for key, task in started.items():
                results[key] = await _finished(key, ctx, task)
        finally:
            for task in started.values():   # a cancelled request leaves no guard call behind
                task.cancel()
        return {key: results[key] for key, _ in plan}

    async def evaluate_all(self, ctx: RequestContext, trace=None) -> tuple[dict[str, SignalResult], dict[str, float]]:
        """Every declared signal, used or not, with the time each took in milliseconds (for explain).

        When some signal needs the embedding, its computation is timed under the key "embedding".
        """
        timings: dict[str, float] = {}
        embedding_error = None
        began = time.perf_counter()
        started = _start_async(ctx, self._all_plan, trace)
        try:
            if any(s.needs_embedding for _, s in self._all_plan):
                start = time.perf_counter()
                embedding_error = await _ensure_embeddings(ctx, self._all_plan)
                timings["embedding"] = (time.perf_counter() - start) * 1000.0
            results: dict[str, SignalResult] = {}
            for key, signal in self._all_plan:
                if signal.is_async:
                    continue
                if embedding_error is not None and signal.needs_embedding:
                    results[key], timings[key] = embedding_error, 0.0
                    continue
                start = time.perf_counter()
                try:
                    results[key] = signal.evaluate(ctx)
                except Exception as exc:
                    results[key] = _failed(key, ctx, exc)
                timings[key] = (time.perf_counter() - start) * 1000.0
            for key, task in started.items():   # (time from the start, as the calls overlap the rest)
                results[key] = await _finished(key, ctx, task)
                timings[key] = (time.perf_counter() - began) * 1000.0
        finally:
            for task in started.values():
                task.cancel()
        return {key: results[key] for key, _ in self._all_plan}, timings

    def __repr__(self) -> str:
        return f"<SignalEngine {len(self.signals)} declared, {len(self.used)} used>"


def _start_async(ctx: RequestContext, plan: Plan, trace) -> dict[str, asyncio.Task]:
    """Start the plan's asynchronous signals (model calls) now, to run while the rest is computed."""
    return {key: asyncio.ensure_future(signal.evaluate_async(ctx, trace)) for key, signal in plan if signal.is_async}


async def _finished(key: str, ctx: RequestContext, task: asyncio.Task) -> SignalResult:
    try:
        return await task
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return _failed(key, ctx, exc)


async def _ensure_embeddings(ctx: RequestContext, plan: Plan) -> SignalResult | None:
    """Embed every text the plan's learned signals read, in one encoder call; on failure, the
    result each such signal gets instead."""
    texts: list[str] = []
    token_texts: list[str] = []
    try:
        for _, signal in plan:
            if signal.needs_embedding:
                texts.extend(signal.embedding_texts(ctx))
                token_texts.extend(signal.token_texts(ctx))
        await ctx.ensure_embeddings(texts, token_texts)
    except Exception as exc:
        return _failed("embedding", ctx, exc)
    return None


def _failed(key: str, ctx: RequestContext, exc: Exception) -> SignalResult:
    # Only the type of the error: its message may quote the request.
    logger.warning(
        "signal %s failed with %s (request %s); treated as unmatched",
        key, type(exc).__name__, getattr(ctx, "request_id", "?"),
    )
    return SignalResult(False, 0.0, {"error": type(exc).__name__})
