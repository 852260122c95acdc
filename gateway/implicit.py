"""Implicit feedback: a follow-up turn credits the answer it follows (policy `feedback.implicit`).

Two halves, both per tenant and user (the API key's user, else the request body's `user` field,
as the cache's isolation uses; requests with neither share their tenant's anonymous bucket):

1. **Served answers.** When a learning decision's answer goes out (it has a pending record waiting
   for quality feedback), `remember` keeps sha256(answer text) -> {request id, decision, time} for
   `feedback.implicit.window` seconds, at most `max_answers_per_user` per user (the oldest go
   first). The answer text itself is never kept, only its hash.
2. **Follow-ups.** When a later request's last message is a user turn right after an assistant
   answer (`signals.followup.follow_up`), `follow_up` looks that answer's hash up. If this user was
   served it, the new turn is classified (`signals.followup.classify`): a dissatisfaction cue, a
   re-ask (cosine of the new and previous user turn by the shared embedding >= `reask_threshold`;
   without an encoder in the policy, the same normalized text), or moving on. The earlier request's
   decision is credited through the same pending record and selector `credit` as
   `POST /v1/feedback`, with source `implicit` and the policy's `feedback.weights`
   (`bandits.feedback`): the learned quality becomes default + weight * (quality - default).
   An answer is credited implicitly once; explicit feedback already recorded wins (nothing is
   applied), and explicit feedback arriving later replaces the implicit credit
   (`gateway.learning.Learning.feedback`).

Stores (`ServedAnswers`): `MemoryServedAnswers` (bounded per user and in users, least recently
used first) and `RedisServedAnswers` with `--redis`: per user one hash (answer hash -> entry JSON)
and one sorted set (answer hash by time) under ``sigroute:served:{<user key>}:h`` / ``:z``, where
the user key is sha256(tenant, user) — no user name in Redis — and the braces are a Redis Cluster
hash tag, so the one Lua script that adds, trims to the window and the bound, and sets both keys'
TTL to the window touches one slot. A store failure never fails a request: it is logged and
counted in `sigroute_implicit_feedback_total{outcome="store_error"}`.

What happened is counted in `sigroute_implicit_feedback_total{outcome}` (credited, duplicate,
explicit_first, not_served, record_gone, store_error) and, for applied credits,
`sigroute_feedback_credits_total{source="implicit", event}`; the follow-up's answer carries
`x-sigroute-implicit-feedback: <event>; request=<earlier request id>`, and a credited follow-up
is written to the decision log (`source: implicit`, `event`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from sigroute._redis import LazyRedisStore
from sigroute.bandits.feedback import implicit_credit
from sigroute.signals.followup import FollowUp, classify, cue_pattern, follow_up

__all__ = ["ServedAnswers", "MemoryServedAnswers", "RedisServedAnswers", "open_served_answers",
           "ImplicitFeedback", "answer_hash", "user_key", "REDIS_NAMESPACE"]

log = logging.getLogger("sigroute.implicit")

REDIS_NAMESPACE = "sigroute:served:"


def answer_hash(text: str) -> str:
    """The key of an answer: sha256 of its text with surrounding whitespace removed."""
    return hashlib.sha256(text.strip().encode("utf-8", "surrogatepass")).hexdigest()


def user_key(tenant: str, user: str | None) -> str:
    """Who an answer was served to, as an opaque key (tenant and user are never stored in clear)."""
    return hashlib.sha256(f"{tenant}\x00{user or ''}".encode("utf-8", "surrogatepass")).hexdigest()[:32]


class ServedAnswersUnavailable(RuntimeError):
    """The served-answer store (Redis) cannot be reached."""


class ServedAnswers(Protocol):
    async def remember(self, who: str, answer: str, entry: dict, window_s: float, max_per_user: int) -> None: ...
    async def find(self, who: str, answer: str, window_s: float) -> dict | None: ...
    async def aclose(self) -> None: ...


class MemoryServedAnswers:
    """Served answers in this process: per user at most `max_per_user` (oldest first out), at most
    `max_users` users (least recently served first out); entries older than the window are ignored
    and dropped."""

    shared = False

    def __init__(self, max_users: int = 100_000, clock=time.time) -> None:
        self.max_users = max_users
        self.clock = clock
        self._users: OrderedDict[str, OrderedDict[str, dict]] = OrderedDict()

    async def remember(self, who: str, answer: str, entry: dict, window_s: float, max_per_user: int) -> None:
        now = self.clock()
        answers = self._users.pop(who, None) or OrderedDict()
        self._users[who] = answers   # most recently served last
        answers.pop(answer, None)
        answers[answer] = dict(entry, at=now)
        while answers and (len(answers) > max_per_user or next(iter(answers.values()))["at"] <= now - window_s):
            answers.popitem(last=False)
        while len(self._users) > self.max_users:
            self._users.popitem(last=False)

    async def find(self, who: str, answer: str, window_s: float) -> dict | None:
        entry = self._users.get(who, {}).get(answer)
        if entry is None or entry["at"] <= self.clock() - window_s:
            return None
        return dict(entry)

    async def aclose(self) -> None:
        return None


# KEYS = the user's hash (answer -> entry) and sorted set (answer by time); ARGV = answer hash, entry
# JSON, now (ms), window (ms), max entries. Adds the entry, drops what left the window and the oldest
# beyond the bound, and sets both keys' TTL to the window.
_REMEMBER_LUA = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
for _, member in ipairs(old) do redis.call('HDEL', KEYS[1], member) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[5])
if extra > 0 then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, extra - 1)
  for _, member in ipairs(oldest) do redis.call('HDEL', KEYS[1], member) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
"""


