"""`benchmarks.capacity` on a small hand-written scale result: the arithmetic of the capacity model
(primary and replica capacities, primaries needed beside the cache's one slot, the flush interval's
Redis load), and a clear error for a file that is not a scale result."""

from __future__ import annotations

import json

import pytest

from benchmarks import capacity

# Redis 0.5 ms CPU, 10 commands, 1,000 bytes per request; replicas 2 ms CPU per request; idle
# replicas 8 commands/s at a 1 s flush interval; the busiest of 3 cluster primaries 40 % of Redis CPU
SCALE = {
    "sync_interval_s": 1.0,
    "runs": {
        "single": {n: {"redis_cpu_ms_per_1k": 500.0, "redis_cmds_per_request": 10.0, "redis_bytes_per_request": 1000.0,
                       "gateway_cpu_ms_per_request": 2.0, "background_cmds_per_replica_s": 8.0}
                   for n in ("1", "2")},
        "cluster": {"2": {"redis_cpu_ms_per_1k": 900.0, "redis_cmds_per_request": 11.0, "redis_bytes_per_request": 1100.0,
                          "gateway_cpu_ms_per_request": 2.0, "background_cmds_per_replica_s": 8.0,
                          "hottest_node_cpu_share": 0.4, "redis_nodes": 3}},
    },
}


def row(result, rps, policy):
    return next(r for r in result["table"] if r["target_rps"] == rps and r["policy"] == policy)


def test_capacity_arithmetic():
    result = capacity.model(capacity.measured_costs(SCALE))
    costs = result["costs"]
    # per-request costs come from the single-Redis runs only
    assert costs["redis_cpu_ms_per_request"] == pytest.approx(0.5)
    assert costs["redis_cmds_per_request"] == 10.0
    # the cache's share: the busiest primary carries c + (1 - c) / 3 = 0.4, so c = 0.1
    assert costs["cache_share_of_redis_load"] == pytest.approx(0.1)
    # one primary: min(0.7 × 1000 / 0.5 = 1,400 by CPU, 100,000 / 10 = 10,000 by commands)
    assert result["primary_capacity_rps"] == pytest.approx(1400.0)
    # one replica: 0.7 × 1000 / 2 ms = 350 req/s heuristic; neural at 21 ms: 33.3
    assert result["replica_capacity_rps"]["heuristic"] == pytest.approx(350.0)
    assert row(result, 1_000, "heuristic")["replicas"] == 3            # ceil(1000 / 350)
    assert row(result, 1_000, "neural")["replicas"] == 30              # ceil(1000 / 33.3)
    assert row(result, 1_000, "heuristic")["redis_primaries"] == 1
    # 10k: the busiest of P primaries carries 0.1 + 0.9 / P of 10,000 × 0.5 ms; fits 1,400 req/s
    # when 0.9 / P <= 0.14 - 0.1, so P = ceil(22.5) = 23
    assert row(result, 10_000, "heuristic")["redis_primaries"] == 23
    # with the cache spread too: ceil(9,000 / 1,400) + ceil(1,000 / 1,400) = 7 + 1
    assert row(result, 10_000, "heuristic")["redis_primaries_cache_sharded"] == 8
    # the cache's part at 10k (1,000 req/s-equivalents) fits one primary: one shard; at 100k
    # (10,000) it needs ceil(10,000 / 1,400) = 8 parts, a power of two: --cache-shards 8
    assert row(result, 10_000, "heuristic")["cache_shards"] == 1
    assert row(result, 100_000, "heuristic")["cache_shards"] == 8
    assert "--cache-shards 8" in row(result, 100_000, "heuristic")["breaks_first"]
    assert row(result, 10_000, "heuristic")["redis_commands_per_s"] == 100_000
    assert row(result, 10_000, "heuristic")["redis_mb_per_s"] == 10.0
    # 100k: the cache's part alone (10,000 req/s-equivalents) exceeds one primary: no P suffices
    hundred_k = row(result, 100_000, "heuristic")
    assert hundred_k["redis_primaries"] is None and "cache" in hundred_k["breaks_first"]
    assert "nothing" in row(result, 1_000, "neural")["breaks_first"]
    # flush interval: 8 commands/s per replica at 1 s → 32 at 0.25 s, 0.8 at 10 s; lag two intervals
    flush = {r["interval_s"]: r for r in result["flush_interval"]}
    assert flush[0.25]["background_cmds_per_replica_s"] == 32.0 and flush[0.25]["learning_lag_s"] == 0.5
    assert flush[10.0]["background_cmds_per_replica_s"] == 0.8
    # at 1k req/s: 3 replicas × 8 = 24 commands/s beside 10,000 for the requests
    assert flush[1.0]["share_of_redis_load_at_1000"] == pytest.approx(24 / 10_024, abs=1e-4)


def test_main_prints_markdown_then_json(tmp_path, capsys):
    source = tmp_path / "scale.json"
    source.write_text(json.dumps(SCALE))
    assert capacity.main(["--from", str(source), "--json", str(tmp_path / "capacity.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| target | policy | gateway replicas | Redis primaries")
    assert any(line.startswith("| 10,000 req/s | heuristic | 29 | 23 | 8 |") for line in lines)
    assert json.loads(lines[-1]) == json.loads((tmp_path / "capacity.json").read_text())


def test_a_file_that_is_not_a_scale_result_is_refused_clearly(tmp_path, capsys):
    source = tmp_path / "other.json"
    source.write_text(json.dumps({"benchmark": "load", "summary": {}}))
    assert capacity.main(["--from", str(source)]) == 2
    assert "cannot read a scale result" in capsys.readouterr().err
    assert capacity.main(["--from", str(tmp_path / "missing.json")]) == 2
