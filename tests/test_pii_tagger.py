"""The PII token tagger: names, places, street addresses and organisations on the shared encoder.

What is proven here, on the real encoder and the shipped head:
- `Encoder.encode_with_tokens` gives the same embedding as `encode`, and word-piece offsets that
  map exactly onto the text (also past the model's window, window by window);
- the tagger finds PERSON / LOCATION / STREET_ADDRESS / ORGANIZATION in sentences written for
  this test, at exact character offsets, and nothing in hard negatives;
- the shipped head's metadata records the training data's sha256, the split and the encoder;
- through the gateway, a name and an address are masked before the simulated upstream sees
  them and restored in the answer, whole and streamed; a `pii` signal listing PERSON routes.
"""

from __future__ import annotations

import asyncio
import json
import re

import numpy as np
import pytest

from tests.conftest import base_policy
from tests.test_messages_guarantees import STREAMED, ask
from tests.test_plugins import content, streamed_text, with_plugins


@pytest.fixture(scope="module")
def encoder():
    from sigroute.signals.encoder import shared_encoder

    return shared_encoder()


@pytest.fixture(scope="module")
def tagger(encoder):
    from sigroute.signals.pii_tagger import shipped_tagger

    return shipped_tagger(encoder.fingerprint)


def find(encoder, tagger, text):
    _, states = encoder.encode_with_tokens([text])
    return [(s.type, text[s.start:s.end]) for s in tagger.tag(text, states[0])]


# --------------------------------------------------------------------------------------------
# token states


def test_token_states_come_with_the_same_embedding_and_exact_offsets(encoder):
    text = "  Ask Wilhelmina Stroud about the Zürich office, please. "
    vectors, states = encoder.encode_with_tokens([text, "short one"])
    assert np.allclose(vectors, encoder.encode([text, "short one"]), atol=1e-5)
    first = states[0]
    assert first.states.shape == (len(first.offsets), encoder.dimension) and not first.truncated
    pieces = [text[a:b] for a, b in first.offsets]
    assert "".join(pieces) == "".join(text.split())
    assert pieces[0] == "Ask" and text[first.offsets[1][0]:first.offsets[2][1]].startswith("Wil")
    words = {int(w): text[first.offsets[first.words == w][0][0]:first.offsets[first.words == w][-1][1]]
             for w in np.unique(first.words)}
    assert "Wilhelmina" in words.values() and "Zürich" in words.values()


def test_a_text_longer_than_the_window_is_covered_window_by_window(encoder):
    from sigroute.signals.encoder import RequestEmbedder

    text = "filler words here. " * 120 + "Then Octavia Brennan signed it."
    embedder = RequestEmbedder(encoder)
    vectors, windows = asyncio.run(embedder.embed_with_tokens([text]))
    assert vectors.shape == (1, encoder.dimension) and len(windows[0]) >= 2
    offsets = np.concatenate([w.offsets for w in windows[0]])
    assert all(text[a:b].strip() for a, b in offsets)
    assert "".join(text[a:b] for a, b in offsets) == "".join(text.split())   # every word, once, in order


# --------------------------------------------------------------------------------------------
# the tagger


@pytest.mark.parametrize("text, expected", [
    ("Please ask Rosalind Achterberg to sign the lease.", [("PERSON", "Rosalind Achterberg")]),
    ("My name is Teodor Malinowski and I live in Gdansk.", [("PERSON", "Teodor Malinowski"), ("LOCATION", "Gdansk")]),
    ("Ship it to 4817 Larkspur Court, Apt 9 tomorrow.", [("STREET_ADDRESS", "4817 Larkspur Court, Apt 9")]),
])
def test_tagger_finds_names_places_addresses(encoder, tagger, text, expected):
    found = find(encoder, tagger, text)
    for kind, value in expected:
        assert any(k == kind and value in v or v in value and len(v) > 3 and k == kind for k, v in found), (text, found)


@pytest.mark.parametrize("text, forbidden", [
    ("Apple pie recipe for a crowd, please.", None),
    ("May I ask why the sky is blue?", None),
    ("What language is spoken in Jordan the country?", "PERSON"),   # a place is fine, a person is not
    ("Explain recursion with a Python example.", None),
    ("How many moons does Jupiter have?", None),
])
def test_tagger_leaves_hard_negatives_alone(encoder, tagger, text, forbidden):
    found = find(encoder, tagger, text)
    if forbidden is not None:
        found = [f for f in found if f[0] == forbidden]
    assert found == [], (text, found)


