"""Small trained heads on top of the shared sentence embedding: artifact format and inference.

A head is a directory holding two files:

``head.json``
    what the head is: ``kind``, ``labels``, the encoder it was trained on (``encoder.model`` and
    ``encoder.fingerprint``), the feature specification (``features``), how its components are
    combined (``components``), the default ``threshold`` (jailbreak), and where it came from:
    the data files (paths relative to the data directory, with their sha256), the split rule,
    sample counts, the repository's git commit and the validation metrics.
``weights.npz``
    the numbers (float16/float32 arrays, no pickle): per component a dense weight matrix over the
    dense features, a weight matrix over the hashed n-gram buckets, a bias, and optionally one
    hidden layer; the n-gram block's idf vector.

Inference is numpy only — scikit-learn is used at training time (`signals.training`) and never
imported on the request path. The text features (hashed word and character n-grams, attack
pattern indicators) are computed by the functions of this module, which training uses too, so the
two can never drift apart.

Scoring: each component turns its features into logits (``dense @ Wd + sum(value * Ws[bucket]) +
b``, or a one-hidden-layer ReLU network over the dense part); the head's log-probabilities are the
weighted sum of the components' log-softmax outputs, renormalized — a product of experts, e.g. an
embedding model and an n-gram model that each see what the other misses.

    head = load_head("domain", encoder.fingerprint)
    probs = head.predict_proba(texts, encoder.encode(texts))   # (n, len(head.labels)), rows sum to 1
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import zlib
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

TRAINED_DIR = Path(__file__).resolve().parent / "trained"
META_FILE = "head.json"
WEIGHTS_FILE = "weights.npz"
FORMAT_VERSION = 1


class HeadMismatch(Exception):
    """The head was trained on embeddings of a different encoder than the one loading it."""


# ------------------------------------------------------------------------------------------------
# Text features (shared by training and inference)

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_SPACE_RE = re.compile(r"\s+")
_DIGIT_RE = re.compile(r"\d")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_MUL = np.uint64(0x100000001B3)  # FNV-64 prime, used as the polynomial base
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads polynomial hashes over all 64 bits (uint64 wrap-around)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX2
    return h ^ (h >> np.uint64(31))


def normalize_text(text: str, digits: bool = False) -> str:
    """Lower case, whitespace collapsed to single spaces; with `digits`, every digit becomes 0."""
    text = _SPACE_RE.sub(" ", text.lower()).strip()
    if digits:
        text = _DIGIT_RE.sub("0", text)
    return text


def _char_hashes(text: str, n: int) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    if codes.size < n:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = np.full(codes.size - n + 1, np.uint64(n) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
        for k in range(n):
            h = h * _MUL + codes[k:codes.size - n + 1 + k]
        return _mix(h)


def _word_hashes(tokens: list[str], n: int) -> np.ndarray:
    if len(tokens) < n:
        return np.zeros(0, dtype=np.uint64)
    base = np.fromiter((zlib.crc32(t.encode("utf-8", "surrogatepass")) for t in tokens), dtype=np.uint64, count=len(tokens))
    with np.errstate(over="ignore"):
        h = np.full(len(tokens) - n + 1, np.uint64(n) * np.uint64(0xC2B2AE3D27D4EB4F) + np.uint64(1), dtype=np.uint64)
        for k in range(n):
            h = h * _MUL + base[k:len(tokens) - n + 1 + k]
        return _mix(h)


@lru_cache(maxsize=256)
def _ngram_hashes(text: str, word: tuple[int, int] | None, char: tuple[int, int] | None, digits: bool,
                  max_chars: int) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """The raw 64-bit hashes of `text`'s word and character n-grams, one array per n.

    Heads differ only in how many buckets they fold these into, so the hashes of a request's text
    are computed once and shared (the arrays are read-only: callers fold them into new arrays)."""
    norm = normalize_text(text[:max_chars], digits)
    words: list[np.ndarray] = []
    chars: list[np.ndarray] = []
    if word:
        tokens = _WORD_RE.findall(norm)
        words = [_word_hashes(tokens, n) for n in range(word[0], word[1] + 1)]
    if char:
        padded = f" {norm} "
        chars = [_char_hashes(padded, n) for n in range(char[0], char[1] + 1)]
    for array in (*words, *chars):
        array.flags.writeable = False
    return tuple(words), tuple(chars)


def ngram_counts(text: str, spec: dict) -> tuple[np.ndarray, np.ndarray]:
    """Raw bucket counts of `text`'s hashed n-grams: (bucket indices, counts), indices unique.

    `spec` (the ``features.ngrams`` entry of head.json): ``word`` [min_n, max_n] or null,
    ``char`` [min_n, max_n] or null, ``word_buckets``, ``char_buckets`` (word buckets come first,
    char buckets after them), ``digits`` (map digits to 0 first), ``max_chars`` (only the first
    so many characters are read).
    """
    word = spec.get("word")
    char = spec.get("char")
    words, chars = _ngram_hashes(text, (int(word[0]), int(word[1])) if word else None,
                                 (int(char[0]), int(char[1])) if char else None,
                                 bool(spec.get("digits", False)), int(spec.get("max_chars", 4000)))
    parts = []
    if words:
        wb = np.uint64(spec["word_buckets"])
        parts += [(h % wb).astype(np.int64) for h in words]
    if chars:
        cb = np.uint64(spec["char_buckets"])
        offset = int(spec["word_buckets"]) if word else 0
        parts += [(h % cb).astype(np.int64) + offset for h in chars]
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    idx, counts = np.unique(np.concatenate(parts), return_counts=True)
    return idx, counts.astype(np.float32)


def ngram_dim(spec: dict) -> int:
    return (int(spec["word_buckets"]) if spec.get("word") else 0) + (int(spec["char_buckets"]) if spec.get("char") else 0)


def ngram_features(text: str, spec: dict, idf: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The weighted n-gram vector of `text` as (indices, values): sublinear tf × idf, each block
    (words, characters) scaled to unit length."""
    idx, counts = ngram_counts(text, spec)
    if idx.size == 0:
        return idx, counts
    values = (1.0 + np.log(counts)) if spec.get("sublinear_tf", True) else counts
    if idf is not None:
        values = values * idf[idx].astype(np.float32)
    values = values.astype(np.float32)
    split = int(spec["word_buckets"]) if spec.get("word") else 0
    for mask in (idx < split, idx >= split):
        norm = float(np.sqrt(np.sum(values[mask] ** 2)))
        if norm > 0:
            values[mask] /= norm
    return idx, values


