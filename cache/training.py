"""Reproducible training of the cache verifier (`cache.verifier`) from labelled question pairs.

    python -m sigroute.cache.training --pairs ../shared/data/cache/question_pairs_dev.csv \
        [--out cache/trained/verifier] [--cache ~/.cache/sigroute/embeddings]

Input: CSV with header ``question1,question2,is_duplicate``. scikit-learn is used here only.

Split rule (leak-free; `split_of`): Quora questions repeat across pairs, so pairs are grouped into
connected components of their normalized question texts (lower case, whitespace collapsed; two
questions are connected when they appear in one pair, duplicate or not) and each whole component
goes to one part: ``h = int(sha256(smallest normalized question of the component), 16) % 100``;
``h < 60`` → train, ``60 <= h < 80`` → validation, ``h >= 80`` → test. No question text occurs in
two parts. The verifier is fitted on train; its hyper-parameters and its default threshold
(highest validation recall at precision >= 0.95, at least 20 accepted pairs) are chosen on
validation; test is never read here (`benchmarks.cache_quality` reports on it). The train part is
augmented with the pairs its labels imply transitively (`transitive_pairs`: two duplicates of one
question are duplicates; a duplicate of a non-duplicate is a non-duplicate), never across parts.

Deterministic: fixed seeds, hash-based split; embeddings come from the given encoder and are kept
in ``--cache DIR`` (keyed by encoder fingerprint and text sha1) so that retraining does not
re-encode.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import re
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sigroute.cache.calibrate import choose_threshold, metrics_at
from sigroute.cache.verifier import DEFAULT_DIR, KIND, LEXICAL_FEATURES, pair_features

SPLIT_RULE = ("pairs grouped into connected components of normalized question text (lower case, whitespace "
              "collapsed; an edge per pair); h = int(sha256(min normalized question of the component).hexdigest(), 16) "
              "% 100; train h < 60, validation 60 <= h < 80, test h >= 80")
TARGET_PRECISION = 0.95
SEED = 0
DEFAULT_PAIRS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cache" / "question_pairs_dev.csv"
_SPACE_RE = re.compile(r"\s+")


def normalize_question(text: str) -> str:
    return _SPACE_RE.sub(" ", text.lower()).strip()


def part_of_hash(h: int) -> str:
    return "train" if h < 60 else ("validation" if h < 80 else "test")


class Components:
    """Connected components of texts (union-find with path compression); a component's root is
    its smallest text, so the root does not depend on the order the edges arrive in."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        parent = self.parent
        parent.setdefault(x, x)
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo


def split_of(pairs: Sequence[tuple[str, str]]) -> list[str]:
    """The part ("train", "validation", "test") of each (question1, question2) pair (see module doc)."""
    components = Components()
    normed = [(normalize_question(a), normalize_question(b)) for a, b in pairs]
    for a, b in normed:
        components.union(a, b)
    find = components.find
    out = []
    for a, _ in normed:
        root = find(a)
        out.append(part_of_hash(int(hashlib.sha256(root.encode("utf-8")).hexdigest(), 16) % 100))
    return out


def load_pairs(path: str | Path) -> list[dict]:
    """Rows of a pairs CSV as dicts: question1, question2, is_duplicate (0/1), split."""
    csv.field_size_limit(1 << 24)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = {"question1", "question2", "is_duplicate"} - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(sorted(missing))}")
        rows = [{"question1": r["question1"] or "", "question2": r["question2"] or "",
                 "is_duplicate": int(float(r["is_duplicate"]))} for r in reader]
    for r, part in zip(rows, split_of([(r["question1"], r["question2"]) for r in rows])):
        r["split"] = part
    return rows


