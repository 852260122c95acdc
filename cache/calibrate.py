"""Choosing a semantic-cache threshold from labelled question pairs, with the evidence.

An operator gives pairs ``question1,question2,is_duplicate`` (CSV with that header); every pair is
scored — by the shipped verifier (`cache.verifier`, default) or by plain MiniLM cosine — and for
each candidate threshold ``t`` ("serve the cached answer when score >= t"):

* precision      = duplicates among accepted pairs / accepted pairs
* recall         = accepted duplicates / all duplicates
* false-hit rate = accepted non-duplicates / all non-duplicates
* hit rate       = accepted pairs / all pairs

`choose_threshold` picks the threshold with the highest recall among those whose precision is at
least the target and that accept at least `min_accepted` pairs (so a handful of lucky pairs cannot
set it); when no threshold reaches the target it returns the one of highest precision (again with
at least `min_accepted` pairs) and says so (``reached: false``).

    sigroute cache calibrate --pairs FILE.csv --target-precision 0.95 [--scorer verifier|cosine]
                             [--split all|train|validation|test] [--cache DIR] [--json OUT]

``--split`` keeps one part of the leak-free split of `cache.training.split_of` (useful on the
project's development pairs, where the verifier was trained on the ``train`` part: calibrate on
``validation``); on your own pairs keep the default ``all``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_TARGET = 0.95
MIN_ACCEPTED = 20


def _as_arrays(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1).astype(bool)
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    return s, y


def metrics_at(scores, labels, threshold: float) -> dict:
    """Precision, recall, false-hit rate and hit rate when accepting ``score >= threshold``."""
    s, y = _as_arrays(scores, labels)
    accept = s >= threshold
    tp = int(np.sum(accept & y))
    fp = int(np.sum(accept & ~y))
    pos, neg = int(y.sum()), int((~y).sum())
    return {
        "threshold": round(float(threshold), 6),
        "precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "recall": round(tp / pos, 4) if pos else None,
        "false_hit_rate": round(fp / neg, 4) if neg else None,
        "hit_rate": round((tp + fp) / len(s), 4) if len(s) else None,
        "accepted": tp + fp,
    }


def _sweep(s: np.ndarray, y: np.ndarray):
    """For each distinct score (descending): threshold, tp, fp when accepting score >= threshold."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    fp = np.cumsum(~y_sorted)
    # last index of each run of equal scores: accepting >= that score accepts the whole run
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], len(s_sorted) - 1] if len(s_sorted) else np.zeros(0, int)
    return s_sorted[last], tp[last], fp[last]


def choose_threshold(scores, labels, target_precision: float = DEFAULT_TARGET,
                     min_accepted: int = MIN_ACCEPTED) -> dict:
    """The threshold of highest recall with precision >= target (see the module doc).

    Returns ``metrics_at`` of that threshold plus ``target_precision`` and ``reached``.
    """
    s, y = _as_arrays(scores, labels)
    if s.size == 0 or not y.any():
        raise ValueError("need scored pairs with at least one duplicate")
    thr, tp, fp = _sweep(s, y)
    accepted = tp + fp
    precision = tp / np.maximum(accepted, 1)
    ok = accepted >= min(min_accepted, len(s))
    good = ok & (precision >= target_precision)
    if good.any():
        # highest recall = most true positives; ties → the higher threshold (fewer false hits)
        idx = np.nonzero(good)[0]
        best = idx[np.argmax(tp[idx])]
        best = idx[(tp[idx] == tp[best])][0]
        reached = True
    else:
        idx = np.nonzero(ok)[0] if ok.any() else np.arange(len(thr))
        best = idx[np.argmax(precision[idx])]
        reached = False
    out = metrics_at(s, y, float(thr[best]))
    out.update({"target_precision": float(target_precision), "reached": reached})
    return out


def curve(scores, labels, thresholds: Sequence[float] | None = None) -> list[dict]:
    """`metrics_at` on a grid of thresholds (default: 21 quantiles of the duplicates' scores
    plus the scores' range ends), ascending."""
    s, y = _as_arrays(scores, labels)
    if thresholds is None:
        qs = np.quantile(s[y], np.linspace(0.0, 1.0, 21)) if y.any() else np.zeros(0)
        thresholds = np.unique(np.floor(np.r_[qs, s.min(), s.max()] * 1e4) / 1e4) if s.size else []
    return [metrics_at(s, y, float(t)) for t in sorted(thresholds)]


