"""sigroute side by side with the LiteLLM proxy, a bare pass-through proxy and the upstream itself.

Everything runs on this machine, in one run, against the same simulated upstream (`gateway.sim`:
one model, 5 ms to the first token, 16 tokens at 2,000 tokens/s), each server in its own process:

  direct           the simulated upstream, called without a proxy (the baseline of "added latency")
  passthrough      `benchmarks.passthrough`: FastAPI + pooled httpx forwarding bytes, no logic; the floor
  sigroute         ``sigroute serve`` with the heuristic-only policy of `benchmarks.overhead`
                   (keyword, context-length and header signals, five decisions, static selection)
  sigroute_neural  ``sigroute serve`` with a neural policy: domain and jailbreak signals on the shared
                   sentence embedding, a jailbreak-blocking decision, and a semantic cache
                   (exact, then embedding + verifier) on every other decision; the benchmark's
                   requests carry ``cache-control: no-store`` so each one pays a full cache lookup
                   and misses (the cache is filled with other questions first), then calls upstream
  litellm          the LiteLLM proxy (``litellm --config``) with the same model, simple-shuffle
                   routing, no database, one worker, no master key
  sigroute_litellm (``--with-litellm-transport``) sigroute's heuristic policy with the model forced
                   onto its litellm transport instead of the direct OpenAI-compatible client: the
                   price of going through the litellm library inside sigroute

The LiteLLM proxy is not a dependency of sigroute. This benchmark installs nothing; create a
separate virtualenv for it once (its dependencies conflict with nothing here, but keep them apart)::

    python -m venv .venv-litellm
    .venv-litellm/bin/pip install 'litellm[proxy]'
    python -m benchmarks.vs_litellm --litellm-bin .venv-litellm/bin/litellm

(``--litellm-bin`` defaults to ``$LITELLM_BIN`` or ``.venv-litellm/bin/litellm``; ``--no-litellm``
runs the rest without it.)

The load generator (`benchmarks.loadgen`, its own process) runs closed loops of 1, 16 and 64
clients, one keep-alive connection each, non-streamed and streamed. Every request is distinct
(its ``seed`` and the number at the end of its user message differ, so no cache, request
coalescing or memo of a text can serve one request from another) and
the same list of bodies goes to every target. Rounds are interleaved: in each round, for each
scenario, one batch per target, the order rotating from round to round, so that drifts in machine
speed hit every target alike.

Reported per scenario and target:

- added latency = target minus direct, for the time to the last byte: p50 as the median over
  rounds of the per-round difference (robust to one noisy round), p95 and p99 over all rounds'
  samples pooled; for streams also the time to the first byte;
- requests/s (median over rounds of each batch's throughput; in a closed loop at 16 and 64 clients
  this is the most the target serves on these cores),
- CPU seconds per 1,000 requests (user + system time of the target's process tree, from /proc),
- resident memory (largest RSS of the target's process tree seen after a batch).

``embedding_forward_ms_p50`` is one forward pass of the sentence encoder over the benchmark's user
message, batch of one, 15 ms apart (as requests arrive at one client), measured in a separate
process while the servers are idle (the same
``signals.encoder.Encoder`` the gateway uses, on the same device); the gateway's own mean forward
time, from its ``/metrics``, is reported beside it. The device the gateway's encoder ran on comes
from its ``/ready``.

    python -m benchmarks.vs_litellm                      # ~6 minutes on 2 cores
    python -m benchmarks.vs_litellm --quick              # smoke run, ~1 minute
    python -m benchmarks.vs_litellm --rounds 8 --json results/vs_litellm.json

Targets (reported, not enforced): sigroute's added latency ≤ 0.5 × LiteLLM's at every concurrency
(p50 and p99) and ≤ 1.5 × the pass-through's p50; ≥ 2 × LiteLLM's requests/s; the neural path's
added p50 at one client ≤ one embedding forward pass + 2 ms.

The last line printed is the summary: for ``c1``, ``c16``, ``c64`` (and ``c1_stream`` …)
``{sigroute_added_ms_p50, sigroute_added_ms_p99, litellm_added_ms_p50, litellm_added_ms_p99,
passthrough_added_ms_p50, ratio_p50, ratio_p99, ratio_vs_passthrough_p50, rps_ratio, …}``, then
``neural_added_ms_p50_c1`` and ``embedding_forward_ms_p50``.

Reading the numbers: on a machine with few cores, the load generator, the simulator and the proxy
share them; at 16 and 64 clients every proxy saturates its single process, so added latency there
is mostly queueing and follows CPU time per request. A negative added latency means the proxy was
within noise of the direct call (a proxy in front can even smooth the simulator's own queueing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

from benchmarks.loadgen import (
    Connection,
    ServerProcess,
    closed_loop,
    cpu_seconds,
    interleaved_rounds,
    machine_info,
    median,
    percentile,
    run_async,
)
from benchmarks.overhead import SYSTEM_PROMPT, USER_PROMPT, bench_policy, git_commit, sim_config
from benchmarks.report import emit

PATH = "/v1/chat/completions"
#: name -> (concurrency, streamed)
SCENARIOS = {"c1": (1, False), "c16": (16, False), "c64": (64, False),
             "c1_stream": (1, True), "c16_stream": (16, True), "c64_stream": (64, True)}
PROXIES = ("passthrough", "sigroute", "sigroute_neural", "litellm", "sigroute_litellm")
RATIO_TARGET = 0.5          # sigroute added / litellm added, p50 and p99
PASSTHROUGH_TARGET = 1.5    # sigroute added p50 / pass-through added p50
RPS_TARGET = 2.0            # sigroute rps / litellm rps
NEURAL_SLACK_MS = 2.0       # neural added p50 at c1 ≤ embedding forward + this
DISTINCT_BODIES = 512
NO_STORE = {"cache-control": "no-store"}

# Questions that fill the neural gateway's cache before the measurements (none is near the
# benchmark's own request, so its lookups search a populated cache and miss).
_FILL_SUBJECTS = ("sourdough starter", "bicycle chain", "tomato seedlings", "a leaking tap", "winter tyres",
                  "a cast iron pan", "houseplant cuttings", "a squeaky door", "solar garden lights",
                  "a sticky zipper", "basil on a windowsill", "a flat football", "wool jumpers",
                  "a slow laptop fan", "garden compost", "a dull kitchen knife")
_FILL_ASKS = ("How do I look after {}?", "What is the easiest way to fix {}?", "Give me two tips for {}.",
              "What should a beginner know about {}?")


def fill_questions() -> list[str]:
    return [ask.format(subject) for subject in _FILL_SUBJECTS for ask in _FILL_ASKS]


def neural_policy(api_base: str) -> dict:
    """Domain + jailbreak signals on the shared embedding, a blocking decision, a semantic cache."""
    cache = {"mode": "exact_then_semantic", "threshold": 0.9, "ttl": "1h", "max_entries": 100000}
    return {
        "version": 1,
        "models": {"bench": {"provider": "openai/bench", "api_base": api_base, "price": {"input": 0.1, "output": 0.2},
                             "context_window": 32768}},
        "signals": {
            "domain": {"stem": {"categories": ["math", "physics", "chemistry", "engineering", "computer science"]},
                       "law": {"categories": ["law"], "threshold": 0.5}},
            "jailbreak": {"attack": {}},
            "keyword": {"urgent": {"any": ["urgent", "asap", "immediately"]}},
        },
        "decisions": [
            {"name": "block-attacks", "priority": 100, "rules": "jailbreak:attack", "models": ["bench"],
             "plugins": [{"jailbreak": {"block_above": 0.98}}]},
            {"name": "stem", "priority": 50, "rules": "domain:stem", "models": ["bench"], "cache": cache},
            {"name": "law", "priority": 50, "rules": "domain:law", "models": ["bench"], "cache": cache},
            {"name": "default", "models": ["bench"], "cache": cache},
        ],
        "entrypoints": {"auto": {}},
        "routing": {"allow_direct_models": False},
        "upstream": {"retries": 0},
    }


def litellm_transport_policy(api_base: str) -> dict:
    policy = bench_policy(api_base)
    policy["models"]["bench"]["transport"] = "litellm"
    return policy


def litellm_config(api_base: str) -> dict:
    return {
        "model_list": [{"model_name": "bench",
                        "litellm_params": {"model": "openai/bench", "api_base": api_base, "api_key": "sk-none"}}],
        "router_settings": {"routing_strategy": "simple-shuffle"},
        "litellm_settings": {"telemetry": False, "drop_params": True, "set_verbose": False},
        # no master key (sigroute's bench policies have no auth either); LiteLLM asks for this to start
        "general_settings": {"dangerously_permit_weak_or_unset_master_key": True},
    }


def user_message(seed: int) -> str:
    """The benchmark's user message, numbered so that no two requests carry the same text (nothing
    computed from the text of one request can be reused for the next)."""
    return f"{USER_PROMPT} (Note {seed}.)"


def request_bodies(model: str, stream: bool, count: int = DISTINCT_BODIES) -> list[bytes]:
    out = []
    for seed in range(count):
        body = {"model": model, "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                             {"role": "user", "content": user_message(seed)}],
                "max_tokens": 64, "temperature": 0, "seed": seed}
        if stream:
            body["stream"] = True
        out.append(orjson.dumps(body))
    return out


# ------------------------------------------------------------------------------------------------
# processes


def tree_pids(pid: int) -> list[int]:
    """`pid` and all its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as f:
                    todo.extend(int(child) for child in f.read().split())
        except OSError:
            continue
    return out