def transitive_pairs(pairs: list[dict]) -> list[dict]:
    """Extra labelled pairs implied by `pairs` (apply to the train part only): questions linked by
    duplicate pairs form clusters; every two questions of a cluster are duplicates, and a
    non-duplicate pair makes every question of one cluster a non-duplicate of every question of the
    other. Pairs already present are not repeated. Deterministic order."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    text: dict[str, str] = {}
    for p in pairs:
        for q in (p["question1"], p["question2"]):
            text.setdefault(normalize_question(q), q)
    for p in pairs:
        if p["is_duplicate"]:
            a, b = find(normalize_question(p["question1"])), find(normalize_question(p["question2"]))
            if a != b:
                parent[max(a, b)] = min(a, b)
    clusters: dict[str, list[str]] = {}
    for k in sorted(text):
        clusters.setdefault(find(k), []).append(k)
    seen = {frozenset((normalize_question(p["question1"]), normalize_question(p["question2"]))) for p in pairs}
    out: list[dict] = []

    def add(a: str, b: str, label: int) -> None:
        key = frozenset((a, b))
        if a != b and key not in seen:
            seen.add(key)
            out.append({"question1": text[a], "question2": text[b], "is_duplicate": label, "split": "train"})

    for members in clusters.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                add(a, b, 1)
    for p in pairs:
        if not p["is_duplicate"]:
            for a in clusters[find(normalize_question(p["question1"]))]:
                for b in clusters[find(normalize_question(p["question2"]))]:
                    add(a, b, 0)
    return out


def pair_embeddings(encoder, pairs: list[dict], cache_dir=None) -> tuple[np.ndarray, np.ndarray]:
    from sigroute.signals.training import embed

    a = [p["question1"] for p in pairs]
    b = [p["question2"] for p in pairs]
    texts = sorted(set(a) | set(b))
    E = embed(encoder, texts, cache_dir)
    index = {t: i for i, t in enumerate(texts)}
    return E[[index[t] for t in a]], E[[index[t] for t in b]]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _summary(scores, y, threshold) -> dict:
    m = metrics_at(scores, y, threshold)
    return {k: m[k] for k in ("threshold", "precision", "recall", "false_hit_rate")}


def _quality(scores, y, target=TARGET_PRECISION) -> tuple[float, float]:
    """(recall at precision >= target on these pairs, average precision): the model-selection key."""
    from sklearn.metrics import average_precision_score

    chosen = choose_threshold(scores, y, target)
    return (chosen["recall"] if chosen["reached"] else 0.0), float(average_precision_score(y, scores))


def _precision_at_recall(scores, y, recall: float) -> float:
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    tp = np.cumsum(np.asarray(y)[order])
    k = int(np.searchsorted(tp, recall * tp[-1]))
    return float(tp[k] / (k + 1))


def _fit_gbdt(X, y, lr: float, iters: int, leaves: int, l2: float, seed: int = SEED):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=iters, learning_rate=lr, max_leaf_nodes=leaves,
                                          l2_regularization=l2, min_samples_leaf=20, early_stopping=False,
                                          random_state=seed).fit(X, y)


def _gbdt_arrays(clf) -> tuple[dict[str, np.ndarray], int]:
    """A fitted binary HistGradientBoostingClassifier as flat node arrays (see `Verifier.logits_of`)."""
    feature, split, left, right, leaf, nan_left, value, roots = [], [], [], [], [], [], [], []
    offset, depth = 0, 0
    for (tree,) in clf._predictors:
        nodes = tree.nodes
        if np.any(nodes["is_categorical"]):
            raise ValueError("categorical splits are not supported")
        roots.append(offset)
        feature.append(nodes["feature_idx"])
        split.append(nodes["num_threshold"])
        left.append(nodes["left"].astype(np.int64) + offset)
        right.append(nodes["right"].astype(np.int64) + offset)
        leaf.append(nodes["is_leaf"])
        nan_left.append(nodes["missing_go_to_left"])
        value.append(np.where(nodes["is_leaf"] == 1, nodes["value"], 0.0))
        depth = max(depth, int(nodes["depth"].max()))
        offset += len(nodes)
    cat = np.concatenate
    arrays = {"feature": cat(feature).astype(np.int16), "split": cat(split).astype(np.float32),
              "left": cat(left).astype(np.int32), "right": cat(right).astype(np.int32),
              "is_leaf": cat(leaf).astype(np.uint8), "nan_left": cat(nan_left).astype(np.uint8),
              "value": cat(value).astype(np.float32), "roots": np.array(roots, dtype=np.int32),
              "base": np.asarray(clf._baseline_prediction, dtype=np.float64).reshape(1)}
    return arrays, depth


def train_verifier(pairs_path, out_dir=None, encoder=None, cache_dir=None,
                   grid: Sequence[tuple[float, int, int, float]] | None = None, augment: bool = True) -> dict:
    """Fit the verifier on the train part, choose hyper-parameters and the threshold on validation,
    write the artifact to `out_dir` (default `cache/trained/verifier`) and return its metadata."""
    from sklearn.linear_model import LogisticRegression

    from sigroute.signals.heads import file_sha256, save_head
    from sigroute.signals.training import _git_commit

    if encoder is None:
        from sigroute.signals.encoder import shared_encoder
        encoder = shared_encoder()
    out_dir = Path(out_dir) if out_dir else DEFAULT_DIR
    t0 = time.perf_counter()
    pairs = load_pairs(pairs_path)
    pairs = [p for p in pairs if p["split"] != "test"]  # the test part is never read further
    extra = transitive_pairs([p for p in pairs if p["split"] == "train"]) if augment else []
    pairs = pairs + extra
    tr = np.array([p["split"] == "train" for p in pairs])
    va = ~tr
    y = np.array([p["is_duplicate"] for p in pairs], dtype=np.int64)
    _log(f"{len(pairs)} pairs (train {int(tr.sum())} incl. {len(extra)} transitive, validation {int(va.sum())}); "
         "embedding ...")
    U, V = pair_embeddings(encoder, pairs, cache_dir)
    a = [p["question1"] for p in pairs]
    b = [p["question2"] for p in pairs]
    spec = {"lexical": True, "embedding": True}
    X = pair_features(a, b, U, V, spec)
    _log(f"features {X.shape} in {time.perf_counter() - t0:.1f}s")
    n_small = 1 + len(LEXICAL_FEATURES)
    mean = X[tr].mean(axis=0)
    scale = X[tr].std(axis=0) + 1e-6
    Z = (X - mean) / scale

    report: dict[str, dict] = {}
    cos = X[:, 0].astype(np.float64)
    report["cosine"] = {"validation_recall_at_p95": _quality(cos[va], y[va])[0],
                        "validation_average_precision": round(_quality(cos[va], y[va])[1], 4)}
    lr = LogisticRegression(C=1.0, max_iter=2000).fit(Z[tr][:, :n_small], y[tr])
    s_lr = lr.predict_proba(Z[va][:, :n_small])[:, 1]
    report["cosine+lexical logistic"] = {"validation_recall_at_p95": _quality(s_lr, y[va])[0],
                                         "validation_average_precision": round(_quality(s_lr, y[va])[1], 4)}
    _log(f"baselines: {report}")

    # candidates: gradient-boosted trees (lr, trees, leaves, l2) on the raw features; selected by
    # validation precision at recall 0.30 (the operating point), then average precision
    grid = list(grid) if grid is not None else [(0.05, 300, 31, 0.0), (0.05, 300, 15, 0.0), (0.1, 200, 31, 0.0)]
    best = None
    for lr_, iters, leaves, l2 in grid:
        clf = _fit_gbdt(X[tr], y[tr], lr_, iters, leaves, l2)
        s = clf.predict_proba(X[va])[:, 1]
        p30 = _precision_at_recall(s, y[va], 0.30)
        rec, ap = _quality(s, y[va])
        name = f"gbdt lr={lr_} trees={iters} leaves={leaves} l2={l2}"
        report[name] = {"validation_precision_at_recall_0.30": round(p30, 4), "validation_recall_at_p95": rec,
                        "validation_average_precision": round(ap, 4)}
        _log(f"{name}: P@R0.30 {p30:.4f}  recall@P{TARGET_PRECISION} {rec:.4f}  AP {ap:.4f}  "
             f"({time.perf_counter() - t0:.0f}s)")
        key = (round(p30, 3), ap)
        if best is None or key > best[0]:
            best = (key, (lr_, iters, leaves, l2), clf)
    (lr_, iters, leaves, l2), clf = best[1], best[2]
    arrays, depth = _gbdt_arrays(clf)

    # the shipped model's validation scores, computed through the numpy inference path
    from sigroute.cache.verifier import Verifier

    meta = {
        "kind": KIND,
        "labels": ["different", "same"],
        "encoder": {"model": encoder.model_name, "fingerprint": encoder.fingerprint},
        "features": {**spec, "order": ["cosine", *LEXICAL_FEATURES, "abs_diff[384]", "product[384]"]},
        "components": [{"type": "gbdt", "trees": len(arrays["roots"]), "max_depth": depth, "output": "logistic"}],
        "input_dim": int(X.shape[1]),
        "model": {"type": "sklearn HistGradientBoostingClassifier, exported to numpy node arrays",
                  "learning_rate": lr_, "trees": iters, "max_leaf_nodes": leaves, "l2_regularization": l2,
                  "min_samples_leaf": 20, "seed": SEED,
                  "selected_by": "validation precision at recall 0.30, then average precision"},
    }
    v = Verifier({**meta, "threshold": 0.5}, arrays)
    s_val = v.proba_of(X[va])
    drift = float(np.max(np.abs(s_val - clf.predict_proba(X[va])[:, 1])))
    if drift > 1e-4:
        raise RuntimeError(f"numpy inference differs from the trained model by {drift}")
    chosen = choose_threshold(s_val, y[va], TARGET_PRECISION)
    cos_chosen = choose_threshold(cos[va], y[va], TARGET_PRECISION)
    meta.update({
        "threshold": chosen["threshold"],
        "threshold_rule": (f"highest validation recall with precision >= {TARGET_PRECISION} and >= 20 accepted pairs"
                           if chosen["reached"] else "highest validation precision (target not reached)"),
        "cosine_threshold_same_rule": cos_chosen["threshold"],
        "data": {"files": [{"path": f"cache/{Path(pairs_path).name}", "sha256": file_sha256(pairs_path)}],
                 "dir_layout": "like ../shared/data"},
        "split": SPLIT_RULE,
        "samples": {"train": int(tr.sum()), "train_transitive": len(extra), "validation": int(va.sum()),
                    "train_duplicates": int(y[tr].sum()), "validation_duplicates": int(y[va].sum())},
        "metrics": {"validation": {"verifier": _summary(s_val, y[va], chosen["threshold"]),
                                   "cosine": _summary(cos[va], y[va], cos_chosen["threshold"]),
                                   "selection": report}},
        "git_commit": _git_commit(),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_seconds": round(time.perf_counter() - t0, 1),
    })
    save_head(out_dir, meta, arrays)   # also forgets a verifier loaded from out_dir before
    _log(f"wrote {out_dir}: threshold {chosen['threshold']:.4f}, validation {meta['metrics']['validation']['verifier']}")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sigroute.cache.training", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="CSV: question1,question2,is_duplicate")
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="artifact directory (default: the shipped one)")
    parser.add_argument("--cache", default="~/.cache/sigroute/embeddings", help="embedding cache ('' to disable)")
    args = parser.parse_args(argv)
    cache_dir = Path(args.cache).expanduser() if args.cache else None
    train_verifier(args.pairs, args.out, cache_dir=cache_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