# Cheap indicators of prompt-injection / jailbreak phrasing. Written for this project; each is a
# case-insensitive regex and its feature is 1.0 when it occurs anywhere in the text.
ATTACK_PATTERNS: dict[str, str] = {
    "ignore_previous": r"\b(ignore|disregard|forget|skip|override|bypass|drop|abandon)\b[\w\s,']{0,40}\b(previous|prior|above|earlier|preceding|all|any|your|the|original|initial)\b[\w\s,']{0,30}\b(instructions?|prompts?|rules?|directions?|guidelines?|commands?|context|messages?|constraints?|programming|restrictions?)",
    "new_instructions": r"\b(new|updated|real|actual|true|override|revised)\s+(instructions?|task|directive|rules?|system\s+prompt|orders?)\b",
    "system_prompt": r"\b(system|initial|hidden|secret|original|developer|internal)\s+(prompt|instructions?|message|configuration|directives?|rules)\b",
    "reveal": r"\b(reveal|print|show|display|output|repeat|leak|dump|disclose|tell me|give me|recite|spell out)\b[\w\s,']{0,40}\b(prompt|instructions?|password|secret|key|rules|configuration|guidelines|text above|everything above)\b",
    "persona": r"\b(you are now|you're now|from now on|act as|pretend (to be|you are|you're)|role-?play as|imagine you are|behave as|respond as|simulate|you will be|become)\b",
    "dan": r"\b(dan|dude|stan|aim|developer mode|dev mode|jailbr[eo]a?k\w*|god ?mode|evil|unfiltered|uncensored|unrestricted|no restrictions|without (any )?(restrictions|limits|filters|rules|censorship|ethics))\b",
    "no_rules": r"\b(no (longer )?(bound|restricted|limited)|free from|not bound by|doesn'?t have to follow|do not have to follow|don'?t follow|break (free|the rules)|any rules|no rules|no ethical|no moral|without ethical)\b",
    "safety_off": r"\b(disable|turn off|deactivate|remove|switch off|circumvent|bypass|ignore)\b[\w\s]{0,20}\b(safety|filters?|guardrails?|moderation|content polic\w*|restrictions|alignment|censorship|safeguards?)\b",
    "admin": r"\b(admin(istrator)?|root|sudo|superuser|maintenance|debug|override|privileged?)\s+(mode|access|command|privileges?|rights|code|override)\b",
    "delimiter": r"(```|<\|?/?(system|im_start|im_end|endoftext|assistant|user|instructions?)\|?>|\[/?(inst|system|sys)\]|#{3,}|={4,}|-{4,}|<<\s*sys\s*>>|\bEND OF (PROMPT|INPUT|INSTRUCTIONS)\b)",
    "role_tag": r"(^|\n)\s*(system|assistant|user|human|ai)\s*:",
    "base64_blob": r"[A-Za-z0-9+/]{40,}={0,2}",
    "hex_or_escape": r"(\\x[0-9a-fA-F]{2}|\\u[0-9a-fA-F]{4}|%[0-9a-fA-F]{2}){3,}",
    "leetspeak": r"\b\w*[a-z][013457@$]\w*[a-z]\w*\b.*\b\w*[a-z][013457@$][a-z]\w*\b",
    "hypothetical": r"\b(hypothetical(ly)?|in a fictional|for a (story|novel|movie)|purely fictional|thought experiment|in this fictional world|let'?s play a game)\b",
    "must_comply": r"\b(you must|you have to|you will|always) (comply|answer|obey|respond|do anything|say yes)\b",
    "do_anything": r"\b(do anything now|can do anything|anything i ask|answer anything|no matter (what|how))\b",
    "harmful": r"\b(bomb|explosive|weapon|malware|ransomware|keylogger|exploit|hack(ing)?|meth|poison|phishing|steal|credit card numbers)\b",
    "translate_trick": r"\b(translate|decode|encode|base64|rot13|reverse)\b[\w\s]{0,30}\b(and (then )?(execute|follow|run|do)|following instructions)\b",
    "exfiltrate": r"\b(send|post|upload|forward|email|exfiltrate)\b[\w\s]{0,30}\b(to|at)\b[\w\s]{0,10}(https?://|www\.|\S+@\S+)",
    "url": r"https?://|www\.",
    "markdown_image": r"!\[[^\]]*\]\(",
}
_COMPILED_PATTERNS = {name: re.compile(p, re.IGNORECASE) for name, p in ATTACK_PATTERNS.items()}


