"""The PII detector's copy of presidio's pattern recognizers (signals/pii_presidio.py) matches the
installed presidio-analyzer — patterns, scores, flags, context words, IBAN formats and the answers
of every validator — and building the detector imports neither presidio nor spaCy."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from sigroute.signals import pii_presidio

# presidio validators the detector replaces with its own checks (see signals/pii.py)
REPLACED_BY_OWN_CHECKS = {"EmailRecognizer", "IpRecognizer"}


@pytest.fixture(scope="module")
def presidio():
    return pii_presidio.snapshot_from_presidio()


def test_patterns_context_and_formats_equal_the_installed_presidio(presidio):
    assert presidio["recognizers"] == pii_presidio.RECOGNIZERS, (
        f"presidio-analyzer {presidio['version']} changed a recognizer; refresh signals/pii_presidio.py "
        f"(copied from {pii_presidio.PRESIDIO_VERSION})")
    assert presidio["url_context"] == pii_presidio.URL_CONTEXT
    assert presidio["url_base_regex"] == pii_presidio.URL_BASE_REGEX
    assert presidio["iban_formats"] == pii_presidio.IBAN_FORMATS


def test_every_presidio_validator_is_copied(presidio):
    assert set(presidio["validate"]) - REPLACED_BY_OWN_CHECKS == set(pii_presidio.VALIDATE)
    assert set(presidio["invalidate"]) - REPLACED_BY_OWN_CHECKS == set(pii_presidio.INVALIDATE)


def _candidates(name: str, rng: random.Random) -> list[str]:
    """Values shaped like what each recognizer's patterns match, valid and not."""
    digits = lambda n: "".join(rng.choice("0123456789") for _ in range(n))  # noqa: E731
    if name == "AbaRoutingRecognizer":
        return [digits(9) for _ in range(400)] + [f"{digits(4)}-{digits(4)}-{digits(1)}" for _ in range(200)] + [
            "011000015", "0110-0001-5", "123456789"]
    if name == "MedicalLicenseRecognizer":
        letters = "ABCDEFGHJKLMNPRSTUX"
        return [rng.choice(letters) + rng.choice(letters) + digits(7) for _ in range(600)] + ["BB1388568", "AB1234563"]
    if name == "NhsRecognizer":
        return [digits(10) for _ in range(400)] + [f"{digits(3)} {digits(3)} {digits(4)}" for _ in range(200)] + [
            "401-023-2137", "943 476 5919"]
    if name == "CryptoRecognizer":
        known = ["1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
                 "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq",
                 "bc1p5d7rjq7g6rdk2yhzks9smlaqtedr4dekq08ge8ztwac72sfr9rusxg3297",
                 "BC1QAR0SRRR7XFKVY5L643LYDNW9RE59GTZZWF5MDQ"]
        alphabet = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
        mutated = []
        for address in known:
            for _ in range(40):
                i = rng.randrange(3, len(address))
                mutated.append(address[:i] + rng.choice(alphabet) + address[i + 1:])
        return known + mutated + ["1" + "".join(rng.choice(alphabet) for _ in range(30)) for _ in range(100)]
    if name == "MacAddressRecognizer":
        hexd = lambda: "".join(rng.choice("0123456789abcdefABCDEF") for _ in range(2))  # noqa: E731
        return [rng.choice(":-").join(hexd() for _ in range(6)) for _ in range(300)] + [
            "FF:FF:FF:FF:FF:FF", "00-00-00-00-00-00", "0123.4567.89ab", "01:23:45:67:89:zz"]
    if name == "UsSsnRecognizer":
        seps = ["-", " ", ".", ""]
        return [f"{digits(3)}{rng.choice(seps)}{digits(2)}{rng.choice(seps)}{digits(4)}" for _ in range(600)] + [
            "078-05-1120", "666-12-3456", "123-45-6789", "111-11-1111", "536-00-1234", "536-22-0000"]
    raise AssertionError(name)


def _answer(function, value):
    try:
        return bool(function(value))
    except Exception as exc:  # both must fail alike on a value they cannot read
        return type(exc).__name__


@pytest.mark.parametrize("kind", ["validate", "invalidate"])
def test_copied_validators_answer_like_presidio(presidio, kind):
    rng = random.Random(18)
    ours = pii_presidio.VALIDATE if kind == "validate" else pii_presidio.INVALIDATE
    for name, function in ours.items():
        values = _candidates(name, rng)
        theirs = [_answer(presidio[kind][name], v) for v in values]
        mine = [_answer(function, v) for v in values]
        assert mine == theirs, f"{name}.{kind}_result differs on {[v for v, a, b in zip(values, mine, theirs) if a != b][:5]}"
        assert True in theirs and False in theirs, f"{name}: the sample should hold valid and invalid values"


def test_building_the_detector_imports_neither_presidio_nor_spacy():
    probe = ("import sys\n"
             "from sigroute.signals.pii import PiiDetector\n"
             "found = PiiDetector().detect('write to a.b@example.com, card 4111 1111 1111 1111')\n"
             "assert [e.type for e in found] == ['EMAIL_ADDRESS', 'CREDIT_CARD'], found\n"
             "print(sorted(m for m in ('presidio_analyzer', 'spacy', 'torch', 'transformers') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
