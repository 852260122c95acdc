"""Train the PII token tagger's head (`signals.pii_tagger`) and write it with its metadata.

    python -m sigroute.signals.pii_tagger_training --out signals/trained/pii_tagger \
        --data ../shared/data/pii/presidio_synth_dev.json

Data: a presidio-research JSON file (`full_text`, `spans[{entity_type, start_position,
end_position}]`; GPE is read as LOCATION, types other than the four are left untagged) plus the
hand-written sentences of `signals.pii_tagger_examples` and the template-generated ones of
`signals.pii_tagger_templates` (organisations, places, hard negatives; training split only). Each dataset
sentence goes to a split by the sha256 of its text: bucket = first 8 hex digits mod 100; below 70
train, below 80 validation, else test (held out: never trained or tuned on). The split rule, the
data file's sha256 and the counts are written into ``head.json``.

Training: the encoder's word-piece states of every sentence (`Encoder.encode_with_tokens`, one
pass per batch) plus the spelling features; a one-hidden-layer network (PyTorch, mini-batch AdamW,
class-weighted cross-entropy, fixed seed) over BIO labels. ``--members`` networks of
``hidden / members`` units are trained with successive seeds and joined into one hidden layer
whose output is their mean logits: the same inference cost as one network of ``--hidden`` units,
less variation from seed to seed (validation counts are small: 16 organisations, 38 places). Every piece of a word inside a gold
span carries its type (B on the span's first piece, I after). Decoding thresholds: per type, the
lowest threshold on a grid whose validation precision (span overlap, as in `benchmarks.pii`)
reaches ``--min-precision``; the held-out test split is scored once, with those thresholds, and
recorded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from sigroute.signals.pii_tagger import HEAD_FORMAT, LABELS, SPELLING_FEATURES, TAGGER_ENTITIES, PiiTagger

DEFAULT_DATA = "../shared/data/pii/presidio_synth_dev.json"
DATASET_TYPES = {"GPE": "LOCATION", "LOCATION": "LOCATION", "PERSON": "PERSON",
                 "STREET_ADDRESS": "STREET_ADDRESS", "ORGANIZATION": "ORGANIZATION"}
SPLIT_RULE = "int(sha256(full_text).hexdigest()[:8], 16) % 100: <70 train, <80 validation, else test"


def split_of(text: str) -> str:
    bucket = int(hashlib.sha256(text.encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if bucket < 70 else "validation" if bucket < 80 else "test"


def file_sha256(path: str | Path) -> str:
    return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_dataset(path: str | Path) -> list[dict]:
    """Rows {text, spans: [(type, start, end)] of the four tagger types, all: [(type, start, end)]}."""
    rows = []
    for row in json.loads(Path(path).read_text(encoding="utf-8")):
        spans = []
        for s in row.get("spans") or ():
            kind = DATASET_TYPES.get(s["entity_type"])
            if kind is not None:
                spans.append((kind, int(s["start_position"]), int(s["end_position"])))
        rows.append({"text": row["full_text"], "spans": spans})
    return rows


def splits(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {"train": [], "validation": [], "test": []}
    for row in rows:
        out[split_of(row["text"])].append(row)
    return out


def token_labels(states, spans) -> np.ndarray:
    """The BIO label index of every piece (a piece inside a gold span takes its type)."""
    labels = np.zeros(len(states.words), dtype=np.int64)
    for kind, start, end in spans:
        first = True
        for i, (a, b) in enumerate(states.offsets.tolist()):
            if a >= start and b <= end and b > a:
                labels[i] = LABELS.index(("B-" if first else "I-") + kind)
                first = False
    return labels


def encode_rows(encoder, rows: list[dict], batch: int = 32) -> list:
    states = []
    for i in range(0, len(rows), batch):
        _, chunk = encoder.encode_with_tokens([r["text"] for r in rows[i:i + batch]])
        states.extend(chunk)
    return states


def featurize(rows, states, with_labels=True, neighbors: int = 1):
    from sigroute.signals.pii_tagger import piece_features

    xs, ys = [], []
    for row, st in zip(rows, states):
        xs.append(piece_features(row["text"], st, neighbors))
        if with_labels:
            ys.append(token_labels(st, row["spans"]))
    return np.concatenate(xs), (np.concatenate(ys) if with_labels else None)


def train_head(x: np.ndarray, y: np.ndarray, hidden: int, epochs: int, seed: int, weight_decay: float,
               members: int = 1) -> dict:
    """Train `members` networks of `hidden // members` units each (seeds `seed`, `seed + 1`, …) and
    merge them into one network of `hidden` units whose logits are their mean: an ensemble that
    costs what one network of that width costs at inference, and varies less from seed to seed."""
    parts = [_train_member(x, y, hidden // members, epochs, seed + i, weight_decay) for i in range(members)]
    if members == 1:
        return parts[0]
    return {"w1": np.concatenate([p["w1"] for p in parts], axis=1), "b1": np.concatenate([p["b1"] for p in parts]),
            "w2": np.concatenate([p["w2"] for p in parts], axis=0) / members,
            "b2": np.mean([p["b2"] for p in parts], axis=0), "mean": parts[0]["mean"], "scale": parts[0]["scale"]}


def _train_member(x: np.ndarray, y: np.ndarray, hidden: int, epochs: int, seed: int, weight_decay: float) -> dict:
    import torch

    torch.manual_seed(seed)
    mean = x.mean(axis=0)
    scale = 1.0 / np.maximum(x.std(axis=0), 1e-3)
    xt = torch.from_numpy(((x - mean) * scale).astype(np.float32))
    yt = torch.from_numpy(y)
    counts = np.bincount(y, minlength=len(LABELS)).astype(np.float64)
    weights = torch.tensor(np.where(counts > 0, (counts.sum() / np.maximum(counts, 1)) ** 0.5, 1.0), dtype=torch.float32)
    weights = weights / weights[0]
    model = torch.nn.Sequential(torch.nn.Linear(x.shape[1], hidden), torch.nn.ReLU(), torch.nn.Dropout(0.2),
                                torch.nn.Linear(hidden, len(LABELS)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(yt), generator=generator)
        for start in range(0, len(order), 512):
            idx = order[start:start + 512]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
    model.eval()
    first, last = model[0], model[3]
    return {"w1": first.weight.detach().numpy().T.copy(), "b1": first.bias.detach().numpy().copy(),
            "w2": last.weight.detach().numpy().T.copy(), "b2": last.bias.detach().numpy().copy(),
            "mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}


def score_spans(rows, predicted: list[list], types=TAGGER_ENTITIES) -> dict[str, dict]:
    """Per-type precision/recall with `benchmarks.pii`'s rule (overlap with a gold span of the same type)."""
    counts = defaultdict(lambda: [0, 0, 0, 0])  # tp_pred, n_pred, tp_gold, n_gold
    for row, pred in zip(rows, predicted):
        gold = row["spans"]
        for p in pred:
            c = counts[p.type]
            c[1] += 1
            c[0] += any(g[0] == p.type and p.start < g[2] and g[1] < p.end for g in gold)
        for g in gold:
            c = counts[g[0]]
            c[3] += 1
            c[2] += any(p.type == g[0] and p.start < g[2] and g[1] < p.end for p in pred)
    out = {}
    for t in types:
        tp_p, n_p, tp_g, n_g = counts[t]
        out[t] = {"precision": round(tp_p / n_p, 4) if n_p else 1.0, "recall": round(tp_g / n_g, 4) if n_g else 1.0,
                  "predicted": n_p, "gold": n_g, "tp_predicted": tp_p, "tp_gold": tp_g}
    return out


