"""Decision logs and offline evaluation of a selection policy on them.

**The log.** A gateway started with `--decision-log PATH` appends one JSON line per request that a
learning decision routed, and one per quality feedback:

    {"type": "decision", "request_id", "at", "tenant", "decision", "algorithm", "schema",
     "candidates": [...], "model": the pick, "answered_by": the model that answered,
     "propensity": the pick's probability, "context": [feature vector], "reward": immediate reward
     [, "source": "shadow", "shadow_of": request id]}
    {"type": "feedback", "request_id", "at", "quality", "credit": reward change, "by", "source"[, "event", "details"]}

No prompt or answer text is written: only the feature vector, which is what a policy decides on.

A shadow observation (`gateway.judging`: a copy of request R sent to a candidate the decision did not
choose) is its own decision event, request id ``R:shadow``, `model` and `answered_by` the shadowed
candidate, `propensity` the probability that this candidate was observed through the shadow channel
(`feedback.shadow.sample` / the number of unchosen candidates), and its judged credit a feedback event
with `source: shadow`. Replay treats it as one more logged (context, arm, reward) with that propensity.

**Replay.** `evaluate(events, selector)` runs a candidate policy over the logged contexts in time
order. For a request the candidate would have routed the same way as the log, the logged reward
(immediate + credited feedback) is what the candidate would have earned, and the candidate learns
from it; other requests are skipped. When the log was collected uniformly at random this is the
unbiased replay method of Li et al. (2011). Otherwise every matched reward is weighted by
1/propensity (inverse propensity scoring), and the self-normalized estimate is reported too.
Requests a fallback answered are left out (their reward belongs to another model than the pick).
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = ["DecisionLog", "LoggedDecision", "read_decision_log", "evaluate"]


class DecisionLog:
    """Appends decision and feedback events to a JSON-lines file (thread-safe, line-buffered)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def write(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self._file.write(line + "\n")

    def decision(self, *, request_id: str, tenant: str, decision: str, algorithm: str, schema: str,
                 candidates: Iterable[str], model: str, answered_by: str, propensity: float,
                 context: np.ndarray, reward: float, usage: dict[str, float | None] | None = None,
                 source: str | None = None, shadow_of: str | None = None) -> None:
        event = {"type": "decision", "request_id": request_id, "at": round(time.time(), 3), "tenant": tenant,
                 "decision": decision, "algorithm": algorithm, "schema": schema,
                 "candidates": list(candidates), "model": model, "answered_by": answered_by,
                 "propensity": round(float(propensity), 6),
                 "context": [round(float(v), 6) for v in context], "reward": round(float(reward), 6)}
        if usage is not None:  # what a `learn: quality` selector scores and learns beside quality
            event["usage"] = usage
        if source is not None:  # "shadow": a background copy sent to an unchosen candidate
            event["source"] = source
            event["shadow_of"] = shadow_of
        self.write(event)

    def feedback(self, *, request_id: str, quality: float, credit: float, by: str | None = None,
                 source: str = "explicit", event: str | None = None, details: dict | None = None) -> None:
        """A rating of an earlier decision; `by` is who sent it (the API key's tenant/hash prefix),
        `source` where it came from (explicit, implicit, judge, shadow), `event` an implicit
        credit's kind (reask, dissatisfied, moved_on) and `details` why (similarity, cue)."""
        entry = {"type": "feedback", "request_id": request_id, "at": round(time.time(), 3),
                 "quality": round(float(quality), 6), "credit": round(float(credit), 6), "by": by, "source": source}
        if event is not None:
            entry["event"] = event
        if details:
            entry["details"] = details
        self.write(entry)

    def close(self) -> None:
        with self._lock:
            self._file.close()


@dataclass
class LoggedDecision:
    request_id: str
    tenant: str
    decision: str
    schema: str
    candidates: tuple[str, ...]
    model: str
    answered_by: str
    propensity: float
    context: np.ndarray
    reward: float  # immediate + credited feedback
    at: float
    usage: dict[str, Any] | None = None  # prompt_tokens, completion_tokens, latency_ms (learn: quality)


def read_decision_log(path: str | Path, decision: str | None = None) -> list[LoggedDecision]:
    """Decision events (with their feedback credits folded in), oldest first. Bad lines raise
    ValueError naming the file and line."""
    decisions: dict[str, LoggedDecision] = {}
    credits: dict[str, float] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
                kind = event["type"]
                if kind == "decision":
                    if decision is not None and event["decision"] != decision:
                        continue
                    decisions[event["request_id"]] = LoggedDecision(
                        event["request_id"], event["tenant"], event["decision"], event["schema"],
                        tuple(event["candidates"]), event["model"], event["answered_by"],
                        float(event["propensity"]), np.asarray(event["context"], dtype=np.float64),
                        float(event["reward"]), float(event["at"]), event.get("usage"))
                elif kind == "feedback":
                    credits[event["request_id"]] = credits.get(event["request_id"], 0.0) + float(event["credit"])
                else:
                    raise ValueError(f"unknown event type '{kind}'")
            except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
                raise ValueError(f"{path}:{number}: not a decision-log event ({exc})") from None
    for request_id, credit in credits.items():
        if request_id in decisions:
            decisions[request_id].reward += credit
    return sorted(decisions.values(), key=lambda d: d.at)


def evaluate(events: list[LoggedDecision], selector: Any, *, learn: bool = True) -> dict[str, Any]:
    """Offline value of `selector` (a `bandits.contextual.ContextualSelector`) on logged events."""
    usable = [e for e in events if e.model == e.answered_by and e.propensity > 0]
    if not usable:
        raise ValueError("the log holds no usable decision (none, or every one was answered by a fallback)")
    schemas = {e.schema for e in usable}
    if schemas != {selector.schema_id}:
        raise ValueError(f"the log's feature schema ({', '.join(sorted(schemas))}) differs from the policy's "
                         f"({selector.schema_id}): its contexts cannot be replayed under these features")
    uniform = all(abs(e.propensity - 1.0 / len(e.candidates)) < 1e-6 for e in usable)
    matched_rewards: list[float] = []
    weighted: list[float] = []  # 1{match}·r/p for every usable event
    weights: list[float] = []
    for e in usable:
        usage = e.usage or {}
        choice = selector.select_vector(e.candidates, e.context, e.tenant, prompt_tokens=usage.get("prompt_tokens"),
                                        dial=usage.get("tradeoff"))
        if choice.model == e.model:
            matched_rewards.append(e.reward)
            weighted.append(e.reward / e.propensity)
            weights.append(1.0 / e.propensity)
            if learn:
                selector.observe(e.tenant, e.model, e.context, e.reward, now=e.at,
                                 completion_tokens=usage.get("completion_tokens"), latency_ms=usage.get("latency_ms"))
        else:
            weighted.append(0.0)
            weights.append(0.0)
    n = len(usable)
    logged_value = float(np.mean([e.reward for e in usable]))
    result: dict[str, Any] = {
        "events": len(events), "usable": n, "matched": len(matched_rewards),
        "method": "replay (uniform logging)" if uniform else "inverse propensity scoring",
        "logged_policy_value": round(logged_value, 6),
    }
    if uniform:
        k = len(matched_rewards)
        value = float(np.mean(matched_rewards)) if k else float("nan")
        stderr = float(np.std(matched_rewards, ddof=1) / math.sqrt(k)) if k > 1 else float("nan")
        result.update(value=round(value, 6), stderr=round(stderr, 6))
    else:
        w = np.asarray(weighted)
        value = float(w.mean())
        total_weight = float(np.sum(weights))
        result.update(value=round(value, 6), stderr=round(float(w.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"), 6),
                      self_normalized_value=round(float(w.sum() / total_weight), 6) if total_weight > 0 else None,
                      max_weight=round(float(max(weights)), 3))
    return result
