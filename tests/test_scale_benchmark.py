"""The scale benchmark, quick variant, end to end: real `sigroute serve` replicas on a real
redis-server and on a real local 3-primary Redis Cluster, open-loop trace traffic with feedback.

Counts and consistency, not speeds: every run served requests and cost Redis a finite, positive
number of commands and bytes per request; the cluster topology ran on three primaries; replicas
converged on the same learned arm estimates after their last flush; an answer cached through one
replica was a hit on another; the shared rate limit admitted about once the limit."""

from __future__ import annotations

import json
import math

from benchmarks import scale


def azure_like_trace(path, n: int = 400) -> None:
    """A trace in the Azure files' columns (arrivals 0.1 s apart, varied sizes), so the test needs
    nothing from ../shared/data."""
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    lines += [f"2024-01-01 12:{i // 600:02d}:{(i % 600) / 10:09.6f},{100 + (i * 37) % 900},{10 + (i * 13) % 120}"
              for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def test_quick_scale_run_reports_per_request_redis_cost_and_shared_state(tmp_path, capsys, redis_url):
    out = tmp_path / "scale.json"
    trace = tmp_path / "trace.csv"
    azure_like_trace(trace)
    assert scale.main(["--quick", "--quiet", "--trace", str(trace), "--json", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    result = json.loads(out.read_text())
    assert summary == result["summary"]
    assert set(summary["single"]) == {"1", "2"} and set(summary["cluster"]) == {"2"}
    for topology in ("single", "cluster"):
        for n, entry in summary[topology].items():
            assert set(entry) >= {"rps", "added_p99_ms", "redis_cmds_per_request", "redis_bytes_per_request"}
            assert entry["rps"] > 0 and entry["added_p99_ms"] > 0
            assert math.isfinite(entry["redis_cmds_per_request"]) and entry["redis_cmds_per_request"] > 1
            assert math.isfinite(entry["redis_bytes_per_request"]) and entry["redis_bytes_per_request"] > 100
            run = result["runs"][topology][n]
            # every key family was exercised: scripts (rate limit, learned sums, pending feedback,
            # cache) and the cache's event stream
            assert run["chat_ok"] > 0.95 * run["requests"], run
            assert run["cached"] > 0 and run["feedback_recorded"] > 0, run
            assert {"evalsha", "xadd"} <= set(run["redis_cmds_per_request_by_command"]), run
            assert run["redis_nodes"] == (3 if topology == "cluster" else 1)
            assert run["background_cmds_per_replica_s"] > 0
    # the cluster spread the load: no primary did all of it
    assert result["runs"]["cluster"]["2"]["hottest_node_cmds_share"] < 0.9
    assert summary["cache_hit_shared"] is True
    assert all(run["cache_hit_shared"] for runs in result["runs"].values() for run in runs.values())
    # after the last flush and reload the replicas hold the same learned state
    assert summary["arm_estimate_max_diff"] <= 1e-6
    assert all(run["observations_max_diff"] == 0 for runs in result["runs"].values() for run in runs.values())
    # three replicas at 5x one caller's limit, through one Redis: about the limit, not three times it
    assert 0.85 <= summary["rate_limit_admitted_over_limit"] <= 1.1
    assert summary["errors"] <= 0.01 * sum(r["requests"] for runs in result["runs"].values() for r in runs.values())
