"""Contextual-bandit selectors for the gateway: LinUCB (disjoint and hybrid), linear Thompson
sampling and ε-greedy, learning per tenant from rewards and delayed quality feedback.

How one request flows through a contextual selector:

1. The pipeline asks `embedding_texts(ctx)` and has the shared encoder embed them (one call per
   request, together with the signals).
2. `select(candidates, ctx)` builds the context vector (`bandits.features`), lets the decision
   rule choose among the healthy candidates that fit, and returns a `Choice` carrying the pick's
   propensity, every candidate's score, the vector and the tenant.
3. When the answer completes, `update(choice, reward)` learns the immediate part of the reward
   (cost and latency, quality assumed at `default_quality`; an upstream failure counts as quality 0).
4. Quality feedback arriving later (`POST /v1/feedback`) is credited with `credit(record, quality)`
   from the pending record the pipeline kept: only the difference from the assumed quality is
   added, so a request that never gets feedback simply keeps the assumed value.

Learning state is additive sums (`bandits.linear`), one learner per tenant (tenants never see
each other's state). Local updates are applied at once and also collected as deltas; `sync(store)`
adds the deltas to the shared store and reloads the merged totals, so replicas on one Redis learn
together without lost updates, and a restarted gateway starts from what was learned. If the store
is unreachable the selector keeps serving from its last state plus its own unflushed deltas. If the
store comes back without what it held (Redis restarted empty or from an older snapshot), the
selector does not take its word: it restores the store from what it knows (`bandits.replica`:
once per loss, across replicas, without counting anything twice).

Discounting (`discount_half_life_s`) gives an observation at time t the weight 2^((t − e)/h) for an
epoch e; scaling every sum by a common factor is the same as a ridge λ that grows as 2^((now − e)/h),
which is how old observations fade. Epochs roll over every 64 half-lives; the previous epoch's
sums are read at 2⁻⁶⁴ of their weight, exactly their decayed value, so nothing is lost or reset.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from sigroute.bandits import tradeoff
from sigroute.bandits.base import Choice, Reward, Selector
from sigroute.bandits.features import FeatureExtractor
from sigroute.bandits.linear import DisjointRidge, HybridRidge, ProfiledEstimator
from sigroute.bandits.policies import EpsilonGreedyRule, KnownTerms, LinUCBRule, ThompsonRule
from sigroute.bandits.replica import SharedSums
from sigroute.policies.schema import (
    EpsilonGreedyOptions,
    HybridLinUCBOptions,
    LinUCBOptions,
    RewardSpec,
    ThompsonOptions,
)

log = logging.getLogger("sigroute.bandits")

EPOCH_HALF_LIVES = 64  # an epoch spans this many half-lives (weights stay below 2**64)
DEFAULT_COMPLETION_TOKENS = 256  # answer length assumed for a model before any answer was seen
IDLE_RELOAD_S = 30.0   # a tenant this process has not served lately is reloaded this often

__all__ = ["ContextualSelector", "LinUCBSelector", "HybridLinUCBSelector", "ThompsonSelector",
           "EpsilonGreedySelector", "reward_value", "quality_from_feedback", "known_terms", "energy_shares",
           "CONTEXTUAL_SELECTORS"]


# --------------------------------------------------------------------------------------------
# rewards


def reward_value(spec: RewardSpec, *, quality: float, cost_share: float | None, latency_ms: float | None,
                 energy_share: float | None = None) -> float:
    """The blended reward in [0, 1]: weighted mean of quality, 1 − cost share, 1 − latency share and
    1 − energy share.

    `cost_share` is the answer's cost relative to the most expensive candidate for the same tokens
    (None: unknown, counted as the worst); latency is relative to `spec.latency_budget_ms`;
    `energy_share` is the answer's declared energy relative to the most energy-hungry candidate for
    the same tokens (None: unknown, counted as the worst; irrelevant while `spec.energy` is 0).
    """
    cost = 1.0 if cost_share is None else min(1.0, max(0.0, cost_share))
    latency = 1.0 if latency_ms is None else min(1.0, max(0.0, latency_ms / spec.latency_budget_ms))
    energy = 1.0 if energy_share is None else min(1.0, max(0.0, energy_share))
    return (spec.quality * quality + spec.cost * (1.0 - cost) + spec.latency * (1.0 - latency)
            + spec.energy * (1.0 - energy)) / spec.total


def energy_shares(energies: Mapping[str, Any], prompt_tokens: float,
                  completion_tokens: float) -> dict[str, float | None]:
    """Each model's declared energy for an answer of these lengths relative to the most energy-hungry
    declared model's (`energies` maps a model to its `Energy` declaration or None: unknown, share None)."""
    joules = {m: e.joules(prompt_tokens, completion_tokens) for m, e in energies.items() if e is not None}
    hungriest = max(joules.values(), default=0.0)
    return {m: (None if m not in joules else (joules[m] / hungriest if hungriest > 0 else 0.0)) for m in energies}


