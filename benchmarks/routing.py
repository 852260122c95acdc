"""Offline evaluation of the contextual bandits on real model outcomes (MMLU-Pro, 29 models).

    python -m benchmarks.routing --warm-start --seeds 5 --json results/routing.json
    python -m benchmarks.routing --data DIR --pool M1,M2,... --train DIR2 --json PATH

DIR is laid out like ``../shared/data/routing``: ``models.csv`` and ``mmlu_pro/{questions.jsonl.gz,
correctness.csv.gz, output_chars.csv.gz}`` (DIR may also be the ``mmlu_pro`` folder itself, with
``models.csv`` one level up).

What is simulated. The stream's questions arrive in a random order (one order per seed). For each
question the policy sees only the context vector (`bandits.features.FeatureExtractor`, built from
the question as a user would send it, `signals.heads.question_text`, and its embedding from the
shared encoder), picks a model of the pool, and is told only that model's outcome (bandit
feedback; the table holds every model's outcome, which is what makes the oracle and the baselines
computable). The outcome goes through a pluggable *step* function (`Step`): `TableStep` reads the
recorded outcome; a gateway step (HTTP through the real gateway and the replay simulator, quality
sent back as feedback) can be plugged into `run_policy` without touching anything else.

Cost model (the same rule as the replay simulator, `gateway/sim_replay.py`). The cost of a question
for a model is ``(prompt_tokens × price_in + completion_tokens × price_out) / 1e6`` USD with the
prices of ``models.csv``. Prompt tokens: the question text as one user message counted with the
project tokenizer (`signals.tokens`, cl100k_base, including the chat framing tokens; len/4 if the
tokenizer is unavailable). Completion tokens: the model's recorded answer length in characters / 4;
a length of 0 or an empty/missing cell is imputed as the (rounded) median over the models of
``models.csv`` that have a recorded length for that question, else that model's own median, else
the median of all recorded lengths. (The gemini and DeepSeek runs recorded no lengths, so their
completion tokens are always imputed.)

Missing outcomes. A question takes part only when every pool model has a result for it (an empty
correctness cell, e.g. ~1.35k for DeepSeek-Coder-V2, drops the question); the JSON says how many
were dropped.

Splits, and what is held out. The shipped domain and complexity heads were trained on MMLU-Pro with
the split rule of `signals.training` (a question is in the TEST part iff
``int(sha256(str(question_id)), 16) % 100 >= 80``). So on that data the online stream is always the
TEST part (≈1.9k questions) and everything fitted — the warm start (`--warm-start`), the supervised
baseline, the per-category baseline and the hyper-parameters — uses only the other 80 %
(the "training split"). With ``--train DIR2`` the training split is all of DIR2 and the stream all
of DIR, less any question whose id is in DIR2 and, if DIR's questions file is the one the heads were
trained on (its sha256 is in the heads' metadata), less the heads' training part. Training questions
the shipped heads were trained on get cross-fitted (out-of-fold) `domain`/`difficulty` features,
the others the shipped heads' own outputs (see `cross_fitted_head_blocks`).

Rewards. The learners receive exactly what the gateway gives them for ``reward: {quality: 1,
cost: w}`` (`bandits.contextual.reward_value`): ``(correct + w·(1 − cost_share)) / (1 + w)``, where
cost_share is the answer's cost relative to the most expensive pool model for the same tokens.
With ``--learn quality`` the router's estimator learns correctness only and adds the known cost
term at selection (the gateway's ``learn: quality``: `bandits.contextual.known_terms`, with each
model's mean answer length as the learner has observed it, warm start included); the reward it is
measured in is the same. Sweeping the cost weight w over `W_GRID` traces each router's cost–accuracy curve. Regret is
measured in that reward, against the per-question oracle (the best reward of any pool model on
that question), at the fixed weight ``--regret-w`` (default 0.2, fixed a priori).

Baselines (all on the stream): every single model, uniformly random, cheapest (lowest mean cost on
the training split), the oracle (per question the best model; at w = 0 the cheapest correct one),
the best model per MMLU-Pro category (chosen on the training split for each w; it uses the
dataset's category label, which the gateway does not have), and a supervised router: one logistic
regression per model on the training split's embeddings predicting that model's correctness
(C chosen by 5-fold cross-validation inside the training split), routed by predicted accuracy −
w × expected cost share (completion length = the model's median on the training split).

AIQ (RouterBench, Hu et al. 2024): the area under a router's non-decreasing convex hull of
(total cost, accuracy) points, divided by the cost range. Here the range is [cost of the cheapest
single model, cost of the dearest single model] on the stream, the same for every router; the
hull of each router includes the cheapest single model's point (any router can fall back to it)
and is extended flat to the right.

Operating points: ``router_accuracy_at_X_cost`` is the best mean accuracy (over seeds) among the
router's points (one per w) whose mean total cost is at most X of the best single model's cost
on the stream. This picks the point after seeing the stream, like the curve itself; the JSON also
has ``honest_operating_points``: w chosen on the training split (inner validation) for each
budget, then measured on the stream.

Hyper-parameters: LinUCB's alpha and the ridge λ are chosen by 5-fold cross-validation inside the
training split (`--tune-folds`; folds by sha256('cv:' + id): each fold warm-starts on the other
four and streams its own, maximize the mean AIQ over folds); ``--tune-folds 1`` uses the single
inner-validation cut instead (`signals.training.in_inner_validation`). The honest operating points
read the inner cut at the chosen setting. Thompson's v, ε-greedy's ε and the feature groups are
fixed a priori (see ``--features``); everything chosen is in the JSON.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import numpy as np

from benchmarks.report import emit
from sigroute.bandits.feedback import FeedbackWeights

DEFAULT_DATA = "../shared/data/routing"
DEFAULT_POOL = ("Meta-Llama-3_1-8B-Instruct", "Mixtral-8x7B-Instruct-v0.1", "DeepSeek-Coder-V2",
                "Meta-Llama-3_1-70B-Instruct", "gemini-1.5-flash-002", "gemini-1.5-pro-002")
DEFAULT_CACHE = "~/.cache/sigroute/routing"
# The router's context: see bandits/features.py. Chosen by 5-fold cross-validation inside the training
# split (static ridge estimates of each model's correctness, AIQ per fold; README "Benchmarks"): the
# principal basis instead of a random projection, the head blocks weighted 2 against the embedding's
# coordinates, no complexity/length blocks. The ablation (--ablation) reports what each contributes.
DEFAULT_FEATURES = "bias*2,domain*2,difficulty*2,shape*2,embedding:32:principal"
# cost weights w of reward {quality: 1, cost: w}; 0 = accuracy only, large = cheapest
W_GRID = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.11, 0.12, 0.14, 0.16, 0.18, 0.2,
          0.22, 0.25, 0.3, 0.35, 0.4, 0.5, 0.65, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
BUDGETS = (0.10, 0.30, 0.50)
TARGETS = {"0.1": 0.94, "0.3": 0.97, "0.5": 1.00}
CHECKPOINT_EVERY = 25
ALPHA_GRID = (0.1, 0.3, 1.0)  # alpha = 0 would be greedy, not LinUCB
RIDGE_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
SUPERVISED_C_GRID = (0.03, 0.1, 0.3, 1.0, 3.0)


# ------------------------------------------------------------------------------------------------
# data

class DataError(ValueError):
    pass


@dataclass
class Table:
    """Outcomes of the pool on the questions where every pool model has a result."""

    directory: str
    models: list[str]
    question_ids: list[str]
    categories: list[str]
    texts: list[str]
    correct: np.ndarray            # (n, m) 0/1
    prompt_tokens: np.ndarray      # (n,)
    completion_tokens: np.ndarray  # (n, m) output chars / 4 (imputed where not recorded)
    chars_recorded: np.ndarray     # (n, m) bool
    prices: np.ndarray             # (m, 2) USD per million input / output tokens
    models_table: list[dict]       # models.csv rows as read
    files: dict[str, str]          # relative path -> sha256
    dropped_missing: dict[str, int]
    tokenizer: str

    @property
    def n(self) -> int:
        return len(self.question_ids)

    @property
    def cost(self) -> np.ndarray:
        """(n, m) USD per question and model."""
        return (self.prompt_tokens[:, None] * self.prices[None, :, 0]
                + self.completion_tokens * self.prices[None, :, 1]) / 1e6

    def cost_share(self) -> np.ndarray:
        """(n, m) each answer's cost relative to the dearest pool model for the same tokens."""
        return cost_share_matrix(self.prompt_tokens[:, None], self.completion_tokens, self.prices)

    def subset(self, rows: np.ndarray) -> "Table":
        rows = np.asarray(rows)
        pick = lambda seq: [seq[i] for i in rows]  # noqa: E731
        return Table(self.directory, self.models, pick(self.question_ids), pick(self.categories), pick(self.texts),
                     self.correct[rows], self.prompt_tokens[rows], self.completion_tokens[rows],
                     self.chars_recorded[rows], self.prices, self.models_table, self.files, self.dropped_missing,
                     self.tokenizer)


def cost_share_matrix(prompt_tokens, completion_tokens, prices: np.ndarray) -> np.ndarray:
    """cost_share[.., j] = cost of model j / max over pool models k of (same tokens at k's prices);
    the gateway's `ContextualSelector.cost_share`."""
    p = np.asarray(prompt_tokens, dtype=np.float64)[..., None]        # (.., m, 1)
    c = np.asarray(completion_tokens, dtype=np.float64)[..., None]
    own = p[..., 0] * prices[:, 0] + c[..., 0] * prices[:, 1]          # (.., m)
    every = p * prices[None, :, 0] + c * prices[None, :, 1]           # (.., m, k)
    dearest = every.max(axis=-1)
    return np.divide(own, dearest, out=np.zeros_like(own), where=dearest > 0)


