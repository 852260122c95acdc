"""How much latency does sigroute add on its heuristic-only path?

Three targets answer the same chat-completion requests from the same simulated upstream
(`gateway.sim`, one model with a small fixed time to first token and a short answer, so that
overhead is visible):

  direct       the simulated upstream itself
  passthrough  `benchmarks.passthrough`: FastAPI + a pooled httpx client forwarding bytes, no
               logic; the floor for any Python proxy
  sigroute     ``sigroute serve`` with a heuristic-only policy (keyword, context_length and header
               signals, four decisions; requests evaluate every signal and fall through to the
               default decision, algorithm static)

Each server runs in its own process (uvicorn with uvloop + httptools), as does the load generator
(`benchmarks.loadgen`: one keep-alive connection per virtual client, closed loop, warm-up
excluded). Scenarios: 1 and 16 concurrent clients, non-streamed and streamed (SSE).

Rounds are interleaved so that drifts in machine speed hit every target alike: in each round,
for each scenario, one batch runs against each target, the order of the targets rotating from
round to round. Per batch we record p50/p95/p99 of the client-side latency (time to the last
byte; for streams also time to the first body byte = first SSE event, "TTFT"), the
``x-sigroute-overhead-ms`` header (sigroute's own time per request, upstream excluded; for
streams up to the first chunk) and the CPU time the server processes used per request.

Added latency of a proxy = its p50 minus the direct p50 **of the same round**; the summary
reports the median of these per-round differences across rounds (robust to a noisy round).
The pooled difference (p50 over all rounds' samples) is in the JSON details as a cross-check.
``ratio_p50`` = sigroute's added p50 / the pass-through's. ``self_ms_p50`` / ``self_ms_p99``
pool the header values of all rounds.

    python -m benchmarks.overhead                       # full run, ~3-4 minutes
    python -m benchmarks.overhead --quick               # smoke run, ~20 s
    python -m benchmarks.overhead --rounds 12 --requests 200 --json results/overhead.json

The last line printed is the summary as one JSON line; the JSON file holds it under
``summary`` plus the configuration and every round's numbers.

Targets (reported, not enforced): sigroute's added p50 ≤ 1.5 × the pass-through's at 1 and 16
clients; its own time p50 < 1 ms and p99 < 5 ms.

Reading the numbers: when the machine has few cores, 16 closed-loop clients saturate the proxy's
single process, so the added latency at 16 clients is mostly queueing and tracks the proxy's CPU
time per request (``cpu_ms_per_request`` in the summary: server process CPU time divided by the
requests it served, from /proc). ``x-sigroute-overhead-ms`` is wall time, so under saturation
it also includes waiting for the event loop while other requests are served.
``--sigroute-command`` runs another sigroute command (e.g. a patched build) against the same
baseline. ``--compare-command`` adds a fourth target, ``compare`` (another sigroute command, e.g. the
previous commit's checkout), measured in the same interleaved rounds as ``sigroute``: the summary
then gives its added latency, ratio, own time and CPU per request beside sigroute's, and
``sigroute_vs_compare`` = sigroute's value / compare's for each, so a change is judged on one run::

    git worktree add /tmp/before HEAD~1
    python -m benchmarks.overhead --compare-command \
        "env PYTHONPATH=/tmp/before-path python -m sigroute.gateway.cli serve --policy {policy} --port {port}"

(``/tmp/before-path/sigroute`` a symlink to the worktree; a checkout from before the ``sigroute``
package layout runs as ``env PYTHONPATH=/tmp/before python -m gateway.cli serve …``.)

The HTTP client decision (issue 15): ``--compare-clients`` runs the gateway twice from the same
launcher (``python -m benchmarks.overhead serve-gateway --upstream-client …``, i.e. ``sigroute
serve`` with the direct transport injected): target ``sigroute`` with the hand-written client
(`gateway.upstream.http1`), target ``compare`` with aiohttp's (`gateway.upstream.aiohttp_transport`,
the ``aiohttp`` extra); the pass-through is not run (it is no part of this comparison), and the
simulated upstream keeps idle connections 75 s (`serve_sim`). Scenarios
default to all six (1, 16 and 64 clients, streamed and not;
``--requests-c64`` sets the 64-client batch). The summary's ``client_comparison`` gives, per
scenario and client, the added latency p50 and p99 (median over rounds of the gateway's percentile
minus the direct call's of the same round) and the gateway process's CPU seconds per 1,000
requests, ``aiohttp_vs_http1`` = aiohttp's / http1's, and the decision by the issue's rule (every
ratio ≤ 1.2: replace the hand-written client; else keep it)::

    python -m benchmarks.overhead --compare-clients --rounds 10 --requests 150 --requests-c16 480 \
        --requests-c64 960 --json results/overhead_clients.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import yaml

from benchmarks.loadgen import (
    Connection,
    HTTPError,
    ServerProcess,
    closed_loop,
    cpu_seconds,
    interleaved_rounds,
    machine_info,
    median,
    run_async,
    stats,
)

TARGETS = ("direct", "passthrough", "sigroute")
COMPARE = "compare"   # the optional fourth target (--compare-command): another sigroute build
GATEWAYS = ("sigroute", COMPARE)   # targets that answer the routed body and report their own time
#: name -> (concurrency, streamed)
SCENARIOS = {"c1": (1, False), "c16": (16, False), "c1_stream": (1, True), "c16_stream": (16, True),
             "c64": (64, False), "c64_stream": (64, True)}
DEFAULT_SCENARIOS = ("c1", "c16", "c1_stream", "c16_stream")   # c64: with --compare-clients, or asked for
UPSTREAM_CLIENTS = ("http1", "aiohttp")   # --compare-clients: sigroute runs with http1, compare with aiohttp
CLIENT_LINE = "upstream client: "   # what `serve-gateway` prints first: the transport class it serves with
CLIENT_TOLERANCE = 1.2   # issue 15: replace the hand-written client if aiohttp is within 20 % on every ratio
PATH = "/v1/chat/completions"
# The other API surfaces (issue 16): the same request sent to the same sigroute process as an
# Anthropic Messages or an OpenAI Responses request; target name -> (path, whole-answer marker,
# end-of-stream marker). Their added latency is compared with the chat path's of the same rounds.
API_TARGETS = {"messages": ("/v1/messages", b'"type":"message"', b"event: message_stop"),
               "responses": ("/v1/responses", b'"object":"response"', b"response.completed")}
API_TARGET_RATIO = 1.2   # issue 16: a surface's added latency within 1.2x of the chat path's
RATIO_TARGET = 1.5
SELF_P50_TARGET_MS = 1.0
SELF_P99_TARGET_MS = 5.0

# A prompt that matches none of the policy's signals, so every signal is evaluated and the
# request falls through to the default decision.
SYSTEM_PROMPT = "You are a concise assistant. Answer in plain prose."
USER_PROMPT = ("Please write two short sentences about the weather in a coastal town in early spring, "
               "mentioning the wind and the light over the harbour.")


def sim_config(ttft_ms: float, tokens_per_s: float, completion_tokens: int) -> dict:
    return {"seed": 1, "models": {"bench": {"ttft_ms": ttft_ms, "tokens_per_s": tokens_per_s,
                                            "completion_tokens": completion_tokens}}}


def bench_policy(api_base: str) -> dict:
    """Heuristic-only policy: one model, a few signals, four decisions; the bench request ends in `default`."""
    return {
        "version": 1,
        "models": {"bench": {"provider": "openai/bench", "api_base": api_base, "price": {"input": 0.1, "output": 0.2},
                             "context_window": 32768}},
        "signals": {
            "keyword": {
                "code": {"any": ["code", "function", "python", "javascript", "sql", "regex", "bug", "traceback",
                                 "compile", "refactor", "unit test"]},
                "math": {"any": ["integral", "derivative", "equation", "theorem", "proof", "matrix", "solve for"]},
                "urgent": {"any": ["urgent", "asap", "immediately"]},
                "greeting": {"regex": True, "any": [r"^\s*(hi|hello|hey|thanks|thank you)\W*$"]},
            },
            "context_length": {"long": {"min_tokens": 6000}, "medium": {"min_tokens": 1500, "max_tokens": 5999}},
            "header": {"high_priority": {"name": "x-priority", "values": ["high", "urgent"]},
                       "batch": {"name": "x-batch"}},
        },
        "decisions": [
            {"name": "priority", "priority": 100,
             "rules": {"any": ["header:high_priority", "keyword:urgent"]}, "models": ["bench"]},
            {"name": "long-context", "priority": 90, "rules": "context_length:long", "models": ["bench"]},
            {"name": "code-and-math", "priority": 60,
             "rules": {"all": [{"any": ["keyword:code", "keyword:math"]}, {"not": "header:batch"}]},
             "models": ["bench"]},
            {"name": "medium-chat", "priority": 40,
             "rules": {"all": ["context_length:medium", {"not": "keyword:greeting"}]}, "models": ["bench"]},
            {"name": "default", "models": ["bench"], "algorithm": "static"},
        ],
        "entrypoints": {"auto": {}},
        "routing": {"allow_direct_models": False},
        "upstream": {"retries": 0},
    }


def request_body(model: str, stream: bool, api: str = "chat") -> bytes:
    """The bench request as a chat completion, or the same as a Messages or a Responses request."""
    if api == "messages":
        body = {"model": model, "system": SYSTEM_PROMPT, "messages": [{"role": "user", "content": USER_PROMPT}],
                "max_tokens": 64, "temperature": 0}
    elif api == "responses":
        body = {"model": model, "instructions": SYSTEM_PROMPT, "input": USER_PROMPT, "max_output_tokens": 64,
                "temperature": 0}
    else:
        body = {"model": model, "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                                             {"role": "user", "content": USER_PROMPT}],
                "max_tokens": 64, "temperature": 0}
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


# ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, sim: ServerProcess, passthrough: ServerProcess | None, gateway: ServerProcess,
                 compare: ServerProcess | None = None):
        self.args = args
        self.servers = {"direct": sim, "passthrough": passthrough, "sigroute": gateway}
        if passthrough is None:   # (--compare-clients: not part of the comparison)
            del self.servers["passthrough"]
        if compare is not None:
            self.servers[COMPARE] = compare
        for api in args.apis:   # the same sigroute process, through another API surface
            self.servers[api] = gateway
        self.targets = tuple(self.servers)
        self.sim = sim
        self.paths = {t: API_TARGETS[t][0] if t in API_TARGETS else PATH for t in self.targets}
        self.bodies = {(t, s): request_body("auto" if t in GATEWAYS or t in API_TARGETS else "bench", s,
                                            t if t in API_TARGETS else "chat")
                       for t in self.targets for s in (False, True)}

    def requests_for(self, concurrency: int) -> int:
        if concurrency == 1:
            return self.args.requests
        return self.args.requests_c16 if concurrency <= 16 else self.args.requests_c64

    async def check(self) -> dict:
        """One request per target and mode: right status, a complete SSE stream, sigroute's headers."""
        seen = {}
        for target in self.targets:
            server = self.servers[target]
            for stream in (False, True):
                conn = Connection(server.host, server.port)
                raw = conn.prepare("POST", self.paths[target], self.bodies[(target, stream)],
                                   {"content-type": "application/json"})
                sample = await conn.send(raw, keep_body=True)
                await conn.close()
                what = f"{target} ({'streamed' if stream else 'not streamed'})"
                whole_marker, end_marker = API_TARGETS[target][1:] if target in API_TARGETS else (b'"choices"',
                                                                                                   b"data: [DONE]")
                if sample.status != 200:
                    raise RuntimeError(f"{what} answered {sample.status}: {sample.body[:500]!r}")
                if stream and end_marker not in sample.body:
                    raise RuntimeError(f"{what}: the stream did not end with {end_marker!r}: {sample.body[-300:]!r}")
                if not stream and whole_marker not in sample.body:
                    raise RuntimeError(f"{what}: no {whole_marker!r} in {sample.body[:300]!r}")
                if target in GATEWAYS or target in API_TARGETS:
                    decision = sample.headers.get("x-sigroute-decision")
                    if decision != "default":
                        raise RuntimeError(f"{what}: the bench request should reach the default decision, "
                                           f"got {decision!r}")
                    if "x-sigroute-overhead-ms" not in sample.headers:
                        raise RuntimeError(f"{what}: no x-sigroute-overhead-ms header")
                    if target == "sigroute":
                        seen[f"stream={stream}"] = {k: v for k, v in sample.headers.items()
                                                    if k.startswith("x-sigroute")}
        return seen

    def pids(self, target: str) -> dict[str, int]:
        out = {"sim": self.sim.pid}
        if target != "direct":
            out[target] = self.servers[target].pid
        return out

    async def batch(self, target: str, scenario: str, warmup: int, requests: int | None = None) -> dict:
        concurrency, stream = SCENARIOS[scenario]
        server = self.servers[target]
        pids = self.pids(target)
        cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        try:
            result = await closed_loop(server.host, server.port, self.paths[target], self.bodies[(target, stream)],
                                       concurrency=concurrency, warmup=warmup,
                                       requests=requests or self.requests_for(concurrency))
        except HTTPError as exc:
            raise HTTPError(f"{target}, scenario {scenario}: {exc}") from None
        cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
        samples = result.samples
        record = {
            "target": target,
            "scenario": scenario,
            "total_ms": [s.total_ms for s in samples],
            "ttfb_ms": [s.first_byte_ms for s in samples],
            "throughput_rps": result.throughput,
            "sent": result.sent,
            # CPU seconds of each server process over the whole batch (warm-up included), per request sent
            "cpu_ms_per_request": {name: (None if cpu0[name] is None or cpu1[name] is None
                                          else (cpu1[name] - cpu0[name]) * 1000 / result.sent)
                                   for name in pids},
        }
        if target in GATEWAYS or target in API_TARGETS:
            record["self_ms"] = [float(s.headers["x-sigroute-overhead-ms"]) for s in samples]
        return record

    async def run(self, log) -> tuple[list[dict], dict]:
        args = self.args
        checked = await self.check()
        # a first unrecorded pass over everything warms caches, pools and connections
        for scenario in args.scenarios:
            for target in self.targets:
                await self.batch(target, scenario, warmup=args.warmup, requests=SCENARIOS[scenario][0] * 5)
        records = await interleaved_rounds(args.rounds, args.scenarios, self.targets,
                                           lambda target, scenario: self.batch(target, scenario, warmup=args.warmup),
                                           log)
        return records, checked


