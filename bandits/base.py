"""The selector contract: pick one of a decision's candidate models and learn from the outcome.

A selector is built once per decision (per loaded policy) from the decision's algorithm options
and the specs of its candidate models. `select` sees only the candidates that can take the
request right now (healthy, big enough), in the decision's order, and returns a `Choice` that
records the propensity of the pick (the probability this selector had of choosing it), so that
logged choices can be evaluated offline. `ranking` orders every candidate for fallback.

Learnable state is kept as additive sufficient statistics (sums), so that replicas merge by adding.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from sigroute.signals.context import RequestContext


@dataclass(frozen=True, slots=True)
class Choice:
    model: str
    propensity: float
    scores: Mapping[str, float] = field(default_factory=dict)  # higher is better
    ranking: tuple[str, ...] = ()  # all candidates, best first; `model` is ranking[0]
    # contextual selectors only: the context vector the pick was made on, and whose state learned it
    context: Any = field(default=None, compare=False, repr=False)
    tenant: str | None = None
    prompt_tokens: float | None = None  # what a `learn: quality` selector priced the candidates with
    means: Mapping[str, float] | None = field(default=None, compare=False, repr=False)  # contextual: each
    # candidate's estimated reward for this context, before exploration (scores minus the bonus)
    tradeoff: str | None = None  # what became of the request's cost/quality dial (bandits.tradeoff), if it had one
    dial: float | None = None    # the dial, when it was applied (the decision log keeps it for replay)

    def as_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "propensity": round(self.propensity, 6),
               "scores": {k: round(v, 6) for k, v in self.scores.items()}, "ranking": list(self.ranking)}
        if self.tradeoff is not None:
            out["tradeoff"] = self.tradeoff
        return out


@dataclass(frozen=True, slots=True)
class Reward:
    """What happened when `model` answered. `value` is the blended reward in [0, 1] when known."""

    model: str
    ok: bool
    value: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    cost_usd: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    at: float | None = None  # unix time of the observation


class Selector(ABC):
    """The contract every selection algorithm honours, static and learning alike.

    The gateway holds one selector per decision and only ever calls the methods below; it never
    asks which kind of selector it holds. A static selector inherits the defaults (nothing to
    learn, keep, share or explain); a learning one overrides them.

    Per request:
      `embedding_texts(ctx)`      texts whose embeddings `select` needs (computed before it)
      `select(candidates, ctx)`   the pick, its propensity and the ranking for fallback
      `update(choice, reward)`    the immediate outcome (latency, cost, errors)
      `pending_record(choice, model)`  what to keep until quality feedback arrives (None: nothing),
                                  for `feedback_ttl_s` seconds
      `credit(record, quality)`   apply that feedback; None when the record is not this
                                  selector's (its algorithm or features changed since)
      `log_entry(choice, reward)` fields for the decision log (offline replay); None: not logged
      `explain(choice)`           what explain shows beyond the choice (features, learned state)
    Across requests:
      `adopt(previous)`           after a policy reload: take over what the previous selector of
                                  the same decision learned, when it still applies
      `sync_interval_s`           how often `sync` should run; None: nothing to share
      `sync(store)` / `restore(store)`  exchange learned sums with / load them from the state store
      `take_store_recoveries()`   losses of shared state found and repaired since the last call
    """

    name: str = ""
    learns_from_feedback: bool = False   # keeps pending records and learns from POST /v1/feedback

    def __init__(self, options: Any, models: Mapping[str, Any]):
        self.options = options
        self.models = models  # candidate name -> policies.schema.ModelSpec

    @abstractmethod
    def select(self, candidates: Sequence[str], ctx: RequestContext) -> Choice:
        """Choose among `candidates` (non-empty, in the decision's order)."""

    def embedding_texts(self, ctx: RequestContext) -> tuple[str, ...]:
        """Texts whose embeddings `select` needs; the pipeline computes them before selecting."""
        return ()

    def update(self, choice: Choice, reward: Reward) -> None:
        """Learn from an outcome. Stateless selectors ignore it."""

    def pending_record(self, choice: Choice, model: str) -> dict[str, Any] | None:
        """What to keep until quality feedback for this answer arrives; None: feedback teaches nothing."""
        return None

    @property
    def feedback_ttl_s(self) -> float:
        """How long a pending record waits for feedback."""
        return 0.0

    def credit(self, record: Mapping[str, Any], quality: float) -> float | None:
        """Apply quality feedback for a kept record; the reward change, or None if `record` was
        not made by this selector's state (then nothing is learned)."""
        return None

    def log_entry(self, choice: Choice, reward: Reward) -> dict[str, Any] | None:
        """Fields the decision log keeps for offline replay of this choice; None: not logged."""
        return None

    def explain(self, choice: Choice) -> dict[str, Any]:
        """Extra detail for `/v1/route/explain` about how `choice` was made."""
        return {}

    def adopt(self, previous: "Selector") -> None:
        """After a reload, take over what `previous` (the same decision's old selector) learned."""

    def observations(self) -> dict[str, float]:
        """How many (decayed) outcomes each arm has learned from, over the tenants this process
        holds; {} for a selector that does not learn (the operator's dashboard shows it)."""
        return {}

    @property
    def sync_interval_s(self) -> float | None:
        """How often this selector's state should meet the shared store; None: it shares nothing."""
        return None

    async def sync(self, store: Any) -> None:
        """Add what was learned here to `store` and reload the merged totals."""

    def take_store_recoveries(self) -> dict[str, int]:
        """Times since the last call the store was found to have lost this selector's state, by
        outcome (see `bandits.replica`); {} for selectors that share nothing."""
        return {}

    async def restore(self, store: Any) -> None:
        """Load every tenant's state stored for this selector (at start-up and after a reload)."""
