"""The caller's cost/quality dial: how much one request cares about cost against quality.

A request may carry a dial between 0 and 1 (header ``x-sigroute-tradeoff``, or the chat body's
private ``{"sigroute": {"tradeoff": ...}}`` object, which the gateway removes before the upstream
call): 0 = quality only, 1 = the cheapest model that can answer; the named levels are
``quality`` = 0, ``balanced`` = 0.5 and ``cost`` = 1.

A learning decision with ``learn: quality`` honours it at selection: its estimator predicts
quality alone and the cost term is computed from prices at selection (`bandits.contextual.known_terms`),
so the request's dial only changes the cost weight of that known term and one learner serves every
preference. The dial d becomes the cost weight

    cost = quality · d / (1 − d)        (capped at quality · MAX_COST_RATIO)

i.e. the cost weight's ratio to the quality weight is d/(1−d): 0 → cost ignored, 0.25 → a third of
quality, 0.5 (balanced) → as much as quality, 0.75 → three times quality, 1 → MAX_COST_RATIO times
(the cheapest candidate wins unless two cost the same). Latency and energy keep the policy's weights.
What the learner records is unchanged (quality only), whatever the dial. The decision log keeps an
applied dial (``usage.tradeoff``) so that offline replay (`bandits.replay`) scores the pick as served.

A ``learn: reward`` decision ignores the dial: its estimator learns a reward that already blends
the policy's fixed cost weight, so a per-request weight could only be honoured by making the dial a
feature and relearning (not done here). Non-learning algorithms ignore it too (``cheapest``
already picks the cheapest model; the others do not weigh cost). The gateway says which in the
response header ``x-sigroute-tradeoff: applied; weight=W; dial=D`` or ``ignored; reason=...``.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["TRADEOFF_HEADER", "LEVELS", "MAX_COST_RATIO", "parse_dial", "cost_weight", "applied", "ignored"]

TRADEOFF_HEADER = "x-sigroute-tradeoff"
LEVELS = {"quality": 0.0, "balanced": 0.5, "cost": 1.0}
MAX_COST_RATIO = 1000.0   # the cost weight at dial 1, relative to the quality weight


def parse_dial(value: Any) -> float:
    """The dial in [0, 1] from a number or a named level; ValueError says what is accepted."""
    accepted = "a number from 0 (quality only) to 1 (cheapest) or one of quality, balanced, cost"
    if isinstance(value, str):
        text = value.strip().lower()
        if text in LEVELS:
            return LEVELS[text]
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not {accepted}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(f"{value!r} is not {accepted}")
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{value!r} is outside 0..1; expected {accepted}")
    return number


def cost_weight(quality_weight: float, dial: float) -> float:
    """The cost weight a request with `dial` is scored with (see the module docstring)."""
    if dial >= 1.0:
        return quality_weight * MAX_COST_RATIO
    return quality_weight * min(MAX_COST_RATIO, dial / (1.0 - dial))


def applied(weight: float, dial: float) -> str:
    """The response header's value when the dial set the cost weight."""
    return f"applied; weight={weight:.6g}; dial={dial:.6g}"


def ignored(reason: str) -> str:
    """The response header's value when the decision could not honour the dial."""
    return f"ignored; reason={reason}"
