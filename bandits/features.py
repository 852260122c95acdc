"""The context vector of a request, as a contextual bandit sees it.

A decision that routes with a contextual algorithm declares which feature groups make up its
context (`features: [bias, domain, complexity, length, shape, {embedding: {dims: 16}}]`). Each group
turns the request into a few numbers:

| group | numbers | from |
|---|---|---|
| `bias` | 1 | the constant 1 |
| `domain` | one probability per domain (14 shipped + the policy's `domains:`) | the shipped domain head |
| `complexity` | hard-vs-easy exemplar contrast | the embedding |
| `difficulty` | P(easy), P(medium), P(hard) | the shipped complexity head (trained on how many models solve a question) |
| `length` | log token count, and a one-hot bucket (<64, <256, <1k, <4k, ≥4k tokens) | the tokenizer |
| `shape` | digits, math symbols, lettered options, code, question marks, lines | the text |
| `language` | one-hot over en, zh, es, fr, de, ja, ru, other | the fastText language model |
| `jailbreak` | injection probability | the shipped jailbreak head |
| `pii` | any structured PII, log count of entities | the PII detector |
| `embedding` | a fixed random projection of the embedding to `dims` numbers, or with `basis: principal` its coordinates on the first `dims` principal axes of the shipped basis (`signals/principal.py`) | the embedding |

Each block is scaled by its `weight`, then the whole vector is scaled to unit length.
`matrix(texts, embeddings)` builds many vectors at once (offline evaluation, warm starts); row i is
exactly `vector_for_text(texts[i], embeddings[i])`. The vector
comes from the request text (the embedding text of the policy's encoder settings) and, for the
learned groups, its one shared embedding, so a bandit adds no encoder call of its own.

The feature schema is versioned: `schema_id` hashes the group list and options, the schema
version of this module and, when a learned group is used, the encoder's and heads' fingerprints.
Learned state is stored under that id, so state trained under another schema is never reused
silently (it is simply a different key; `sigroute bandit export` shows both).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from typing import Any, Sequence

import numpy as np

from sigroute.policies.schema import FeatureGroup

FEATURE_SCHEMA_VERSION = 1
LEARNED_GROUPS = frozenset({"domain", "complexity", "difficulty", "jailbreak", "embedding"})
LENGTH_BUCKETS = (64, 256, 1024, 4096)
LANGUAGES = ("en", "zh", "es", "fr", "de", "ja", "ru")
PROJECTION_SEED = 20261123

_MATH = re.compile(r"[=+\-*/^√∑∫π×÷≤≥<>]|\\frac|\\sqrt|\d\s*[a-z]\b")
_OPTION = re.compile(r"(?m)^\s*\(?([A-J])[.)]\s+\S")
_CODE = re.compile(r"```|\bdef |\bclass |;\s*$|\{\s*$|\breturn\b|#include|=>", re.MULTILINE)

__all__ = ["FeatureExtractor", "FEATURE_SCHEMA_VERSION", "shape_features", "SHAPE_NAMES"]

SHAPE_NAMES = ("digits", "math", "options", "code", "questions", "lines")


def shape_features(text: str) -> np.ndarray:
    """Question shape: digit share, math-symbol density, number of lettered options, code,
    question marks and line count, each squashed to about [0, 1]."""
    n = max(len(text), 1)
    digits = sum(c.isdigit() for c in text) / n
    math_hits = len(_MATH.findall(text[:8000])) / max(n / 100.0, 1.0)
    options = len(set(_OPTION.findall(text)))
    code = 1.0 if _CODE.search(text[:8000]) else 0.0
    questions = text.count("?")
    lines = text.count("\n") + 1
    return np.array([
        min(1.0, digits * 5.0),
        min(1.0, math_hits / 5.0),
        options / 10.0,
        code,
        min(1.0, questions / 3.0),
        min(1.0, math.log1p(lines) / 5.0),
    ])


def _length_features(tokens: int) -> np.ndarray:
    onehot = np.zeros(len(LENGTH_BUCKETS) + 1)
    onehot[next((i for i, edge in enumerate(LENGTH_BUCKETS) if tokens < edge), len(LENGTH_BUCKETS))] = 1.0
    return np.concatenate(([math.log1p(max(tokens, 0)) / 10.0], onehot))


class FeatureExtractor:
    """Builds the context vector of a decision's contextual bandit.

    `resources` is the policy's `signals.learned.SignalResources` (encoder, heads, domains); it is
    needed only when a learned group is listed.
    """

    def __init__(self, groups: Sequence[FeatureGroup], resources: Any = None, *, pii_detector: Any = None):
        self.groups = tuple(groups)
        if not self.groups:
            raise ValueError("a feature extractor needs at least one group")
        self.resources = resources
        self.needs_embedding = any(g.name in LEARNED_GROUPS for g in self.groups)
        if self.needs_embedding and (resources is None or getattr(resources, "encoder", None) is None):
            learned = sorted(g.name for g in self.groups if g.name in LEARNED_GROUPS)
            raise ValueError(f"feature group(s) {', '.join(learned)} need the encoder, but none is loaded")
        self._domain = self._complexity = self._difficulty = self._jailbreak = self._projection = None
        self._principal = None
        self._pii = pii_detector
        fingerprints: dict[str, str] = {}
        self.names: list[str] = []
        for g in self.groups:
            if g.name == "bias":
                self.names.append("bias")
            elif g.name == "domain":
                from sigroute.signals.learned import DomainClassifier

                classifier = resources._heads.get("__domain_classifier__")
                if classifier is None:
                    classifier = resources._heads["__domain_classifier__"] = DomainClassifier(resources)
                self._domain = classifier
                self.names += [f"domain:{label}" for label in classifier.labels]
                fingerprints["domain_head"] = str(classifier.head.meta.get("weights_sha256", ""))
                if getattr(resources, "domains", None):
                    fingerprints["domains"] = json.dumps(
                        {k: [v.threshold, list(v.examples)] for k, v in sorted(resources.domains.items())})
            elif g.name == "complexity":
                from sigroute.signals import exemplars

                self._complexity = (resources.embed(tuple(exemplars.HARD)), resources.embed(tuple(exemplars.EASY)))
                self.names.append("complexity:contrast")
                fingerprints["complexity"] = hashlib.sha256(
                    "\n".join(exemplars.HARD + exemplars.EASY).encode()).hexdigest()[:12]
            elif g.name == "difficulty":
                self._difficulty = resources.head("complexity")
                self.names += [f"difficulty:{label}" for label in self._difficulty.labels]
                fingerprints["complexity_head"] = str(self._difficulty.meta.get("weights_sha256", ""))
            elif g.name == "length":
                self.names += ["length:log_tokens"] + [f"length:<{e}" for e in LENGTH_BUCKETS] + [f"length:>={LENGTH_BUCKETS[-1]}"]
            elif g.name == "shape":
                self.names += [f"shape:{n}" for n in SHAPE_NAMES]
            elif g.name == "language":
                from sigroute.signals.heuristics import language_detector

                language_detector()  # load now, not on the first request
                self.names += [f"language:{l}" for l in LANGUAGES] + ["language:other"]
            elif g.name == "jailbreak":
                self._jailbreak = resources.head("jailbreak")
                self.names.append("jailbreak:score")
                fingerprints["jailbreak_head"] = str(self._jailbreak.meta.get("weights_sha256", ""))
            elif g.name == "pii":
                if self._pii is None:
                    from sigroute.signals.pii import default_detector

                    self._pii = default_detector()
                self.names += ["pii:any", "pii:log_count"]
            elif g.name == "embedding":
                if g.basis == "principal":
                    from sigroute.signals.principal import load_basis

                    heads_dir = getattr(resources, "heads_dir", None)
                    self._principal = load_basis(resources.encoder.fingerprint,
                                                 None if heads_dir is None else f"{heads_dir}/principal")
                    fingerprints["principal_basis"] = str(self._principal.meta.get("weights_sha256", ""))
                    self.names += [f"embedding:principal:{i}" for i in range(g.dims)]
                else:
                    self.names += [f"embedding:{i}" for i in range(g.dims)]
            else:  # pragma: no cover - the schema admits only the groups above
                raise ValueError(f"unknown feature group '{g.name}'")
        if self.needs_embedding:
            fingerprints["encoder"] = resources.encoder.fingerprint
        self.dim = len(self.names)
        description = {
            "version": FEATURE_SCHEMA_VERSION,
            # `basis` joined the options later: left out when it is the default, so that the ids of
            # schemas written before it (and the learned state stored under them) stay the same
            "groups": [g.model_dump(exclude={"basis"} if g.basis == "random" else None) for g in self.groups],
            "names": self.names,
            "fingerprints": fingerprints,
        }
        self.description = description
        self.schema_id = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]

    # -------------------------------------------------------------------------------------------
    def _project(self, vectors: np.ndarray, dims: int) -> np.ndarray:
        """Rows (or one vector) times the fixed random projection."""
        size = np.asarray(vectors).shape[-1]
        if self._projection is None or self._projection.shape != (size, dims):
            rng = np.random.default_rng(PROJECTION_SEED)
            self._projection = rng.standard_normal((size, dims)) / math.sqrt(dims)
        return np.asarray(vectors, dtype=np.float64) @ self._projection

    def embedding_texts(self, ctx) -> tuple[str, ...]:
        """Texts whose embeddings the vector needs (the request's embedding text), for one batch."""
        return (ctx.embedding_text,) if self.needs_embedding else ()

    def vector(self, ctx) -> np.ndarray:
        """The request's unit-norm context vector (embeddings must already be computed)."""
        embedding = ctx.vector(ctx.embedding_text) if self.needs_embedding else None
        text = ctx.embedding_text if self.needs_embedding else ctx.last_user_text
        return self.vector_for_text(text, embedding, tokens=ctx.prompt_tokens)

    def vector_for_text(self, text: str, embedding: np.ndarray | None = None, *, tokens: int | None = None) -> np.ndarray:
        """The context vector of a single piece of text (offline evaluation, replay, tests)."""
        if self.needs_embedding and embedding is None:
            raise ValueError("this feature schema needs the text's embedding")
        embeddings = None if embedding is None else np.asarray(embedding)[None, :]
        return self.matrix([text], embeddings, tokens=None if tokens is None else [tokens])[0]

    def matrix(self, texts: Sequence[str], embeddings: np.ndarray | None = None, *,
               tokens: Sequence[int | None] | None = None) -> np.ndarray:
        """Context vectors of many texts at once, shape (len(texts), dim): row i is the vector of
        `texts[i]` with embedding `embeddings[i]` and `tokens[i]` prompt tokens (len // 4 if None)."""
        texts = list(texts)
        n = len(texts)
        if self.needs_embedding:
            if embeddings is None:
                raise ValueError("this feature schema needs the texts' embeddings")
            embeddings = np.asarray(embeddings)
            if embeddings.ndim != 2 or embeddings.shape[0] != n:
                raise ValueError(f"expected {n} embeddings, got an array of shape {embeddings.shape}")
        if n == 0:
            return np.zeros((0, self.dim))
        blocks = [np.asarray(self._block(g, texts, embeddings, tokens), dtype=np.float64).reshape(n, -1) * g.weight
                  for g in self.groups]
        x = np.concatenate(blocks, axis=1)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=x.copy(), where=norm > 0)

    def _block(self, g: FeatureGroup, texts: list[str], embeddings: np.ndarray | None,
               tokens: Sequence[int | None] | None) -> np.ndarray:
        """One group's (unweighted) numbers for every text, shape (len(texts), size)."""
        n = len(texts)
        if g.name == "bias":
            return np.ones((n, 1))
        if g.name == "domain":
            return np.stack([self._domain.probabilities(t, e) for t, e in zip(texts, embeddings)])
        if g.name == "complexity":
            hard, easy = self._complexity
            return ((np.max(embeddings @ hard.T, axis=1) - np.max(embeddings @ easy.T, axis=1)) * 5.0)[:, None]
        if g.name == "difficulty":
            return self._difficulty.predict_proba(texts, embeddings)
        if g.name == "length":
            counts = [max(1, len(t) // 4) if (tokens is None or tokens[i] is None) else int(tokens[i])
                      for i, t in enumerate(texts)]
            return np.stack([_length_features(c) for c in counts])
        if g.name == "shape":
            return np.stack([shape_features(t) for t in texts])
        if g.name == "language":
            from sigroute.signals.heuristics import detect_language

            out = np.zeros((n, len(LANGUAGES) + 1))
            for i, t in enumerate(texts):
                candidates = detect_language(t)
                if candidates:
                    top, score = candidates[0]
                    out[i, LANGUAGES.index(top) if top in LANGUAGES else len(LANGUAGES)] = float(score)
            return out
        if g.name == "jailbreak":
            probs = self._jailbreak.predict_proba(texts, embeddings)
            labels = list(self._jailbreak.labels)
            return probs[:, labels.index("injection") if "injection" in labels else -1][:, None]
        if g.name == "pii":
            out = np.zeros((n, 2))
            for i, t in enumerate(texts):
                found = self._pii.detect(t) if t else []
                out[i] = (1.0 if found else 0.0, math.log1p(len(found)) / 3.0)
            return out
        if g.name == "embedding":
            if g.basis == "principal":
                return self._principal.project(embeddings, g.dims)
            return self._project(embeddings, g.dims)
        raise ValueError(f"unknown feature group '{g.name}'")  # pragma: no cover - the schema admits only these

    def explain(self, x: np.ndarray) -> dict[str, float]:
        return {n: round(float(v), 4) for n, v in zip(self.names, x)}
