"""Operational faults through real processes: Redis stopped or frozen under load, a replica SIGKILLed,
policy reloads (good and broken) under 50 streaming clients.

Every part is a real process on loopback: `redis-server` started here on a free port (and started
again on the same port, empty), `sigroute sim` as the upstream, `sigroute serve --redis` gateways,
and closed-loop HTTP clients in this process. Nothing of the gateway is imported or patched; what it
did is read from its answers, its `/metrics` and the learned state in Redis (`sigroute bandit
export`).

How learned state is checked exactly. The learning decision uses LinUCB with the single `bias`
feature (x = [1]) and a reward of quality only with `default_quality: 0`. An answer then adds
n += 1 and Σr += 0 to its model's sums, and a feedback `score: 1` adds Σr += 1 (quality share 1 ×
(1 − 0)), n unchanged. So, per model, Redis's n is the number of answers learned and its Σr the
number of feedbacks learned, and both can be compared with what the clients saw (the
`x-sigroute-model` of every answer that was not served from the cache, and every feedback answered
`"status": "recorded"`).

1. **Redis outage** (`redis_outage`): one gateway, a learning decision with an exact cache, 12
   clients (quick: 8) each asking a question (one in five from a small shared set, so the cache
   answers some) and rating every answer at once (`POST /v1/feedback`, score 1). After the warm-up
   Redis is SIGKILLed for `outage_s` (20 s; quick 3 s) and started again empty on the same port; the
   load goes on. Feedback refused meanwhile (503 `feedback_store_unavailable`, documented) is sent
   again after the load. Reported:
   - `redis_outage_5xx`: chat answers with a 5xx status, no HTTP answer at all or a broken
     stream (one request in four streams), plus feedback 5xx other than the documented 503 or
     without an answer (target 0);
   - `pending_records_lost_with_redis`: answers rated just before Redis died, whose feedback was
     refused meanwhile and found nothing to rate once Redis was back empty (404; documented in
     `bandits.store`: records Redis held are gone with it);
   - reconnection without restart: chat answers, feedback recorded and an exact-cache hit after
     Redis came back, `sigroute_bandit_store_up` and `sigroute_cache_store_up` back at 1;
   - `observations_lost`: answers learned by the gateway (non-cached 200s) missing from Redis's n
     once the gateway has synced (target 0: Redis restarted empty is restored from the gateway);
   - `feedback_lost_unreported`: feedback answered 2xx "recorded" but missing from Redis's Σr,
     beyond what `sigroute_feedback_lost_total` counts for reasons other than the refusals the
     clients saw as 503 (each 503 counts one `store_unavailable`) (target 0).
   **Redis frozen** (`redis_frozen`): the same gateway set-up, Redis paused with SIGSTOP for
   `freeze_s` (20 s; quick 8 s) — a hung server or a partition: connections stay open, nothing
   answers — then resumed with its data (SIGCONT). Commands already sent when it froze wait their
   timeout (5 s for the learning stores), so the freeze must outlast that to show what follows. Reported per phase: requests, statuses, answers
   per second, latency, feedback outcomes; the learned state is checked as above. Its failures
   count in `redis_outage_5xx` and its unreported feedback losses in `feedback_lost_unreported`.
2. **Replica kill** (`replica_kill`): two gateways on one Redis, `sync_interval_s` 1 s, clients
   round-robin over both and send feedback to the replica that answered; one replica is SIGKILLed
   mid-load. Reported: requests to the survivor that failed (target 0), requests to the dead one
   (connection errors, expected, separate), observations and feedback lost = what the clients saw
   accepted minus Redis's totals after the survivor synced, next to what the killed replica
   answered in its last sync interval before the kill (the documented bound: a replica that dies
   loses at most its unflushed interval).
3. **Reload** (`reload`): one gateway, 50 clients streaming continuously; the policy file is
   replaced and reloaded: `POST /v1/admin/reload` with a good file (decision renamed v1 → v2), a
   YAML syntax error, an unknown key, then SIGHUP with a good file (v3) and a broken one. Reported:
   `reload_failed_requests` (streams that did not answer 200, carried an error event or ended
   without `[DONE]`; target 0), each broken reload's error text (must name file:line and, for the
   unknown key, the key), and the `x-sigroute-decision` of streams started after each step (the
   last good policy serves on).

    python -m benchmarks.chaos_ops [--quick] [--json PATH]

The last line printed is the summary (`benchmarks.report.emit`): `redis_outage_5xx`,
`reload_failed_requests`, `feedback_lost_unreported` and the main numbers of each scenario.
`run_operations(quick=..., json_details=...)` runs the same from `benchmarks.chaos`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson
import yaml

from benchmarks.loadgen import ServerProcess, free_port, machine_info, stats
from benchmarks.report import emit

SIM_MODELS = {
    "alpha": {"ttft_ms": 5, "tokens_per_s": 0, "completion_tokens": 8, "price": {"input": 0.1, "output": 0.2}},
    "beta": {"ttft_ms": 5, "tokens_per_s": 0, "completion_tokens": 8, "price": {"input": 1.0, "output": 2.0}},
    # streams of 24 chunks over ~0.5 s, for the reload scenario
    "streamer": {"ttft_ms": 20, "tokens_per_s": 50, "completion_tokens": 24},
}
SERVED_WITHOUT_A_MODEL = ("hit-exact", "hit-semantic", "coalesced")   # x-sigroute-cache: no model call, nothing learned
SYNC_INTERVAL_S = 1.0   # the learning decision's flush interval (`sync_interval_s`)
SHARED_QUESTIONS = [f"shared question {i}: what is the capital of country number {i}?" for i in range(8)]
ENV = {"PYTHONUNBUFFERED": "1", "SIGROUTE_LOG_LEVEL": "WARNING", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


@dataclass
class Settings:
    clients: int
    warmup_s: float
    outage_s: float
    after_s: float
    freeze_s: float
    kill_after_s: float
    survive_s: float
    streamers: int
    reload_step_s: float

    @classmethod
    def for_run(cls, quick: bool) -> "Settings":
        if quick:
            return cls(clients=8, warmup_s=3, outage_s=3, after_s=4, freeze_s=8, kill_after_s=3, survive_s=3,
                       streamers=50, reload_step_s=1.0)
        return cls(clients=12, warmup_s=10, outage_s=20, after_s=15, freeze_s=20, kill_after_s=10, survive_s=10,
                   streamers=50, reload_step_s=3.0)


# ------------------------------------------------------------------------------------------------
# processes


class RedisProcess:
    """A private redis-server on a fixed loopback port, without persistence, that can be killed and
    started again (empty) on the same port."""

    def __init__(self, workdir: str):
        from sigroute.gateway.serving import find_redis_server

        self.binary = find_redis_server()
        if self.binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisProcess":
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--daemonize", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()   # SIGKILL: nothing saved (persistence is off anyway)
            self.proc.wait()

    def __enter__(self) -> "RedisProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


def serve_command(policy_path: Path, redis_url: str | None) -> list[str]:
    command = [sys.executable, "-m", "sigroute.gateway.cli", "serve", "--policy", str(policy_path),
               "--port", "{port}", "--log-level", "warning"]
    return command + (["--redis", redis_url] if redis_url else [])


def start_sim(tmp: Path) -> ServerProcess:
    config = tmp / "sim.yaml"
    config.write_text(yaml.safe_dump({"seed": 1, "models": SIM_MODELS}))
    return ServerProcess([sys.executable, "-m", "sigroute.gateway.cli", "sim", "--config", str(config),
                          "--port", "{port}"], env=ENV, name="sigroute sim")


def models_block(api_base: str) -> dict:
    return {name: {"provider": f"openai/{name}", "api_base": api_base,
                   "price": spec.get("price", {"input": 0, "output": 0})} for name, spec in SIM_MODELS.items()}


def learning_policy(api_base: str) -> dict:
    """LinUCB on the bias feature, reward = quality with default 0: Redis's n counts answers and Σr
    counts feedback (see the module docstring). Exploration is high (alpha 2) so both models keep
    being picked. An exact cache in front of it."""
    return {
        "version": 1,
        "models": models_block(api_base),
        "decisions": [{
            "name": "learn", "models": ["alpha", "beta"],
            "algorithm": {"linucb": {"alpha": 2.0, "features": ["bias"], "sync_interval_s": SYNC_INTERVAL_S,
                                     "reward": {"quality": 1.0, "default_quality": 0.0, "feedback_ttl_s": 600}}},
            "cache": {"mode": "exact", "ttl": 600},
        }],
        "upstream": {"retries": 0, "backoff_s": 0.0},
        # every client is the same anonymous caller rating every answer: the default feedback limit
        # (6,000 a minute) would answer 429 on a fast machine, which this benchmark does not measure
        "server": {"feedback_rate_limit": None},
    }


def streaming_policy(api_base: str, decision: str) -> dict:
    return {
        "version": 1,
        "models": models_block(api_base),
        "decisions": [{"name": decision, "models": ["streamer"]}],
        "upstream": {"retries": 0, "backoff_s": 0.0},
        "server": {"open_without_auth": ["admin"]},   # the benchmark reloads through the admin endpoint
    }


def metric_samples(url: str, name: str) -> dict[str, float]:
    """{label text: value} of one Prometheus metric (label text '' when it has none)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            out[head[len(name):].strip("{}")] = float(value)
    return out


