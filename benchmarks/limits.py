"""Do rate limits hold across replicas? One caller offering 5× its limit to three gateways.

Setup (all real processes on loopback): one ``redis-server``, the simulated upstream (``sigroute
sim``, one model answering at once), three ``sigroute serve`` replicas, and one API key whose
policy limit is ``--limit`` requests a minute with a bucket of ``--burst``. A load generator plays
that caller: it sends ``--overload`` × the limit (5×) for ``--duration-s`` seconds, open loop (each
request leaves at its own time, whether or not earlier ones were answered), round-robin over the
replicas, and counts the answers: 200 admitted, 429 refused, anything else an error.

Two limits are measured (``--kind``, default both):

* **requests**: ``rate_limit: {requests_per_minute: L, burst: B}``; counted: the requests answered 200;
* **tokens**: ``rate_limit: {tokens_per_minute: L × E, token_burst: B × E}``, where E is what one of
  the caller's requests reserves (its prompt as the gateway counts it + ``max_tokens`` 8), so 5× the
  request rate is 5× the token rate; counted: the tokens the admitted requests really used (their
  answers' ``usage.total_tokens``: each reservation is settled to that after the answer).

For each, two runs, the same traffic:

* **shared**: the replicas started with ``--redis`` (the buckets live in Redis, one Lua script per
  check);
* **memory** (the baseline): the replicas without Redis, each with its own in-process bucket.

What a limit may admit over a run is its bucket plus what refilled while the run lasted:
``allowed = burst + limit × T / 60``, where ``T`` is the time from the first request sent to the
last (the bucket is full when the first request arrives and the caller never lets it fill). Each
run reports ``admitted``, ``allowed`` and ``admitted_over_limit = admitted / allowed``: 1.0 when the
limit holds exactly, about 3.0 when each of three replicas admits the limit by itself. The target
for the shared run is within 5 % of 1.0.

    python -m benchmarks.limits [--quick] [--limit 600] [--burst 10] [--duration-s 60] [--overload 5] [--json PATH]

``--quick`` is a ~15 s run per limit and run (limit 240/min, burst 4) for the test suite. The last
line printed is the summary: ``admitted_over_limit`` (requests, shared), ``memory_admitted_over_limit``
(requests, baseline), ``tokens_admitted_over_limit`` and ``tokens_memory_admitted_over_limit`` (the
same for the token limit), and the counts behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

from benchmarks.loadgen import Connection, HTTPError, ServerProcess, machine_info
from benchmarks.report import emit

API_KEY = "sk-bench-limits"
WARM_KEY = "sk-bench-limits-warm-up"     # no limit: warms each replica before the window
REPLICAS = 3
PROMPT = "limits benchmark"
MAX_TOKENS = 8


def reserved_per_request() -> int:
    """What one of the caller's requests reserves under a token limit (the gateway's own count)."""
    from sigroute.signals.context import Message
    from sigroute.signals.tokens import count_message_tokens

    return count_message_tokens([Message(role="user", text=PROMPT, kinds=frozenset({"text"}))]) + MAX_TOKENS


def policy(sim_url: str, rate_limit: dict) -> dict:
    """One model on the simulator; one API key with the limit under test."""
    return {
        "version": 1,
        "models": {"bench": {"provider": "openai/bench", "api_base": sim_url + "/v1",
                             "price": {"input": 0, "output": 0}}},
        "decisions": [{"name": "default", "models": ["bench"]}],
        "upstream": {"retries": 0, "backoff_s": 0.0},
        "auth": {"keys": [{"key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest(), "tenant": "bench",
                           "rate_limit": rate_limit},
                          {"key_sha256": hashlib.sha256(WARM_KEY.encode()).hexdigest(), "tenant": "warm"}]},
    }


class RoundRobinCaller:
    """One caller sending requests open loop, round-robin over `targets`, a keep-alive connection
    per request in flight (reused once it is free)."""

    def __init__(self, targets: list[tuple[str, int]]):
        self.targets = targets
        self.free: list[list[Connection]] = [[] for _ in targets]
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.tokens = 0           # usage.total_tokens of the admitted answers
        self.body = orjson.dumps({"model": "auto", "max_tokens": MAX_TOKENS,
                                  "messages": [{"role": "user", "content": PROMPT}]})

    async def one(self, index: int) -> None:
        which = index % len(self.targets)
        pool = self.free[which]
        connection = pool.pop() if pool else Connection(*self.targets[which])
        raw = connection.prepare("POST", "/v1/chat/completions", self.body,
                                 {"content-type": "application/json", "authorization": f"Bearer {API_KEY}"})
        try:
            sample = await connection.send(raw, keep_body=True)
        except (HTTPError, OSError):
            self.errors += 1
            await connection.close()
            return
        self.statuses[sample.status] = self.statuses.get(sample.status, 0) + 1
        if sample.status == 200:
            self.tokens += int(orjson.loads(sample.body)["usage"]["total_tokens"])
        pool.append(connection)

    async def offer(self, rate_per_s: float, duration_s: float) -> dict:
        """Send `rate_per_s` requests a second for `duration_s`; wait for every answer."""
        count = max(1, int(rate_per_s * duration_s))
        tasks = []
        started = time.perf_counter()
        last_sent = started
        for i in range(count):
            delay = started + i / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            last_sent = time.perf_counter()
            tasks.append(asyncio.create_task(self.one(i)))
        await asyncio.gather(*tasks)
        for pool in self.free:
            for connection in pool:
                await connection.close()
        return {"sent": count, "span_s": round(last_sent - started, 3),
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}, "errors": self.errors,
                "tokens": self.tokens}


def warm_up(procs) -> None:
    """One request per replica under an unlimited key, before the measured window: what a replica
    does once (connections to the simulator and Redis, first-request work) must not stall the window
    while the caller's bucket refills past full."""
    import httpx

    for p in procs:
        httpx.post(p.url + "/v1/chat/completions", timeout=60, headers={"authorization": f"Bearer {WARM_KEY}"},
                   json={"model": "auto", "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": "warm"}]})


