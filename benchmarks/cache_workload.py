"""The semantic cache under a realistic request stream: how often it answers, how often wrongly, what it saves.

    python -m benchmarks.cache_workload [--pairs PATH] [--requests N] [--seed S] [--concurrency C] [--json PATH]

What is measured
----------------
A real gateway (uvicorn on 127.0.0.1, free port) serves a policy with one decision, ``default``,
routing to one model, ``sim-a``, served by the simulated upstream (`gateway.sim`, a real HTTP
server). The decision has ``cache: {ttl: 1h, max_entries: 100000}``: everything else, mode
(exact_then_semantic), similarity threshold and the verifier, is the schema's default, never tuned
on this data. A request stream is sent through it with the official `openai` client
(``AsyncOpenAI``, ``model="auto"``, one user message, ``temperature=0``), ``--concurrency`` requests
in flight, in stream order. Each answer's ``x-sigroute-cache`` header says what the cache did
(``hit-exact``, ``hit-semantic``, ``coalesced``, ``miss``, ``bypass``, ``off``; absent = ``off``),
``x-sigroute-cache-category`` its category and ``x-sigroute-cache-similarity`` a semantic hit's
similarity. A *hit* is ``hit-exact``, ``hit-semantic`` or ``coalesced`` (served another request's
answer without calling the upstream).

The stream (`build_stream`) is written at run time from the TEST part of the labelled pairs
(``question1,question2,is_duplicate``; `cache.training.load_pairs` recomputes the leak-free split;
the verifier was trained and its threshold chosen on the other parts). Test pairs are shuffled with
``--seed`` and each request is, by a seeded draw:

* ``first`` (40 %): a question not asked before: the next unused test pair (both of its questions
  still unasked) is opened and one of its two questions, chosen at random, is asked. Duplicate and
  non-duplicate pairs are opened in the ratio paraphrase : hard_negative so that neither pool runs dry;
* ``repeat`` (25 %): the exact text of a question asked earlier (uniform over those asked so far);
* ``paraphrase`` (20 %): the other question of an opened pair labelled duplicate (is_duplicate=1)
  whose first question was asked earlier and whose other one was not asked yet;
* ``hard_negative`` (15 %): the same for a pair labelled NOT duplicate: a hit on the partner's
  answer is a wrong hit.

When the drawn kind has nothing to offer (the first requests) a ``first`` is sent instead; when no
pair is left to open the stream ends early. The realized mix is reported.

Wrong hits are found without trusting the gateway. Every prompt ends with the sim's echo marker
(``[[sim:echo]]``, see `gateway.sim`), so the upstream answers with the prompt itself and an answer
text identifies the question that produced it. The marker is part of the last user message, which
is what the cache embeds and verifies, so it raises similarities: on 800 test pairs, MiniLM cosine
rose by 0.03 on average for duplicates and 0.07 for non-duplicates (non-duplicates at >= 0.9: 41 ->
59). The cross-check ``--answers filler`` sends the plain questions: hit rates are then free of the
marker, but the sim's filler has only ~50 distinct texts, so a correct hit can never be attributed
(its answer was also produced by unrelated questions: unresolved) and only hits whose answer no
acceptable question produced count as wrong; that mode reports ``wrong_hit_rate`` as null and
``wrong_hit_rate_lower_bound`` = wrong / all hits instead. For every answer
obtained from the upstream (miss / bypass / off) the benchmark records answer text -> question. A
hit's answer is looked up there and the origin question compared with the asked one:

* correct: the same question (normalized: lower case, whitespace collapsed), or a labelled
  duplicate (is_duplicate=1 for that pair in the test part), or in the same duplicate cluster
  (connected components of the test part's is_duplicate=1 pairs: duplicates are transitive);
* wrong: anything else, split into ``non_duplicate`` (the pair is labelled is_duplicate=0) and
  ``unlabelled`` (the two questions were never labelled against each other). A direct label wins
  over the cluster;
* unresolved: the answer text was never produced by the upstream in this run, or by several
  questions whose verdicts disagree. Counted separately, in neither of the above.

A wrong answer can travel: a question first served someone else's answer never had its own answer
stored, so its repeats find the same wrong entry again (wrong hits under ``repeat``).

Reported: ``hit_rate`` = hits / requests (by cache header value, by kind of request, by category);
``wrong_hit_rate`` = wrong hits / resolved hits; ``upstream_calls_saved`` = requests - upstream calls
(the sim's ``/sim/stats`` ``total_calls``, reset after two warm-up requests that load the encoder and
verifier) and the same as a fraction;
client-measured latency p50 / p95 for hits and misses. The baseline in the same run: the same stream
through a second gateway whose decision has no cache, so ``hit_p50_vs_nocache`` (hit p50 / no-cache
p50) and ``miss_p50_vs_nocache`` (what a miss pays for the lookup and store) are ratios measured
under the same conditions. ``--compare-no-verify`` adds a third run with ``verify: false`` (labelled
``no_verify``) to show what the verifier buys. The upstream answers after ``--upstream-ms`` (50 ms).
Client, gateway and sim share one process (three event loops), as in the other gateway benchmarks.

The last line printed is the summary as one JSON line: ``hit_rate``, ``wrong_hit_rate``,
``upstream_calls_saved``, ``upstream_calls_saved_fraction``, ``hit_rate_by_kind``, ``hit_p50_ms``,
``miss_p50_ms``, ``nocache_p50_ms``, ``hit_p50_vs_nocache``, ``miss_p50_vs_nocache``, ``wrong_hits``,
``unresolved_hits``, ``errors``, ``requests``, ``wall_s`` (and ``no_verify {...}`` with
``--compare-no-verify``). ``--json PATH`` writes everything: per run, hits by cache header value,
verdict counts, and hit rate / wrong hits by kind of request and by category, latencies per header
value, the similarities of semantic hits. ``--wrong-examples N`` adds N wrong hits per run, with
their question texts (dataset text: keep such files out of the repository).

Default: 2500 requests (the test part of the dev file has 2313 pairs; beyond about 3000 requests the
realized mix drifts towards first-time questions), about 3 minutes on 2 CPU cores for the cache run
plus the no-cache baseline (``--compare-no-verify``: about 2 more).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from benchmarks.report import emit
from sigroute.cache.training import DEFAULT_PAIRS, Components, load_pairs, normalize_question

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

KINDS = ("first", "repeat", "paraphrase", "hard_negative")
DEFAULT_MIX: dict[str, float] = {"first": 0.40, "repeat": 0.25, "paraphrase": 0.20, "hard_negative": 0.15}
HIT_VALUES = ("hit-exact", "hit-semantic", "coalesced")
UPSTREAM_VALUES = ("miss", "bypass", "off")  # the answer came from the upstream
CACHE_VALUES = HIT_VALUES + UPSTREAM_VALUES
CORRECT = ("correct_same", "correct_duplicate", "correct_cluster")
WRONG = ("wrong_non_duplicate", "wrong_unlabelled")
UNRESOLVED = "unresolved"
ECHO_MARKER = "[[sim:echo]]"  # gateway.sim.ECHO_MARKER (not imported: that module is heavy)
MODEL = "sim-a"
DECISION = "default"
# Sent before the stream (not counted): the second is a near-copy of the first, so both cache tiers
# (and the encoder and verifier) are loaded before anything is timed.
WARMUP_PROMPTS = ("sigroute cache workload warm-up request, not part of the stream",
                  "sigroute cache workload warm up request - not part of the stream")
DEFAULT_REQUESTS = 2500
DEFAULT_CACHE = {"ttl": "1h", "max_entries": 100_000}  # threshold / verify: the schema's defaults


# --------------------------------------------------------------------------------------------
# The request stream
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StreamRequest:
    """One request of the stream: `text` is the question as asked; `partner` is, for a paraphrase
    or hard negative, the earlier-asked question of its pair (else None)."""

    index: int
    kind: str
    text: str
    partner: str | None = None


def rows_in_test_split(pairs: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The rows of the test part only (the verifier never saw them)."""
    return [dict(r) for r in pairs if r["split"] == "test"]