def learned_totals(redis_url: str) -> dict[str, dict[str, float]]:
    """{model: {"n": answers learned, "r": Σ reward}} summed over the learning decision's state keys,
    read with `sigroute bandit export`."""
    done = subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", "bandit", "export", "--redis", redis_url],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **ENV})
    if done.returncode != 0:
        raise RuntimeError(f"sigroute bandit export failed: {done.stderr.strip()}")
    totals: dict[str, dict[str, float]] = {}
    for key, arms in json.loads(done.stdout)["keys"].items():
        if "/d=learn/" not in key:
            continue
        for arm, vec in arms.items():
            entry = totals.setdefault(arm, {"n": 0.0, "r": 0.0})
            entry["n"] += vec[0]
            entry["r"] += vec[1]
    return totals


def wait_until(condition: Callable[[], Any], timeout_s: float, every_s: float = 0.25) -> Any:
    """Poll `condition` until it returns something true (returned) or the time runs out (the last value)."""
    deadline = time.monotonic() + timeout_s
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(every_s)
        value = condition()
    return value


# ------------------------------------------------------------------------------------------------
# closed-loop chat + feedback clients


@dataclass
class Exchange:
    """One question and its feedback, as the client saw them."""

    target: int                 # index of the gateway asked
    started: float              # time.monotonic()
    stream: bool = False
    finished: float = 0.0
    status: int | None = None   # None: no HTTP answer (connection refused / reset)
    error: str = ""             # no HTTP answer (exception name), or a broken stream
    model: str = ""
    cache: str = ""
    request_id: str = ""
    feedback_status: int | None = None
    feedback_code: str = ""     # error code, or "recorded" / "duplicate"
    feedback_model: str = ""
    feedback_at: float = 0.0    # time.monotonic() when the feedback was answered

    @property
    def learned(self) -> bool:
        """An answer the selector learned from: answered by a model, not by the cache."""
        return self.status == 200 and not self.error and self.cache not in SERVED_WITHOUT_A_MODEL


@dataclass
class LoadRecord:
    exchanges: list[Exchange] = field(default_factory=list)
    retries: list[Exchange] = field(default_factory=list)   # feedback sent again after a 503