def known_terms(spec: RewardSpec, candidates: Sequence[str], prices: Mapping[str, tuple[float, float] | None],
                prompt_tokens: float | None, profiles: Mapping[str, tuple[float | None, float | None]],
                energies: Mapping[str, Any] | None = None) -> KnownTerms:
    """The cost, latency and energy terms of each candidate's reward, known before the call (``learn: quality``).

    `prices` maps every model of the decision to (input, output) USD per million tokens (None =
    unknown price); `profiles` maps a candidate to its observed mean (completion tokens, latency
    ms), None where nothing was observed yet: the mean of the other candidates' profiles is used,
    else `DEFAULT_COMPLETION_TOKENS` and a latency at the budget's middle. The expected cost share
    is the gateway's `cost_share` for an answer of the expected length: the candidate's price for
    those tokens relative to the dearest model of the decision for the same tokens, so a score
    equals `reward_value` of (predicted quality, expected cost share, expected latency). `energies`
    maps every model of the decision to its `Energy` declaration (or None); the energy share is
    computed the same way (only when `spec.energy` has weight).
    """
    total = spec.total
    tokens_known = [t for t, _ in profiles.values() if t is not None]
    latency_known = [l for _, l in profiles.values() if l is not None]
    pooled_tokens = float(np.mean(tokens_known)) if tokens_known else float(DEFAULT_COMPLETION_TOKENS)
    pooled_latency = float(np.mean(latency_known)) if latency_known else spec.latency_budget_ms / 2.0
    p = float(prompt_tokens or 0.0)
    priced = [pr for pr in prices.values() if pr is not None]
    offsets = {}
    for arm in candidates:
        tokens, latency = profiles.get(arm, (None, None))
        tokens = pooled_tokens if tokens is None else tokens
        latency = pooled_latency if latency is None else latency
        price = prices.get(arm)
        share = None
        if price is not None and priced:
            dearest = max(p * pin + tokens * pout for pin, pout in priced)
            share = (p * price[0] + tokens * price[1]) / dearest if dearest > 0 else 0.0
        cost = 1.0 if share is None else min(1.0, max(0.0, share))
        lat = min(1.0, max(0.0, latency / spec.latency_budget_ms))
        offset = spec.cost * (1.0 - cost) + spec.latency * (1.0 - lat)
        if spec.energy > 0:
            energy_share = energy_shares(energies or {}, p, tokens).get(arm)
            offset += spec.energy * (1.0 - (1.0 if energy_share is None else min(1.0, max(0.0, energy_share))))
        offsets[arm] = offset / total
    return KnownTerms(spec.quality / total, offsets)


_GOOD_LABELS = frozenset({"good", "correct", "right", "pass", "accept", "accepted", "yes", "helpful", "up"})
_BAD_LABELS = frozenset({"bad", "wrong", "incorrect", "fail", "reject", "rejected", "no", "unhelpful", "down"})


def quality_from_feedback(score: Any = None, thumbs: Any = None, label: Any = None) -> float:
    """Quality in [0, 1] from a feedback body: `score` (0..1) first, then thumbs up/down, then a
    label such as correct/incorrect. Raises ValueError with what is accepted."""
    if score is not None:
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError("score must be a number between 0 and 1")
        if not 0.0 <= float(score) <= 1.0:
            raise ValueError(f"score must be between 0 and 1, got {score}")
        return float(score)
    if thumbs is not None:
        if thumbs in (True, "up"):
            return 1.0
        if thumbs in (False, "down"):
            return 0.0
        raise ValueError("thumbs must be 'up' or 'down'")
    if label is not None:
        text = str(label).strip().lower()
        if text in _GOOD_LABELS:
            return 1.0
        if text in _BAD_LABELS:
            return 0.0
        raise ValueError(f"unknown label '{label}'; use one of {', '.join(sorted(_GOOD_LABELS | _BAD_LABELS))}")
    raise ValueError("feedback needs one of score (0..1), thumbs ('up'/'down') or label")


