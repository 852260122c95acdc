"""Learned signals: they read the request's shared sentence embedding.

Every one of them is synchronous and cheap at request time: the signal engine has already embedded
the texts they read (one micro-batched encoder call per request, see `signals.engine`), and what
remains is a few dot products or a small linear head. Anything heavier — embedding reference
utterances and exemplars, loading heads — happens once, when the policy is loaded.

| type         | decides from                                                | confidence            |
|--------------|-------------------------------------------------------------|-----------------------|
| `embedding`  | cosine similarity to the signal's reference utterances      | the similarity        |
| `domain`     | shipped 14-category head + the policy's exemplar `domains`  | winner's probability  |
| `complexity` | hard-vs-easy exemplar contrast, or the shipped head         | distance past the cut |
| `jailbreak`  | shipped head (embedding + attack patterns), max over turns and the joined last turns | the attack score |
| `fact_check` | factual-vs-creative exemplar contrast plus question cues    | the estimated need    |
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from sigroute.signals.base import Signal, SignalResult
from sigroute.signals.context import RequestContext
from sigroute.signals import exemplars


@dataclass
class SignalResources:
    """What learned signals need when a policy is loaded: the encoder and the policy's domains.

    Heads are loaded on first request for them and shared by every signal of the policy.
    """

    encoder: Any  # signals.encoder.Encoder
    domains: Mapping[str, Any] = field(default_factory=dict)  # name -> policies.schema.DomainSpec
    heads_dir: Any = None  # a directory holding <kind>/ heads instead of the shipped ones
    _heads: dict[str, Any] = field(default_factory=dict)
    _exemplars: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict)

    def head(self, kind: str):
        if kind not in self._heads:
            from sigroute.signals.heads import load_head

            directory = None if self.heads_dir is None else f"{self.heads_dir}/{kind}"
            self._heads[kind] = load_head(kind, self.encoder.fingerprint, directory)
        return self._heads[kind]

    def domain_classifier(self) -> "DomainClassifier":
        """The policy's one domain classifier (shared by every `domain` signal and the cache)."""
        classifier = self._heads.get("__domain_classifier__")
        if classifier is None:
            classifier = self._heads["__domain_classifier__"] = DomainClassifier(self)
        return classifier

    def embed(self, texts: tuple[str, ...]) -> np.ndarray:
        """Unit embeddings of fixed sentences (references, exemplars), computed once per policy."""
        if texts not in self._exemplars:
            self._exemplars[texts] = self.encoder.encode(list(texts))
        return self._exemplars[texts]


def _require(resources: SignalResources | None, key: str) -> SignalResources:
    if resources is None or resources.encoder is None:
        raise ValueError(f"signal '{key}' needs the sentence encoder, which was not loaded")
    return resources


class _Learned(Signal):
    needs_embedding = True

    def evaluate(self, ctx: RequestContext) -> SignalResult:
        if not ctx.embedding_text.strip():
            return SignalResult(False, 0.0, {"reason": "no text to embed"})
        return self.score(ctx, ctx.embedding_vector)

    def score(self, ctx: RequestContext, vector: np.ndarray) -> SignalResult:  # pragma: no cover - abstract
        raise NotImplementedError


# --------------------------------------------------------------------------------------------
class Embedding(_Learned):
    """Similarity to the reference utterances declared in the policy."""

    type = "embedding"

    def __init__(self, name, config, references: np.ndarray):
        super().__init__(name, config)
        self.references = references
        self.centroid = None
        if config.aggregate == "mean":
            mean = references.mean(axis=0)
            self.centroid = mean / max(float(np.linalg.norm(mean)), 1e-12)

    @classmethod
    def build(cls, name, config, resources):
        res = _require(resources, f"embedding:{name}")
        return cls(name, config, res.embed(tuple(config.references)))

    def score(self, ctx, vector):
        if self.centroid is not None:
            similarity = float(self.centroid @ vector)
            nearest = None
        else:
            sims = self.references @ vector
            nearest = int(np.argmax(sims))
            similarity = float(sims[nearest])
        matched = similarity >= self.config.threshold
        value = {"similarity": round(similarity, 4)}
        if nearest is not None:
            value["nearest_reference"] = nearest
        return SignalResult(matched, max(0.0, min(1.0, similarity)), value)