def build_stream(rows: Sequence[Mapping[str, Any]], n_requests: int, seed: int = 0,
                 mix: Mapping[str, float] = DEFAULT_MIX) -> list[StreamRequest]:
    """The request stream (see the module doc) from `rows`, which must all be test-split rows
    (``question1, question2, is_duplicate, split``); raises if any is not. Deterministic in `seed`."""
    bad = [r for r in rows if r.get("split") != "test"]
    if bad:
        raise ValueError(f"{len(bad)} row(s) are not in the test split; the stream uses test rows only")
    if set(mix) != set(KINDS) or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
        raise ValueError(f"mix needs non-negative weights for exactly {', '.join(KINDS)}")
    rng = random.Random(seed)
    order = list(range(len(rows)))
    rng.shuffle(order)
    unopened = {1: [i for i in order if rows[i]["is_duplicate"]], 0: [i for i in order if not rows[i]["is_duplicate"]]}
    cursor = {1: 0, 0: 0}
    opened: dict[int, list[tuple[str, str]]] = {1: [], 0: []}  # (asked, partner) waiting for the partner
    asked: list[str] = []  # every distinct question asked, as first asked
    asked_norm: set[str] = set()
    dup_share = mix["paraphrase"] / ((mix["paraphrase"] + mix["hard_negative"]) or 1.0)
    kinds, weights = list(KINDS), [mix[k] for k in KINDS]
    stream: list[StreamRequest] = []

    def ask(kind: str, text: str, partner: str | None = None) -> None:
        stream.append(StreamRequest(len(stream), kind, text, partner))
        if normalize_question(text) not in asked_norm:
            asked_norm.add(normalize_question(text))
            asked.append(text)

    def next_pair(label: int) -> tuple[str, str] | None:
        pool = unopened[label]
        while cursor[label] < len(pool):
            row = rows[pool[cursor[label]]]
            cursor[label] += 1
            a, b = row["question1"], row["question2"]
            na, nb = normalize_question(a), normalize_question(b)
            if na and nb and na != nb and na not in asked_norm and nb not in asked_norm:
                return (a, b) if rng.random() < 0.5 else (b, a)
        return None

    def open_pair() -> bool:
        first_label = 1 if rng.random() < dup_share else 0
        for label in (first_label, 1 - first_label):
            pair = next_pair(label)
            if pair is not None:
                opened[label].append(pair)
                ask("first", pair[0])
                return True
        return False

    def take_partner(label: int) -> tuple[str, str] | None:
        pool = opened[label]
        while pool:
            asked_text, partner = pool.pop(rng.randrange(len(pool)))
            if normalize_question(partner) not in asked_norm:  # asked meanwhile through another pair
                return asked_text, partner
        return None

    while len(stream) < n_requests:
        kind = rng.choices(kinds, weights)[0]
        if kind == "repeat" and asked:
            ask("repeat", asked[rng.randrange(len(asked))])
            continue
        if kind in ("paraphrase", "hard_negative"):
            taken = take_partner(1 if kind == "paraphrase" else 0)
            if taken is not None:
                ask(kind, taken[1], partner=taken[0])
                continue
        if not open_pair():
            break  # no unused pair left: the stream ends early
    return stream


