"""`sigroute demo`: the simulated upstream and the gateway in one process, a few hundred requests,
and a report per decision (requests, chosen models, accuracy, cost, latency).

The requests are the project's own multiple-choice questions (gateway/sim/data/demo_questions.json),
dressed in ways that trigger the default policy's decisions: plain, about code, in another
language, with a long pasted context, or flagged urgent by a header. The simulated models answer
correctly with their configured accuracy for the question's category, so the report shows what
routing buys in accuracy and what it costs.
"""

from __future__ import annotations

import asyncio
import random
import re
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import httpx

from sigroute.gateway.serving import ServerThread

ANSWER = re.compile(r"answer is \(?([A-J])\)?")

LONG_CONTEXT = (
    "Background notes pasted from the team wiki. The quarterly planning cycle starts with a review of "
    "the previous quarter's commitments, continues with capacity estimates per team, and ends with a "
    "ranked list of projects that fit the available capacity. Every project lists an owner, a goal, a "
    "measure of success and the risks that could delay it. "
) * 100

# Questions in other languages (written for this demo; not graded, they exercise the language route).
FOREIGN = (
    "Pourquoi le ciel est-il bleu pendant la journée et rouge au coucher du soleil ?",
    "¿Cuáles son las diferencias principales entre una célula animal y una célula vegetal?",
    "Wie funktioniert eigentlich ein Kühlschrank, und warum wird die Rückseite warm?",
    "Quali sono stati i motivi principali della caduta dell'Impero romano d'Occidente?",
    "Por que a água do mar é salgada, enquanto a água dos rios é doce?",
)

STYLES = ("plain", "plain", "plain", "code", "foreign", "long", "urgent", "conversation")


@dataclass
class Outcome:
    style: str
    decision: str
    model: str
    correct: bool | None
    latency_s: float
    cost_usd: float
    error: str | None = None


def _dress(question_text: str, style: str) -> tuple[list[dict], dict[str, str]]:
    headers: dict[str, str] = {}
    if style == "code":
        text = "Think about it like a programmer debugging a Python function.\n\n" + question_text
    elif style == "foreign":
        text = FOREIGN[hash(question_text) % len(FOREIGN)]
    elif style == "conversation":
        history = [{"role": "user", "content": "I am preparing for an exam and want to check my answers."},
                   {"role": "assistant", "content": "Happy to help. Send the first question."},
                   {"role": "user", "content": "Before that: can you explain why practice questions help?"},
                   {"role": "assistant", "content": "Retrieval practice strengthens memory more than rereading."},
                   {"role": "user", "content": "Explain why, step by step, for this one:\n\n" + question_text}]
        return history, headers
    elif style == "long":
        text = LONG_CONTEXT + "\n\nWith that context in mind:\n" + question_text
    elif style == "urgent":
        text = question_text
        headers["x-priority"] = "high"
    else:
        text = question_text
    return [{"role": "user", "content": text}], headers


def _with_api_base(policy, url: str):
    models = {name: spec.model_copy(update={"api_base": url}) if spec.api_base and "127.0.0.1:8099" in spec.api_base
              else spec for name, spec in policy.models.items()}
    return policy.model_copy(update={"models": models})


async def _drive(base_url: str, questions, n: int, concurrency: int, seed: int, prices) -> list[Outcome]:
    from sigroute.gateway.sim import format_question

    rng = random.Random(seed)
    plan = [(rng.choice(questions), rng.choice(STYLES)) for _ in range(n)]
    outcomes: list[Outcome] = []
    queue: asyncio.Queue = asyncio.Queue()
    for item in plan:
        queue.put_nowait(item)
    done = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:
        async def worker():
            nonlocal done
            while True:
                try:
                    question, style = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                messages, headers = _dress(format_question(question), style)
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions", json={"model": "auto", "messages": messages,
                                                                         "max_tokens": 64}, headers=headers)
                    latency = time.perf_counter() - t0
                    if r.status_code != 200:
                        outcomes.append(Outcome(style, r.headers.get("x-sigroute-decision", "?"), "-", None, latency,
                                                0.0, error=f"HTTP {r.status_code}"))
                    else:
                        body = r.json()
                        text = body["choices"][0]["message"]["content"] or ""
                        found = ANSWER.search(text)
                        model = r.headers.get("x-sigroute-model", body.get("model", "?"))
                        usage = body.get("usage") or {}
                        price = prices.get(model)
                        cost = ((usage.get("prompt_tokens", 0) * price.input + usage.get("completion_tokens", 0)
                                 * price.output) / 1e6) if price else 0.0
                        correct = None if style == "foreign" else bool(found and found.group(1) == question.answer)
                        outcomes.append(Outcome(style, r.headers.get("x-sigroute-decision", "?"), model,
                                                correct, latency, cost))
                except httpx.HTTPError as exc:
                    outcomes.append(Outcome(style, "?", "-", None, time.perf_counter() - t0, 0.0,
                                            error=type(exc).__name__))
                done += 1
                _progress(done, n)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    sys.stderr.write("\n")
    return outcomes