# --------------------------------------------------------------------------------------------
class DomainClassifier:
    """The request's domain: the shipped head's 14 categories plus exemplar-defined ones.

    A policy domain claims the request when the nearest of its examples is at least its
    threshold similar; its probability is a logistic function of how far past the threshold that
    is, and the shipped categories share the rest in proportion to the head's probabilities. One
    classifier serves every `domain` signal of a policy, once per request.
    """

    SHARPNESS = 0.05  # similarity units over which a custom domain goes from 27% to 73%

    def __init__(self, resources: SignalResources):
        self.head = resources.head("domain")
        self.custom = []
        for name, spec in resources.domains.items():
            self.custom.append((name, spec.threshold, resources.embed(tuple(spec.examples))))
        self.labels = tuple(self.head.labels) + tuple(name for name, _, _ in self.custom)

    def probabilities(self, text: str, vector: np.ndarray) -> np.ndarray:
        base = self.head.predict_proba([text], vector[None, :])[0]
        if not self.custom:
            return base
        claims = np.array([1.0 / (1.0 + math.exp(-(float(np.max(ex @ vector)) - thr) / self.SHARPNESS))
                           for _, thr, ex in self.custom])
        # the strongest custom domain takes its claim; the others keep theirs relative to it
        top = float(claims.max())
        custom = claims * (top / max(float(claims.sum()), 1e-12))
        return np.concatenate([base * (1.0 - top), custom])


class Domain(_Learned):
    type = "domain"

    def __init__(self, name, config, classifier: DomainClassifier):
        super().__init__(name, config)
        self.classifier = classifier
        self.wanted = frozenset(config.categories)

    @classmethod
    def build(cls, name, config, resources):
        return cls(name, config, _require(resources, f"domain:{name}").domain_classifier())

    def score(self, ctx, vector):
        probs = _cached(ctx, "domain_probabilities",
                        lambda: self.classifier.probabilities(ctx.embedding_text, vector))
        order = np.argsort(-probs)
        labels = self.classifier.labels
        top = labels[int(order[0])]
        top_p = float(probs[order[0]])
        matched = top in self.wanted and top_p >= self.config.threshold
        value = {"label": top, "top": {labels[int(i)]: round(float(probs[i]), 4) for i in order[:3]}}
        confidence = top_p if matched else float(sum(probs[i] for i, l in enumerate(labels) if l in self.wanted))
        return SignalResult(matched, confidence, value)


# --------------------------------------------------------------------------------------------
class Complexity(_Learned):
    """easy / medium / hard, from contrastive exemplars or the shipped head."""

    type = "complexity"

    def __init__(self, name, config, hard: np.ndarray | None, easy: np.ndarray | None, head=None):
        super().__init__(name, config)
        self.hard, self.easy, self.head = hard, easy, head
        self.wanted = frozenset(config.levels)

    @classmethod
    def build(cls, name, config, resources):
        res = _require(resources, f"complexity:{name}")
        if config.method == "head":
            return cls(name, config, None, None, res.head("complexity"))
        hard = res.embed(tuple(config.hard_examples or exemplars.HARD))
        easy = res.embed(tuple(config.easy_examples or exemplars.EASY))
        return cls(name, config, hard, easy)

    def score(self, ctx, vector):
        if self.head is not None:
            probs = self.head.predict_proba([ctx.embedding_text], vector[None, :])[0]
            labels = list(self.head.labels)
            level = labels[int(np.argmax(probs))]
            value = {"level": level, "probabilities": {l: round(float(p), 4) for l, p in zip(labels, probs)}}
            matched = level in self.wanted
            confidence = float(sum(p for l, p in zip(labels, probs) if l in self.wanted))
            return SignalResult(matched, confidence, value)
        contrast = float(np.max(self.hard @ vector) - np.max(self.easy @ vector))
        cfg = self.config
        level = "hard" if contrast >= cfg.hard_above else "easy" if contrast <= cfg.easy_below else "medium"
        matched = level in self.wanted
        # how clearly the request sits inside (or outside) the wanted band, squashed to [0, 1]
        margin = {"hard": contrast - cfg.hard_above, "easy": cfg.easy_below - contrast,
                  "medium": min(contrast - cfg.easy_below, cfg.hard_above - contrast)}
        best = max(margin[l] for l in self.wanted)
        confidence = 1.0 / (1.0 + math.exp(-best / 0.05))
        return SignalResult(matched, confidence, {"level": level, "contrast": round(contrast, 4)})


