"""How much real traffic does one gateway sustain, does its memory stay flat, and do replicas scale?

Traffic: the arrival times and token counts of a production trace laid out like
``../shared/data/traces/azure_llm_{code,conv}.csv`` (``TIMESTAMP, ContextTokens, GeneratedTokens``),
replayed open-loop (each request leaves at its own time, whether or not earlier ones were
answered) against ``sigroute serve`` with the heuristic-only policy of `benchmarks.overhead` in
front of the simulated upstream. Each request carries a prompt of the trace's context size (words of
a small vocabulary, about one token each) and asks for the trace's generated tokens as
``max_tokens`` (the simulator answers exactly that many).

1. **Sustained rate**: after ``--warmup`` unrecorded requests, the trace is replayed at increasing
   speed-ups (``--start-speedup`` 4×, 8×, 16×, …), each step sending the next ``--step-requests``
   requests of the trace (looping at its end) at their arrival times divided by the speed-up. A
   step passes when no request failed, the gateway kept up (the step ended within 5 % of its
   offered span, plus 1 s for the last answers) and the p99 of the added latency is under ``--p99-ms`` (50). Added latency is measured at
   the client: total time minus the time the gateway spent waiting on the upstream (its
   ``x-sigroute-upstream-ms`` header), so it counts loopback transfer, queueing before the
   gateway's handler runs, and everything the gateway does. Reported beside it: the gateway's
   self-reported time (``x-sigroute-overhead-ms``, which cannot see queueing before its handler
   runs) and total minus the simulator's configured time to first token (decode is instant;
   this also counts the simulator's own work). The result is the highest passing step's achieved
   request rate.
2. **Soak**: ``--soak-s`` seconds (600 for the issue's 10 minutes; default 60) at half the highest
   passing speed-up, the trace looping; the gateway's resident memory is sampled every 5 s. Growth =
   median RSS of the last fifth minus median RSS of the first fifth (after a warm-up fifth).
   Bound stated: < 50 MB.
3. **Replicas** (``--replicas 1,2,3``; needs redis-server): that many gateway processes sharing one
   Redis (``--redis``: cache, learning state, pending feedback), the same slice of the trace
   replayed round-robin across them at 8× the highest passing single-gateway speed-up (more than
   one gateway sustains, so the achieved rate is their joint capacity); reported: achieved rate and
   p99 per replica count, and a consistency check (an answer cached through the first replica is a
   hit on the last one).
   On a machine with fewer cores than replicas + load generator + simulator, more replicas cannot
   add throughput: the numbers say what this machine does.

    python -m benchmarks.load [--trace PATH] [--step-requests 400] [--soak-s 60] [--replicas 1,2,3] [--json PATH]

The last line printed is the summary: ``max_sustained_rps``, ``p99_added_ms_at_max``,
``rss_growth_mb_soak``, ``replicas {1, 2, 3: rps}``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson
import yaml

from benchmarks.loadgen import Connection, HTTPError, ServerProcess, machine_info, stats
from benchmarks.overhead import bench_policy
from benchmarks.report import emit

DEFAULT_TRACE = "../shared/data/traces/azure_llm_conv.csv"
VOCABULARY = ("harbor light wind morning river stone garden paper market window bridge silver autumn "
              "engine letter forest valley music winter coffee").split()
RSS_BOUND_MB = 50.0


def load_trace(path: str) -> list[tuple[float, int, int]]:
    """(seconds since the first request, context tokens, generated tokens) per request."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            stamp = datetime.fromisoformat(row["TIMESTAMP"].strip()[:26])
            rows.append((stamp.timestamp(), int(row["ContextTokens"]), int(row["GeneratedTokens"])))
    rows.sort()
    start = rows[0][0]
    return [(t - start, c, g) for t, c, g in rows]


def request_body(context_tokens: int, generated_tokens: int, max_context: int) -> bytes:
    n = max(1, min(context_tokens, max_context))
    words = " ".join(VOCABULARY[i % len(VOCABULARY)] for i in range(n))
    return orjson.dumps({"model": "auto", "max_tokens": max(1, generated_tokens),
                         "messages": [{"role": "user", "content": words}]})


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")