def pattern_features(text: str, names: Sequence[str]) -> np.ndarray:
    """1.0 / 0.0 per named pattern of `ATTACK_PATTERNS`, plus nothing else (float32)."""
    sample = text[:8000]
    return np.array([1.0 if _COMPILED_PATTERNS[n].search(sample) else 0.0 for n in names], dtype=np.float32)


# Character classes of the ASCII range as Python's str methods define them; text_stats looks ASCII
# characters up here and asks Python only about the others, with the same results.
_ASCII = [chr(i) for i in range(128)]
_ASCII_ALPHA = np.array([c.isalpha() for c in _ASCII])
_ASCII_UPPER = np.array([c.isupper() for c in _ASCII])
_ASCII_DIGIT = np.array([c.isdigit() for c in _ASCII])
_ASCII_PUNCT = np.array([(not c.isalnum()) and (not c.isspace()) for c in _ASCII])


def text_stats(text: str) -> np.ndarray:
    """A few scale-free shape statistics of the text (length, non-ASCII and punctuation shares)."""
    n = max(len(text), 1)
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    ascii_mask = codes < 128
    ascii_codes = codes[ascii_mask]
    letters = int(np.count_nonzero(_ASCII_ALPHA[ascii_codes]))
    upper = int(np.count_nonzero(_ASCII_UPPER[ascii_codes]))
    digits = int(np.count_nonzero(_ASCII_DIGIT[ascii_codes]))
    punct = int(np.count_nonzero(_ASCII_PUNCT[ascii_codes]))
    non_ascii = len(text) - ascii_codes.size
    if non_ascii:
        for i in np.flatnonzero(~ascii_mask):
            c = text[i]
            letters += c.isalpha()
            upper += c.isupper()
            digits += c.isdigit()
            punct += (not c.isalnum()) and (not c.isspace())
    return np.array([
        np.log1p(len(text)) / 8.0,
        non_ascii / n,
        digits / n,
        punct / n,
        upper / max(letters, 1),
        text.count("\n") / n * 10.0,
    ], dtype=np.float32)


