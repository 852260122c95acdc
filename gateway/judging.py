"""Judged feedback and shadow traffic: background calls that teach learning decisions without labels
(policy `feedback.judge`, `feedback.shadow`).

**Judged feedback.** When a learning decision's answer has gone out (it has a pending record waiting
for quality feedback), a sampled share (`judge.sample`) is scored by the judge model in a background
asyncio task: the judge is asked whether the answer is correct and answers a score (0–1) or a word
(CORRECT / INCORRECT), read by `parse_verdict`. The verdict is credited through the same delayed-reward
path as implicit feedback (`Learning.credit_delayed`) with source `judge` and `feedback.weights.judge`;
explicit feedback wins over it (`bandits.feedback`).

**Shadow traffic.** A sampled share (`shadow.sample`) of learning decisions' requests is copied, in the
background, to one candidate the decision did not choose (uniformly among the others that are not
out of service), its answer judged, and that candidate credited (`Learning.learn_shadow`, source
`shadow`): the learner hears about arms it would not have explored. The observation is logged as its
own decision with propensity `sample / (number of other candidates)` so replay/IPS stays correct.

What never happens:

- *on the request path*: everything runs in tasks started after the answer is complete; the caller
  waits for none of it, and nothing here can raise into a request (failures are counted and logged).
- *unbounded*: at most `max_concurrency` calls of each kind run at once (more are skipped, not
  queued); a call is abandoned after `timeout`; spend in the last hour, from the called model's
  declared price and the tokens it used, is kept under `budget_usd_per_hour` (once reached, nothing
  is started until older spend leaves the hour; at most `max_concurrency` calls in flight can cross
  it); a shadow copy is made only of a request body of at most `max_request_bytes`.
- *private text leaving*: a request whose plugins found personal data (the `pii` plugin masked,
  redacted or blocked it) or that a plugin marked private (`PluginState.private`) is never sent to the
  judge or copied to another model. The judge sees the request as the chosen model saw it.

Calls go through the policy's normal upstream layer (`gateway.upstream.Upstreams`: transports,
breakers, retries), so a judge or shadow model is an ordinary model of the policy. Counted in
`sigroute_judge_requests_total{outcome}`, `sigroute_shadow_requests_total{outcome}`,
`sigroute_feedback_spend_usd_total{kind}` and `sigroute_feedback_spend_last_hour_usd{kind}`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections import deque
from typing import Any

import orjson

from sigroute.bandits.feedback import judge_credit
from sigroute.gateway.errors import APIError

__all__ = ["BackgroundFeedback", "HourlyBudget", "parse_verdict", "judge_messages", "private_reason"]

log = logging.getLogger("sigroute.judging")

JUDGE_INSTRUCTIONS = (
    "You grade answers. Read the conversation's last question and the answer given to it, and decide "
    "whether the answer is correct and useful. Reply with one line only: 'SCORE: <a number from 0 to 1>' "
    "where 1 means fully correct and 0 means wrong, then optionally 'VERDICT: CORRECT' or 'VERDICT: INCORRECT'."
)

_SCORE = re.compile(r"\bscore\s*\**\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?|\.\d+)(?:\s*/\s*(1|10|100)\b)?", re.IGNORECASE)
_WORD = re.compile(r"\b(incorrect|not correct|wrong|correct|right)\b", re.IGNORECASE)


def parse_verdict(text: str | None) -> float | None:
    """The judge's verdict as a quality in [0, 1]: a 'SCORE: x' (0–1, or x/10, x/100), else the first
    of CORRECT / INCORRECT (also 'not correct', 'wrong', 'right'); None when neither is there."""
    if not isinstance(text, str):
        return None
    match = _SCORE.search(text)
    if match:
        value = float(match.group(1))
        scale = float(match.group(2)) if match.group(2) else 1.0
        value /= scale
        if 0.0 <= value <= 1.0:
            return value
    word = _WORD.search(text)
    if word:
        return 1.0 if word.group(1).lower() in ("correct", "right") else 0.0
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def judge_messages(body: dict[str, Any], answer: str, max_chars: int) -> list[dict[str, str]]:
    """The judge's prompt: the instructions, then the request's last user turn and the answer."""
    question = ""
    for message in reversed(body.get("messages") or ()):
        if isinstance(message, dict) and message.get("role") == "user":
            question = _text(message.get("content"))
            break
    return [{"role": "system", "content": JUDGE_INSTRUCTIONS},
            {"role": "user", "content": f"Question:\n{question[:max_chars]}\n\nAnswer:\n{answer[:max_chars]}\n\n"
                                        "Grade the answer (SCORE: 0 to 1)."}]


def private_reason(journey) -> str | None:
    """Why this request's text must reach no other model than the chosen one (None: it may)."""
    state = journey.plugins
    if state.private:
        return state.private
    if state.pii_mapping or any(plugin == "pii" for plugin, _, _ in state.actions):
        return "pii"
    return None