async def send_open_loop(arrivals, one, pools, speedup: float = 1.0) -> float:
    """Open loop: start `one(i, body)` at each arrival's offset (seconds / `speedup`) without waiting
    for earlier answers, wait for all, close the pools' connections; returns the wall time."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    tasks = []
    for i, (offset, body) in enumerate(arrivals):
        delay = began + offset / speedup - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(i, body)))
    await asyncio.gather(*tasks)
    wall = loop.time() - began
    for pool in pools:
        for conn in pool:
            await conn.close()
    return wall

async def replay(targets: list[tuple[str, int]], arrivals: list[tuple[float, bytes]], speedup: float,
                 upstream_ms: float = 0.0, max_connections: int = 1024) -> dict:
    """Send each body at its arrival time / speedup (round-robin over `targets`); open loop."""
    pools: list[list[Connection]] = [[] for _ in targets]
    added: list[float] = []        # x-sigroute-overhead-ms: the gateway's own time
    totals: list[float] = []
    beyond_upstream: list[float] = []  # client total minus x-sigroute-upstream-ms
    errors: dict[str, int] = {}
    gate = asyncio.Semaphore(max_connections)

    async def one(i: int, body: bytes) -> None:
        k = i % len(targets)
        async with gate:
            pool = pools[k]
            reused = bool(pool)
            conn = pool.pop() if reused else Connection(*targets[k])
            raw = conn.prepare("POST", "/v1/chat/completions", body, {"content-type": "application/json"})
            try:
                try:
                    sample = await conn.send(raw)
                except (HTTPError, OSError) as first_try:
                    if not reused or "broken off" in str(first_try):
                        raise
                    # a pooled connection the server closed while idle (keep-alive timeout): the
                    # request never reached it, so it is sent again on a fresh connection
                    await conn.close()
                    conn = Connection(*targets[k])
                    sample = await conn.send(raw)
            except (HTTPError, OSError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                await conn.close()
                return
            pool.append(conn)
            if sample.status != 200:
                errors[str(sample.status)] = errors.get(str(sample.status), 0) + 1
                return
            totals.append(sample.total_ms)
            added.append(float(sample.headers.get("x-sigroute-overhead-ms", "nan")))
            waited = sample.headers.get("x-sigroute-upstream-ms")  # absent on cached answers
            beyond_upstream.append(sample.total_ms - (float(waited) if waited is not None else upstream_ms))

    wall = await send_open_loop(arrivals, one, pools, speedup)
    return {"requests": len(arrivals), "ok": len(added), "errors": errors, "wall_s": round(wall, 2),
            "achieved_rps": round(len(added) / wall, 2) if wall > 0 else None,
            "offered_rps": round(len(arrivals) / (arrivals[-1][0] / speedup), 2) if len(arrivals) > 1 else None,
            "added_ms": stats(beyond_upstream, 3), "self_ms": stats(added, 3),
            "added_vs_configured_ttft_ms": stats([t - upstream_ms for t in totals], 3),
            "total_ms": stats(totals, 3)}


class TraceCursor:
    """Takes consecutive requests from the trace, looping at its end; each batch's offsets start at 0."""

    def __init__(self, trace, bodies):
        self.trace, self.bodies = trace, bodies
        self.duration = trace[-1][0] + 1.0
        self.position = 0

    def _peek(self) -> tuple[float, bytes]:
        i, lap = self.position % len(self.trace), self.position // len(self.trace)
        return self.trace[i][0] + lap * self.duration, self.bodies[i]

    def take(self, n: int) -> list[tuple[float, bytes]]:
        return self._take(lambda out, offset: len(out) < n)

    def take_seconds(self, seconds: float) -> list[tuple[float, bytes]]:
        return self._take(lambda out, offset: offset < seconds)

    def _take(self, more) -> list[tuple[float, bytes]]:
        out: list[tuple[float, bytes]] = []
        base = self._peek()[0]
        while True:
            t, body = self._peek()
            if not more(out, t - base):
                return out
            out.append((t - base, body))
            self.position += 1


