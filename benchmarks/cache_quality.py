"""How often would the semantic cache serve a wrong answer? Hit precision / recall / false hits.

Reads labelled question pairs (CSV ``question1,question2,is_duplicate``), recomputes the leak-free
split the verifier was trained with (`cache.training.split_of`: connected components of
normalized question text, hashed into train / validation / test) and keeps the TEST part only
(``--all`` keeps every pair, for a file the verifier never saw). Each pair is scored by plain
MiniLM cosine and by the shipped candidate-hit verifier (`cache.verifier`), and reported at

* ``default``: the verifier's shipped threshold (chosen at training time on the validation part),
* ``calibrated``: the threshold `cache.calibrate.choose_threshold` picks for ``--target-precision``
  on the validation part of the same file (with ``--all``: on the pairs themselves, which is then
  an in-sample, optimistic number) — never on the test pairs it is evaluated on,

and, as the baseline, cosine alone at the threshold the same rule picks for it on validation and at
the cache's stock thresholds (0.90, 0.95).

    python -m benchmarks.cache_quality --pairs ../shared/data/cache/question_pairs_dev.csv
    python -m benchmarks.cache_quality --pairs FILE.csv --json results/cache_quality.json

The last line printed is the summary as one JSON line: ``default {threshold, precision, recall,
false_hit_rate}``, ``calibrated {...}``, ``n_pairs``, ``cosine_default`` / ``cosine_calibrated``.
Target (reported, not enforced): precision >= 0.95 with recall >= 0.30 at the default threshold.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.report import emit
from sigroute.cache.calibrate import DEFAULT_TARGET, choose_threshold, curve, metrics_at
from sigroute.cache.training import DEFAULT_PAIRS, load_pairs, pair_embeddings
from sigroute.cache.verifier import load_verifier

TARGET_PRECISION, TARGET_RECALL = 0.95, 0.30
COSINE_STOCK = (0.90, 0.95)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="CSV: question1,question2,is_duplicate")
    parser.add_argument("--all", action="store_true", help="evaluate every pair, not only the test part")
    parser.add_argument("--target-precision", type=float, default=DEFAULT_TARGET,
                        help=f"precision the calibrated threshold aims for (default {DEFAULT_TARGET})")
    parser.add_argument("--verifier", default=None, metavar="DIR", help="verifier directory (default: shipped)")
    parser.add_argument("--cache", default="~/.cache/sigroute/embeddings", help="embedding cache ('' to disable)")
    parser.add_argument("--json", default=None, help="where to write the full result")
    parser.add_argument("--quiet", action="store_true", help="print only the summary line")
    return parser.parse_args(argv)


def _precision_at_recall(scores: np.ndarray, y: np.ndarray, recall: float) -> float:
    """Best precision among thresholds that keep at least `recall` of the duplicates (test pairs,
    reported for comparison with the issue's numbers; no threshold is chosen from it)."""
    order = np.argsort(-scores, kind="mergesort")
    tp = np.cumsum(y[order])
    ks = np.nonzero(tp >= recall * tp[-1])[0]
    return round(float(np.max(tp[ks] / (ks + 1))), 4)


def _short(m: dict) -> dict:
    return {k: m[k] for k in ("threshold", "precision", "recall", "false_hit_rate")}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    from sigroute.signals.encoder import shared_encoder

    pairs = load_pairs(args.pairs)
    if args.all:
        evaluated, calib = pairs, pairs
    else:
        evaluated = [p for p in pairs if p["split"] == "test"]
        calib = [p for p in pairs if p["split"] == "validation"]
    if not evaluated or not any(p["is_duplicate"] for p in evaluated):
        print("error: no pairs (or no duplicates) to evaluate", file=sys.stderr)
        return 2
    encoder = shared_encoder()
    verifier = load_verifier(encoder.fingerprint, args.verifier)
    cache_dir = Path(args.cache).expanduser() if args.cache else None
    log(f"{len(evaluated)} pairs evaluated, {len(calib)} for calibration; embedding with {encoder.model_name} ...")

    def scores_of(rows):
        U, V = pair_embeddings(encoder, rows, cache_dir)
        a, b = [r["question1"] for r in rows], [r["question2"] for r in rows]
        t0 = time.perf_counter()
        s = verifier.predict_proba(a, b, U, V)
        per_pair_ms = (time.perf_counter() - t0) / max(len(rows), 1) * 1000
        return np.sum(U * V, axis=1).astype(np.float64), s, per_pair_ms

    y = np.array([p["is_duplicate"] for p in evaluated], dtype=bool)
    cos, ver, ms = scores_of(evaluated)
    yc = np.array([p["is_duplicate"] for p in calib], dtype=bool)
    cos_c, ver_c, _ = scores_of(calib)

    ver_cal = choose_threshold(ver_c, yc, args.target_precision)
    cos_cal = choose_threshold(cos_c, yc, args.target_precision)
    default = _short(metrics_at(ver, y, verifier.threshold))
    calibrated = _short(metrics_at(ver, y, ver_cal["threshold"]))
    cosine_calibrated = _short(metrics_at(cos, y, cos_cal["threshold"]))
    cosine_stock = {f"{t:.2f}": _short(metrics_at(cos, y, t)) for t in COSINE_STOCK}
    summary = {
        "default": default,
        "calibrated": calibrated,
        "n_pairs": len(evaluated),
        "cosine_default": cosine_stock[f"{COSINE_STOCK[0]:.2f}"],
        "cosine_calibrated": cosine_calibrated,
        "split": "all" if args.all else "test",
        "target_met": bool((default["precision"] or 0) >= TARGET_PRECISION and (default["recall"] or 0) >= TARGET_RECALL),
    }
    result = {
        "benchmark": "cache_quality",
        "summary": summary,
        "config": {"pairs": str(args.pairs), "selection": summary["split"],
                   "calibrated_on": "all pairs (in-sample)" if args.all else "validation part",
                   "target_precision": args.target_precision, "encoder": encoder.model_name,
                   "encoder_fingerprint": encoder.fingerprint, "verifier_trained_at": verifier.meta.get("trained_at"),
                   "split_rule": verifier.meta.get("split"),
                   "targets": {"precision": TARGET_PRECISION, "recall": TARGET_RECALL}},
        "n_duplicates": int(y.sum()),
        "verifier_ms_per_pair": round(ms, 4),
        "calibration": {"verifier": ver_cal, "cosine": cos_cal},
        "cosine_stock_thresholds": cosine_stock,
        "precision_at_recall_0.30": {"verifier": _precision_at_recall(ver, y, TARGET_RECALL),
                                     "cosine": _precision_at_recall(cos, y, TARGET_RECALL)},
        "curve": {"verifier": curve(ver, y), "cosine": curve(cos, y)},
    }
    log(f"verifier default    {default}")
    log(f"verifier calibrated {calibrated}")
    log(f"cosine calibrated   {cosine_calibrated}")
    log(f"precision at recall 0.30 (test): {result['precision_at_recall_0.30']}")
    for t, m in cosine_stock.items():
        log(f"cosine at {t}      {m}")
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