class HourlyBudget:
    """USD spent in the last hour against a limit (a sliding window of spends)."""

    def __init__(self, usd_per_hour: float, clock=time.monotonic) -> None:
        self.limit = float(usd_per_hour)
        self.clock = clock
        self._spent: deque[tuple[float, float]] = deque()
        self._total = 0.0

    def spent(self) -> float:
        cutoff = self.clock() - 3600.0
        while self._spent and self._spent[0][0] <= cutoff:
            self._total -= self._spent.popleft()[1]
        if not self._spent:
            self._total = 0.0   # (no float drift once the window is empty)
        return max(0.0, self._total)

    def allows(self) -> bool:
        return self.spent() < self.limit

    def add(self, usd: float) -> None:
        if usd > 0:
            self._spent.append((self.clock(), usd))
            self._total += usd


class MinuteRate:
    """Calls started in the last minute against a limit (None: no limit)."""

    def __init__(self, per_minute: int | None, clock=time.monotonic) -> None:
        self.limit = per_minute
        self.clock = clock
        self._starts: deque[float] = deque()

    def allows(self) -> bool:
        if self.limit is None:
            return True
        cutoff = self.clock() - 60.0
        while self._starts and self._starts[0] <= cutoff:
            self._starts.popleft()
        return len(self._starts) < self.limit

    def started(self) -> None:
        if self.limit is not None:
            self._starts.append(self.clock())


class _Lane:
    """One kind of background call: its settings, its budget, its rate and its in-flight count."""

    def __init__(self, kind: str, spec, counter, metrics, clock=time.monotonic) -> None:
        self.kind = kind
        self.spec = spec
        self.counter = counter
        self.metrics = metrics
        self.budget = HourlyBudget(spec.budget_usd_per_hour, clock)
        self.rate = MinuteRate(spec.max_per_minute, clock)
        self.running = 0

    def count(self, outcome: str) -> None:
        self.counter.labels(outcome).inc()

    def admit(self) -> bool:
        """Whether one more call may start now, taking its place in the minute's rate when it may
        (counted as busy, rate or budget when not)."""
        if self.running >= self.spec.max_concurrency:
            self.count("busy")
            return False
        if not self.rate.allows():
            self.count("rate")
            return False
        if not self.budget.allows():
            self.count("budget")
            return False
        self.rate.started()
        return True

    def spend(self, usd: float | None) -> None:
        if usd:
            self.budget.add(usd)
            self.metrics.background_spend.labels(self.kind).inc(usd)
        self.metrics.background_spend_hour.labels(self.kind).set(self.budget.spent())


