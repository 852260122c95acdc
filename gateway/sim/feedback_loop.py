"""The client side of a replay run: ask a gateway a recorded question, grade the answer, send feedback.

A learning decision improves only from feedback. `ask_and_grade` is one turn of that loop, over
HTTP against a real gateway whose models are served by the replay simulator: it sends the question
to `model` (an entrypoint such as ``auto``), checks the letter the answer states against the right
one, prices the answer from the usage the gateway reported, and posts the grade back as
``POST /v1/feedback {request_id, score: 1 | 0}``. The routing benchmark's through-gateway mode
(`benchmarks.routing_gateway`) and the demo tour (`gateway.tour`) both run their streams with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Mapping

import httpx

from sigroute.gateway.sim.server import extract_answer_letter

__all__ = ["FeedbackError", "GradedAnswer", "ask_and_grade", "send_feedback"]


class FeedbackError(RuntimeError):
    """The gateway refused the question or the feedback (the message says which, with its answer);
    `decision` is the decision that refused the question (e.g. a guard's), when the gateway said."""

    def __init__(self, message: str, decision: str | None = None):
        super().__init__(message)
        self.decision = decision


@dataclass(frozen=True)
class GradedAnswer:
    request_id: str
    decision: str
    model: str            # the model that answered (x-sigroute-model)
    correct: float        # 1.0 when the answer states the right letter, else 0.0
    cost_usd: float       # usage × the model's prices (USD per million tokens)
    overhead_ms: float    # x-sigroute-overhead-ms: the gateway's own time
    feedback_sent: bool


async def ask_and_grade(client: httpx.AsyncClient, text: str, right: str,
                        prices: Mapping[str, tuple[float, float]], *, model: str = "auto",
                        feedback: bool = True, feedback_decisions: Collection[str] | None = None) -> GradedAnswer:
    """Send `text` as one user message, grade the answer against the letter `right`, and (unless
    `feedback` is false) report the grade — with `feedback_decisions`, only for answers of those
    decisions (the others have no learner waiting for it). `prices` maps each model to (input,
    output) USD per million tokens. Raises `FeedbackError` when the gateway answers either call
    with an error."""
    r = await client.post("/v1/chat/completions", json={"model": model,
                                                       "messages": [{"role": "user", "content": text}]})
    if r.status_code != 200:
        raise FeedbackError(f"the gateway answered {r.status_code}: {r.text[:300]}",
                            r.headers.get("x-sigroute-decision"))
    body = r.json()
    answered_by = r.headers.get("x-sigroute-model", body.get("model", "?"))
    letter = extract_answer_letter(body["choices"][0]["message"]["content"])
    correct = 1.0 if letter == right else 0.0
    usage = body.get("usage") or {}
    price_in, price_out = prices.get(answered_by, (0.0, 0.0))
    cost = (usage.get("prompt_tokens", 0) * price_in + usage.get("completion_tokens", 0) * price_out) / 1e6
    request_id = r.headers["x-sigroute-request-id"]
    decision = r.headers.get("x-sigroute-decision", "?")
    feedback = feedback and (feedback_decisions is None or decision in feedback_decisions)
    if feedback:
        await send_feedback(client, request_id, correct)
    return GradedAnswer(request_id, decision, answered_by, correct, cost,
                        float(r.headers.get("x-sigroute-overhead-ms", "nan")), feedback)


async def send_feedback(client: httpx.AsyncClient, request_id: str, score: float) -> None:
    """``POST /v1/feedback {request_id, score}``; raises `FeedbackError` unless the gateway took it."""
    fb = await client.post("/v1/feedback", json={"request_id": request_id, "score": score})
    if fb.status_code != 200:
        raise FeedbackError(f"feedback answered {fb.status_code}: {fb.text[:300]}")
