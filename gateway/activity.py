"""What the gateway has been doing lately, for the operator's dashboard (`/ui`, `GET /v1/admin/dashboard`).

`Activity` keeps one small record per answered or failed request — never its prompt or answer —
for the last `window_s` seconds (at most `max_records` of them), app-wide, so it survives policy
reloads. Everything the dashboard shows about traffic is computed from those records when asked
(a few thousand records: well under a millisecond per refresh), so there are no running
aggregates to drift or to keep consistent across reloads:

- requests per `bucket_s` seconds over the window, by decision;
- per decision: requests, model mix, error rate, fallback rate, p50/p95 latency, cost in USD;
- per learning decision, for each arm: its learned-outcome count (from the selector), its share
  of the decision's traffic over time, and its estimated reward with a confidence band averaged
  over the contexts of its recent requests (LinUCB: mean ± the exploration bonus; Thompson: mean
  ± the distance of the draw);
- per cache category: lookups, hits, hit rate (sizes and false hits come from the metrics);
- the most recent requests, newest first.

The record is made where the request's outcome is counted (`gateway.answering`, and the pipeline
for requests that fail), so the dashboard and `/metrics` agree.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

__all__ = ["RequestRecord", "Activity", "percentile"]


@dataclass(slots=True)
class RequestRecord:
    at: float                    # unix time the answer was counted
    request_id: str
    api: str                     # chat.completions, messages, responses
    entrypoint: str
    decision: str
    model: str                   # the model that answered; "cache" or "none" (a plugin answered)
    status: str                  # "200", "stream_broken", "client_disconnected", "502", ...
    latency_ms: float
    cache: str | None = None     # hit_exact, hit_semantic, coalesced; None: not from the cache
    category: str | None = None  # the cache category, when the decision uses the cache
    fallbacks: int = 0           # failed attempts before the one that answered
    cost_usd: float | None = None
    plugins: list[str] = field(default_factory=list)            # "plugin:action"
    arms: dict[str, tuple[float, float]] | None = None           # learning: model -> (estimate, band)

    @property
    def ok(self) -> bool:
        return self.status == "200"


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) of `values` by linear interpolation; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Activity:
    def __init__(self, window_s: float = 600.0, max_records: int = 20_000, bucket_s: float = 10.0,
                 clock=time.time):
        self.window_s = float(window_s)
        self.bucket_s = float(bucket_s)
        self.clock = clock
        self._records: collections.deque[RequestRecord] = collections.deque(maxlen=max_records)
        self._lock = threading.Lock()   # records arrive on the loop; snapshots may be taken from a thread

    def record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def recent(self, now: float | None = None) -> list[RequestRecord]:
        now = self.clock() if now is None else now
        since = now - self.window_s
        with self._lock:
            return [r for r in self._records if r.at >= since]

    # -------------------------------------------------------------------------------------------
    def summary(self, learning: Mapping[str, Mapping[str, float]] | None = None, *, recent: int = 50,
                now: float | None = None) -> dict[str, Any]:
        """Traffic, decisions, learning arms, cache and recent requests over the window.
        `learning`: decision -> {arm: learned-outcome count} for each learning decision."""
        now = self.clock() if now is None else now
        records = self.recent(now)
        start = now - self.window_s
        buckets = int(math.ceil(self.window_s / self.bucket_s))
        series = [{"t": round(start + i * self.bucket_s, 3), "requests": 0, "errors": 0, "by_decision": {}}
                  for i in range(buckets)]
        by_decision: dict[str, list[RequestRecord]] = collections.defaultdict(list)
        for r in records:
            slot = series[min(buckets - 1, int((r.at - start) // self.bucket_s))]
            slot["requests"] += 1
            slot["errors"] += not r.ok
            slot["by_decision"][r.decision] = slot["by_decision"].get(r.decision, 0) + 1
            by_decision[r.decision].append(r)
        last_minute = [r for r in records if r.at >= now - 60.0]
        return {
            "window_s": self.window_s,
            "bucket_s": self.bucket_s,
            "totals": {"requests": len(records), "errors": sum(not r.ok for r in records),
                       "requests_per_s_last_minute": round(len(last_minute) / 60.0, 4)},
            "traffic": series,
            "decisions": [self._decision(name, rs) for name, rs in sorted(by_decision.items())],
            "learning": [self._arms(name, by_decision.get(name, []), counts, start)
                         for name, counts in sorted((learning or {}).items())],
            "cache": self._cache(records),
            "recent": [self._public(r) for r in reversed(records[-recent:])],
        }

    @staticmethod
    def _decision(name: str, records: list[RequestRecord]) -> dict[str, Any]:
        latencies = [r.latency_ms for r in records if r.ok]
        models = collections.Counter(r.model for r in records)
        costs = [r.cost_usd for r in records if r.cost_usd is not None]
        p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
        return {"decision": name, "requests": len(records),
                "models": dict(models.most_common()),
                "error_rate": round(sum(not r.ok for r in records) / len(records), 4),
                "fallback_rate": round(sum(r.fallbacks > 0 for r in records) / len(records), 4),
                "cache_hits": sum(r.cache is not None for r in records),
                "latency_ms": {"p50": None if p50 is None else round(p50, 3),
                               "p95": None if p95 is None else round(p95, 3)},
                "cost_usd": round(sum(costs), 8) if costs else 0.0}

    def _arms(self, name: str, records: list[RequestRecord], counts: Mapping[str, float],
              start: float) -> dict[str, Any]:
        chosen = [r for r in records if r.cache is None and r.model not in ("none", "cache")]
        estimates: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        for r in records:
            for arm, pair in (r.arms or {}).items():
                estimates[arm].append(pair)
        share = collections.Counter(r.model for r in chosen)
        arms = []
        for arm in sorted(set(counts) | set(share) | set(estimates)):
            pairs = estimates.get(arm, [])
            mean = sum(p[0] for p in pairs) / len(pairs) if pairs else None
            band = sum(p[1] for p in pairs) / len(pairs) if pairs else None
            arms.append({"model": arm, "observations": round(float(counts.get(arm, 0.0)), 3),
                         "requests": share.get(arm, 0),
                         "share": round(share.get(arm, 0) / len(chosen), 4) if chosen else 0.0,
                         "estimate": None if mean is None else round(mean, 5),
                         "low": None if mean is None else round(mean - band, 5),
                         "high": None if mean is None else round(mean + band, 5)})
        # the share of each arm per bucket: how the bandit's preference moves over time
        over_time = []
        per_bucket: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
        for r in chosen:
            per_bucket[int((r.at - start) // self.bucket_s)][r.model] += 1
        for index in sorted(per_bucket):
            counter = per_bucket[index]
            total = sum(counter.values())
            over_time.append({"t": round(start + index * self.bucket_s, 3),
                              "shares": {m: round(n / total, 4) for m, n in counter.items()}})
        return {"decision": name, "arms": arms, "share_over_time": over_time}

    @staticmethod
    def _cache(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
        per: dict[str, list[int]] = {}
        for r in records:
            if r.category is None:
                continue
            lookups_hits = per.setdefault(r.category, [0, 0])
            lookups_hits[0] += 1
            lookups_hits[1] += r.cache is not None
        return [{"category": c, "lookups": n, "hits": h, "hit_rate": round(h / n, 4)}
                for c, (n, h) in sorted(per.items())]

    @staticmethod
    def _public(record: RequestRecord) -> dict[str, Any]:
        out = asdict(record)
        out.pop("arms")
        out["latency_ms"] = round(record.latency_ms, 3)
        return out