def prompt_for(question: str, answers: str = "echo") -> str:
    """What is sent as the user message: with "echo" the sim answers with the prompt itself."""
    return f"{question} {ECHO_MARKER}" if answers == "echo" else question


# --------------------------------------------------------------------------------------------
# Wrong-hit classification
# --------------------------------------------------------------------------------------------

class PairLabels:
    """The test part's labels between normalized questions: direct pair labels and duplicate clusters."""

    def __init__(self, rows: Iterable[Mapping[str, Any]]):
        self.duplicate: set[frozenset[str]] = set()
        self.non_duplicate: set[frozenset[str]] = set()
        self._clusters = Components()
        for r in rows:
            a, b = normalize_question(r["question1"]), normalize_question(r["question2"])
            if r["is_duplicate"]:
                self.duplicate.add(frozenset((a, b)))
                self._clusters.union(a, b)
            else:
                self.non_duplicate.add(frozenset((a, b)))


    def verdict(self, asked: str, origin: str) -> str:
        """How an answer produced for `origin` serves a request for `asked` (one of CORRECT + WRONG)."""
        a, o = normalize_question(asked), normalize_question(origin)
        if a == o:
            return "correct_same"
        key = frozenset((a, o))
        if key in self.duplicate:
            return "correct_duplicate"
        if key in self.non_duplicate:
            return "wrong_non_duplicate"
        clusters = self._clusters
        if a in clusters.parent and o in clusters.parent and clusters.find(a) == clusters.find(o):
            return "correct_cluster"
        return "wrong_unlabelled"