def test_offsets_map_exactly_onto_the_text(encoder, tagger):
    text = "Dear Ms. Evangeline Mwangi,\nyour parcel for 92 Quarry Hill Road is waiting."
    _, states = encoder.encode_with_tokens([text])
    spans = tagger.tag(text, states[0])
    assert spans, "nothing found"
    for s in spans:
        value = text[s.start:s.end]
        assert value == value.strip(" ,.\n") and value
        assert re.match(r"\w", value[0]) and re.match(r"\w", value[-1])
    assert any(s.type == "PERSON" and text[s.start:s.end].endswith("Mwangi") for s in spans)


def test_shipped_head_records_data_hash_split_and_encoder(encoder):
    from sigroute.signals.pii_tagger import SHIPPED_DIR, TAGGER_ENTITIES

    meta = json.loads((SHIPPED_DIR / "head.json").read_text())
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", meta["data"]["sha256"])
    assert "sha256" in meta["data"]["split"] and meta["data"]["sentences"]["test"] > 100
    assert meta["encoder_fingerprint"] == encoder.fingerprint
    assert set(meta["thresholds"]) == set(TAGGER_ENTITIES) and set(meta["test"]) == set(TAGGER_ENTITIES)


def test_a_head_for_another_encoder_is_refused(tmp_path):
    from sigroute.signals.pii_tagger import SHIPPED_DIR, PiiTagger, TaggerUnavailable

    for name in ("head.npz", "head.json"):
        (tmp_path / name).write_bytes((SHIPPED_DIR / name).read_bytes())
    with pytest.raises(TaggerUnavailable, match="trained on encoder"):
        PiiTagger.load(tmp_path, "sha256:0000000000000000")


# --------------------------------------------------------------------------------------------
# through the gateway

NAME, ADDRESS = "Rosalind Achterberg", "4817 Larkspur Court"
MASK = [{"pii": {"action": "mask_and_restore", "entities": ["PERSON", "STREET_ADDRESS", "EMAIL_ADDRESS"]}}]


@STREAMED
def test_a_name_and_an_address_are_masked_upstream_and_restored(sim, gateway_factory, stream):
    gw = gateway_factory(with_plugins(sim, MASK))
    answer = ask(gw, f"[[sim:echo]] Please write a letter to {NAME} who lives at {ADDRESS}.", stream=stream)
    sent = sim.last_body("alpha")["messages"][-1]["content"]
    assert NAME not in sent and "Achterberg" not in sent and "Larkspur" not in sent
    assert "<PERSON_1>" in sent and "<STREET_ADDRESS_1>" in sent
    assert NAME in answer.text and "Larkspur Court" in answer.text and "<PERSON_1>" not in answer.text
    assert answer.headers["x-sigroute-plugins"].startswith("pii:masked(")


def test_chat_completions_stream_restores_tagged_values(sim, gateway_factory):
    gw = gateway_factory(with_plugins(sim, MASK))
    headers, text, _ = streamed_text(gw, f"[[sim:echo]] remind {NAME} about the rent")
    assert NAME not in sim.last_body("alpha")["messages"][-1]["content"]
    assert NAME in text and "<PERSON_" not in text
    whole = gw.chat(f"[[sim:echo]] remind {NAME} about the rent")
    assert NAME in content(whole)


def test_pii_signal_listing_person_routes_to_the_private_decision(sim, gateway_factory):
    policy = base_policy(sim, signals={"pii": {"names": {"entities": ["PERSON"]}}},
                         decisions=[{"name": "private", "priority": 10, "rules": "pii:names", "models": ["beta"]},
                                    {"name": "default", "models": ["alpha"]}])
    gw = gateway_factory(policy)
    assert gw.chat(f"Draft a thank-you note to {NAME} for the flowers.").headers["x-sigroute-decision"] == "private"
    assert gw.chat("Draft a thank-you note for the flowers.").headers["x-sigroute-decision"] == "default"


def test_tagger_types_without_a_policy_encoder_are_a_clear_error():
    from sigroute.signals.pii import PiiConfigError
    from sigroute.signals.pii_tagger import tagger_for

    with pytest.raises(PiiConfigError, match="token tagger"):
        tagger_for(["PERSON"], None)
    assert tagger_for(["EMAIL_ADDRESS"], None) is None