class RedisServedAnswers(LazyRedisStore):
    """Served answers in Redis, shared by every replica (layout in the module docstring)."""

    _decode_responses = True

    def __init__(self, url: str, namespace: str = REDIS_NAMESPACE, *, socket_timeout: float = 0.5,
                 connect_timeout: float = 0.5, retries: int = 1, hung_hold_s: float = 1.0, clock=time.time) -> None:
        super().__init__(url, namespace, socket_timeout=socket_timeout, connect_timeout=connect_timeout,
                         retries=retries, hung_hold_s=hung_hold_s)
        self.clock = clock
        self._script = None

    def _opened(self, client) -> None:
        self._script = client.register_script(_REMEMBER_LUA)

    def keys(self, who: str) -> tuple[str, str]:
        return f"{self.namespace}{{{who}}}:h", f"{self.namespace}{{{who}}}:z"

    def _guard(self, operation: str):
        return self._hung.guard(ServedAnswersUnavailable, f"Redis at {self.description} is unavailable ({operation})")

    async def remember(self, who: str, answer: str, entry: dict, window_s: float, max_per_user: int) -> None:
        now_ms = int(self.clock() * 1000)
        payload = json.dumps(dict(entry, at=now_ms / 1000), separators=(",", ":"))
        with self._guard("remember a served answer"):
            self._redis   # (creates the client and its script)
            await self._script(keys=list(self.keys(who)),
                               args=[answer, payload, now_ms, max(1, int(window_s * 1000)), max_per_user])

    async def find(self, who: str, answer: str, window_s: float) -> dict | None:
        with self._guard("look up a served answer"):
            raw = await self._redis.hget(self.keys(who)[0], answer)
        if raw is None:
            return None
        entry = json.loads(raw)
        if entry.get("at", 0) <= self.clock() - window_s:
            return None
        return entry



def open_served_answers(url: str | None, **options: Any) -> ServedAnswers:
    """Memory for None/"memory", else Redis at `url` (the same URLs as the other stores)."""
    if url is None or url.strip().lower() in ("", "memory", "memory://"):
        return MemoryServedAnswers(**options)
    return RedisServedAnswers(url, **options)


@dataclass
class Verdict:
    """What a follow-up turn said about the answer it follows (for headers and explain)."""

    request_id: str       # the earlier request whose answer it follows
    decision: str
    event: str            # reask | dissatisfied | moved_on
    details: dict
    status: str = "detected"   # credited | duplicate | explicit_first | record_gone | detected (explain only)


