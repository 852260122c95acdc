"""A capacity model from measured per-request costs: replicas and Redis primaries for 1k, 10k, 100k req/s.

Reads a `benchmarks.scale` result (``--from results/scale.json``) and computes, for the heuristic
and the neural policy, how many gateway replicas and Redis primaries a target rate needs, what the
learning flush interval (``sync_interval_s``) costs Redis and how late replicas learn, and what
breaks first. It prints the tables as markdown, then (last line) the model as one JSON object, so the
README's table is regenerated, not typed:

    python -m benchmarks.capacity --from results/scale.json [--json PATH]

The model (every input is either measured by `benchmarks.scale` or one of the stated assumptions
below, which the output repeats):

* Redis cost per request: the median over the single-Redis runs of Redis CPU per request, commands
  per request and bytes per request (a request = a chat request with its feedback, learning, cache
  and rate-limit traffic). Redis runs commands on one thread, so one primary carries
  ``REDIS_CORE_BUDGET`` × 1000 / (CPU ms per request) requests a second, and no more than
  ``REDIS_COMMANDS_PER_S`` / (commands per request); the smaller is its capacity.
* A cluster spreads learned sums, pending feedback and rate-limit buckets over its primaries by key,
  but the cache is one slot (one primary). The cluster runs give the busiest primary's share ``h`` of
  Redis CPU with 3 primaries; the cache's part of the load is then ``c = (3h − 1) / 2`` and the
  busiest of P primaries carries ``c + (1 − c) / P`` of it. P primaries suffice when that share of the
  load fits one primary's capacity; when the cache's part alone does not, no number of primaries helps
  (the cache's slot is what breaks). The benchmark has one tenant and one API key, whose learned-state
  key and rate-limit bucket also sit on one primary each, so ``c`` is an upper bound (safe side).
* A gateway replica is one process on one core, planned at ``GATEWAY_CORE_BUDGET`` of it: it serves
  budget × 1000 / (its CPU ms per request) req/s. Heuristic: measured (median over the runs of the
  replicas' CPU per request). Neural: ``NEURAL_CPU_MS_PER_REQUEST`` (stated, with its source).
* ``redis_primaries`` is "—" when no number of primaries suffices with the cache in one slot (the
  default layout); ``redis_primaries_cache_sharded`` is what the cache spread over
  ``cache_shards`` hash tags (`sigroute serve --cache-shards N`) needs, and ``cache_shards`` the
  smallest power of two of shards whose each part of the cache's load fits one primary (its slots
  may share a primary with others: give the cluster at least that many primaries).
* Flush interval: the idle replicas' Redis commands per second at the measured interval, scaled by
  measured interval / interval (an upper bound: it counts the cache stream reads, which do not
  depend on the interval, as sync traffic), times the replicas needed; learning lag ≤ 2 intervals
  under load (one to flush, one for the others to reload), while a replica that serves nothing for
  that tenant reloads every ``IDLE_RELOAD_S``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

TARGETS_RPS = (1_000, 10_000, 100_000)
FLUSH_INTERVALS_S = (0.25, 1.0, 5.0, 10.0)
REDIS_CORE_BUDGET = 0.7          # plan a primary's one thread to 70 % busy
GATEWAY_CORE_BUDGET = 0.7        # and a replica's core to 70 %
# one primary's ceiling in commands per second, whatever its CPU figure says: redis.io's
# "Redis benchmark" page shows ~100k-180k simple commands/s per instance without pipelining on
# ordinary hardware; 100k is the round lower figure
REDIS_COMMANDS_PER_S = 100_000
NIC_BYTES_PER_S = 1.25e9         # a 10 Gbit/s network link per Redis node
# the neural policy (domain + jailbreak + PII signals, ONNX encoder) on the same machine:
# README "Against LiteLLM" — "CPU 16–21 s per 1,000 requests" under load; the upper figure
NEURAL_CPU_MS_PER_REQUEST = 21.0
NEURAL_SOURCE = "README, section comparing with LiteLLM: neural policy CPU 16-21 s per 1,000 requests (upper figure)"
IDLE_RELOAD_S = 30.0             # bandits.contextual.IDLE_RELOAD_S


def measured_costs(scale: dict) -> dict:
    """The per-request costs the model uses, from a `benchmarks.scale` result."""
    runs = scale["runs"]
    single = list(runs.get("single", {}).values())
    cluster = list(runs.get("cluster", {}).values())
    if not single:
        raise ValueError("the scale result has no 'single' runs")
    everything = single + cluster
    cluster_hot = [r["hottest_node_cpu_share"] for r in cluster if r.get("redis_nodes", 3) == 3]
    hot = statistics.median(cluster_hot) if cluster_hot else None
    cache_share = None if hot is None else min(1.0, max(0.0, (3 * hot - 1) / 2))
    return {
        "redis_cpu_ms_per_request": statistics.median(r["redis_cpu_ms_per_1k"] for r in single) / 1000.0,
        "redis_cmds_per_request": statistics.median(r["redis_cmds_per_request"] for r in single),
        "redis_bytes_per_request": statistics.median(r["redis_bytes_per_request"] for r in single),
        "gateway_cpu_ms_per_request": statistics.median(r["gateway_cpu_ms_per_request"] for r in everything),
        "background_cmds_per_replica_s": statistics.median(r["background_cmds_per_replica_s"] for r in everything),
        "cluster_hottest_primary_cpu_share": hot,
        "cache_share_of_redis_load": cache_share,
        "sync_interval_s": scale.get("sync_interval_s", 1.0),
    }


def primary_capacity_rps(costs: dict) -> float:
    """Requests a second one Redis primary carries (the smaller of its CPU and command ceilings)."""
    by_cpu = REDIS_CORE_BUDGET * 1000.0 / costs["redis_cpu_ms_per_request"]
    by_commands = REDIS_COMMANDS_PER_S / costs["redis_cmds_per_request"]
    return min(by_cpu, by_commands)


def primaries_needed(rps: float, costs: dict) -> int | None:
    """Redis primaries for `rps` (1 = one Redis, no cluster needed); None when the cache's one slot
    alone is more than a primary carries."""
    capacity = primary_capacity_rps(costs)
    if rps <= capacity:
        return 1
    c = costs["cache_share_of_redis_load"]
    if c is None:
        return math.ceil(rps / capacity)     # no cluster measurement: load spread evenly
    free = capacity / rps - c                # what one primary has left beside the whole cache
    if free <= 0:
        return None
    return max(2, math.ceil((1 - c) / free))


def primaries_if_cache_sharded(rps: float, costs: dict) -> int:
    """Redis primaries for `rps` with the cache's keys spread too (`--cache-shards`, enough shards)."""
    capacity = primary_capacity_rps(costs)
    c = costs["cache_share_of_redis_load"] or 0.0
    if rps <= capacity:
        return 1
    return math.ceil(rps * (1 - c) / capacity) + math.ceil(rps * c / capacity)


