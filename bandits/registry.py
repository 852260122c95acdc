"""Algorithm name (as written in a policy) -> selector class, and building one for a decision.

A plain dict, like every other `type:` mapping in sigroute. It must name a selector for every
algorithm the policy schema accepts; that is checked when this module is imported, so a new
algorithm added to `policies.schema.ALGORITHM_OPTIONS` without a selector fails loudly.
"""

from __future__ import annotations

from typing import Mapping

from typing import Any

from sigroute.bandits.base import Selector
from sigroute.bandits.contextual import CONTEXTUAL_SELECTORS
from sigroute.bandits.selectors import (
    CheapestSelector,
    FastestSelector,
    RoundRobinSelector,
    StaticSelector,
    WeightedSelector,
)
from sigroute.policies.schema import ALGORITHM_OPTIONS, Algorithm, ModelSpec

SELECTORS: dict[str, type[Selector]] = {
    "static": StaticSelector,
    "weighted": WeightedSelector,
    "round_robin": RoundRobinSelector,
    "cheapest": CheapestSelector,
    "fastest": FastestSelector,
    **CONTEXTUAL_SELECTORS,
}

_missing = sorted(set(ALGORITHM_OPTIONS) - set(SELECTORS))
assert not _missing, f"bandits.registry.SELECTORS has no selector for algorithm(s): {', '.join(_missing)}"
_mismatched = sorted(
    name for name, cls in SELECTORS.items()
    if name in ALGORITHM_OPTIONS and getattr(cls, "options_type", ALGORITHM_OPTIONS[name]) is not ALGORITHM_OPTIONS[name]
)
assert not _mismatched, f"selector options do not match policies.schema.ALGORITHM_OPTIONS for: {', '.join(_mismatched)}"
del _missing, _mismatched


def build_selector(algorithm: Algorithm, models: Mapping[str, ModelSpec], *, resources: Any = None,
                   decision: str = "decision") -> Selector:
    """A new selector for a decision's `algorithm` over its candidate `models` (name -> spec).

    Contextual algorithms also get the policy's signal `resources` (encoder, heads) for their
    features and the decision's name, which is part of their state key."""
    try:
        cls = SELECTORS[algorithm.name]
    except KeyError:
        raise ValueError(
            f"unknown algorithm '{algorithm.name}'; known: {', '.join(sorted(SELECTORS))}"
        ) from None
    if name_is_contextual(algorithm.name):
        return cls(algorithm.options, models, resources=resources, decision=decision)
    return cls(algorithm.options, models)


def name_is_contextual(name: str) -> bool:
    return name in CONTEXTUAL_SELECTORS