def client_limits(clients: int) -> httpx.Limits:
    """Connection pool of the load clients. Idle connections are dropped after 2 s, before the
    gateway's keep-alive timeout (uvicorn's 5 s) closes them: a request sent on a connection the
    server is closing at that moment fails without having reached it (the usual keep-alive race,
    which says nothing about the gateway)."""
    return httpx.Limits(max_connections=clients * 2, max_keepalive_connections=clients * 2, keepalive_expiry=2.0)


async def rate(http: httpx.AsyncClient, url: str, exchange: Exchange) -> None:
    try:
        r = await http.post(url + "/v1/feedback", json={"request_id": exchange.request_id, "score": 1})
    except httpx.HTTPError as exc:
        exchange.feedback_status, exchange.feedback_code = None, type(exc).__name__
        return
    exchange.feedback_status = r.status_code
    exchange.feedback_at = time.monotonic()
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    if r.status_code == 200:
        exchange.feedback_code = body.get("status", "")
        exchange.feedback_model = body.get("model") or ""
    else:
        exchange.feedback_code = (body.get("error") or {}).get("code") or str(r.status_code)


async def chat_and_rate(urls: list[str], clients: int, stop: asyncio.Event, record: LoadRecord,
                        pick_target: Callable[[int, int], int]) -> None:
    """`clients` closed-loop clients: ask, then rate the answer (score 1) at the gateway that
    answered, until `stop` is set."""
    limits = client_limits(clients)

    async def client(c: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(c)
        i = 0
        while not stop.is_set():
            i += 1
            question = (rng.choice(SHARED_QUESTIONS) if rng.random() < 0.2
                        else f"client {c} question {i}: how far is {rng.randint(1, 10**9)} km?")
            target = pick_target(c, i)
            ex = Exchange(target=target, started=time.monotonic(), stream=i % 4 == 0)   # one in four streamed
            record.exchanges.append(ex)
            body = {"model": "auto", "stream": ex.stream, "messages": [{"role": "user", "content": question}]}
            try:
                async with http.stream("POST", urls[target] + "/v1/chat/completions", json=body) as r:
                    ex.status = r.status_code
                    ex.model = r.headers.get("x-sigroute-model", "")
                    ex.cache = r.headers.get("x-sigroute-cache", "")
                    ex.request_id = r.headers.get("x-sigroute-request-id", "")
                    if ex.stream and r.status_code == 200:
                        done, ex.error, _ = await read_events(r)
                        if not done and not ex.error:
                            ex.error = "stream ended without [DONE]"
                    else:
                        await r.aread()
            except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
                ex.error = type(exc).__name__
            ex.finished = time.monotonic()
            if ex.status == 200 and ex.request_id and not ex.error:
                await rate(http, urls[target], ex)
            elif ex.status is None:
                await asyncio.sleep(0.05)   # a dead replica refuses at once: do not spin

    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))


async def read_events(response: httpx.Response) -> tuple[bool, str, int]:
    """Read a streamed answer to its end: ([DONE] seen, error event's code or '', chunks)."""
    done, error, chunks = False, "", 0
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        chunks += 1
        event = orjson.loads(data)
        if isinstance(event, dict) and event.get("error") is not None:
            error = str((event["error"] or {}).get("code") or "error event")
    return done, error, chunks


def feedback_accounting(exchanges: list[Exchange]) -> dict[str, Any]:
    """What the clients saw, per model: answers learned from and feedback recorded on them."""
    answers: dict[str, int] = {}
    recorded: dict[str, int] = {}
    for ex in exchanges:
        if ex.learned:
            answers[ex.model] = answers.get(ex.model, 0) + 1
            if ex.feedback_status == 200 and ex.feedback_code == "recorded":
                recorded[ex.model] = recorded.get(ex.model, 0) + 1
    return {"answers": answers, "feedback_recorded": recorded}


def outcome(ex: Exchange) -> str:
    """How an exchange ended, for counting: what went wrong when something did (the exception, or
    the error of a stream that started with status 200 and broke), else the HTTP status."""
    return ex.error or str(ex.status)


