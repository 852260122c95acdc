"""Circuit breakers: one per model, so that a failing model is skipped instead of called.

    closed ──(failure_threshold consecutive failures)──► open ──(cooldown_s)──► half-open
      ▲                                                   ▲                        │ one trial call
      └────────────────── trial succeeded ────────────────┴──── trial failed ──────┘

A call asks for a `Permit` and holds it as a context manager for as long as it runs::

    with breaker.permit() as permit:
        if not permit.granted:
            ...                     # open (or a half-open trial already running): skip the model
        ...                         # call the model
        permit.succeeded()          # or permit.failed()

In the half-open state the permit is the one trial call. Leaving the ``with`` block gives the
trial back whatever happened (an unexpected exception, a cancellation, a caller's mistake): a
call that ends without a verdict teaches the breaker nothing, and the next call may be the
trial. A stream that outlives the call that opened it takes the permit over (`Permit.transfer`)
and gives it back when it is closed.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["CircuitBreaker", "Permit"]


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
        """Whether a call may be sent now (without taking the half-open trial)."""
        state = self.state
        return state == "closed" or (state == "half_open" and not self.trial_in_flight)

    def permit(self) -> "Permit":
        """Ask to call the model now: a context manager; `granted` says whether the call may go."""
        if self.opened_at is None:
            return Permit(self, True, False)
        if not self.trial_in_flight and self.clock() - self.opened_at >= self.cooldown_s:
            self.trial_in_flight = True  # half-open: this call is the one trial
            return Permit(self, True, True)
        return Permit(self, False, False)

    def retry_in_s(self) -> float:
        """Seconds until the circuit half-opens (0 when closed or already half-open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.cooldown_s - (self.clock() - self.opened_at))

    def record_success(self) -> None:
        self.failures = 0
        self.opened_at = None

    def record_failure(self) -> bool:
        """Count a failure; returns True if this opened (or re-opened) the circuit."""
        self.failures += 1
        if self.opened_at is not None or self.failures >= self.failure_threshold:
            self.opened_at = self.clock()
            return True
        return False


class Permit:
    """One call's permission to use a model, held as a context manager until the call is over.

    `succeeded()` / `failed()` give the verdict (at most one counts); leaving the block, or
    `release()`, frees a half-open trial whether or not a verdict was given.
    """

    __slots__ = ("breaker", "granted", "trial", "_open")

    def __init__(self, breaker: CircuitBreaker, granted: bool, trial: bool):
        self.breaker = breaker
        self.granted = granted
        self.trial = trial  # this call is the half-open trial
        self._open = granted  # neither a verdict given nor released yet

    def __enter__(self) -> "Permit":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def succeeded(self) -> None:
        if self._open:
            self.breaker.record_success()
            self.release()

    def failed(self) -> bool:
        """Count a failure against the model; True if that opened (or re-opened) its circuit."""
        if not self._open:
            return False
        opened = self.breaker.record_failure()
        self.release()
        return opened

    def release(self) -> None:
        """Done with the permit (idempotent): frees the half-open trial; no verdict is given."""
        if self._open:
            self._open = False
            if self.trial:
                self.breaker.trial_in_flight = False

    def transfer(self) -> "Permit":
        """A new permit holding what this one holds; this one is left holding nothing (its
        ``with`` block then gives nothing back). For a stream that outlives the call."""
        taken = Permit(self.breaker, self.granted, self.trial)
        taken._open = self._open
        self._open = False
        return taken