# ------------------------------------------------------------------------------------------------
# analysis


def _r(x, digits=4):
    return None if x is None else round(x, digits)


def analyse(records: list[dict], scenarios: list[str]) -> tuple[dict, dict]:
    summary: dict = {}
    details: dict = {}
    rounds = sorted({rec["round"] for rec in records})
    targets = [t for t in (*TARGETS, COMPARE, *API_TARGETS) if any(rec["target"] == t for rec in records)]
    proxies = [t for t in targets if t != "direct"]
    gateways = [t for t in targets if t in GATEWAYS or t in API_TARGETS]
    for scenario in scenarios:
        _, stream = SCENARIOS[scenario]
        by = {(rec["round"], rec["target"]): rec for rec in records if rec["scenario"] == scenario}
        per_round = []
        for r in rounds:
            row = {"round": r}
            for target in targets:
                rec = by[(r, target)]
                row[target] = {"total_ms": stats(rec["total_ms"]), "throughput_rps": _r(rec["throughput_rps"], 1),
                               "cpu_ms_per_request": {k: _r(v) for k, v in rec["cpu_ms_per_request"].items()}}
                if stream:
                    row[target]["ttft_ms"] = stats(rec["ttfb_ms"])
                if "self_ms" in rec:
                    row[target]["self_ms"] = stats(rec["self_ms"])
            for proxy in proxies:
                row[f"{proxy}_added_ms_p50"] = _r(row[proxy]["total_ms"]["p50"] - row["direct"]["total_ms"]["p50"])
                row[f"{proxy}_added_ms_p99"] = _r(row[proxy]["total_ms"]["p99"] - row["direct"]["total_ms"]["p99"])
                if stream:
                    row[f"{proxy}_added_ttft_ms_p50"] = _r(row[proxy]["ttft_ms"]["p50"] - row["direct"]["ttft_ms"]["p50"])
            per_round.append(row)

        pooled = {}
        for target in targets:
            recs = [by[(r, target)] for r in rounds]
            total = [x for rec in recs for x in rec["total_ms"]]
            pooled[target] = {"total_ms": stats(total)}
            if stream:
                pooled[target]["ttft_ms"] = stats([x for rec in recs for x in rec["ttfb_ms"]])
            cpu = {}
            for name in recs[0]["cpu_ms_per_request"]:
                values = [rec["cpu_ms_per_request"][name] for rec in recs]
                if all(v is not None for v in values):
                    sent = [rec["sent"] for rec in recs]
                    cpu[name] = _r(sum(v * n for v, n in zip(values, sent)) / sum(sent))
            pooled[target]["cpu_ms_per_request"] = cpu
            pooled[target]["throughput_rps_median"] = _r(median([rec["throughput_rps"] for rec in recs]), 1)
        for gateway in gateways:
            pooled[gateway]["self_ms"] = stats([x for r in rounds for x in by[(r, gateway)]["self_ms"]])

        def added(proxy: str, key: str = "total_ms") -> dict:
            suffix = "ttft_ms" if key == "ttft_ms" else "ms"
            per = [row[f"{proxy}_added_{'ttft_' if key == 'ttft_ms' else ''}ms_p50"] for row in per_round]
            return {
                f"added_{suffix}_p50_median_of_rounds": _r(median(per)),
                f"added_{suffix}_p50_rounds_min": _r(min(per)),
                f"added_{suffix}_p50_rounds_max": _r(max(per)),
                f"added_{suffix}_p50_pooled": _r(pooled[proxy][key]["p50"] - pooled["direct"][key]["p50"]),
                f"added_{suffix}_p95_pooled": _r(pooled[proxy][key]["p95"] - pooled["direct"][key]["p95"]),
                f"added_{suffix}_p99_pooled": _r(pooled[proxy][key]["p99"] - pooled["direct"][key]["p99"]),
            }

        comparison = {proxy: added(proxy) for proxy in proxies}
        if stream:
            for proxy in proxies:
                comparison[proxy].update(added(proxy, "ttft_ms"))

        s_add = comparison["sigroute"]["added_ms_p50_median_of_rounds"]
        p_add = comparison.get("passthrough", {}).get("added_ms_p50_median_of_rounds")
        entry = {
            "sigroute_added_ms_p50": s_add,
            "passthrough_added_ms_p50": p_add,
            "ratio_p50": _r(s_add / p_add, 3) if p_add and p_add > 0 else None,
            "self_ms_p50": pooled["sigroute"]["self_ms"]["p50"],
            "self_ms_p99": pooled["sigroute"]["self_ms"]["p99"],
            "direct_ms_p50": _r(median([row["direct"]["total_ms"]["p50"] for row in per_round])),
        }
        if stream:
            s_t = comparison["sigroute"]["added_ttft_ms_p50_median_of_rounds"]
            p_t = comparison.get("passthrough", {}).get("added_ttft_ms_p50_median_of_rounds")
            entry.update({"sigroute_added_ttft_ms_p50": s_t, "passthrough_added_ttft_ms_p50": p_t,
                          "ratio_ttft_p50": _r(s_t / p_t, 3) if p_t and p_t > 0 else None})
        entry["cpu_ms_per_request"] = {"passthrough": pooled.get("passthrough", {}).get("cpu_ms_per_request", {})
                                       .get("passthrough"),
                                       "sigroute": pooled["sigroute"]["cpu_ms_per_request"].get("sigroute")}
        entry["meets_targets"] = {
            "ratio_p50": entry["ratio_p50"] is not None and entry["ratio_p50"] <= RATIO_TARGET,
            "self_ms_p50": entry["self_ms_p50"] < SELF_P50_TARGET_MS,
            "self_ms_p99": entry["self_ms_p99"] < SELF_P99_TARGET_MS,
        }
        if COMPARE in targets:   # the other build, measured in the same rounds
            c_add = comparison[COMPARE]["added_ms_p50_median_of_rounds"]
            other = {"added_ms_p50": c_add,
                     "ratio_p50": _r(c_add / p_add, 3) if p_add and p_add > 0 else None,
                     "self_ms_p50": pooled[COMPARE]["self_ms"]["p50"],
                     "self_ms_p99": pooled[COMPARE]["self_ms"]["p99"],
                     "cpu_ms_per_request": pooled[COMPARE]["cpu_ms_per_request"].get(COMPARE)}
            ours = {"added_ms_p50": s_add, "ratio_p50": entry["ratio_p50"], "self_ms_p50": entry["self_ms_p50"],
                    "self_ms_p99": entry["self_ms_p99"], "cpu_ms_per_request": entry["cpu_ms_per_request"]["sigroute"]}
            entry[COMPARE] = other
            entry["sigroute_vs_compare"] = {k: _r(ours[k] / other[k], 3) if ours[k] is not None and other[k]
                                            else None for k in other}
        apis = [t for t in targets if t in API_TARGETS]
        if apis:   # the other surfaces, against the chat path of the same rounds
            entry["apis"] = {}
            for api in apis:
                a_add = comparison[api]["added_ms_p50_median_of_rounds"]
                per_round_ratio = [row[f"{api}_added_ms_p50"] / row["sigroute_added_ms_p50"] for row in per_round
                                   if row["sigroute_added_ms_p50"] > 0]
                one = {"added_ms_p50": a_add, "vs_chat": _r(a_add / s_add, 3) if s_add and s_add > 0 else None,
                       "vs_chat_median_of_rounds": _r(median(per_round_ratio), 3) if per_round_ratio else None,
                       "self_ms_p50": pooled[api]["self_ms"]["p50"],
                       "self_ms_p50_vs_chat": _r(pooled[api]["self_ms"]["p50"] / pooled["sigroute"]["self_ms"]["p50"], 3)}
                if stream:
                    a_t = comparison[api]["added_ttft_ms_p50_median_of_rounds"]
                    s_t = comparison["sigroute"]["added_ttft_ms_p50_median_of_rounds"]
                    one.update(added_ttft_ms_p50=a_t, ttft_vs_chat=_r(a_t / s_t, 3) if s_t and s_t > 0 else None)
                one["within_target"] = one["vs_chat"] is not None and one["vs_chat"] <= API_TARGET_RATIO
                entry["apis"][api] = one
        summary[scenario] = entry
        details[scenario] = {"comparison": comparison, "pooled": pooled, "rounds": per_round}
    return summary, details