def cache_shards_needed(rps: float, costs: dict) -> int:
    """The smallest power of two N such that 1/N of the cache's part of the Redis load fits one
    primary (`--cache-shards N`); 1 when the whole cache fits one."""
    capacity = primary_capacity_rps(costs)
    c = costs["cache_share_of_redis_load"] or 0.0
    shards = 1
    while rps * c / shards > capacity:
        shards *= 2
    return shards


def replicas_needed(rps: float, cpu_ms_per_request: float) -> int:
    return math.ceil(rps / (GATEWAY_CORE_BUDGET * 1000.0 / cpu_ms_per_request))


def what_breaks_first(rps: float, costs: dict) -> str:
    capacity = primary_capacity_rps(costs)
    c = costs["cache_share_of_redis_load"]
    if rps <= capacity:
        return f"nothing shared: one Redis runs at {rps / capacity:.0%} of its planned capacity; replicas add CPU"
    if c is not None and rps * c > capacity:
        return (f"the cache's Redis slot: its share ({c:.0%} of Redis load) alone exceeds one primary "
                f"(~{capacity * 1 / c:,.0f} req/s); spread it with --cache-shards "
                f"{cache_shards_needed(rps, costs)} or turn it off for some decisions")
    if rps * costs["redis_bytes_per_request"] > NIC_BYTES_PER_S:
        return "the network of a Redis node"
    return "one Redis's CPU (a single thread): use a cluster; then the primary holding the cache's slot"