def _resolve_dir(data_dir: str | Path) -> tuple[Path, Path]:
    d = Path(data_dir).expanduser()
    if (d / "mmlu_pro" / "questions.jsonl.gz").is_file():
        return d, d / "mmlu_pro"
    if (d / "questions.jsonl.gz").is_file() and (d.parent / "models.csv").is_file():
        return d.parent, d
    raise DataError(f"{d} is not laid out like routing/ (models.csv + mmlu_pro/questions.jsonl.gz, "
                    f"correctness.csv.gz, output_chars.csv.gz)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader)
        return header, list(reader)


def read_models(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [dict(r) for r in csv.DictReader(fh)]


def prompt_token_counter() -> tuple[Callable[[str], int], str]:
    """Prompt tokens of a question sent as one user message (the gateway's accounting)."""
    try:
        from sigroute.signals import tokens as tok

        enc = tok.encoding()
        framing = tok.TOKENS_PER_REPLY + tok.TOKENS_PER_MESSAGE + len(enc.encode_ordinary("user"))
        return (lambda text: framing + len(enc.encode_ordinary(text))), "cl100k_base (signals.tokens) + chat framing"
    except Exception:  # pragma: no cover - litellm's vocabulary missing
        return (lambda text: max(1, len(text) // 4)), "len/4"


def impute_chars(chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Answer lengths with 0 / NaN imputed: the question's median over models that recorded one,
    else the model's own median, else the median of everything recorded (rounded)."""
    chars = np.asarray(chars, dtype=np.float64)
    recorded = np.isfinite(chars) & (chars > 0)
    out = np.where(recorded, chars, np.nan)
    masked = np.where(recorded, chars, np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            row_median = np.nanmedian(masked, axis=1)
            col_median = np.nanmedian(masked, axis=0)
    overall = float(np.median(chars[recorded])) if recorded.any() else 1000.0
    col_median = np.where(np.isfinite(col_median), col_median, overall)
    fill = np.where(np.isfinite(row_median)[:, None], row_median[:, None], col_median[None, :])
    out = np.where(recorded, chars, np.round(fill))
    return out, recorded


def load_table(data_dir: str | Path, pool: Sequence[str], *, count_tokens: Callable[[str], int] | None = None,
               tokenizer_name: str = "") -> Table:
    from sigroute.signals.heads import question_text

    root, mmlu = _resolve_dir(data_dir)
    models_table = read_models(root / "models.csv")
    prices_by = {r["model"]: (float(r["price_in_per_mtok"]), float(r["price_out_per_mtok"])) for r in models_table}
    missing = [m for m in pool if m not in prices_by]
    if missing:
        raise DataError(f"pool model(s) not in {root / 'models.csv'}: {', '.join(missing)}")
    files = {}
    for rel in ("models.csv", "mmlu_pro/questions.jsonl.gz", "mmlu_pro/correctness.csv.gz",
                "mmlu_pro/output_chars.csv.gz"):
        path = root / rel if rel == "models.csv" else mmlu / Path(rel).name
        files[rel] = _sha256(path)
    with gzip.open(mmlu / "questions.jsonl.gz", "rt", encoding="utf-8") as fh:
        questions = [json.loads(line) for line in fh if line.strip()]
    header, rows = _read_csv(mmlu / "correctness.csv.gz")
    cols = {m: header.index(m) for m in pool if m in header}
    absent = [m for m in pool if m not in cols]
    if absent:
        raise DataError(f"pool model(s) without a correctness column: {', '.join(absent)}")
    correct_by = {}
    for r in rows:
        correct_by[r[0]] = [r[cols[m]] if cols[m] < len(r) else "" for m in pool]
    cheader, crows = _read_csv(mmlu / "output_chars.csv.gz")
    # every model of models.csv with a column takes part in the per-question median (like the sim)
    char_models = [m for m in prices_by if m in cheader]
    ccols = [cheader.index(m) for m in char_models]
    chars_by = {}
    for r in crows:
        chars_by[r[0]] = [float(r[j]) if j < len(r) and r[j] not in ("", None) else np.nan for j in ccols]

    qids, cats, texts, correct, chars = [], [], [], [], []
    dropped = {m: 0 for m in pool}
    dropped_rows = 0
    nan_row = [np.nan] * len(char_models)
    for q in questions:
        qid = str(q["question_id"])
        cells = correct_by.get(qid)
        if cells is None or any(c == "" for c in cells):
            dropped_rows += 1
            for m, c in zip(pool, cells or [""] * len(pool)):
                dropped[m] += int(c == "")
            continue
        qids.append(qid)
        cats.append(str(q.get("category", "")))
        texts.append(question_text(q["question"], q.get("options") or []))
        correct.append([float(c) for c in cells])
        chars.append(chars_by.get(qid, nan_row))
    if not qids:
        raise DataError(f"no question in {mmlu} has a result for every pool model")
    all_chars, recorded_all = impute_chars(np.array(chars, dtype=np.float64))
    pick = [char_models.index(m) for m in pool]
    if count_tokens is None:
        count_tokens, tokenizer_name = prompt_token_counter()
    prompt = np.array([count_tokens(t) for t in texts], dtype=np.float64)
    return Table(
        directory=str(root), models=list(pool), question_ids=qids, categories=cats, texts=texts,
        correct=np.array(correct, dtype=np.float64), prompt_tokens=prompt,
        completion_tokens=all_chars[:, pick] / 4.0, chars_recorded=recorded_all[:, pick],
        prices=np.array([prices_by[m] for m in pool], dtype=np.float64), models_table=models_table, files=files,
        dropped_missing={"questions": dropped_rows, "empty_cells_per_model": dropped}, tokenizer=tokenizer_name)


def head_training_sha256s() -> set[str]:
    """sha256s of the questions files the shipped heads were trained on."""
    from sigroute.signals.heads import TRAINED_DIR

    out = set()
    for meta_path in Path(TRAINED_DIR).glob("*/head.json"):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except Exception:
            continue
        for f in (meta.get("data") or {}).get("files", []):
            if str(f.get("path", "")).endswith("questions.jsonl.gz"):
                out.add(str(f.get("sha256")))
    return out


@dataclass
class Split:
    train: Table
    stream: Table
    description: str
    inner_validation: np.ndarray  # bool over train rows: the part used to choose hyper-parameters


def make_split(data: Table, train_data: Table | None) -> Split:
    from sigroute.signals.training import SPLIT_RULE, in_inner_validation, in_test_split

    if train_data is None:
        test = np.array([in_test_split(q) for q in data.question_ids])
        train = data.subset(np.flatnonzero(~test))
        inner = np.array([in_inner_validation(q) for q in train.question_ids])
        return Split(train, data.subset(np.flatnonzero(test)),
                     f"stream = the TEST part of the heads' split ({SPLIT_RULE}); training split = the rest", inner)
    keep = np.ones(data.n, dtype=bool)
    seen = set(train_data.question_ids)
    keep &= np.array([q not in seen for q in data.question_ids])
    note = f"training split = all of {train_data.directory}; stream = {data.directory} less ids also in the training data"
    if data.files.get("mmlu_pro/questions.jsonl.gz") in head_training_sha256s():
        keep &= np.array([in_test_split(q) for q in data.question_ids])
        note += " and less the heads' training part (the heads were trained on this file)"
    inner = np.array([int(hashlib.sha256(("v" + q).encode()).hexdigest(), 16) % 100 < 25
                      for q in train_data.question_ids])
    return Split(train_data, data.subset(np.flatnonzero(keep)), note, inner)


# ------------------------------------------------------------------------------------------------
# features

def parse_features(spec: str) -> list:
    """'bias,domain,embedding:32,shape*0.5' -> FeatureGroups (':N' = dims, '*W' = weight;
    'embedding:32:principal' = the principal basis instead of the random projection)."""
    from sigroute.policies.schema import FeatureGroup

    groups = []
    for part in [p.strip() for p in spec.split(",") if p.strip()]:
        weight = 1.0
        if "*" in part:
            part, w = part.split("*", 1)
            weight = float(w)
        name, _, rest = part.partition(":")
        dims, _, basis = rest.partition(":")
        kw: dict[str, Any] = {"name": name, "weight": weight}
        if dims:
            kw["dims"] = int(dims)
        if basis:
            kw["basis"] = basis
        groups.append(FeatureGroup(**kw))
    return groups


def features_text(groups) -> str:
    out = []
    for g in groups:
        s = g.name + (f":{g.dims}" if g.name == "embedding" else "")
        s += f":{g.basis}" if g.name == "embedding" and g.basis != "random" else ""
        if g.weight != 1.0:
            s += f"*{g.weight:g}"
        out.append(s)
    return ",".join(out)


class FeatureBank:
    """Builds context matrices with `bandits.features.FeatureExtractor` and caches each group's
    block, so ablations over groups and weights cost nothing more than an extractor's `matrix`."""

    def __init__(self, resources):
        self.resources = resources
        self._blocks: dict[tuple, np.ndarray] = {}

    def extractor(self, groups):
        from sigroute.bandits.features import FeatureExtractor

        return FeatureExtractor(groups, self.resources)

    def block(self, name: str, texts: Sequence[str], embeddings: np.ndarray, tokens: np.ndarray, key: str,
              dims: int | None = None, basis: str = "random") -> np.ndarray:
        """One group's unweighted block for the texts under `key` (computed once)."""
        from sigroute.policies.schema import FeatureGroup

        bkey = (key, name, dims if name == "embedding" else 0) + ((basis,) if basis != "random" else ())
        if bkey not in self._blocks:
            g = FeatureGroup(name=name, dims=dims, basis=basis) if dims else FeatureGroup(name=name)
            single = self.extractor([g])
            self._blocks[bkey] = np.asarray(single._block(single.groups[0], list(texts), embeddings,
                                                          [int(t) for t in tokens]), dtype=np.float64)
        return self._blocks[bkey]

    def matrix(self, groups, texts: Sequence[str], embeddings: np.ndarray, tokens: np.ndarray, key: str) -> np.ndarray:
        blocks = [self.block(g.name, texts, embeddings, tokens, key, g.dims, g.basis) * g.weight for g in groups]
        x = np.concatenate(blocks, axis=1)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, norm, out=x.copy(), where=norm > 0)

    def override(self, key: str, name: str, block: np.ndarray) -> None:
        """Use `block` for group `name` of the texts under `key` (cross-fitted training features)."""
        self._blocks[(key, name, 0)] = np.asarray(block, dtype=np.float64)

    def check(self, groups, texts, embeddings, tokens, X: np.ndarray, rows: Iterable[int]) -> float:
        """Largest difference between `X` and the extractor's own per-request vectors."""
        ex = self.extractor(groups)
        worst = 0.0
        for i in rows:
            v = ex.vector_for_text(texts[i], embeddings[i], tokens=int(tokens[i]))
            worst = max(worst, float(np.max(np.abs(v - X[i]))))
        return worst


CROSS_FIT_FOLDS = 5
CROSS_FIT_VERSION = 2  # 2: every question of the heads' training part cached, whatever the pool


def cross_fit_fold(question_id: str) -> int:
    return int(hashlib.sha256(f"crossfit:{question_id}".encode()).hexdigest(), 16) % CROSS_FIT_FOLDS


def cross_fitted_head_blocks(train: Table, questions_path: Path, correctness_path: Path, encoder, cache_dir,
                             shipped: Mapping[str, np.ndarray], log=lambda m: None) -> dict[str, np.ndarray]:
    """`domain` and `difficulty` blocks for the training split, out-of-fold wherever the shipped heads
    saw the question in training.

    On its own training questions a head is far sharper than on new ones (the domain head names
    99.9 % of them right, 86 % of held-out ones; the complexity head 60 % vs 50 %). A router warm-
    started (or validated) on those in-sample numbers learns to trust them more than they deserve
    on live traffic. So each training question gets the prediction of the same recipe (the shipped
    head's own settings from its head.json: C, n-gram spec, pruning, expert weight, temperature,
    label cuts) refitted without the fold it is in (5 folds by a hash of the question id). The
    stream always gets the shipped heads themselves. Training questions from the heads' own test part
    (all of them when ``--train`` names the full data the heads came from) are out-of-sample for the
    shipped heads already: their rows are the shipped heads' outputs (`shipped`: name -> block of
    every training-split row, computed by the caller with the gateway's extractor). Cached on disk (a
    few minutes to compute).
    """
    import scipy.sparse as sps
    from scipy.special import log_softmax, softmax
    from sklearn.linear_model import LogisticRegression

    from sigroute.signals.heads import TRAINED_DIR, question_text
    from sigroute.signals.training import (_prune, count_matrix, embed, fit_idf, in_test_split, load_questions,
                                  weight_matrix)

    dmeta = json.loads((Path(TRAINED_DIR) / "domain" / "head.json").read_text(encoding="utf-8"))
    cmeta = json.loads((Path(TRAINED_DIR) / "complexity" / "head.json").read_text(encoding="utf-8"))
    # the folds depend on the data files and the heads only, not on the pool: one cache per data set
    key = hashlib.sha256(json.dumps([CROSS_FIT_VERSION, _sha256(questions_path), _sha256(correctness_path),
                                     dmeta.get("weights_sha256"), cmeta.get("weights_sha256"), encoder.fingerprint],
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"crossfit-{key}.npz" if cache_dir else None
    in_sample = np.array([not in_test_split(q) for q in train.question_ids])
    if path is not None and path.is_file():
        with np.load(path) as z:
            where = {str(q): i for i, q in enumerate(z["ids"].tolist())}
            want = np.array([where[q] for q, inside in zip(train.question_ids, in_sample) if inside], dtype=np.int64)
            folded = {"domain": z["domain"][want], "difficulty": z["difficulty"][want]}
        return _merge_cross_fit(folded, in_sample, shipped)
    t0 = time.perf_counter()
    rows = [r for r in load_questions(questions_path) if not in_test_split(r["question_id"])]
    header, crows = _read_csv(correctness_path)
    solved = {}
    for r in crows:
        vals = [float(v) for v in r[3:] if v != ""]
        if vals:
            solved[r[0]] = float(np.mean(vals))
    texts = [question_text(r["question"], r["options"]) for r in rows]
    ids = [str(r["question_id"]) for r in rows]
    fold = np.array([cross_fit_fold(q) for q in ids])
    E = embed(encoder, texts, cache_dir)
    where = {q: i for i, q in enumerate(ids)}
    want = np.array([where[q] for q, inside in zip(train.question_ids, in_sample) if inside], dtype=np.int64)
    # domain: n-gram logistic regression ⊕ embedding logistic regression, as signals.training does
    labels = list(dmeta["labels"])
    y = np.array([labels.index(r["category"]) for r in rows])
    comp = {c["name"]: c for c in dmeta["components"]}
    dspec = dmeta["features"]["ngrams"]
    counts = count_matrix(texts, dspec)
    domain = np.zeros((len(rows), len(labels)))
    for k in range(CROSS_FIT_FOLDS):
        fit, held = fold != k, fold == k
        idf = fit_idf(counts, fit) if dspec.get("idf") else None
        X = weight_matrix(counts, dspec, idf)
        ng = LogisticRegression(C=comp["ngram_logreg"]["C"], max_iter=300, random_state=0).fit(X[fit], y[fit])
        em = LogisticRegression(C=comp["embedding_logreg"]["C"], max_iter=2000, random_state=0).fit(E[fit], y[fit])
        Wp = _prune(ng.coef_.T.astype(np.float32), comp["ngram_logreg"].get("pruned_keep_fraction", 1.0))
        part = (log_softmax(np.asarray(X[held] @ Wp) + ng.intercept_, axis=1)
                + comp["embedding_logreg"]["weight"] * em.predict_log_proba(E[held]))
        total = np.full((part.shape[0], len(labels)), -1e9)  # a label absent from the fitted folds: P = 0
        total[:, ng.classes_] = part
        domain[held] = softmax(total / float(dmeta.get("temperature", 1.0)), axis=1)
        log(f"  cross-fit domain fold {k + 1}/{CROSS_FIT_FOLDS} ({time.perf_counter() - t0:.0f}s)")
    # difficulty: the complexity recipe (tertiles of the fitted part's solved fraction)
    cspec = cmeta["features"]["ngrams"]
    has = np.array([q in solved for q in ids])
    f = np.array([solved.get(q, np.nan) for q in ids])
    Xc = sps.hstack([sps.csr_matrix(E), weight_matrix(count_matrix(texts, cspec), cspec, None)]).tocsr()
    C = float(cmeta["components"][0]["C"])
    difficulty = np.full((len(rows), 3), 1.0 / 3.0)
    for k in range(CROSS_FIT_FOLDS):
        fit, held = (fold != k) & has, fold == k
        cuts = np.quantile(f[fit], [1 / 3, 2 / 3])
        yc = np.where(f <= cuts[0], 2, np.where(f <= cuts[1], 1, 0))  # classes: easy, medium, hard
        model = LogisticRegression(C=C, max_iter=2000, random_state=0).fit(Xc[fit], yc[fit])
        difficulty[held] = 0.0  # a class absent from the fitted folds: P = 0
        difficulty[np.ix_(np.flatnonzero(held), model.classes_)] = model.predict_proba(Xc[held])
    log(f"  cross-fit difficulty done ({time.perf_counter() - t0:.0f}s)")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(partial, ids=np.array(ids), domain=domain, difficulty=difficulty)
        os.replace(partial, path)
    return _merge_cross_fit({"domain": domain[want], "difficulty": difficulty[want]}, in_sample, shipped)


def _merge_cross_fit(folded: Mapping[str, np.ndarray], in_sample: np.ndarray,
                     shipped: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every training row: the out-of-fold prediction where the heads trained on the question
    (`folded` holds those rows, in order), the shipped head's own output elsewhere."""
    out = {}
    for name, block in folded.items():
        full = np.array(shipped[name], dtype=np.float64, copy=True)
        if full.shape[0] != len(in_sample) or block.shape[0] != int(in_sample.sum()):
            raise ValueError(f"cross-fit '{name}': {block.shape[0]} folded rows for {int(in_sample.sum())} "
                             f"in-sample questions of {len(in_sample)}")
        full[in_sample] = block
        out[name] = full
    return out


# ------------------------------------------------------------------------------------------------
# rewards, steps and policies

@dataclass(frozen=True)
class Outcome:
    """What the learner is told about its pick."""

    correct: float
    prompt_tokens: float
    completion_tokens: float
    cost: float  # USD


class Step(Protocol):
    def __call__(self, index: int, model: str) -> Outcome: ...


class TableStep:
    """The recorded outcome of `model` on stream question `index`."""

    def __init__(self, table: Table):
        self.table = table
        self._col = {m: j for j, m in enumerate(table.models)}
        self._cost = table.cost

    def __call__(self, index: int, model: str) -> Outcome:
        j = self._col[model]
        t = self.table
        return Outcome(float(t.correct[index, j]), float(t.prompt_tokens[index]),
                       float(t.completion_tokens[index, j]), float(self._cost[index, j]))


class RewardModel:
    """The gateway's reward for {quality: 1, cost: w}: `bandits.contextual.reward_value`."""

    def __init__(self, models: Sequence[str], prices: np.ndarray, w: float):
        from sigroute.bandits.contextual import reward_value
        from sigroute.policies.schema import RewardSpec

        self.models = list(models)
        self.prices = np.asarray(prices, dtype=np.float64)
        self.w = float(w)
        self.spec = RewardSpec(quality=1.0, cost=self.w)
        self._value = reward_value
        self._col = {m: j for j, m in enumerate(self.models)}

    def share(self, model: str, outcome: Outcome) -> float:
        every = outcome.prompt_tokens * self.prices[:, 0] + outcome.completion_tokens * self.prices[:, 1]
        dearest = float(every.max())
        return float(every[self._col[model]]) / dearest if dearest > 0 else 0.0

    def __call__(self, model: str, outcome: Outcome) -> float:
        return self._value(self.spec, quality=outcome.correct, cost_share=self.share(model, outcome), latency_ms=None)

    def matrix(self, correct: np.ndarray, share: np.ndarray) -> np.ndarray:
        """The same reward for every (question, model) at once."""
        return (correct + self.w * (1.0 - np.clip(share, 0.0, 1.0))) / (1.0 + self.w)


@dataclass
class PolicySpec:
    name: str     # label in the results
    kind: str     # linucb | hybrid_linucb | thompson | epsilon_greedy | random
    params: dict = field(default_factory=dict)


class Learner:
    """A decision rule on an estimator (or uniform random), with a warm start in closed form.

    ``params["learn"]`` is the gateway's ``learn:`` option: ``reward`` (default) learns the blended
    reward `reward` gives; ``quality`` learns correctness only and adds the known cost term at
    selection, exactly as `bandits.contextual.known_terms` does in the gateway (the answer length of
    each model is the mean the learner has observed, warm start included)."""

    def __init__(self, spec: PolicySpec, dim: int, models: Sequence[str], prices: np.ndarray, seed: int,
                 ridge: float = 1.0, reward: "RewardModel | None" = None):
        from sigroute.bandits.linear import DisjointRidge, HybridRidge, ProfiledEstimator
        from sigroute.bandits.policies import EpsilonGreedyRule, LinUCBRule, ThompsonRule
        from sigroute.policies.schema.algorithms import DEFAULT_PRIOR

        self.spec = spec
        self.models = tuple(models)
        self.rng = random.Random(seed)
        self.estimator = None
        self.rule = None
        p = spec.params
        self.learns_quality = p.get("learn", "reward") == "quality"
        if self.learns_quality and reward is None:
            raise ValueError("learn: quality needs the reward (its cost weight) to score the known cost term")
        self.reward = reward
        self.prices = {m: (float(pr[0]), float(pr[1])) for m, pr in zip(models, prices)}
        if spec.kind == "random":
            return
        if spec.kind == "hybrid_linucb":  # model features [1, log(1 + input + output price)] as the gateway
            self.arm_features = {m: np.array([1.0, math.log1p(float(pr[0] + pr[1]))]) for m, pr in zip(models, prices)}
            self.estimator = HybridRidge(dim, arm_features=self.arm_features, ridge=ridge,
                                         prior=float(p.get("prior", DEFAULT_PRIOR)))
        else:
            self.estimator = DisjointRidge(dim, ridge=ridge, prior=float(p.get("prior", DEFAULT_PRIOR)))
        if spec.kind in ("linucb", "hybrid_linucb"):
            self.rule = LinUCBRule(self.estimator, alpha=float(p.get("alpha", 0.5)))
        elif spec.kind == "thompson":
            self.rule = ThompsonRule(self.estimator, v=float(p.get("v", 0.3)), propensity_draws=0,
                                     rng=np.random.default_rng(seed))
        elif spec.kind == "epsilon_greedy":
            self.rule = EpsilonGreedyRule(self.estimator, epsilon=float(p.get("epsilon", 0.1)),
                                          decay=float(p.get("decay", 0.0)), min_epsilon=float(p.get("min_epsilon", 0.0)),
                                          rng=random.Random(seed))
        else:
            raise ValueError(f"unknown policy kind '{spec.kind}'")
        if self.learns_quality:
            self.estimator = ProfiledEstimator(self.estimator)
            self.rule.estimator = self.estimator

    def warm_start(self, X: np.ndarray, R: np.ndarray, table: "Table | None" = None) -> None:
        """Learn every arm from full-information rows (X, reward matrix R (n, m)) at once; with
        ``learn: quality`` from `table`'s correctness and answer lengths instead of R."""
        from sigroute.bandits.warmstart import full_information_sums

        if self.estimator is None or len(X) == 0:
            return
        if self.learns_quality:
            if table is None:
                raise ValueError("learn: quality warm-starts from the table (correctness and answer lengths)")
            sums = full_information_sums(self.estimator, X, {m: table.correct[:, j] for j, m in enumerate(self.models)},
                                         completion_tokens={m: table.completion_tokens[:, j]
                                                            for j, m in enumerate(self.models)})
        else:
            sums = full_information_sums(self.estimator, X, {m: R[:, j] for j, m in enumerate(self.models)})
        self.estimator.load_sums(sums)

    def known(self, prompt_tokens: float | None):
        from sigroute.bandits.contextual import known_terms

        profiles = {m: self.estimator.profile(m)[1:] for m in self.models}
        return known_terms(self.reward.spec, self.models, self.prices, prompt_tokens, profiles)

    def choose(self, x: np.ndarray, prompt_tokens: float | None = None) -> str:
        if self.rule is None:
            return self.models[self.rng.randrange(len(self.models))]
        known = self.known(prompt_tokens) if self.learns_quality else None
        pick = self.rule.choose(x, self.models, known)
        self.last_scores = pick.scores
        return pick.arm

    def runner_up(self, chosen: str, candidates: Sequence[str]) -> str | None:
        """The best-scored of `candidates` other than `chosen` at the last choice (None: none)."""
        scores = getattr(self, "last_scores", None) or {}
        others = [m for m in candidates if m != chosen]
        return max(others, key=lambda m: scores.get(m, -math.inf)) if others else None

    def learn(self, model: str, x: np.ndarray, reward: float, outcome: "Outcome | None" = None) -> None:
        if self.estimator is None:
            return
        if self.learns_quality:
            self.estimator.observe(model, x, outcome.correct, completion_tokens=outcome.completion_tokens)
        else:
            self.estimator.observe(model, x, reward)


FEEDBACK_MODES = ("explicit", "implicit", "judge", "implicit+judge", "shadow", "implicit+judge+shadow")


@dataclass(frozen=True)
class FeedbackParams:
    """The simulated feedback sources (all flags of the command line, all in the JSON).

    user: after a wrong answer the user re-asks with probability `p_wrong`, after a right one with
    `p_right`; a re-ask carries a dissatisfaction cue ("that's wrong") with probability `q`; no
    re-ask means the user moved on. judge: a share `judge_share` of answers is judged, the verdict
    agreeing with the recorded correctness with probability `judge_agree`. shadow: with probability
    `shadow_share` a copy goes to a candidate the router did not choose — drawn uniformly
    (`shadow_pick` random) or the one it ranked next (runner_up) — and its answer is judged the
    same way."""

    p_wrong: float = 0.6
    p_right: float = 0.05
    q: float = 0.3
    judge_agree: float = 0.8
    judge_share: float = 0.1
    shadow_share: float = 0.1
    shadow_pick: str = "random"


class FeedbackModel:
    """What a learner is told about an answer under one feedback mode (`FEEDBACK_MODES`): the
    credited quality of `bandits.feedback` (default quality moved by the credit's weight; the
    strongest source of the answer wins), drawn from the simulated user and judge."""

    def __init__(self, mode: str, params: FeedbackParams, seed: int, default_quality: float = 0.5):
        from sigroute.bandits.feedback import FeedbackWeights

        parts = set(mode.split("+"))
        unknown = parts - {"explicit", "implicit", "judge", "shadow"}
        if unknown:
            raise ValueError(f"unknown feedback source(s) {sorted(unknown)} in '{mode}'")
        self.mode = mode
        self.explicit = "explicit" in parts or parts == {"shadow"}   # shadow alone: on top of explicit feedback
        self.implicit, self.judge, self.shadow = "implicit" in parts, "judge" in parts, "shadow" in parts
        self.params = params
        self.default = default_quality
        self.weights = FeedbackWeights()
        self.rng = np.random.default_rng([seed, 0x5EED])

    def _verdict(self, correct: float) -> float:
        return correct if self.rng.random() < self.params.judge_agree else 1.0 - correct

    def quality(self, correct: float) -> float:
        from sigroute.bandits.feedback import explicit_credit, implicit_credit, judge_credit, learned_quality, stronger

        p, credit = self.params, None
        if self.implicit:
            if self.rng.random() < (p.p_right if correct >= 0.5 else p.p_wrong):
                event = "dissatisfied" if self.rng.random() < p.q else "reask"
            else:
                event = "moved_on"
            credit = implicit_credit(event, self.weights)
        if self.judge and self.rng.random() < p.judge_share:
            judged = judge_credit(self._verdict(correct), self.weights)
            credit = judged if stronger(credit, judged) else credit
        if self.explicit:
            credit = explicit_credit(correct, self.weights)
        return learned_quality(self.default, credit) if credit is not None else self.default

    def shadow_arm(self, chosen: str, models: Sequence[str], runner_up: str | None = None) -> str | None:
        if not self.shadow or self.rng.random() >= self.params.shadow_share:
            return None
        if self.params.shadow_pick == "runner_up":
            return runner_up
        others = [m for m in models if m != chosen]
        return others[int(self.rng.integers(len(others)))] if others else None

    def shadow_quality(self, correct: float) -> float:
        from sigroute.bandits.feedback import judge_credit, learned_quality

        return learned_quality(self.default, judge_credit(self._verdict(correct), self.weights, shadow=True))


@dataclass
class Run:
    """One pass of a policy over the stream (in the given order)."""

    order: np.ndarray     # stream row per step
    chosen: np.ndarray    # model index per step
    correct: np.ndarray   # per step
    cost: np.ndarray      # per step, USD
    reward: np.ndarray    # per step
    shadow_cost: float = 0.0   # USD spent on shadow copies (not part of `cost`: the caller never sees them)


def run_policy(learner: Learner, X: np.ndarray, order: np.ndarray, step: Step, reward: RewardModel,
               prompt_tokens: np.ndarray | None = None, feedback: "FeedbackModel | None" = None) -> Run:
    """Stream `order` through `learner`: it sees x (and the question's prompt tokens, known before
    the call), picks, is told only its pick's outcome, learns. With `feedback`, what it learns is
    the quality that feedback source reports (`FeedbackModel`), not the recorded correctness; the
    router is still measured on the truth. A shadow copy's outcome is learned too and its cost
    counted apart (`Run.shadow_cost`)."""
    col = {m: j for j, m in enumerate(learner.models)}
    n = len(order)
    chosen = np.empty(n, dtype=np.int64)
    correct = np.empty(n)
    cost = np.empty(n)
    rew = np.empty(n)
    shadow_cost = 0.0
    for t, i in enumerate(order):
        x = X[i]
        model = learner.choose(x, None if prompt_tokens is None else float(prompt_tokens[i]))
        outcome = step(int(i), model)
        r = reward(model, outcome)
        if feedback is None:
            learner.learn(model, x, r, outcome)
        else:
            told = dataclasses.replace(outcome, correct=feedback.quality(outcome.correct))
            learner.learn(model, x, reward(model, told), told)
            other = feedback.shadow_arm(model, learner.models, learner.runner_up(model, learner.models))
            if other is not None:
                seen = step(int(i), other)
                shadow_cost += seen.cost
                judged = dataclasses.replace(seen, correct=feedback.shadow_quality(seen.correct))
                learner.learn(other, x, reward(other, judged), judged)
        chosen[t], correct[t], cost[t], rew[t] = col[model], outcome.correct, outcome.cost, r
    return Run(np.asarray(order), chosen, correct, cost, rew, shadow_cost)


def static_run(choice: np.ndarray, order: np.ndarray, correct: np.ndarray, cost: np.ndarray, R: np.ndarray) -> Run:
    """A router whose pick per stream row is fixed in advance (`choice[row]`)."""
    rows = np.asarray(order)
    picks = np.asarray(choice)[rows]
    return Run(rows, picks, correct[rows, picks], cost[rows, picks], R[rows, picks])


# ------------------------------------------------------------------------------------------------
# cost–accuracy geometry

def nondecreasing_hull(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """Vertices (sorted by cost) of the non-decreasing upper convex hull of (cost, accuracy) points:
    the best accuracy reachable at each cost by mixing operating points, never falling with cost."""
    pts = np.array(sorted({(float(c), float(a)) for c, a in points}), dtype=np.float64)
    if len(pts) == 0:
        raise ValueError("no points")
    # keep the best accuracy per cost, then the upper hull (Andrew's monotone chain)
    hull: list[tuple[float, float]] = []
    for c, a in pts:
        if hull and hull[-1][0] == c:
            if a <= hull[-1][1]:
                continue
            hull.pop()
        while len(hull) >= 2:
            (c1, a1), (c2, a2) = hull[-2], hull[-1]
            if (c2 - c1) * (a - a1) - (a2 - a1) * (c - c1) >= 0:  # hull[-1] is on or below the chord
                hull.pop()
            else:
                break
        hull.append((c, a))
    out = np.array(hull)
    top = int(np.argmax(out[:, 1]))  # beyond the best point, more cost buys nothing
    return out[:top + 1]


def hull_value(hull: np.ndarray, c: float) -> float:
    """Hull accuracy at cost c (flat right of the last vertex, NaN left of the first)."""
    if c < hull[0, 0] - 1e-15:
        return float("nan")
    return float(np.interp(c, hull[:, 0], hull[:, 1]))


def aiq(points: Sequence[tuple[float, float]], c_min: float, c_max: float,
        anchor: tuple[float, float] | None = None) -> float:
    """RouterBench's AIQ: ∫ hull over [c_min, c_max] / (c_max − c_min). `anchor` (the cheapest
    single model) joins the points; the hull counts 0 where it does not reach."""
    pts = list(points) + ([anchor] if anchor is not None else [])
    hull = nondecreasing_hull(pts)
    if c_max <= c_min:
        return hull_value(hull, c_max)
    xs = np.concatenate(([c_min], hull[(hull[:, 0] > c_min) & (hull[:, 0] < c_max), 0], [c_max]))
    ys = np.array([hull_value(hull, x) for x in xs])
    ys = np.where(np.isfinite(ys), ys, 0.0)
    # a NaN→value step at the hull's first vertex: integrate exactly by splitting there
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(xs[:-1], ys[:-1]), zip(xs[1:], ys[1:])):
        if x0 < hull[0, 0] < x1:
            area += (x1 - hull[0, 0]) * (hull[0, 1] + y1) / 2.0
        elif x1 <= hull[0, 0]:
            continue
        else:
            area += (x1 - x0) * (y0 + y1) / 2.0
    return float(area / (c_max - c_min))


def accuracy_at_budget(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """Best accuracy among the (cost, accuracy) points whose cost is at most `budget`."""
    ok = [a for c, a in points if c <= budget + 1e-12]
    return max(ok) if ok else None


def regret_curve(run: Run, oracle_reward: np.ndarray) -> np.ndarray:
    """Cumulative regret per step against the per-question oracle."""
    return np.cumsum(oracle_reward[run.order] - run.reward)


def checkpoints(n: int, every: int = CHECKPOINT_EVERY) -> np.ndarray:
    idx = list(range(every, n + 1, every))
    for extra in (1000, n):
        if extra <= n and extra not in idx:
            idx.append(extra)
    return np.array(sorted(idx))


# ------------------------------------------------------------------------------------------------
# baselines fitted on the training split

def oracle_choice(correct: np.ndarray, R: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per question the model with the best reward; ties go to the cheaper one."""
    best = R.max(axis=1, keepdims=True)
    tied = np.isclose(R, best, rtol=0, atol=1e-12)
    return np.argmin(np.where(tied, cost, np.inf), axis=1)


def per_category_choice(train: Table, stream: Table, w: float, expected_share: np.ndarray) -> tuple[np.ndarray, dict]:
    """For each category, the model with the best mean training reward at w (accuracy − w·share)."""
    overall = train.correct.mean(axis=0) - w * expected_share
    best_by = {}
    for c in sorted(set(train.categories)):
        rows = np.array([k == c for k in train.categories])
        score = train.correct[rows].mean(axis=0) - w * expected_share
        best_by[c] = int(np.argmax(score))
    fallback = int(np.argmax(overall))
    choice = np.array([best_by.get(c, fallback) for c in stream.categories])
    return choice, {c: train.models[j] for c, j in best_by.items()}


def expected_shares(train: Table, table: Table) -> np.ndarray:
    """(n, m) cost share a router can expect before answering: the question's prompt tokens and
    each model's median completion tokens on the training split."""
    med = np.median(train.completion_tokens, axis=0)
    return cost_share_matrix(table.prompt_tokens[:, None], np.broadcast_to(med, (table.n, len(med))), table.prices)


class SupervisedBaseline:
    """One logistic regression per model on embeddings: P(model answers correctly | question)."""

    def __init__(self, C_grid: Sequence[float] = SUPERVISED_C_GRID, seed: int = 0):
        self.C_grid = tuple(C_grid)
        self.seed = seed
        self.models: list = []
        self.chosen_C: list[float] = []
        self.cv_auc: list[float] = []

    def fit(self, E: np.ndarray, Y: np.ndarray) -> "SupervisedBaseline":
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.metrics import roc_auc_score

        self.models, self.chosen_C, self.cv_auc = [], [], []
        cv = StratifiedKFold(5, shuffle=True, random_state=self.seed)
        for j in range(Y.shape[1]):
            y = Y[:, j].astype(int)
            best = (-1.0, self.C_grid[0])
            for C in self.C_grid:
                p = cross_val_predict(LogisticRegression(C=C, max_iter=2000), E, y, cv=cv, method="predict_proba")[:, 1]
                best = max(best, (roc_auc_score(y, p), C))
            self.cv_auc.append(float(best[0]))
            self.chosen_C.append(float(best[1]))
            self.models.append(LogisticRegression(C=best[1], max_iter=2000).fit(E, y))
        return self

    def predict(self, E: np.ndarray) -> np.ndarray:
        return np.stack([m.predict_proba(E)[:, 1] for m in self.models], axis=1)


# ------------------------------------------------------------------------------------------------
# the evaluation

@dataclass
class Context:
    """Everything one evaluation needs, prepared once."""

    split: Split
    X_train: np.ndarray
    X_stream: np.ndarray
    warm: bool
    seeds: int
    ridge: float
    w_grid: tuple[float, ...] = W_GRID
    regret_w: float = 0.2
    step_factory: Callable[[Table], Step] = TableStep


def _stats(values: Sequence[float]) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": round(float(a.mean()), 6), "std": round(float(a.std()), 6)}


def sweep_policy(ctx: Context, spec: PolicySpec, *, seeds: Sequence[int] | None = None,
                 w_grid: Sequence[float] | None = None, feedback: str | None = None,
                 feedback_params: "FeedbackParams | None" = None) -> dict:
    """Runs `spec` over the stream for every w and seed: mean/std accuracy and cost per w (learning
    from the `feedback` mode's credits when given, else from the recorded correctness)."""
    stream, train = ctx.split.stream, ctx.split.train
    step = ctx.step_factory(stream)
    share_train = train.cost_share()
    seeds = list(range(ctx.seeds)) if seeds is None else list(seeds)
    points = []
    per_seed_points: dict[int, list] = {s: [] for s in seeds}
    for w in (ctx.w_grid if w_grid is None else w_grid):
        rm = RewardModel(stream.models, stream.prices, w)
        R_train = rm.matrix(train.correct, share_train)
        accs, costs = [], []
        for s in seeds:
            order = np.random.default_rng(s).permutation(stream.n)
            learner = Learner(spec, ctx.X_stream.shape[1], stream.models, stream.prices, seed=s, ridge=ctx.ridge,
                              reward=rm)
            if ctx.warm:
                learner.warm_start(ctx.X_train, R_train, train)
            fb = None if feedback is None else FeedbackModel(feedback, feedback_params or FeedbackParams(), s)
            run = run_policy(learner, ctx.X_stream, order, step, rm, stream.prompt_tokens, fb)
            accs.append(float(run.correct.mean()))
            costs.append(float(run.cost.sum()))
            per_seed_points[s].append((costs[-1], accs[-1]))
        points.append({"w": w, "accuracy": _stats(accs), "cost": _stats(costs),
                       "model_share": None})
    return {"points": points, "per_seed_points": per_seed_points}


def evaluate_feedback(ctx: Context, router: PolicySpec, modes: Sequence[str], params: FeedbackParams,
                      aiq_of: Callable, oracle_r: np.ndarray, R: np.ndarray, rm: RewardModel, explicit_aiq: float,
                      explicit_regret: float, cps: np.ndarray, log: Callable[[str], Any]) -> dict:
    """The router learning from each feedback mode instead of the recorded correctness: its AIQ
    (the same w sweep and seeds), the ratio to the explicit learner's, regret@1000 at the regret
    weight (measured on the truth), and what shadow copies cost."""
    stream, train = ctx.split.stream, ctx.split.train
    R_train = rm.matrix(train.correct, train.cost_share())
    out = {}
    for mode in modes:
        t0 = time.perf_counter()
        sweep = sweep_policy(ctx, router, feedback=mode, feedback_params=params)
        aiqs = [aiq_of(sweep["per_seed_points"][s]) for s in range(ctx.seeds)]
        runs = []
        for s in range(ctx.seeds):
            learner = Learner(router, ctx.X_stream.shape[1], stream.models, stream.prices, seed=s, ridge=ctx.ridge,
                              reward=rm)
            if ctx.warm:
                learner.warm_start(ctx.X_train, R_train, train)
            order = np.random.default_rng(s).permutation(stream.n)
            runs.append(run_policy(learner, ctx.X_stream, order, ctx.step_factory(stream), rm, stream.prompt_tokens,
                                   FeedbackModel(mode, params, s)))
        curves = _curves(runs, oracle_r, cps)
        mean_aiq = float(np.mean(aiqs))
        out[mode] = {"aiq": _stats(aiqs), "aiq_ratio_vs_explicit": round(mean_aiq / explicit_aiq, 4),
                     "regret_at_1000": curves["regret_at_1000"], "regret_at_1000_std": curves["regret_at_1000_std"],
                     "regret_ratio_vs_explicit": round(curves["regret_at_1000"] / explicit_regret, 4),
                     "accuracy_at_regret_w": curves["accuracy"],
                     "shadow_cost_usd": round(float(np.mean([r.shadow_cost for r in runs])), 6)}
        log(f"  feedback {mode}: AIQ {mean_aiq:.4f} ({out[mode]['aiq_ratio_vs_explicit']:.3f} of explicit), "
            f"regret@1000 {curves['regret_at_1000']} ({time.perf_counter() - t0:.1f}s)")
    return out


def evaluate(ctx: Context, router: PolicySpec, others: Sequence[PolicySpec], supervised: SupervisedBaseline | None,
             E_train: np.ndarray | None, E_stream: np.ndarray | None, log: Callable[[str], Any],
             feedback_modes: Sequence[str] = (), feedback_params: FeedbackParams = FeedbackParams()) -> dict:
    split = ctx.split
    stream, train = split.stream, split.train
    models = stream.models
    cost = stream.cost
    share = stream.cost_share()
    exp_share_train = expected_shares(train, train).mean(axis=0)
    exp_share_stream = expected_shares(train, stream)
    seeds = list(range(ctx.seeds))
    orders = {s: np.random.default_rng(s).permutation(stream.n) for s in seeds}
    cps = checkpoints(stream.n)

    # --- single models, cheapest, random, oracle ------------------------------------------
    single = {m: {"accuracy": round(float(stream.correct[:, j].mean()), 6), "cost": round(float(cost[:, j].sum()), 6)}
              for j, m in enumerate(models)}
    best_j = int(np.argmax(stream.correct.mean(axis=0)))
    best_model = models[best_j]
    best_acc = float(stream.correct[:, best_j].mean())
    best_cost = float(cost[:, best_j].sum())
    single_costs = cost.sum(axis=0)
    cheap_j = int(np.argmin(train.cost.mean(axis=0)))
    c_min, c_max = float(single_costs.min()), float(single_costs.max())
    anchor_j = int(np.argmin(single_costs))
    anchor = (float(single_costs[anchor_j]), float(stream.correct[:, anchor_j].mean()))

    # --- cost-weight sweeps of the static routers -------------------------------------------
    curves: dict[str, list] = {"oracle": [], "per_category": [], "supervised": []}
    p_sup = supervised.predict(E_stream) if supervised is not None else None
    for w in ctx.w_grid:
        rm = RewardModel(models, stream.prices, w)
        R = rm.matrix(stream.correct, share)
        o = oracle_choice(stream.correct, R, cost)
        rows = np.arange(stream.n)
        curves["oracle"].append({"w": w, "accuracy": float(stream.correct[rows, o].mean()), "cost": float(cost[rows, o].sum())})
        pc, _ = per_category_choice(train, stream, w, exp_share_train)
        curves["per_category"].append({"w": w, "accuracy": float(stream.correct[rows, pc].mean()),
                                       "cost": float(cost[rows, pc].sum())})
        if p_sup is not None:
            sc = np.argmax(p_sup - w * exp_share_stream, axis=1)
            curves["supervised"].append({"w": w, "accuracy": float(stream.correct[rows, sc].mean()),
                                         "cost": float(cost[rows, sc].sum())})
    pts = lambda curve: [(p["cost"], p["accuracy"]) for p in curve]  # noqa: E731
    aiq_of = lambda points: aiq(points, c_min, c_max, anchor)  # noqa: E731

    # --- the router's sweep ----------------------------------------------------------------
    t0 = time.perf_counter()
    sweep = sweep_policy(ctx, router)
    log(f"  router sweep ({len(ctx.w_grid)} w × {len(seeds)} seeds) in {time.perf_counter() - t0:.1f}s")
    mean_points = [(p["cost"]["mean"], p["accuracy"]["mean"]) for p in sweep["points"]]
    aiq_seeds = [aiq_of(sweep["per_seed_points"][s]) for s in seeds]
    operating = {}
    for b in BUDGETS:
        budget = b * best_cost
        ok = [p for p in sweep["points"] if p["cost"]["mean"] <= budget + 1e-12]
        top = max(ok, key=lambda p: p["accuracy"]["mean"]) if ok else None
        operating[f"{b:g}"] = None if top is None else {
            "w": top["w"], "accuracy": top["accuracy"], "cost": top["cost"],
            "accuracy_vs_best": round(top["accuracy"]["mean"] / best_acc, 4),
            "cost_vs_best": round(top["cost"]["mean"] / best_cost, 4)}

    # --- regret at the fixed weight: every policy and baseline, per seed --------------------
    rm = RewardModel(models, stream.prices, ctx.regret_w)
    R = rm.matrix(stream.correct, share)
    oracle_r = R.max(axis=1)
    R_train = rm.matrix(train.correct, train.cost_share())
    static_choices = {f"single:{m}": np.full(stream.n, j) for j, m in enumerate(models)}
    static_choices["cheapest"] = np.full(stream.n, cheap_j)
    static_choices["per_category"] = per_category_choice(train, stream, ctx.regret_w, exp_share_train)[0]
    if p_sup is not None:
        static_choices["supervised"] = np.argmax(p_sup - ctx.regret_w * exp_share_stream, axis=1)
    regret: dict[str, dict] = {}
    for name, choice in static_choices.items():
        runs = [static_run(choice, orders[s], stream.correct, cost, R) for s in seeds]
        regret[name] = _curves(runs, oracle_r, cps)
    for spec in [router, *others]:
        runs = []
        t0 = time.perf_counter()
        for s in seeds:
            learner = Learner(spec, ctx.X_stream.shape[1], models, stream.prices, seed=s, ridge=ctx.ridge, reward=rm)
            if ctx.warm:
                learner.warm_start(ctx.X_train, R_train, train)
            runs.append(run_policy(learner, ctx.X_stream, orders[s], ctx.step_factory(stream), rm, stream.prompt_tokens))
        regret[spec.name] = _curves(runs, oracle_r, cps)
        regret[spec.name]["model_share"] = {m: round(float(np.mean([np.mean(r.chosen == j) for r in runs])), 4)
                                            for j, m in enumerate(models)}
        log(f"  {spec.name}: regret@1000 {regret[spec.name]['regret_at_1000']}  "
            f"acc {regret[spec.name]['accuracy']['mean']:.4f}  ({time.perf_counter() - t0:.1f}s)")
    feedback = None
    if feedback_modes:
        feedback = evaluate_feedback(ctx, router, feedback_modes, feedback_params, aiq_of, oracle_r, R, rm,
                                     float(np.mean(aiq_seeds)), float(regret[router.name]["regret_at_1000"]), cps, log)

    return {
        "best_single": {"model": best_model, "accuracy": best_acc, "cost": best_cost},
        "single_models": single,
        "cheapest_model": models[cheap_j],
        "random": {"accuracy": round(float(stream.correct.mean()), 6),
                   "cost": round(float(cost.mean(axis=1).sum()), 6), "note": "expected value of uniform random"},
        "oracle_w0": curves["oracle"][0] if ctx.w_grid[0] == 0 else None,
        "cost_range": {"c_min": c_min, "c_max": c_max, "anchor": anchor},
        "curves": {"router": sweep["points"], **{k: v for k, v in curves.items() if v}},
        "router_per_seed_points": {str(s): v for s, v in sweep["per_seed_points"].items()},
        "aiq": {"router": _stats(aiq_seeds), "router_mean_curve": round(aiq_of(mean_points), 6),
                "per_category": round(aiq_of(pts(curves["per_category"])), 6),
                "supervised": round(aiq_of(pts(curves["supervised"])), 6) if curves["supervised"] else None,
                "oracle": round(aiq_of(pts(curves["oracle"])), 6),
                "single_models": round(aiq_of([(v["cost"], v["accuracy"]) for v in single.values()]), 6)},
        "operating_points": operating,
        "regret": regret,
        "feedback": feedback,
    }


def _curves(runs: Sequence[Run], oracle_r: np.ndarray, cps: np.ndarray) -> dict:
    reg = np.stack([regret_curve(r, oracle_r) for r in runs])
    acc = np.stack([np.cumsum(r.correct) / np.arange(1, len(r.correct) + 1) for r in runs])
    cst = np.stack([np.cumsum(r.cost) for r in runs])
    at = min(1000, reg.shape[1]) - 1
    return {
        "accuracy": _stats([r.correct.mean() for r in runs]),
        "cost": _stats([r.cost.sum() for r in runs]),
        "regret_total": _stats(reg[:, -1]),
        "regret_at_1000": round(float(reg[:, at].mean()), 3),
        "regret_at_1000_std": round(float(reg[:, at].std()), 3),
        "curve": {"t": cps.tolist(),
                  "regret": np.round(reg[:, cps - 1].mean(axis=0), 3).tolist(),
                  "accuracy": np.round(acc[:, cps - 1].mean(axis=0), 4).tolist(),
                  "cost": np.round(cst[:, cps - 1].mean(axis=0), 5).tolist()},
    }


# ------------------------------------------------------------------------------------------------
# hyper-parameters by inner validation (inside the training split only)

def inner_context(ctx: Context) -> Context:
    """The training split cut in two: warm start on its rest, stream its inner-validation part."""
    split = ctx.split
    inner = split.inner_validation
    tr, va = np.flatnonzero(~inner), np.flatnonzero(inner)
    sub = Split(split.train.subset(tr), split.train.subset(va), "inner validation", np.zeros(len(tr), dtype=bool))
    return Context(sub, ctx.X_train[tr], ctx.X_train[va], warm=ctx.warm, seeds=1, ridge=ctx.ridge, w_grid=ctx.w_grid,
                   regret_w=ctx.regret_w)


def inner_aiq(ctx: Context, spec: PolicySpec) -> tuple[float, list]:
    stream = ctx.split.stream
    cost = stream.cost.sum(axis=0)
    c_min, c_max = float(cost.min()), float(cost.max())
    j = int(np.argmin(cost))
    sweep = sweep_policy(ctx, spec, seeds=[0])
    points = [(p["cost"]["mean"], p["accuracy"]["mean"]) for p in sweep["points"]]
    return aiq(points, c_min, c_max, (c_min, float(stream.correct[:, j].mean()))), sweep["points"]


TUNE_FOLDS = 5   # hyper-parameters are chosen by k-fold cross-validation inside the training split


def cv_fold(question_id: str, folds: int) -> int:
    """The cross-validation fold of a training-split question (a hash of its id: stable, pool-free)."""
    return int(hashlib.sha256(f"cv:{question_id}".encode()).hexdigest(), 16) % folds


def fold_contexts(ctx: Context, folds: int) -> list[Context]:
    """The training split cut into `folds` parts by `cv_fold`: per part, a context that streams this
    part (one seed, the sweep of `ctx`), warm-started on the other parts when `ctx` warm-starts and
    cold otherwise (so a cold-start run chooses its hyper-parameters for a cold start)."""
    train = ctx.split.train
    fold = np.array([cv_fold(q, folds) for q in train.question_ids])
    out = []
    for k in range(folds):
        fit, held = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        if len(fit) == 0 or len(held) == 0:
            raise ValueError(f"cross-validation fold {k} is empty: too few training questions for {folds} folds")
        split = Split(train.subset(fit), train.subset(held), f"cv fold {k}", np.zeros(len(fit), dtype=bool))
        out.append(Context(split, ctx.X_train[fit], ctx.X_train[held], warm=ctx.warm, seeds=1, ridge=ctx.ridge,
                           w_grid=ctx.w_grid, regret_w=ctx.regret_w))
    return out


def tune(ctx: Context, log, alphas: Sequence[float] = ALPHA_GRID, ridges: Sequence[float] = RIDGE_GRID,
         learn: str = "reward", folds: int = TUNE_FOLDS) -> dict:
    """Choose LinUCB's alpha and the ridge λ inside the training split: the best mean AIQ over
    `folds`-fold cross-validation (each fold warm-starts on the rest and streams its part), or with
    ``folds=1`` the AIQ on the single inner-validation cut. One cut of ~1.6k questions moves AIQ by
    about as much as the settings differ; five folds validate every training question once.
    The inner cut's points at the chosen setting are kept for the honest operating points."""
    results = []
    best = None
    parts = fold_contexts(ctx, folds) if folds > 1 else None
    for ridge in ridges:
        for alpha in alphas:
            spec = PolicySpec("linucb", "linucb", {"alpha": alpha, "learn": learn})
            if parts is None:
                ictx = inner_context(ctx)
                ictx.ridge = ridge
                score, _ = inner_aiq(ictx, spec)
                row = {"alpha": alpha, "ridge": ridge, "inner_aiq": round(score, 6)}
            else:
                per_fold = []
                for part in parts:
                    part.ridge = ridge
                    per_fold.append(inner_aiq(part, spec)[0])
                score = float(np.mean(per_fold))
                row = {"alpha": alpha, "ridge": ridge, "cv_aiq": round(score, 6),
                       "cv_aiq_per_fold": [round(float(v), 6) for v in per_fold]}
            results.append(row)
            log(f"  tune: alpha={alpha} ridge={ridge} {'inner' if parts is None else f'{folds}-fold'} AIQ {score:.4f}")
            if best is None or score > best[0] + 1e-9:
                best = (score, alpha, ridge)
    ictx = inner_context(ctx)
    ictx.ridge = best[2]
    inner_score, inner_points = inner_aiq(ictx, PolicySpec("linucb", "linucb", {"alpha": best[1], "learn": learn}))
    chosen = {"alpha": best[1], "ridge": best[2], "folds": folds, "grid": results, "inner_points": inner_points,
              "inner_aiq": round(inner_score, 6)}
    if parts is not None:
        chosen["cv_aiq"] = round(best[0], 6)
    return chosen


def honest_operating_points(inner_points: list, inner_best_cost: float, stream_points: list, best_cost: float,
                            best_acc: float) -> dict:
    """For each budget, w chosen on the inner validation (best accuracy within the budget there),
    then that w's numbers on the stream."""
    out = {}
    by_w = {p["w"]: p for p in stream_points}
    for b in BUDGETS:
        ok = [p for p in inner_points if p["cost"]["mean"] <= b * inner_best_cost + 1e-12]
        if not ok:
            out[f"{b:g}"] = None
            continue
        w = max(ok, key=lambda p: p["accuracy"]["mean"])["w"]
        s = by_w[w]
        out[f"{b:g}"] = {"w": w, "accuracy": s["accuracy"], "cost": s["cost"],
                         "accuracy_vs_best": round(s["accuracy"]["mean"] / best_acc, 4),
                         "cost_vs_best": round(s["cost"]["mean"] / best_cost, 4)}
    return out


# ------------------------------------------------------------------------------------------------
# command line

def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="directory laid out like ../shared/data/routing")
    p.add_argument("--pool", default=",".join(DEFAULT_POOL), help="comma-separated models (columns of the tables)")
    p.add_argument("--seeds", type=int, default=5, help="random stream orders (and policy RNG seeds)")
    p.add_argument("--warm-start", action="store_true", help="learn from the training split before the stream")
    p.add_argument("--train", default=None, help="learn from this directory (same layout) instead; all of --data is streamed")
    p.add_argument("--features", default=DEFAULT_FEATURES, help="the router's feature groups (name[:dims][*weight],...)")
    p.add_argument("--alpha", type=float, default=None,
                   help="LinUCB alpha (default: chosen by cross-validation inside the training split)")
    p.add_argument("--ridge", type=float, default=None,
                   help="ridge λ (default: chosen by cross-validation inside the training split)")
    p.add_argument("--tune-folds", type=int, default=TUNE_FOLDS,
                   help=f"folds of the cross-validation that chooses alpha and ridge (default {TUNE_FOLDS}; "
                        f"1 = the single inner-validation cut)")
    p.add_argument("--alpha-grid", default=",".join(f"{a:g}" for a in ALPHA_GRID),
                   help="alphas the cross-validation chooses from (comma-separated)")
    p.add_argument("--learn", choices=("reward", "quality"), default="reward",
                   help="what the router's estimator learns (the gateway's `learn:` option): the blended reward, "
                        "or correctness only with the known cost term added at selection")
    p.add_argument("--regret-w", type=float, default=0.2, help="cost weight of the reward regret is measured in")
    p.add_argument("--policies", default=DEFAULT_POLICIES,
                   help="policies compared with the router (LinUCB) on regret")
    p.add_argument("--ablation", default="", help="';'-separated feature specs to also evaluate (router AIQ and operating points)")
    p.add_argument("--no-cross-fit", action="store_true",
                   help="warm-start on the shipped heads' in-sample outputs instead of cross-fitted ones")
    p.add_argument("--through-gateway", action="store_true",
                   help="also send the stream (seed 0, cost weight --regret-w) over HTTP through the real gateway "
                        "and the replay simulator, with quality sent back as feedback")
    p.add_argument("--gateway-questions", type=int, default=0,
                   help="with --through-gateway: only the first N questions of the stream (0 = all)")
    p.add_argument("--feedback", default="",
                   help="also let the router learn from these feedback modes instead of the recorded correctness, "
                        f"comma-separated (e.g. explicit,implicit,implicit+judge,shadow; sources: "
                        f"{', '.join(FEEDBACK_MODES)}); 'explicit' is the main run")
    defaults = FeedbackParams()
    for name, what in (("p_wrong", "P(re-ask | wrong answer)"), ("p_right", "P(re-ask | right answer)"),
                       ("q", "P(dissatisfaction cue | re-ask)"), ("judge_agree", "P(judge verdict = truth)"),
                       ("judge_share", "share of answers judged"), ("shadow_share", "share of requests shadowed")):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name),
                       help=f"{what} (default {getattr(defaults, name)})")
    p.add_argument("--shadow-pick", choices=("random", "runner_up"), default=defaults.shadow_pick,
                   help="which unchosen candidate a shadow copy goes to: drawn uniformly, or the one the router "
                        f"ranked next (the gateway's feedback.shadow.pick; default {defaults.shadow_pick})")
    p.add_argument("--frontiers", action="store_true",
                   help="also report the cost/quality dial's frontier and the accuracy-energy frontier "
                        "(benchmarks.frontiers, with this run's alpha and ridge; energy figures ASSUMED)")
    p.add_argument("--energy-csv", default=None,
                   help="with --frontiers: declared energy per model (benchmarks.frontiers.read_energy_csv) instead "
                        "of figures ASSUMED from parameter counts")
    p.add_argument("--cache", default=DEFAULT_CACHE, help="directory for the embedding cache")
    p.add_argument("--json", default=None, help="where to write the full result")
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    t_start = time.perf_counter()
    pool = [m.strip() for m in args.pool.split(",") if m.strip()]
    counter, tokenizer = prompt_token_counter()
    try:
        data = load_table(args.data, pool, count_tokens=counter, tokenizer_name=tokenizer)
        train_data = load_table(args.train, pool, count_tokens=counter, tokenizer_name=tokenizer) if args.train else None
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    split = make_split(data, train_data)
    warm = bool(args.warm_start or args.train)
    log(f"{data.n} questions with every pool model's result ({data.dropped_missing['questions']} dropped); "
        f"training split {split.train.n}, stream {split.stream.n}")

    from sigroute.signals.encoder import shared_encoder
    from sigroute.signals.learned import SignalResources
    from sigroute.signals.training import embed

    encoder = shared_encoder()
    cache = str(Path(args.cache).expanduser()) if args.cache else None
    t0 = time.perf_counter()
    E_train = embed(encoder, split.train.texts, cache)
    E_stream = embed(encoder, split.stream.texts, cache)
    log(f"embeddings ({encoder.model_name} {encoder.fingerprint}) in {time.perf_counter() - t0:.1f}s")
    bank = FeatureBank(SignalResources(encoder=encoder))
    cross_fit = None
    heads_data = head_training_sha256s()
    if not args.no_cross_fit and split.train.files.get("mmlu_pro/questions.jsonl.gz") in heads_data:
        log("cross-fitting the domain and complexity heads on the training split (cached after the first run) ...")
        root, mmlu = _resolve_dir(args.train or args.data)
        t0 = time.perf_counter()
        shipped = {name: bank.block(name, split.train.texts, E_train, split.train.prompt_tokens, "train")
                   for name in ("domain", "difficulty")}
        blocks = cross_fitted_head_blocks(split.train, mmlu / "questions.jsonl.gz", mmlu / "correctness.csv.gz",
                                          encoder, cache, shipped, log)
        for name, block in blocks.items():
            bank.override("train", name, block)
        cross_fit = (f"training-split `domain` and `difficulty` blocks are out-of-fold predictions of the shipped "
                     f"heads' recipes ({CROSS_FIT_FOLDS} folds by sha256('crossfit:' + id)); the stream uses the "
                     f"shipped heads")
        log(f"  done in {time.perf_counter() - t0:.1f}s")

    def build(groups):
        Xtr = bank.matrix(groups, split.train.texts, E_train, split.train.prompt_tokens, "train")
        Xst = bank.matrix(groups, split.stream.texts, E_stream, split.stream.prompt_tokens, "stream")
        return Xtr, Xst

    groups = parse_features(args.features)
    t0 = time.perf_counter()
    X_train, X_stream = build(groups)
    mismatch = bank.check(groups, split.stream.texts, E_stream, split.stream.prompt_tokens, X_stream,
                          range(0, split.stream.n, max(1, split.stream.n // 20)))
    log(f"features {features_text(groups)} (dim {X_stream.shape[1]}) in {time.perf_counter() - t0:.1f}s; "
        f"max |difference| to FeatureExtractor.vector_for_text {mismatch:.2e}")
    if mismatch > 1e-6:
        print(f"error: the benchmark's features differ from the gateway's by {mismatch}", file=sys.stderr)
        return 3

    extra = {
        "data": str(args.data), "train": args.train,
        "dropped_missing_results": {"data": data.dropped_missing,
                                    "train": train_data.dropped_missing if train_data else None},
        "features": features_text(groups), "feature_names": bank.extractor(groups).names,
        "feature_schema_id": bank.extractor(groups).schema_id,
        "encoder": {"model": encoder.model_name, "fingerprint": encoder.fingerprint, "max_tokens": encoder.max_tokens},
        "models_csv": data.models_table, "data_sha256": data.files,
        "train_sha256": train_data.files if train_data else None,
        "tokenizer": tokenizer,
        "cross_fitted_training_features": cross_fit,
    }
    out = run_benchmark(split, X_train, X_stream, E_train, E_stream, seeds=args.seeds, warm=warm, alpha=args.alpha,
                        ridge=args.ridge, regret_w=args.regret_w, policies=args.policies, learn=args.learn, log=log,
                        tune_folds=args.tune_folds,
                        tune_grid=(tuple(float(a) for a in args.alpha_grid.split(",") if a.strip()), RIDGE_GRID),
                        extra_config=extra, feedback_modes=[m.strip() for m in args.feedback.split(",") if m.strip()],
                        feedback_params=FeedbackParams(**{name: getattr(args, name)
                                                          for name in FeedbackParams.__dataclass_fields__}))

    ablation = []
    best = out["best_single"]
    for spec_text in [s for s in args.ablation.split(";") if s.strip()]:
        g = parse_features(spec_text)
        Xtr, Xst = build(g)
        actx = Context(split, Xtr, Xst, warm=warm, seeds=args.seeds, ridge=out["config"]["hyperparameters"]["ridge"],
                       regret_w=args.regret_w)
        t0 = time.perf_counter()
        router = PolicySpec("linucb", "linucb", {"alpha": out["config"]["hyperparameters"]["linucb_alpha"],
                                                 "learn": args.learn})
        sw = sweep_policy(actx, router)
        cr = out["cost_range"]
        aiqs = [aiq(sw["per_seed_points"][s], cr["c_min"], cr["c_max"], tuple(cr["anchor"])) for s in range(args.seeds)]
        row = {"features": features_text(g), "dim": int(Xst.shape[1]), "aiq": _stats(aiqs)}
        for b in BUDGETS:
            ok = [p for p in sw["points"] if p["cost"]["mean"] <= b * best["cost"] + 1e-12]
            row[f"accuracy_vs_best_at_{int(round(b * 100))}pct_cost"] = (
                round(max(p["accuracy"]["mean"] for p in ok) / best["accuracy"], 4) if ok else None)
        ablation.append(row)
        log(f"  ablation {row['features']}: AIQ {row['aiq']['mean']:.4f}  "
            f"{[row[f'accuracy_vs_best_at_{int(round(b * 100))}pct_cost'] for b in BUDGETS]} "
            f"({time.perf_counter() - t0:.1f}s)")
    out["ablation"] = ablation
    if args.through_gateway:
        out["through_gateway"] = through_gateway(args, split, X_train, X_stream, groups, out, bank, log)
        out["summary"]["through_gateway"] = {k: out["through_gateway"][k] for k in (
            "n_questions", "accuracy", "accuracy_offline", "same_pick_share", "outcome_agreement")}
    if args.frontiers:
        from benchmarks import frontiers

        hyper = out["config"]["hyperparameters"]
        log(f"frontiers (alpha {hyper['linucb_alpha']}, ridge {hyper['ridge']}, warm start, learn: quality) ...")
        try:
            out["frontiers"] = frontiers.frontiers(args.data, [m.strip() for m in args.pool.split(",") if m.strip()],
                                                   args.features, args.seeds, hyper["linucb_alpha"], hyper["ridge"],
                                                   args.cache, log, energy_csv=args.energy_csv)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        out["summary"]["dial_frontier"] = out["frontiers"]["summary"].get("dial")
        out["summary"]["energy_frontier"] = out["frontiers"]["summary"].get("energy")
    out["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    emit(_jsonable(out), args.json, log)
    return 0


DEFAULT_POLICIES = "thompson,epsilon_greedy,hybrid_linucb,random"


def through_gateway(args, split: Split, X_train: np.ndarray, X_stream: np.ndarray, groups, out: dict, bank,
                    log: Callable[[str], Any]) -> dict:
    """The LinUCB router of this run, served by the real gateway: seed 0's stream order at cost weight
    `--regret-w`, warm-started with the same statistics, next to the same run done offline."""
    from sigroute.bandits.contextual import LinUCBSelector
    from sigroute.bandits.warmstart import full_information_sums
    from benchmarks.routing_gateway import run_through_gateway
    from sigroute.gateway.sim.replay import load_outcomes
    from sigroute.policies.schema import Algorithm

    stream, train = split.stream, split.train
    hp = out["config"]["hyperparameters"]
    w = args.regret_w
    algorithm = {"linucb": {"alpha": hp["linucb_alpha"], "ridge": hp["ridge"], "learn": hp["learn"],
                            "features": [g.model_dump(exclude={"basis"} if g.basis == "random" else None)
                                         for g in groups],
                            "reward": {"quality": 1.0, "cost": w}}}
    rm = RewardModel(stream.models, stream.prices, w)
    R_train = rm.matrix(train.correct, train.cost_share())
    order = np.random.default_rng(0).permutation(stream.n)
    if args.gateway_questions:
        order = order[:args.gateway_questions]
    # offline twin of the gateway run
    learner = Learner(PolicySpec("linucb", "linucb", {"alpha": hp["linucb_alpha"], "learn": hp["learn"]}),
                      X_stream.shape[1], stream.models, stream.prices, seed=0, ridge=hp["ridge"], reward=rm)
    if out["config"]["warm_start"]:
        learner.warm_start(X_train, R_train, train)
    offline = run_policy(learner, X_stream, order, TableStep(stream), rm, stream.prompt_tokens)
    snapshot = None
    if out["config"]["warm_start"]:
        selector = LinUCBSelector(Algorithm.model_validate(algorithm).options,
                                  {m: None for m in stream.models}, resources=bank.resources, decision="route")
        if hp["learn"] == "quality":
            sums = full_information_sums(selector.learner("default").estimator, X_train,
                                         {m: train.correct[:, j] for j, m in enumerate(stream.models)},
                                         completion_tokens={m: train.completion_tokens[:, j]
                                                            for j, m in enumerate(stream.models)})
        else:
            sums = full_information_sums(selector.learner("default").estimator, X_train,
                                         {m: R_train[:, j] for j, m in enumerate(stream.models)})
        snapshot = {"format": "sigroute-bandit-state", "version": 1,
                    "keys": {selector.state_key("default"): {m: v.tolist() for m, v in sums.items()}}}
    outcomes = load_outcomes(args.data)
    items = [(stream.question_ids[i], stream.texts[i], outcomes.question(stream.question_ids[i]).answer) for i in order]
    log(f"through the gateway: {len(items)} questions over HTTP (replay simulator, feedback per answer) ...")
    t0 = time.perf_counter()
    result = run_through_gateway(outcomes, items, list(stream.models), algorithm, warm_snapshot=snapshot)
    records = result["records"]
    col = {m: j for j, m in enumerate(stream.models)}
    picks = np.array([col[r["model"]] for r in records])
    correct = np.array([r["correct"] for r in records])
    table_correct = stream.correct[order, picks]
    table_cost = stream.cost[order, picks]
    overheads = np.array([r["overhead_ms"] for r in records])
    summary = {
        "n_questions": len(records), "cost_weight": w, "seed": 0,
        "accuracy": round(float(correct.mean()), 4),
        "cost_table_usd": round(float(table_cost.sum()), 4),
        "cost_usage_usd": round(float(sum(r["cost"] for r in records)), 4),
        "accuracy_offline": round(float(offline.correct.mean()), 4),
        "cost_offline_usd": round(float(offline.cost.sum()), 4),
        "same_pick_share": round(float(np.mean(picks == offline.chosen)), 4),
        "outcome_agreement": round(float(np.mean(correct == table_correct)), 4),
        "overhead_ms_p50": round(float(np.nanpercentile(overheads, 50)), 3),
        "seconds": round(result["seconds"], 1),
        "learned_by_gateway": result["learned"],
        "note": "accuracy/cost of the gateway's picks; cost_table_usd prices them with the benchmark's cost model "
                "(cost_usage_usd with the simulator's usage counts, chars/4); same_pick_share compares with the "
                "offline run of the same order, warm start and reward; outcome_agreement checks that the "
                "simulator answered each question as recorded",
    }
    log(f"  gateway accuracy {summary['accuracy']} (offline {summary['accuracy_offline']}), same pick "
        f"{summary['same_pick_share']:.1%}, outcomes as recorded {summary['outcome_agreement']:.1%} "
        f"({time.perf_counter() - t0:.1f}s)")
    return summary


def run_benchmark(split: Split, X_train: np.ndarray, X_stream: np.ndarray, E_train: np.ndarray | None,
                  E_stream: np.ndarray | None, *, seeds: int = 5, warm: bool = True, alpha: float | None = None,
                  ridge: float | None = None, regret_w: float = 0.2, policies: str = DEFAULT_POLICIES, learn: str = "reward",
                  w_grid: Sequence[float] = W_GRID, tune_grid: tuple[Sequence[float], Sequence[float]] | None = None,
                  tune_folds: int = TUNE_FOLDS,
                  step_factory: Callable[[Table], Step] = TableStep, log: Callable[[str], Any] = lambda m: None,
                  extra_config: Mapping[str, Any] | None = None, feedback_modes: Sequence[str] = (),
                  feedback_params: FeedbackParams = FeedbackParams()) -> dict:
    """The benchmark's core on prepared features: tuning, baselines, sweeps, regret, summary."""
    ctx = Context(split, X_train, X_stream, warm=warm, seeds=seeds, ridge=ridge or 1.0, w_grid=tuple(w_grid),
                  regret_w=regret_w, step_factory=step_factory)
    tuning = None
    if alpha is None or ridge is None:
        t0 = time.perf_counter()
        alphas, ridges = tune_grid or (ALPHA_GRID, RIDGE_GRID)
        tuning = tune(ctx, log, alphas=[alpha] if alpha is not None else alphas,
                      ridges=[ridge] if ridge is not None else ridges, learn=learn, folds=tune_folds)
        log(f"tuning in {time.perf_counter() - t0:.1f}s: alpha {tuning['alpha']}, ridge {tuning['ridge']}")
    alpha = alpha if alpha is not None else tuning["alpha"]
    ctx.ridge = ridge if ridge is not None else tuning["ridge"]

    supervised = None
    if E_train is not None and E_stream is not None:
        log("supervised baseline (logistic regression per model on the training split's embeddings) ...")
        t0 = time.perf_counter()
        supervised = SupervisedBaseline().fit(E_train, split.train.correct)
        log(f"  C {supervised.chosen_C}, cross-validated AUC {np.round(supervised.cv_auc, 3).tolist()} "
            f"({time.perf_counter() - t0:.1f}s)")

    router = PolicySpec("linucb", "linucb", {"alpha": alpha, "learn": learn})
    defaults = {"thompson": PolicySpec("thompson", "thompson", {"v": 0.3}),
                "epsilon_greedy": PolicySpec("epsilon_greedy", "epsilon_greedy", {"epsilon": 0.1}),
                "hybrid_linucb": PolicySpec("hybrid_linucb", "hybrid_linucb", {"alpha": alpha}),
                "random": PolicySpec("random", "random")}
    others = [defaults[n.strip()] for n in policies.split(",") if n.strip()]
    log(f"evaluating on {split.stream.n} stream questions, {seeds} seeds, warm start {warm} ...")
    modes = [m for m in feedback_modes if m != "explicit"]   # explicit is the main run itself
    result = evaluate(ctx, router, others, supervised, E_train, E_stream, log, modes, feedback_params)
    best = result["best_single"]

    honest = None
    if tuning is not None and warm:
        inner_stream = inner_context(ctx).split.stream
        inner_best = int(np.argmax(inner_stream.correct.mean(axis=0)))
        honest = honest_operating_points(tuning["inner_points"], float(inner_stream.cost[:, inner_best].sum()),
                                         result["curves"]["router"], best["cost"], best["accuracy"])
    summary = build_summary(result, seeds=seeds, n_questions=split.stream.n, regret_w=regret_w, warm=warm)
    if result.get("feedback"):
        summary["feedback"] = {"explicit": {"aiq": summary["aiq_router"], "aiq_ratio_vs_explicit": 1.0,
                                            "regret_at_1000": result["regret"][router.name]["regret_at_1000"]},
                               **{m: {"aiq": round(v["aiq"]["mean"], 4), "aiq_ratio_vs_explicit": v["aiq_ratio_vs_explicit"],
                                      "regret_at_1000": v["regret_at_1000"]} for m, v in result["feedback"].items()}}
    config = {
        "pool": list(split.stream.models), "split": split.description,
        "n_training_split": split.train.n, "n_stream": split.stream.n, "feature_dim": int(X_stream.shape[1]),
        "hyperparameters": {"linucb_alpha": alpha, "ridge": ctx.ridge, "learn": learn, "thompson_v": 0.3, "epsilon": 0.1,
                            "chosen_by": (f"{tuning['folds']}-fold cross-validation inside the training split"
                                          if tuning and tuning["folds"] > 1 else
                                          "inner validation inside the training split" if tuning else "given"),
                            "supervised_C": supervised.chosen_C if supervised else None,
                            "supervised_cv_auc": supervised.cv_auc if supervised else None},
        "tuning": {k: v for k, v in (tuning or {}).items() if k != "inner_points"} or None,
        "reward": "bandits.contextual.reward_value with RewardSpec(quality=1, cost=w): "
                  "(correct + w·(1 − cost_share)) / (1 + w)",
        "w_grid": list(w_grid), "regret_w": regret_w,
        "cost_model": "(prompt_tokens × price_in + completion_tokens × price_out) / 1e6 USD; prompt tokens: the "
                      "question as one user message; completion tokens: output_chars / 4, 0/missing imputed as "
                      "the median over models.csv models that recorded the question, else the model's median",
        "missing_results": "questions where any pool model has no result are left out",
        "prices": {m: {"in": float(p[0]), "out": float(p[1])} for m, p in zip(split.stream.models, split.stream.prices)},
        "aiq_definition": "area under the non-decreasing convex hull of (total cost, accuracy) over "
                          "[cheapest, dearest single model cost] / that range; the cheapest single model joins "
                          "every router's points",
        "operating_point_rule": "best mean accuracy among the router's w points whose mean total cost <= "
                                "share x best single model's cost (chosen after the stream); see "
                                "honest_operating_points for w chosen on the training split",
        "seeds": seeds, "warm_start": warm,
        "feedback": {"modes": list(feedback_modes), **dataclasses.asdict(feedback_params),
                     "weights": dataclasses.asdict(FeedbackWeights()),
                     "rule": "learned quality = default_quality (0.5) + weight × (credit quality − default); the "
                             "strongest source of an answer wins (explicit > judge > implicit); shadow copies go "
                             "to a uniformly drawn unchosen candidate and are judged; hyper-parameters are the "
                             "explicit router's"} if feedback_modes else None,
        **dict(extra_config or {}),
    }
    return {"benchmark": "routing", "summary": summary, "config": config, **result,
            "honest_operating_points": honest,
            "targets": {"accuracy_vs_best_at_cost_share": TARGETS,
                        "aiq_router_above": ["per_category", "supervised"],
                        "regret_at_1000": "linucb below every static baseline, below epsilon_greedy and random"}}


def build_summary(result: dict, *, seeds: int, n_questions: int, regret_w: float, warm: bool) -> dict:
    best = result["best_single"]
    op = result["operating_points"]
    at = lambda b: None if op[f"{b:g}"] is None else op[f"{b:g}"]["accuracy"]["mean"]  # noqa: E731
    return {
        "best_single_model": best["model"],
        "best_single_accuracy": round(best["accuracy"], 4),
        "best_single_cost": round(best["cost"], 4),
        "router": "linucb",
        "router_accuracy_at_10pct_cost": _r(at(0.1)),
        "router_accuracy_at_30pct_cost": _r(at(0.3)),
        "router_accuracy_at_50pct_cost": _r(at(0.5)),
        "router_accuracy_vs_best_at_10_30_50pct_cost": [
            None if at(b) is None else round(at(b) / best["accuracy"], 4) for b in BUDGETS],
        "aiq_router": round(result["aiq"]["router"]["mean"], 4),
        "aiq_per_category_baseline": round(result["aiq"]["per_category"], 4),
        "aiq_supervised_baseline": _r(result["aiq"]["supervised"]),
        "regret_w": regret_w,
        "regret_at_1000": {k: v["regret_at_1000"] for k, v in result["regret"].items()},
        "seeds": seeds,
        "n_questions": n_questions,
        "warm_start": warm,
    }


def _r(x, nd=4):
    return None if x is None else round(float(x), nd)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


if __name__ == "__main__":
    raise SystemExit(main())
