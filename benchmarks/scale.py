"""How far replicas and Redis carry: 1, 2 and 4 gateways on one Redis and on a 3-primary cluster.

Setup (real processes on loopback): the simulated upstream (``sigroute sim``, two models answering
at once), a private ``redis-server`` (topology ``single``) or a local Redis Cluster of 3 primaries
(``cluster``: `tests.redis_cluster.LocalCluster`, no replicas so the machine's CPU goes to the
primaries), and N ``sigroute serve --redis URL`` replicas with one policy that touches every Redis
key family: a learning decision (LinUCB, feedback rewards, ``sync_interval_s`` 1 s: learned sums and
pending feedback), an exact cache (documents, LRU sets, event stream) and an API key with a request
rate limit far above the offered rate (a bucket check per request, nothing refused).

Traffic: the arrival times and token counts of the Azure trace (`benchmarks.load`), squeezed to
``--offered-rps`` (beyond what one gateway sustains on the benchmark machine), open loop, round-robin
over the replicas. Each answer a model gave (not the cache) is rated at once (``POST /v1/feedback``,
score 1 for one model and 0 for the other) on the *next* replica, so pending feedback crosses
replicas. One request in five repeats one of 20 common questions (so the cache answers some); the
others are new. Per run (topology × replica count):

* ``rps`` achieved, ``added_ms`` p50/p99 (client time minus ``x-sigroute-upstream-ms``);
* Redis cost per request, from ``INFO`` deltas over the measured window summed over the nodes:
  ``redis_cmds_per_request`` (``INFO commandstats`` calls, the benchmark's own ``INFO`` excluded),
  ``redis_bytes_per_request`` (``total_net_input_bytes`` + ``total_net_output_bytes``),
  ``redis_cpu_ms_per_1k`` (``used_cpu_sys`` + ``used_cpu_user``); a request here is a chat request,
  its feedback counted with it;
* ``background_cmds_per_replica_s``: Redis commands per second per idle replica (periodic syncs of
  learned state and cache stream reads), measured for 3 s before the load;
* ``gateway_cpu_ms_per_request``: the replicas' CPU seconds over the window per request;
* ``arm_estimate_max_diff``: after the load, once every replica has flushed and reloaded (one
  ``/v1/route/explain`` per replica marks its tenant as used, so its next sync reloads the merged
  totals), the largest difference between two replicas' arm scores (LinUCB estimate + its exploration
  bonus, from explain) and learned-outcome counts;
* ``cache_hit_shared``: a new question asked on the first replica is a cache hit on the last.

Plus ``rate_limit_admitted_over_limit``: `benchmarks.limits` (3 replicas, one caller at 5× its
request limit, through one Redis).

On a 2-core machine the replicas, Redis, the simulator and the load generator share the cores, so
``rps`` stops growing with replicas; the per-request Redis cost does not depend on that, and it is
what `benchmarks.capacity` turns into a capacity table.

    python -m benchmarks.scale [--quick] [--replicas 1,2,4] [--offered-rps 400] [--requests 2400] [--json PATH]

``--quick`` (for the tests): 1 and 2 replicas on one Redis and 2 on the cluster, 300 requests at
300 req/s, a 6 s limits run. One Redis (or cluster) per topology, flushed before each run. The last
line printed is the summary: ``single`` and ``cluster``, each ``{replicas: {rps, added_p99_ms,
redis_cmds_per_request, redis_bytes_per_request}}``, ``rate_limit_admitted_over_limit``,
``arm_estimate_max_diff``, ``cache_hit_shared``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import orjson
import yaml

from benchmarks.load import DEFAULT_TRACE, load_trace, request_body, send_open_loop
from benchmarks.loadgen import Connection, HTTPError, ServerProcess, cpu_seconds, machine_info, stats
from benchmarks.report import emit

API_KEY = "sk-bench-scale"
SYNC_INTERVAL_S = 1.0
ENV = {"PYTHONUNBUFFERED": "1", "SIGROUTE_LOG_LEVEL": "WARNING", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
SIM_MODELS = {"alpha": {"ttft_ms": 5, "tokens_per_s": 0, "completion_tokens": 8},
              "beta": {"ttft_ms": 5, "tokens_per_s": 0, "completion_tokens": 8}}
GOOD_MODEL = "alpha"     # feedback scores this model 1, the other 0
MAX_CONTEXT_WORDS = 200
NOTES = ("On the benchmark machine (2 busy cores) the replicas, Redis, the simulator and the load "
         "generator share the CPUs, so rps does not grow with replicas; the per-request Redis cost "
         "(commands, bytes, CPU per request) does not depend on that and is the number that says how far "
         "one Redis, or a cluster of N primaries, carries. A request = one chat request plus its feedback "
         "when a model answered it. Redis counts the commands a Lua script runs as commands too (INFO "
         "commandstats), so commands per request > round trips per request (EVALSHA calls).")


def scale_policy(sim_url: str) -> dict:
    return {
        "version": 1,
        "models": {name: {"provider": f"openai/{name}", "api_base": sim_url + "/v1",
                          "price": {"input": 0, "output": 0}} for name in SIM_MODELS},
        "decisions": [{
            "name": "learn", "models": list(SIM_MODELS),
            "algorithm": {"linucb": {"alpha": 0.5, "features": ["bias"], "sync_interval_s": SYNC_INTERVAL_S,
                                     "reward": {"quality": 1.0, "default_quality": 0.0, "feedback_ttl_s": 600}}},
            "cache": {"mode": "exact", "ttl": 600},
        }],
        "upstream": {"retries": 0, "backoff_s": 0.0},
        "auth": {"keys": [{"key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "tenant": "bench",
                           "roles": ["admin"],
                           "rate_limit": {"requests_per_minute": 10_000_000, "burst": 100_000}}]},
        "server": {"feedback_rate_limit": None},
    }


# ------------------------------------------------------------------------------------------------
# Redis counters


class RedisNodes:
    """The Redis nodes whose INFO counters are summed (one server, or each cluster primary)."""

    def __init__(self, ports: list[int]):
        import redis

        self.clients = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=10) for p in ports]

    def counters(self) -> dict:
        """Totals over the nodes, plus calls per command name and commands and CPU per node."""
        total: dict = {"cmds": 0.0, "bytes": 0.0, "cpu_s": 0.0, "by_command": {}, "node_cmds": [], "node_cpu_s": []}
        for client in self.clients:
            node_cmds = 0.0
            for name, entry in client.info("commandstats").items():
                if name != "cmdstat_info":
                    node_cmds += entry["calls"]
                    command = name.removeprefix("cmdstat_")
                    total["by_command"][command] = total["by_command"].get(command, 0) + entry["calls"]
            net = client.info("stats")
            total["bytes"] += net["total_net_input_bytes"] + net["total_net_output_bytes"]
            cpu = client.info("cpu")
            node_cpu = cpu["used_cpu_sys"] + cpu["used_cpu_user"]
            total["cmds"] += node_cmds
            total["cpu_s"] += node_cpu
            total["node_cmds"].append(node_cmds)
            total["node_cpu_s"].append(node_cpu)
        return total

    def flushall(self) -> None:
        for client in self.clients:
            client.flushall()

    def close(self) -> None:
        for client in self.clients:
            client.close()


def delta(after: dict, before: dict) -> dict:
    out = {}
    for key, value in after.items():
        if isinstance(value, dict):
            out[key] = {k: v - before[key].get(k, 0) for k, v in value.items() if v - before[key].get(k, 0)}
        elif isinstance(value, list):
            out[key] = [a - b for a, b in zip(value, before[key])]
        else:
            out[key] = value - before[key]
    return out


# ------------------------------------------------------------------------------------------------
# load: chat + feedback, open loop, round-robin


async def offer(targets: list[tuple[str, int]], arrivals: list[tuple[float, bytes]]) -> dict:
    """Send each body at its arrival offset, round-robin; rate every model answer on the next replica."""
    pools: list[list[Connection]] = [[] for _ in targets]
    headers = {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"}
    added: list[float] = []
    errors: dict[str, int] = {}
    counts = {"chat_ok": 0, "cached": 0, "feedback_recorded": 0, "feedback_other": 0}
    feedback_other: dict[str, int] = {}     # what the feedback not recorded got, by status and body

    async def call(k: int, path: str, body: bytes, keep_body: bool = False):
        pool = pools[k]
        conn = pool.pop() if pool else Connection(*targets[k])
        raw = conn.prepare("POST", path, body, headers)
        try:
            sample = await conn.send(raw, keep_body=keep_body)
        except (HTTPError, OSError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            await conn.close()
            return None
        pool.append(conn)
        return sample

    async def one(i: int, body: bytes) -> None:
        k = i % len(targets)
        sample = await call(k, "/v1/chat/completions", body)
        if sample is None:
            return
        if sample.status != 200:
            errors[str(sample.status)] = errors.get(str(sample.status), 0) + 1
            return
        counts["chat_ok"] += 1
        waited = sample.headers.get("x-sigroute-upstream-ms")
        added.append(sample.total_ms - (float(waited) if waited is not None else 0.0))
        if sample.headers.get("x-sigroute-cache", "").startswith("hit"):
            counts["cached"] += 1
            return
        score = 1 if sample.headers.get("x-sigroute-model") == GOOD_MODEL else 0
        rated = await call((k + 1) % len(targets), "/v1/feedback",
                           orjson.dumps({"request_id": sample.headers.get("x-sigroute-request-id", ""),
                                         "score": score}), keep_body=True)
        if rated is not None and rated.status == 200 and b"recorded" in (rated.body or b""):
            counts["feedback_recorded"] += 1
        else:
            counts["feedback_other"] += 1
            outcome = "no answer" if rated is None else f"{rated.status} {(rated.body or b'')[:120].decode('utf-8', 'replace')}"
            feedback_other[outcome] = feedback_other.get(outcome, 0) + 1

    wall = await send_open_loop(arrivals, one, pools)
    return {"requests": len(arrivals), **counts, "feedback_other_outcomes": feedback_other, "errors": errors, "wall_s": round(wall, 3),
            "offered_rps": round(len(arrivals) / max(arrivals[-1][0], 1e-9), 1) if len(arrivals) > 1 else None,
            "rps": round(counts["chat_ok"] / wall, 1) if wall > 0 else None, "added_ms": stats(added, 3)}


def arrivals_at(trace, count: int, rate: float, run_tag: str = "") -> list[tuple[float, bytes]]:
    """`count` requests of the trace (looping), their gaps scaled so the mean rate is `rate`, each
    with a prompt of the trace's context size."""
    rows = [trace[i % len(trace)] for i in range(count)]
    span = max(trace[-1][0], 1e-9)
    scale = (len(trace) / rate) / span        # trace seconds -> run seconds
    out, base, last = [], 0.0, 0.0
    for i, (t, context, generated) in enumerate(rows):
        if i and i % len(trace) == 0:
            base = last + 1.0 / rate
        at = base + t * scale
        last = at
        # one request in five repeats one of 20 common questions (the cache answers it after its
        # first time); the others are new (a model answers, it is learned from and rated)
        tag = f"common {i % 20}" if i % 5 == 0 else f"request {i} of run {run_tag}"
        body = orjson.loads(request_body(context, min(generated, 64), MAX_CONTEXT_WORDS))
        body["messages"][0]["content"] = f"{tag}: " + body["messages"][0]["content"]
        out.append((at, orjson.dumps(body)))
    return out


