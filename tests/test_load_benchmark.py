"""The trace-replay load benchmark runs end to end on a small invented trace (real gateway, real
simulator, real Redis for the replica run) and reports what the issue asks for."""

from __future__ import annotations

import datetime
import json
import random

from benchmarks import load


def write_trace(path, n=240, rate=5.0):
    rng = random.Random(0)
    start = datetime.datetime(2024, 1, 1, 12, 0, 0)
    t, rows = 0.0, ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for _ in range(n):
        t += rng.expovariate(rate)
        stamp = (start + datetime.timedelta(seconds=t)).strftime("%Y-%m-%d %H:%M:%S.%f") + "0"
        rows.append(f"{stamp},{rng.randint(50, 2000)},{rng.randint(5, 200)}")
    path.write_text("\n".join(rows) + "\n")


def test_trace_cursor_loops_and_restarts_offsets(tmp_path):
    write_trace(tmp_path / "t.csv", n=10)
    trace = load.load_trace(str(tmp_path / "t.csv"))
    cursor = load.TraceCursor(trace, [b"x"] * len(trace))
    first = cursor.take(7)
    second = cursor.take(7)          # 3 left, then the trace starts over
    assert first[0][0] == 0.0 and second[0][0] == 0.0
    assert all(a[0] <= b[0] for a, b in zip(second, second[1:]))
    span = cursor.take_seconds(1.0)
    assert span and span[-1][0] < 1.0


def test_load_benchmark_smoke(tmp_path, capsys, redis_url):
    write_trace(tmp_path / "trace.csv")
    out = tmp_path / "load.json"
    assert load.main(["--trace", str(tmp_path / "trace.csv"), "--step-requests", "40", "--warmup", "5",
                      "--start-speedup", "4", "--max-speedup", "8", "--soak-s", "3", "--replicas", "1,2",
                      "--p99-ms", "5000",   # mechanics only: the speed target belongs to the benchmark run
                      "--json", str(out), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"max_sustained_rps", "p99_added_ms_at_max", "rss_growth_mb_soak", "replicas"} <= set(summary)
    assert summary["max_sustained_rps"] > 0 and summary["p99_added_ms_at_max"] < 5000
    assert set(summary["replicas"]) == {"1", "2"} and summary["replicas_consistent"] is True
    full = json.loads(out.read_text())
    assert all(step["requests"] == 40 for step in full["steps"])
    assert full["soak"]["rss_mb"]