def model(costs: dict) -> dict:
    policies = {"heuristic": costs["gateway_cpu_ms_per_request"], "neural": NEURAL_CPU_MS_PER_REQUEST}
    capacity = primary_capacity_rps(costs)
    rows = []
    for rps in TARGETS_RPS:
        primaries = primaries_needed(rps, costs)
        for policy, cpu_ms in policies.items():
            rows.append({"target_rps": rps, "policy": policy,
                         "replicas": replicas_needed(rps, cpu_ms),
                         "redis_primaries": primaries,
                         "redis_primaries_cache_sharded": primaries_if_cache_sharded(rps, costs),
                         "cache_shards": cache_shards_needed(rps, costs),
                         "redis_commands_per_s": round(rps * costs["redis_cmds_per_request"]),
                         "redis_mb_per_s": round(rps * costs["redis_bytes_per_request"] / 1e6, 2),
                         "breaks_first": what_breaks_first(rps, costs)})
    flush = []
    base = costs["sync_interval_s"]
    for interval in FLUSH_INTERVALS_S:
        per_replica = costs["background_cmds_per_replica_s"] * base / interval
        row = {"interval_s": interval, "background_cmds_per_replica_s": round(per_replica, 2),
               "learning_lag_s": 2 * interval}
        for rps in TARGETS_RPS:
            replicas = replicas_needed(rps, costs["gateway_cpu_ms_per_request"])
            request_cmds = rps * costs["redis_cmds_per_request"]
            row[f"share_of_redis_load_at_{rps}"] = round(replicas * per_replica / (request_cmds + replicas * per_replica), 4)
        flush.append(row)
    return {
        "costs": costs,
        "primary_capacity_rps": round(capacity, 1),
        "replica_capacity_rps": {p: round(GATEWAY_CORE_BUDGET * 1000.0 / ms, 1) for p, ms in policies.items()},
        "table": rows,
        "flush_interval": flush,
        "assumptions": {
            "redis_core_budget": REDIS_CORE_BUDGET, "gateway_core_budget": GATEWAY_CORE_BUDGET,
            "redis_commands_per_s_ceiling": REDIS_COMMANDS_PER_S,
            "redis_commands_ceiling_source": "redis.io 'Redis benchmark' page: ~100k-180k simple commands/s "
                                             "per instance without pipelining; the round lower figure",
            "nic_bytes_per_s": NIC_BYTES_PER_S,
            "neural_cpu_ms_per_request": NEURAL_CPU_MS_PER_REQUEST, "neural_source": NEURAL_SOURCE,
            "idle_reload_s": IDLE_RELOAD_S,
            "tenants": "one tenant and one learning decision, as measured: each further (tenant, decision) "
                       "served by a replica adds its own flush per interval",
            "machine": "per-request CPU measured on 2 busy shared cores: contention inflates it, so the "
                       "replica and primary counts are on the safe side",
        },
    }


def markdown(result: dict) -> str:
    costs = result["costs"]
    lines = ["| target | policy | gateway replicas | Redis primaries (cache in one slot) | "
             "Redis primaries with the cache sharded | `--cache-shards` | "
             "Redis commands/s | Redis MB/s | breaks first |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["table"]:
        primaries = "—" if row["redis_primaries"] is None else str(row["redis_primaries"])
        lines.append(f"| {row['target_rps']:,} req/s | {row['policy']} | {row['replicas']:,} | {primaries} | "
                     f"{row['redis_primaries_cache_sharded']} | {row['cache_shards']} | "
                     f"{row['redis_commands_per_s']:,} | {row['redis_mb_per_s']:g} | {row['breaks_first']} |")
    lines += ["", "| sync_interval_s | Redis commands/s per replica (idle) | learning lag under load | "
                  "share of Redis load at 1k / 10k / 100k req/s (heuristic replicas) |", "|---|---|---|---|"]
    for row in result["flush_interval"]:
        shares = " / ".join(f"{row[f'share_of_redis_load_at_{r}']:.1%}" for r in TARGETS_RPS)
        lines.append(f"| {row['interval_s']:g} s | {row['background_cmds_per_replica_s']:g} | ≤ {row['learning_lag_s']:g} s | {shares} |")
    hot = costs["cluster_hottest_primary_cpu_share"]
    lines += ["", "Inputs (measured): Redis "
              f"{costs['redis_cpu_ms_per_request'] * 1000:.0f} µs CPU, {costs['redis_cmds_per_request']:.1f} commands "
              f"and {costs['redis_bytes_per_request']:,.0f} bytes per request; heuristic replica "
              f"{costs['gateway_cpu_ms_per_request']:.2f} ms CPU per request; "
              + (f"busiest of 3 cluster primaries {hot:.0%} of Redis CPU (cache's part "
                 f"{costs['cache_share_of_redis_load']:.0%}). " if hot is not None else "no cluster run. ")
              + f"One primary carries ~{result['primary_capacity_rps']:,.0f} req/s; one replica "
              f"~{result['replica_capacity_rps']['heuristic']:,.0f} (heuristic) / "
              f"~{result['replica_capacity_rps']['neural']:,.0f} (neural) req/s."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", default="results/scale.json",
                        help="a benchmarks.scale JSON result (default results/scale.json)")
    parser.add_argument("--json", help="write the model here as well")
    args = parser.parse_args(argv)
    try:
        scale = json.loads(Path(args.source).read_text(encoding="utf-8"))
        result = model(measured_costs(scale))
    except (OSError, ValueError, KeyError) as exc:
        print(f"capacity: cannot read a scale result from {args.source}: {exc!r}", file=sys.stderr)
        return 2
    print(markdown(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(result, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
