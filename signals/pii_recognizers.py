"""sigroute's own recognizers for structured PII: candidate patterns, validators, context words.

`signals.pii.PiiDetector` runs these. Each recognizer is a `PatternSpec`: a regular expression that
finds *candidates* cheaply, a base score, the name of a cheap gate on the whole text (see
`signals.pii._GATES`), the context words that raise the score when they appear near a match, and
an optional `check` that looks at the matched value:

* ``check(value) -> None``   keep the base score
* ``check(value) -> False``  not this entity: drop the candidate
* ``check(value) -> float``  use this score instead (1.0 for a passed checksum)

The validators are plain functions with tests of their own (tests/test_pii_recognizers.py):

=================  ==========================================================================
type               what makes a candidate real
=================  ==========================================================================
CREDIT_CARD        Luhn checksum; issuer prefix and length (`card_brand_ok`)
IBAN_CODE          known country, that country's IBAN length (`IBAN_LENGTHS`), check digits
                   02-98, ISO 7064 mod 97-10 (`iban_ok`)
US_SSN             same separator twice; area not 000, 666 or 900-999; group not 00; serial not
                   0000; not one repeated digit; not a published sample number (`ssn_ok`)
US_ITIN            area 9xx and a group in the IRS ranges (50-65, 70-88, 90-92, 94-99)
UK_NHS             modulus-11 check digit (`nhs_ok`)
IP_ADDRESS         the standard library's `ipaddress` parses it
CRYPTO             Bitcoin: Base58Check (double SHA-256) or bech32 / bech32m (`bitcoin_address_ok`)
MEDICAL_LICENSE    US DEA registration number check digit (`dea_ok`)
ABA_ROUTING_NUMBER Federal Reserve prefix and the 3-7-1 weighted checksum (`aba_ok`)
MAC_ADDRESS        six hex octets, not all zero and not broadcast
DATE_TIME          a real calendar date (month 1-12, day within the month)
EMAIL_ADDRESS,     the domain ends in a public suffix (checked by `signals.pii` with the offline
URL                `tldextract` snapshot)
=================  ==========================================================================

Phone numbers, cards and IBANs are matched by `signals.pii` itself (its phone rules use the
`phonenumbers` package); this module holds their validators.

Scores follow the convention `signals.pii` documents: a passed checksum gives 1.0; a strong shape
0.5-0.8 (reported at the default threshold 0.5); a weak shape below 0.5 (reported only with a
context word, which adds 0.35); very weak shapes (0.01-0.1) stay below the default threshold even
with context and are reported only to callers that ask for a low `min_score`.

Everything here is standard library: importing it costs a few milliseconds.
"""

from __future__ import annotations

import calendar
import hashlib
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable

# --------------------------------------------------------------------------------------------
# checksums and validators


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check used by payment cards: double every second digit from the right."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_brand_ok(digits: str) -> bool:
    """Whether the number's prefix and length fit a known card scheme (IIN ranges)."""
    n = len(digits)
    p2, p4, p6 = int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4":  # Visa
        return n in (13, 16, 19)
    if 51 <= p2 <= 55 or 2221 <= p4 <= 2720:  # Mastercard
        return n == 16
    if p2 in (34, 37):  # American Express
        return n == 15
    if 300 <= int(digits[:3]) <= 305 or p2 in (36, 38, 39) or digits[:4] == "3095":  # Diners
        return 14 <= n <= 19
    if 3528 <= p4 <= 3589:  # JCB
        return 16 <= n <= 19
    if p4 in (1800, 2131):  # JCB (old 15-digit)
        return n == 15
    if p4 == 6011 or 644 <= int(digits[:3]) <= 649 or p2 == 65 or 622126 <= p6 <= 622925:  # Discover
        return 16 <= n <= 19
    if p2 == 62:  # UnionPay
        return 16 <= n <= 19
    if p2 in (50, 56, 57, 58, 60, 61, 63, 66, 67, 68, 69):  # Maestro and other debit schemes
        return 12 <= n <= 19
    return False