def count_by(items, key: Callable[[Any], Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        k = str(key(item))
        out[k] = out.get(k, 0) + 1
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------------------------
# 1. Redis outage


def scenario_redis_outage(settings: Settings, tmp: Path, sim_url: str, log) -> dict[str, Any]:
    policy_path = tmp / "outage-policy.yaml"
    policy_path.write_text(yaml.safe_dump(learning_policy(sim_url + "/v1"), sort_keys=False))
    with RedisProcess(str(tmp)) as redis_server, \
            ServerProcess(serve_command(policy_path, redis_server.url), env=ENV, name="sigroute serve") as gw:
        record = LoadRecord()
        marks: dict[str, float] = {}

        async def run() -> None:
            stop = asyncio.Event()
            load = asyncio.ensure_future(chat_and_rate([gw.url], settings.clients, stop, record, lambda c, i: 0))
            await asyncio.sleep(settings.warmup_s)
            marks["redis_killed"] = time.monotonic()
            redis_server.kill()
            log(f"  redis killed; outage of {settings.outage_s:g} s under load")
            await asyncio.sleep(settings.outage_s)
            await asyncio.to_thread(redis_server.start)   # empty, same port
            marks["redis_back"] = time.monotonic()
            log("  redis started again (empty)")
            await asyncio.sleep(settings.after_s)
            stop.set()
            await load
            marks["load_done"] = time.monotonic()
            # feedback refused during the outage, sent again now that Redis is back ("retry later")
            async with httpx.AsyncClient(timeout=30) as http:
                for ex in record.exchanges:
                    if ex.feedback_status == 503:
                        again = Exchange(target=0, started=time.monotonic(), status=200, model=ex.model,
                                         cache=ex.cache, request_id=ex.request_id)
                        await rate(http, gw.url, again)
                        record.retries.append(again)

        asyncio.run(run())

        def phase(ex: Exchange) -> str:
            if ex.started < marks["redis_killed"]:
                return "before"
            return "during" if ex.started < marks["redis_back"] else "after"

        # reconnection: an exact-cache hit after the restart, the store gauges back at 1
        probe = {"model": "auto", "messages": [{"role": "user", "content": f"probe after the outage {time.time()}"}]}
        first = httpx.post(gw.url + "/v1/chat/completions", json=probe, timeout=30)
        second = httpx.post(gw.url + "/v1/chat/completions", json=probe, timeout=30)
        cache_hit_after = second.headers.get("x-sigroute-cache", "").startswith("hit")
        probe_answers = [ex for ex in (first, second) if ex.status_code == 200]
        stores_up = wait_until(lambda: (metric_samples(gw.url, "sigroute_bandit_store_up").get("") == 1.0
                                        and metric_samples(gw.url, "sigroute_cache_store_up").get("") == 1.0), 15)

        # every answer learned (load + probe) and every feedback recorded (load + retries), by model
        answers = feedback_accounting(record.exchanges)["answers"]
        for response in probe_answers:
            if response.headers.get("x-sigroute-cache", "") not in SERVED_WITHOUT_A_MODEL:
                model = response.headers.get("x-sigroute-model", "")
                answers[model] = answers.get(model, 0) + 1
        recorded = feedback_accounting(record.exchanges)["feedback_recorded"]
        retried_recorded = feedback_accounting(record.retries)["feedback_recorded"]
        for model, n in retried_recorded.items():
            recorded[model] = recorded.get(model, 0) + n
        expected_n, expected_r = sum(answers.values()), sum(recorded.values())

        def synced():
            totals = learned_totals(redis_server.url)
            n = sum(t["n"] for t in totals.values())
            r = sum(t["r"] for t in totals.values())
            return (totals, n, r) if (n >= expected_n and r >= expected_r) else None

        got = wait_until(synced, 20, every_s=0.5) or synced_anyway(redis_server.url)
        totals, stored_n, stored_r = got
        lost_metric = metric_samples(gw.url, "sigroute_feedback_lost_total")
        recoveries = metric_samples(gw.url, "sigroute_bandit_store_recoveries_total")
        gateway_alive = gw.proc is not None and gw.proc.poll() is None

    chats = record.exchanges
    chat_5xx = sum(1 for ex in chats if ex.status is not None and ex.status >= 500)
    chat_no_answer = sum(1 for ex in chats if ex.status is None)
    chat_broken_streams = sum(1 for ex in chats if ex.status == 200 and ex.error)
    feedbacks = [ex for ex in chats + record.retries if ex.feedback_status is not None or ex.feedback_code]
    documented_503 = sum(1 for ex in feedbacks
                         if ex.feedback_status == 503 and ex.feedback_code == "feedback_store_unavailable")
    feedback_without_answer = sum(1 for ex in feedbacks if ex.feedback_status is None)
    other_feedback_5xx = sum(1 for ex in feedbacks if (ex.feedback_status or 0) >= 500
                             and not (ex.feedback_status == 503 and ex.feedback_code == "feedback_store_unavailable"))
    feedback_missing = max(0.0, expected_r - stored_r)
    lost_counted = sum(lost_metric.values())
    # each 503 the clients saw counted one store_unavailable; anything counted beyond those could
    # stand for accepted feedback that was given up
    counted_beyond_refusals = max(0.0, lost_counted - documented_503)
    after = [ex for ex in chats if phase(ex) == "after"]
    result = {
        "settings": {"clients": settings.clients, "warmup_s": settings.warmup_s, "outage_s": settings.outage_s,
                     "after_s": settings.after_s, "sync_interval_s": SYNC_INTERVAL_S, "redis_restarted": "empty"},
        "chat": {p: {"requests": sum(1 for ex in chats if phase(ex) == p),
                     "streamed": sum(1 for ex in chats if phase(ex) == p and ex.stream),
                     "status": count_by([ex for ex in chats if phase(ex) == p], outcome),
                     "latency_ms": stats([(ex.finished - ex.started) * 1000 for ex in chats
                                          if phase(ex) == p and ex.status == 200], 1),
                     "cache": count_by([ex for ex in chats if phase(ex) == p and ex.status == 200],
                                       lambda ex: ex.cache or "none")}
                 for p in ("before", "during", "after")},
        "feedback": {p: count_by([ex for ex in chats if phase(ex) == p and ex.status == 200],
                                 lambda ex: f"{ex.feedback_status} {ex.feedback_code}")
                     for p in ("before", "during", "after")},
        "feedback_retried_after_outage": {"sent": len(record.retries),
                                          "outcome": count_by(record.retries,
                                                              lambda ex: f"{ex.feedback_status} {ex.feedback_code}"),
                                          "recorded": sum(retried_recorded.values())},
        "chat_5xx": chat_5xx,
        "chat_without_answer": chat_no_answer,
        "chat_broken_streams": chat_broken_streams,
        "feedback_5xx_other_than_documented_503": other_feedback_5xx,
        "feedback_refused_503": documented_503,
        "feedback_without_answer": feedback_without_answer,
        "reconnected": {
            "gateway_not_restarted": gateway_alive,
            "chat_ok_after": sum(1 for ex in after if ex.status == 200),
            "feedback_recorded_after": sum(1 for ex in after if ex.feedback_code == "recorded"),
            "exact_cache_hit_after": cache_hit_after,
            "store_gauges_up": bool(stores_up),
        },
        "learned": {
            "answers_seen_by_clients": answers, "stored": {m: t["n"] for m, t in totals.items()},
            "feedback_recorded_seen_by_clients": recorded, "feedback_stored": {m: t["r"] for m, t in totals.items()},
            "expected_n": expected_n, "stored_n": stored_n, "expected_feedback": expected_r, "stored_feedback": stored_r,
        },
        "observations_lost": max(0.0, expected_n - stored_n),
        "observations_double_counted": max(0.0, stored_n - expected_n),
        "feedback_missing_from_state": feedback_missing,
        "feedback_lost_metric": lost_metric,
        "feedback_lost_counted_beyond_refusals": counted_beyond_refusals,
        "feedback_lost_unreported": int(max(0.0, feedback_missing - counted_beyond_refusals)),
        "store_recoveries": recoveries,
    }
    # pending records Redis held when it died (answers rated just before): their feedback, refused
    # during the outage, finds nothing to rate once Redis is back empty (404 unknown_request_id)
    result["pending_records_lost_with_redis"] = sum(1 for ex in record.retries if ex.feedback_status == 404)
    result["redis_outage_5xx"] = (chat_5xx + chat_no_answer + chat_broken_streams + other_feedback_5xx
                                  + feedback_without_answer)
    return result


def synced_anyway(redis_url: str):
    totals = learned_totals(redis_url)
    return totals, sum(t["n"] for t in totals.values()), sum(t["r"] for t in totals.values())


def scenario_redis_frozen(settings: Settings, tmp: Path, sim_url: str, log) -> dict[str, Any]:
    """Redis that stops answering without closing its connections (SIGSTOP: a hung server or a
    network partition), then resumes with its data (SIGCONT). Reported per phase: requests,
    statuses, answers per second and latency; feedback outcomes; learned state checked as above."""
    policy_path = tmp / "frozen-policy.yaml"
    policy_path.write_text(yaml.safe_dump(learning_policy(sim_url + "/v1"), sort_keys=False))
    with RedisProcess(str(tmp)) as redis_server, \
            ServerProcess(serve_command(policy_path, redis_server.url), env=ENV, name="sigroute serve") as gw:
        record = LoadRecord()
        marks: dict[str, float] = {}

        async def run() -> None:
            stop = asyncio.Event()
            load = asyncio.ensure_future(chat_and_rate([gw.url], settings.clients, stop, record, lambda c, i: 0))
            await asyncio.sleep(settings.warmup_s)
            marks["frozen"] = time.monotonic()
            redis_server.proc.send_signal(signal.SIGSTOP)
            log(f"  redis frozen (SIGSTOP) for {settings.freeze_s:g} s under load")
            await asyncio.sleep(settings.freeze_s)
            redis_server.proc.send_signal(signal.SIGCONT)
            marks["resumed"] = time.monotonic()
            await asyncio.sleep(settings.after_s)
            stop.set()
            await load
            marks["load_done"] = time.monotonic()

        asyncio.run(run())
        seen = feedback_accounting(record.exchanges)
        expected_n, expected_r = sum(seen["answers"].values()), sum(seen["feedback_recorded"].values())

        def synced():
            got = synced_anyway(redis_server.url)
            return got if (got[1] >= expected_n and got[2] >= expected_r) else None

        totals, stored_n, stored_r = wait_until(synced, 20, every_s=0.5) or synced_anyway(redis_server.url)
        lost_metric = metric_samples(gw.url, "sigroute_feedback_lost_total")

    chats = record.exchanges
    bounds = {"before": (0.0, marks["frozen"]), "during": (marks["frozen"], marks["resumed"]),
              "after": (marks["resumed"], marks["load_done"])}
    phases = {}
    for name, (start, end) in bounds.items():
        xs = [ex for ex in chats if start <= ex.started < end] if name != "before" else \
            [ex for ex in chats if ex.started < end]
        span = end - (start if name != "before" else min((ex.started for ex in chats), default=end))
        phases[name] = {"requests": len(xs), "status": count_by(xs, outcome),
                        "answers_per_s": round(sum(1 for ex in xs if ex.status == 200) / max(span, 1e-9), 1),
                        "latency_ms": stats([(ex.finished - ex.started) * 1000 for ex in xs if ex.status == 200], 1),
                        "feedback": count_by([ex for ex in xs if ex.status == 200],
                                             lambda ex: f"{ex.feedback_status} {ex.feedback_code}")}
    failed = sum(1 for ex in chats if ex.status is None or ex.status >= 500 or (ex.status == 200 and ex.error))
    documented_503 = sum(1 for ex in chats if ex.feedback_status == 503
                         and ex.feedback_code == "feedback_store_unavailable")
    feedback_missing = max(0.0, expected_r - stored_r)
    counted_beyond_refusals = max(0.0, sum(lost_metric.values()) - documented_503)
    return {
        "settings": {"clients": settings.clients, "freeze_s": settings.freeze_s, "signal": "SIGSTOP, then SIGCONT"},
        "phases": phases,
        "chat_failed": failed,
        "feedback_5xx_other_than_documented_503": sum(
            1 for ex in chats if (ex.feedback_status or 0) >= 500
            and not (ex.feedback_status == 503 and ex.feedback_code == "feedback_store_unavailable")),
        "observations_lost": max(0.0, expected_n - stored_n),
        "feedback_missing_from_state": feedback_missing,
        "feedback_lost_metric": lost_metric,
        "feedback_lost_unreported": int(max(0.0, feedback_missing - counted_beyond_refusals)),
        # a state flush sent just before Redis froze times out in the gateway, which sends it again
        # later, and Redis runs the first one too when it resumes: counted twice unless the store
        # recognises the add sent again (target 0)
        "observations_double_counted": max(0.0, stored_n - expected_n),
        "feedback_double_counted": max(0.0, stored_r - expected_r),
        "learned": {"expected_n": expected_n, "stored_n": stored_n, "expected_feedback": expected_r,
                    "stored_feedback": stored_r, "stored": totals},
    }


# ------------------------------------------------------------------------------------------------
# 2. Replica kill


def scenario_replica_kill(settings: Settings, tmp: Path, sim_url: str, log) -> dict[str, Any]:
    policy_path = tmp / "replica-policy.yaml"
    policy_path.write_text(yaml.safe_dump(learning_policy(sim_url + "/v1"), sort_keys=False))
    with RedisProcess(str(tmp)) as redis_server:
        replicas = [ServerProcess(serve_command(policy_path, redis_server.url), env=ENV,
                                  name=f"sigroute serve #{i}").start() for i in range(2)]
        survivor, victim = replicas
        try:
            record = LoadRecord()
            marks: dict[str, float] = {}

            async def run() -> None:
                stop = asyncio.Event()
                # client-side round robin: request i of client c goes to replica (c + i) % 2
                load = asyncio.ensure_future(chat_and_rate([survivor.url, victim.url], settings.clients, stop, record,
                                                           lambda c, i: (c + i) % 2))
                await asyncio.sleep(settings.kill_after_s)
                victim.proc.send_signal(signal.SIGKILL)
                marks["killed"] = time.monotonic()
                log(f"  replica #1 (pid {victim.pid}) SIGKILLed under load")
                await asyncio.to_thread(victim.proc.wait)
                await asyncio.sleep(settings.survive_s)
                stop.set()
                await load

            asyncio.run(run())
            survivor_alive = survivor.proc.poll() is None
            seen = feedback_accounting(record.exchanges)
            expected_n, expected_r = sum(seen["answers"].values()), sum(seen["feedback_recorded"].values())

            def survivor_synced():   # Redis stops changing once the survivor has flushed everything
                a = synced_anyway(redis_server.url)
                time.sleep(2 * SYNC_INTERVAL_S + 0.5)
                b = synced_anyway(redis_server.url)
                return b if (a[1], a[2]) == (b[1], b[2]) else None

            totals, stored_n, stored_r = wait_until(survivor_synced, 30, every_s=0) or synced_anyway(redis_server.url)
        finally:
            for replica in replicas:
                replica.stop()

    kill_at = marks["killed"]
    to_survivor = [ex for ex in record.exchanges if ex.target == 0]
    to_victim = [ex for ex in record.exchanges if ex.target == 1]
    survivor_failed = sum(1 for ex in to_survivor if ex.status != 200 or ex.error)
    survivor_feedback_failed = sum(1 for ex in to_survivor if ex.status == 200 and ex.feedback_status != 200)
    victim_before = [ex for ex in to_victim if ex.finished < kill_at]
    # what the victim learned in its last sync interval before it died: the documented bound
    window = [ex for ex in victim_before if ex.learned and ex.finished >= kill_at - SYNC_INTERVAL_S]
    window_feedback = [ex for ex in victim_before if ex.learned and ex.feedback_code == "recorded"
                       and kill_at - SYNC_INTERVAL_S <= ex.feedback_at < kill_at]
    lost_n = max(0.0, expected_n - stored_n)
    lost_r = max(0.0, expected_r - stored_r)
    victim_learned = [ex for ex in victim_before if ex.learned]
    span = max(1e-9, kill_at - min((ex.started for ex in victim_before), default=kill_at))
    return {
        "settings": {"clients": settings.clients, "kill_after_s": settings.kill_after_s,
                     "survive_s": settings.survive_s, "sync_interval_s": SYNC_INTERVAL_S},
        "survivor_alive": survivor_alive,
        "survivor_requests": len(to_survivor),
        "survivor_requests_after_kill": sum(1 for ex in to_survivor if ex.started >= kill_at),
        "survivor_failed": survivor_failed,
        "survivor_feedback_failed": survivor_feedback_failed,
        "victim_requests_before_kill": len(victim_before),
        "victim_requests_failed": count_by([ex for ex in to_victim if ex.status != 200 or ex.error], outcome),
        "victim_answer_rate_per_s": round(len(victim_learned) / span, 2),
        "expected_n": expected_n, "stored_n": stored_n, "expected_feedback": expected_r, "stored_feedback": stored_r,
        "observations_lost": lost_n,
        "feedback_lost": lost_r,
        "victim_answers_in_last_interval": len(window),
        "victim_answers_in_last_intervals": {k: sum(1 for ex in victim_before if ex.learned
                                                    and ex.finished >= kill_at - k * SYNC_INTERVAL_S)
                                             for k in (1, 2, 3)},
        # requests the victim was answering when it died: it may have learned (and flushed) them
        # without the client seeing the answer (or, for a stream, its end)
        "victim_requests_cut_at_kill": sum(1 for ex in to_victim if ex.status in (None, 200)
                                           and ex.error in ("ReadError", "RemoteProtocolError")),
        "victim_feedback_in_last_interval": len(window_feedback),
        "victim_feedback_total": sum(1 for ex in victim_before if ex.learned and ex.feedback_code == "recorded"),
        "lost_within_one_interval": lost_n <= len(window) and lost_r <= len(window_feedback),
        "stored_by_model": {m: t for m, t in totals.items()},
    }


# ------------------------------------------------------------------------------------------------
# 3. Reloads under 50 streaming clients


@dataclass
class Stream:
    started: float
    answered: float = 0.0       # response headers received (the gateway had decided by then)
    finished: float = 0.0
    status: int | None = None
    decision: str = ""
    chunks: int = 0
    done: bool = False
    error: str = ""
    detail: str = ""            # the exception's text, when one ended it

    @property
    def failed(self) -> bool:
        return self.status != 200 or not self.done or bool(self.error)


async def stream_forever(url: str, clients: int, stop: asyncio.Event, streams: list[Stream]) -> None:
    limits = client_limits(clients)
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "tell me a story"}]}

    async def client(c: int, http: httpx.AsyncClient) -> None:
        while not stop.is_set():
            s = Stream(started=time.monotonic())
            streams.append(s)
            try:
                async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                    s.answered = time.monotonic()
                    s.status = r.status_code
                    s.decision = r.headers.get("x-sigroute-decision", "")
                    s.done, s.error, s.chunks = await read_events(r)
            except (httpx.HTTPError, orjson.JSONDecodeError) as exc:
                s.error, s.detail = type(exc).__name__, str(exc)[:200]
            s.finished = time.monotonic()

    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))


