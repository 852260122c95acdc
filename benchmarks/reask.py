"""How close two user turns must be, by the shared embedding, to count as a re-ask.

A re-ask is the same question asked again in other words. The nearest public data is a set of
question pairs labelled duplicate / not duplicate (`/work/shared/data/cache/question_pairs_dev.csv`,
the same file the cache benchmarks read; its text never enters the repository). This benchmark
embeds a seeded sample of the pairs with the gateway's default encoder, and for each candidate
threshold reports precision and recall of "cosine >= threshold" as a duplicate detector.

Precision is what matters here: a false re-ask credits a good answer as bad. The report names the
lowest threshold whose precision reaches `--min-precision` (default 0.80) and the one with the best
F1; `signals.followup.DEFAULT_REASK_THRESHOLD` was set between them from this sweep. Non-duplicate pairs in that file are hard negatives (often the same topic),
so precision on real follow-up turns, which mostly change the subject, is higher.

It also measures `tests/data/reask_followups.jsonl` (`--followups`): 40 conversation follow-ups
written for this project (20 re-asks in other words, 20 next questions, many on the same topic, in
en, de, fr, es) — closer to what the gateway sees than question pairs.

    python -m benchmarks.reask --pairs /work/shared/data/cache/question_pairs_dev.csv --n 2000 --json out.json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys

import numpy as np


def sweep(similarities: np.ndarray, labels: np.ndarray, thresholds) -> list[dict]:
    rows = []
    for t in thresholds:
        predicted = similarities >= t
        tp = int(np.sum(predicted & labels))
        fp = int(np.sum(predicted & ~labels))
        fn = int(np.sum(~predicted & labels))
        precision = tp / (tp + fp) if tp + fp else 1.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"threshold": round(float(t), 3), "precision": round(precision, 4), "recall": round(recall, 4),
                     "f1": round(f1, 4)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", default="/work/shared/data/cache/question_pairs_dev.csv")
    parser.add_argument("--n", type=int, default=2000, help="pairs sampled (seeded)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-precision", type=float, default=0.80)
    parser.add_argument("--followups", default="tests/data/reask_followups.jsonl")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from sigroute.signals.encoder import shared_encoder

    with open(args.pairs, newline="", encoding="utf-8") as f:
        rows = [(r["question1"], r["question2"], r["is_duplicate"] == "1") for r in csv.DictReader(f)]
    random.Random(args.seed).shuffle(rows)
    rows = rows[:args.n]
    encoder = shared_encoder()
    a = encoder.encode([r[0] for r in rows])
    b = encoder.encode([r[1] for r in rows])
    similarities = np.sum(a * b, axis=1)
    labels = np.array([r[2] for r in rows])
    table = sweep(similarities, labels, np.arange(0.70, 0.981, 0.01))
    chosen = next((r for r in table if r["precision"] >= args.min_precision), table[-1])
    best_f1 = max(table, key=lambda r: r["f1"])
    with open(args.followups, encoding="utf-8") as f:
        follow = [json.loads(line) for line in f if line.strip()]
    fa = encoder.encode([r["previous"] for r in follow])
    fb = encoder.encode([r["turn"] for r in follow])
    from sigroute.signals.followup import DEFAULT_REASK_THRESHOLD

    followups = sweep(np.sum(fa * fb, axis=1), np.array([r["reask"] for r in follow]),
                      [0.75, 0.80, DEFAULT_REASK_THRESHOLD, 0.90])
    result = {"pairs": len(rows), "duplicates": int(labels.sum()), "encoder": encoder.model_name,
              "min_precision": args.min_precision, "chosen": chosen, "best_f1": best_f1, "sweep": table,
              "followups": {"n": len(follow), "sweep": followups}}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    at_default = next(r for r in followups if r["threshold"] == round(DEFAULT_REASK_THRESHOLD, 3))
    print(json.dumps({"pairs": len(rows), "chosen": chosen, "best_f1": best_f1, "followups_at_default": at_default}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