def _progress(done: int, total: int, width: int = 40) -> None:
    if not sys.stderr.isatty() and done % max(1, total // 10) and done != total:
        return
    filled = int(width * done / total)
    end = "" if sys.stderr.isatty() else "\n"
    sys.stderr.write(f"\r  [{'#' * filled}{'.' * (width - filled)}] {done}/{total}{end}")
    sys.stderr.flush()


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def report(outcomes: list[Outcome], elapsed_s: float) -> str:
    lines = []
    by_decision: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_decision[o.decision].append(o)
    header = f"{'decision':<18}{'requests':>9}{'accuracy':>10}{'cost $':>11}{'p50 ms':>9}{'p95 ms':>9}  models chosen"
    lines.append(header)
    lines.append("-" * len(header))
    for decision, items in sorted(by_decision.items(), key=lambda kv: -len(kv[1])):
        graded = [o.correct for o in items if o.correct is not None]
        accuracy = f"{sum(graded) / len(graded):.2f}" if graded else "-"
        latencies = [o.latency_s * 1000 for o in items]
        models = Counter(o.model for o in items)
        chosen = ", ".join(f"{m}×{c}" for m, c in models.most_common())
        lines.append(f"{decision:<18}{len(items):>9}{accuracy:>10}{sum(o.cost_usd for o in items):>11.5f}"
                     f"{statistics.median(latencies):>9.0f}{_percentile(latencies, 0.95):>9.0f}  {chosen}")
    graded = [o.correct for o in outcomes if o.correct is not None]
    errors = [o for o in outcomes if o.error]
    lines.append("-" * len(header))
    lines.append(f"{'all':<18}{len(outcomes):>9}{(sum(graded) / len(graded) if graded else 0):>10.2f}"
                 f"{sum(o.cost_usd for o in outcomes):>11.5f}"
                 f"{statistics.median([o.latency_s * 1000 for o in outcomes]):>9.0f}"
                 f"{_percentile([o.latency_s * 1000 for o in outcomes], 0.95):>9.0f}")
    lines.append(f"\n{len(outcomes)} requests in {elapsed_s:.1f}s ({len(outcomes) / elapsed_s:.0f} req/s), "
                 f"{len(errors)} errors")
    return "\n".join(lines)


def run_demo(requests: int = 300, concurrency: int = 16, policy_path: str | None = None,
             sim_config: str | None = None, seed: int = 7) -> int:
    from sigroute.gateway.app import create_app
    from sigroute.gateway.sim import DEFAULT_CONFIG_PATH, create_sim_app, load_question_bank
    from sigroute.policies.loader import load_default_policy, load_policy

    policy = load_policy(policy_path) if policy_path else load_default_policy()
    questions = load_question_bank()
    print(f"sigroute demo: {requests} requests, concurrency {concurrency}, "
          f"policy {'embedded default' if not policy_path else policy_path}")
    with ServerThread(create_sim_app(sim_config or DEFAULT_CONFIG_PATH)) as sim:
        routed = _with_api_base(policy, sim.url + "/v1")
        with ServerThread(create_app(routed)) as gateway:
            print(f"  simulated upstream on {sim.url}, gateway on {gateway.url}")
            t0 = time.perf_counter()
            outcomes = asyncio.run(_drive(gateway.url, questions, requests, concurrency, seed,
                                          {n: s.price for n, s in routed.models.items()}))
            elapsed = time.perf_counter() - t0
    print()
    print(report(outcomes, elapsed))
    return 0 if not any(o.error for o in outcomes) else 1
