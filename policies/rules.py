"""The Boolean rule engine: evaluate decisions' rule trees over signal results and pick a winner.

A rule tree is `all`/`any`/`not` over `type:name` leaves. Evaluating a tree gives its truth and
the confidences of the leaves that made it true:

- a leaf is true when its signal matched; it contributes its confidence;
- `all` is true when every child is; it contributes every child's confidences;
- `any` is true when some child is; it contributes the confidences of the true children;
- `not` is true when its child is false; it contributes `1 - c` for the child's score `c`
  (the mean confidence of the child's leaves, matched or not), so "not a jailbreak at 0.1"
  counts as 0.9 evidence.

A decision's confidence is the mean of what its tree contributes (1.0 if that is empty).

The winner (`choose`) among the decisions whose rules hold: under `priority`, the highest
priority (ties: file order); under `confidence`, the highest confidence (ties: priority, then file
order). If none holds, the default decision (the one without rules) answers, with confidence 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence

from sigroute.policies.schema import AllRule, AnyRule, Decision, NotRule, RuleExpr


class SignalOutcome(Protocol):
    matched: bool
    confidence: float


@dataclass(frozen=True, slots=True)
class Leaf:
    key: str

    def evaluate(self, results: Mapping[str, SignalOutcome]) -> tuple[bool, list[float]]:
        r = results.get(self.key)
        if r is not None and r.matched:
            return True, [float(r.confidence)]
        return False, []

    def score(self, results: Mapping[str, SignalOutcome]) -> float:
        r = results.get(self.key)
        return float(r.confidence) if r is not None else 0.0


@dataclass(frozen=True, slots=True)
class All:
    children: tuple[Any, ...]

    def evaluate(self, results):
        confidences: list[float] = []
        for child in self.children:
            ok, c = child.evaluate(results)
            if not ok:
                return False, []
            confidences.extend(c)
        return True, confidences

    def score(self, results) -> float:
        return sum(c.score(results) for c in self.children) / len(self.children)


@dataclass(frozen=True, slots=True)
class AnyOf:
    children: tuple[Any, ...]

    def evaluate(self, results):
        matched = False
        confidences: list[float] = []
        for child in self.children:
            ok, c = child.evaluate(results)
            if ok:
                matched = True
                confidences.extend(c)
        return matched, confidences

    def score(self, results) -> float:
        return max(c.score(results) for c in self.children)


@dataclass(frozen=True, slots=True)
class Not:
    child: Any

    def evaluate(self, results):
        ok, _ = self.child.evaluate(results)
        if ok:
            return False, []
        return True, [1.0 - self.child.score(results)]

    def score(self, results) -> float:
        return 1.0 - self.child.score(results)


def compile_rule(expr: RuleExpr):
    """Turn the schema's rule expression into an evaluable tree."""
    if isinstance(expr, str):
        return Leaf(expr)
    if isinstance(expr, AllRule):
        return All(tuple(compile_rule(c) for c in expr.all))
    if isinstance(expr, AnyRule):
        return AnyOf(tuple(compile_rule(c) for c in expr.any))
    if isinstance(expr, NotRule):
        return Not(compile_rule(expr.not_))
    raise TypeError(f"not a rule expression: {expr!r}")


@dataclass(frozen=True, slots=True)
class Verdict:
    """How one decision fared on one request."""

    decision: str
    priority: int
    matched: bool
    confidence: float
    is_default: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "priority": self.priority, "matched": self.matched,
                "confidence": round(self.confidence, 4), "default": self.is_default}


@dataclass(frozen=True, slots=True)
class Outcome:
    winner: Decision
    confidence: float
    verdicts: tuple[Verdict, ...]
    strategy: str
    fell_back_to_default: bool


class DecisionEngine:
    """Compiled rule trees of a set of decisions (one per entrypoint), evaluated per request."""

    def __init__(self, decisions: Sequence[Decision], default: Decision, strategy: str):
        if strategy not in ("priority", "confidence"):
            raise ValueError(f"unknown strategy {strategy!r}")
        self.strategy = strategy
        self.default = default
        self._rules = [(i, d, compile_rule(d.rules)) for i, d in enumerate(decisions) if d.rules is not None]
        self.decisions = tuple(decisions)

    def choose(self, results: Mapping[str, SignalOutcome]) -> Outcome:
        verdicts: list[Verdict] = []
        best = None  # (sort key, decision, confidence)
        for order, decision, tree in self._rules:
            ok, confidences = tree.evaluate(results)
            confidence = (sum(confidences) / len(confidences) if confidences else 1.0) if ok else 0.0
            verdicts.append(Verdict(decision.name, decision.priority, ok, confidence))
            if not ok:
                continue
            if self.strategy == "priority":
                key = (decision.priority, -order)
            else:
                key = (confidence, decision.priority, -order)
            if best is None or key > best[0]:
                best = (key, decision, confidence)
        verdicts.append(Verdict(self.default.name, self.default.priority, best is None,
                                0.0, is_default=True))
        if best is None:
            return Outcome(self.default, 0.0, tuple(verdicts), self.strategy, True)
        return Outcome(best[1], best[2], tuple(verdicts), self.strategy, False)
