"""The PII tagger's generated training sentences and the decoding rules added with them.

What is proven here:
- `signals.pii_tagger_templates.generated()` is deterministic, every mark parses into a span of a
  tagger type whose value is the marked text, organisations and places are plentiful, hard
  negatives and lower-cased chat-style sentences are among them, and no sentence is one of the
  development PII sentences (when ../shared/data is present);
- decoding: a place written on an address's line after a comma joins the address, on its own line
  it stays a place; a run of words splits where a word begins an entity of another type;
- the `inner_capital` spelling feature marks CamelCase handles, and a head trained on another
  feature list is refused;
- the shipped head finds organisations and places in sentences written for this test (names not
  in the template lists) and leaves CamelCase handles and job titles alone.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from sigroute.signals.pii_tagger import (SHIPPED_DIR, TAGGER_ENTITIES, PiiTagger, TaggedSpan, TaggerUnavailable,
                                         _places_joined_to_addresses, spelling_features)
from sigroute.signals.pii_tagger_examples import EXAMPLES, examples, parse
from sigroute.signals.pii_tagger_templates import generated
from tests.test_pii_tagger import encoder, find, tagger  # noqa: F401   (fixtures: the shipped tagger)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "pii" / "presidio_synth_dev.json"


def test_generated_sentences_are_deterministic_and_well_marked():
    first, second = generated(), generated()
    assert first == second and len(first) > 500
    kinds = Counter()
    negatives = lowered = 0
    for marked in first:
        text, spans = parse(marked)
        assert "[[" not in text and "]]" not in text, marked
        negatives += not spans
        lowered += text == text.lower() and bool(spans)
        for kind, start, end in spans:
            assert kind in TAGGER_ENTITIES, marked
            value = text[start:end]
            assert value and value == value.strip(), marked
            kinds[kind] += 1
    assert kinds["ORGANIZATION"] >= 200 and kinds["LOCATION"] >= 250 and kinds["PERSON"] >= 100
    assert negatives >= 80 and lowered >= 30
    assert len(examples()) == len(EXAMPLES) + len(first)   # hand-written ones plus generated ones


def test_a_lower_cased_sentence_keeps_its_marks():
    lowered = [s for s in generated() if s == s.lower() or "|ORGANIZATION]]" in s and s.split("[[")[0].islower()]
    assert lowered
    for marked in lowered:
        text, spans = parse(marked)
        assert all(k in TAGGER_ENTITIES for k, _, _ in spans)


@pytest.mark.skipif(not DATA.exists(), reason="no ../shared/data next to the project")
def test_no_generated_sentence_is_a_dataset_sentence():
    dataset = {row["full_text"].strip().lower() for row in json.loads(DATA.read_text(encoding="utf-8"))}
    written = {row["text"].strip().lower() for row in examples()}
    assert not written & dataset


def test_a_place_after_an_address_on_its_line_joins_it():
    text = "Ship to 4 Elm Street, Tubize, Belgium please"
    a, t, b = text.index("4 Elm"), text.index("Tubize"), text.index("Belgium")
    spans = [TaggedSpan("STREET_ADDRESS", a, a + len("4 Elm Street"), 0.9),
             TaggedSpan("LOCATION", t, t + 6, 0.8), TaggedSpan("LOCATION", b, b + 7, 0.95)]
    joined = _places_joined_to_addresses(text, spans)
    assert [(s.type, text[s.start:s.end]) for s in joined] == [("STREET_ADDRESS", "4 Elm Street, Tubize, Belgium")]


def test_a_place_on_its_own_line_or_without_a_comma_stays_a_place():
    text = "4 Elm Street\nTubize in spring"
    t = text.index("Tubize")
    spans = [TaggedSpan("STREET_ADDRESS", 0, 12, 0.9), TaggedSpan("LOCATION", t, t + 6, 0.8)]
    assert _places_joined_to_addresses(text, spans) == spans
    text = "I moved from 4 Elm Street to Tubize"
    a, t = text.index("4 Elm"), text.index("Tubize")
    spans = [TaggedSpan("STREET_ADDRESS", a, a + 12, 0.9), TaggedSpan("LOCATION", t, t + 6, 0.8)]
    assert _places_joined_to_addresses(text, spans) == spans


def test_a_run_splits_where_a_word_begins_another_type():
    """Two words both inside entities: a place, then a word whose likeliest tag is B-STREET_ADDRESS.
    One-hot probabilities from a head whose output is the bias alone (weights zero)."""
    labels = ["O"] + [f"{p}-{t}" for t in TAGGER_ENTITIES for p in ("B", "I")]
    dim = 4
    weights = {"w1": np.zeros((dim, 1), np.float32), "b1": np.zeros(1, np.float32),
               "w2": np.zeros((1, len(labels)), np.float32), "b2": np.zeros(len(labels), np.float32),
               "mean": np.zeros(dim, np.float32), "scale": np.ones(dim, np.float32)}
    meta = {"labels": labels, "thresholds": {t: 0.5 for t in TAGGER_ENTITIES}, "neighbors": 0}
    tagger = PiiTagger(weights, meta)
    text = "Norway 66455"
    probs = np.full((2, len(labels)), 1e-4, np.float32)
    probs[0, labels.index("B-LOCATION")] = 1.0
    probs[1, labels.index("B-STREET_ADDRESS")] = 1.0
    spans = tagger._decode(text, probs, np.array([[0, 6], [7, 12]]), np.array([0, 1]),
                           frozenset(TAGGER_ENTITIES), tagger.thresholds)
    assert [(s.type, text[s.start:s.end]) for s in spans][:1] == [("LOCATION", "Norway")]
    probs[1, labels.index("B-STREET_ADDRESS")] = 1e-4
    probs[1, labels.index("I-LOCATION")] = 1.0   # continues the place: one span
    spans = tagger._decode(text, probs, np.array([[0, 6], [7, 12]]), np.array([0, 1]),
                           frozenset(TAGGER_ENTITIES), tagger.thresholds)
    assert [(s.type, text[s.start:s.end]) for s in spans] == [("LOCATION", "Norway 66455")]


def test_inner_capital_marks_camel_case_words_only():
    text = "GreenScrapbooking met Anna"
    offsets = np.array([[0, 17], [18, 21], [22, 26]])
    feats = spelling_features(text, offsets, np.array([0, 1, 2]))
    assert feats[:, -1].tolist() == [1.0, 0.0, 0.0]


def test_a_head_trained_on_other_spelling_features_is_refused(tmp_path):
    meta = json.loads((SHIPPED_DIR / "head.json").read_text())
    meta["spelling_features"] = meta["spelling_features"][:-1]
    (tmp_path / "head.json").write_text(json.dumps(meta))
    (tmp_path / "head.npz").write_bytes((SHIPPED_DIR / "head.npz").read_bytes())
    with pytest.raises(TaggerUnavailable, match="spelling features"):
        PiiTagger.load(tmp_path)




@pytest.mark.parametrize("text, expected", [
    ("I start my new job at Pellwright Dynamics on Monday.", ("ORGANIZATION", "Pellwright Dynamics")),
    ("The refund from Caravel Mutual Assurance never arrived.", ("ORGANIZATION", "Caravel Mutual Assurance")),
    ("We relocated the whole team to Ljubljana last spring.", ("LOCATION", "Ljubljana")),
    ("My aunt runs a bakery in Bergamo.", ("LOCATION", "Bergamo")),
])
def test_shipped_head_finds_organisations_and_places(encoder, tagger, text, expected):
    found = find(encoder, tagger, text)
    kind, value = expected
    assert any(k == kind and (value in v or v in value) for k, v in found), (text, found)


@pytest.mark.parametrize("text", [
    "Follow MossyGardenDiary for weekly planting tips.",
    "Senior Procurement Officer wanted, apply by Friday.",
])
def test_shipped_head_leaves_handles_and_titles_alone(encoder, tagger, text):
    found = [f for f in find(encoder, tagger, text) if f[0] in ("ORGANIZATION", "LOCATION")]
    assert found == [], (text, found)