# IBAN length per country (two-letter code → total characters, country code and check digits
# included), as registered under ISO 13616. Written as "length: countries" lines for reading.
_IBAN_LENGTH_LINES = """
15: NO
16: BE
18: DK FI FO GL NL SD FK
19: MK SI
20: AT BA EE KZ LT LU XK MN
21: CH HR LI LV
22: BG BH CR DE GB GE IE ME RS VA
23: AE GI IL IQ OM SO TL
24: AD CZ ES MD PK RO SA SE SK TN VG
25: PT ST LY
26: IS TR
27: FR GR IT MC MR SM BI DJ
28: AL AZ BY CY DO GT HN HU LB NI PL SV
29: BR EG PS QA UA
30: JO KW MU YE
31: MT SC
32: LC
33: RU
"""
IBAN_LENGTHS: dict[str, int] = {
    country: int(length)
    for line in _IBAN_LENGTH_LINES.strip().splitlines()
    for length, countries in [line.split(":")]
    for country in countries.split()
}

_BASE36 = {ord(c): str(i) for i, c in enumerate("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")}


def iban_checksum_ok(compact: str) -> bool:
    """ISO 7064 mod 97-10 as ISO 13616 uses it: the first four characters moved to the end,
    letters as numbers (A=10 … Z=35), the whole number mod 97 equals 1."""
    rearranged = (compact[4:] + compact[:4]).translate(_BASE36)
    return rearranged.isdigit() and int(rearranged) % 97 == 1


def iban_ok(value: str) -> bool:
    """A complete IBAN: known country, its registered length, check digits 02-98, the checksum.
    Spaces and dashes between groups are ignored; case is not significant."""
    compact = value.replace(" ", "").replace("-", "").upper()
    length = IBAN_LENGTHS.get(compact[:2])
    if length is None or len(compact) != length or not compact[4:].isalnum():
        return False
    if not compact[2:4].isdigit() or not 2 <= int(compact[2:4]) <= 98:
        return False
    return iban_checksum_ok(compact)


# Numbers the SSA or others published as examples (in advertising, documentation), never real.
_SAMPLE_SSNS = frozenset({"078051120", "219099999", "123456789", "987654320"})


def ssn_ok(value: str) -> bool:
    """Whether a 9-digit US social security number could have been issued: the area (first three)
    is never 000, 666 or 900-999 (9xx are taxpayer numbers), the group (middle two) never 00, the
    serial (last four) never 0000; one repeated digit and published sample numbers are out."""
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) != 9:
        return False
    area, group, serial = digits[:3], digits[3:5], digits[5:]
    if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
        return False
    return len(set(digits)) > 1 and digits not in _SAMPLE_SSNS


def itin_ok(value: str) -> bool:
    """A US individual taxpayer identification number: 9xx-GG-xxxx with GG in 50-65, 70-88, 90-92
    or 94-99."""
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) != 9 or digits[0] != "9":
        return False
    group = int(digits[3:5])
    return 50 <= group <= 65 or 70 <= group <= 88 or 90 <= group <= 92 or 94 <= group <= 99


def nhs_ok(value: str) -> bool:
    """A UK NHS number's modulus-11 check: the first nine digits weighted 10 down to 2; eleven minus
    the remainder is the check digit (11 means 0; 10 means no valid number has these digits)."""
    digits = [ord(c) - 48 for c in value if c.isdigit()]
    if len(digits) != 10:
        return False
    remainder = sum(d * w for d, w in zip(digits, range(10, 1, -1))) % 11
    check = 11 - remainder
    if check == 11:
        check = 0
    return check != 10 and check == digits[9]


def dea_ok(value: str) -> bool:
    """A US DEA registration number (two letters, seven digits): the sum of digits 1, 3, 5 plus twice
    the sum of digits 2, 4, 6 ends in the seventh digit."""
    digits = [ord(c) - 48 for c in value[2:]]
    if len(digits) != 7 or not all(0 <= d <= 9 for d in digits):
        return False
    total = digits[0] + digits[2] + digits[4] + 2 * (digits[1] + digits[3] + digits[5])
    return total % 10 == digits[6]


# First two digits of a routing number: Federal Reserve districts 01-12 (00 for the US government),
# thrift institutions 21-32, electronic transactions 61-72, traveler's cheques 80.
_ABA_PREFIXES = frozenset([f"{n:02d}" for n in (*range(0, 13), *range(21, 33), *range(61, 73), 80)])


