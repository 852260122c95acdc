"""Cache quality: threshold calibration math, the leak-free split, the verifier's features and the
shipped verifier artifact. Fast: synthetic scores, invented pairs, random embeddings (no encoder)."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from sigroute.cache import calibrate, training, verifier
from sigroute.cache.calibrate import choose_threshold, curve, metrics_at
from sigroute.cache.training import split_of
from sigroute.cache.verifier import LEXICAL_FEATURES, HeadMismatch, load_verifier, pair_features, pair_lexical


# ------------------------------------------------------------------------------------------------
# calibrate: the math on synthetic scores


def test_metrics_at_counts():
    scores = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
    labels = [1, 1, 0, 1, 0, 0]
    m = metrics_at(scores, labels, 0.7)  # accepts 0.9, 0.8, 0.7: 2 true, 1 false
    assert m["accepted"] == 3
    assert m["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["false_hit_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["hit_rate"] == pytest.approx(0.5)
    none = metrics_at(scores, labels, 0.95)
    assert none["accepted"] == 0 and none["precision"] is None and none["recall"] == 0.0


def test_choose_threshold_maximizes_recall_under_precision():
    # 30 duplicates scored 0.70..0.99, 30 non-duplicates 0.00..0.29, plus 2 non-duplicates at 0.75 and 0.5
    pos = np.linspace(0.70, 0.99, 30)
    neg = np.r_[np.linspace(0.0, 0.29, 30), 0.75, 0.5]
    s = np.r_[pos, neg]
    y = np.r_[np.ones(30), np.zeros(32)]
    exact = choose_threshold(s, y, 1.0, min_accepted=5)
    assert exact["reached"] and exact["precision"] == 1.0
    assert exact["threshold"] > 0.75  # must exclude the 0.75 negative
    loose = choose_threshold(s, y, 0.9, min_accepted=5)
    assert loose["reached"] and loose["recall"] == 1.0  # accepting all 30 costs one false hit: 30/31
    assert loose["threshold"] == pytest.approx(0.70)
    assert loose["precision"] >= 0.9


def test_choose_threshold_unreachable_and_min_accepted():
    rng = np.random.default_rng(0)
    s = rng.random(200)
    y = rng.random(200) < 0.5  # scores carry no information
    out = choose_threshold(s, y, 0.99, min_accepted=20)
    assert out["reached"] is False and out["accepted"] >= 20
    # one lucky top pair must not set the threshold when min_accepted is larger
    s2 = np.r_[1.0, np.linspace(0, 0.9, 99)]
    y2 = np.r_[True, np.arange(99) % 2 == 0]
    out2 = choose_threshold(s2, y2, 0.99, min_accepted=10)
    assert out2["accepted"] >= 10
    with pytest.raises(ValueError):
        choose_threshold([0.1, 0.2], [0, 0])


def test_curve_is_ascending_and_recall_monotone():
    rng = np.random.default_rng(1)
    y = rng.random(500) < 0.4
    s = np.where(y, rng.normal(0.7, 0.1, 500), rng.normal(0.5, 0.1, 500))
    rows = curve(s, y)
    ts = [r["threshold"] for r in rows]
    assert ts == sorted(ts) and len(rows) >= 10
    recalls = [r["recall"] for r in rows]
    assert all(a >= b for a, b in zip(recalls, recalls[1:]))
    assert rows[0]["recall"] == 1.0
    assert "threshold" in calibrate.format_curve(rows).splitlines()[0]


# ------------------------------------------------------------------------------------------------
# the leak-free split


def test_split_keeps_components_whole_and_is_deterministic():
    pairs = [(f"How do I cook dish number {i}?", f"What is a recipe for dish {i}?") for i in range(300)]
    # a chain a-b, b-c, c-d across pairs: one component, whatever case/spacing the text has
    chain = [("Alpha question?", "beta  question?"), ("Beta question?", "gamma question?"),
             ("GAMMA question?", "delta question?")]
    parts = split_of(pairs + chain)
    assert parts == split_of(pairs + chain)
    assert len(set(parts[-3:])) == 1
    counts = {p: parts.count(p) for p in ("train", "validation", "test")}
    assert all(counts[p] > 20 for p in counts)  # roughly 60/20/20
    # the rule: sha256 of the component's smallest normalized question
    h = int(hashlib.sha256("alpha question?".encode()).hexdigest(), 16) % 100
    assert parts[-1] == training.part_of_hash(h)


def test_load_pairs_reads_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text('question1,question2,is_duplicate\n"Is it, maybe, rain?",Will it rain?,1\nA?,B?,0\n', encoding="utf-8")
    rows = training.load_pairs(path)
    assert [r["is_duplicate"] for r in rows] == [1, 0]
    assert rows[0]["question1"] == "Is it, maybe, rain?"
    assert all(r["split"] in ("train", "validation", "test") for r in rows)
    bad = tmp_path / "bad.csv"
    bad.write_text("q1,q2,label\nA,B,1\n", encoding="utf-8")
    with pytest.raises(ValueError):
        training.load_pairs(bad)


# ------------------------------------------------------------------------------------------------
# features


def test_pair_lexical_symmetric_and_catches_differences():
    f = dict(zip(LEXICAL_FEATURES, pair_lexical("How do I learn Python in 30 days?", "How can I learn Python in 60 days?")))
    assert f["num_mismatch"] == 1.0 and f["num_both"] == 1.0
    assert f["qword_mismatch"] == 0.0
    g = dict(zip(LEXICAL_FEATURES, pair_lexical("Why is the sky blue?", "Why is the sky not blue?")))
    assert g["neg_mismatch"] == 1.0
    h = dict(zip(LEXICAL_FEATURES, pair_lexical("Who founded Google?", "When was Google founded?")))
    assert h["first_qword_mismatch"] == 1.0 and h["cap_jaccard"] == 1.0
    same = dict(zip(LEXICAL_FEATURES, pair_lexical("What is love?", "what  is LOVE?")))
    assert same["word_jaccard"] == 1.0 and same["seq_ratio"] == 1.0
    for a, b in [("What is X?", "Is X real, or not?"), ("", "Anything at all"), ("1 2 3", "3 2 1")]:
        np.testing.assert_allclose(pair_lexical(a, b), pair_lexical(b, a), atol=1e-6)


def test_pair_features_layout():
    rng = np.random.default_rng(0)
    u = rng.normal(size=(3, 8)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = u[::-1].copy()
    X = pair_features(["a?", "b?", "c?"], ["c?", "b?", "a?"], u, v, {"lexical": True, "embedding": True})
    assert X.shape == (3, 1 + len(LEXICAL_FEATURES) + 16)
    np.testing.assert_allclose(X[1, 0], 1.0, atol=1e-6)  # same vector: cosine 1
    assert pair_features([], [], np.zeros((0, 8)), np.zeros((0, 8)), {}).shape[0] == 0


# ------------------------------------------------------------------------------------------------
# the shipped artifact


def _encoder_fingerprint() -> str:
    from sigroute.signals.encoder import EncoderUnavailable, fingerprint, resolve_model_path

    try:
        return fingerprint(resolve_model_path())
    except EncoderUnavailable as exc:  # pragma: no cover - the encoder package is a dependency
        pytest.skip(str(exc))


def test_shipped_verifier_loads_and_is_small():
    directory = verifier.DEFAULT_DIR
    size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
    assert size < 2_000_000
    fp = _encoder_fingerprint()
    v = load_verifier(fp)
    meta = v.meta
    assert meta["kind"] == verifier.KIND and meta["encoder"]["fingerprint"] == fp
    assert len(meta["data"]["files"][0]["sha256"]) == 64 and "component" in meta["split"]
    assert meta["metrics"]["validation"]["verifier"]["precision"] is not None
    assert 0.0 < v.threshold < 1.0
    assert v.input_dim == 1 + len(LEXICAL_FEATURES) + 2 * 384
    rng = np.random.default_rng(0)
    u = rng.normal(size=(4, 384)).astype(np.float32)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    a = ["How do I bake bread?", "What is 2+2?", "Why is the sky blue?", "Who wrote Hamlet?"]
    p = v.predict_proba(a, a, u, u)  # identical texts and vectors: clearly the same question
    assert p.shape == (4,) and np.all(p > 0.5)
    q = v.predict_proba(a, a[::-1], u, u[::-1])
    assert np.all((q >= 0) & (q <= 1))
    np.testing.assert_allclose(v.predict_proba(a[::-1], a, u[::-1], u), q, atol=1e-5)  # symmetric
    assert v.predict_proba([], [], np.zeros((0, 384)), np.zeros((0, 384))).shape == (0,)
    with pytest.raises(HeadMismatch):
        load_verifier("sha256:0000000000000000")


def test_missing_verifier_says_how_to_train(tmp_path):
    with pytest.raises(FileNotFoundError, match="cache.training"):
        load_verifier(None, tmp_path / "none")


# ------------------------------------------------------------------------------------------------
# training and the CLI end to end on invented pairs with a fake encoder


class _FakeEncoder:
    """Bag-of-words hashing 'encoder': similar wording → similar vectors (enough for a smoke test)."""

    model_name = "fake-bow"
    fingerprint = "sha256:fakefakefakefake"
    dimension = 384

    def encode(self, texts, batch_size=64):
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace("?", "").split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dimension] += 1.0
            out[i] /= max(np.linalg.norm(out[i]), 1e-6)
        return out


def _invented_pairs(path: Path, n: int = 240) -> None:
    topics = ["bread", "chess", "guitar", "python", "tennis", "coffee", "kites", "maps", "bees", "clocks"]
    lines = ["question1,question2,is_duplicate"]
    for i in range(n):
        t = f"{topics[i % len(topics)]}{i}"
        if i % 2 == 0:
            lines.append(f"How do I get better at {t}?,What is the best way to improve at {t}?,1")
        else:
            lines.append(f"How do I get better at {t}?,Why is {t} so popular in {1900 + i}?,0")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_training_and_calibrate_cli_round_trip(tmp_path, monkeypatch, capsys):
    pairs = tmp_path / "pairs.csv"
    _invented_pairs(pairs)
    out = tmp_path / "verifier"
    meta = training.train_verifier(pairs, out, encoder=_FakeEncoder(), grid=[(0.1, 20, 7, 0.0)])
    assert (out / "head.json").is_file() and (out / "weights.npz").is_file()
    saved = json.loads((out / "head.json").read_text())
    assert saved["encoder"]["fingerprint"] == _FakeEncoder.fingerprint
    assert saved["threshold"] == meta["threshold"]
    assert saved["samples"]["train"] > saved["samples"]["validation"] > 0
    v = load_verifier(_FakeEncoder.fingerprint, out)
    assert v.model_type == "gbdt" and len(v.roots) == 20

    import sigroute.signals.encoder as encoder_module
    monkeypatch.setattr(encoder_module, "shared_encoder", lambda *a, **k: _FakeEncoder())
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    calibrate.add_cache_parser(sub)
    args = parser.parse_args(["cache", "calibrate", "--pairs", str(pairs), "--target-precision", "0.9",
                              "--verifier", str(out), "--cache", "", "--json", str(tmp_path / "cal.json")])
    rc = args.func(args)
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert rc in (0, 1) and summary["reached"] == (rc == 0)
    assert summary["n_pairs"] == 240 and summary["scorer"] == "verifier"
    assert json.loads((tmp_path / "cal.json").read_text())["curve"]
    args = parser.parse_args(["cache", "calibrate", "--pairs", str(pairs), "--scorer", "cosine",
                              "--split", "validation", "--cache", ""])
    args.func(args)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scorer"] == "cosine"