async def sustained(args, target, cursor, log) -> tuple[list[dict], dict | None]:
    steps, best = [], None
    await replay([target], cursor.take(args.warmup), 1e9)   # warm-up: connections, caches, tokenizer
    speedup = args.start_speedup
    while speedup <= args.max_speedup:
        arrivals = cursor.take(args.step_requests)
        result = await replay([target], arrivals, speedup, args.ttft_ms)
        result["speedup"] = speedup
        span = arrivals[-1][0] / speedup if arrivals else 0.0
        # kept up: done within 5 % of the offered span (plus 1 s for the last answers of a short step)
        result["kept_up"] = result["wall_s"] <= 1.05 * span + 1.0
        result["passed"] = (not result["errors"] and result["kept_up"]
                            and result["added_ms"].get("p99", 1e9) < args.p99_ms)
        steps.append(result)
        log(f"  speed-up {speedup:g}: offered {result['offered_rps']} req/s, achieved {result['achieved_rps']}, "
            f"added p99 {result['added_ms'].get('p99')} ms (self {result['self_ms'].get('p99')}), "
            f"errors {result['errors'] or 0}")
        if not result["passed"]:
            break
        best = result
        speedup *= 2
    return steps, best


async def soak(args, target, pid, cursor, speedup, log) -> dict:
    samples: list[tuple[float, float]] = []
    arrivals = cursor.take_seconds(args.soak_s * speedup)
    started = time.monotonic()

    async def sample_memory():
        while True:
            samples.append((time.monotonic() - started, rss_mb(pid)))
            await asyncio.sleep(5)

    sampler = asyncio.ensure_future(sample_memory())
    try:
        result = await replay([target], arrivals, speedup, args.ttft_ms)
    finally:
        sampler.cancel()
    samples.append((time.monotonic() - started, rss_mb(pid)))
    n = len(samples)
    fifth = max(1, n // 5)
    first = sorted(v for _, v in samples[fifth:2 * fifth]) or [samples[0][1]]
    last = sorted(v for _, v in samples[-fifth:])
    growth = last[len(last) // 2] - first[len(first) // 2]
    log(f"  soak {args.soak_s:g} s at speed-up {speedup:g}: RSS {first[len(first) // 2]:.1f} -> "
        f"{last[len(last) // 2]:.1f} MB, errors {result['errors'] or 0}")
    return {"speedup": speedup, "replay": result, "rss_mb": [(round(t, 1), round(v, 1)) for t, v in samples],
            "growth_mb": round(growth, 2), "bound_mb": RSS_BOUND_MB, "within_bound": growth < RSS_BOUND_MB}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    parser.add_argument("--trace", default=DEFAULT_TRACE)
    parser.add_argument("--step-requests", type=int, default=400, help="requests per speed-up step")
    parser.add_argument("--warmup", type=int, default=50, help="unrecorded requests before the first step")
    parser.add_argument("--start-speedup", type=float, default=4.0)
    parser.add_argument("--max-speedup", type=float, default=1024.0)
    parser.add_argument("--p99-ms", type=float, default=50.0, help="added-latency bound of a passing step")
    parser.add_argument("--soak-s", type=float, default=60.0, help="soak duration (600 = the issue's 10 minutes)")
    parser.add_argument("--replicas", default="1,2,3", help="replica counts to compare ('' to skip)")
    parser.add_argument("--replica-speedup", type=float, default=None,
                        help="speed-up of the replica runs (default: 8× the highest passing single-gateway step, "
                             "beyond what one gateway sustains)")
    parser.add_argument("--max-context", type=int, default=8000, help="cap on prompt words per request")
    parser.add_argument("--ttft-ms", type=float, default=20.0, help="simulated time to first token")
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))

    trace = load_trace(args.trace)
    bodies = [request_body(c, g, args.max_context) for _, c, g in trace]
    log(f"trace {args.trace}: {len(trace)} requests over {trace[-1][0]:.0f} s "
        f"({len(trace) / max(trace[-1][0], 1):.2f} req/s at 1x)")
    env = {"PYTHONUNBUFFERED": "1", "SIGROUTE_LOG_LEVEL": "WARNING"}
    result: dict = {"benchmark": "load", "config": vars(args), "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="sigroute-load-") as tmp:
        sim_path = Path(tmp, "sim.yaml")
        sim_path.write_text(yaml.safe_dump({"seed": 1, "models": {"bench": {
            "ttft_ms": args.ttft_ms, "tokens_per_s": 0, "completion_tokens": 100000}}}))
        with ServerProcess(["sigroute", "sim", "--config", str(sim_path), "--port", "{port}"], env=env,
                           name="sim") as sim:
            policy = bench_policy(sim.url + "/v1")
            policy["models"]["bench"]["context_window"] = 200_000
            policy_path = Path(tmp, "policy.yaml")
            policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
            serve = ["sigroute", "serve", "--policy", str(policy_path), "--port", "{port}", "--log-level", "warning"]
            with ServerProcess(serve, env=env, name="sigroute") as gateway:
                log("sustained rate (single gateway):")
                cursor = TraceCursor(trace, bodies)
                steps, best = asyncio.run(sustained(args, (gateway.host, gateway.port), cursor, log))
                result["steps"] = steps
                soak_speedup = max(1.0, (best["speedup"] if best else args.start_speedup) / 2)
                result["soak"] = asyncio.run(soak(args, (gateway.host, gateway.port), gateway.pid, cursor,
                                                  soak_speedup, log)) if args.soak_s > 0 else None
            counts = [int(x) for x in args.replicas.split(",") if x.strip()]
            if counts:
                result["replicas"] = replicas(args, counts, serve, policy, tmp, trace, bodies,
                                              args.replica_speedup or 8 * (best["speedup"] if best else 1), env, log)
    summary = {
        "max_sustained_rps": best["achieved_rps"] if best else None,
        "p99_added_ms_at_max": best["added_ms"].get("p99") if best else None,
        "p99_self_ms_at_max": best["self_ms"].get("p99") if best else None,
        "speedup_at_max": best["speedup"] if best else None,
        "rss_growth_mb_soak": result["soak"]["growth_mb"] if result.get("soak") else None,
        "soak_s": args.soak_s,
        "replicas": {str(n): r["achieved_rps"] for n, r in (result.get("replicas") or {}).get("runs", {}).items()},
        "replicas_consistent": (result.get("replicas") or {}).get("consistent"),
        "trace": Path(args.trace).name,
    }
    result["summary"] = summary
    emit(result, args.json, log)
    return 0


def replicas(args, counts, serve, policy, tmp, trace, bodies, speedup, env, log) -> dict:
    """The same slice of the trace, offered faster than one gateway sustains, across 1, 2, 3
    gateways sharing one Redis: the achieved rate is what the replicas can serve together."""
    import httpx

    from sigroute.gateway.serving import RedisServer

    policy = dict(policy)
    policy["decisions"] = [dict(d) for d in policy["decisions"]]
    policy["decisions"][-1]["cache"] = {"mode": "exact", "ttl": 600}   # shared state to check
    path = Path(tmp, "replica-policy.yaml")
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    runs, consistent = {}, True
    with RedisServer(tmp) as redis:
        for n in counts:
            log(f"replicas: {n} gateway(s) on one Redis, speed-up {speedup:g}")
            command = [*[p if p != serve[3] else str(path) for p in serve], "--redis", redis.url]
            procs = [ServerProcess(command, env=env, name=f"sigroute-{i}").start() for i in range(n)]
            try:
                targets = [(p.host, p.port) for p in procs]
                cursor = TraceCursor(trace, bodies)          # every replica count gets the same requests
                asyncio.run(replay(targets, cursor.take(args.warmup), 1e9))
                run = asyncio.run(replay(targets, cursor.take(args.step_requests), speedup, args.ttft_ms))
                question = {"model": "auto", "messages": [{"role": "user", "content": f"replica check {n} {time.time()}"}]}
                first = httpx.post(procs[0].url + "/v1/chat/completions", json=question, timeout=30)
                last = httpx.post(procs[-1].url + "/v1/chat/completions", json=question, timeout=30)
                run["cache_shared"] = (first.headers.get("x-sigroute-cache") == "miss"
                                       and last.headers.get("x-sigroute-cache") == "hit-exact")
                consistent = consistent and run["cache_shared"]
                runs[n] = run
                log(f"  {n}: offered {run['offered_rps']}, achieved {run['achieved_rps']} req/s, "
                    f"added p99 {run['added_ms'].get('p99')} ms, "
                    f"errors {run['errors'] or 0}, cache shared {run['cache_shared']}")
            finally:
                for p in procs:
                    p.stop()
    return {"speedup": speedup, "runs": runs, "consistent": consistent}


if __name__ == "__main__":
    raise SystemExit(main())