def run_replicas(args, kind: str, policy_path: Path, redis_url: str | None, env: dict, log) -> dict:
    """Start the replicas (sharing `redis_url`, or each on its own memory), offer the load, count
    what the `kind` limit ("requests" or "tokens") admitted."""
    command = [sys.executable, "-m", "sigroute.gateway.cli", "serve", "--policy", str(policy_path),
               "--port", "{port}", "--log-level", "warning", *(("--redis", redis_url) if redis_url else ())]
    procs = []
    try:
        for i in range(REPLICAS):
            procs.append(ServerProcess(command, env=env, name=f"sigroute-{i}").start())
        caller = RoundRobinCaller([(p.host, p.port) for p in procs])
        warm_up(procs)
        offered = args.limit * args.overload / 60.0
        run = asyncio.run(caller.offer(offered, args.duration_s))
    finally:
        for p in procs:
            p.stop()
    unit = 1 if kind == "requests" else reserved_per_request()   # the limit's units per request
    limit, burst = args.limit * unit, args.burst * unit
    admitted = run["statuses"].get("200", 0) if kind == "requests" else run["tokens"]
    allowed = burst + limit * run["span_s"] / 60.0
    run.update(kind=kind, limit_per_min=limit, burst=burst, admitted=admitted, refused=run["statuses"].get("429", 0),
               offered_rps=round(offered, 3), allowed=round(allowed, 2),
               admitted_over_limit=round(admitted / allowed, 4),
               admitted_per_min=round(max(0, admitted - burst) / max(run["span_s"], 1e-9) * 60, 2))
    log(f"  {kind}, {'shared (Redis)' if redis_url else 'memory (per replica)'}: sent {run['sent']} over "
        f"{run['span_s']} s, admitted {admitted} {kind} of {allowed:.1f} allowed ({run['admitted_over_limit']}x), "
        f"refused {run['refused']}, other {sum(v for k, v in run['statuses'].items() if k not in ('200', '429'))}, "
        f"errors {run['errors']}")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a ~15 s run (limit 240/min, burst 4) for tests")
    parser.add_argument("--limit", type=float, default=None, help="requests per minute (default 600; quick 240)")
    parser.add_argument("--burst", type=int, default=None, help="bucket size (default 10; quick 4)")
    parser.add_argument("--duration-s", type=float, default=None,
                        help="how long the caller sends (default 60; quick 15)")
    parser.add_argument("--overload", type=float, default=5.0, help="offered rate as a multiple of the limit")
    parser.add_argument("--kind", choices=("both", "requests", "tokens"), default="both",
                        help="which limit to measure (default: both)")
    parser.add_argument("--skip-memory", action="store_true", help="skip the per-replica memory baseline")
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    args.limit = args.limit or (240.0 if args.quick else 600.0)
    args.burst = args.burst or (4 if args.quick else 10)
    args.duration_s = args.duration_s or (15.0 if args.quick else 60.0)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))

    from sigroute.gateway.serving import RedisServer

    env = {"PYTHONUNBUFFERED": "1", "SIGROUTE_LOG_LEVEL": "WARNING"}
    result: dict = {"benchmark": "limits", "config": vars(args), "machine": machine_info(), "replicas": REPLICAS}
    log(f"{REPLICAS} replicas, limit {args.limit:g}/min (burst {args.burst}), offered {args.overload:g}x "
        f"for {args.duration_s:g} s, round-robin")
    with tempfile.TemporaryDirectory(prefix="sigroute-limits-") as tmp:
        sim_path = Path(tmp, "sim.yaml")
        sim_path.write_text(yaml.safe_dump({"seed": 1, "models": {"bench": {
            "ttft_ms": 1, "tokens_per_s": 0, "completion_tokens": 8}}}))
        sim_command = [sys.executable, "-m", "sigroute.gateway.cli", "sim", "--config", str(sim_path),
                       "--port", "{port}"]
        with ServerProcess(sim_command, env=env, name="sim") as sim:
            for kind in ("requests", "tokens") if args.kind == "both" else (args.kind,):
                unit = 1 if kind == "requests" else reserved_per_request()
                limit = ({"requests_per_minute": args.limit, "burst": args.burst} if kind == "requests" else
                         {"tokens_per_minute": args.limit * unit, "token_burst": args.burst * unit})
                policy_path = Path(tmp, f"policy-{kind}.yaml")
                policy_path.write_text(yaml.safe_dump(policy(sim.url, limit), sort_keys=False))
                with RedisServer(tmp) as redis:
                    shared = run_replicas(args, kind, policy_path, redis.url, env, log)
                memory = None if args.skip_memory else run_replicas(args, kind, policy_path, None, env, log)
                result[kind] = {"shared": shared, "memory": memory}
    summary: dict = {}
    for kind, prefix in (("requests", ""), ("tokens", "tokens_")):
        if kind not in result:
            continue
        shared, memory = result[kind]["shared"], result[kind]["memory"]
        summary.update({
            f"{prefix}admitted_over_limit": shared["admitted_over_limit"],
            f"{prefix}memory_admitted_over_limit": memory["admitted_over_limit"] if memory else None,
            f"{prefix}admitted": shared["admitted"], f"{prefix}allowed": shared["allowed"],
            f"{prefix}memory_admitted": memory["admitted"] if memory else None,
            f"{prefix}limit_per_min": shared["limit_per_min"]})
    summary.update(offered_per_s=round(args.limit * args.overload / 60.0, 3), duration_s=args.duration_s,
                   errors=sum(run["errors"] for kind in ("requests", "tokens") if kind in result
                              for run in result[kind].values() if run))
    result["summary"] = summary
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
