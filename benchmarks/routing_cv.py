"""Compare router contexts by k-fold cross-validation inside the routing benchmark's training split.

    python -m benchmarks.routing_cv --features "bias,domain,difficulty,complexity,length,shape,embedding:32" \\
        --features "bias*2,domain*2,difficulty*2,shape*2,embedding:32:principal" --ridge 0.3 --ridge 3 --json PATH

The benchmark's own inner validation is one cut of the training split (~1.6k questions); AIQ
differences between feature sets are a few thousandths, about as large as what one cut's luck moves.
This splits the training split into `--folds` parts by a hash of the question id and, for every
fold, warm-starts LinUCB (exactly as `benchmarks.routing` does: same rewards, cost-weight sweep and
AIQ) on the other folds and streams this one, so every training question is validated once.
Reported per feature set and (alpha, ridge): AIQ per fold, the mean, and the paired difference to
the first feature set with its standard error over folds — a choice made here never looks at the
stream `benchmarks.routing` reports. The training split's `domain`/`difficulty` blocks are the
cross-fitted ones of `benchmarks.routing` (out of fold for the questions the heads were trained on).
The last line printed is the summary as one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from typing import Callable, Mapping, Sequence

import numpy as np

from benchmarks import routing as rb
from benchmarks.report import emit


cv_fold = rb.cv_fold   # the same folds as the benchmark's own tuning


def cross_validate(train: rb.Table, contexts: Mapping[str, np.ndarray], settings: Sequence[tuple[float, float]],
                   folds: int = 5, learn: str = "reward", log: Callable[[str], None] = lambda m: None) -> dict:
    """AIQ of warm-started LinUCB on each fold of `train` for every context (name -> (n, d) matrix,
    rows aligned with `train`) and every (alpha, ridge) in `settings`."""
    fold = np.array([cv_fold(q, folds) for q in train.question_ids])
    rows: dict[str, list[float]] = {}
    for k in range(folds):
        fit, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if len(fit) == 0 or len(held) == 0:
            raise ValueError(f"fold {k} is empty: too few questions for {folds} folds")
        split = rb.Split(train.subset(fit), train.subset(held), f"cv fold {k}", np.zeros(len(fit), dtype=bool))
        for name, X in contexts.items():
            for alpha, ridge in settings:
                ctx = rb.Context(split, X[fit], X[held], warm=True, seeds=1, ridge=ridge)
                score, _ = rb.inner_aiq(ctx, rb.PolicySpec("linucb", "linucb", {"alpha": alpha, "learn": learn}))
                rows.setdefault(f"{name} | alpha {alpha:g} ridge {ridge:g}", []).append(round(float(score), 6))
        log(f"  fold {k + 1}/{folds}: " + ", ".join(f"{key}: {v[-1]:.4f}" for key, v in rows.items()))
    reference = next(iter(rows.values()))
    out = {}
    for key, values in rows.items():
        diff = np.array(values) - np.array(reference)
        out[key] = {"aiq_per_fold": values, "aiq_mean": round(float(np.mean(values)), 6),
                    "diff_vs_first": round(float(diff.mean()), 6),
                    "diff_stderr": round(float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0, 6),
                    "folds_better_than_first": int(np.sum(diff > 0))}
    return {"folds": folds, "n_questions": train.n, "learn": learn, "results": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=rb.DEFAULT_DATA)
    p.add_argument("--pool", default=",".join(rb.DEFAULT_POOL))
    p.add_argument("--features", action="append", required=True, help="a feature spec (repeat; the first is the reference)")
    p.add_argument("--alpha", action="append", type=float, help="LinUCB alpha (repeat; default 0.1)")
    p.add_argument("--ridge", action="append", type=float, help="ridge λ (repeat; default 1.0)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--learn", choices=("reward", "quality"), default="reward")
    p.add_argument("--cache", default=rb.DEFAULT_CACHE)
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))

    from pathlib import Path

    from sigroute.signals.encoder import shared_encoder
    from sigroute.signals.learned import SignalResources
    from sigroute.signals.training import embed

    pool = [m.strip() for m in args.pool.split(",") if m.strip()]
    counter, tokenizer = rb.prompt_token_counter()
    try:
        data = rb.load_table(args.data, pool, count_tokens=counter, tokenizer_name=tokenizer)
    except (rb.DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train = rb.make_split(data, None).train
    encoder = shared_encoder()
    cache = str(Path(args.cache).expanduser())
    E = embed(encoder, train.texts, cache)
    bank = rb.FeatureBank(SignalResources(encoder=encoder))
    if train.files.get("mmlu_pro/questions.jsonl.gz") in rb.head_training_sha256s():
        _, mmlu = rb._resolve_dir(args.data)
        shipped = {n: bank.block(n, train.texts, E, train.prompt_tokens, "train") for n in ("domain", "difficulty")}
        for name, block in rb.cross_fitted_head_blocks(train, mmlu / "questions.jsonl.gz", mmlu / "correctness.csv.gz",
                                                       encoder, cache, shipped, log).items():
            bank.override("train", name, block)
    contexts = {rb.features_text(rb.parse_features(spec)): bank.matrix(rb.parse_features(spec), train.texts, E,
                                                                       train.prompt_tokens, "train")
                for spec in args.features}
    settings = [(a, r) for a in (args.alpha or [0.1]) for r in (args.ridge or [1.0])]
    log(f"{train.n} training-split questions, {args.folds} folds, {len(contexts)} contexts × {len(settings)} settings")
    result = cross_validate(train, contexts, settings, args.folds, args.learn, log)
    best = max(result["results"].items(), key=lambda kv: kv[1]["aiq_mean"])
    result["summary"] = {"best": best[0], "best_aiq_mean": best[1]["aiq_mean"],
                         **{k: {"aiq_mean": v["aiq_mean"], "diff_vs_first": v["diff_vs_first"],
                                "diff_stderr": v["diff_stderr"]} for k, v in result["results"].items()}}
    result = {"benchmark": "routing_cv", "summary": result.pop("summary"), **result}
    emit(result, args.json, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
