"""Circuit breakers: one per model, so that a failing model is skipped instead of called.

    closed ──(failure_threshold consecutive failures)──► open ──(cooldown_s)──► half-open
      ▲                                                   ▲                        │ one trial call
      └────────────────── trial succeeded ────────────────┴──── trial failed ──────┘

A call asks for a `Permit` and holds it as a context manager for as long as it runs::

    with breaker.permit() as permit:
        if not permit.granted:
            ...                     # open, held back, or a half-open trial already running: skip the model
        ...                         # call the model
        permit.succeeded()          # or permit.failed(), or permit.held_back(retry_after_s)

In the half-open state the permit is the one trial call. Leaving the ``with`` block gives the
trial back whatever happened (an unexpected exception, a cancellation, a caller's mistake): a
call that ends without a verdict teaches the breaker nothing, and the next call may be the
trial. A stream that outlives the call that opened it takes the permit over (`Permit.transfer`)
and gives it back when it is closed.

**Episodes.** The circuit opens once per episode: an episode begins when consecutive failures
reach the threshold in the closed state and ends when a half-open trial succeeds. Only the calls
let through in the circuit's current state give it a verdict: every opening and every closing
starts a new *epoch*, and a permit remembers the epoch it was granted in. So the calls that were
already in flight when the circuit opened (a slow upstream: they all time out together) neither
restart the cooldown nor count as openings, and calls that began before a successful trial do
not re-open the circuit it just closed. A failed trial re-opens the circuit and restarts the
cooldown: that continues the episode (`reopenings` counts it), it does not start a new one. So
`episodes` (and the ``breaker_opened`` observer call, the ``sigroute_breaker_opened_total``
metric) counts episodes: one per outage, however many calls fail in it; `closings` (the
``breaker_closed`` observer call, ``sigroute_breaker_closed_total``) counts their ends, the
successful trials. The end of a cooldown is not a closing: the circuit is half-open until its
trial succeeds.

**Back pressure.** An upstream that answers 429 is alive and asks to be called less: that is not
a fault. `Permit.held_back` gives no verdict (the failure count is neither raised nor reset) and
holds the model back for the delay the upstream asked for (``Retry-After``), or
`RATE_LIMIT_DEFAULT_S` when it named none, at most `RATE_LIMIT_MAX_S`; meanwhile the model is not
`available` and `permit()` refuses (the resilience loop falls back to the next candidate), and
then it is back, whatever the circuit's state. `state` reports ``rate_limited`` while a closed or
half-open circuit is held back.
"""

from __future__ import annotations

import time
from typing import Callable

__all__ = ["CircuitBreaker", "Permit", "RATE_LIMIT_DEFAULT_S", "RATE_LIMIT_MAX_S"]

# How long a model is held back after a 429 that carries no Retry-After (seconds). Not a policy
# option (yet): policies/schema's `Breaker` and `Upstream` have no field for it.
RATE_LIMIT_DEFAULT_S = 1.0
# The longest hold a Retry-After can ask for (seconds): a model asking for more is tried again
# after this long (and held back again by its next 429).
RATE_LIMIT_MAX_S = 300.0