YAML_SYNTAX_ERROR = "version: 1\nmodels: {}\ndecisions:\n  - name: broken\n    models: [streamer\n"  # unclosed [
MISSPELT_KEY = "algoritm"   # an unknown key in a decision (a misspelt `algorithm`)


def scenario_reload(settings: Settings, tmp: Path, sim_url: str, log) -> dict[str, Any]:
    api_base = sim_url + "/v1"
    path = tmp / "reload-policy.yaml"

    def write(decision: str, unknown_key: str | None = None) -> None:
        policy = streaming_policy(api_base, decision)
        if unknown_key:
            policy["decisions"][0][unknown_key] = "static"
        path.write_text(yaml.safe_dump(policy, sort_keys=False))

    write("v1")
    steps: list[dict[str, Any]] = []
    streams: list[Stream] = []
    health_ms: list[float] = []
    with ServerProcess(serve_command(path, None), env=ENV, name="sigroute serve") as gw:
        def reloads_counted() -> dict[str, float]:
            return metric_samples(gw.url, "sigroute_policy_reloads_total")

        async def probe_health(stop: asyncio.Event) -> None:
            async with httpx.AsyncClient(timeout=60) as http:
                while not stop.is_set():
                    began = time.monotonic()
                    await http.get(gw.url + "/health")
                    health_ms.append((time.monotonic() - began) * 1000)
                    await asyncio.sleep(0.1)

        async def run() -> None:
            stop = asyncio.Event()
            load = asyncio.ensure_future(stream_forever(gw.url, settings.streamers, stop, streams))
            prober = asyncio.ensure_future(probe_health(stop))
            step_s = settings.reload_step_s
            await asyncio.sleep(step_s)
            async with httpx.AsyncClient(timeout=120) as http:
                async def probe(http: httpx.AsyncClient) -> str:
                    """The decision that answers a request sent once the step is over."""
                    r = await http.post(gw.url + "/v1/chat/completions", json={
                        "model": "auto", "max_tokens": 2, "messages": [{"role": "user", "content": "which policy?"}]})
                    return r.headers.get("x-sigroute-decision", f"status {r.status_code}")

                async def via_http(name: str, expect_decision: str) -> None:
                    at = time.monotonic()
                    r = await http.post(gw.url + "/v1/admin/reload")
                    error = (r.json().get("error") or {}) if r.status_code != 200 else {}
                    done = time.monotonic()
                    steps.append({"step": name, "how": "POST /v1/admin/reload", "status": r.status_code,
                                  "message": error.get("message", ""), "code": error.get("code", ""),
                                  "at": at, "done": done, "serving": expect_decision,
                                  "probe_decision": await probe(http)})

                async def via_sighup(name: str, expect_decision: str, result: str) -> None:
                    at = time.monotonic()
                    before = reloads_counted().get(f'result="{result}"', 0.0)
                    os.kill(gw.pid, signal.SIGHUP)
                    counted = await asyncio.to_thread(
                        wait_until, lambda: reloads_counted().get(f'result="{result}"', 0.0) > before, 60)
                    done = time.monotonic()
                    steps.append({"step": name, "how": "SIGHUP", "counted_as": result if counted else "nothing",
                                  "at": at, "done": done, "serving": expect_decision,
                                  "probe_decision": await probe(http)})

                write("v2")
                await via_http("good file (v1 -> v2)", "v2")
                await asyncio.sleep(step_s)
                path.write_text(YAML_SYNTAX_ERROR)
                await via_http("YAML syntax error", "v2")
                await asyncio.sleep(step_s)
                write("v2-unknown", unknown_key=MISSPELT_KEY)
                await via_http("unknown key", "v2")
                await asyncio.sleep(step_s)
                write("v3")
                await via_sighup("good file (v2 -> v3)", "v3", "ok")
                await asyncio.sleep(step_s)
                path.write_text(YAML_SYNTAX_ERROR)
                await via_sighup("YAML syntax error", "v3", "failed")
                await asyncio.sleep(step_s)
            stop.set()
            await load
            await prober

        asyncio.run(run())
        alive = gw.proc.poll() is None

    # which decision answered the streams the gateway certainly routed between two steps: sent after
    # a step finished, and answered (headers back) before the next one began
    t0 = streams[0].started if streams else 0.0
    for i, step in enumerate(steps):
        until = steps[i + 1]["at"] if i + 1 < len(steps) else float("inf")
        after = [s for s in streams if step["done"] <= s.started and s.answered <= until and s.status == 200]
        step["decisions_after"] = count_by(after, lambda s: s.decision)
        step["streams_routed_after"] = len(after)
        step["old_or_new_policy_serving"] = (step["probe_decision"] == step["serving"]
                                             and all(s.decision == step["serving"] for s in after))
        step["unexpected"] = [(round(s.started - t0, 3), round(s.answered - t0, 3), s.decision)
                              for s in after if s.decision != step["serving"]][:10]
    for step in steps:
        step["at"], step["done"] = round(step["at"] - t0, 3), round(step["done"] - t0, 3)
    policy_file = path.name
    for step in steps:
        if step.get("how") == "POST /v1/admin/reload" and step["status"] != 200:
            message = step["message"]
            step["names_file_and_line"] = f"{policy_file}:" in message and any(
                f"{policy_file}:{n}" in message for n in range(1, 20))
            if step["step"] == "unknown key":
                step["names_key"] = MISSPELT_KEY in message
    failed = [s for s in streams if s.failed]
    return {
        "settings": {"streaming_clients": settings.streamers, "step_s": settings.reload_step_s,
                     "stream": f"{SIM_MODELS['streamer']['completion_tokens']} chunks at "
                               f"{SIM_MODELS['streamer']['tokens_per_s']} tokens/s"},
        "gateway_alive": alive,
        "streams": len(streams),
        "streams_failed": len(failed),
        "failures": count_by(failed, lambda s: s.error or s.status or "no [DONE]"),
        "failed_streams": [{"started_s": round(s.started - t0, 3), "answered_s": round(s.answered - t0, 3) if s.answered
                            else None, "status": s.status, "chunks": s.chunks, "done": s.done, "error": s.error,
                            "detail": s.detail}
                           for s in failed][:20],
        "steps": steps,
        "decisions_seen": count_by([s for s in streams if s.status == 200], lambda s: s.decision),
        "stream_first_byte_ms": stats([(s.answered - s.started) * 1000 for s in streams if s.answered], 1),
        "stream_total_ms": stats([(s.finished - s.started) * 1000 for s in streams if s.finished], 1),
        "health_ms": stats(health_ms, 1),
    }