def classify_hit(asked: str, answer: str | None, origins_by_answer: Mapping[str, Iterable[str]],
                 labels: PairLabels) -> str:
    """The verdict on a hit that answered `asked` with `answer`: one of CORRECT, WRONG or UNRESOLVED.

    `origins_by_answer` maps each answer text the upstream produced in this run to the question(s)
    that produced it. Unknown answer -> unresolved; several origins -> their common verdict class
    (the best correct one / the worst wrong one), unresolved when they disagree."""
    origins = list(dict.fromkeys(origins_by_answer.get(answer, ()))) if answer is not None else []
    if not origins:
        return UNRESOLVED
    verdicts = [labels.verdict(asked, o) for o in origins]
    if all(v in CORRECT for v in verdicts):
        return min(verdicts, key=CORRECT.index)
    if all(v in WRONG for v in verdicts):
        return min(verdicts, key=WRONG.index)
    return UNRESOLVED


def cache_status(headers: Mapping[str, str]) -> tuple[str, str | None, float | None]:
    """(x-sigroute-cache value, category, similarity) of a response; no header = "off"."""
    value = (headers.get("x-sigroute-cache") or "off").strip().lower()
    category = headers.get("x-sigroute-cache-category")
    similarity = headers.get("x-sigroute-cache-similarity")
    try:
        sim = float(similarity) if similarity is not None else None
    except ValueError:
        sim = None
    return value, category, sim


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------

