"""Policy regexes run on RE2: pathological patterns finish on long adversarial text (in the signal
engine and in a real gateway process), Python's semantics are kept (Unicode classes, case rules,
word boundaries, anchors), and the bounded scan reads the start and end of a long text."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from conftest import base_policy, free_port
from sigroute.policies import regex as policy_regex
from sigroute.policies.regex import UnsupportedRegex, compile_regex, translate
from sigroute.signals.patterns import PolicyRegex, scan_windows

HANG_S = 60  # a hang detector, not a speed assertion: RE2 needs milliseconds here, `re` needs forever

# (pattern, adversarial text as (prefix, repeated char, count, suffix), what Python's re would say)
MIB = 1 << 20
PATHOLOGICAL = [
    ("(a+)+$", ("", "a", MIB, "!"), False),
    ("(a+)+$", ("", "a", MIB, ""), True),
    ("(a|aa)+$", ("", "a", MIB, "!"), False),
    ("(a|a?)+$", ("", "a", MIB, "!"), True),  # an empty match at the very end
    ("(.*a){20}", ("a" * 19, "b", MIB, ""), False),
    ("(x+x+)+y", ("", "x", MIB, ""), False),
    (r"(\w+\s?)+$", ("", "a", MIB, "!"), False),
    ("^(([a-z])+.)+[A-Z]([a-z])+$", ("", "a", MIB, "!"), False),
]

_ENGINE_CHILD = r"""
import asyncio, json, sys
from sigroute.policies.schema import Policy
from sigroute.signals.context import Principal, RequestContext
from sigroute.signals.engine import SignalEngine

cases = json.loads(sys.stdin.read())
out = []
for pattern, (prefix, char, count, suffix) in cases:
    policy = Policy.model_validate({
        "models": {"m": {"provider": "openai/x", "api_base": "http://127.0.0.1:1/v1"}},
        "signals": {"keyword": {"evil": {"any": [pattern], "regex": True}}},
        "decisions": [{"name": "hit", "rules": "keyword:evil", "models": ["m"]}, {"name": "default", "models": ["m"]}],
    })
    ctx = RequestContext.from_body("r", {"model": "auto", "messages": [
        {"role": "user", "content": prefix + char * count + suffix}]}, headers={}, principal=Principal())
    results = asyncio.run(SignalEngine(policy).evaluate(ctx))
    out.append(results["keyword:evil"].matched)
