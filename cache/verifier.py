"""Candidate-hit verifier for the semantic cache: is the cached question the same question?

MiniLM cosine alone cannot tell "same topic" from "same question" well enough to serve a cached
answer (on Quora-style hard negatives it tops out near precision 0.82 at recall 0.30). The
verifier re-scores each candidate hit that the vector index returns, from

* the two sentence embeddings ``u`` (request) and ``v`` (cached question): their cosine, and
  ``|u - v|`` and ``u * v`` (both symmetric in the pair), and
* lexical checks on the two texts (`pair_lexical`): word / content-word / character-trigram
  overlap, numbers that differ, a negation on one side only, a different question word
  (what/why/how/who/when/which/where), length ratio, capitalized-word (entity) overlap,
  edit-distance ratio, ...

through a small classifier — the shipped one is gradient-boosted trees (scikit-learn's
HistGradientBoosting at training time, exported to flat node arrays evaluated here with numpy;
a one-hidden-layer network or logistic model, ``type: mlp``, is understood too) — and returns the
probability that the pair is a duplicate. Inference is numpy only (the artifact is ~70 kB);
scikit-learn is used at training time (`cache.training`) and never on the request path. The features are computed by the functions
of this module in training too, so the two cannot drift apart.

Artifact: ``cache/trained/verifier/{head.json,weights.npz}``, written with `signals.heads.save_head`
(same format: no pickle, optional 8-bit matrices, weights sha256). head.json records the encoder
fingerprint the verifier was trained on (loading under another encoder raises `HeadMismatch`), the
data file's sha256, the split rule, the default ``threshold`` (chosen on the validation split) and
the validation metrics.

    verifier = load_verifier(encoder.fingerprint)
    p = verifier.predict_proba(["how do I learn python?"], ["What is the best way to learn Python?"],
                               request_embeddings, cached_embeddings)          # shape (1,)
    hit = p[0] >= verifier.threshold
"""

from __future__ import annotations

import difflib
import json
import math
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from sigroute.signals.heads import HeadMismatch, META_FILE, WEIGHTS_FILE, _dequantize, load_artifact

TRAINED_DIR = Path(__file__).resolve().parent / "trained"
KIND = "cache_verifier"
DEFAULT_DIR = TRAINED_DIR / "verifier"

__all__ = ["Verifier", "load_verifier", "pair_lexical", "pair_features", "LEXICAL_FEATURES",
           "HeadMismatch", "DEFAULT_DIR", "KIND"]

# ------------------------------------------------------------------------------------------------
# lexical pair features (shared by training and inference)

_WORD_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_CAP_RE = re.compile(r"\b[A-Z][A-Za-z0-9]+|\b[A-Z]{2,}\b")
_NUM_RE = re.compile(r"\d+(?:[.,]\d+)?")
_SPACE_RE = re.compile(r"\s+")

STOPWORDS = frozenset(
    "a an the of to in on for and or is are was were be been being do does did i me my we our you "
    "your he she it its they them their this that these those with as at by from about into over "
    "can could should would will shall may might must have has had what why how who whom whose "
    "when which where there here so if than then some any all most more very just get got".split())
NEGATIONS = frozenset("not no never nor none nothing nobody cannot can't don't doesn't didn't isn't "
                      "aren't wasn't weren't won't wouldn't shouldn't couldn't without".split())
QUESTION_WORDS = ("what", "why", "how", "who", "when", "which", "where")

LEXICAL_FEATURES = (
    "word_jaccard", "content_jaccard", "char3_jaccard", "seq_ratio", "token_seq_ratio",
    "len_ratio", "log_len_diff", "num_both", "num_mismatch", "neg_mismatch", "qword_mismatch",
    "first_qword_mismatch", "cap_jaccard", "cap_mismatch", "first_word_same", "last_word_same",
    "unique_content_diff", "content_containment", "bigram_jaccard",
)


def _normalize(text: str) -> str:
    return _SPACE_RE.sub(" ", text.lower()).strip()


def _jaccard(a: set, b: set, empty: float = 1.0) -> float:
    if not a and not b:
        return empty
    return len(a & b) / len(a | b)


def _char_ngrams(text: str, n: int = 3) -> set:
    padded = f" {text} "
    return {padded[i:i + n] for i in range(max(len(padded) - n + 1, 0))}