def _ratio(numerator, denominator):
    return _r(numerator / denominator, 3) if numerator is not None and denominator and denominator > 0 else None


def client_comparison(details: dict, scenarios: list[str]) -> dict:
    """``--compare-clients``: the gateway with aiohttp's client (target ``compare``) against the
    same gateway with the hand-written `http1` client (target ``sigroute``), from the same rounds.

    Per scenario, for each client: added latency p50 and p99 (median over rounds of the gateway's
    percentile minus the direct call's of the same round) and the gateway process's CPU seconds
    per 1,000 requests (= CPU ms per request, pooled over rounds); ``aiohttp_vs_http1`` = aiohttp's
    value / http1's. The rule of issue 15: replace the hand-written client when every ratio of
    every scenario is at most `CLIENT_TOLERANCE` (within 20 %), else keep it."""
    out: dict = {}
    worst = None
    for scenario in scenarios:
        rows = details[scenario]["rounds"]
        pooled = details[scenario]["pooled"]

        def measured(target: str) -> dict:
            return {"added_ms_p50": _r(median([row[f"{target}_added_ms_p50"] for row in rows])),
                    "added_ms_p99": _r(median([row[f"{target}_added_ms_p99"] for row in rows])),
                    "cpu_s_per_1k_requests": pooled[target]["cpu_ms_per_request"].get(target)}

        http1, aiohttp = measured("sigroute"), measured(COMPARE)
        ratios = {key: _ratio(aiohttp[key], http1[key]) for key in http1}
        per_round = [x for x in (_ratio(row[f"{COMPARE}_added_ms_p50"], row["sigroute_added_ms_p50"]) for row in rows)
                     if x is not None]
        out[scenario] = {"http1": http1, "aiohttp": aiohttp, "aiohttp_vs_http1": ratios,
                         "added_ms_p50_ratio_rounds_min": min(per_round, default=None),
                         "added_ms_p50_ratio_rounds_max": max(per_round, default=None)}
        for key, ratio in ratios.items():
            # a ratio that cannot be computed (no added latency to compare with) does not show "within"
            score = float("inf") if ratio is None else ratio
            if worst is None or score > worst[0]:
                worst = (score, scenario, key, ratio)
    within = worst is not None and worst[0] <= CLIENT_TOLERANCE
    out["decision"] = {
        "rule": f"replace the hand-written client if aiohttp/http1 <= {CLIENT_TOLERANCE} for added latency p50, "
                f"p99 and CPU per request in every scenario, else keep it",
        "within_tolerance": within,
        "decision": "replace" if within else "keep",
        "worst": None if worst is None else {"scenario": worst[1], "metric": worst[2], "aiohttp_vs_http1": worst[3]},
    }
    return out