# ------------------------------------------------------------------------------------------------
# convergence and cache sharing


def explain(url: str) -> dict:
    r = httpx.post(url + "/v1/route/explain", timeout=30, headers={"authorization": f"Bearer {API_KEY}"},
                   json={"model": "auto", "messages": [{"role": "user", "content": "convergence check"}]})
    r.raise_for_status()
    return r.json()["winner"]["selection"]


def convergence(urls: list[str]) -> dict:
    """Touch each replica (so its next sync reloads), wait two sync intervals, then compare."""
    time.sleep(1.5 * SYNC_INTERVAL_S)          # every replica flushed its last deltas
    for url in urls:
        explain(url)
    time.sleep(2.5 * SYNC_INTERVAL_S)          # and reloaded the merged totals
    views = [explain(url) for url in urls]
    arms = sorted(views[0]["scores"])
    score_diff = max((abs(a["scores"][arm] - b["scores"][arm]) for a in views for b in views for arm in arms),
                     default=0.0)
    counts = [v.get("learned", {}).get("observations", {}) for v in views]
    count_diff = max((abs(a.get(arm, 0) - b.get(arm, 0)) for a in counts for b in counts for arm in arms),
                     default=0.0)
    return {"arm_estimate_max_diff": round(score_diff, 6), "observations_max_diff": round(count_diff, 3),
            "scores": [v["scores"] for v in views], "observations": counts}