class _Parsed:
    __slots__ = ("norm", "tokens", "words", "content", "numbers", "neg", "qwords", "first_q", "caps", "char3",
                 "bigrams")

    def __init__(self, text: str):
        text = text[:2000]
        self.norm = _normalize(text)
        self.tokens = _WORD_RE.findall(self.norm)
        self.words = set(self.tokens)
        self.content = {t for t in self.words if t not in STOPWORDS}
        self.numbers = set(_NUM_RE.findall(self.norm))
        self.neg = sum(1 for t in self.tokens if t in NEGATIONS or t.endswith("n't")) % 2
        self.qwords = {t for t in self.tokens if t in QUESTION_WORDS}
        self.first_q = next((t for t in self.tokens if t in QUESTION_WORDS), "")
        caps = _CAP_RE.findall(text)
        first = caps[0] if caps and text.lstrip().startswith(caps[0]) else None
        self.caps = {c.lower() for i, c in enumerate(caps) if not (i == 0 and c == first)}
        self.char3 = _char_ngrams(self.norm)
        self.bigrams = set(zip(self.tokens, self.tokens[1:]))


def pair_lexical(a: str, b: str) -> np.ndarray:
    """The `LEXICAL_FEATURES` of a text pair (symmetric in a, b), float32."""
    pa, pb = _Parsed(a), _Parsed(b)
    la, lb = len(pa.tokens), len(pb.tokens)
    content_union = pa.content | pb.content
    small = min(len(pa.content), len(pb.content))
    return np.array([
        _jaccard(pa.words, pb.words),
        _jaccard(pa.content, pb.content),
        _jaccard(pa.char3, pb.char3),
        difflib.SequenceMatcher(None, pa.norm, pb.norm, autojunk=False).ratio() if pa.norm <= pb.norm else
        difflib.SequenceMatcher(None, pb.norm, pa.norm, autojunk=False).ratio(),
        difflib.SequenceMatcher(None, pa.tokens, pb.tokens, autojunk=False).ratio() if pa.tokens <= pb.tokens else
        difflib.SequenceMatcher(None, pb.tokens, pa.tokens, autojunk=False).ratio(),
        min(la, lb) / max(la, lb, 1),
        abs(math.log1p(len(pa.norm)) - math.log1p(len(pb.norm))),
        float(bool(pa.numbers) and bool(pb.numbers)),
        float(pa.numbers != pb.numbers),
        float(pa.neg != pb.neg),
        float(pa.qwords != pb.qwords),
        float(pa.first_q != pb.first_q),
        _jaccard(pa.caps, pb.caps),
        float(pa.caps != pb.caps),
        float(bool(pa.tokens) and bool(pb.tokens) and pa.tokens[0] == pb.tokens[0]),
        float(bool(pa.tokens) and bool(pb.tokens) and pa.tokens[-1] == pb.tokens[-1]),
        math.log1p(len(content_union - (pa.content & pb.content))),
        (len(pa.content & pb.content) / small) if small else 1.0,
        _jaccard(pa.bigrams, pb.bigrams),
    ], dtype=np.float32)


def pair_features(a_texts: Sequence[str], b_texts: Sequence[str], u: np.ndarray, v: np.ndarray,
                  spec: dict) -> np.ndarray:
    """The verifier's input rows: [cosine | lexical | |u-v| | u*v] as `spec` selects them.

    `spec` (``features`` of head.json): ``lexical`` (bool), ``embedding`` (bool: include
    ``|u-v|`` and ``u*v``). The cosine is always the first column. Embeddings must be unit rows.
    """
    n = len(a_texts)
    if len(b_texts) != n:
        raise ValueError("a_texts and b_texts differ in length")
    u = np.asarray(u, dtype=np.float32)
    v = np.asarray(v, dtype=np.float32)
    u = u.reshape(n, u.shape[-1] if u.ndim else -1)
    v = v.reshape(n, v.shape[-1] if v.ndim else -1)
    blocks = [np.sum(u * v, axis=1, keepdims=True)]
    if spec.get("lexical", True):
        blocks.append(np.stack([pair_lexical(a, b) for a, b in zip(a_texts, b_texts)]) if n else
                      np.zeros((0, len(LEXICAL_FEATURES)), dtype=np.float32))
    if spec.get("embedding", True):
        blocks.append(np.abs(u - v))
        blocks.append(u * v)
    return np.concatenate(blocks, axis=1).astype(np.float32)


# ------------------------------------------------------------------------------------------------
# the model


