"""`feedback:` — how much each kind of quality feedback is believed, and implicit feedback.

    feedback:
      weights: {reask: 0.8, dissatisfied: 1.0, moved_on: 0.3}   # bandits.feedback.FeedbackWeights
      implicit:
        enabled: true        # read follow-up turns as feedback on the answer they follow
        window: 30m          # how long a served answer can be followed up (its index entry's TTL)
        reask_threshold: 0.85
        max_answers_per_user: 64

    feedback:
      judge:                 # a judge model scores a sampled share of answers, in the background
        model: judge-model   # one of the policy's models (its declared price meters the budget)
        sample: 0.1          # share of learning decisions' answers judged
        max_concurrency: 2   # judge calls running at once (more are skipped, never queued)
        max_per_minute: 60   # judge calls started in any minute (optional)
        budget_usd_per_hour: 1.0
        timeout: 10s
      shadow:                # a copy of a sampled request sent to a candidate the bandit did not choose
        sample: 0.05
        max_concurrency: 2
        max_per_minute: 30   # copies started in any minute (optional)
        budget_usd_per_hour: 1.0
        max_request_bytes: 65536
        timeout: 30s

Judged and shadow feedback (`gateway.judging`) never run for a request whose text must not leave
for anyone but its chosen model: PII was found (masked, redacted) or a plugin marked it private.

Implicit feedback is credited to learning decisions only (the answer's pending record, kept for
the decision's `reward.feedback_ttl_s`, must still be there), and an explicit `POST /v1/feedback`
for the same answer wins over it (`bandits.feedback`).
"""

from __future__ import annotations

from pydantic import Field, model_validator

from sigroute.policies.schema.base import Duration, Name, Strict


class FeedbackWeightsSpec(Strict):
    """How far each kind of credit moves learned quality from the decision's default (0: ignored, 1: fully).
    `judge` and `shadow` weigh the judge's verdicts on served answers and on shadow answers."""

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


class JudgeFeedback(Strict):
    """A judge model scores a sampled share of learning decisions' answers in the background."""

    model: Name = Field(..., description="the judge: one of the policy's models")
    sample: float = Field(0.1, ge=0, le=1, description="share of answers judged (0: none)")
    max_concurrency: int = Field(2, ge=1, le=1000, description="judge calls at once; more are skipped")
    max_per_minute: int | None = Field(None, ge=1, description="judge calls started in any minute (more are "
                                       "skipped, counted `rate`); none: only sample, concurrency and budget bound it")
    budget_usd_per_hour: float = Field(1.0, ge=0, description="spend on judge calls in any hour (the judge's price)")
    timeout: Duration = Field(10.0, gt=0, le=600, description="a judge call that takes longer is abandoned")
    max_answer_chars: int = Field(8000, ge=100, le=1_000_000,
                                  description="longer questions or answers are cut to this many characters")


class ShadowTraffic(Strict):
    """A copy of a sampled request goes, in the background, to a candidate the bandit did not choose;
    the judge scores its answer and that candidate is credited (needs `feedback.judge`)."""

    sample: float = Field(0.05, ge=0, le=1, description="share of learning decisions' requests copied")
    max_concurrency: int = Field(2, ge=1, le=1000, description="shadow calls at once; more are skipped")
    max_per_minute: int | None = Field(None, ge=1, description="shadow copies started in any minute (more are "
                                       "skipped, counted `rate`); none: only sample, concurrency and budget bound it")
    budget_usd_per_hour: float = Field(1.0, ge=0, description="spend on shadow calls in any hour")
    max_request_bytes: int = Field(65536, ge=1, description="larger requests are not copied")
    timeout: Duration = Field(30.0, gt=0, le=600, description="a shadow call that takes longer is abandoned")


class Feedback(Strict):
    weights: FeedbackWeightsSpec = FeedbackWeightsSpec()
    implicit: ImplicitFeedback = ImplicitFeedback()
    judge: JudgeFeedback | None = None
    shadow: ShadowTraffic | None = None

    @model_validator(mode="after")
    def _shadow_needs_a_judge(self) -> "Feedback":
        if self.shadow is not None and self.judge is None:
            raise ValueError("feedback.shadow needs feedback.judge: a shadow answer is scored by the judge model")
        return self