def print_client_table(comparison: dict, out=sys.stdout) -> None:
    print("", file=out)
    print(f"{'scenario':<11} {'added p50 http1':>15} {'aiohttp':>8} {'ratio':>6}   {'added p99 http1':>15} "
          f"{'aiohttp':>8} {'ratio':>6}   {'cpu s/1k http1':>14} {'aiohttp':>8} {'ratio':>6}", file=out)
    fmt = lambda v, w, d=3: f"{v:>{w}.{d}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"  # noqa: E731
    for scenario, e in comparison.items():
        if scenario not in SCENARIOS:
            continue
        h, a, r = e["http1"], e["aiohttp"], e["aiohttp_vs_http1"]
        print(f"{scenario:<11} {fmt(h['added_ms_p50'], 15)} {fmt(a['added_ms_p50'], 8)} {fmt(r['added_ms_p50'], 6, 2)}   "
              f"{fmt(h['added_ms_p99'], 15)} {fmt(a['added_ms_p99'], 8)} {fmt(r['added_ms_p99'], 6, 2)}   "
              f"{fmt(h['cpu_s_per_1k_requests'], 14)} {fmt(a['cpu_s_per_1k_requests'], 8)} "
              f"{fmt(r['cpu_s_per_1k_requests'], 6, 2)}", file=out)
    d = comparison["decision"]
    print(f"ratio = aiohttp / http1 (the gateway with each upstream client, same rounds); decision: {d['decision']} "
          f"(worst: {d['worst']})", file=out)


