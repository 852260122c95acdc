"""The Grafana dashboard (deploy/grafana/sigroute-dashboard.json) and the names of the metrics it reads.

The dashboard must load in Grafana (its JSON model: schemaVersion, a Prometheus datasource
variable, panels with unique ids, a grid position and targets), and every PromQL expression in it
must name only series a real gateway exports: a gateway is started, sent a few requests, and its
/metrics is read. Every exported name must follow Prometheus' conventions.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import base_policy

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "sigroute-dashboard.json"

# what a PromQL expression may contain besides metric names
PROMQL_WORDS = {
    # aggregations and their modifiers
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile", "count_values", "group",
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    # functions
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "clamp_min", "clamp_max", "abs",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "label_replace", "label_join", "vector", "scalar", "time", "absent", "changes", "resets", "round", "sort",
    "sort_desc", "le", "inf", "nan",
}
# Grafana's variables, replaced by what they stand for before an expression is read
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$instance": ".*"}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict]) -> list[dict]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(all_panels(panel.get("panels", [])))   # a collapsed row holds its panels
    return out


def expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of the dashboard, plus the variables' queries."""
    found = [(p["title"], t["expr"]) for p in all_panels(dashboard()["panels"]) for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable["type"] == "query" and query:
            found.append((f"variable {variable['name']}", query))
    return found


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (also inside label_values(...))."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)                       # string literals
    expr = re.sub(r"\{[^{}]*\}", "", expr)                                   # label matchers
    expr = re.sub(r"\[[^\[\]]*\]", "", expr)                                 # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", "", expr)   # label lists
    m = re.match(r"\s*label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,", expr)
    if m:
        return {m.group(1)}
    words = set(re.findall(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr))
    return {w for w in words if w.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d+e", w)}


def test_metric_name_extraction_reads_promql():
    assert metric_names('histogram_quantile(0.95, sum by (le, decision) (rate(sigroute_request_seconds_bucket'
                        '{instance=~"$instance",x="a b"}[$__rate_interval])))') == {"sigroute_request_seconds_bucket"}
    assert metric_names('sum by (a) (rate(x_total[1m])) / ignoring(model) group_left sum(y) > 1e-9') == {
        "x_total", "y"}
    assert metric_names("label_values(sigroute_requests_total, instance)") == {"sigroute_requests_total"}


def test_the_dashboard_is_a_grafana_dashboard():
    board = dashboard()
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    assert board["title"] and board["uid"] and len(board["uid"]) <= 40
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = all_panels(board["panels"])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid) and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["targets"], f"panel {panel['title']!r} has no queries"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["datasource"]["uid"] == "${datasource}", panel["title"]
    # what the issue asks the board to show
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("by decision", "by model", "by api", "error rate", "latency", "overhead", "first token",
                  "cache hit rate", "breaker", "fallbacks", "rate limited", "learning store", "feedback"):
        assert topic in titles, f"no panel about {topic!r}"


@pytest.fixture(scope="module")
def exported(sim_server):
    """The TYPE lines of a real gateway's /metrics after a few requests (whole, streamed, cached,
    failed): {series name: type}."""
    from tests.conftest import Gateway, Sim
    from sigroute.gateway.app import create_app
    from sigroute.gateway.http_server import server_options
    from sigroute.gateway.serving import ServerThread
    from sigroute.policies.schema import Policy

    sim = Sim(sim_server)
    policy = Policy.model_validate(base_policy(sim, decisions=[
        {"name": "default", "models": ["alpha", "beta"], "cache": {"mode": "exact"}}]))
    with ServerThread(create_app(policy), **server_options(policy)) as server:
        gw = Gateway(server, None)
        assert gw.chat("hello").status_code == 200
        assert gw.chat("hello").headers["x-sigroute-cache"] == "hit-exact"
        assert gw.chat("stream me", stream=True).status_code == 200
        assert gw.chat("hi", model="no-such-model").status_code == 404
        text = gw.http.get("/metrics").text
        gw.http.close()
    sim.http.close()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert "sigroute_requests_total" in types
    return types


def series_names(types: dict[str, str]) -> set[str]:
    """Every series name a query may read: a counter's `_total`, a histogram's `_bucket`, `_sum`, `_count`."""
    names = set()
    for name, kind in types.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def test_every_query_names_a_metric_the_gateway_exports(exported):
    available = series_names(exported)
    for title, expr in expressions():
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        unknown = names - available
        assert not unknown, f"panel {title!r} reads {sorted(unknown)}, which the gateway does not export"


def test_every_exported_metric_follows_prometheus_naming(exported):
    created = {n for n, kind in exported.items() if kind == "gauge" and n.endswith("_created")
               and (n[: -len("_created")] + "_total" in exported or n[: -len("_created")] in exported)}
    for name, kind in exported.items():
        if name in created:   # prometheus_client's creation timestamps of counters and histograms
            continue
        assert re.fullmatch(r"sigroute_[a-z0-9]+(_[a-z0-9]+)*", name), f"{name}: snake_case with the sigroute_ prefix"
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{kind} {name} must not end in _total"
        if kind == "histogram":
            assert name.endswith(("_seconds", "_bytes")), f"histogram {name} must name its unit as a suffix"
        words = name.split("_")
        for unit in ("ms", "milliseconds", "microseconds", "minutes", "hours", "kb", "mb", "kilobytes", "megabytes"):
            assert unit not in words, f"{name}: use base units (seconds, bytes)"
        for unit in ("seconds", "bytes"):
            if unit in words:
                assert name.endswith((f"_{unit}", f"_{unit}_total")), f"{name}: the unit is a suffix"