class BackgroundFeedback:
    """The policy's judged feedback and shadow traffic (see the module docstring). Built per pipeline."""

    def __init__(self, policy, upstreams, learning, metrics, rng: random.Random | None = None) -> None:
        feedback = policy.feedback
        self.judge_spec, self.shadow_spec = feedback.judge, feedback.shadow
        self.upstreams = upstreams
        self.learning = learning
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.judge = _Lane("judge", self.judge_spec, metrics.judge_requests, metrics) if self.judge_spec else None
        self.shadow = _Lane("shadow", self.shadow_spec, metrics.shadow_requests, metrics) if self.shadow_spec else None
        self.tasks: set[asyncio.Task] = set()

    @property
    def enabled(self) -> bool:
        return self.judge is not None and (self.judge_spec.sample > 0 or (self.shadow is not None
                                                                         and self.shadow_spec.sample > 0))

    def wants(self, journey) -> bool:
        """Whether this answer's text may be needed (a learning decision's answer, judging on)."""
        return self.enabled and journey.feedback_pending

    # an answer went out ---------------------------------------------------------------------------
    def answered(self, journey, text: str | None) -> None:
        """A learning decision's answer is complete: maybe judge it, maybe shadow its request, in the
        background. Returns at once; never raises."""
        try:
            if not self.wants(journey):
                return
            judge_it = self.judge_spec.sample > 0 and self.rng.random() < self.judge_spec.sample
            shadow_it = self.shadow is not None and self.shadow_spec.sample > 0 and \
                self.rng.random() < self.shadow_spec.sample
            if not (judge_it or shadow_it):
                return
            private = private_reason(journey)
            if private is not None:
                if judge_it:
                    self.judge.count("private")
                if shadow_it:
                    self.shadow.count("private")
                return
            body = journey.ctx.body
            if judge_it and isinstance(text, str) and text.strip():
                if self.judge.admit():
                    self._start(self._judge_answer(journey, body, text), self.judge)
            if shadow_it:
                self._maybe_shadow(journey, body)
        except Exception:   # background feedback never fails a request
            log.exception("background feedback for %s could not start", journey.request_id)

    def _start(self, work, lane: _Lane) -> None:
        lane.running += 1

        async def run() -> None:
            try:
                await work
            except Exception:
                log.exception("background %s call failed", lane.kind)
            finally:
                lane.running -= 1

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # judging ---------------------------------------------------------------------------------------
    async def _verdict(self, body: dict[str, Any], answer: str, request_id: str) -> tuple[str, float | None]:
        """Ask the judge about `answer` to `body`'s last question: (outcome, quality). Outcome is ok,
        unparsed, error or timeout; the judge's cost is charged to its budget."""
        spec = self.judge_spec
        payload = {"model": spec.model, "messages": judge_messages(body, answer, spec.max_answer_chars),
                   "temperature": 0, "max_tokens": 32}
        try:
            result = await asyncio.wait_for(
                self.upstreams.call([spec.model], payload, False, None, request_id + ":judge"), spec.timeout)
        except asyncio.TimeoutError:
            return "timeout", None
        except (APIError, Exception) as exc:   # an upstream error, refused circuit, …: counted, never raised
            log.warning("judge call for %s failed: %s", request_id, exc)
            return "error", None
        usage = result.body.get("usage") if isinstance(result.body, dict) else None
        self.judge.spend(self.learning.cost_usd(spec.model, usage))
        try:
            text = result.body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        quality = parse_verdict(text)
        return ("ok" if quality is not None else "unparsed"), quality

    async def _judge_answer(self, journey, body: dict[str, Any], answer: str) -> None:
        outcome, quality = await self._verdict(body, answer, journey.request_id)
        if quality is None:
            self.judge.count(outcome)
            return
        credit = judge_credit(quality, self.learning.weights())
        try:
            status = await self.learning.credit_delayed(journey.request_id, journey.principal.tenant, credit,
                                                        {"judge": self.judge_spec.model})
        except Exception as exc:
            log.warning("judge verdict on %s not credited: %s", journey.request_id, exc)
            status = "error"
        self.judge.count(status)

    # shadow traffic --------------------------------------------------------------------------------
    def _maybe_shadow(self, journey, body: dict[str, Any]) -> None:
        route = journey.route
        chosen = journey.result.model if journey.result is not None else route.choice.model
        others = [m for m in route.candidates if m not in (chosen, route.choice.model)]
        others = self.upstreams.available(others)
        if not others:
            self.shadow.count("no_candidate")
            return
        copy = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        if len(orjson.dumps(copy)) > self.shadow_spec.max_request_bytes:
            self.shadow.count("too_large")
            return
        if not self.shadow.admit():
            return
        model = self.rng.choice(others)
        propensity = self.shadow_spec.sample / len(others)
        self._start(self._shadow(journey, copy, model, propensity), self.shadow)

    async def _shadow(self, journey, body: dict[str, Any], model: str, propensity: float) -> None:
        shadow_id = journey.request_id + ":shadow"
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(
                self.upstreams.call([model], dict(body, model=model), False, None, shadow_id), self.shadow_spec.timeout)
        except asyncio.TimeoutError:
            self.shadow.count("timeout")
            return
        except Exception as exc:
            log.warning("shadow call of %s to %s failed: %s", journey.request_id, model, exc)
            self.shadow.count("error")
            return
        latency_ms = (time.perf_counter() - started) * 1000
        usage = result.body.get("usage") if isinstance(result.body, dict) else None
        self.shadow.spend(self.learning.cost_usd(model, usage))
        try:
            answer = result.body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            answer = None
        if not isinstance(answer, str) or not answer.strip() or not self.judge.admit():
            self.shadow.count("judge_failed")
            return
        self.judge.running += 1   # the shadow answer's judging counts against the judge's bounds
        try:
            outcome, quality = await self._verdict(body, answer, shadow_id)
        finally:
            self.judge.running -= 1
        if quality is None:
            self.judge.count(outcome)
            self.shadow.count("judge_failed")
            return
        self.judge.count("shadow")
        credit = judge_credit(quality, self.learning.weights(), shadow=True)
        status = self.learning.learn_shadow(journey, shadow_id, model, propensity, latency_ms=latency_ms,
                                            usage=usage, credit=credit)
        self.shadow.count(status)

    async def aclose(self) -> None:
        """Cancel what is still running (the pipeline is going away)."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