def tree_cpu_seconds(pid: int) -> float | None:
    values = [cpu_seconds(p) for p in tree_pids(pid)]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def tree_rss_mb(pid: int) -> float | None:
    total = 0.0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
                        break
        except OSError:
            continue
    return total or None


def find_litellm(explicit: str | None) -> str | None:
    """The LiteLLM proxy command: the one given (which must exist: a typo never silently
    benchmarks another binary), else $LITELLM_BIN, else .venv-litellm/bin/litellm."""
    candidates = [explicit] if explicit else [os.environ.get("LITELLM_BIN"), ".venv-litellm/bin/litellm"]
    for candidate in candidates:
        if not candidate:
            continue
        path = Path(candidate)
        if path.is_file() and os.access(path, os.X_OK):
            return str(path.resolve())
        found = shutil.which(candidate)
        if found:
            return found
    return None


def measure_embedding_forward(samples: int, device: str, backend: str = "auto") -> dict:
    """In this process: p50 of one encoder forward pass over the benchmark's user message."""
    from sigroute.signals.encoder import Encoder

    encoder = Encoder(device=device, backend=backend)
    for i in range(10):
        encoder.encode([user_message(i)])
    times = []
    for i in range(samples):
        text = user_message(i)
        t0 = time.perf_counter()
        encoder.encode([text])
        times.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.015)  # a gap between passes, as between requests (threads go idle)
    return {"device": encoder.device, "backend": encoder.backend, "samples": samples,
            "p50_ms": round(percentile(times, 50), 4),
            "p95_ms": round(percentile(times, 95), 4), "model": encoder.model_name}