def print_table(summary: dict, details: dict, out=sys.stdout) -> None:
    print("", file=out)
    print(f"{'scenario':<11} {'direct p50':>10} {'pt added':>9} {'sr added':>9} {'ratio':>6} "
          f"{'self p50':>9} {'self p99':>9} {'pt cpu/req':>10} {'sr cpu/req':>10}   (ms)", file=out)
    for scenario, e in summary.items():
        if scenario not in SCENARIOS:
            continue
        cpu = e["cpu_ms_per_request"]
        fmt = lambda v, w, d=3: f"{v:>{w}.{d}f}" if isinstance(v, (int, float)) else f"{'-':>{w}}"  # noqa: E731
        print(f"{scenario:<11} {fmt(e['direct_ms_p50'], 10)} {fmt(e['passthrough_added_ms_p50'], 9)} "
              f"{fmt(e['sigroute_added_ms_p50'], 9)} {fmt(e['ratio_p50'], 6, 2)} {fmt(e['self_ms_p50'], 9)} "
              f"{fmt(e['self_ms_p99'], 9)} {fmt(cpu['passthrough'], 10)} {fmt(cpu['sigroute'], 10)}", file=out)
        if "ratio_ttft_p50" in e:
            print(f"{'  ttft':<11} {'':>10} {fmt(e['passthrough_added_ttft_ms_p50'], 9)} "
                  f"{fmt(e['sigroute_added_ttft_ms_p50'], 9)} {fmt(e['ratio_ttft_p50'], 6, 2)}", file=out)
        if COMPARE in e:
            c = e[COMPARE]
            print(f"{'  compare':<11} {'':>10} {'':>9} {fmt(c['added_ms_p50'], 9)} {fmt(c['ratio_p50'], 6, 2)} "
                  f"{fmt(c['self_ms_p50'], 9)} {fmt(c['self_ms_p99'], 9)} {'':>10} {fmt(c['cpu_ms_per_request'], 10)}",
                  file=out)
        for api, a in e.get("apis", {}).items():
            print(f"{'  ' + api:<11} {'':>10} {'':>9} {fmt(a['added_ms_p50'], 9)} {fmt(a['vs_chat'], 6, 2)} "
                  f"{fmt(a['self_ms_p50'], 9)}   (ratio: vs the chat path)", file=out)
    print("pt = pass-through proxy, sr = sigroute (compare: the --compare-command build, same rounds); "
          "added = median over rounds of (proxy p50 - direct p50); self = x-sigroute-overhead-ms", file=out)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead",
                                     description="Latency sigroute adds on its heuristic-only path, compared "
                                                 "with calling the upstream directly and with a minimal "
                                                 "pass-through proxy.")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10; quick: 2)")
    parser.add_argument("--requests", type=int, default=None,
                        help="recorded requests per batch at 1 client (default 100; quick: 30)")
    parser.add_argument("--requests-c16", type=int, default=None,
                        help="recorded requests per batch at 16 clients (default 320; quick: 96)")
    parser.add_argument("--requests-c64", type=int, default=None,
                        help="recorded requests per batch at 64 clients (default 640; quick: 192)")
    parser.add_argument("--warmup", type=int, default=2, help="unrecorded requests per client before each batch")
    parser.add_argument("--quick", action="store_true", help="smoke run (~20 s)")
    parser.add_argument("--scenarios", default=None,
                        help=f"comma-separated subset of {', '.join(SCENARIOS)} (default: "
                             f"{', '.join(DEFAULT_SCENARIOS)}; with --compare-clients all)")
    parser.add_argument("--compare-clients", action="store_true",
                        help="the HTTP client decision (issue 15): run the gateway twice, with the hand-written "
                             "upstream client (target 'sigroute') and with aiohttp's (target 'compare', needs the "
                             "aiohttp extra), in the same interleaved rounds; report aiohttp/http1 ratios")
    parser.add_argument("--ttft-ms", type=float, default=5.0, help="simulated model's time to first token")
    parser.add_argument("--tokens-per-s", type=float, default=2000.0, help="simulated decode speed")
    parser.add_argument("--completion-tokens", type=int, default=16, help="simulated answer length")
    parser.add_argument("--sigroute-command", default=None,
                        help="run sigroute with this command instead of `sigroute serve` (e.g. to try a change); "
                             "{policy} and {port} are replaced")
    parser.add_argument("--compare-command", default=None,
                        help="also measure this sigroute command (e.g. a checkout of the previous commit) as the "
                             "target 'compare', in the same rounds; {policy} and {port} are replaced")
    parser.add_argument("--apis", default=",".join(API_TARGETS),
                        help="the other API surfaces to measure beside chat completions, on the same sigroute "
                             f"process and in the same rounds (comma-separated subset of {', '.join(API_TARGETS)}; "
                             "'' for none)")
    parser.add_argument("--json", default="results/overhead.json", help="where to write the full result")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args(argv)
    args.apis = [a.strip() for a in args.apis.split(",") if a.strip()]
    if [a for a in args.apis if a not in API_TARGETS]:
        parser.error(f"--apis: choose from {', '.join(API_TARGETS)}")
    if args.compare_clients:
        args.apis = []   # the client decision compares two gateways on the chat path only
    quick = args.quick
    args.rounds = args.rounds or (2 if quick else 10)
    args.requests = args.requests or (30 if quick else 100)
    args.requests_c16 = args.requests_c16 or (96 if quick else 320)
    args.requests_c64 = args.requests_c64 or (192 if quick else 640)
    if args.compare_clients and (args.sigroute_command or args.compare_command):
        parser.error("--compare-clients chooses both gateway commands; drop --sigroute-command/--compare-command")
    if args.scenarios is None:
        args.scenarios = ",".join(SCENARIOS if args.compare_clients else DEFAULT_SCENARIOS)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return args


