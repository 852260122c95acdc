"""Where quality feedback comes from, and how much each kind is believed.

Every credit a learner receives about an answer carries its *source*:

    explicit   a caller's POST /v1/feedback (score, thumbs, label)
    judge      a judge model's verdict on a sampled answer
    implicit   what the next turn of the conversation says: a re-ask, a dissatisfaction cue
               ("that's wrong", "try again"), or moving on to something else
    shadow     a judged answer of a candidate the router did not choose (a background copy)

and a *weight* in [0, 1]: how far the credit moves the learned quality from the decision's
`default_quality` (what was learned at once, before any feedback) towards the credit's own quality:

    learned quality = default + weight · (quality − default)

so a weight of 1 is believed fully, and a weakly positive signal (the user moved on: probably, not
certainly, a good answer) moves the estimate a little. When one answer receives several credits,
the most trusted source wins — explicit over judge over implicit — and a weaker one arriving later
changes nothing (`stronger`). A shadow credit is about another arm, so it is its own observation.

The default weights are fixed a priori (not fitted to any benchmark): a re-ask means the answer
was probably wrong (0.8 towards quality 0), an explicit cue of dissatisfaction more surely (1.0),
moving on is weak evidence of a good answer (0.3 towards quality 1), a judge agrees with the truth
often but not always (0.9).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SOURCES", "IMPLICIT_EVENTS", "FeedbackWeights", "Credit", "implicit_credit", "judge_credit",
           "explicit_credit", "learned_quality", "stronger"]

SOURCES = ("explicit", "judge", "implicit", "shadow")
PRECEDENCE = {"explicit": 3, "judge": 2, "shadow": 2, "implicit": 1}
IMPLICIT_EVENTS = ("reask", "dissatisfied", "moved_on")


@dataclass(frozen=True)
class FeedbackWeights:
    """How much each kind of credit is believed (0: ignored, 1: fully)."""

    explicit: float = 1.0
    judge: float = 0.9
    shadow: float = 0.9
    reask: float = 0.8
    dissatisfied: float = 1.0
    moved_on: float = 0.3

    def __post_init__(self) -> None:
        for name in ("explicit", "judge", "shadow", "reask", "dissatisfied", "moved_on"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"feedback weight '{name}' must be between 0 and 1, not {value}")


@dataclass(frozen=True, slots=True)
class Credit:
    source: str       # one of SOURCES
    quality: float    # in [0, 1]
    weight: float     # in [0, 1]
    event: str | None = None   # implicit: reask | dissatisfied | moved_on


def explicit_credit(quality: float, weights: FeedbackWeights = FeedbackWeights()) -> Credit:
    return Credit("explicit", float(quality), weights.explicit)


def judge_credit(quality: float, weights: FeedbackWeights = FeedbackWeights(), *, shadow: bool = False) -> Credit:
    return Credit("shadow" if shadow else "judge", float(quality), weights.shadow if shadow else weights.judge)


def implicit_credit(event: str, weights: FeedbackWeights = FeedbackWeights()) -> Credit:
    """A follow-up turn's verdict on the answer before it: a re-ask or a dissatisfaction cue says
    it was bad (quality 0), moving on weakly says it was good (quality 1)."""
    if event not in IMPLICIT_EVENTS:
        raise ValueError(f"unknown implicit feedback event '{event}'; expected one of {', '.join(IMPLICIT_EVENTS)}")
    return Credit("implicit", 1.0 if event == "moved_on" else 0.0, getattr(weights, event), event)


def learned_quality(default: float, credit: Credit | None) -> float:
    """The quality a learner ends up with for an answer: `default` moved by the credit's weight."""
    if credit is None:
        return float(default)
    return float(default) + credit.weight * (credit.quality - float(default))


def stronger(current: Credit | None, new: Credit) -> bool:
    """Whether `new` should replace `current` for the same answer (a more trusted source, or the
    same source correcting itself)."""
    return current is None or PRECEDENCE[new.source] >= PRECEDENCE[current.source]
