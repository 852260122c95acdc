"""The replicas' rate-limit benchmark, quick variant, end to end: three real `sigroute serve`
processes on one real redis-server admit one caller's request limit and token limit once, and the
same three with per-process buckets admit each about three times.

Counts, not speeds: the benchmark reports what a limit allows over the window the caller actually
sent in (`allowed = burst + limit × span / 60`, the span measured by the load generator itself), and
the test compares the admitted count (requests, or tokens really used) with that. A slow machine
changes the span and so the allowance, never the comparison."""

from __future__ import annotations

import json

from benchmarks import limits


def test_quick_run_admits_each_limit_once_with_redis_and_about_three_times_without(tmp_path, capsys, redis_url):
    out = tmp_path / "limits.json"
    assert limits.main(["--quick", "--duration-s", "10", "--quiet", "--json", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads(out.read_text())
    assert summary == result["summary"]
    unit = {"requests": 1, "tokens": limits.reserved_per_request()}
    for kind in ("requests", "tokens"):
        shared, memory = result[kind]["shared"], result[kind]["memory"]
        # a connection the busy machine broke is counted, never hidden (it may or may not have been admitted)
        assert shared["errors"] + memory["errors"] <= 0.02 * shared["sent"], (kind, shared, memory)
        assert set(shared["statuses"]) <= {"200", "429"}, shared
        # the caller offered 5x the limit: most requests were refused (fewer under the token limit,
        # where each admitted request gives back what it reserved beyond what it used)
        assert shared["sent"] == memory["sent"] and shared["refused"] >= 2 * shared["statuses"].get("200", 0)
        # a bucket cannot give more than it holds plus what refilled; the last requests may reach
        # Redis a little after the load generator sent them (a refill of one or two more), and a
        # token reservation is settled to the tokens really used after it was admitted
        allowed, admitted, slack = shared["allowed"], shared["admitted"], unit[kind]
        assert allowed * 0.95 - shared["errors"] * slack <= admitted <= allowed * 1.05 + 2 * slack, (kind, shared)
        # each replica on its own bucket admits (about) the whole limit
        assert memory["admitted"] + memory["errors"] * slack >= 2.4 * memory["allowed"], (kind, memory)
    assert summary["admitted_over_limit"] == result["requests"]["shared"]["admitted_over_limit"]
    assert summary["tokens_admitted_over_limit"] == result["tokens"]["shared"]["admitted_over_limit"]