# ------------------------------------------------------------------------------------------------


def run_operations(*, quick: bool, json_details: dict, log: Callable[[str], Any] | None = None) -> dict:
    """Run the scenarios; their details go into `json_details` (keys `redis_outage`, `redis_frozen`,
    `replica_kill`, `reload`) and the summary is returned: `redis_outage_5xx`,
    `reload_failed_requests`, `feedback_lost_unreported` (all targets 0) and further keys."""
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    settings = Settings.for_run(quick)
    with tempfile.TemporaryDirectory(prefix="sigroute-chaos-ops-") as tmp_name:
        tmp = Path(tmp_name)
        with start_sim(tmp) as sim:
            log(f"redis outage: {settings.outage_s:g} s under {settings.clients} clients")
            outage = json_details["redis_outage"] = scenario_redis_outage(settings, tmp, sim.url, log)
            log(f"  chat 5xx {outage['redis_outage_5xx']}, feedback 503 {outage['feedback_refused_503']}, "
                f"observations lost {outage['observations_lost']:g}, "
                f"feedback lost unreported {outage['feedback_lost_unreported']}")
            log(f"redis frozen: {settings.freeze_s:g} s under {settings.clients} clients")
            frozen = json_details["redis_frozen"] = scenario_redis_frozen(settings, tmp, sim.url, log)
            log(f"  failed {frozen['chat_failed']}; answers/s before {frozen['phases']['before']['answers_per_s']}, "
                f"frozen {frozen['phases']['during']['answers_per_s']}, after {frozen['phases']['after']['answers_per_s']}")
            log(f"replica kill: 2 gateways, {settings.clients} clients, sync interval {SYNC_INTERVAL_S:g} s")
            kill = json_details["replica_kill"] = scenario_replica_kill(settings, tmp, sim.url, log)
            log(f"  survivor failed {kill['survivor_failed']} of {kill['survivor_requests']}, lost "
                f"{kill['observations_lost']:g} observations / {kill['feedback_lost']:g} feedback "
                f"(victim's last interval: {kill['victim_answers_in_last_interval']} answers)")
            log(f"reload: {settings.streamers} streaming clients, good / broken / unknown-key files")
            reload = json_details["reload"] = scenario_reload(settings, tmp, sim.url, log)
            log(f"  {reload['streams']} streams, {reload['streams_failed']} failed")
    broken = [s for s in reload["steps"] if s.get("how") == "POST /v1/admin/reload" and s["status"] != 200]
    return {
        "redis_outage_5xx": int(outage["redis_outage_5xx"] + frozen["chat_failed"]
                                + frozen["feedback_5xx_other_than_documented_503"]),
        "reload_failed_requests": int(reload["streams_failed"]),
        "feedback_lost_unreported": int(outage["feedback_lost_unreported"] + frozen["feedback_lost_unreported"]),
        "redis_outage_s": settings.outage_s,
        "redis_outage_chat_requests": sum(p["requests"] for p in outage["chat"].values()),
        "redis_outage_feedback_refused_503": outage["feedback_refused_503"],
        "redis_outage_observations_lost": outage["observations_lost"],
        "redis_reconnected": (outage["reconnected"]["chat_ok_after"] > 0
                              and outage["reconnected"]["feedback_recorded_after"] > 0
                              and outage["reconnected"]["exact_cache_hit_after"]
                              and outage["reconnected"]["store_gauges_up"]),
        "redis_frozen_s": settings.freeze_s,
        "redis_frozen_answers_per_s": frozen["phases"]["during"]["answers_per_s"],
        "redis_frozen_p50_ms": frozen["phases"]["during"]["latency_ms"].get("p50"),
        "redis_unfrozen_answers_per_s": frozen["phases"]["before"]["answers_per_s"],
        "redis_frozen_double_counted": frozen["observations_double_counted"],
        "redis_pending_records_lost_with_redis": outage["pending_records_lost_with_redis"],
        "replica_survivor_failed": kill["survivor_failed"],
        "replica_lost_observations": kill["observations_lost"],
        "replica_lost_feedback": kill["feedback_lost"],
        "replica_last_interval_answers": kill["victim_answers_in_last_interval"],
        "replica_sync_interval_s": SYNC_INTERVAL_S,
        "reload_streams": reload["streams"],
        "reload_broken_rejected": len(broken),
        "reload_old_policy_served": all(s["old_or_new_policy_serving"] for s in reload["steps"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos_ops", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases (3 s outage) for tests")
    parser.add_argument("--json", help="write the full result here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    result: dict[str, Any] = {"benchmark": "chaos_ops", "config": vars(args), "machine": machine_info()}
    details: dict[str, Any] = {}
    result["summary"] = run_operations(quick=args.quick, json_details=details, log=log)
    result.update(details)
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
