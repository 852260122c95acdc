"""Step 11 of the journey, and the feedback that arrives after it: how selectors learn.

`Learning` is built once per loaded policy around its selectors (one per decision) and the
app-wide stores (learned state and pending feedback outlive reloads):

- `learn(journey, ok, latency_ms, usage)`   the immediate outcome of an answer (latency, time to
  first token, cost from the usage and the model's price, success) goes to the decision's
  selector; failed attempts before a fallback teach it too; learning decisions' choices are
  written to the decision log for offline replay.
- `keep_for_feedback(journey)`   the selector's pending record (None for selectors that learn
  nothing from feedback) waits in the pending store for quality feedback.
- `keep_cache_hit(journey, ...)` a cached answer can be reported wrong: its record says which
  entry to remove.
- `feedback(raw, principal)`     `POST /v1/feedback`: claim the pending record once (per tenant),
  credit the quality to the selector that made the choice, or count a false cache hit. Explicit
  feedback wins over implicit: an implicit credit applied before is replaced (the learner is
  credited the difference), and the answer says so (`replaced`).
- `credit_implicit(...)`         a follow-up turn's credit (`gateway.implicit`), source `implicit`,
  weighted by `feedback.weights`; once per answer, never over explicit feedback.
- `credit_delayed(...)`          the same path for a judge's verdict (`gateway.judging`, source `judge`):
  implicit and judge credits share the answer's one non-explicit slot; a judge's verdict replaces an
  implicit credit (the learner is credited the difference), an implicit one after a verdict changes
  nothing; explicit feedback replaces either.
- `learn_shadow(...)`            a judged shadow answer teaches the unchosen arm (source `shadow`),
  logged as its own decision with the shadow's propensity.
- `sync()` / `restore()`         exchange learned sums with the state store (periodically) and load
  them at start-up; a store that lost state is restored from what this replica holds
  (`bandits.replica`), counted in `sigroute_bandit_store_recoveries_total`.

Learning never fails a request: a selector or store error is logged and counted.

Feedback and store outages: a pending record the store cannot take (Redis down) is kept by the
Redis pending store and written when Redis answers again, at the next `sync()` (or at once when
feedback for it reaches this replica); records whose feedback window ends first, or that do not
fit, are counted in `sigroute_feedback_lost_total{reason="record_expired"|"record_overflow"}`.
Feedback that arrives while the store is unreachable is refused with 503
`feedback_store_unavailable` (retry later) and counted as `reason="store_unavailable"`. Nothing is
dropped without a count.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
import time
from typing import Any

import orjson

from sigroute.bandits.base import Reward, Selector
from sigroute.bandits.contextual import quality_from_feedback
from sigroute.bandits.feedback import PRECEDENCE, Credit, FeedbackWeights, explicit_credit, learned_quality
from sigroute.bandits.store import StoreUnavailable
from sigroute.gateway.errors import APIError, InvalidRequest, NotFound, Unavailable
from sigroute.gateway.journey import Journey
from sigroute.gateway.metrics import Metrics
from sigroute.policies.schema import Policy

log = logging.getLogger("sigroute.learning")

CACHE_FEEDBACK_TTL_S = 3600.0  # how long a cached answer can be reported wrong
FEEDBACK_FIELDS = ("request_id", "score", "thumbs", "label", "comment")


def implicit_learned(record: dict, implicit: dict) -> float:
    """The quality an implicit credit (as the pending store keeps it) taught for `record`."""
    credit = Credit(implicit.get("source") or "implicit", float(implicit["quality"]), float(implicit["weight"]),
                    implicit.get("event"))
    return learned_quality(float(record.get("default_quality", 0.0)), credit)


@dataclass
class Learning:
    policy: Policy
    selectors: dict[str, Selector]   # one per decision (built by gateway.routing)
    metrics: Metrics
    state_store: Any                 # learned sums (bandits.store), app-wide
    pending_store: Any               # answers waiting for feedback (bandits.store), app-wide
    semantic_cache: Any              # cached answers (cache.semantic), app-wide: feedback may remove one
    decision_log: Any = None         # bandits.replay.DecisionLog, for `sigroute replay`

    def weights(self) -> FeedbackWeights:
        """How much each source of feedback is believed (the policy's `feedback.weights`)."""
        return FeedbackWeights(**self.policy.feedback.weights.model_dump())

    def cost_usd(self, model: str, usage: Any) -> float | None:
        """What an answer cost by the model's price (USD per 1M tokens) and its usage; None if unknown."""
        spec = self.policy.models.get(model)
        if spec is None or not isinstance(usage, dict):
            return None
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)):
            return None
        return (prompt_tokens * spec.price.input + completion_tokens * spec.price.output) / 1e6

    def energy_joules(self, model: str, usage: Any) -> float | None:
        """An answer's declared energy (the model's `energy:` and its usage); None if unknown."""
        spec = self.policy.models.get(model)
        if spec is None or spec.energy is None or not isinstance(usage, dict):
            return None
        prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if not (isinstance(prompt_tokens, int) and isinstance(completion_tokens, int)):
            return None
        return spec.energy.joules(prompt_tokens, completion_tokens)

    # 11 ------------------------------------------------------------------------------------------
    def learn(self, journey: Journey, *, ok: bool, latency_ms: float, usage: Any) -> None:
        route, result = journey.route, journey.result
        if route.decision is None:
            return
        prompt_tokens = completion_tokens = None
        cost = self.cost_usd(result.model, usage)
        if isinstance(usage, dict):
            prompt_tokens = usage.get("prompt_tokens")
            completion_tokens = usage.get("completion_tokens")
        choice = route.choice
        if choice.model != result.model:  # a fallback answered: credit the model that did
            choice = dataclasses.replace(choice, model=result.model)
        reward = Reward(model=result.model, ok=ok, latency_ms=latency_ms, ttft_ms=result.ttft_ms,
                        cost_usd=cost, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                        at=time.time())
        selector = self.selectors[route.decision_name]
        try:
            selector.update(choice, reward)
            entry = selector.log_entry(choice, reward) if self.decision_log is not None else None
            if entry is not None:
                self.decision_log.decision(
                    request_id=journey.request_id, tenant=choice.tenant or "default", decision=route.decision_name,
                    candidates=route.candidates, model=route.choice.model, answered_by=result.model,
                    propensity=route.choice.propensity, **entry)
        except Exception:  # learning must never fail a request
            log.exception("selector update failed for decision %s", route.decision_name)
        for attempt in result.attempts:  # failed attempts teach the selector too; a 429 is back pressure
            if attempt.error is not None and not attempt.rate_limited:
                failed = dataclasses.replace(route.choice, model=attempt.model)
                try:
                    selector.update(failed, Reward(model=attempt.model, ok=False, at=time.time()))
                except Exception:
                    log.exception("selector update failed for decision %s", route.decision_name)

    async def keep_for_feedback(self, journey: Journey) -> None:
        """The answer's pending record waits in the pending store for quality feedback."""
        route = journey.route
        if route.decision is None:
            return
        selector = self.selectors[route.decision_name]
        record = selector.pending_record(route.choice, journey.result.model)
        if record is not None:
            await self._put(journey.request_id, record, selector.feedback_ttl_s)
            journey.feedback_pending = True   # (its answer may be followed up: gateway.implicit)

    async def keep_cache_hit(self, journey: Journey, doc_id: str, model: str) -> None:
        """A cached answer can be reported wrong (POST /v1/feedback): the entry is then removed."""
        plan = journey.plan
        record = {"tenant": journey.principal.tenant, "kind": "cache_hit", "decision": plan.decision,
                  "model": model, "category": plan.category, "doc_id": doc_id}
        await self._put(journey.request_id, record, CACHE_FEEDBACK_TTL_S)

    async def _put(self, request_id: str, record: dict[str, Any], ttl_s: float) -> None:
        try:
            await self.pending_store.put(request_id, record, ttl_s)
        except StoreUnavailable as exc:  # the store keeps it and writes it when Redis is back (or counts it lost)
            self.metrics.bandit_store_errors.labels("pending_put").inc()
            log.warning("request %s waits for the feedback store to come back: %s", request_id, exc)
        except Exception as exc:  # the answer still goes out; this request just cannot get feedback
            self.metrics.bandit_store_errors.labels("pending_put").inc()
            self.metrics.feedback_lost.labels("record_error").inc()
            log.warning("could not keep request %s for feedback: %s", request_id, exc)

    # feedback ------------------------------------------------------------------------------------
    async def feedback(self, raw: bytes, principal, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST /v1/feedback {request_id, score | thumbs | label}: credit the answer's quality.

        Who may rate an answer: any key of the tenant that made the request (an application's
        front end often collects the thumbs its back end asked for); another tenant's key gets
        404, as if the id were unknown. An answer is rated once: the same rating again is a
        harmless duplicate, a different one 409. With an `Idempotency-Key` header, a retry with
        the same key and body is a duplicate and anything else under another key (or the same
        key with another rating) is 409. Who sent the rating is recorded (decision log and the
        answer: `recorded_by`)."""
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(f"the feedback body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(body, dict):
            raise InvalidRequest('send a JSON object: {"request_id": "...", "score": 0..1 | "thumbs": "up"|"down" '
                                 '| "label": "correct"|"incorrect"}', code="invalid_feedback")
        unknown = sorted(set(body) - set(FEEDBACK_FIELDS))
        if unknown:
            raise InvalidRequest(f"unknown feedback field(s): {', '.join(unknown)}; use request_id, score, thumbs, "
                                 "label", param=unknown[0], code="invalid_feedback")
        request_id = body.get("request_id")
        if not isinstance(request_id, str) or not request_id:
            raise InvalidRequest("request_id is required: the x-sigroute-request-id header of the answer",
                                 param="request_id", code="invalid_feedback")
        if request_id.startswith("resp_"):   # a Responses API answer's id names its request (gateway.responses_wire)
            request_id = "req_" + request_id[len("resp_"):]
        elif request_id.startswith("msg_"):   # a Messages answer's id names its request: msg_X is req_X
            request_id = "req_" + request_id[4:]
        try:
            quality = quality_from_feedback(body.get("score"), body.get("thumbs"), body.get("label"))
        except ValueError as exc:
            param = next((k for k in ("score", "thumbs", "label") if k in body), "score")
            raise InvalidRequest(str(exc), param=param, code="invalid_feedback") from None
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 255):
            raise InvalidRequest("the Idempotency-Key header must be 1 to 255 characters", param="Idempotency-Key",
                                 code="invalid_feedback")
        fingerprint = f"{quality:.6f}" if idempotency_key is None else f"{quality:.6f}|{idempotency_key}"
        try:
            status, record = await self.pending_store.claim(request_id, principal.tenant, fingerprint)
        except Exception as exc:
            self.metrics.bandit_store_errors.labels("pending_claim").inc()
            self.metrics.feedback_lost.labels("store_unavailable").inc()
            raise Unavailable(f"the feedback store is unreachable, feedback was NOT recorded; retry later ({exc})",
                              code="feedback_store_unavailable") from None
        self.metrics.feedback.labels(status).inc()
        if status == "unknown":
            raise NotFound(f"no answer '{request_id}' is waiting for feedback: the id is unknown, its feedback "
                           "window has passed, or it was not routed by a learning decision",
                           param="request_id", code="unknown_request_id")
        if status == "conflict":
            raise APIError(f"feedback for '{request_id}' was already recorded with a different value or under "
                           "another Idempotency-Key; feedback is accepted once per answer", status=409,
                           type="invalid_request_error", param="request_id", code="feedback_conflict")
        out = {"object": "feedback", "request_id": request_id, "status": "recorded" if status == "applied" else "duplicate",
               "quality": quality, "decision": record.get("decision"), "model": record.get("model"),
               "recorded_by": principal.key_id}
        if status == "applied":
            log.info("feedback on %s (quality %.3f) recorded by %s", request_id, quality, principal.key_id)
        if record.get("kind") == "cache_hit":
            out["cache"] = await self._cache_feedback(record, quality, first=status == "applied")
        elif status == "applied":
            selector = self.selectors.get(record.get("decision"))
            # explicit wins over implicit (bandits.feedback): an implicit credit applied before is replaced,
            # so the learner ends where the explicit credit alone would have put it (sums add)
            implicit = record.get("implicit")
            default = float(record.get("default_quality", 0.0))
            learned = learned_quality(default, explicit_credit(quality, self.weights()))   # feedback.weights.explicit
            already = implicit_learned(record, implicit) - default if implicit else 0.0
            change = selector.credit(record, learned - already) if selector is not None else None
            out["learned"] = change is not None
            if implicit:
                out["replaced"] = {"source": implicit.get("source") or "implicit", "event": implicit.get("event")}
            if change is None:  # the decision changed since the answer was routed: the old state is not this one
                out["reason"] = "the decision's algorithm or features changed since this request was routed"
            else:
                self.metrics.feedback_credits.labels("explicit", "", "replaced_implicit" if implicit else "applied").inc()
                if self.decision_log is not None:
                    self.decision_log.feedback(request_id=request_id, quality=quality, credit=change,
                                               by=principal.key_id, source="explicit")
        return out

    async def credit_implicit(self, request_id: str, tenant: str, credit: Credit, details: dict) -> str:
        """An implicit credit (`gateway.implicit`) for an earlier answer of `tenant`: applied once, never
        over explicit feedback. Returns credited | duplicate | explicit_first | record_gone | not_learned."""
        return await self.credit_delayed(request_id, tenant, credit, details)

    async def credit_delayed(self, request_id: str, tenant: str, credit: Credit, details: dict | None = None) -> str:
        """A non-explicit credit (implicit, or a judge's verdict: `gateway.judging`) for an earlier
        answer of `tenant`, through its pending record. One such credit per answer (the first to
        arrive), never over explicit feedback, and replaced by explicit feedback arriving later.
        Returns credited | replaced_implicit | duplicate | explicit_first | record_gone | not_learned."""
        payload = orjson.dumps({"source": credit.source, "event": credit.event, "quality": credit.quality,
                                "weight": credit.weight}).decode()
        try:
            status, record = await self.pending_store.claim_implicit(request_id, tenant, payload,
                                                                     PRECEDENCE[credit.source])
        except Exception as exc:
            self.metrics.bandit_store_errors.labels("pending_claim").inc()
            raise RuntimeError(f"the feedback store is unreachable ({exc})") from None
        if status == "unknown" or record is None or record.get("kind") == "cache_hit":
            return "record_gone"
        if status not in ("applied", "replaced"):
            return status
        selector = self.selectors.get(record.get("decision"))
        default = float(record.get("default_quality", 0.0))
        learned = learned_quality(default, credit)
        # a judge's verdict after an implicit credit replaces it: the learner is credited the difference
        before = record.get("implicit") if status == "replaced" else None
        already = implicit_learned(record, before) - default if before else 0.0
        change = selector.credit(record, learned - already) if selector is not None else None
        if change is None:
            return "not_learned"
        self.metrics.feedback_credits.labels(credit.source, credit.event or "",
                                             "replaced_implicit" if before else "applied").inc()
        log.info("%s feedback on %s: %s (learned quality %.3f)", credit.source, request_id,
                 credit.event or f"quality {credit.quality:.3f}", learned)
        if self.decision_log is not None:
            self.decision_log.feedback(request_id=request_id, quality=learned, credit=change, by=None,
                                       source=credit.source, event=credit.event, details=details)
        return "replaced_implicit" if before else "credited"

    def learn_shadow(self, journey: Journey, shadow_id: str, model: str, propensity: float, *, latency_ms: float,
                     usage: Any, credit: Credit) -> str:
        """A judged shadow answer (`gateway.judging`): `model`, a candidate the decision did not choose
        for `journey`, answered a copy of its request. That arm learns what it would have learned had
        it been chosen: the immediate outcome (latency, cost) and the judge's quality, weighted by
        `credit.weight`. Both go to the decision log under `shadow_id` with the shadow's propensity
        (the probability this arm was copied to), so replay and IPS see it as its own observation.
        Returns credited | not_learned."""
        route = journey.route
        selector = self.selectors.get(route.decision_name)
        if selector is None or route.choice is None:
            return "not_learned"
        prompt_tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        completion_tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        choice = dataclasses.replace(route.choice, model=model, propensity=propensity)
        reward = Reward(model=model, ok=True, latency_ms=latency_ms, cost_usd=self.cost_usd(model, usage),
                        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, at=time.time())
        record = selector.pending_record(choice, model)
        if record is None:   # the decision learns nothing from quality
            return "not_learned"
        selector.update(choice, reward)
        learned = learned_quality(float(record.get("default_quality", 0.0)), credit)
        change = selector.credit(record, learned)
        if change is None:
            return "not_learned"
        self.metrics.feedback_credits.labels("shadow", "", "applied").inc()
        if self.decision_log is not None:
            entry = selector.log_entry(choice, reward)
            if entry is not None:
                self.decision_log.decision(
                    request_id=shadow_id, tenant=choice.tenant or "default", decision=route.decision_name,
                    candidates=route.candidates, model=model, answered_by=model, propensity=propensity,
                    source="shadow", shadow_of=journey.request_id, **entry)
            self.decision_log.feedback(request_id=shadow_id, quality=learned, credit=change, by=None,
                                       source="shadow")
        return "credited"

    async def _cache_feedback(self, record: dict, quality: float, first: bool) -> dict[str, Any]:
        """Feedback on a cached answer: a bad score (< 0.5) marks a false hit and removes the entry."""
        false_hit = quality < 0.5
        out: dict[str, Any] = {"category": record.get("category"), "false_hit": false_hit}
        if false_hit and first:
            self.metrics.cache_false_hits.labels(record.get("category") or "").inc()
            try:
                out["removed"] = await self.semantic_cache.delete(record["doc_id"])
            except Exception as exc:  # the false hit is counted; the entry expires with its TTL
                log.warning("could not remove a cache entry reported wrong: %s", exc)
                out["removed"] = False
        return out

    # shared state --------------------------------------------------------------------------------
    def sync_interval(self) -> float | None:
        """How often learned state should meet the store (None: no selector shares any)."""
        intervals = [s.sync_interval_s for s in self.selectors.values() if s.sync_interval_s is not None]
        return min(intervals) if intervals else None

    async def sync(self) -> None:
        """Exchange learned statistics with the state store, and write pending records kept while the
        feedback store was unreachable (called periodically by the app)."""
        ok = True
        for name, selector in self.selectors.items():
            try:
                await selector.sync(self.state_store)
            except Exception as exc:
                ok = False
                self.metrics.bandit_store_errors.labels("sync").inc()
                log.warning("learning state of decision %s not synced (%s); serving from the last known state",
                            name, exc)
            for outcome, n in selector.take_store_recoveries().items():
                self.metrics.bandit_store_recoveries.labels(outcome).inc(n)
        self.metrics.bandit_store_up.set(1 if ok else 0)
        try:
            written = await self.pending_store.flush_unsent()
            if written:
                log.info("%d pending record(s) kept during a feedback store outage written", written)
        except Exception as exc:
            self.metrics.bandit_store_errors.labels("pending_put").inc()
            log.debug("pending records still waiting for the feedback store: %s", exc)
        for reason, n in self.pending_store.take_lost().items():
            self.metrics.feedback_lost.labels(f"record_{reason}").inc(n)
            log.warning("%d pending record(s) given up (%s): feedback for those answers will get 404", n, reason)

    async def restore(self) -> None:
        """Load every tenant's stored state for this policy's selectors (at start-up, after a reload)."""
        for name, selector in self.selectors.items():
            try:
                await selector.restore(self.state_store)
            except Exception as exc:
                self.metrics.bandit_store_errors.labels("load").inc()
                self.metrics.bandit_store_up.set(0)
                log.warning("learning state of decision %s not loaded (%s); starting from the last known state",
                            name, exc)