def _pct(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if len(values) else None


def _ratio(num: float, den: float, digits: int = 4) -> float | None:
    return round(num / den, digits) if den else None


def origins_of(records: Sequence[Mapping[str, Any]], extra: Mapping[str, str] | None = None) -> dict[str, set[str]]:
    """answer text -> the question(s) whose upstream call (miss / bypass / off) produced it."""
    origins: dict[str, set[str]] = defaultdict(set)
    for answer, question in (extra or {}).items():
        origins[answer].add(question)
    for r in records:
        if r["cache"] in UPSTREAM_VALUES and r.get("answer") is not None:
            origins[r["answer"]].add(r["text"])
    return origins


def summarize_run(records: Sequence[dict], upstream_calls: int | None, labels: PairLabels,
                  extra_origins: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Hit rates, wrong hits, upstream calls saved and latencies of one run. Adds each record's
    `verdict` (hits only)."""
    origins = origins_of(records, extra_origins)
    ok = [r for r in records if r["cache"] != "error"]
    for r in records:
        is_hit = r["cache"] in HIT_VALUES
        r["verdict"] = classify_hit(r["text"], r.get("answer"), origins, labels) if is_hit else None
        r["origins"] = sorted(origins.get(r.get("answer"), ())) if is_hit and r.get("answer") is not None else None
    hits = [r for r in ok if r["cache"] in HIT_VALUES]
    verdicts = Counter(r["verdict"] for r in hits)
    wrong = sum(verdicts[v] for v in WRONG)
    resolved = wrong + sum(verdicts[v] for v in CORRECT)
    n = len(records)

    def group(rs: Sequence[dict]) -> dict[str, Any]:
        hs = [r for r in rs if r["cache"] in HIT_VALUES]
        vs = Counter(r["verdict"] for r in hs)
        w = sum(vs[v] for v in WRONG)
        res = w + sum(vs[v] for v in CORRECT)
        return {"requests": len(rs), "hits": len(hs), "hit_rate": _ratio(len(hs), len(rs)),
                "wrong_hits": w, "wrong_hit_rate": _ratio(w, res), "unresolved_hits": vs[UNRESOLVED],
                "by_cache": dict(sorted(Counter(r["cache"] for r in rs).items()))}

    by_kind = {k: group([r for r in records if r["kind"] == k]) for k in KINDS}
    categories = sorted({r["category"] or "-" for r in ok})
    by_category = {c: group([r for r in ok if (r["category"] or "-") == c]) for c in categories}
    hit_ms = [r["latency_ms"] for r in hits]
    miss_ms = [r["latency_ms"] for r in ok if r["cache"] in UPSTREAM_VALUES]
    sims = [r["similarity"] for r in hits if r["cache"] == "hit-semantic" and r["similarity"] is not None]
    saved = (n - upstream_calls) if upstream_calls is not None else None
    return {
        "requests": n,
        "errors": n - len(ok),
        "hits": len(hits),
        "hit_rate": _ratio(len(hits), n),
        "by_cache": dict(sorted(Counter(r["cache"] for r in records).items())),
        "verdicts": dict(sorted(verdicts.items(), key=lambda kv: str(kv[0]))),
        "wrong_hits": wrong,
        "wrong_hit_rate": _ratio(wrong, resolved),
        "unresolved_hits": verdicts[UNRESOLVED],
        "upstream_calls": upstream_calls,
        "upstream_calls_saved": saved,
        "upstream_calls_saved_fraction": _ratio(saved, n) if saved is not None else None,
        "by_kind": by_kind,
        "by_category": by_category,
        "latency_ms": {
            "all": {"p50": _pct([r["latency_ms"] for r in ok], 50), "p95": _pct([r["latency_ms"] for r in ok], 95)},
            "hit": {"n": len(hit_ms), "p50": _pct(hit_ms, 50), "p95": _pct(hit_ms, 95)},
            "miss": {"n": len(miss_ms), "p50": _pct(miss_ms, 50), "p95": _pct(miss_ms, 95)},
            **{value: {"n": len(v), "p50": _pct(v, 50), "p95": _pct(v, 95)}
               for value in HIT_VALUES if (v := [r["latency_ms"] for r in hits if r["cache"] == value])},
        },
        "semantic_similarity": {"n": len(sims), "min": round(min(sims), 4) if sims else None,
                                "p50": _pct(sims, 50)},
    }


# --------------------------------------------------------------------------------------------
# Driving a real gateway
# --------------------------------------------------------------------------------------------

def workload_policy(sim_api_base: str, cache: Mapping[str, Any] | None) -> dict[str, Any]:
    """One decision routing to the sim's model, with `cache` as its cache block (None: no cache)."""
    decision: dict[str, Any] = {"name": DECISION, "models": [MODEL]}
    if cache is not None:
        decision["cache"] = dict(cache)
    return {
        "version": 1,
        "models": {MODEL: {"provider": f"openai/{MODEL}", "api_base": sim_api_base,
                           "price": {"input": 0.1, "output": 0.2}, "timeout_s": 30}},
        "decisions": [decision],
        "upstream": {"retries": 0, "backoff_s": 0.0, "breaker": {"failure_threshold": 100_000, "cooldown_s": 1}},
    }


async def drive(base_url: str, stream: Sequence[StreamRequest], concurrency: int, answers: str = "echo",
                timeout_s: float = 60.0) -> list[dict[str, Any]]:
    """Send `stream` through the gateway at `base_url`, at most `concurrency` in flight, started in
    stream order. One record per request: kind, text, cache status, category, similarity, latency, answer."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url.rstrip("/") + "/v1", api_key="unused", max_retries=0,
                                timeout=timeout_s)
    records: list[dict[str, Any] | None] = [None] * len(stream)
    position = iter(range(len(stream)))

    async def worker() -> None:
        for i in position:  # shared iterator: each index is taken by exactly one worker, in order
            req = stream[i]
            started = time.perf_counter()
            record: dict[str, Any] = {"index": req.index, "kind": req.kind, "text": req.text}
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="auto", temperature=0,
                    messages=[{"role": "user", "content": prompt_for(req.text, answers)}])
                completion = raw.parse()
                value, category, similarity = cache_status(raw.headers)
                record.update(cache=value, category=category, similarity=similarity,
                              answer=completion.choices[0].message.content)
            except openai.OpenAIError as exc:
                record.update(cache="error", category=None, similarity=None, answer=None,
                              error=f"{type(exc).__name__}: {str(exc)[:200]}")
            record["latency_ms"] = (time.perf_counter() - started) * 1000.0
            records[i] = record

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    finally:
        await client.close()
    return [r for r in records if r is not None]


def run_configuration(sim_url: str, stream: Sequence[StreamRequest], cache: Mapping[str, Any] | None,
                      concurrency: int, answers: str = "echo") -> dict[str, Any]:
    """Serve `workload_policy(cache)` with a fresh gateway, send the warm-up requests (they load the
    encoder and verifier; their answers are stored like any other), zero the sim's counters, send the
    stream. Returns the records, the sim's upstream call count, the wall time and the warm-up
    answers (answer text -> warm-up prompt, for attributing hits on them)."""
    import httpx

    from sigroute.gateway.app import create_app
    from sigroute.gateway.serving import ServerThread
    from sigroute.policies.schema import Policy

    policy = Policy.model_validate(workload_policy(sim_url + "/v1", cache))
    warmup = [StreamRequest(-1 - i, "warmup", text) for i, text in enumerate(WARMUP_PROMPTS)]
    with ServerThread(create_app(policy)) as gateway, httpx.Client(base_url=sim_url, timeout=30) as sim:
        warm = asyncio.run(drive(gateway.url, warmup, 1, answers))
        failed = [r for r in warm if r["cache"] == "error"]
        if failed:
            raise RuntimeError(f"the gateway failed a warm-up request: {failed[0]['error']}")
        sim.post("/sim/reset").raise_for_status()
        started = time.perf_counter()
        records = asyncio.run(drive(gateway.url, stream, concurrency, answers))
        wall_s = time.perf_counter() - started
        upstream_calls = int(sim.get("/sim/stats").json()["total_calls"])
    warmup_origins = {r["answer"]: r["text"] for r in warm if r["cache"] in UPSTREAM_VALUES and r["answer"]}
    return {"records": records, "upstream_calls": upstream_calls, "wall_s": round(wall_s, 3),
            "warmup_origins": warmup_origins}


def run_benchmark(pairs_path: str, n_requests: int = DEFAULT_REQUESTS, seed: int = 0, concurrency: int = 4,
                  upstream_ms: float = 50.0, answers: str = "echo", baseline: bool = True,
                  compare_no_verify: bool = False, wrong_examples: int = 0,
                  log: Callable[[str], Any] = lambda msg: None) -> dict[str, Any]:
    """Build the stream, run it with the cache (and the baselines), return the full result with its
    summary. `wrong_examples` > 0 adds that many wrong hits per run (asked question, origin, cache
    value, similarity) to the full result, for diagnosis: they contain dataset text."""
    from sigroute.gateway.serving import ServerThread
    from sigroute.gateway.sim import create_sim_app

    rows = rows_in_test_split(load_pairs(pairs_path))
    stream = build_stream(rows, n_requests, seed)
    labels = PairLabels(rows)
    realized = Counter(r.kind for r in stream)
    log(f"stream: {len(stream)} requests from {len(rows)} test pairs; "
        + ", ".join(f"{k} {realized[k]}" for k in KINDS))
    if len(stream) < n_requests:
        log(f"note: the test pairs ran out; the stream has {len(stream)} of the {n_requests} requests asked for")
    configs: list[tuple[str, dict | None]] = [("cache", dict(DEFAULT_CACHE))]
    if compare_no_verify:
        configs.append(("no_verify", {**DEFAULT_CACHE, "verify": False}))
    if baseline:
        configs.append(("nocache", None))
    sim_config = {"seed": seed, "models": {MODEL: {"ttft_ms": upstream_ms, "tokens_per_s": 0, "completion_tokens": 24}}}
    runs: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    with ServerThread(create_sim_app(sim_config)) as sim:
        for name, cache in configs:
            log(f"run {name}: cache {cache if cache is not None else 'none'}")
            out = run_configuration(sim.url, stream, cache, concurrency, answers)
            summary = summarize_run(out["records"], out["upstream_calls"], labels, out["warmup_origins"])
            summary.update(cache_block=cache, wall_s=out["wall_s"])
            if wrong_examples > 0:
                summary["wrong_hit_examples"] = [
                    {k: r[k] for k in ("index", "kind", "cache", "similarity", "verdict", "text", "origins")}
                    for r in out["records"] if r["verdict"] in WRONG][:wrong_examples]
            runs[name] = {"summary": summary, "records": out["records"]}
            log(f"  {summary['requests']} requests in {out['wall_s']:.1f} s: hit rate {summary['hit_rate']}, "
                f"wrong hits {summary['wrong_hits']} (rate {summary['wrong_hit_rate']}), "
                f"unresolved {summary['unresolved_hits']}, upstream calls {summary['upstream_calls']}, "
                f"errors {summary['errors']}")
    cached = runs["cache"]["summary"]
    attributable = answers == "echo"
    nocache = runs["nocache"]["summary"] if "nocache" in runs else None
    hit_p50, miss_p50 = cached["latency_ms"]["hit"]["p50"], cached["latency_ms"]["miss"]["p50"]
    nocache_p50 = nocache["latency_ms"]["all"]["p50"] if nocache else None
    summary: dict[str, Any] = {
        "hit_rate": cached["hit_rate"],
        "wrong_hit_rate": cached["wrong_hit_rate"] if attributable else None,
        "upstream_calls_saved": cached["upstream_calls_saved"],
        "upstream_calls_saved_fraction": cached["upstream_calls_saved_fraction"],
        "hit_rate_by_kind": {k: cached["by_kind"][k]["hit_rate"] for k in KINDS},
        "hit_p50_ms": hit_p50,
        "hit_p95_ms": cached["latency_ms"]["hit"]["p95"],
        "miss_p50_ms": miss_p50,
        "miss_p95_ms": cached["latency_ms"]["miss"]["p95"],
        "nocache_p50_ms": nocache_p50,
        "hit_p50_vs_nocache": _ratio(hit_p50, nocache_p50) if hit_p50 is not None and nocache_p50 else None,
        "miss_p50_vs_nocache": _ratio(miss_p50, nocache_p50) if miss_p50 is not None and nocache_p50 else None,
        "unresolved_hits": cached["unresolved_hits"],
        "wrong_hits": cached["wrong_hits"],
        "errors": cached["errors"],
        "requests": cached["requests"],
        "wall_s": round(time.perf_counter() - started, 2),
    }
    if cached["unresolved_hits"] or not attributable:
        summary["wrong_hit_rate_lower_bound"] = _ratio(cached["wrong_hits"], cached["hits"])
    if "no_verify" in runs:
        nv = runs["no_verify"]["summary"]
        summary["no_verify"] = {"hit_rate": nv["hit_rate"], "wrong_hits": nv["wrong_hits"],
                                "wrong_hit_rate": nv["wrong_hit_rate"] if attributable else None,
                                "hit_rate_by_kind": {k: nv["by_kind"][k]["hit_rate"] for k in KINDS}}
    return {
        "benchmark": "cache_workload",
        "config": {"pairs": str(pairs_path), "requests": n_requests, "seed": seed, "concurrency": concurrency,
                   "upstream_ms": upstream_ms, "answers": answers, "mix": DEFAULT_MIX,
                   "correct_if": "same normalized question, labelled duplicate, or same duplicate cluster "
                                 "(transitive over the test part's is_duplicate=1 pairs)"},
        "stream": {"requests": len(stream), "test_pairs": len(rows), "kinds": {k: realized[k] for k in KINDS}},
        "runs": {name: run["summary"] for name, run in runs.items()},
        "summary": summary,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cache_workload", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="CSV: question1,question2,is_duplicate")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                        help=f"stream length (default {DEFAULT_REQUESTS})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument("--upstream-ms", type=float, default=50.0, help="the sim's time to answer (default 50)")
    parser.add_argument("--answers", choices=("echo", "filler"), default="echo",
                        help="echo: the sim returns the prompt, so every hit can be attributed (default); "
                             "filler: plain prompts, most hits unresolved")
    parser.add_argument("--no-baseline", action="store_true", help="skip the no-cache run")
    parser.add_argument("--compare-no-verify", action="store_true", help="also run with verify: false")
    parser.add_argument("--wrong-examples", type=int, default=0, metavar="N",
                        help="put N wrong hits per run in the JSON (they contain dataset text; default 0)")
    parser.add_argument("--json", default=None, help="where to write the full result")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = run_benchmark(args.pairs, args.requests, args.seed, args.concurrency, args.upstream_ms, args.answers,
                           baseline=not args.no_baseline, compare_no_verify=args.compare_no_verify,
                           wrong_examples=args.wrong_examples, log=log)
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