def embedding_forward_in_subprocess(samples: int, device: str, backend: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.vs_litellm", "--embedding-forward-only",
                          "--embedding-samples", str(samples), "--embedding-device", device,
                          "--encoder-backend", backend],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"measuring the embedding forward pass failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# the run


class Bench:
    def __init__(self, args, servers: dict[str, ServerProcess]):
        self.args = args
        self.servers = servers
        self.targets = ["direct"] + [p for p in PROXIES if p in servers]
        self.bodies = {}
        for target in self.targets:
            model = "auto" if target.startswith("sigroute") else "bench"
            for stream in (False, True):
                self.bodies[(target, stream)] = request_bodies(model, stream)
        self.rss: dict[str, float] = {}

    def headers_for(self, target: str) -> dict[str, str]:
        return NO_STORE if target == "sigroute_neural" else {}

    async def _send_one(self, target: str, body: bytes, headers: dict | None = None):
        server = self.servers[target]
        conn = Connection(server.host, server.port)
        raw = conn.prepare("POST", PATH, body, {"content-type": "application/json", **(headers or {})})
        try:
            return await conn.send(raw, keep_body=True)
        finally:
            await conn.close()

    async def check(self) -> dict:
        """One request per target and mode: right status, complete stream, the expected route."""
        seen = {}
        for target in self.targets:
            for stream in (False, True):
                sample = await self._send_one(target, self.bodies[(target, stream)][0], self.headers_for(target))
                what = f"{target} ({'streamed' if stream else 'not streamed'})"
                if sample.status != 200:
                    raise RuntimeError(f"{what} answered {sample.status}: {sample.body[:500]!r}")
                if stream and b"data: [DONE]" not in sample.body:
                    raise RuntimeError(f"{what}: the stream did not end with [DONE]: {sample.body[-300:]!r}")
                if not stream and b'"choices"' not in sample.body:
                    raise RuntimeError(f"{what}: no choices in {sample.body[:300]!r}")
                if target.startswith("sigroute"):
                    headers = {k: v for k, v in sample.headers.items() if k.startswith("x-sigroute")}
                    if target == "sigroute_neural":
                        if headers.get("x-sigroute-decision") == "block-attacks":
                            raise RuntimeError(f"{what}: the bench request was blocked as an attack")
                        if headers.get("x-sigroute-cache") != "miss":
                            raise RuntimeError(f"{what}: expected a cache miss, got {headers.get('x-sigroute-cache')!r}")
                    elif headers.get("x-sigroute-decision") != "default":
                        raise RuntimeError(f"{what}: expected the default decision, got {headers}")
                    seen[f"{target} stream={stream}"] = headers
        return seen

    async def fill_cache(self) -> int:
        """Store answers to unrelated questions in the neural gateway's cache (the seeds of some of
        the benchmark's bodies, so its lookups also search partitions that hold entries).
        Returns how many answers were stored, from the gateway's metrics."""
        seeds = [i * DISTINCT_BODIES // self.args.fill_seeds for i in range(self.args.fill_seeds)]
        bodies = [orjson.dumps({"model": "auto", "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                                               {"role": "user", "content": question}],
                                "max_tokens": 64, "temperature": 0, "seed": seed})
                  for question in fill_questions() for seed in seeds]
        server = self.servers["sigroute_neural"]
        await closed_loop(server.host, server.port, PATH, bodies, concurrency=8, warmup=0, requests=len(bodies))
        sample = await self._send_one_get("sigroute_neural", "/metrics")
        return int(sum(float(line.split()[-1]) for line in sample.body.decode().splitlines()
                       if line.startswith("sigroute_cache_stores_total{")))

    async def scrape_encoder(self) -> tuple[float, float]:
        """(forward passes, seconds in them) so far, from the neural gateway's /metrics."""
        server = self.servers["sigroute_neural"]
        conn = Connection(server.host, server.port)
        sample = await conn.send(conn.prepare("GET", "/metrics", b"", {}), keep_body=True)
        await conn.close()
        values = {}
        for line in sample.body.decode().splitlines():
            for name in ("sigroute_encoder_calls", "sigroute_encoder_seconds"):
                if line.startswith(name + " "):
                    values[name] = float(line.split()[1])
        return values.get("sigroute_encoder_calls", 0.0), values.get("sigroute_encoder_seconds", 0.0)

    async def ready_info(self, target: str) -> dict:
        sample = await self._send_one_get(target, "/ready")
        return orjson.loads(sample.body) if sample.status == 200 else {"status": sample.status}

    async def _send_one_get(self, target: str, path: str):
        server = self.servers[target]
        conn = Connection(server.host, server.port)
        try:
            return await conn.send(conn.prepare("GET", path, b"", {}), keep_body=True)
        finally:
            await conn.close()

    def requests_for(self, concurrency: int) -> int:
        return {1: self.args.requests_c1, 16: self.args.requests_c16}.get(concurrency, self.args.requests_c64)

    async def batch(self, target: str, scenario: str, requests: int | None = None) -> dict:
        concurrency, stream = SCENARIOS[scenario]
        server = self.servers[target]
        pid = server.pid
        sim_pid = self.servers["direct"].pid
        cpu0, sim0 = tree_cpu_seconds(pid), cpu_seconds(sim_pid)
        scrape = target == "sigroute_neural" and scenario == "c1" and requests is None
        enc0 = await self.scrape_encoder() if scrape else None
        result = await closed_loop(server.host, server.port, PATH, self.bodies[(target, stream)],
                                   concurrency=concurrency, warmup=self.args.warmup,
                                   requests=requests or self.requests_for(concurrency),
                                   headers=self.headers_for(target))
        cpu1, sim1 = tree_cpu_seconds(pid), cpu_seconds(sim_pid)
        rss = tree_rss_mb(pid)
        if rss is not None:
            self.rss[target] = max(self.rss.get(target, 0.0), rss)
        record = {
            "target": target, "scenario": scenario,
            "total_ms": [s.total_ms for s in result.samples],
            "ttfb_ms": [s.first_byte_ms for s in result.samples],
            "throughput_rps": result.throughput, "sent": result.sent,
            # the proxy's process tree (for direct: the simulator itself)
            "cpu_s_per_1k": None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) * 1000 / result.sent,
            # the simulated upstream's own CPU time (to see that it was not the bottleneck)
            "sim_cpu_s_per_1k": None if sim0 is None or sim1 is None else (sim1 - sim0) * 1000 / result.sent,
        }
        if target.startswith("sigroute"):
            record["self_ms"] = [float(s.headers.get("x-sigroute-overhead-ms", "nan")) for s in result.samples]
        if enc0 is not None:
            enc1 = await self.scrape_encoder()
            passes = enc1[0] - enc0[0]
            record["encoder_forward_ms_mean"] = (enc1[1] - enc0[1]) * 1000 / passes if passes else None
            record["encoder_passes"] = passes
        return record

    async def run(self, log) -> tuple[list[dict], dict]:
        args = self.args
        checked = await self.check()
        if "sigroute_neural" in self.servers:
            t0 = time.perf_counter()
            stored = await self.fill_cache()
            log(f"neural gateway: {stored} answers cached in {time.perf_counter() - t0:.1f}s")
        for scenario in args.scenarios:  # one unrecorded pass warms pools, caches and connections
            for target in self.targets:
                await self.batch(target, scenario, requests=SCENARIOS[scenario][0] * 4)
        records = await interleaved_rounds(args.rounds, args.scenarios, self.targets, self.batch, log)
        return records, checked


