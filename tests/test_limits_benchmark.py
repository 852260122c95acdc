"""The replicas' rate-limit benchmark, quick variant, end to end: three real `sigroute serve`
processes on one real redis-server admit one caller's limit once, and the same three with
per-process buckets admit it about three times.

Counts, not speeds: the benchmark reports what the limit allows over the window it actually sent in
(`allowed = burst + limit × span / 60`, the span measured by the load generator itself), and the test
compares the admitted count with that. A slow machine changes the span and so the allowance, never
the comparison."""

from __future__ import annotations

import json

from benchmarks import limits


def test_quick_run_admits_the_limit_once_with_redis_and_about_three_times_without(tmp_path, capsys, redis_url):
    out = tmp_path / "limits.json"
    assert limits.main(["--quick", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads(out.read_text())
    assert summary == result["summary"]
    shared, memory = result["shared"], result["memory"]
    # a connection the busy machine broke is counted, never hidden (and may or may not have been admitted)
    assert shared["errors"] + memory["errors"] <= 0.02 * shared["sent"], (shared, memory)
    assert set(shared["statuses"]) <= {"200", "429"}
    # the caller offered 5x the limit: far more than the limit was refused
    assert shared["sent"] == memory["sent"] >= 4 * shared["allowed"]
    # a bucket cannot give more than it holds plus what refilled; the last requests may reach
    # Redis a little after the load generator sent them (a refill of one or two more)
    allowed = shared["allowed"]
    assert allowed * 0.95 - shared["errors"] <= shared["admitted"] <= allowed * 1.05 + 2, shared
    # each replica on its own bucket admits (about) the whole limit
    assert memory["admitted"] + memory["errors"] >= 2.4 * memory["allowed"], memory
    assert summary["admitted_over_limit"] == shared["admitted_over_limit"]