def aba_ok(value: str) -> bool:
    """A US ABA routing transit number: a known prefix, and the digits weighted 3, 7, 1, 3, 7, 1, …
    sum to a multiple of ten."""
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) != 9 or digits[:2] not in _ABA_PREFIXES or len(set(digits)) == 1:
        return False
    weights = (3, 7, 1) * 3
    return sum((ord(c) - 48) * w for c, w in zip(digits, weights)) % 10 == 0


_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_BASE58_VALUE = {c: i for i, c in enumerate(_BASE58_ALPHABET)}


def _base58check_ok(address: str) -> bool:
    """A legacy Bitcoin address: Base58 of version byte (0 = P2PKH, 5 = P2SH) + 20-byte hash +
    4-byte checksum, the checksum being the first bytes of SHA-256(SHA-256(version + hash))."""
    number = 0
    for c in address:
        value = _BASE58_VALUE.get(c)
        if value is None:
            return False
        number = number * 58 + value
    leading_zero_bytes = len(address) - len(address.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    raw = b"\x00" * leading_zero_bytes + body
    if len(raw) != 25 or raw[0] not in (0, 5):
        return False
    digest = hashlib.sha256(hashlib.sha256(raw[:21]).digest()).digest()
    return digest[:4] == raw[21:]


_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)  # BIP 173
_BECH32_CONSTANT, _BECH32M_CONSTANT = 1, 0x2BC830A3  # BIP 173 (witness v0), BIP 350 (v1+)


def _bech32_polymod(values: list[int]) -> int:
    checksum = 1
    for value in values:
        top = checksum >> 25
        checksum = ((checksum & 0x1FFFFFF) << 5) ^ value
        for bit, generator in enumerate(_BECH32_GENERATOR):
            if (top >> bit) & 1:
                checksum ^= generator
    return checksum


def _bech32_ok(address: str) -> bool:
    """A SegWit Bitcoin address (bc1…): one case throughout, the bech32 checksum for witness
    version 0 (program of 20 or 32 bytes) or bech32m for versions 1-16."""
    if address != address.lower() and address != address.upper():
        return False
    address = address.lower()
    hrp, sep, data_part = address.rpartition("1")
    if hrp != "bc" or not sep or len(data_part) < 7:
        return False
    data = [_BECH32_CHARSET.find(c) for c in data_part]
    if -1 in data:
        return False
    expanded_hrp = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    constant = _bech32_polymod(expanded_hrp + data)
    version = data[0]
    if version > 16 or constant != (_BECH32_CONSTANT if version == 0 else _BECH32M_CONSTANT):
        return False
    program_bits = (len(data) - 7) * 5  # data minus the version and the six checksum characters
    program_bytes = program_bits // 8
    if program_bits % 8 >= 5 or not 2 <= program_bytes <= 40:
        return False
    return program_bytes in (20, 32) if version == 0 else True


def bitcoin_address_ok(address: str) -> bool:
    """A Bitcoin address whose checksum holds (legacy Base58Check or SegWit bech32/bech32m)."""
    if address[:3].lower() == "bc1":
        return _bech32_ok(address)
    return _base58check_ok(address)


def mac_ok(value: str) -> bool:
    """Six hex octets, not all zeros and not the broadcast address."""
    hex_digits = re.sub(r"[:.\-]", "", value).upper()
    return len(hex_digits) == 12 and hex_digits not in ("000000000000", "FFFFFFFFFFFF")


def calendar_date_ok(year: int, month: int, day: int) -> bool:
    """Whether day/month exist in that year (a two-digit year is read as 20yy)."""
    if not 1 <= month <= 12 or day < 1:
        return False
    full_year = year if year >= 100 else 2000 + year
    return day <= calendar.monthrange(full_year, month)[1]


# --------------------------------------------------------------------------------------------
# checks (the `check` of a PatternSpec: None keep, False drop, float new score)


def ssn_check(value: str) -> Any:
    return None if ssn_ok(value) else False


def itin_check(value: str) -> Any:
    if not itin_ok(value):
        return False
    return None if not value.isdigit() else 0.3  # without separators: needs a context word