def choose_thresholds(tagger: PiiTagger, rows, states, min_precision: float) -> dict[str, float]:
    """Per type: the lowest threshold whose validation precision reaches `min_precision`; where
    none does, the one with the best F1 (precision and recall weighed alike)."""
    grid = [round(v, 2) for v in np.arange(0.2, 0.96, 0.05)]
    chosen = {}
    for t in TAGGER_ENTITIES:
        pick, best_f1 = None, -1.0
        for threshold in grid:
            pred = [tagger.tag(r["text"], s, [t], {t: threshold}) for r, s in zip(rows, states)]
            m = score_spans(rows, pred, [t])[t]
            if m["precision"] >= min_precision:
                pick = threshold
                break
            f1 = 2 * m["precision"] * m["recall"] / max(m["precision"] + m["recall"], 1e-9)
            if f1 > best_f1:
                best_f1, fallback = f1, threshold
        chosen[t] = pick if pick is not None else fallback
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sigroute.signals.pii_tagger_training",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for head.npz and head.json")
    parser.add_argument("--data", default=DEFAULT_DATA, help="presidio-research JSON file")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units in all (split among --members)")
    parser.add_argument("--members", type=int, default=4,
                        help="networks trained with successive seeds and merged into one (mean logits)")
    parser.add_argument("--neighbors", type=int, default=1, help="pieces on each side whose features join a piece's")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-precision", type=float, default=0.92,
                        help="validation precision each type's threshold must reach")
    args = parser.parse_args(argv)

    from sigroute.signals.encoder import Encoder
    from sigroute.signals.pii_tagger_examples import examples

    t0 = time.perf_counter()
    encoder = Encoder()
    parts = splits(load_dataset(args.data))
    written = examples()
    train_rows = parts["train"] + written
    states = {name: encode_rows(encoder, rows) for name, rows in
              (("train", train_rows), ("validation", parts["validation"]), ("test", parts["test"]))}
    x, y = featurize(train_rows, states["train"], neighbors=args.neighbors)
    weights = train_head(x, y, args.hidden, args.epochs, args.seed, args.weight_decay, args.members)
    meta = {"format": HEAD_FORMAT, "labels": list(LABELS), "spelling_features": list(SPELLING_FEATURES),
            "thresholds": {t: 0.5 for t in TAGGER_ENTITIES}, "encoder_fingerprint": encoder.fingerprint,
            "neighbors": args.neighbors, "word_threshold": 0.5}
    tagger = PiiTagger(weights, meta)
    meta["thresholds"] = choose_thresholds(tagger, parts["validation"], states["validation"], args.min_precision)
    tagger = PiiTagger(weights, meta)

    def evaluate(name, rows):
        return score_spans(rows, [tagger.tag(r["text"], s) for r, s in zip(rows, states[name])])

    meta.update({
        "model": "one hidden layer (ReLU) softmax over BIO tags; inputs: last-layer word-piece state + spelling "
                 "features; the hidden layer joins `members` networks trained with seeds seed, seed+1, ... "
                 "(their mean logits)",
        "hidden": args.hidden, "members": args.members, "epochs": args.epochs, "weight_decay": args.weight_decay, "seed": args.seed,
        "min_validation_precision": args.min_precision,
        "data": {"path": Path(args.data).name, "sha256": file_sha256(args.data), "split": SPLIT_RULE,
                 "sentences": {k: len(v) for k, v in parts.items()},
                 "written_examples": len(written), "written_examples_split": "train",
                 "type_map": DATASET_TYPES},
        "validation": evaluate("validation", parts["validation"]),
        "test": evaluate("test", parts["test"]),
        "trained_s": round(time.perf_counter() - t0, 1),
    })
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / "head.npz", **{k: v.astype(np.float32) for k, v in weights.items()})
    (out / "head.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(json.dumps({"thresholds": meta["thresholds"], "validation": meta["validation"], "test": meta["test"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
