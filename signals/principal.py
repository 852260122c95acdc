"""The principal axes of the shared embedding: a small shipped basis for bandit contexts.

A contextual bandit cannot use all 384 numbers of a request's embedding (its per-model statistics
grow with the square of the context size, and they are shared through Redis), so the `embedding`
feature group keeps only `dims` numbers. A fixed *random* projection keeps distances on average but
spreads every direction's information thinly; the *principal* axes keep the directions along which
real questions differ most. On the routing benchmark's training split (5-fold cross-validation,
static ridge estimate of each model's correctness) 32 principal components route as well as the
whole embedding and clearly better than 32 random ones; see README "Benchmarks" (routing).

The basis is fitted once, offline, on generic text that is not the routing data: the questions of
the duplicate-question pairs (``cache/question_pairs_dev.csv``) and the benign prompts of the
prompt-injection training sets. It ships as ``signals/trained/principal/{head.json, weights.npz}``
(the mean embedding and the first 64 unit axes, float32: ~100 KB), bound to the encoder it was
fitted for (its fingerprint), like the heads::

    python -m sigroute.signals.training train principal --data ../shared/data [--cache DIR]

`load_basis` reads it (cached per directory) and `PrincipalBasis.project` maps unit embeddings to
their coordinates on the first `dims` axes.
"""

from __future__ import annotations

import csv
import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sigroute.signals.heads import TRAINED_DIR, HeadMismatch, file_sha256

BASIS_DIR = TRAINED_DIR / "principal"
META_FILE = "head.json"
WEIGHTS_FILE = "weights.npz"
SHIPPED_AXES = 64
PAIRS = "cache/question_pairs_dev.csv"
BENIGN = ("safety/prompt_injection/slabs_train.csv", "safety/prompt_injection/neuralchemy_train.csv")

_CACHE: dict[str, "PrincipalBasis"] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class PrincipalBasis:
    """Mean embedding and unit principal axes (columns, by decreasing variance)."""

    mean: np.ndarray          # (d,)
    axes: np.ndarray          # (d, k)
    meta: dict

    @property
    def size(self) -> int:
        return int(self.axes.shape[1])

    def project(self, embeddings: np.ndarray, dims: int) -> np.ndarray:
        """Coordinates of `embeddings` (rows, or one vector) on the first `dims` axes."""
        if dims > self.size:
            raise ValueError(f"the principal basis has {self.size} axes; {dims} were asked for")
        e = np.asarray(embeddings, dtype=np.float64)
        return (e - self.mean) @ self.axes[:, :dims]


def load_basis(encoder_fingerprint: str, directory: str | Path | None = None) -> PrincipalBasis:
    """The shipped basis (or the one in `directory`), checked against the encoder's fingerprint.

    Raises `FileNotFoundError` when there is none and `HeadMismatch` when it was fitted on another
    encoder's embeddings."""
    path = Path(directory) if directory is not None else BASIS_DIR
    key = str(path.resolve())
    with _LOCK:
        basis = _CACHE.get(key)
        if basis is None:
            meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
            with np.load(path / WEIGHTS_FILE, allow_pickle=False) as z:
                basis = PrincipalBasis(z["mean"].astype(np.float64), z["axes"].astype(np.float64), meta)
            _CACHE[key] = basis
    fitted_for = basis.meta.get("encoder", {}).get("fingerprint")
    if fitted_for != encoder_fingerprint:
        raise HeadMismatch(f"the principal basis in {path} was fitted on embeddings of encoder {fitted_for}, "
                           f"not {encoder_fingerprint}; refit it with `python -m sigroute.signals.training "
                           f"train principal`")
    return basis


def fit_basis(embeddings: np.ndarray, axes: int = SHIPPED_AXES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, the first `axes` principal axes (d, axes) and each axis' share of the variance."""
    E = np.asarray(embeddings, dtype=np.float64)
    mean = E.mean(axis=0)
    _, s, vt = np.linalg.svd(E - mean, full_matrices=False)
    var = s ** 2
    axes_ = vt[:axes].T
    # a deterministic sign: each axis points to where its largest loading is positive
    flip = np.sign(axes_[np.argmax(np.abs(axes_), axis=0), np.arange(axes_.shape[1])])
    return mean, axes_ * flip, var[:axes] / var.sum()


def generic_texts(data_dir: Path) -> tuple[list[str], list[str]]:
    """The fitting texts (one third of the pair questions by a hash, every benign training prompt),
    and the files they came from."""
    texts: set[str] = set()
    with (data_dir / PAIRS).open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            for q in (row["question1"], row["question2"]):
                q = (q or "").strip()
                if q and int(hashlib.sha256(q.encode("utf-8")).hexdigest(), 16) % 3 == 0:
                    texts.add(q)
    for rel in BENIGN:
        with (data_dir / rel).open(encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if str(row.get("label", "")).strip() == "0" and (row.get("text") or "").strip():
                    texts.add(row["text"].strip())
    return sorted(texts), [PAIRS, *BENIGN]


def train_principal(data_dir, out_dir=None, encoder=None, cache_dir=None) -> dict:
    """Fit and save the basis (see the module docstring)."""
    from sigroute.signals.training import _encoder_meta, _git_commit, _log, _sources, embed

    if encoder is None:
        from sigroute.signals.encoder import Encoder

        encoder = Encoder()
    data_dir = Path(data_dir)
    out = Path(out_dir) if out_dir else BASIS_DIR
    texts, files = generic_texts(data_dir)
    _log(f"principal: embedding {len(texts)} generic texts ...")
    E = embed(encoder, texts, cache_dir)
    mean, axes, share = fit_basis(E)
    arrays = {"mean": mean.astype(np.float32), "axes": axes.astype(np.float32)}
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / WEIGHTS_FILE, **arrays)
    meta: dict[str, Any] = {
        "kind": "principal",
        "encoder": _encoder_meta(encoder),
        "axes": int(axes.shape[1]),
        "variance_share": [round(float(v), 5) for v in share],
        "variance_share_cumulative": {str(k): round(float(share[:k].sum()), 4) for k in (8, 16, 32, 64)},
        "data": {"dir_layout": "like ../shared/data", "files": _sources(data_dir, files),
                 "texts": len(texts),
                 "rule": "questions of the pairs file with sha256(question) % 3 == 0, and every label-0 prompt "
                         "of the two prompt-injection training sets; duplicates removed"},
        "git_commit": _git_commit(),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "weights_sha256": file_sha256(out / WEIGHTS_FILE),
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _log(f"principal: {len(texts)} texts, first 32 axes hold {meta['variance_share_cumulative']['32']:.1%} "
         f"of the variance; saved to {out}")
    meta["metrics"] = {"variance_share_cumulative": meta["variance_share_cumulative"], "texts": len(texts)}
    return meta
