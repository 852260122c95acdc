"""The context vector of a request, as a contextual bandit sees it.

A decision that routes with a contextual algorithm declares which feature groups make up its
context (`features: [bias, domain, complexity, length, shape, {embedding: {dims: 16}}]`). Each group
turns the request into a few numbers:

| group | numbers | from |
|---|---|---|
| `bias` | 1 | the constant 1 |
| `domain` | one probability per domain (14 shipped + the policy's `domains:`) | the shipped domain head |
| `complexity` | hard-vs-easy exemplar contrast | the embedding |
| `length` | log token count, and a one-hot bucket (<64, <256, <1k, <4k, ≥4k tokens) | the tokenizer |
| `shape` | digits, math symbols, lettered options, code, question marks, lines | the text |
| `language` | one-hot over en, zh, es, fr, de, ja, ru, other | the fastText language model |
| `jailbreak` | injection probability | the shipped jailbreak head |
| `pii` | any structured PII, log count of entities | the PII detector |
| `embedding` | a fixed random projection of the embedding to `dims` numbers | the embedding |

Each block is scaled by its `weight`, then the whole vector is scaled to unit length. The vector
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

from policies.schema import FeatureGroup

FEATURE_SCHEMA_VERSION = 1
LEARNED_GROUPS = frozenset({"domain", "complexity", "jailbreak", "embedding"})
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
        self._domain = self._complexity = self._jailbreak = self._projection = None
        self._pii = pii_detector
        fingerprints: dict[str, str] = {}
        self.names: list[str] = []
        for g in self.groups:
            if g.name == "bias":
                self.names.append("bias")
            elif g.name == "domain":
                from signals.learned import DomainClassifier

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
                from signals import exemplars

                self._complexity = (resources.embed(tuple(exemplars.HARD)), resources.embed(tuple(exemplars.EASY)))
                self.names.append("complexity:contrast")
                fingerprints["complexity"] = hashlib.sha256(
                    "\n".join(exemplars.HARD + exemplars.EASY).encode()).hexdigest()[:12]
            elif g.name == "length":
                self.names += ["length:log_tokens"] + [f"length:<{e}" for e in LENGTH_BUCKETS] + [f"length:>={LENGTH_BUCKETS[-1]}"]
            elif g.name == "shape":
                self.names += [f"shape:{n}" for n in SHAPE_NAMES]
            elif g.name == "language":
                from signals.heuristics import language_detector

                language_detector()  # load now, not on the first request
                self.names += [f"language:{l}" for l in LANGUAGES] + ["language:other"]
            elif g.name == "jailbreak":
                self._jailbreak = resources.head("jailbreak")
                self.names.append("jailbreak:score")
                fingerprints["jailbreak_head"] = str(self._jailbreak.meta.get("weights_sha256", ""))
            elif g.name == "pii":
                if self._pii is None:
                    from signals.pii import default_detector

                    self._pii = default_detector()
                self.names += ["pii:any", "pii:log_count"]
            elif g.name == "embedding":
                self.names += [f"embedding:{i}" for i in range(g.dims)]
            else:  # pragma: no cover - the schema admits only the groups above
                raise ValueError(f"unknown feature group '{g.name}'")
        if self.needs_embedding:
            fingerprints["encoder"] = resources.encoder.fingerprint
        self.dim = len(self.names)
        description = {
            "version": FEATURE_SCHEMA_VERSION,
            "groups": [g.model_dump() for g in self.groups],
            "names": self.names,
            "fingerprints": fingerprints,
        }
        self.description = description
        self.schema_id = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:12]

    # -------------------------------------------------------------------------------------------
    def _project(self, vector: np.ndarray, dims: int) -> np.ndarray:
        if self._projection is None or self._projection.shape[0] != vector.shape[0]:
            rng = np.random.default_rng(PROJECTION_SEED)
            self._projection = rng.standard_normal((vector.shape[0], dims)) / math.sqrt(dims)
        return np.asarray(vector, dtype=np.float64) @ self._projection

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
        blocks: list[np.ndarray] = []
        for g in self.groups:
            if g.name == "bias":
                block = np.ones(1)
            elif g.name == "domain":
                block = np.asarray(self._domain.probabilities(text, embedding), dtype=np.float64)
            elif g.name == "complexity":
                hard, easy = self._complexity
                block = np.array([float(np.max(hard @ embedding) - np.max(easy @ embedding)) * 5.0])
            elif g.name == "length":
                if tokens is None:
                    tokens = max(1, len(text) // 4)
                block = _length_features(int(tokens))
            elif g.name == "shape":
                block = shape_features(text)
            elif g.name == "language":
                from signals.heuristics import detect_language

                block = np.zeros(len(LANGUAGES) + 1)
                candidates = detect_language(text)
                if candidates:
                    top, score = candidates[0]
                    block[LANGUAGES.index(top) if top in LANGUAGES else len(LANGUAGES)] = float(score)
            elif g.name == "jailbreak":
                probs = self._jailbreak.predict_proba([text], np.asarray(embedding)[None, :])[0]
                labels = list(self._jailbreak.labels)
                block = np.array([float(probs[labels.index("injection")] if "injection" in labels else probs[-1])])
            elif g.name == "pii":
                found = self._pii.detect(text) if text else []
                block = np.array([1.0 if found else 0.0, math.log1p(len(found)) / 3.0])
            else:  # embedding
                block = self._project(np.asarray(embedding), g.dims)
            blocks.append(block * g.weight)
        x = np.concatenate(blocks)
        norm = float(np.linalg.norm(x))
        return x / norm if norm > 0 else x

    def explain(self, x: np.ndarray) -> dict[str, float]:
        return {n: round(float(v), 4) for n, v in zip(self.names, x)}