def cache_shared(urls: list[str], tag: str) -> bool:
    question = {"model": "auto", "messages": [{"role": "user", "content": f"cache sharing check {tag} {time.time()}"}]}
    auth = {"authorization": f"Bearer {API_KEY}"}
    first = httpx.post(urls[0] + "/v1/chat/completions", json=question, headers=auth, timeout=30)
    time.sleep(0.2)
    last = httpx.post(urls[-1] + "/v1/chat/completions", json=question, headers=auth, timeout=30)
    return first.headers.get("x-sigroute-cache") == "miss" and last.headers.get("x-sigroute-cache") == "hit-exact"


# ------------------------------------------------------------------------------------------------


def start_replicas(n: int, policy_path: Path, redis_url: str, cache_shards: int = 1) -> list[ServerProcess]:
    """N replicas started side by side (each waits for its own /health)."""
    command = [sys.executable, "-m", "sigroute.gateway.cli", "serve", "--policy", str(policy_path),
               "--port", "{port}", "--log-level", "warning", "--redis", redis_url,
               "--cache-shards", str(cache_shards)]
    procs = [ServerProcess(command, env=ENV, name=f"sigroute-{i}") for i in range(n)]
    failures: list[BaseException] = []

    def start(p: ServerProcess) -> None:
        try:
            p.start()
        except BaseException as exc:   # reported below, after the others stopped
            failures.append(exc)

    threads = [threading.Thread(target=start, args=(p,)) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        for p in procs:
            p.stop()
        raise failures[0]
    return procs


def run_one(n: int, topology: str, policy_path: Path, redis_url: str, nodes: RedisNodes, arrivals, warmup,
            log, idle_s: float = 3.0, cache_shards: int = 1) -> dict:
    procs = start_replicas(n, policy_path, redis_url, cache_shards)
    try:
        urls = [p.url for p in procs]
        targets = [(p.host, p.port) for p in procs]
        asyncio.run(offer(targets, warmup))
        time.sleep(1.5 * SYNC_INTERVAL_S)
        idle_before = nodes.counters()
        time.sleep(idle_s)
        idle = delta(nodes.counters(), idle_before)
        before, cpu_before = nodes.counters(), [cpu_seconds(p.pid) or 0.0 for p in procs]
        run = asyncio.run(offer(targets, arrivals))
        time.sleep(1.5 * SYNC_INTERVAL_S)            # the last deltas and feedback flushed
        spent = delta(nodes.counters(), before)
        gateway_cpu = sum((cpu_seconds(p.pid) or 0.0) - c for p, c in zip(procs, cpu_before))
        requests = max(run["chat_ok"], 1)
        run.update(
            topology=topology, replicas=n, cache_shards=cache_shards,
            redis_cmds=spent["cmds"], redis_bytes=spent["bytes"], redis_cpu_s=round(spent["cpu_s"], 4),
            redis_cmds_per_request=round(spent["cmds"] / requests, 3),
            redis_bytes_per_request=round(spent["bytes"] / requests, 1),
            redis_cpu_ms_per_1k=round(spent["cpu_s"] * 1e6 / requests, 2),
            background_cmds_per_replica_s=round(idle["cmds"] / idle_s / n, 2),
            redis_cmds_per_request_by_command={k: round(v / requests, 3) for k, v in
                                               sorted(spent["by_command"].items(), key=lambda kv: -kv[1])},
            # the busiest node's share of the commands and of the CPU (a cluster: the cache's slot)
            hottest_node_cmds_share=round(max(spent["node_cmds"]) / max(spent["cmds"], 1), 4),
            hottest_node_cpu_share=round(max(spent["node_cpu_s"]) / max(spent["cpu_s"], 1e-9), 4),
            redis_nodes=len(spent["node_cmds"]),
            gateway_cpu_ms_per_request=round(gateway_cpu * 1000 / requests, 3),
            added_p50_ms=run["added_ms"].get("p50"), added_p99_ms=run["added_ms"].get("p99"))
        run.update(convergence(urls))
        run["cache_hit_shared"] = cache_shared(urls, f"{topology}-{n}")
        log(f"  {topology}, {n} replica(s): {run['rps']} req/s of {run['offered_rps']} offered, added p50/p99 "
            f"{run['added_p50_ms']}/{run['added_p99_ms']} ms, Redis {run['redis_cmds_per_request']} cmds "
            f"{run['redis_bytes_per_request']} B {run['redis_cpu_ms_per_1k']} CPU-ms/1k per request, "
            f"idle {run['background_cmds_per_replica_s']} cmds/s/replica, arm diff {run['arm_estimate_max_diff']}, "
            f"cache shared {run['cache_hit_shared']}, errors {run['errors'] or 0}")
        return run
    finally:
        for p in procs:
            p.stop()


def rate_limit_run(quick: bool, log) -> dict:
    from benchmarks import limits

    with tempfile.TemporaryDirectory(prefix="sigroute-scale-limits-") as tmp:
        out = Path(tmp, "limits.json")
        argv = ["--kind", "requests", "--skip-memory", "--quiet", "--json", str(out)]
        argv += ["--quick", "--duration-s", "6"] if quick else []
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            limits.main(argv)
        shared = json.loads(out.read_text())["requests"]["shared"]
    log(f"  rate limit, 3 replicas at 5x: admitted {shared['admitted_over_limit']}x the limit")
    return shared


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 and 2 replicas, 300 requests at 300 req/s")
    parser.add_argument("--replicas", default=None, help="replica counts (default 1,2,4; quick 1,2)")
    parser.add_argument("--cluster-replicas", default=None,
                        help="replica counts on the cluster (default: --replicas; quick 2)")
    parser.add_argument("--offered-rps", type=float, default=None, help="offered rate (default 400; quick 300)")
    parser.add_argument("--requests", type=int, default=None, help="measured requests per run (default 2400; quick 300)")
    parser.add_argument("--topologies", default="single,cluster")
    parser.add_argument("--trace", default=DEFAULT_TRACE)
    parser.add_argument("--skip-rate-limit", action="store_true")
    parser.add_argument("--cluster-cache-shards", default="1",
                        help="cache shard counts to run on the cluster (`serve --cache-shards`), e.g. 1,16: "
                             "each count other than 1 is its own topology, cluster_shardsN")
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.replicas = args.replicas or ("1,2" if args.quick else "1,2,4")
    args.offered_rps = args.offered_rps or (300.0 if args.quick else 400.0)
    args.requests = args.requests or (300 if args.quick else 2400)
    counts = [int(c) for c in args.replicas.split(",")]
    cluster_counts = [int(c) for c in (args.cluster_replicas or ("2" if args.quick else args.replicas)).split(",")]
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))

    from sigroute.gateway.serving import RedisServer
    from tests.redis_cluster import LocalCluster

    trace = load_trace(args.trace)
    arrivals = arrivals_at(trace, args.requests, args.offered_rps)
    warmup = arrivals_at(trace, 40, 100.0, "warm-up")
    result: dict = {"benchmark": "scale", "config": vars(args), "machine": machine_info(), "notes": NOTES,
                    "sync_interval_s": SYNC_INTERVAL_S, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="sigroute-scale-") as tmp:
        sim_path = Path(tmp, "sim.yaml")
        sim_path.write_text(yaml.safe_dump({"seed": 1, "models": SIM_MODELS}))
        sim_command = [sys.executable, "-m", "sigroute.gateway.cli", "sim", "--config", str(sim_path),
                       "--port", "{port}"]
        with ServerProcess(sim_command, env=ENV, name="sim") as sim:
            policy_path = Path(tmp, "policy.yaml")
            policy_path.write_text(yaml.safe_dump(scale_policy(sim.url), sort_keys=False))
            idle_s = 2.0 if args.quick else 3.0
            variants = []
            for topology in args.topologies.split(","):
                shard_counts = [int(k) for k in args.cluster_cache_shards.split(",")] if topology == "cluster" else [1]
                variants += [(topology, k) for k in shard_counts]
            for topology, shards in variants:
                name = topology if shards == 1 else f"{topology}_shards{shards}"
                runs = result["runs"].setdefault(name, {})
                with contextlib.ExitStack() as stack:
                    if topology == "single":
                        redis_url = stack.enter_context(RedisServer(tmp)).url
                        ports = [int(redis_url.rsplit(":", 1)[1].split("/")[0])]
                    else:
                        cluster = stack.enter_context(LocalCluster(Path(tmp, "cluster"), replicas_per_primary=0))
                        redis_url, ports = cluster.url, cluster.primaries()
                    nodes = RedisNodes(ports)
                    stack.callback(nodes.close)
                    for n in (cluster_counts if topology == "cluster" else counts):
                        nodes.flushall()     # each run learns and caches from nothing
                        runs[str(n)] = run_one(n, name, policy_path, redis_url, nodes, arrivals, warmup, log,
                                               idle_s, shards)
    if not args.skip_rate_limit:
        result["rate_limit"] = rate_limit_run(args.quick, log)

    summary: dict = {}
    for topology, runs in result["runs"].items():
        summary[topology] = {n: {"rps": r["rps"], "added_p99_ms": r["added_p99_ms"],
                                 "redis_cmds_per_request": r["redis_cmds_per_request"],
                                 "redis_bytes_per_request": r["redis_bytes_per_request"],
                                 "redis_cpu_ms_per_1k": r["redis_cpu_ms_per_1k"],
                                 "hottest_node_cpu_share": r["hottest_node_cpu_share"]} for n, r in runs.items()}
    all_runs = [r for runs in result["runs"].values() for r in runs.values()]
    summary["rate_limit_admitted_over_limit"] = (result.get("rate_limit") or {}).get("admitted_over_limit")
    summary["arm_estimate_max_diff"] = max((r["arm_estimate_max_diff"] for r in all_runs), default=None)
    summary["cache_hit_shared"] = all(r["cache_hit_shared"] for r in all_runs if r["replicas"] > 1)
    summary["errors"] = sum(sum(r["errors"].values()) for r in all_runs)
    result["summary"] = summary
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