# ------------------------------------------------------------------------------------------------
# analysis


def _r(x, digits=3):
    return None if x is None else round(x, digits)


def _ratio(a, b, digits=3):
    return round(a / b, digits) if a is not None and b is not None and b > 0 else None


def analyse(records: list[dict], scenarios: list[str], targets: list[str]) -> tuple[dict, dict]:
    summary: dict = {}
    details: dict = {}
    rounds = sorted({rec["round"] for rec in records})
    for scenario in scenarios:
        stream = SCENARIOS[scenario][1]
        by = {(rec["round"], rec["target"]): rec for rec in records if rec["scenario"] == scenario}
        per_target: dict[str, dict] = {}
        for target in targets:
            recs = [by[(r, target)] for r in rounds]
            pooled = [x for rec in recs for x in rec["total_ms"]]
            pooled_ttfb = [x for rec in recs for x in rec["ttfb_ms"]]
            cpu = [rec["cpu_s_per_1k"] for rec in recs]
            sim_cpu = [rec["sim_cpu_s_per_1k"] for rec in recs]
            entry = {
                "p50_by_round": [_r(percentile(rec["total_ms"], 50), 4) for rec in recs],
                "total_ms": {q: _r(percentile(pooled, q), 4) for q in (50, 95, 99)},
                "ttfb_ms": {q: _r(percentile(pooled_ttfb, q), 4) for q in (50, 95, 99)},
                "rps": _r(median([rec["throughput_rps"] for rec in recs]), 1),
                "cpu_s_per_1k": _r(median(cpu), 3) if all(c is not None for c in cpu) else None,
                "sim_cpu_s_per_1k": _r(median(sim_cpu), 3) if all(c is not None for c in sim_cpu) else None,
            }
            if "self_ms" in recs[0]:
                own = [x for rec in recs for x in rec["self_ms"]]
                entry["self_ms"] = {q: _r(percentile(own, q), 4) for q in (50, 99)}
            per_target[target] = entry
        direct = per_target["direct"]
        added: dict[str, dict] = {}
        for target in targets[1:]:
            mine = per_target[target]
            diffs = [a - b for a, b in zip(mine["p50_by_round"], direct["p50_by_round"])]
            added[target] = {
                "p50": _r(median(diffs)),
                "p50_rounds_min": _r(min(diffs)), "p50_rounds_max": _r(max(diffs)),
                "p95": _r(mine["total_ms"][95] - direct["total_ms"][95]),
                "p99": _r(mine["total_ms"][99] - direct["total_ms"][99]),
            }
            if stream:
                added[target]["ttfb_p50"] = _r(mine["ttfb_ms"][50] - direct["ttfb_ms"][50])
                added[target]["ttfb_p99"] = _r(mine["ttfb_ms"][99] - direct["ttfb_ms"][99])

        def a(target, key):
            return added.get(target, {}).get(key)

        def positive(x):  # a ratio over a baseline within noise of zero means nothing
            return x if x is not None and x > 0.05 else None

        sr, ll, pt = "sigroute", "litellm", "passthrough"
        entry = {
            "sigroute_added_ms_p50": a(sr, "p50"), "sigroute_added_ms_p95": a(sr, "p95"),
            "sigroute_added_ms_p99": a(sr, "p99"),
            "litellm_added_ms_p50": a(ll, "p50"), "litellm_added_ms_p95": a(ll, "p95"),
            "litellm_added_ms_p99": a(ll, "p99"),
            "passthrough_added_ms_p50": a(pt, "p50"), "passthrough_added_ms_p99": a(pt, "p99"),
            "neural_added_ms_p50": a("sigroute_neural", "p50"), "neural_added_ms_p99": a("sigroute_neural", "p99"),
            "ratio_p50": _ratio(a(sr, "p50"), positive(a(ll, "p50"))),
            "ratio_p99": _ratio(a(sr, "p99"), positive(a(ll, "p99"))),
            "ratio_vs_passthrough_p50": _ratio(a(sr, "p50"), positive(a(pt, "p50"))),
            "rps": {t: per_target[t]["rps"] for t in targets},
            "rps_ratio": _ratio(per_target.get(sr, {}).get("rps"), per_target.get(ll, {}).get("rps"), 2),
            "cpu_s_per_1k": {t: per_target[t]["cpu_s_per_1k"] for t in targets},
            "direct_ms_p50": direct["total_ms"][50],
        }
        if "sigroute_litellm" in added:
            entry["sigroute_litellm_transport_added_ms_p50"] = a("sigroute_litellm", "p50")
        if stream:
            entry["sigroute_added_ttft_ms_p50"] = a(sr, "ttfb_p50")
            entry["litellm_added_ttft_ms_p50"] = a(ll, "ttfb_p50")
            entry["passthrough_added_ttft_ms_p50"] = a(pt, "ttfb_p50")
        entry["self_ms_p50"] = per_target.get(sr, {}).get("self_ms", {}).get(50)
        summary[scenario] = entry
        details[scenario] = {"added_ms": added, "targets": per_target}
    return summary, details