# --------------------------------------------------------------------------------------------
class Jailbreak(_Learned):
    """Prompt injection / jailbreak: the shipped head scores each user turn and the conversation
    (the last `window` user turns joined into one text, so that an attack split across turns is seen
    whole); the maximum counts."""

    type = "jailbreak"
    POSITIVE_LABELS = ("injection", "jailbreak", "attack", "malicious", "1")

    def __init__(self, name, config, head):
        super().__init__(name, config)
        self.head = head
        labels = [str(l) for l in head.labels]
        self.positive = next((labels.index(l) for l in self.POSITIVE_LABELS if l in labels), len(labels) - 1)
        threshold = config.threshold if config.threshold is not None else head.threshold
        self.threshold = 0.5 if threshold is None else float(threshold)
        self.window = int(getattr(config, "window", 1) or 1)

    @classmethod
    def build(cls, name, config, resources):
        res = _require(resources, f"jailbreak:{name}")
        return cls(name, config, res.head("jailbreak"))

    def _turns(self, ctx) -> tuple[str, ...]:
        if self.config.turns == "last_user":
            return (ctx.last_user_text,) if ctx.last_user_text.strip() else ()
        return tuple(t for t in ctx.user_texts if t.strip())

    def _conversation(self, turns: tuple[str, ...]) -> str | None:
        """The last `window` user turns as one text, when there is more than one turn to join."""
        if self.config.turns == "last_user" or self.window < 2 or len(turns) < 2:
            return None
        return "\n".join(turns[-self.window:])

    def embedding_texts(self, ctx):
        turns = self._turns(ctx)
        joined = self._conversation(turns)
        return turns + ((joined,) if joined is not None and joined not in turns else ())

    def evaluate(self, ctx):
        turns = self._turns(ctx)
        if not turns:
            return SignalResult(False, 0.0, {"reason": "no user text"})
        texts = self.embedding_texts(ctx)
        scores = _cached(ctx, ("jailbreak", texts), lambda: self.head.predict_proba(
            list(texts), np.stack([ctx.vector(t) for t in texts]))[:, self.positive])
        turn = int(np.argmax(scores[:len(turns)]))
        score = float(np.max(scores))
        value = {"score": round(score, 4), "threshold": self.threshold}
        if len(turns) > 1:
            value["turn"] = turn  # index among the user turns of the highest-scoring single turn
            value["turn_score"] = round(float(scores[turn]), 4)
        if len(texts) > len(turns):
            value["conversation_score"] = round(float(scores[-1]), 4)
        return SignalResult(score >= self.threshold, score, value)


# --------------------------------------------------------------------------------------------
_QUESTION_CUE = re.compile(
    r"\b(who|whom|when|where|which|what year|how many|how much|how long|how tall|how far|population|"
    r"founded|invented|discovered|born|died|capital|according to|statistics?|percent(age)?|dose|"
    r"law says|is it true)\b", re.IGNORECASE)
_TASK_CUE = re.compile(
    r"\b(write|rewrite|draft|compose|poem|story|haiku|joke|brainstorm|translate|summari[sz]e|refactor|"
    r"fix|debug|implement|code|function|regex|convert|format|pretend|imagine|opinion|should i|"
    r"prove|derive|solve|compute|calculate|design|plan|optimi[sz]e)\b",
    re.IGNORECASE)


class FactCheck(_Learned):
    """Does the request ask for facts that an answer could get wrong (a gate for grounding)?"""

    type = "fact_check"

    def __init__(self, name, config, factual: np.ndarray, other: np.ndarray):
        super().__init__(name, config)
        self.factual, self.other = factual, other

    @classmethod
    def build(cls, name, config, resources):
        res = _require(resources, f"fact_check:{name}")
        return cls(name, config, res.embed(exemplars.FACTUAL), res.embed(exemplars.NON_FACTUAL))

    def score(self, ctx, vector):
        text = ctx.embedding_text
        contrast = float(np.max(self.factual @ vector) - np.max(self.other @ vector))
        cues = 0.6 * min(2, len(_QUESTION_CUE.findall(text))) - 1.0 * min(2, len(_TASK_CUE.findall(text)))
        if re.search(r"\b(1[5-9]|20)\d\d\b", text):  # a year: dates are facts
            cues += 0.3
        need = 1.0 / (1.0 + math.exp(-(contrast / 0.1 + cues)))
        return SignalResult(need >= self.config.threshold, need,
                            {"need": round(need, 4), "contrast": round(contrast, 4)})


async def request_domain(ctx: RequestContext, resources: SignalResources) -> tuple[str, float]:
    """The request's most likely domain and its probability; computed once per request and
    shared with the policy's `domain` signals."""
    classifier = resources.domain_classifier()
    text = ctx.embedding_text
    await ctx.ensure_embeddings((text,))
    vector = ctx.vector(text)
    probs = _cached(ctx, "domain_probabilities", lambda: classifier.probabilities(text, vector))
    best = int(np.argmax(probs))
    return classifier.labels[best], float(probs[best])


def _cached(ctx: RequestContext, key: Any, compute):
    """Per-request memo shared by the signals of one policy (e.g. two `domain` rules)."""
    memo = ctx.memo
    if key not in memo:
        memo[key] = compute()
    return memo[key]