def format_curve(rows: list[dict]) -> str:
    lines = [f"{'threshold':>10} {'precision':>10} {'recall':>8} {'false_hit':>10} {'hit_rate':>9} {'accepted':>9}"]
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for r in rows:
        lines.append(f"{r['threshold']:>10.4f} {fmt(r['precision']):>10} {fmt(r['recall']):>8} "
                     f"{fmt(r['false_hit_rate']):>10} {fmt(r['hit_rate']):>9} {r['accepted']:>9}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# scoring pairs


def score_pairs(pairs: list[dict], scorer: str = "verifier", encoder=None, cache_dir=None,
                verifier_dir=None) -> np.ndarray:
    """Scores of `pairs` (dicts with question1, question2) by the verifier or by MiniLM cosine."""
    from sigroute.signals.encoder import shared_encoder
    from sigroute.signals.training import embed

    encoder = encoder or shared_encoder()
    a = [p["question1"] for p in pairs]
    b = [p["question2"] for p in pairs]
    texts = sorted(set(a) | set(b))
    E = embed(encoder, texts, cache_dir)
    index = {t: i for i, t in enumerate(texts)}
    U = E[[index[t] for t in a]]
    V = E[[index[t] for t in b]]
    if scorer == "cosine":
        return np.sum(U * V, axis=1).astype(np.float64)
    if scorer != "verifier":
        raise ValueError(f"unknown scorer '{scorer}' (verifier or cosine)")
    from sigroute.cache.verifier import load_verifier

    verifier = load_verifier(encoder.fingerprint, verifier_dir)
    return verifier.predict_proba(a, b, U, V)


# ------------------------------------------------------------------------------------------------
# CLI


def add_cache_parser(sub) -> argparse.ArgumentParser:
    """Add ``cache`` with its ``calibrate`` subcommand to an argparse subparsers object."""
    cache = sub.add_parser("cache", help="semantic cache tools")
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="COMMAND")
    cache_sub.required = True
    add_calibrate_parser(cache_sub)
    return cache


def add_calibrate_parser(cache_sub) -> argparse.ArgumentParser:
    """Add ``calibrate`` to an existing ``cache`` subcommand's subparsers object."""
    cal = cache_sub.add_parser("calibrate", help="choose a cache threshold from labelled question pairs",
                               description=__doc__.split("\n")[0])
    cal.add_argument("--pairs", required=True, metavar="FILE.csv",
                     help="CSV with header question1,question2,is_duplicate")
    cal.add_argument("--target-precision", type=float, default=DEFAULT_TARGET, metavar="P",
                     help=f"hit precision to reach (default {DEFAULT_TARGET})")
    cal.add_argument("--scorer", choices=("verifier", "cosine"), default="verifier",
                     help="score pairs with the shipped verifier (default) or plain MiniLM cosine")
    cal.add_argument("--split", choices=("all", "train", "validation", "test"), default="all",
                     help="keep one part of the leak-free split (default: all pairs)")
    cal.add_argument("--min-accepted", type=int, default=MIN_ACCEPTED,
                     help=f"a threshold must accept at least this many pairs (default {MIN_ACCEPTED})")
    cal.add_argument("--verifier", default=None, metavar="DIR", help="verifier directory (default: shipped)")
    cal.add_argument("--cache", default="~/.cache/sigroute/embeddings", metavar="DIR",
                     help="embedding cache directory ('' to disable)")
    cal.add_argument("--json", default=None, metavar="OUT", help="also write the curve and choice as JSON")
    cal.set_defaults(func=cmd_cache_calibrate)
    return cal


def cmd_cache_calibrate(args) -> int:
    from sigroute.cache.training import load_pairs

    pairs = load_pairs(args.pairs)
    if args.split != "all":
        pairs = [p for p in pairs if p["split"] == args.split]
    if not pairs:
        print("error: no pairs to calibrate on", file=sys.stderr)
        return 2
    cache_dir = Path(args.cache).expanduser() if args.cache else None
    scores = score_pairs(pairs, args.scorer, cache_dir=cache_dir, verifier_dir=args.verifier)
    labels = np.array([p["is_duplicate"] for p in pairs], dtype=bool)
    if not labels.any():
        print("error: the pairs hold no duplicates", file=sys.stderr)
        return 2
    rows = curve(scores, labels)
    chosen = choose_threshold(scores, labels, args.target_precision, args.min_accepted)
    print(f"{len(pairs)} pairs ({int(labels.sum())} duplicates), scorer={args.scorer}, split={args.split}")
    print(format_curve(rows))
    verdict = "reached" if chosen["reached"] else "NOT reached (best precision shown)"
    print(f"target precision {args.target_precision}: {verdict}")
    summary = {k: chosen[k] for k in ("threshold", "precision", "recall", "false_hit_rate", "hit_rate",
                                       "accepted", "target_precision", "reached")}
    summary.update({"scorer": args.scorer, "n_pairs": len(pairs)})
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"summary": summary, "curve": rows}, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if chosen["reached"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sigroute.cache.calibrate")
    sub = parser.add_subparsers(dest="command")
    add_cache_parser(sub)
    args = parser.parse_args(["cache", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