# --------------------------------------------------------------------------------------------
# per-tenant learner


@dataclass
class _Learner:
    estimator: DisjointRidge | HybridRidge | ProfiledEstimator
    rule: Any
    epoch: int = 0
    deltas: dict[tuple[int, str], np.ndarray] = field(default_factory=dict)  # (epoch, arm) -> sums not yet stored
    lock: threading.Lock = field(default_factory=threading.Lock)
    used_at: float = 0.0      # last selection for this tenant
    reloaded_at: float = 0.0  # last reload of the merged totals from the store
    created_at: float = field(default_factory=time.time)


class ContextualSelector(Selector):
    """Shared machinery of the contextual selectors; subclasses pick estimator and rule."""

    options_type: type = LinUCBOptions
    estimator_kind = "disjoint"
    learns_from_feedback = True

    def __init__(self, options: Any = None, models: Mapping[str, Any] | None = None, *,
                 resources: Any = None, decision: str = "decision", seed: int | None = None,
                 features: FeatureExtractor | None = None):
        if options is None:
            options = self.options_type()
        elif not isinstance(options, self.options_type):
            raise TypeError(f"{type(self).__name__} takes {self.options_type.__name__}, not {type(options).__name__}")
        super().__init__(options, models or {})
        self.decision = decision
        self.features = features if features is not None else FeatureExtractor(options.features, resources)
        self._seed = seed
        self._learners: dict[str, _Learner] = {}
        self._lock = threading.Lock()
        self.store_errors = 0
        self.last_sync_ok: float | None = None
        self._shared = SharedSums()  # what this replica knows of the store (restores it after a loss)

    # identity of the learned state ------------------------------------------------------------
    @property
    def learns_quality(self) -> bool:
        """True with ``learn: quality``: the estimator learns quality; cost and latency are known terms."""
        return self.options.learn == "quality"

    @property
    def schema_id(self) -> str:
        """The feature schema, marked when the estimator learns quality only (its sums mean
        something else than blended rewards and carry the answer profile)."""
        return self.features.schema_id + ("-q" if self.learns_quality else "")

    def state_key(self, tenant: str, epoch: int = 0) -> str:
        key = f"t={tenant}/d={self.decision}/a={self.name}/s={self.schema_id}"
        return key if self.options.discount_half_life_s is None else f"{key}/e={epoch}"

    def tenants(self) -> list[str]:
        return list(self._learners)

    # estimator / rule ---------------------------------------------------------------------------
    def _new_estimator(self):
        estimator = self._base_estimator()
        return ProfiledEstimator(estimator) if self.learns_quality else estimator

    def _base_estimator(self):
        o = self.options
        return DisjointRidge(self.features.dim, ridge=o.ridge, recompute_every=o.recompute_every, prior=o.prior)

    def _new_rule(self, estimator, rng_seed: int | None):
        raise NotImplementedError

    def learner(self, tenant: str) -> _Learner:
        learner = self._learners.get(tenant)
        if learner is None:
            with self._lock:
                learner = self._learners.get(tenant)
                if learner is None:
                    estimator = self._new_estimator()
                    seed = None if self._seed is None else hash((self._seed, tenant)) & 0xFFFFFFFF
                    learner = _Learner(estimator, self._new_rule(estimator, seed), epoch=self._epoch(time.time()))
                    self._apply_discount(learner, time.time())
                    self._learners[tenant] = learner
        return learner

    # discounting -------------------------------------------------------------------------------
    def _epoch(self, now: float) -> int:
        h = self.options.discount_half_life_s
        return 0 if h is None else int(now // (h * EPOCH_HALF_LIVES))

    def _weight(self, learner: _Learner, now: float) -> float:
        h = self.options.discount_half_life_s
        if h is None:
            return 1.0
        start = learner.epoch * h * EPOCH_HALF_LIVES
        return 2.0 ** ((now - start) / h)

    def _apply_discount(self, learner: _Learner, now: float) -> None:
        """Keep the estimator's ridge at λ·(current weight), i.e. all sums decayed to `now`."""
        if self.options.discount_half_life_s is not None:
            learner.estimator.ridge = self.options.ridge * self._weight(learner, now)

    # selection -------------------------------------------------------------------------------
    def embedding_texts(self, ctx) -> tuple[str, ...]:
        return self.features.embedding_texts(ctx)

    def select(self, candidates: Sequence[str], ctx) -> Choice:
        candidates = tuple(candidates)
        if not candidates:
            raise ValueError("no candidate model to select from: every model of the decision is unhealthy or too small")
        tenant = getattr(getattr(ctx, "principal", None), "tenant", None) or "default"
        x = self.features.vector(ctx)
        return self.select_vector(candidates, x, tenant,
                                  prompt_tokens=ctx.prompt_tokens if self.learns_quality else None,
                                  dial=getattr(ctx, "tradeoff", None))

    def select_vector(self, candidates: Sequence[str], x: np.ndarray, tenant: str = "default", *,
                      prompt_tokens: float | None = None, dial: float | None = None) -> Choice:
        """Pick among `candidates` for context `x`. `dial` is the request's cost/quality trade-off
        (`bandits.tradeoff`): with ``learn: quality`` it sets the cost weight of this selection only;
        otherwise it is ignored, and the choice says so."""
        spec: RewardSpec = self.options.reward
        verdict = None
        if dial is not None:
            if self.learns_quality:
                spec = spec.model_copy(update={"cost": tradeoff.cost_weight(spec.quality, dial)})
                verdict = tradeoff.applied(spec.cost, dial)
            else:
                verdict = tradeoff.ignored("learn: reward learns a fixed cost weight; use learn: quality")
        learner = self.learner(tenant)
        with learner.lock:
            known = self.known_terms(learner, candidates, prompt_tokens, spec) if self.learns_quality else None
            pick = learner.rule.choose(x, tuple(candidates), known)
            learner.used_at = time.time()
        return Choice(model=pick.arm, propensity=pick.propensity, scores=dict(pick.scores),
                      ranking=pick.ranking(tuple(candidates)), context=x, tenant=tenant, prompt_tokens=prompt_tokens,
                      means=pick.means, tradeoff=verdict, dial=dial if self.learns_quality else None)

    def model_prices(self) -> dict[str, tuple[float, float] | None]:
        out = {}
        for name, spec in self.models.items():
            price = getattr(spec, "price", None)
            out[name] = None if price is None else (float(price.input), float(price.output))
        return out

    def known_terms(self, learner: _Learner, candidates: Sequence[str], prompt_tokens: float | None,
                    spec: RewardSpec | None = None) -> KnownTerms:
        """The known cost and latency terms under `spec` (default: the policy's reward)."""
        profiles = {}
        for arm in set(candidates) | set(learner.estimator.arms()):
            _, tokens, latency = learner.estimator.profile(arm)
            profiles[arm] = (tokens, latency)
        return known_terms(spec or self.options.reward, candidates, self.model_prices(), prompt_tokens, profiles,
                           self.model_energies())

    def model_energies(self) -> dict[str, Any]:
        """Each model's declared `Energy` (None where it declares none)."""
        return {name: getattr(spec, "energy", None) for name, spec in self.models.items()}

    # learning --------------------------------------------------------------------------------
    def cost_share(self, model: str, reward: Reward) -> float | None:
        """The answer's cost relative to the decision's most expensive model for the same tokens."""
        if reward.prompt_tokens is None or reward.completion_tokens is None:
            return None
        costs = []
        for spec in self.models.values():
            price = getattr(spec, "price", None)
            if price is not None:
                costs.append(reward.prompt_tokens * price.input + reward.completion_tokens * price.output)
        spec = self.models.get(model)
        if spec is None or not costs or max(costs) <= 0:
            return 0.0 if costs else None
        own = reward.prompt_tokens * spec.price.input + reward.completion_tokens * spec.price.output
        return own / max(costs)

    def energy_share(self, model: str, reward: Reward) -> float | None:
        """The answer's declared energy relative to the decision's most energy-hungry model for the same tokens."""
        if reward.prompt_tokens is None or reward.completion_tokens is None:
            return None
        return energy_shares(self.model_energies(), reward.prompt_tokens, reward.completion_tokens).get(model)

    def immediate_reward(self, reward: Reward) -> float:
        """What the estimator learns at once: the blended reward with quality assumed at
        `default_quality` (0 for a failure), or with ``learn: quality`` that quality alone."""
        spec: RewardSpec = self.options.reward
        quality = spec.default_quality if reward.ok else 0.0
        if self.learns_quality:
            return quality
        cost = self.cost_share(reward.model, reward) if reward.ok else None
        latency = reward.latency_ms if reward.ok else None
        energy = self.energy_share(reward.model, reward) if reward.ok and spec.energy > 0 else None
        return reward_value(spec, quality=quality, cost_share=cost, latency_ms=latency, energy_share=energy)

    def observe(self, tenant: str, model: str, x: np.ndarray, value: float, *, now: float | None = None,
                count: bool = True, completion_tokens: float | None = None,
                latency_ms: float | None = None) -> float:
        """Learn `value` for (model, x) now; returns the observation's weight (for later credit).
        With ``learn: quality`` a counted observation also adds the answer's length and latency
        to the model's profile."""
        learner = self.learner(tenant)
        now = time.time() if now is None else now
        profile = {"completion_tokens": completion_tokens, "latency_ms": latency_ms} if self.learns_quality else {}
        with learner.lock:
            self._roll_epoch(learner, now)
            w = self._weight(learner, now)
            delta = learner.estimator.observation_sums(model, x, value, weight=w, count=count, **profile)
            if count:
                learner.estimator.observe(model, x, value, weight=w, **profile)
            else:
                learner.estimator.credit(model, x, value, weight=w)
            key = (learner.epoch, model)
            previous = learner.deltas.get(key)
            learner.deltas[key] = delta if previous is None else previous + delta
        return w

    def update(self, choice: Choice, reward: Reward) -> None:
        if choice.context is None:
            return  # a choice this selector did not make (e.g. before a reload)
        ok = reward.ok
        self.observe(choice.tenant or "default", reward.model, np.asarray(choice.context),
                     self.immediate_reward(reward), now=reward.at,
                     completion_tokens=reward.completion_tokens if ok else None,
                     latency_ms=reward.latency_ms if ok else None)

    def pending_record(self, choice: Choice, model: str) -> dict[str, Any] | None:
        """What the pipeline keeps until quality feedback arrives (None when quality has no weight)."""
        spec: RewardSpec = self.options.reward
        if spec.quality <= 0 or choice.context is None:
            return None
        learner = self.learner(choice.tenant or "default")
        return {
            "tenant": choice.tenant or "default", "decision": self.decision, "algorithm": self.name,
            "schema": self.schema_id, "model": model, "context": [float(v) for v in choice.context],
            "quality_share": 1.0 if self.learns_quality else spec.quality / spec.total,
            "default_quality": spec.default_quality, "epoch": learner.epoch, "at": time.time(),
        }

    @property
    def feedback_ttl_s(self) -> float:
        return self.options.reward.feedback_ttl_s

    def credit(self, record: Mapping[str, Any], quality: float) -> float | None:
        """Apply quality feedback for a pending record; returns the reward change credited, or None
        when the record was routed by another algorithm or feature schema (nothing is learned)."""
        if record.get("schema") != self.schema_id or record.get("algorithm", self.name) != self.name:
            return None
        change = float(record["quality_share"]) * (float(quality) - float(record["default_quality"]))
        x = np.asarray(record["context"], dtype=np.float64)
        self.observe(record["tenant"], record["model"], x, change, now=float(record.get("at") or time.time()),
                     count=False)
        return change

    def log_entry(self, choice: Choice, reward: Reward) -> dict[str, Any] | None:
        """The decision log's fields for offline replay: algorithm, schema, context, immediate reward."""
        if choice.context is None:
            return None
        entry = {"algorithm": self.name, "schema": self.schema_id, "context": choice.context,
                 "reward": self.immediate_reward(reward)}
        if self.learns_quality:  # replay needs what selection and the answer profile used
            entry["usage"] = {"prompt_tokens": choice.prompt_tokens,
                              "completion_tokens": reward.completion_tokens if reward.ok else None,
                              "latency_ms": reward.latency_ms if reward.ok else None}
            if choice.dial is not None:   # the caller's cost/quality dial weighed this pick's cost
                entry["usage"]["tradeoff"] = choice.dial
        return entry

    def explain(self, choice: Choice) -> dict[str, Any]:
        if choice.context is None:
            return {}
        return {"features": self.features.explain(choice.context),
                "learned": self.snapshot(choice.tenant or "default")}

    # shared state ------------------------------------------------------------------------------
    def _roll_epoch(self, learner: _Learner, now: float) -> None:
        epoch = self._epoch(now)
        if epoch != learner.epoch:  # the old epoch's sums now weigh 2**-64 of their value
            sums = {arm: vec * 2.0 ** -EPOCH_HALF_LIVES for arm, vec in learner.estimator.sums().items()}
            learner.epoch = epoch
            learner.estimator.load_sums(sums)
        self._apply_discount(learner, now)

    async def sync(self, store: Any) -> None:
        """Add unflushed deltas to `store`, then reload the merged totals of every tenant this process
        has served since its last reload (idle tenants every `IDLE_RELOAD_S`).

        On a store failure the deltas stay queued (and are still part of the local estimate) and
        the error propagates so the caller can count it.
        """
        now = time.time()
        failure: Exception | None = None
        idle_ttl = getattr(store, "idle_ttl_s", None)
        for tenant, learner in list(self._learners.items()):
            if idle_ttl and not learner.deltas and now - max(learner.used_at, learner.created_at) > idle_ttl:
                self._forget_tenant(tenant)
                continue
            idle = learner.used_at < learner.reloaded_at and now - learner.reloaded_at < IDLE_RELOAD_S
            if idle and not learner.deltas:
                continue  # nothing to send, and nobody here needs a fresher view yet
            with learner.lock:
                deltas, learner.deltas = learner.deltas, {}
            by_epoch: dict[int, dict[str, np.ndarray]] = {}
            for (epoch, arm), vec in deltas.items():
                by_epoch.setdefault(epoch, {})[arm] = vec
            try:
                for epoch, arms in by_epoch.items():
                    await self._shared.flush(store, self.state_key(tenant, epoch), arms)
                    for arm in arms:  # flushed: forget them
                        deltas.pop((epoch, arm), None)
                await self._reload(store, tenant, learner, now)
            except Exception as exc:  # keep what was not flushed
                failure = exc
                with learner.lock:
                    for key, vec in deltas.items():
                        learner.deltas[key] = learner.deltas[key] + vec if key in learner.deltas else vec
        if failure is not None:
            self.store_errors += 1
            raise failure
        self.last_sync_ok = now

    def _forget_tenant(self, tenant: str) -> None:
        """Drop a tenant this process has not served for the store's idle TTL: its stored state
        expires on its own, and no view of it kept here may restore it afterwards (as it would
        restore state the store lost). Served again, the tenant is loaded afresh."""
        with self._lock:
            self._learners.pop(tenant, None)
        base = self.state_key(tenant, 0).split("/e=", 1)[0]
        self._shared.forget(lambda key: key != base and not key.startswith(base + "/e="))

    @property
    def sync_interval_s(self) -> float | None:
        return self.options.sync_interval_s

    def take_store_recoveries(self) -> dict[str, int]:
        """How often since the last call the store was found to have lost state, by outcome
        (reseeded, joined, already, superseded, empty, intact; see `bandits.replica`)."""
        return self._shared.take_recoveries()

    async def restore(self, store: Any) -> None:
        """Load the stored state of every tenant that has some for this decision, algorithm and
        feature schema (state keys look like `t=TENANT/d=DECISION/a=ALGORITHM/s=SCHEMA[/e=EPOCH]`)."""
        for key in await store.keys("t="):
            parts = dict(p.split("=", 1) for p in key.split("/") if "=" in p)
            if (parts.get("d") == self.decision and parts.get("a") == self.name
                    and parts.get("s") == self.schema_id and "t" in parts):
                await self.load_tenant(store, parts["t"])

    async def load_tenant(self, store: Any, tenant: str) -> None:
        await self._reload(store, tenant, self.learner(tenant), time.time())

    async def _reload(self, store: Any, tenant: str, learner: _Learner, now: float) -> None:
        epoch = self._epoch(now)
        totals = dict(await self._shared.load(store, self.state_key(tenant, epoch)))
        if self.options.discount_half_life_s is not None:
            current = {self.state_key(tenant, epoch), self.state_key(tenant, epoch - 1)}
            prefix = self.state_key(tenant, epoch).rsplit("/e=", 1)[0] + "/e="
            self._shared.forget(lambda key: not key.startswith(prefix) or key in current)
            older = await self._shared.load(store, self.state_key(tenant, epoch - 1))
            for arm, vec in older.items():
                scaled = vec * 2.0 ** -EPOCH_HALF_LIVES
                totals[arm] = totals[arm] + scaled if arm in totals else scaled
        with learner.lock:
            if epoch != learner.epoch:
                learner.deltas = {k: v * 2.0 ** -EPOCH_HALF_LIVES for k, v in learner.deltas.items()}
                learner.deltas = {(epoch, arm): v for (_, arm), v in learner.deltas.items()}
                learner.epoch = epoch
            merged = {arm: vec.copy() for arm, vec in totals.items()}
            for (_, arm), vec in learner.deltas.items():  # what this process learned since the flush
                merged[arm] = merged[arm] + vec if arm in merged else vec.copy()
            merged = {arm: vec for arm, vec in merged.items() if vec.shape == (learner.estimator.layout_size,)}
            learner.estimator.load_sums(merged)
            self._apply_discount(learner, now)
            learner.estimator.load_sums(learner.estimator.sums())  # exact inverse at the new ridge
            learner.reloaded_at = now

    def adopt(self, previous: Selector) -> None:
        """Take over a previous selector's learners (reload with the same feature schema): models
        kept keep their state; models removed from the decision stop being scored."""
        if (getattr(previous, "schema_id", None) != self.schema_id
                or getattr(previous, "estimator_kind", None) != self.estimator_kind):
            return
        if isinstance(previous, ContextualSelector) and previous.decision == self.decision:
            self._shared = previous._shared  # the same replica: what it knows of the store carries over
        for tenant, old in previous._learners.items():
            learner = self.learner(tenant)
            with old.lock, learner.lock:
                learner.estimator.load_sums(old.estimator.sums())
                learner.epoch = old.epoch
                learner.deltas = dict(old.deltas)
                self._apply_discount(learner, time.time())

    def observations(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for learner in list(self._learners.values()):
            estimator = learner.estimator
            for arm in estimator.arms():
                totals[arm] = totals.get(arm, 0.0) + float(estimator.count(arm))
        return totals

    def snapshot(self, tenant: str = "default") -> dict[str, Any]:
        """Human-readable state of one tenant's learner (for explain and tests)."""
        learner = self._learners.get(tenant)
        if learner is None:
            return {"tenant": tenant, "observations": {}}
        est = learner.estimator
        return {"tenant": tenant, "schema": self.schema_id,
                "observations": {arm: round(est.count(arm), 6) for arm in est.arms()}}


class LinUCBSelector(ContextualSelector):
    name = "linucb"
    options_type = LinUCBOptions

    def _new_rule(self, estimator, rng_seed):
        return LinUCBRule(estimator, alpha=self.options.alpha)


class HybridLinUCBSelector(LinUCBSelector):
    name = "hybrid_linucb"
    options_type = HybridLinUCBOptions
    estimator_kind = "hybrid"

    def model_features(self, model: str) -> np.ndarray:
        spec = self.models.get(model)
        out = []
        for name in self.options.model_features:
            if name == "bias":
                out.append(1.0)
            elif name == "price":
                price = getattr(spec, "price", None)
                out.append(math.log1p((price.input + price.output) if price is not None else 0.0))
        return np.array(out)

    def _base_estimator(self):
        feats = {m: self.model_features(m) for m in self.models}
        return HybridRidge(self.features.dim, arm_features=feats, ridge=self.options.ridge, prior=self.options.prior,
                           default_arm_features=self.model_features("") if not feats else None)


class ThompsonSelector(ContextualSelector):
    name = "thompson"
    options_type = ThompsonOptions

    def _new_rule(self, estimator, rng_seed):
        return ThompsonRule(estimator, v=self.options.v, rng=np.random.default_rng(rng_seed))


class EpsilonGreedySelector(ContextualSelector):
    name = "epsilon_greedy"
    options_type = EpsilonGreedyOptions

    def _new_rule(self, estimator, rng_seed):
        o = self.options
        return EpsilonGreedyRule(estimator, epsilon=o.epsilon, decay=o.decay, min_epsilon=o.min_epsilon,
                                 rng=random.Random(rng_seed))


CONTEXTUAL_SELECTORS: dict[str, type[ContextualSelector]] = {
    cls.name: cls for cls in (LinUCBSelector, HybridLinUCBSelector, ThompsonSelector, EpsilonGreedySelector)
}
