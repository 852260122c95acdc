"""`feedback:` — how much each kind of quality feedback is believed, and implicit feedback.

    feedback:
      weights: {reask: 0.8, dissatisfied: 1.0, moved_on: 0.3}   # bandits.feedback.FeedbackWeights
      implicit:
        enabled: true        # read follow-up turns as feedback on the answer they follow
        window: 30m          # how long a served answer can be followed up (its index entry's TTL)
        reask_threshold: 0.85
        max_answers_per_user: 64

Implicit feedback is credited to learning decisions only (the answer's pending record, kept for
the decision's `reward.feedback_ttl_s`, must still be there), and an explicit `POST /v1/feedback`
for the same answer wins over it (`bandits.feedback`).
"""

from __future__ import annotations

from pydantic import Field

from sigroute.policies.schema.base import Duration, Strict


class FeedbackWeightsSpec(Strict):
    """How far each kind of credit moves learned quality from the decision's default (0: ignored, 1: fully).
    `judge` and `shadow` are read by judged and shadow feedback (the routing benchmark's simulation today)."""

    explicit: float = Field(1.0, ge=0, le=1)
    judge: float = Field(0.9, ge=0, le=1)
    shadow: float = Field(0.9, ge=0, le=1)
    reask: float = Field(0.8, ge=0, le=1, description="a re-ask: the answer was probably wrong")
    dissatisfied: float = Field(1.0, ge=0, le=1, description="a dissatisfaction cue: the answer was wrong")
    moved_on: float = Field(0.3, ge=0, le=1, description="moving on: weak evidence of a good answer")


class ImplicitFeedback(Strict):
    """Follow-up turns read as feedback on the answer they follow."""

    enabled: bool = False
    window: Duration = Field(1800.0, gt=0, le=7 * 24 * 3600,
                             description="how long after it was served an answer can be followed up")
    reask_threshold: float = Field(0.85, ge=0.5, le=1.0,
                                   description="cosine of the new and previous user turn from which it is a re-ask")
    max_answers_per_user: int = Field(64, ge=1, le=10_000,
                                      description="served answers remembered per tenant and user (oldest go first)")
    max_users: int = Field(100_000, ge=1, description="users remembered in memory (least recent go first)")
    extra_cues: tuple[str, ...] = Field((), description="more dissatisfaction phrases, besides the built-in ones")


class Feedback(Strict):
    weights: FeedbackWeightsSpec = FeedbackWeightsSpec()
    implicit: ImplicitFeedback = ImplicitFeedback()
