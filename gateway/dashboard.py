"""The operator's dashboard: `GET /ui` (a page that ships in the package) and the one JSON document it
polls, `GET /v1/admin/dashboard`, which other tools can read too.

Who may see it: the data endpoint needs the admin role (`auth.admin_roles`); with no `auth` section
it is refused unless `admin` is listed in `server.open_without_auth`. The page itself holds no data:
with auth on it asks for an admin key (kept in the browser tab's session storage and sent as
`Authorization: Bearer`); with auth off and admin not opened, `/ui` is refused as well.

The document (`dashboard_document`), every number computed at the moment it is asked:

    object, generated_at          "dashboard", unix time
    policy                        loaded_at, path, decisions (name, priority, models, algorithm,
                                  cache on/off, plugins), models (provider, price); read-only
    totals, traffic               requests and errors over the window; requests per bucket by decision
    decisions                     per decision: requests, model mix, error and fallback rates,
                                  p50/p95 latency, cost (USD), cache hits
    learning                      per learning decision, per arm: learned outcomes, requests and
                                  share, estimated reward with its band; the shares over time
    cache                         per category: lookups, hits, hit rate (window); entries and false
                                  hits (since start, from the metrics)
    upstreams                     per model: breaker state, calls in flight, failed attempts
    recent                        the latest requests: id, time, api, decision, model, cache,
                                  status, latency, plugins — never prompt or answer text
(`gateway.activity` computes the traffic parts from its per-request records.)
"""

from __future__ import annotations

import time
from importlib import resources
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sigroute.gateway.pipeline import Pipeline

__all__ = ["dashboard_document", "ui_asset", "UI_ASSETS"]

UI_ASSETS = {"index.html": "text/html; charset=utf-8", "dashboard.js": "text/javascript; charset=utf-8",
             "dashboard.css": "text/css; charset=utf-8"}


def ui_asset(name: str) -> bytes:
    """A file of the page, from the installed package (`gateway/ui/`)."""
    return resources.files("sigroute.gateway").joinpath("ui", name).read_bytes()


def _counter_by(metric, label: str) -> dict[str, float]:
    """A labelled counter's (or gauge's) current values summed per value of one label."""
    out: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            key = sample.labels.get(label)
            if key is not None:
                out[key] = out.get(key, 0.0) + sample.value
    return out


def dashboard_document(pipeline: "Pipeline", loaded_at: float, policy_path: str | None) -> dict[str, Any]:
    policy = pipeline.policy
    learning = {name: selector.observations() for name, selector in pipeline.selectors.items()
                if selector.learns_from_feedback or selector.observations()}
    document: dict[str, Any] = {"object": "dashboard", "generated_at": round(time.time(), 3)}
    document["policy"] = {
        "loaded_at": loaded_at, "path": policy_path,
        "decisions": [{"name": d.name, "priority": d.priority, "models": list(d.models),
                       "algorithm": d.algorithm.name, "cache": d.cache is not None,
                       "plugins": pipeline.plugins.names(d.name)} for d in policy.decisions],
        "models": {name: {"provider": spec.provider, "price": {"input": spec.price.input, "output": spec.price.output}}
                   for name, spec in policy.models.items()}}
    document.update(pipeline.activity.summary(learning))
    metrics = pipeline.metrics
    entries = _counter_by(metrics.cache_entries, "category")
    false_hits = _counter_by(metrics.cache_false_hits, "category")
    listed = {row["category"] for row in document["cache"]}
    for row in document["cache"]:
        row["entries"] = int(entries.get(row["category"], 0))
        row["false_hits"] = int(false_hits.get(row["category"], 0))
    for category in sorted((set(entries) | set(false_hits)) - listed):
        document["cache"].append({"category": category, "lookups": 0, "hits": 0, "hit_rate": 0.0,
                                  "entries": int(entries.get(category, 0)),
                                  "false_hits": int(false_hits.get(category, 0))})
    errors = _counter_by(metrics.upstream_errors, "model")
    in_flight = pipeline.upstreams.load.in_flight
    document["upstreams"] = [{"model": model, "breaker": state, "in_flight": in_flight.get(model, 0),
                              "failed_attempts": int(errors.get(model, 0))}
                             for model, state in pipeline.upstreams.breaker_states().items()]
    return document
