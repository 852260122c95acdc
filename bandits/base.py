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

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.model, "propensity": round(self.propensity, 6),
                "scores": {k: round(v, 6) for k, v in self.scores.items()}, "ranking": list(self.ranking)}


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
    """Base class of every selection algorithm."""

    name: str = ""

    def __init__(self, options: Any, models: Mapping[str, Any]):
        self.options = options
        self.models = models  # candidate name -> policies.schema.ModelSpec

    @abstractmethod
    def select(self, candidates: Sequence[str], ctx: RequestContext) -> Choice:
        """Choose among `candidates` (non-empty, in the decision's order)."""

    def update(self, choice: Choice, reward: Reward) -> None:
        """Learn from an outcome. Stateless selectors ignore it."""

    # contextual selectors override these -------------------------------------------------------
    learns_from_feedback: bool = False

    def embedding_texts(self, ctx: RequestContext) -> tuple[str, ...]:
        """Texts whose embeddings `select` needs; the pipeline computes them before selecting."""
        return ()