class ImplicitFeedback:
    """The policy's implicit feedback over an app-wide served-answer store (see the module docstring)."""

    def __init__(self, policy, store: ServedAnswers, learning, metrics, embedder) -> None:
        spec = policy.feedback.implicit
        self.enabled = spec.enabled
        self.window_s = float(spec.window)
        self.max_per_user = spec.max_answers_per_user
        self.threshold = spec.reask_threshold
        self.extra_cues = cue_pattern(spec.extra_cues)
        self.weights = learning.weights()
        self.store = store
        self.learning = learning
        self.metrics = metrics
        self.embedder = embedder   # None: a policy without the encoder (re-asks by normalized text)

    @staticmethod
    def who(journey) -> str:
        principal = journey.principal
        user = getattr(principal, "user", None) or journey.ctx.body.get("user")
        return user_key(principal.tenant, user if isinstance(user, str) else None)

    def _count(self, outcome: str) -> None:
        self.metrics.implicit_feedback.labels(outcome).inc()

    # 1: an answer goes out -----------------------------------------------------------------------
    async def remember(self, journey, text: str | None) -> None:
        """Keep the hash of an answer a learning decision served (it has a pending record)."""
        if not (self.enabled and journey.feedback_pending and isinstance(text, str) and text.strip()):
            return
        entry = {"request_id": journey.request_id, "decision": journey.route.decision_name}
        try:
            await self.store.remember(self.who(journey), answer_hash(text), entry, self.window_s, self.max_per_user)
        except Exception as exc:   # the answer still goes out; it just cannot be followed up
            self._count("store_error")
            log.warning("could not remember served answer of %s: %s", journey.request_id, exc)

    # 2: a follow-up comes in ---------------------------------------------------------------------
    async def judge(self, journey, *, count: bool = True) -> tuple[FollowUp, dict, Verdict] | None:
        """The follow-up in this request, if it follows an answer this user was served: its verdict
        (nothing credited; `count=False`: nothing counted either, for explain)."""
        if not self.enabled:
            return None
        follow = follow_up(journey.ctx)
        if follow is None:
            return None
        try:
            entry = await self.store.find(self.who(journey), answer_hash(follow.answer), self.window_s)
        except Exception as exc:
            if count:
                self._count("store_error")
            log.warning("could not look up a followed-up answer for %s: %s", journey.request_id, exc)
            return None
        if entry is None:
            if count:
                self._count("not_served")
            return None
        similarity = None
        if self.embedder is not None and follow.previous is not None:
            ctx = journey.ctx
            await ctx.ensure_embeddings((follow.turn, follow.previous))   # shared with the signals
            similarity = float(ctx.vector(follow.turn) @ ctx.vector(follow.previous))
        event, details = classify(follow, similarity, self.threshold, self.extra_cues)
        return follow, entry, Verdict(entry["request_id"], entry.get("decision", ""), event, details)

    async def explain(self, journey) -> dict | None:
        """What this request would credit as implicit feedback (explain: nothing is credited or counted)."""
        if not self.enabled:
            return None
        judged = await self.judge(journey, count=False)
        if judged is None:
            return {"follows": None}
        verdict = judged[2]
        return {"follows": verdict.request_id, "decision": verdict.decision, "event": verdict.event,
                "details": verdict.details}

    async def follow_up(self, journey) -> Verdict | None:
        """Credit the answer this request follows (when this user was served it in the window).
        Never fails the request."""
        try:
            judged = await self.judge(journey)
            if judged is None:
                return None
            _, _, verdict = judged
            credit = implicit_credit(verdict.event, self.weights)
            why = {k: v for k, v in verdict.details.items() if k != "cue"}   # the log never quotes the turn
            verdict.status = await self.learning.credit_implicit(
                verdict.request_id, journey.principal.tenant, credit, why)
            self._count(verdict.status)
            journey.response_headers["x-sigroute-implicit-feedback"] = (
                f"{verdict.event}; request={verdict.request_id}; status={verdict.status}")
            return verdict
        except Exception as exc:   # implicit feedback must never fail a request
            self._count("store_error")
            log.warning("implicit feedback for %s failed: %s", journey.request_id, exc)
            return None