def nhs_check(value: str) -> Any:
    """NHS numbers pass a mod-11 checksum by chance once in 11, and their 3-3-4 shape is also a
    US phone number's: valid ones score 0.45, so they need a context word ("nhs", "patient")."""
    return 0.45 if nhs_ok(value) else False


def ip_check(value: str) -> Any:
    """Parsed by `ipaddress` (a prefix length "/24" or a zone "%eth0" may follow the address)."""
    core = value.split("%")[0].split("/")[0]
    try:
        ip = ipaddress.ip_address(core)
    except ValueError:
        return False
    if ip.is_unspecified and ip.version == 6:
        return 0.1  # "::" alone: too short to mean much
    if ip.version == 6 and "::" not in core and not any(c in "abcdefABCDEF" for c in core):
        return 0.3  # "1:8:28:70:56:28:8:1" is more often a ratio than an address: needs context
    return None


def crypto_check(value: str) -> Any:
    return 1.0 if bitcoin_address_ok(value) else False


def dea_check(value: str) -> Any:
    return 1.0 if dea_ok(value.upper()) else False


def aba_check(value: str) -> Any:
    return 1.0 if aba_ok(value) else False


def mac_check(value: str) -> Any:
    return None if mac_ok(value) else False


def _numeric_date_ok(value: str) -> bool:
    separators = set(re.sub(r"\d", "", value))
    parts = re.split(r"[/\-.]", value)
    if len(parts) != 3 or len(separators) != 1:
        return False
    a, b, c = parts
    if len(a) == 4:  # year first: yyyy-mm-dd
        return calendar_date_ok(int(a), int(b), int(c))
    if len(c) not in (2, 4):
        return False
    if separators == {"."} and len(c) != 4 and not (len(a) == len(b) == 2):
        return False  # "3.14.15", "1.2.10": more often numbers or versions than dates
    year = int(c)
    # month first (US) or day first (most other places): either reading will do
    return calendar_date_ok(year, int(a), int(b)) or calendar_date_ok(year, int(b), int(a))


def date_check(value: str) -> Any:
    """Numeric dates must exist on the calendar; a date written with a month name is kept."""
    numeric = re.match(r"\d{1,4}[/\-.]\d{1,2}[/\-.]\d{1,4}", value)
    if numeric is None:
        return None
    return None if _numeric_date_ok(numeric.group(0)) else False


# --------------------------------------------------------------------------------------------
# patterns

_B = r"(?<![\w.\-/+])"  # a number starts here: not inside a word, a decimal, a path or a range
_E = r"(?![\w\-])"  # and ends here


@dataclass(frozen=True, slots=True)
class PatternSpec:
    entity: str
    name: str
    regex: re.Pattern[str]
    score: float
    gate: str
    context: tuple[str, ...] = ()
    check: Callable[[str], Any] | None = None


EMAIL_CONTEXT = ("email", "e-mail", "mail", "contact", "write to", "inbox", "address")
#: the local part (dot-separated atoms; an apostrophe inside a name) @ the domain's labels
EMAIL_REGEX = re.compile(
    r"(?<![\w.%+\-'@])"
    r"[\w%+\-]+(?:[.'][\w%+\-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
    r"(?![A-Za-z0-9\-]|@)"
)

URL_CONTEXT = ("url", "website", "web site", "link", "site", "web", "homepage", "visit", "domain", "page")
#: host (labels and a TLD of letters), optional port, optional path/query/fragment (no spaces,
#: quotes or angle brackets); the caller trims trailing punctuation
URL_BODY = (
    r"(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}"
    r"(?::\d{1,5})?"
    r"(?:[/?#][^\s<>\"'`{}|\\^\[\]]*)?"
)

