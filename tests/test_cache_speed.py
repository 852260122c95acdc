"""benchmarks.cache_speed end to end at tiny sizes: the summary's keys and sanity (a few seconds)."""

from __future__ import annotations

import json

from benchmarks import cache_speed


def test_cache_speed_tiny(tmp_path, capsys, redis_url):
    # (`redis_url`: the session's Redis fixture installs redis-server when it is missing; the
    # benchmark then starts its own on a free port)
    out = tmp_path / "speed.json"
    # 500 stays on the exact numpy path, 3000 crosses the HNSW threshold (2000)
    rc = cache_speed.main(["--sizes", "500,3000", "--queries", "50", "--inserts", "50", "--vectors", "clustered",
                           "--redis", "--json", str(out), "--quiet"])
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    result = json.loads(out.read_text())
    assert result["summary"] == summary
    assert summary["vectors"] == "clustered"

    p50 = summary["lookup_p50_ms"]
    assert set(p50) == {"500", "3000", "10000", "100000", "1000000"}
    assert p50["10000"] is None and p50["100000"] is None and p50["1000000"] is None
    assert p50["500"] > 0 and p50["3000"] > 0
    assert summary["recall_top1"]["500"] == 1.0          # exact search
    assert summary["recall_top1"]["3000"] >= 0.9         # HNSW
    assert summary["miss_cost_ms_redis"] > 0 and summary["hit_cost_ms_redis"] > 0
    assert summary["redis_size"] == 3000 and summary["rebuild_s"] >= 0
    assert summary["bytes_per_entry"] is None or summary["bytes_per_entry"] > 0
    assert summary["insert_per_s_memory"] > 0 and summary["insert_per_s_redis"] > 0
    assert summary["targets_met"]["lookup_p50_100k_lt_1ms"] is None
    assert isinstance(summary["targets_met"]["miss_redis_lt_2ms"], bool)

    # the shared vector engine (Qdrant, local mode), beside FAISS in the same run
    assert summary["engines"] == ["faiss", "qdrant"]
    for stat in ("lookup_p50_ms_by_backend", "lookup_p99_ms_by_backend"):
        assert set(summary[stat]) == {"faiss", "qdrant_local"}
        assert summary[stat]["qdrant_local"]["500"] > 0 and summary[stat]["qdrant_local"]["3000"] > 0
        assert summary[stat]["qdrant_local"]["100000"] is None
    assert summary["lookup_p50_ms_by_backend"]["faiss"] == p50
    assert summary["recall_top1_by_backend"]["qdrant_local"]["3000"] == 1.0   # local mode is exact
    startup = summary["startup_s_by_backend"]
    assert startup["faiss"]["3000"] == summary["rebuild_s"] and startup["qdrant_local"]["3000"] > 0

    by = {r["n"]: r for r in result["per_size"]}
    assert by[500]["hnsw"] is False and by[3000]["hnsw"] is True
    for r in by.values():
        assert r["memory_lookup_hit"]["hits"] == 50 and r["memory_lookup_miss"]["hits"] == 0
        assert r["redis"]["lookup_hit"]["hits"] == 50 and r["redis"]["lookup_miss"]["hits"] == 0
        assert r["redis"]["lookup_hit"]["hit_is_exact_top1"] >= 0.9
        assert r["qdrant"]["startup_rebuilds"] == 0   # a replica over the shared index rebuilds nothing
