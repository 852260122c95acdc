"""sigroute's own PII recognizers (signals/pii_recognizers.py): each validator on valid and invalid
values, each recognizer in a sentence, and the promise that detecting PII loads no NLP stack.

Every example value here was made up for these tests: card numbers and IBANs were completed with
their own check digits, Bitcoin addresses are encoded below from made-up payloads.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sigroute.signals.pii import PATTERN_ENTITIES, PiiDetector, default_detector
from sigroute.signals.pii_recognizers import (
    IBAN_LENGTHS,
    aba_ok,
    bitcoin_address_ok,
    calendar_date_ok,
    card_brand_ok,
    dea_ok,
    iban_checksum_ok,
    iban_ok,
    itin_ok,
    luhn_ok,
    mac_ok,
    nhs_ok,
    ssn_ok,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def det() -> PiiDetector:
    return default_detector()


def found(det: PiiDetector, text: str, entity: str, min_score: float = 0.5) -> list[str]:
    return [e.text for e in det.detect(text, [entity], min_score=min_score)]


# --------------------------------------------------------------------------------------------
# validators


@pytest.mark.parametrize("number", ["4539148803436467", "5105105105105100", "371449635398431",
                                    "6011000990139424"])
def test_luhn_accepts_completed_numbers_and_rejects_any_changed_digit(number):
    assert luhn_ok(number) and card_brand_ok(number)
    for i in range(len(number)):  # one wrong digit anywhere breaks the checksum
        changed = number[:i] + str((int(number[i]) + 1) % 10) + number[i + 1:]
        assert not luhn_ok(changed), changed


def test_card_brand_needs_a_known_prefix_and_its_length():
    assert card_brand_ok("4539148803436467")  # Visa, 16
    assert not card_brand_ok("453914880343646")  # Visa, 15 digits: no such card
    assert not card_brand_ok("371449635398431" + "0")  # Amex is 15 digits
    assert not card_brand_ok("9999999999999995")  # no scheme starts with 99


@pytest.mark.parametrize("iban", ["GB66QRST40506012345678", "DE44500105175407324931", "FR7630006000011234567890189",
                                  "NO9386011117947", "NL91ABNA0417164300", "gb66 qrst 4050 6012 3456 78"])
def test_iban_accepts_a_correct_checksum_and_length(iban):
    assert iban_ok(iban)


@pytest.mark.parametrize("iban, why", [
    ("GB67QRST40506012345678", "check digits changed"),
    ("GB66QRST40506012345679", "last digit changed"),
    ("GB66QRST4050601234567", "one character short for GB (22)"),
    ("QQ66QRST40506012345678", "no such country"),
    ("GB00QRST40506012345678", "check digits 00 are never issued"),
    ("GB66QRST4050601234567!", "not alphanumeric"),
])
def test_iban_rejects(iban, why):
    assert not iban_ok(iban), why


def test_iban_length_table_is_well_formed():
    assert all(len(cc) == 2 and cc.isupper() and 15 <= n <= 34 for cc, n in IBAN_LENGTHS.items())
    assert (IBAN_LENGTHS["NO"], IBAN_LENGTHS["BE"], IBAN_LENGTHS["GB"], IBAN_LENGTHS["DE"], IBAN_LENGTHS["FR"],
            IBAN_LENGTHS["MT"]) == (15, 16, 22, 22, 27, 31)
    assert len(IBAN_LENGTHS) >= 80
    assert iban_checksum_ok("GB66QRST40506012345678") and not iban_checksum_ok("GB66QRST40506012345687")


@pytest.mark.parametrize("ssn", ["536-22-8451", "536 22 8451", "536228451", "001-01-0001", "899-99-9998"])
def test_ssn_accepts_issuable_numbers(ssn):
    assert ssn_ok(ssn)


@pytest.mark.parametrize("ssn, why", [
    ("000-22-8451", "area 000"), ("666-22-8451", "area 666"), ("900-22-8451", "area 9xx"),
    ("987-22-8451", "area 9xx"), ("536-00-8451", "group 00"), ("536-22-0000", "serial 0000"),
    ("555-55-5555", "one repeated digit"), ("123-45-6789", "a published sample"), ("536-22-845", "8 digits"),
])
def test_ssn_rejects(ssn, why):
    assert not ssn_ok(ssn), why


def test_itin_needs_area_9_and_a_group_in_the_irs_ranges():
    assert itin_ok("912-70-1234") and itin_ok("912-50-1234") and itin_ok("912-99-1234")
    assert not itin_ok("912-93-1234") and not itin_ok("912-49-1234") and not itin_ok("812-70-1234")


def test_nhs_modulus_11():
    assert nhs_ok("4010232137") and nhs_ok("485 777 3457")
    assert not nhs_ok("4010232138")  # wrong check digit
    assert not any(nhs_ok("123456789" + d) for d in "0123456789")  # remainder 10: no valid number


def test_dea_aba_mac_and_dates():
    assert dea_ok("AB1234563") and not dea_ok("AB1234564")
    assert aba_ok("021000021") and aba_ok("111000614") and not aba_ok("021000022")
    assert not aba_ok("991000014")  # no such Federal Reserve prefix
    assert mac_ok("00:1A:2B:3C:4D:5E") and mac_ok("001a.2b3c.4d5e")
    assert not mac_ok("FF:FF:FF:FF:FF:FF") and not mac_ok("00-00-00-00-00-00")
    assert calendar_date_ok(2024, 2, 29) and not calendar_date_ok(2023, 2, 29) and not calendar_date_ok(2024, 13, 1)
    assert calendar_date_ok(24, 2, 29) and not calendar_date_ok(2024, 4, 31)


# An encoder written here, independent of the validator, makes the legacy addresses.
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58check(version: int, payload: bytes) -> str:
    raw = bytes([version]) + payload
    raw += hashlib.sha256(hashlib.sha256(raw).digest()).digest()[:4]
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def test_bitcoin_addresses():
    p2pkh = base58check(0, hashlib.sha256(b"sigroute test key").digest()[:20])
    p2sh = base58check(5, hashlib.sha256(b"sigroute test script").digest()[:20])
    assert p2pkh[0] == "1" and p2sh[0] == "3"
    assert bitcoin_address_ok(p2pkh) and bitcoin_address_ok(p2sh)
    assert not bitcoin_address_ok(p2pkh[:-1] + ("2" if p2pkh[-1] != "2" else "3"))  # checksum broken
    assert not bitcoin_address_ok(base58check(7, hashlib.sha256(b"x").digest()[:20]))  # unknown version
    # SegWit: the examples of BIP 173 (v0, bech32) and BIP 350 (v1, bech32m)
    v0 = "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4"
    v1 = "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"
    assert bitcoin_address_ok(v0) and bitcoin_address_ok(v0.lower()) and bitcoin_address_ok(v1)
    assert not bitcoin_address_ok(v0[:-1] + "5")  # checksum broken
    assert not bitcoin_address_ok(v0[:10] + v0[10:].lower())  # mixed case is not allowed


# --------------------------------------------------------------------------------------------
# each recognizer in a sentence


@pytest.mark.parametrize("entity, text, value", [
    ("US_SSN", "SSN on file: 536 22 8451.", "536 22 8451"),
    ("US_ITIN", "my ITIN is 912-70-1234", "912-70-1234"),
    ("US_ITIN", "taxpayer id 912701234", "912701234"),
    ("UK_NHS", "NHS number 401 023 2137, please", "401 023 2137"),
    ("IP_ADDRESS", "route 10.12.0.0/16 via the gateway", "10.12.0.0/16"),
    ("IP_ADDRESS", "ping fe80::1%eth0 now", "fe80::1%eth0"),
    ("IP_ADDRESS", "mapped ::ffff:192.0.2.33 too", "::ffff:192.0.2.33"),
    ("CRYPTO", "send it to bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0 today",
     "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"),
    ("EMAIL_ADDRESS", "write to o'neill.k@example.ie.", "o'neill.k@example.ie"),
    ("URL", "docs at https://docs.example.org/a/b?q=1.", "https://docs.example.org/a/b?q=1"),
    ("URL", "see www.example.co.uk for more", "www.example.co.uk"),
    ("DATE_TIME", "born on 31.01.1987 in Oslo", "31.01.1987"),
    ("DATE_TIME", "logged 2023-03-05T14:22:09Z by the job", "2023-03-05T14:22:09Z"),
    ("DATE_TIME", "the party is on 3 March 2021", "3 March 2021"),
    ("MAC_ADDRESS", "the NIC 00:1A:2B:3C:4D:5E dropped", "00:1A:2B:3C:4D:5E"),
    ("MEDICAL_LICENSE", "DEA AB1234563 on the script", "AB1234563"),
    ("ABA_ROUTING_NUMBER", "routing number 021000021", "021000021"),
    ("US_DRIVER_LICENSE", "driver license D1234567", "D1234567"),
    ("IBAN_CODE", "pay RU0204452560040702810412345678901 please", "RU0204452560040702810412345678901"),
])
def test_each_recognizer_finds_its_value(det, entity, text, value):
    assert found(det, text, entity) == [value]


@pytest.mark.parametrize("entity, text", [
    ("US_SSN", "SSN 666-22-8451"), ("US_SSN", "SSN 536-00-8451"), ("US_SSN", "SSN 536-22 8451"),
    ("US_SSN", "SSN 912-70-1234"),  # 9xx is a taxpayer number, not an SSN
    ("UK_NHS", "NHS number 401 023 2138"), ("UK_NHS", "number 401 023 2137"),  # no context: too weak
    ("US_ITIN", "ITIN 912-93-1234"),
    ("IP_ADDRESS", "v 999.1.1.1"), ("IP_ADDRESS", "version 1.2.3.4"), ("IP_ADDRESS", "at 12:30:45"),
    ("CRYPTO", "wallet 1BoatSLRHtKNngkdXEeobR76b53LETtpyU"),
    ("EMAIL_ADDRESS", "mail bad@nodomain.zzzz"),
    ("URL", "end.The next sentence"), ("URL", "Mr.Smith arrived"),
    ("DATE_TIME", "13/13/2013"), ("DATE_TIME", "version 3.14.15"),
    ("MAC_ADDRESS", "FF:FF:FF:FF:FF:FF"),
    ("MEDICAL_LICENSE", "DEA AB1234564"),
    ("ABA_ROUTING_NUMBER", "routing number 021000022"),
])
def test_invalid_values_are_not_reported(det, entity, text):
    assert found(det, text, entity) == [], text


def test_very_weak_shapes_need_a_low_threshold(det):
    passport, account = "my passport is 123456789", "the account is 12345678901"
    assert found(det, passport, "US_PASSPORT") == [] and found(det, account, "US_BANK_NUMBER") == []
    assert found(det, passport, "US_PASSPORT", min_score=0.3) == ["123456789"]
    assert found(det, account, "US_BANK_NUMBER", min_score=0.3) == ["12345678901"]
    assert found(det, "the number is 12345678901", "US_BANK_NUMBER", min_score=0.3) == []


def test_context_words_raise_a_score(det):
    plain = det.detect("it is 536-22-8451", ["US_SSN"])
    with_context = det.detect("my social security number is 536-22-8451", ["US_SSN"])
    assert plain[0].score == 0.5 and with_context[0].score == pytest.approx(0.85)
    assert found(det, "license D1234567", "US_DRIVER_LICENSE") == ["D1234567"]
    assert found(det, "item D1234567", "US_DRIVER_LICENSE") == []


def test_every_pattern_entity_has_a_recognizer(det):
    assert set(PATTERN_ENTITIES) <= det.supported_entities


# --------------------------------------------------------------------------------------------
# no NLP stack

_NO_HEAVY_IMPORTS = """
import json, sys
from sigroute.signals.pii import PATTERN_ENTITIES, default_detector
from sigroute.signals.registry import SIGNAL_TYPES
d = default_detector()
found = d.detect('mail ada@example.org, call +44 20 7946 0958, card 4539148803436467, '
                 'IBAN GB66QRST40506012345678, SSN 536-22-8451, 10.0.0.1, on 2024-01-31', PATTERN_ENTITIES)
print(json.dumps({"types": sorted({e.type for e in found}),
                  "loaded": sorted(m for m in ("presidio_analyzer", "spacy", "torch", "transformers", "thinc", "regex")
                                   if m in sys.modules)}))
"""


def test_detecting_pii_imports_no_presidio_spacy_or_torch():
    done = subprocess.run([sys.executable, "-c", _NO_HEAVY_IMPORTS], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["types"] == ["CREDIT_CARD", "DATE_TIME", "EMAIL_ADDRESS", "IBAN_CODE", "IP_ADDRESS",
                               "PHONE_NUMBER", "US_SSN"]
    assert report["loaded"] == []