SSN_CONTEXT = ("social security", "ssn", "ss#", "ss no", "social sec", "security number", "ssns")
ITIN_CONTEXT = ("itin", "taxpayer", "tax id", "tax identification", "tin", "tax number", "tax payer")
NHS_CONTEXT = ("nhs", "national health service", "health service", "patient", "health authority")
IP_CONTEXT = ("ip", "ipv4", "ipv6", "ip address", "address", "server", "host", "subnet", "gateway")
CRYPTO_CONTEXT = ("wallet", "bitcoin", "btc", "crypto", "address", "send to", "ethereum")
DATE_CONTEXT = ("date", "born", "birthday", "dob", "expires", "expiry")
MAC_CONTEXT = ("mac", "mac address", "hardware address", "physical address", "ethernet", "nic")
BANK_CONTEXT = ("bank", "account", "acct", "checking", "savings", "deposit", "a/c")
PASSPORT_CONTEXT = ("passport", "travel document", "passport no", "passport number")
LICENSE_CONTEXT = ("driver", "driving", "license", "licence", "dl", "dl#", "lic", "permit", "motor vehicle")
DEA_CONTEXT = ("dea", "medical", "prescriber", "registration", "certificate", "license")
ABA_CONTEXT = ("aba", "routing", "rtn", "routing number", "transit number", "bank")

_MONTH = (r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|"
          r"sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)")

_I = re.IGNORECASE


def _rx(source: str, flags: int = 0) -> re.Pattern[str]:
    return re.compile(source, flags)