class CircuitBreaker:
    """Closed → (failure_threshold consecutive failures) → open for cooldown_s → half-open trial;
    plus a hold while the upstream asked for back pressure (429)."""

    def __init__(self, failure_threshold: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self.clock = clock
        self.failures = 0  # consecutive failures while closed
        self.opened_at: float | None = None  # when the circuit last opened (or re-opened)
        self.trial_in_flight = False
        self.epoch = 0  # +1 at every opening, re-opening and closing: older permits give no verdict
        self.episodes = 0  # openings from the closed state
        self.reopenings = 0  # failed half-open trials (each continues its episode)
        self.closings = 0  # successful half-open trials (each ends its episode)
        self.held_until: float | None = None  # back pressure: no call before this time

    def _held(self, now: float) -> bool:
        return self.held_until is not None and now < self.held_until

    @property
    def state(self) -> str:
        """``closed``, ``open``, ``half_open``, or ``rate_limited`` (held back, circuit not open)."""
        now = self.clock()
        if self.opened_at is not None and now - self.opened_at < self.cooldown_s:
            return "open"
        if self._held(now):
            return "rate_limited"
        return "closed" if self.opened_at is None else "half_open"

    def available(self) -> bool:
        """Whether a call may be sent now (without taking the half-open trial)."""
        now = self.clock()
        if self._held(now):
            return False
        return self.opened_at is None or (now - self.opened_at >= self.cooldown_s and not self.trial_in_flight)

    def permit(self) -> "Permit":
        """Ask to call the model now: a context manager; `granted` says whether the call may go."""
        now = self.clock()
        if self._held(now):
            return Permit(self, False, False)
        if self.opened_at is None:
            return Permit(self, True, False)
        if not self.trial_in_flight and now - self.opened_at >= self.cooldown_s:
            self.trial_in_flight = True  # half-open: this call is the one trial
            return Permit(self, True, True)
        return Permit(self, False, False)

    def retry_in_s(self) -> float:
        """Seconds until a call may be let through again (0 when closed or already half-open)."""
        now = self.clock()
        circuit = 0.0 if self.opened_at is None else self.cooldown_s - (now - self.opened_at)
        hold = 0.0 if self.held_until is None else self.held_until - now
        return max(0.0, circuit, hold)

    def held_for_s(self) -> float:
        """Seconds the back-pressure hold still lasts (0 when the model is not held back)."""
        return 0.0 if self.held_until is None else max(0.0, self.held_until - self.clock())

    def hold(self, seconds: float | None) -> float:
        """Hold the model back for `seconds` (None: `RATE_LIMIT_DEFAULT_S`; at most
        `RATE_LIMIT_MAX_S`); an earlier, longer hold stays. Returns the hold applied."""
        seconds = RATE_LIMIT_DEFAULT_S if seconds is None else min(max(0.0, seconds), RATE_LIMIT_MAX_S)
        until = self.clock() + seconds
        if self.held_until is None or until > self.held_until:
            self.held_until = until
        return seconds

    def record_success(self, epoch: int) -> bool:
        """A call let through in `epoch` succeeded: a trial closes the circuit (returns True: the
        episode ended), a closed circuit forgets its failures; a call from an earlier epoch says
        nothing about now."""
        if epoch != self.epoch:
            return False
        self.failures = 0
        if self.opened_at is None:
            return False
        self.opened_at = None
        self.epoch += 1
        self.closings += 1
        return True

    def record_failure(self, epoch: int) -> bool:
        """A call let through in `epoch` failed. Returns True if that began an episode (the circuit
        opened from closed); a failed trial re-opens it (same episode, False); a call from an
        earlier epoch (in flight when the circuit opened or closed) changes nothing."""
        if epoch != self.epoch:
            return False
        now = self.clock()
        if self.opened_at is not None:  # the half-open trial (the only permit of an open circuit's epoch)
            self.opened_at = now  # the cooldown starts again
            self.reopenings += 1
            self.epoch += 1
            return False
        self.failures += 1
        if self.failures < self.failure_threshold:
            return False  # still closed: the calls in flight keep counting
        self.opened_at = now
        self.episodes += 1
        self.epoch += 1
        return True


class Permit:
    """One call's permission to use a model, held as a context manager until the call is over.

    `succeeded()` / `failed()` / `held_back()` give the verdict (at most one counts); leaving the
    block, or `release()`, frees a half-open trial whether or not a verdict was given.
    """

    __slots__ = ("breaker", "granted", "trial", "epoch", "_open")

    def __init__(self, breaker: CircuitBreaker, granted: bool, trial: bool):
        self.breaker = breaker
        self.granted = granted
        self.trial = trial  # this call is the half-open trial
        self.epoch = breaker.epoch  # the circuit's state this call was let through in
        self._open = granted  # neither a verdict given nor released yet

    def __enter__(self) -> "Permit":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def succeeded(self) -> bool:
        """The call succeeded; True if that closed the circuit (a half-open trial: the episode ended)."""
        if not self._open:
            return False
        closed = self.breaker.record_success(self.epoch)
        self.release()
        return closed

    def failed(self) -> bool:
        """Count a failure against the model; True if that opened its circuit (a new episode)."""
        if not self._open:
            return False
        opened = self.breaker.record_failure(self.epoch)
        self.release()
        return opened

    def held_back(self, retry_after_s: float | None) -> float:
        """The upstream asked for back pressure (429): hold the model back for `retry_after_s`
        (None: the default), no verdict. Returns the hold applied (0 if the permit was used up)."""
        if not self._open:
            return 0.0
        held = self.breaker.hold(retry_after_s)
        self.release()
        return held

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
        taken.epoch = self.epoch
        taken._open = self._open
        self._open = False
        return taken
