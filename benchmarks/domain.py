"""How accurately does the shipped domain head name a question's MMLU-Pro category?

Reads MMLU-Pro questions (JSON lines: question_id, category, question, options[]), keeps the
held-out part of the split the head was trained with (`signals.training.in_test_split`; `--all`
keeps every question, for a file the head never saw, e.g. a held-back copy), builds the text a
user would send (question plus lettered options, `signals.heads.question_text`), embeds it with
the shared encoder and reports the shipped head's top-1 accuracy, per category too.

    python -m benchmarks.domain --questions ../shared/data/routing/mmlu_pro/questions.jsonl.gz
    python -m benchmarks.domain --questions FILE.jsonl.gz --all --json results/domain.json

`--head DIR` evaluates another head directory; `--cache DIR` keeps the embeddings between runs.
The last line printed is the summary as one JSON line, ``{"accuracy": ..., "n": ...}``;
``--json`` writes it under ``summary`` with per-category numbers and the most common confusions.
Target (reported, not enforced): accuracy >= 0.85.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time

import numpy as np

from sigroute.signals.encoder import Encoder
from sigroute.signals.heads import load_head, question_text
from sigroute.signals.training import embed, in_test_split, load_questions
from benchmarks.report import emit

DEFAULT_QUESTIONS = "../shared/data/routing/mmlu_pro/questions.jsonl.gz"
TARGET = 0.85


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", default=DEFAULT_QUESTIONS, help="MMLU-Pro questions (.jsonl or .jsonl.gz)")
    parser.add_argument("--all", action="store_true", help="evaluate every question, not only the held-out part")
    parser.add_argument("--head", default=None, help="head directory (default: the shipped domain head)")
    parser.add_argument("--cache", default=None, help="directory to keep embeddings in between runs")
    parser.add_argument("--json", default=None, help="where to write the full result")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    rows = load_questions(args.questions)
    if not args.all:
        rows = [r for r in rows if in_test_split(r["question_id"])]
    if not rows:
        print("error: no questions to evaluate", file=sys.stderr)
        return 2
    encoder = Encoder()
    head = load_head("domain", encoder.fingerprint, args.head)
    texts = [question_text(r["question"], r["options"]) for r in rows]
    truth = [r["category"] for r in rows]
    log(f"{len(rows)} questions; embedding with {encoder.model_name} ({encoder.fingerprint}) ...")
    t0 = time.perf_counter()
    E = embed(encoder, texts, args.cache)
    t1 = time.perf_counter()
    probs = head.predict_proba(texts, E)
    t2 = time.perf_counter()
    pred = [head.labels[i] for i in probs.argmax(axis=1)]
    correct = np.array([p == t for p, t in zip(pred, truth)])
    per = collections.defaultdict(lambda: [0, 0])
    for t, ok in zip(truth, correct):
        per[t][0] += int(ok)
        per[t][1] += 1
    confusions = collections.Counter((t, p) for t, p in zip(truth, pred) if t != p)
    summary = {"accuracy": round(float(correct.mean()), 4), "n": len(rows)}
    result = {
        "benchmark": "domain",
        "summary": summary,
        "config": {"questions": str(args.questions), "selection": "all" if args.all else "held-out test part",
                   "head": str(args.head or "shipped"), "encoder": encoder.model_name,
                   "encoder_fingerprint": encoder.fingerprint, "head_meta_trained_at": head.meta.get("trained_at"),
                   "target_accuracy": TARGET},
        "per_category": {c: {"accuracy": round(a / n, 4), "n": n} for c, (a, n) in sorted(per.items())},
        "top_confusions": [{"true": t, "predicted": p, "count": c} for (t, p), c in confusions.most_common(15)],
        "timing_s": {"embedding": round(t1 - t0, 2), "head": round(t2 - t1, 3),
                     "head_ms_per_text": round((t2 - t1) / len(rows) * 1000, 3)},
    }
    if not args.quiet:
        for c, v in result["per_category"].items():
            log(f"  {c:18s} {v['accuracy']:.3f}  (n={v['n']})")
        log(f"accuracy {summary['accuracy']:.4f} on {summary['n']} questions (target {TARGET})")
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