def meets_targets(summary: dict) -> dict:
    out = {}
    for scenario in SCENARIOS:
        e = summary.get(scenario)
        if not e:
            continue
        checks = {}
        if e["litellm_added_ms_p50"] is not None and e["sigroute_added_ms_p50"] is not None:
            # sigroute at or below zero added latency beats any positive LiteLLM number
            checks["p50_vs_litellm"] = (e["sigroute_added_ms_p50"]
                                        <= RATIO_TARGET * max(e["litellm_added_ms_p50"], 0.0))
            checks["p99_vs_litellm"] = (e["sigroute_added_ms_p99"]
                                        <= RATIO_TARGET * max(e["litellm_added_ms_p99"], 0.0))
            checks["rps_vs_litellm"] = e["rps_ratio"] is not None and e["rps_ratio"] >= RPS_TARGET
        if e["passthrough_added_ms_p50"] is not None and e["sigroute_added_ms_p50"] is not None:
            checks["p50_vs_passthrough"] = (e["sigroute_added_ms_p50"]
                                            <= PASSTHROUGH_TARGET * max(e["passthrough_added_ms_p50"], 0.0))
        out[scenario] = checks
    return out


def print_table(summary: dict, targets: list[str], out=sys.stderr) -> None:
    def fmt(v, w=8, d=2):
        return f"{v:>{w}.{d}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"

    print("\nadded latency over calling the upstream directly (ms; p50 / p99), requests/s, CPU s per 1k requests",
          file=out)
    names = [t for t in targets if t != "direct"]
    print(f"{'scenario':<11}" + "".join(f"{t:>26}" for t in names), file=out)
    for scenario, e in summary.items():
        if scenario not in SCENARIOS:
            continue
        cells = []
        for t in names:
            key = {"sigroute_neural": "neural"}.get(t, t)
            p50 = e.get(f"{key}_added_ms_p50")
            p99 = e.get(f"{key}_added_ms_p99")
            if t == "sigroute_litellm":
                p50 = e.get("sigroute_litellm_transport_added_ms_p50")
            cells.append(f"{fmt(p50, 7, 1)}/{fmt(p99, 6, 1)} {fmt(e['rps'].get(t), 5, 0)}r {fmt(e['cpu_s_per_1k'].get(t), 4, 1)}c")
        print(f"{scenario:<11}" + "".join(f"{c:>26}" for c in cells), file=out)


