"""Per-model load through this gateway: calls in flight and a moving average of their latency.

It is what the load-aware cache calls saturation (policies.schema `LoadAwareCache`): every
in-service candidate has at least ``in_flight_above`` calls running, or a recent latency at or
above ``latency_above_ms``. Every attempt at a model counts while it runs, held by a `CountedCall`
context manager; a stream counts until it is closed (it takes the count over)::

    with load.count("llama-8b") as counted:
        ...                         # call the model
        counted.succeeded()          # its duration feeds the moving average
"""

from __future__ import annotations

import time
from typing import Iterable

__all__ = ["ModelLoad", "CountedCall"]


class ModelLoad:
    """Upstream calls in progress through this gateway and a moving average of their latency, per model."""

    SMOOTHING = 0.2   # weight of the newest latency in the moving average

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}
        self.latency_ms: dict[str, float] = {}

    def count(self, model: str) -> "CountedCall":
        """Count a call to `model` until the returned context manager exits (or the counted call ends)."""
        self.in_flight[model] = self.in_flight.get(model, 0) + 1
        return CountedCall(self, model)

    def _end(self, model: str, latency_ms: float | None) -> None:
        self.in_flight[model] = max(0, self.in_flight.get(model, 0) - 1)
        if latency_ms is not None:
            old = self.latency_ms.get(model)
            self.latency_ms[model] = latency_ms if old is None else old + self.SMOOTHING * (latency_ms - old)

    def busy(self, model: str, bound) -> bool:
        """At or above the in-flight bound or the latency bound (a `LoadAwareCache`)."""
        return ((bound.in_flight_above is not None and self.in_flight.get(model, 0) >= bound.in_flight_above)
                or (bound.latency_above_ms is not None
                    and self.latency_ms.get(model, 0.0) >= bound.latency_above_ms))

    def saturated(self, models: Iterable[str], bound) -> bool:
        """Every one of `models` is busy (False for none)."""
        models = list(models)
        return bool(models) and all(self.busy(m, bound) for m in models)


class CountedCall:
    """One call in flight to one model; ends once (context exit, `end()`), with its duration if
    `succeeded()` was called (a failed call does not feed the latency average)."""

    __slots__ = ("load", "model", "started", "ok", "_open")

    def __init__(self, load: ModelLoad, model: str):
        self.load = load
        self.model = model
        self.started = time.perf_counter()
        self.ok = False
        self._open = True

    def __enter__(self) -> "CountedCall":
        return self

    def __exit__(self, *exc_info) -> None:
        self.end()

    def succeeded(self) -> None:
        self.ok = True

    def end(self) -> None:
        """Stop counting the call (idempotent)."""
        if self._open:
            self._open = False
            self.load._end(self.model, (time.perf_counter() - self.started) * 1000 if self.ok else None)

    def transfer(self) -> "CountedCall":
        """A new counted call carrying this one on (same start); this one is left ending nothing."""
        taken = CountedCall.__new__(CountedCall)
        taken.load, taken.model, taken.started, taken.ok, taken._open = (self.load, self.model, self.started,
                                                                         self.ok, self._open)
        self._open = False
        return taken
