"""What do the learned signals cost per request, compared with just embedding the text?

The request path of a policy that uses every learned signal (embedding similarity, domain,
complexity, jailbreak, fact_check, and pii when available) is timed from the parsed request to the
signal results: building the RequestContext, one micro-batched encoder call through the gateway's
queue and worker thread, and every signal's own work (heads, similarities, patterns). The baseline,
measured in the same run on the same texts, is a bare `SentenceTransformer.encode([text])` of the
same model loaded separately: the least any embedding-based signal can cost.

Two questions:

  c1   one request at a time: p50 of the signals path / p50 of the bare encode (target ≤ 1.2)
  c32  32 requests in flight: throughput of the signals path / its sequential throughput
       (target ≥ 3: the micro-batcher shares forward passes between concurrent requests)

Bare and signal calls alternate text by text (the order swapping each time) so that drifts in
machine speed hit both alike. The request texts are real questions (question + options) from a
file laid out like ``../shared/data/routing/mmlu_pro/questions.jsonl.gz``.

    python -m benchmarks.signals_latency
    python -m benchmarks.signals_latency --n 512 --json results/signals_latency.json

The last line printed is the summary as one JSON line: ``p50_ratio_vs_bare_encode``,
``batch_throughput_speedup`` and the numbers behind them.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import sys
import time

import orjson

from benchmarks.loadgen import machine_info, stats
from benchmarks.report import emit

DEFAULT_QUESTIONS = "../shared/data/routing/mmlu_pro/questions.jsonl.gz"


def load_texts(path: str, n: int, seed: int, with_options: bool = True) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    rng = random.Random(seed)
    rng.shuffle(rows)
    texts = []
    for row in rows[:n]:
        options = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(row.get("options") or [])) \
            if with_options else ""
        texts.append(f"{row['question']}\n{options}".strip())
    return texts


def bench_policy(include_pii: bool) -> dict:
    signals = {
        "embedding": {"support": {"references": ["my order never arrived", "I want a refund for my purchase",
                                                  "how do I cancel my subscription"], "threshold": 0.6}},
        "domain": {"stem": {"categories": ["math", "physics", "chemistry", "engineering", "computer science"]},
                   "humanities": {"categories": ["history", "philosophy", "law"]}},
        "complexity": {"hard": {"level": "hard"}},
        "jailbreak": {"attack": {}},
        "fact_check": {"factual": {}},
    }
    if include_pii:
        signals["pii"] = {"personal": {}}
    leaves = [f"{t}:{n}" for t, group in signals.items() for n in group]
    return {
        "models": {"m": {"provider": "openai/m", "api_base": "http://127.0.0.1:9/v1"}},
        "signals": signals,
        # one decision per signal so that every signal is on the request path
        "decisions": [{"name": f"d{i}", "rules": leaf, "models": ["m"]} for i, leaf in enumerate(leaves)]
                     + [{"name": "default", "models": ["m"]}],
    }


def request_bytes(text: str) -> bytes:
    return orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": text}]})


async def run(args) -> dict:
    from sigroute.gateway.metrics import Metrics
    from sigroute.gateway.pipeline import Pipeline
    from sigroute.policies.schema import Policy
    from sigroute.signals.encoder import load_sentence_transformer
    from sigroute.signals.registry import SIGNAL_TYPES

    texts = load_texts(args.questions, args.n + args.warmup, args.seed, not args.stem_only)
    policy = Policy.model_validate(bench_policy("pii" in SIGNAL_TYPES))
    pipeline = Pipeline(policy, Metrics())
    encoder = pipeline.embedder.encoder
    bare = load_sentence_transformer(policy.encoder.model, policy.encoder.device)
    bare.max_seq_length = encoder.max_tokens
    headers: dict[str, str] = {}

    def bare_encode(text: str) -> float:
        start = time.perf_counter()
        bare.encode([text], normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        return (time.perf_counter() - start) * 1000

    async def signals_path(i: int, text: str) -> float:
        raw = request_bytes(text)  # serializing the request is the client's work, not timed
        start = time.perf_counter()
        ctx = await pipeline.context(raw, headers, None, f"bench-{i}")
        results = await pipeline.signals.evaluate(ctx)
        elapsed = (time.perf_counter() - start) * 1000
        failed = [k for k, r in results.items() if isinstance(r.value, dict) and "error" in r.value]
        if failed:
            raise RuntimeError(f"signals failed during the benchmark: {failed}")
        return elapsed

    for i, text in enumerate(texts[:args.warmup]):  # load heads, warm caches and allocators
        bare_encode(text)
        await signals_path(i, text)
    texts = texts[args.warmup:]

    # c1: alternate bare and signals per text, swapping the order each time
    bare_ms, signals_ms = [], []
    seq_start = time.perf_counter()
    seq_signal_seconds = 0.0
    for i, text in enumerate(texts):
        if i % 2 == 0:
            bare_ms.append(bare_encode(text))
            signals_ms.append(await signals_path(i, text))
        else:
            signals_ms.append(await signals_path(i, text))
            bare_ms.append(bare_encode(text))
        seq_signal_seconds += signals_ms[-1] / 1000
    seq_wall = time.perf_counter() - seq_start
    sequential_rps = len(texts) / seq_signal_seconds

    # c32: the same texts, `concurrency` requests in flight
    passes_before, texts_before = encoder.stats.forward_passes, encoder.stats.texts
    queue: asyncio.Queue = asyncio.Queue()
    for item in enumerate(texts):
        queue.put_nowait(item)
    concurrent_ms: list[float] = []

    async def worker():
        while True:
            try:
                i, text = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            concurrent_ms.append(await signals_path(i, text))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    conc_wall = time.perf_counter() - start
    concurrent_rps = len(texts) / conc_wall
    passes = encoder.stats.forward_passes - passes_before
    await encoder.aclose()

    bare_p50 = stats(bare_ms)["p50"]
    signals_p50 = stats(signals_ms)["p50"]
    summary = {
        "p50_ratio_vs_bare_encode": round(signals_p50 / bare_p50, 3),
        "batch_throughput_speedup": round(concurrent_rps / sequential_rps, 3),
        "bare_encode_ms": stats(bare_ms, 3),
        "signals_c1_ms": stats(signals_ms, 3),
        f"signals_c{args.concurrency}_ms": stats(concurrent_ms, 3),
        "sequential_rps": round(sequential_rps, 2),
        f"c{args.concurrency}_rps": round(concurrent_rps, 2),
        "mean_batch_size": round((encoder.stats.texts - texts_before) / max(passes, 1), 2),
        "signals": sorted(pipeline.signals.used),
        "n": len(texts),
        "text": "question" if args.stem_only else "question+options",
        "mean_chars": round(sum(map(len, texts)) / len(texts), 1),
        "concurrency": args.concurrency,
        "device": encoder.device,
        "targets_met": {"p50_ratio_le_1.2": signals_p50 / bare_p50 <= 1.2,
                        "speedup_ge_3": concurrent_rps / sequential_rps >= 3},
    }
    return {"summary": summary, "config": vars(args), "machine": machine_info(),
            "sequential_wall_s_including_bare": round(seq_wall, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.signals_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", default=DEFAULT_QUESTIONS, help="JSON lines with question and options")
    parser.add_argument("--n", type=int, default=256, help="timed requests")
    parser.add_argument("--warmup", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--stem-only", action="store_true",
                        help="send only the question, without its options (shorter, chat-like prompts)")
    parser.add_argument("--json", default="results/signals_latency.json", help="where to write the result")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