PATTERN_SPECS: tuple[PatternSpec, ...] = (
    # US social security number: 3-2-4 digits, one separator used twice
    PatternSpec("US_SSN", "ssn", _rx(_B + r"\d{3}([\- .])\d{2}\1\d{4}" + _E), 0.5, "d7", SSN_CONTEXT, ssn_check),
    # ITIN: 9xx-GG-xxxx (separated: 0.5; nine bare digits: 0.3)
    PatternSpec("US_ITIN", "itin", _rx(_B + r"9\d{2}([\- ]?)[5-9]\d\1\d{4}" + _E), 0.5, "d7", ITIN_CONTEXT,
                itin_check),
    # NHS number: 3-3-4 digits
    PatternSpec("UK_NHS", "nhs", _rx(_B + r"\d{3}([\- ]?)\d{3}\1\d{4}" + _E), 0.5, "d7", NHS_CONTEXT, nhs_check),
    # IPv4: dotted quad; a prefix length ("/24") may follow
    PatternSpec("IP_ADDRESS", "ipv4",
                _rx(r"(?<![\w.:])(?:\d{1,3}\.){3}\d{1,3}(?:/(?:3[0-2]|[12]?\d)(?!\d))?(?!\w|\.\d)"),
                0.6, "ip4", IP_CONTEXT, ip_check),
    # IPv6: hex groups and colons (at least two), optionally ending in an embedded IPv4 address;
    # a zone ("%eth0") or a prefix length ("/64") may follow
    PatternSpec("IP_ADDRESS", "ipv6",
                _rx(r"(?<![\w:.])(?=[0-9a-f]*:[0-9a-f]*:)[0-9a-f:]{2,39}"
                    r"(?:(?<=:)(?:\d{1,3}\.){3}\d{1,3})?"
                    r"(?:%[0-9a-z_\-]{1,32}(?:\.[0-9a-z_\-]{1,32})*|/(?:12[0-8]|1[01]\d|[1-9]?\d)(?!\d))?"
                    r"(?![\w:]|\.\d)", _I),
                0.6, "ip6", IP_CONTEXT, ip_check),
    # Bitcoin: legacy Base58 (1… or 3…) or SegWit bech32 (bc1…)
    PatternSpec("CRYPTO", "bitcoin",
                _rx(r"(?<!\w)(?:[13][1-9A-HJ-NP-Za-km-z]{25,34}|(?i:bc1)[02-9ac-hj-np-zAC-HJ-NP-Z]{11,71})(?!\w)"),
                0.5, "always", CRYPTO_CONTEXT, crypto_check),
    # dates: ISO date and time
    PatternSpec("DATE_TIME", "iso datetime",
                _rx(r"(?<![\w/.\-])\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?"
                    r"(?:Z|[+\-]\d{2}:?\d{2})?(?![\w:])"), 0.8, "digits", DATE_CONTEXT, date_check),
    # numeric dates: 2024-01-31, 31/01/2024, 1/31/24, 31.01.2024 (one separator used twice)
    PatternSpec("DATE_TIME", "numeric date",
                _rx(r"(?<![\w/.\-:])(?:\d{4}([/\-.])\d{1,2}\1\d{1,2}|\d{1,2}([/\-.])\d{1,2}\2(?:\d{4}|\d{2}))"
                    r"(?![\w:]|[/\-.]\d)"), 0.6, "digits", DATE_CONTEXT, date_check),
    # dates with a month name: 3 March 2021, 03-Mar-21, March 3, 2021, Mar 3rd 2021, March 2021
    PatternSpec("DATE_TIME", "month-name date",
                _rx(r"\b(?:\d{1,2}(?:st|nd|rd|th)?[\- ](?:of )?" + _MONTH + r"\.?(?:[\- ,]{1,2}\d{4}|-\d{2})?"
                    r"|" + _MONTH + r"\.? \d{1,2}(?:st|nd|rd|th)?(?:,? \d{4})?"
                    r"|" + _MONTH + r"\.?[\- ]\d{4})\b", _I), 0.6, "digits", DATE_CONTEXT),
    # month and year only: 01/2024 (weak), 01/24 (very weak)
    PatternSpec("DATE_TIME", "month/year", _rx(r"(?<![\w/.\-])(?:0?[1-9]|1[0-2])/(?:19|20)\d{2}(?![\w/]|\.\d)"),
                0.2, "digits", DATE_CONTEXT),
    PatternSpec("DATE_TIME", "month/yy", _rx(r"(?<![\w/.\-])(?:0?[1-9]|1[0-2])/\d{2}(?![\w/]|\.\d)"),
                0.1, "digits", DATE_CONTEXT),
    # MAC address: six hex octets with ":" or "-", or three groups of four with "." (Cisco)
    PatternSpec("MAC_ADDRESS", "mac",
                _rx(r"(?<![\w:\-.])(?:[0-9a-f]{2}([:\-])(?:[0-9a-f]{2}\1){4}[0-9a-f]{2}"
                    r"|[0-9a-f]{4}\.[0-9a-f]{4}\.[0-9a-f]{4})(?![\w:\-]|\.\w)", _I),
                0.6, "mac", MAC_CONTEXT, mac_check),
    # US bank account: 8-17 digits (very weak: a context word alone does not reach 0.5)
    PatternSpec("US_BANK_NUMBER", "bank account", _rx(_B + r"\d{8,17}" + _E), 0.05, "d7", BANK_CONTEXT),
    # US passport: 9 digits, or a letter and 8 digits (next generation); very weak
    PatternSpec("US_PASSPORT", "passport", _rx(_B + r"\d{9}" + _E), 0.05, "d7", PASSPORT_CONTEXT),
    PatternSpec("US_PASSPORT", "passport (next generation)", _rx(_B + r"[A-Z]\d{8}" + _E), 0.1, "d7",
                PASSPORT_CONTEXT),
    # US driver's license: the states' letter-and-digit formats (weak: needs a context word), or
    # digits alone (very weak)
    PatternSpec("US_DRIVER_LICENSE", "license (letters and digits)",
                _rx(_B + r"(?:[A-Z]{1,2}\d{4,14}|[A-Z]\d{3}(?:[\- ]\d{3,4}){2,3}|\d{2,3}[A-Z]{1,3}\d{2,6}"
                    r"|\d{6,9}[A-Z]{1,2})" + _E), 0.3, "digits", LICENSE_CONTEXT),
    PatternSpec("US_DRIVER_LICENSE", "license (digits)", _rx(_B + r"\d{6,14}" + _E), 0.01, "d7", LICENSE_CONTEXT),
    # DEA registration number: registrant type letter, a letter (or 9), seven digits
    PatternSpec("MEDICAL_LICENSE", "dea number",
                _rx(r"(?<!\w)[ABCDEFGHJKLMPRSTUXabcdefghjklmprstux][A-Za-z9]\d{7}(?!\w)"),
                0.4, "d7", DEA_CONTEXT, dea_check),
    # ABA routing number: nine digits (or 4-4-1 with dashes, very weak), checksum required
    PatternSpec("ABA_ROUTING_NUMBER", "aba", _rx(_B + r"[0-8]\d{8}" + _E), 0.3, "d7", ABA_CONTEXT, aba_check),
    PatternSpec("ABA_ROUTING_NUMBER", "aba (dashed)", _rx(_B + r"\d{4}-\d{4}-\d" + _E), 0.05, "d7", ABA_CONTEXT,
                aba_check),
)