SIM_KEEP_ALIVE_S = 75.0   # --compare-clients: how long the simulated upstream keeps an idle connection


def serve_sim(argv: list[str]) -> int:
    """``python -m benchmarks.overhead serve-sim --config C --port N``: ``sigroute sim`` keeping idle
    connections `SIM_KEEP_ALIVE_S` instead of uvicorn's 5 s (``--compare-clients``). With three
    targets a round's gap between two batches of one gateway is about 5 s; a POST written to a
    pooled connection just as the server closes it cannot be sent again (it may have been
    processed), so either client then answers 502 and the run stops. Hosted APIs keep idle
    connections for a minute or more."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead serve-sim")
    parser.add_argument("--config", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    from sigroute.gateway.serving import best_http, best_loop
    from sigroute.gateway.sim import create_sim_app

    uvicorn.run(create_sim_app(args.config), host=args.host, port=args.port, loop=best_loop(), http=best_http(),
                access_log=False, log_level="warning", timeout_graceful_shutdown=1,
                timeout_keep_alive=SIM_KEEP_ALIVE_S)
    return 0


def client_gateway_command(client: str, policy_path: Path) -> list[str]:
    """The gateway with the given upstream client (``--compare-clients``): `serve_gateway` below."""
    return [sys.executable, "-m", "benchmarks.overhead", "serve-gateway", "--upstream-client", client,
            "--policy", str(policy_path), "--port", "{port}"]


def client_of(server: ServerProcess) -> str:
    """The transport class a `serve-gateway` process says it serves with ("" if it says nothing)."""
    for line in server.output().splitlines():
        if line.startswith(CLIENT_LINE):
            return line[len(CLIENT_LINE):].strip()
    return ""


CLIENT_CLASSES = {"http1": "sigroute.gateway.upstream.openai_compatible.OpenAICompatibleTransport",
                  "aiohttp": "sigroute.gateway.upstream.aiohttp_transport.AiohttpTransport"}


def serve_gateway(argv: list[str]) -> int:
    """``python -m benchmarks.overhead serve-gateway --upstream-client {http1,aiohttp} --policy P --port N``

    ``sigroute serve`` as the benchmark needs it, with the direct transport chosen: the hand-written
    client (`OpenAICompatibleTransport`, what ``sigroute serve`` uses) or aiohttp's
    (`AiohttpTransport`), injected through `create_app`'s ``transports`` (no policy option selects
    a client: this is a measurement, not a setting). Everything else is as ``sigroute serve`` runs
    it: the same app, uvicorn options, event loop and log level, so the two differ only in the client."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead serve-gateway")
    parser.add_argument("--upstream-client", choices=UPSTREAM_CLIENTS, required=True)
    parser.add_argument("--policy", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    import uvicorn

    from sigroute.gateway.app import create_app
    from sigroute.gateway.http_server import server_options
    from sigroute.gateway.serving import best_loop
    from sigroute.policies.loader import load_policy

    if args.upstream_client == "aiohttp":
        from sigroute.gateway.upstream.aiohttp_transport import AiohttpTransport

        transport = AiohttpTransport()
    else:
        from sigroute.gateway.upstream import OpenAICompatibleTransport

        transport = OpenAICompatibleTransport()
    policy = load_policy(args.policy)
    app = create_app(policy, policy_path=args.policy, transports={"openai": transport})
    print(f"{CLIENT_LINE}{type(transport).__module__}.{type(transport).__name__}", flush=True)  # main() checks it
    uvicorn.run(app, host=args.host, port=args.port, loop=best_loop(), log_level="warning", access_log=False,
                workers=None, **server_options(policy))
    return 0


def sigroute_command(args, policy_path: Path, command: str | None = None) -> list[str]:
    command = command or args.sigroute_command
    if not command:
        return ["sigroute", "serve", "--policy", str(policy_path), "--port", "{port}", "--log-level", "warning"]
    import shlex

    return [part.replace("{policy}", str(policy_path)) for part in shlex.split(command)]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve-gateway"]:
        return serve_gateway(argv[1:])
    if argv[:1] == ["serve-sim"]:
        return serve_sim(argv[1:])
    args = parse_args(argv)
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.time()
    env = {"PYTHONUNBUFFERED": "1", "SIGROUTE_LOG_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory(prefix="sigroute-overhead-") as tmp:
        sim_path = Path(tmp, "sim.yaml")
        sim_path.write_text(yaml.safe_dump(sim_config(args.ttft_ms, args.tokens_per_s, args.completion_tokens)))
        sim_command = (["sigroute", "sim", "--config", str(sim_path), "--port", "{port}"] if not args.compare_clients
                       else [sys.executable, "-m", "benchmarks.overhead", "serve-sim", "--config", str(sim_path),
                             "--port", "{port}"])
        with ServerProcess(sim_command, env=env, name="sim") as sim:
            policy_path = Path(tmp, "policy.yaml")
            policy_path.write_text(yaml.safe_dump(bench_policy(sim.url + "/v1"), sort_keys=False))
            with contextlib.ExitStack() as servers:
                passthrough = None
                if not args.compare_clients:   # the comparison of two clients needs no pass-through baseline
                    passthrough = servers.enter_context(ServerProcess(
                        [sys.executable, "-m", "benchmarks.passthrough", "--upstream", sim.url + "/v1",
                         "--port", "{port}"], env=env, name="passthrough"))
                gateway_command = (client_gateway_command("http1", policy_path) if args.compare_clients
                                   else sigroute_command(args, policy_path))
                gateway = servers.enter_context(ServerProcess(gateway_command, env=env, name="sigroute"))
                compare = None
                if args.compare_clients:
                    compare = servers.enter_context(ServerProcess(client_gateway_command("aiohttp", policy_path),
                                                                  env=env, name=COMPARE))
                elif args.compare_command:
                    compare = servers.enter_context(ServerProcess(
                        sigroute_command(args, policy_path, args.compare_command), env=env, name=COMPARE))
                clients = {}
                if args.compare_clients:   # each gateway serves with the client it is measured for
                    clients = {"sigroute": client_of(gateway), COMPARE: client_of(compare)}
                    for target, client in (("sigroute", "http1"), (COMPARE, "aiohttp")):
                        if clients[target] != CLIENT_CLASSES[client]:
                            raise RuntimeError(f"the {target} gateway should serve with {CLIENT_CLASSES[client]}, "
                                               f"it says {clients[target] or 'nothing'}")
                log(f"servers up: sim {sim.url} (pid {sim.pid}), "
                    + (f"passthrough {passthrough.url} (pid {passthrough.pid}), " if passthrough is not None else "")
                    + f"sigroute {gateway.url} (pid {gateway.pid})"
                    + (f", compare {compare.url} (pid {compare.pid})" if compare is not None else ""))
                bench = Bench(args, sim, passthrough, gateway, compare)
                records, checked = run_async(bench.run(log))
    summary, details = analyse(records, args.scenarios)
    if args.compare_clients:
        summary["client_comparison"] = client_comparison(details, args.scenarios)
    summary["machine"] = machine_info()
    summary["commit"] = git_commit()
    summary["duration_s"] = round(time.time() - started, 1)
    result = {
        "benchmark": "overhead",
        "summary": summary,
        "config": {
            "rounds": args.rounds, "requests_c1": args.requests, "requests_c16": args.requests_c16,
            "requests_c64": args.requests_c64, "compare_clients": args.compare_clients,
            "warmup_per_client": args.warmup, "scenarios": args.scenarios,
            "sigroute_command": " ".join(client_gateway_command("http1", Path("POLICY")) if args.compare_clients
                                         else sigroute_command(args, Path("POLICY"))),
            "compare_command": (" ".join(client_gateway_command("aiohttp", Path("POLICY"))) if args.compare_clients
                                else args.compare_command),
            "sim_keep_alive_s": SIM_KEEP_ALIVE_S if args.compare_clients else 5.0,
            "sim": sim_config(args.ttft_ms, args.tokens_per_s, args.completion_tokens),
            "policy": bench_policy("http://SIM/v1"),
            "request_bodies": {"direct_and_passthrough": request_body("bench", False).decode(),
                               "sigroute": request_body("auto", False).decode(),
                               **{api: request_body("auto", False, api).decode() for api in args.apis},
                               "streamed": 'the same with "stream": true'},
            "method": "added = median over rounds of (proxy p50 - direct p50 of the same round); target order "
                      "rotates each round; TTFT = time to the first body byte; self = x-sigroute-overhead-ms "
                      "pooled over rounds; cpu_ms_per_request = server process CPU time / requests sent",
            "targets": {"ratio_p50_max": RATIO_TARGET, "self_ms_p50_max": SELF_P50_TARGET_MS,
                        "self_ms_p99_max": SELF_P99_TARGET_MS},
        },
        "sigroute_headers_seen": checked,
        "upstream_clients": clients,
        "details": details,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1))
        log(f"wrote {path}")
    if not args.quiet:
        print_table(summary, details)
        if args.compare_clients:
            print_client_table(summary["client_comparison"])
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