print(json.dumps(out))
"""


def test_pathological_regex_keyword_signals_finish_on_long_adversarial_text():
    # Each case alone would keep Python's backtracking `re` busy for longer than the universe is
    # old; run in a child process so that a regression fails here instead of hanging the suite.
    cases = [[pattern, list(text)] for pattern, text, _ in PATHOLOGICAL]
    try:
        done = subprocess.run([sys.executable, "-c", _ENGINE_CHILD], input=json.dumps(cases), capture_output=True,
                              text=True, timeout=HANG_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"evaluating pathological regex signals on 1 MiB texts did not finish in {HANG_S} s")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [expected for _, _, expected in PATHOLOGICAL]


def test_a_gateway_keeps_serving_when_a_pathological_regex_meets_a_3_mb_body(sim, tmp_path):
    policy = base_policy(sim, signals={"keyword": {"evil": {"any": ["(a+)+$"], "regex": True}}},
                         decisions=[{"name": "regex-hit", "rules": "keyword:evil", "models": ["beta"]},
                                    {"name": "default", "models": ["alpha"]}])
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "sigroute.gateway.cli", "serve", "--policy", str(path),
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "gateway process did not start"
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        body = {"model": "auto", "messages": [{"role": "user", "content": "a" * 3_000_000 + "!"}]}
        answered: dict = {}

        def ask():
            try:
                answered["response"] = httpx.post(url + "/v1/chat/completions", json=body, timeout=HANG_S)
            except httpx.HTTPError as exc:
                answered["error"] = exc

        asker = threading.Thread(target=ask)
        asker.start()
        health = httpx.get(url + "/health", timeout=HANG_S)  # the event loop is not stuck in a regex
        asker.join(HANG_S + 5)
        assert health.status_code == 200
        assert "response" in answered, f"the adversarial request was not answered: {answered.get('error')!r}"
        response = answered["response"]
        assert response.status_code == 200, response.text
        assert response.headers["x-sigroute-decision"] == "default"
        # the signal is live: a short text that ends in a's is routed by it
        hit = httpx.post(url + "/v1/chat/completions", timeout=HANG_S,
                         json={"model": "auto", "messages": [{"role": "user", "content": "baaa"}]})
        assert hit.headers["x-sigroute-decision"] == "regex-hit"
    finally:
        proc.kill()
        proc.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# Python's semantics, kept


@pytest.mark.parametrize("category, python", [
    ("word", r"\w"), ("digit", r"\d"), ("space", r"\s"),
])
def test_unicode_classes_are_exactly_pythons(category, python):
    table = policy_regex._unicode_category(category)
    rx = re.compile(python)
    members = {cp for lo, hi in table for cp in range(lo, hi + 1)}
    wrong = [cp for cp in range(0x110000) if (rx.fullmatch(chr(cp)) is not None) != (cp in members)]
    assert wrong == []
    # and RE2 receives them intact: probe both edges of every range, and just outside them
    program = compile_regex(f"^{python}$")
    probes = {cp for lo, hi in table for cp in (lo - 1, lo, hi, hi + 1) if 0 <= cp < 0x110000}
    for cp in sorted(probes):
        data = chr(cp).encode("utf-8", "surrogatepass")
        assert (program.search(data) is not None) == (cp in members), hex(cp)


def test_nothing_above_the_cased_limit_has_another_case():
    for cp in range(policy_regex.CASED_LIMIT, 0x110000):
        ch = chr(cp)
        assert ch.lower() == ch and ch.upper() == ch and ch.casefold() == ch, hex(cp)


CASE_PAIRS = [
    ("k", "K"), ("k", "\u212a"), ("K", "\u212a"),  # Kelvin sign
    ("s", "\u017f"), ("S", "\u017f"),  # long s
    ("ß", "ẞ"), ("ß", "SS"), ("strasse", "Straße"),
    ("σ", "Σ"), ("σ", "ς"), ("ς", "Σ"),
    ("i", "İ"), ("i", "I"), ("ı", "I"), ("ı", "i"),
    ("ǆ", "ǅ"), ("ǆ", "Ǆ"), ("µ", "μ"), ("µ", "Μ"), ("ω", "Ω"), ("ω", "\u2126"),
    ("é", "É"), ("café", "CAFÉ"), ("ꙋ", "ᲈ"), ("θ", "ϑ"), ("θ", "ϴ"), ("𐐨", "𐐀"),
    ("[a-z]+", "ÀB\u212a"), ("[^a-z]", "K"), ("[^a-z]", "\u212a"), (r"[\W]", "\u212a"),
]


@pytest.mark.parametrize("pattern, text", CASE_PAIRS)
def test_case_insensitive_matching_follows_pythons_case_rules(pattern, text):
    for case_sensitive in (False, True):
        python = re.search(pattern, text, 0 if case_sensitive else re.IGNORECASE) is not None
        assert PolicyRegex(pattern, case_sensitive).search(text) is python, (pattern, text, case_sensitive)
        inline = ("" if case_sensitive else "(?i)") + pattern
        assert PolicyRegex(inline).search(text) is python


UNICODE_CASES = [
    (r"\bcafé\b", "un café noir", True),
    (r"\bcafé\b", "cafés", False),  # é, then s: both word characters, no boundary
    (r"\bnaïve\b", "naïve", True),
    (r"\bna\b", "naïve", False),  # RE2's ASCII \b would say yes (ï is not an ASCII word character)
    (r"\b東京\b", "東京タワー", False),
    (r"\b東京\b", "在 東京 。", True),
    (r"^\w+$", "Größe", True),
    (r"^\w+$", "日本語", True),
    (r"\d{3}", "٣٤٥", True),  # Arabic-Indic digits are \d in Python
    (r"^\s+$", "\u3000\u00a0\u2003", True),  # ideographic, no-break and em spaces
    (r"\W", "Ωmega", False),
    (r"(?a)\w", "é", False),
    (r"(?a)\d", "٣", False),
    (r"x\b", "x", True),
    (r"\b.", " é", True),
    (r"\b\S+@", "mail: äli@example.org", True),
    (r"end$", "the end\n", True),
    (r"end$", "the end\n\n", False),
    (r"end\Z", "the end\n", False),
    (r"(?m)^b$", "a\nb\nc", True),
    (r"(?s)a.b", "a\nb", True),
    (r"a.b", "a\nb", False),
]


@pytest.mark.parametrize("pattern, text, expected", UNICODE_CASES)
def test_unicode_and_anchor_semantics_are_pythons(pattern, text, expected):
    assert (re.search(pattern, text) is not None) is expected  # the reference
    assert PolicyRegex(pattern).search(text) is expected


@pytest.mark.parametrize("pattern", [r"^\B$", r"\A\B", r"^$", r"x?", r"^\b$"])
def test_an_empty_text_matches_as_in_python(pattern):
    # Python's \B never matches an empty text (before 3.14); whatever it says, sigroute says too.
    assert PolicyRegex(pattern).search("") is (re.search(pattern, "") is not None)


def _random_pattern(rng: random.Random, depth: int = 0) -> str:
    atoms = ["a", "b", "A", "é", "É", " ", "-", "1", "_", r"\n", "ß", "k", "K", "ſ", "s", "١", "İ", "i", r"\.",
             "[ab]", "[^a]", r"\w", r"\W", r"\d", r"\D", r"\s", r"\S", ".", r"[\w-]", r"[^\W\d]", "[a-z]",
             "[^A-Z]", "[é-ê]"]
    anchors = ["^", "$", r"\A", r"\Z", r"\b", r"\B"]
    out = []
    for _ in range(rng.randint(1, 4)):
        r = rng.random()
        if r < 0.55 or depth > 2:
            atom = rng.choice(atoms)
        elif r < 0.75:
            out.append(rng.choice(anchors))
            continue
        elif r < 0.9:
            atom = "(" + _random_pattern(rng, depth + 1) + ")"
        else:
            atom = "(?:" + _random_pattern(rng, depth + 1) + "|" + _random_pattern(rng, depth + 1) + ")"
        atom += rng.choice(["", "", "", "*", "+", "?", "{1,3}", "+?"])
        out.append(atom)
    prefix = rng.choice(["", "", "", "(?i)", "(?m)", "(?s)", "(?a)", "(?ai)"])
    return prefix + "".join(out)


def test_random_patterns_match_exactly_where_python_matches():
    rng = random.Random(20240611)
    alphabet = ["a", "b", "A", "B", "é", "É", " ", "-", "1", "_", "\n", "ß", "ẞ", "K", "k", "\u212a", "ſ", "s",
                "S", "١", "İ", "i", "."]
    accepted = refused = compared = 0
    mismatches = []
    for _ in range(1500):
        pattern = _random_pattern(rng)
        case_sensitive = rng.random() < 0.5
        try:
            regex = PolicyRegex(pattern, case_sensitive)
        except UnsupportedRegex:
            refused += 1
            continue
        except ValueError:  # not a valid Python regex either (e.g. an inline flag not at the start)
            continue
        accepted += 1
        python = re.compile(pattern, 0 if case_sensitive else re.IGNORECASE)
        for _ in range(12):
            text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
            compared += 1
            if (python.search(text) is not None) != regex.search(text):
                mismatches.append((pattern, case_sensitive, text))
    assert mismatches == []
    assert accepted > 4 * refused  # the rewrites cover the common uses of \b, $ and classes


def test_invalid_patterns_keep_pythons_message():
    with pytest.raises(ValueError, match=r"invalid regular expression '\(unclosed': missing \)"):
        translate("(unclosed")


# --------------------------------------------------------------------------------------------
# the bounded scan


def test_a_long_text_is_read_at_its_start_and_its_end_only():
    scan = 1024
    filler = "x" * 10_000

    def found(pattern: str, text: str) -> bool:
        return PolicyRegex(pattern, scan_chars=scan).search(text)

    assert found("needle", "needle " + filler)  # in the first half window
    assert found("needle", filler + " needle")  # in the last half window
    assert not found("needle", filler + " needle " + filler)  # the middle is not read
    assert found("needle", filler[:100] + " needle " + filler[:100])  # a short text is read whole
    # anchors keep their meaning: the windows' inner edges are not the start or end of the text
    assert found(r"\Aneedle", "needle" + filler)
    assert not found(r"^x{10}", "y" + filler)
    assert not found(r"x$", filler + "y")
    assert found(r"x$", "y" + filler)
    assert found(r"x\Z", "y" + filler + "\n") is False
    assert found(r"x$", "y" + filler + "\n")
    # the inner edge's neighbour is real context: \b sees the x just outside the window
    head = "y" * (scan // 2 - 3) + "abc" + "x" + filler
    assert not found(r"abc\b", head)
    assert found(r"abc", head)


def test_scan_windows_are_utf8_with_one_character_of_context():
    text = "é" * 600 + "東" * 600  # 1,200 characters, 3,000 bytes
    (head, h0, h1), (tail, t0, t1) = scan_windows(text, 1024)
    assert head[h0:h1].decode() == "é" * 512 and head[h1:].decode() == "é"
    assert tail[t0:t1].decode() == "東" * 512 and tail[:t0].decode() == "東"
    (whole, w0, w1), = scan_windows(text, 4096)
    assert whole[w0:w1].decode() == text


async def test_keyword_scan_chars_option_bounds_regex_terms():
    from sigroute.policies.schema import Policy
    from sigroute.signals.context import Principal, RequestContext
    from sigroute.signals.engine import SignalEngine

    def engine(scan: int | None) -> SignalEngine:
        options = {"any": ["needle"], "regex": True} | ({} if scan is None else {"scan_chars": scan})
        return SignalEngine(Policy.model_validate({
            "models": {"m": {"provider": "openai/x", "api_base": "http://127.0.0.1:1/v1"}},
            "signals": {"keyword": {"k": options}},
            "decisions": [{"name": "hit", "rules": "keyword:k", "models": ["m"]}, {"name": "default", "models": ["m"]}],
        }))

    text = "x" * 40_000 + " needle " + "x" * 40_000  # the needle sits at character 40,001
    ctx = RequestContext.from_body("r", {"model": "auto", "messages": [{"role": "user", "content": text}]},
                                   headers={}, principal=Principal())
    assert not (await engine(None).evaluate(ctx))["keyword:k"].matched  # default: the first and last 16,384 characters
    assert (await engine(100_000).evaluate(ctx))["keyword:k"].matched


def test_regex_safety_benchmark_smoke(tmp_path, capsys):
    from benchmarks import regex_safety

    out = tmp_path / "regex.json"
    assert regex_safety.main(["--sizes", "256,2048", "--re-timeout", "0.3", "--calls", "20", "--rounds", "1",
                              "--json", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    full = json.loads(out.read_text())
    assert full["summary"] == summary
    # Python's re never finishes the nested-quantifier case, RE2 and sigroute always do
    nested = [r for r in full["pathological"] if r["name"] == "nested_plus"]
    assert [r["chars"] for r in nested] == [256, 2048]
    assert all(r["python_re_s"] == {"killed_after_s": 0.3} for r in nested)
    assert all(r["sigroute_ms"] >= 0 and r["re2_full_ms"] >= 0 for r in full["pathological"])
    assert summary["python_re_killed"].split("/")[1] == str(len(full["pathological"]))
    assert len(full["ordinary"]) == 5 * 4 and len(full["keyword_signal"]) == 4
    assert set(summary["targets_met"]) == {"few_ms_per_regex_on_largest_body", "keyword_signal_within_10pct"}