# ------------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.vs_litellm",
                                description="sigroute vs the LiteLLM proxy vs a pass-through, same machine, same run.")
    p.add_argument("--litellm-bin", default=None, help="the LiteLLM proxy's `litellm` command (see the docstring)")
    p.add_argument("--no-litellm", action="store_true", help="run without the LiteLLM proxy")
    p.add_argument("--with-litellm-transport", action="store_true",
                   help="also run sigroute with its model on the litellm library transport")
    p.add_argument("--no-neural", action="store_true", help="skip the neural sigroute policy")
    p.add_argument("--targets", default=None,
                   help=f"comma-separated subset of {', '.join(PROXIES)} (direct always runs; default: all that are set up)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5; quick: 1)")
    p.add_argument("--requests-c1", type=int, default=None, help="recorded requests per batch at 1 client (100)")
    p.add_argument("--requests-c16", type=int, default=None, help="... at 16 clients (320)")
    p.add_argument("--requests-c64", type=int, default=None, help="... at 64 clients (640)")
    p.add_argument("--warmup", type=int, default=2, help="unrecorded requests per client before each batch")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"subset of {', '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="smoke run")
    p.add_argument("--ttft-ms", type=float, default=5.0)
    p.add_argument("--tokens-per-s", type=float, default=2000.0)
    p.add_argument("--completion-tokens", type=int, default=16)
    p.add_argument("--embedding-samples", type=int, default=200)
    p.add_argument("--embedding-device", default="auto", help="device for the encoder (gateway and measurement)")
    p.add_argument("--encoder-backend", default="auto", choices=("auto", "torch", "onnx"),
                   help="the neural gateway's encoder backend (policy encoder.backend), also used for "
                        "the forward-pass measurement")
    p.add_argument("--fill-seeds", type=int, default=4,
                   help="the neural gateway's cache is filled with 64 questions x this many seeds")
    p.add_argument("--embedding-forward-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", default="results/vs_litellm.json")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    q = args.quick
    defaults = {"rounds": (1, 5), "requests_c1": (20, 100), "requests_c16": (96, 320), "requests_c64": (192, 640)}
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
        elif getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.fill_seeds <= DISTINCT_BODIES:
        p.error(f"--fill-seeds must be between 1 and {DISTINCT_BODIES}")
    if q:
        args.embedding_samples = min(args.embedding_samples, 30)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    if args.targets is not None:
        args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        bad = [t for t in args.targets if t not in PROXIES]
        if bad:
            p.error(f"unknown target(s) {', '.join(bad)}; choose from {', '.join(PROXIES)}")
        args.no_litellm = args.no_litellm or "litellm" not in args.targets
        args.no_neural = args.no_neural or "sigroute_neural" not in args.targets
        args.with_litellm_transport = args.with_litellm_transport or "sigroute_litellm" in args.targets
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.embedding_forward_only:
        print(json.dumps(measure_embedding_forward(args.embedding_samples, args.embedding_device,
                                                   args.encoder_backend)))
        return 0
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    litellm_bin = None
    if not args.no_litellm:
        litellm_bin = find_litellm(args.litellm_bin)
        if litellm_bin is None:
            print("the LiteLLM proxy was not found. Create its virtualenv once:\n"
                  "    python -m venv .venv-litellm && .venv-litellm/bin/pip install 'litellm[proxy]'\n"
                  "then pass --litellm-bin .venv-litellm/bin/litellm (or set LITELLM_BIN), "
                  "or run with --no-litellm.", file=sys.stderr)
            return 2
    started = time.time()
    env = {"PYTHONUNBUFFERED": "1", "SIGROUTE_LOG_LEVEL": "WARNING"}
    litellm_env = {**env, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    embedding = None
    with tempfile.TemporaryDirectory(prefix="sigroute-vs-litellm-") as tmp:
        tmp = Path(tmp)
        (tmp / "sim.yaml").write_text(yaml.safe_dump(sim_config(args.ttft_ms, args.tokens_per_s,
                                                                args.completion_tokens)))
        servers: dict[str, ServerProcess] = {}
        try:
            sim = servers["direct"] = ServerProcess(
                ["sigroute", "sim", "--config", str(tmp / "sim.yaml"), "--port", "{port}"], env=env, name="sim").start()
            api_base = sim.url + "/v1"
            if args.targets is None or "passthrough" in args.targets:
                servers["passthrough"] = ServerProcess([sys.executable, "-m", "benchmarks.passthrough", "--upstream",
                                                        api_base, "--port", "{port}"], env=env,
                                                       name="passthrough").start()
            policies = {"sigroute": bench_policy(api_base)} if args.targets is None or "sigroute" in args.targets else {}
            if not args.no_neural:
                policy = neural_policy(api_base)
                policy["encoder"] = {"device": args.embedding_device, "backend": args.encoder_backend}
                policies["sigroute_neural"] = policy
            if args.with_litellm_transport:
                policies["sigroute_litellm"] = litellm_transport_policy(api_base)
            for name, policy in policies.items():
                path = tmp / f"{name}.yaml"
                path.write_text(yaml.safe_dump(policy, sort_keys=False))
                servers[name] = ServerProcess(["sigroute", "serve", "--policy", str(path), "--port", "{port}",
                                               "--log-level", "warning"], env=litellm_env, name=name,
                                              startup_timeout_s=180).start()
            if litellm_bin:
                path = tmp / "litellm.yaml"
                path.write_text(yaml.safe_dump(litellm_config(api_base), sort_keys=False))
                servers["litellm"] = ServerProcess([litellm_bin, "--config", str(path), "--host", "127.0.0.1",
                                                    "--port", "{port}", "--num_workers", "1"], env=litellm_env,
                                                   name="litellm", health_path="/health/liveliness",
                                                   startup_timeout_s=180).start()
            log("servers up: " + ", ".join(f"{n} pid {s.pid}" for n, s in servers.items()))
            bench = Bench(args, servers)
            ready = {}
            if "sigroute_neural" in servers:
                ready = run_async(bench.ready_info("sigroute_neural"))
                log(f"measuring one embedding forward pass ({args.embedding_samples} samples) ...")
                embedding = embedding_forward_in_subprocess(args.embedding_samples, args.embedding_device,
                                                            args.encoder_backend)
            records, checked = run_async(bench.run(log))
            rss = dict(bench.rss)
        finally:
            for server in reversed(list(servers.values())):
                server.stop()
    targets = bench.targets
    summary, details = analyse(records, args.scenarios, targets)
    if embedding is not None and "c1" in summary:
        neural_c1 = summary["c1"]["neural_added_ms_p50"]
        summary["neural_added_ms_p50_c1"] = neural_c1
        summary["embedding_forward_ms_p50"] = embedding["p50_ms"]
        gateway_forward = [rec.get("encoder_forward_ms_mean") for rec in records
                           if rec["target"] == "sigroute_neural" and rec["scenario"] == "c1"]
        gateway_forward = [g for g in gateway_forward if g is not None]
        summary["gateway_embedding_forward_ms_mean_c1"] = _r(median(gateway_forward)) if gateway_forward else None
        summary["encoder_device"] = (ready.get("encoder") or {}).get("device", embedding["device"])
        summary["encoder_backend"] = (ready.get("encoder") or {}).get("backend", embedding["backend"])
        summary["neural_within_forward_plus_2ms"] = (neural_c1 is not None
                                                     and neural_c1 <= embedding["p50_ms"] + NEURAL_SLACK_MS)
    summary["rss_mb"] = {t: _r(v, 1) for t, v in rss.items()}
    summary["meets_targets"] = meets_targets(summary)
    summary["machine"] = machine_info()
    summary["commit"] = git_commit()
    summary["duration_s"] = round(time.time() - started, 1)
    result = {
        "benchmark": "vs_litellm",
        "summary": summary,
        "config": {
            "rounds": args.rounds, "requests": {"c1": args.requests_c1, "c16": args.requests_c16,
                                                "c64": args.requests_c64},
            "warmup_per_client": args.warmup, "scenarios": args.scenarios, "targets": targets,
            "sim": sim_config(args.ttft_ms, args.tokens_per_s, args.completion_tokens),
            "policies": {name: policy for name, policy in (("sigroute", bench_policy("http://SIM/v1")),
                                                          ("sigroute_neural", neural_policy("http://SIM/v1")))
                         if name in targets},
            "encoder_backend": args.encoder_backend, "fill_seeds": args.fill_seeds,
            "litellm_config": litellm_config("http://SIM/v1"), "litellm_bin": litellm_bin,
            "embedding": embedding,
            "method": "added = target minus direct: p50 = median over rounds of the per-round p50 difference, "
                      "p95/p99 = pooled over rounds; rps = median over rounds; cpu = process tree CPU time "
                      "per 1,000 requests sent (median over rounds); rss = largest process tree RSS after a batch",
        },
        "sigroute_headers_seen": checked,
        "details": details,
    }
    if not args.quiet:
        print_table(summary, targets)
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