class Verifier:
    """A trained verifier: `predict_proba(request_texts, cached_texts, u, v)` → P(same question)."""

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray]):
        self.meta = meta
        self.features: dict = meta["features"]
        self.threshold = float(meta.get("threshold", 0.5))
        self.model_type = str(meta.get("components", [{}])[0].get("type", "mlp"))
        f32 = lambda name: None if name not in arrays else arrays[name].astype(np.float32)  # noqa: E731
        self.input_dim = int(meta.get("input_dim", 0)) or None
        if self.model_type == "gbdt":
            # gradient-boosted trees, all trees' nodes in flat arrays (global node indices)
            self.feature = arrays["feature"].astype(np.int64)
            self.split = arrays["split"].astype(np.float64)
            self.left = arrays["left"].astype(np.int64)
            self.right = arrays["right"].astype(np.int64)
            self.leaf = arrays["is_leaf"].astype(bool)
            self.nan_left = arrays["nan_left"].astype(bool)
            self.value = arrays["value"].astype(np.float64)
            self.roots = arrays["roots"].astype(np.int64)
            self.base = float(arrays["base"].reshape(-1)[0])
            self.depth = int(meta["components"][0]["max_depth"])
            self.hidden = 0
            if self.input_dim is None:
                self.input_dim = int(self.feature[~self.leaf].max()) + 1
        elif self.model_type == "mlp":
            self.mean, self.scale = f32("mean"), f32("scale")
            self.W1, self.b1 = f32("W1"), f32("b1")
            self.W2, self.b2 = f32("W2"), f32("b2")
            if self.W2 is None or self.b2 is None or self.mean is None or self.scale is None:
                raise ValueError("verifier weights lack mean/scale/W2/b2")
            self.input_dim = int(self.mean.shape[0])
            self.hidden = 0 if self.W1 is None else int(self.W1.shape[1])
        else:
            raise ValueError(f"unknown verifier model type '{self.model_type}'")

    def __repr__(self) -> str:
        return (f"<Verifier {self.model_type} inputs={self.input_dim} threshold={self.threshold:.3f} "
                f"encoder={self.meta.get('encoder', {}).get('fingerprint')}>")

    def logits_of(self, X: np.ndarray) -> np.ndarray:
        """The model's log-odds for feature rows `X` (see `pair_features`)."""
        if self.model_type == "gbdt":
            X = np.asarray(X, dtype=np.float64)
            n = X.shape[0]
            node = np.broadcast_to(self.roots, (n, self.roots.size)).copy()
            rows = np.arange(n)[:, None]
            for _ in range(self.depth):
                leaf = self.leaf[node]
                if leaf.all():
                    break
                x = X[rows, self.feature[node]]
                go_left = np.where(np.isnan(x), self.nan_left[node], x <= self.split[node])
                node = np.where(leaf, node, np.where(go_left, self.left[node], self.right[node]))
            return self.base + self.value[node].sum(axis=1)
        x = (np.asarray(X, dtype=np.float32) - self.mean) / self.scale
        if self.W1 is not None:
            x = np.maximum(x @ self.W1 + self.b1, 0.0)
        return (x @ self.W2).reshape(-1) + float(self.b2.reshape(-1)[0])

    def proba_of(self, X: np.ndarray) -> np.ndarray:
        z = self.logits_of(X).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def predict_proba(self, request_texts: Sequence[str], cached_texts: Sequence[str],
                      request_embeddings: np.ndarray, cached_embeddings: np.ndarray) -> np.ndarray:
        """Probability, per pair, that the cached question is the same question as the request."""
        request_texts, cached_texts = list(request_texts), list(cached_texts)
        if not request_texts:
            return np.zeros(0, dtype=np.float64)
        X = pair_features(request_texts, cached_texts, request_embeddings, cached_embeddings, self.features)
        return self.proba_of(X)

    def score(self, request_text: str, cached_text: str, request_embedding: np.ndarray,
              cached_embedding: np.ndarray) -> float:
        """`predict_proba` for one pair."""
        return float(self.predict_proba([request_text], [cached_text],
                                        np.asarray(request_embedding).reshape(1, -1),
                                        np.asarray(cached_embedding).reshape(1, -1))[0])

    def accepts(self, request_text: str, cached_text: str, request_embedding: np.ndarray,
                cached_embedding: np.ndarray, threshold: float | None = None) -> bool:
        t = self.threshold if threshold is None else float(threshold)
        return self.score(request_text, cached_text, request_embedding, cached_embedding) >= t


def read_verifier(directory: str | Path) -> Verifier:
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"no cache verifier in {directory} (expected {META_FILE} and {WEIGHTS_FILE}); train one with "
            f"`python -m sigroute.cache.training --pairs FILE.csv --out {directory}`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("kind") != KIND:
        raise HeadMismatch(f"the artifact in {directory} is a '{meta.get('kind')}', not a '{KIND}'")
    with np.load(weights_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for name in meta.get("quantized_8bit", ()):
        arrays[name] = _dequantize(arrays[name], arrays.pop(f"{name}@low"), arrays.pop(f"{name}@step"))
    return Verifier(meta, arrays)


def load_verifier(encoder_fingerprint: str | None, directory: str | Path | None = None) -> Verifier:
    """The verifier from `cache/trained/verifier/` (or `directory`), checked against the encoder.

    Raises `FileNotFoundError` when there is none and `HeadMismatch` when it was trained on
    embeddings of another encoder (pass ``None`` to skip the check, e.g. in tests). Cached per
    directory.
    """
    path = DEFAULT_DIR if directory is None else Path(directory)
    return load_artifact(path, read_verifier, "cache verifier", encoder_fingerprint,
                         "`python -m sigroute.cache.training --pairs FILE.csv` using this encoder")
