"""Structured PII detector, the `pii` signal, mask/restore. All example values are made up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sigroute.signals.context import RequestContext
from sigroute.signals.pii import (
    DEFAULT_ENTITIES,
    Pii,
    PiiConfigError,
    PiiDetector,
    PiiEntity,
    default_detector,
    iban_checksum_ok,
    luhn_ok,
    mask,
    restore,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def det() -> PiiDetector:
    return default_detector()


def spans(found: list[PiiEntity]) -> list[tuple[str, str]]:
    return [(e.type, e.text) for e in found]


def only(found: list[PiiEntity], etype: str) -> list[str]:
    return [e.text for e in found if e.type == etype]


def config(**kw) -> SimpleNamespace:
    base = {"entities": [], "allow": [], "allow_values": [], "threshold": 0.5, "scope": "user"}
    base.update(kw)
    return SimpleNamespace(**base)


def ctx_of(*user_texts: str, system: str | None = None) -> RequestContext:
    messages = [{"role": "system", "content": system}] if system else []
    for i, t in enumerate(user_texts):
        if i:
            messages.append({"role": "assistant", "content": "ok"})
        messages.append({"role": "user", "content": t})
    return RequestContext.from_body("req-pii", {"model": "auto", "messages": messages})


# --------------------------------------------------------------------------------------------
# detection, one structured type at a time, with exact spans


@pytest.mark.parametrize("text, etype, value", [
    ("Please write to marta.olsen42@example.org about the refund.", "EMAIL_ADDRESS", "marta.olsen42@example.org"),
    ("Ping Theo (theo_k+news@mail.example.co.uk) when done", "EMAIL_ADDRESS", "theo_k+news@mail.example.co.uk"),
    ("You can call me on +44 20 7946 0958 after six.", "PHONE_NUMBER", "+44 20 7946 0958"),
    ("My cell is (415) 555-0199, text first.", "PHONE_NUMBER", "(415) 555-0199"),
    ("Phone: 030 90182736", "PHONE_NUMBER", "030 90182736"),
    ("Charge it to my visa 4111 1111 1111 1111 please", "CREDIT_CARD", "4111 1111 1111 1111"),
    ("card no. 5500-0000-0000-0004 expires 09/29", "CREDIT_CARD", "5500-0000-0000-0004"),
    ("Send it to IBAN GB82 WEST 1234 5698 7654 32 by Friday.", "IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
    ("iban de89370400440532013000, thanks", "IBAN_CODE", "de89370400440532013000"),
    ("My social security number is 536-22-8451.", "US_SSN", "536-22-8451"),
    ("The box at 192.168.10.24 keeps rebooting", "IP_ADDRESS", "192.168.10.24"),
    ("Block 2001:db8:4f1a::7 on the firewall", "IP_ADDRESS", "2001:db8:4f1a::7"),
])
def test_structured_types_found_with_exact_spans(det, text, etype, value):
    found = det.detect(text)
    hits = [e for e in found if e.type == etype]
    assert len(hits) == 1, spans(found)
    e = hits[0]
    assert (e.start, e.end) == (text.index(value), text.index(value) + len(value))
    assert e.text == value and 0.5 <= e.score <= 1.0


def test_several_entities_sorted_and_non_overlapping(det):
    text = ("Hi, I'm at 10.20.30.40 today. Mail ada.lind@example.net or call +1 212 555 0147; "
            "pay with 4111111111111111.")
    found = det.detect(text)
    assert spans(found) == [("IP_ADDRESS", "10.20.30.40"), ("EMAIL_ADDRESS", "ada.lind@example.net"),
                            ("PHONE_NUMBER", "+1 212 555 0147"), ("CREDIT_CARD", "4111111111111111")]
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))


def test_checksums_reject_invalid_numbers(det):
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_checksum_ok("GB82WEST12345698765432") and not iban_checksum_ok("GB82WEST12345698765433")
    bad_card = "my credit card is 4111 1111 1111 1112"
    assert only(det.detect(bad_card), "CREDIT_CARD") == []
    bad_iban = "IBAN: GB82 WEST 1234 5698 7654 33"
    assert only(det.detect(bad_iban), "IBAN_CODE") == []


def test_numbers_that_are_not_pii_are_left_alone(det):
    benign = [
        "The table lists 2.20 9.11 10.07 for lysine and 0.2617993833 for the angle.",
        "Revenue grew from $4,000 to 10,000 1001 units in 2023-04-13 12:20.",
        "Our offices are located at 1200 3456 Harbor Road, Suite 12.",
        "Binary: 00001111, 11110000 and 0000001.",
        "Ratios 1:8:28:70:56:28:8:1 follow the binomial pattern.",
        "Order #4521 shipped on 12/03/2024 with 3 items.",
    ]
    for text in benign:
        assert det.detect(text) == [], text


def test_context_words_raise_weak_phone_shapes(det):
    assert only(det.detect("the code is 4471 2290"), "PHONE_NUMBER") == []
    assert only(det.detect("call me at 4471 2290"), "PHONE_NUMBER") == ["4471 2290"]
    assert only(det.detect("reach us on 0612 34 56 78 (mobile)"), "PHONE_NUMBER") == ["0612 34 56 78"]


def test_entity_selection_threshold_and_errors(det):
    text = "mail kim@example.com or visit https://shop.example.com/help"
    assert spans(det.detect(text, ["URL"])) == [("URL", "https://shop.example.com/help")]
    assert "URL" not in DEFAULT_ENTITIES and only(det.detect(text), "URL") == []
    assert det.detect(text, ["EMAIL_ADDRESS"], min_score=1.01) == []
    with pytest.raises(PiiConfigError, match="unknown PII entity"):
        det.detect(text, ["SHOE_SIZE"])
    with pytest.raises(PiiConfigError, match="spaCy model"):   # PERSON & co. come from the token tagger
        det.detect(text, ["NRP"])


def test_ner_without_a_spacy_model_is_a_clear_error():
    import importlib.util

    if any(importlib.util.find_spec(m) for m in ("en_core_web_sm", "en_core_web_md", "en_core_web_lg")):
        pytest.skip("a spaCy model is installed here")
    with pytest.raises(PiiConfigError, match="never downloads"):
        PiiDetector(ner=True)


# --------------------------------------------------------------------------------------------
# the signal


def test_signal_matches_and_value_holds_no_pii_text(det):
    secret_mail, secret_card = "noor.haddad@example.com", "4111 1111 1111 1111"
    sig = Pii("personal", config(), detector=det)
    assert sig.type == "pii" and sig.needs_embedding is False
    res = sig.evaluate(ctx_of(f"I'm {secret_mail}, card {secret_card}"))
    assert res.matched and res.confidence == 1.0
    assert [e["type"] for e in res.value["entities"]] == ["EMAIL_ADDRESS", "CREDIT_CARD"]
    assert set(res.value["entities"][0]) == {"type", "start", "end", "score"}
    dumped = json.dumps(res.as_dict())
    for piece in (secret_mail, "noor", "haddad", "4111", secret_card):
        assert piece not in dumped


def test_signal_no_match(det):
    res = Pii("personal", config(), detector=det).evaluate(ctx_of("What is the capital of Peru?"))
    assert not res.matched and res.confidence == 0.0 and res.value == {"entities": []}


def test_signal_entities_and_type_allow_list(det):
    text = "email sam@example.com, phone +49 30 901820 44"
    only_phone = Pii("p", config(entities=["PHONE_NUMBER"]), detector=det).evaluate(ctx_of(text))
    assert [e["type"] for e in only_phone.value["entities"]] == ["PHONE_NUMBER"]
    no_mail = Pii("p", config(allow=["EMAIL_ADDRESS"]), detector=det).evaluate(ctx_of(text))
    assert [e["type"] for e in no_mail.value["entities"]] == ["PHONE_NUMBER"]
    nothing = Pii("p", config(entities=["EMAIL_ADDRESS"], allow=["EMAIL_ADDRESS"]), detector=det)
    assert not nothing.evaluate(ctx_of(text)).matched


def test_signal_value_allow_list_is_case_and_space_insensitive(det):
    sig = Pii("p", config(allow_values=["  Support@Example.COM "]), detector=det)
    assert not sig.evaluate(ctx_of("Write to support@example.com for help")).matched
    res = sig.evaluate(ctx_of("Write to support@example.com or me, lou@example.com"))
    assert res.matched and len(res.value["entities"]) == 1
    spaced = Pii("p", config(allow_values=["+1 212  555 0147"]), detector=det)
    assert not spaced.evaluate(ctx_of("call +1 212 555 0147")).matched


def test_signal_threshold_and_scope(det):
    weak = "the number 4471 2290"  # a phone-like shape, no phone word: scores below 0.5
    assert not Pii("p", config(), detector=det).evaluate(ctx_of(weak)).matched
    assert Pii("p", config(threshold=0.3), detector=det).evaluate(ctx_of(weak)).matched
    convo = ctx_of("my ip is 172.16.4.9", "and now a normal question", system="admin: ops@example.com")
    assert Pii("p", config(scope="user"), detector=det).evaluate(convo).matched
    assert not Pii("p", config(scope="last_user"), detector=det).evaluate(convo).matched
    all_scope = Pii("p", config(scope="all", entities=["EMAIL_ADDRESS"]), detector=det).evaluate(convo)
    assert all_scope.matched


def test_signal_rejects_unknown_entity_types(det):
    with pytest.raises(PiiConfigError):
        Pii("p", config(entities=["EMAIL", "PHONE_NUMBER"]), detector=det)


# --------------------------------------------------------------------------------------------
# mask / restore


def test_mask_restore_round_trip(det):
    text = ("From ines@example.com: call +44 20 7946 0958 or ines@example.com; "
            "backup bo@example.com, card 4111-1111-1111-1111.")
    found = det.detect(text)
    masked, mapping = mask(text, found)
    assert masked == ("From <EMAIL_ADDRESS_1>: call <PHONE_NUMBER_1> or <EMAIL_ADDRESS_1>; "
                      "backup <EMAIL_ADDRESS_2>, card <CREDIT_CARD_1>.")
    assert mapping == {"<EMAIL_ADDRESS_1>": "ines@example.com", "<PHONE_NUMBER_1>": "+44 20 7946 0958",
                       "<EMAIL_ADDRESS_2>": "bo@example.com", "<CREDIT_CARD_1>": "4111-1111-1111-1111"}
    assert restore(masked, mapping) == text
    answer = "I wrote to <EMAIL_ADDRESS_2> and <EMAIL_ADDRESS_1>."
    assert restore(answer, mapping) == "I wrote to bo@example.com and ines@example.com."
    assert mask("nothing here", []) == ("nothing here", {})


def test_mask_never_reuses_a_placeholder_already_in_the_text(det):
    text = "literal <EMAIL_ADDRESS_1> then real jo@example.com"
    masked, mapping = mask(text, det.detect(text))
    assert masked == "literal <EMAIL_ADDRESS_1> then real <EMAIL_ADDRESS_2>"
    assert restore(masked, mapping) == text


# --------------------------------------------------------------------------------------------
# no network


_NO_NET = r"""
import socket, sys
def _blocked(self, address, *a):
    host = address[0] if isinstance(address, tuple) else ''
    if self.family in (socket.AF_INET, socket.AF_INET6) and not (str(host).startswith('127.') or host in ('::1', 'localhost')):
        raise OSError('network access attempted: %r' % (address,))
    return _real(self, address, *a)
_real = socket.socket.connect
socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
def _no_dns(host, *a, **k):
    if host not in ('localhost', '127.0.0.1', '::1', None):
        raise OSError('DNS lookup attempted: %r' % (host,))
    return _real_gai(host, *a, **k)
_real_gai = socket.getaddrinfo
socket.getaddrinfo = _no_dns
from sigroute.signals.pii import PiiDetector
d = PiiDetector()
found = d.detect('mail a@example.com, see https://docs.example.org and www.example.co.uk', ['EMAIL_ADDRESS', 'URL'])
assert [e.type for e in found] == ['EMAIL_ADDRESS', 'URL', 'URL'], found
print('ok')
"""


def test_import_and_construction_never_touch_the_network(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS"}
    env["TLDEXTRACT_CACHE"] = str(tmp_path)  # an empty cache: a fetch would be the only way to fill it
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run([sys.executable, "-c", _NO_NET], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
    assert "network access attempted" not in proc.stderr and "DNS lookup" not in proc.stderr
    assert not any(tmp_path.iterdir())  # and nothing was written to the suffix-list cache