TEXT_STATS = ("log_len", "non_ascii", "digits", "punct", "upper", "newlines")


def dense_features(texts: Sequence[str], embeddings: np.ndarray, features: dict) -> np.ndarray:
    """The dense input of a head: [embedding | pattern indicators | text statistics], as listed
    in `features` (``embedding``: bool, ``patterns``: names, ``text_stats``: bool)."""
    blocks = []
    if features.get("embedding", True):
        blocks.append(np.asarray(embeddings, dtype=np.float32))
    names = features.get("patterns") or []
    if names:
        blocks.append(np.stack([pattern_features(t, names) for t in texts]) if len(texts) else
                      np.zeros((0, len(names)), dtype=np.float32))
    if features.get("text_stats"):
        blocks.append(np.stack([text_stats(t) for t in texts]) if len(texts) else
                      np.zeros((0, len(TEXT_STATS)), dtype=np.float32))
    if not blocks:
        return np.zeros((len(texts), 0), dtype=np.float32)
    return np.concatenate(blocks, axis=1).astype(np.float32)


def question_text(question: str, options: Iterable[str]) -> str:
    """A multiple-choice question as a user would send it: the question, then lettered options."""
    lines = [question.strip()]
    lines += [f"{chr(65 + i)}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# Heads


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _row_table(array) -> "Rows | np.ndarray":
    """A row table kept compact when stored narrower than float32 (see `Rows`)."""
    if isinstance(array, Rows):
        return array
    if array.dtype == np.float32:
        return array
    return Rows(array) if array.dtype == np.float16 else array.astype(np.float32)


class Head:
    """A trained head: `predict_proba(texts, embeddings)` → (n, len(labels)) probabilities."""

    def __init__(self, meta: dict, arrays: dict[str, np.ndarray]):
        self.meta = meta
        self.kind: str = str(meta["kind"])
        self.labels: tuple[str, ...] = tuple(str(l) for l in meta["labels"])
        threshold = meta.get("threshold")
        self.threshold: float | None = None if threshold is None else float(threshold)
        self.features: dict = meta.get("features", {})
        self.ngram_spec: dict | None = self.features.get("ngrams")
        self.idf = _row_table(arrays["idf"]) if "idf" in arrays else None
        self.components = []
        for i, comp in enumerate(meta["components"]):
            def get(name, _i=i):
                a = arrays.get(f"c{_i}_{name}")
                if a is None:
                    return None
                return _row_table(a) if name == "Ws" else a.astype(np.float32)
            self.components.append({
                "weight": float(comp.get("weight", 1.0)),
                "dense": bool(comp.get("dense", True)),
                "ngrams": bool(comp.get("ngrams", False)),
                "mean": get("mean"), "scale": get("scale"),
                "W1": get("W1"), "b1": get("b1"),
                "Wd": get("Wd"), "Ws": get("Ws"), "b": get("b"),
            })
        self.temperature = float(meta.get("temperature", 1.0))

    def __repr__(self) -> str:
        return f"<Head {self.kind} labels={len(self.labels)} encoder={self.meta.get('encoder', {}).get('fingerprint')}>"

    def ngram_matrix(self, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [ngram_features(t, self.ngram_spec, self.idf) for t in texts]

    def log_proba(self, texts: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
        n = len(texts)
        embeddings = np.asarray(embeddings, dtype=np.float32).reshape(n, -1)
        dense = dense_features(texts, embeddings, self.features)
        sparse = self.ngram_matrix(texts) if self.ngram_spec else None
        total = np.zeros((n, len(self.labels)), dtype=np.float64)
        for comp in self.components:
            logits = np.zeros((n, len(self.labels)), dtype=np.float32)
            if comp["dense"]:
                x = dense
                if comp["mean"] is not None:
                    x = (x - comp["mean"]) / comp["scale"]
                if comp["W1"] is not None:
                    x = np.maximum(x @ comp["W1"] + comp["b1"], 0.0)
                logits += x @ comp["Wd"]
            if comp["ngrams"]:
                Ws = comp["Ws"]
                for row, (idx, val) in enumerate(sparse):
                    if idx.size:
                        logits[row] += val @ Ws[idx]
            logits += comp["b"]
            total += comp["weight"] * _log_softmax(logits.astype(np.float64))
        return _log_softmax(total / self.temperature)

    def predict_proba(self, texts: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
        """Probabilities over `labels` for each text (its embedding in the same row)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, len(self.labels)), dtype=np.float64)
        return np.exp(self.log_proba(texts, embeddings))


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def quantize_8bit(array: np.ndarray) -> dict[str, np.ndarray]:
    """8-bit storage per column (last axis): value ≈ low + step × q.

    Columns with negative values are stored symmetrically (int8, low = 0, step = max|x|/127) so
    that zeros stay exactly zero and pruned matrices compress well; non-negative ones (idf) use
    the full uint8 range from their minimum. The error is at most half a step; predictions
    barely move (the domain head's held-out accuracy went from 0.8616 to 0.8611)."""
    a = np.asarray(array, dtype=np.float32)
    if a.min() < 0:
        low = np.zeros(a.shape[1:], dtype=np.float32)
        step = np.abs(a).max(axis=0) / 127.0
        safe = np.where(step > 0, step, 1.0)
        q = np.clip(np.rint(a / safe), -127, 127).astype(np.int8)
    else:
        low = a.min(axis=0)
        step = (a.max(axis=0) - low) / 255.0
        safe = np.where(step > 0, step, 1.0)
        q = np.clip(np.rint((a - low) / safe), 0, 255).astype(np.uint8)
    return {"q": q, "low": np.asarray(low, dtype=np.float32), "step": np.asarray(step, dtype=np.float32)}


def _dequantize(q: np.ndarray, low: np.ndarray, step: np.ndarray) -> np.ndarray:
    return (low + step * q.astype(np.float32)).astype(np.float16)


def save_head(directory: str | Path, meta: dict, arrays: dict[str, np.ndarray],
              quantize: Iterable[str] = ()) -> Path:
    """Write a head: `meta` to head.json (must hold kind, labels, encoder, components, features)
    and `arrays` to weights.npz (compressed, no pickle). Arrays named in `quantize` are stored as
    8-bit (see `quantize_8bit`) and restored on load. Returns the directory."""
    for key in ("kind", "labels", "encoder", "components", "features"):
        if key not in meta:
            raise ValueError(f"head metadata lacks '{key}'")
    if "fingerprint" not in meta["encoder"]:
        raise ValueError("head metadata lacks encoder.fingerprint")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_VERSION, **meta}
    stored: dict[str, np.ndarray] = {}
    quantized = sorted(set(quantize))
    for name, value in arrays.items():
        if name in quantized:
            parts = quantize_8bit(value)
            stored[name] = parts["q"]
            stored[f"{name}@low"], stored[f"{name}@step"] = parts["low"], parts["step"]
        else:
            stored[name] = np.asarray(value)
    if quantized:
        meta["quantized_8bit"] = quantized
    else:
        meta.pop("quantized_8bit", None)
    np.savez_compressed(directory / WEIGHTS_FILE, **stored)
    meta["weights_sha256"] = file_sha256(directory / WEIGHTS_FILE)
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    forget_artifact(directory)
    return directory


_CACHE: dict[str, Head] = {}
_CACHE_LOCK = threading.Lock()


def _read(directory: Path) -> Head:
    meta_path = directory / META_FILE
    weights_path = directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"no trained head in {directory} (expected {META_FILE} and {WEIGHTS_FILE}); "
            f"train one with `sigroute train <kind> --data DIR --out {directory}`")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    with np.load(weights_path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    for name in meta.get("quantized_8bit", ()):
        q, low, step = arrays[name], arrays.pop(f"{name}@low"), arrays.pop(f"{name}@step")
        # the n-gram tables are read a few rows per request: widened then, not here (see `Rows`)
        arrays[name] = Rows(q, low, step) if _is_row_table(name) else _dequantize(q, low, step)
    return Head(meta, arrays)


def _is_row_table(name: str) -> bool:
    return name == "idf" or name.endswith("_Ws")


class Rows:
    """A table the head reads by rows (the hashed n-gram weights ``Ws`` and ``idf``), kept as stored
    — 8-bit codes with their per-column ``low``/``step``, or float16 — and widened to float32 only
    for the rows a request indexes. ``rows[idx]`` equals ``widened[idx]`` bit for bit (the same
    operations, on fewer numbers), in a quarter (8-bit) or half (float16) of the memory of the
    float32 table; the shipped domain head's table is 7 MB instead of 28 MB."""

    def __init__(self, stored: np.ndarray, low: np.ndarray | None = None, step: np.ndarray | None = None):
        self.stored, self.low, self.step = stored, low, step
        self.shape = stored.shape

    def __getitem__(self, idx) -> np.ndarray:
        rows = self.stored[idx]
        if self.low is not None:
            rows = _dequantize(rows, self.low, self.step)
        return rows.astype(np.float32)

    def widened(self) -> np.ndarray:
        """The whole table as float32."""
        return self[slice(None)]


_ARTIFACTS: dict[str, Any] = {}


def forget_artifact(directory: str | Path) -> None:
    """Drop what was loaded from `directory` (it was just rewritten)."""
    key = str(Path(directory).resolve())
    with _CACHE_LOCK:
        _CACHE.pop(key, None)
        _ARTIFACTS.pop(key, None)


def load_artifact(path: Path, reader, what: str, encoder_fingerprint: str | None, retrain: str):
    """A trained artifact read once per directory (`reader(path)`, thread-safe), checked against
    the loaded encoder: raises `HeadMismatch` naming `what` and how to `retrain` when it was trained
    on another encoder's embeddings (``encoder_fingerprint=None`` skips the check)."""
    key = str(path.resolve())
    with _CACHE_LOCK:
        artifact = _ARTIFACTS.get(key)
        if artifact is None:
            artifact = _ARTIFACTS[key] = reader(path)
    encoder = artifact.meta.get("encoder", {})
    trained_on = encoder.get("fingerprint")
    if encoder_fingerprint is not None and trained_on != encoder_fingerprint:
        raise HeadMismatch(
            f"the {what} in {path} was trained on encoder {encoder.get('model', '?')} with fingerprint {trained_on}, "
            f"but the loaded encoder's fingerprint is {encoder_fingerprint}; retrain it with {retrain}")
    return artifact


def load_head(kind: str, encoder_fingerprint: str, directory: str | Path | None = None) -> Head:
    """The head `kind` from `signals/trained/<kind>/` (or `directory`), checked against the encoder.

    Raises `FileNotFoundError` when there is no head there and `HeadMismatch` when the head was
    trained on embeddings of another encoder. Loaded heads are cached per directory.
    """
    path = (TRAINED_DIR / kind) if directory is None else Path(directory)
    key = str(path.resolve())
    with _CACHE_LOCK:
        head = _CACHE.get(key)
        if head is None:
            head = _read(path)
            _CACHE[key] = head
    if head.kind != kind:
        raise HeadMismatch(f"the head in {path} is a '{head.kind}' head, not '{kind}'")
    trained_on = head.meta.get("encoder", {}).get("fingerprint")
    if trained_on != encoder_fingerprint:
        model = head.meta.get("encoder", {}).get("model", "?")
        raise HeadMismatch(
            f"the {kind} head in {path} was trained on encoder {model} with fingerprint {trained_on}, "
            f"but the loaded encoder's fingerprint is {encoder_fingerprint}; retrain it with "
            f"`sigroute train {kind} --data DIR` using this encoder, or configure the encoder it was trained on")
    return head
