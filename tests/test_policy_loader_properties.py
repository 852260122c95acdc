"""Property tests of the policy loader: whatever a policy file holds, loading it either gives a
`Policy` or raises `PolicyError` whose every problem names the file and a line, in a message that
can be printed, within a bounded time. Never another exception, never a traceback, never a hang.

The documents are the shipped example policies mutated by hypothesis (values replaced by values of
other types, keys removed, unknown keys added, huge numbers, odd unicode, deep nesting), the same
files edited as text (lines duplicated — duplicate keys —, removed, junk inserted), arbitrary YAML
text, and alias bombs ("billion laughs") and nesting 100,000 deep.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from sigroute.policies.loader import PolicyError, load_policy_text
from sigroute.policies.schema import Policy

EXAMPLES = sorted((Path(__file__).parent.parent / "policies" / "examples").glob("*.yaml"))
EXAMPLE_TEXTS = [path.read_text() for path in EXAMPLES]
EXAMPLE_DATA = [yaml.safe_load(text) for text in EXAMPLE_TEXTS]
SOURCE = "hostile.yaml"
LIMIT_S = 20.0          # a hang detector only: every document here loads or fails in well under a second
EXAMPLES_PER_PROPERTY = int(os.environ.get("SIGROUTE_PROPERTY_EXAMPLES", "150"))   # more: a longer hunt
SETTINGS = settings(max_examples=EXAMPLES_PER_PROPERTY, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


YAML_LINE_BREAK = re.compile("\r\n|[\r\n\x85\u2028\u2029]")


class LoaderHung(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Interrupt the block (pytest runs tests in the main thread) if it runs past `seconds`."""
    def interrupt(signum, frame):
        raise LoaderHung(f"the loader ran past {seconds:g}s")

    previous = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def load(text: str) -> Policy | PolicyError:
    """Load `text`; a `PolicyError` is returned (after checking its problems), anything else raised."""
    lines = len(YAML_LINE_BREAK.split(text))   # as YAML counts them: \r and \u2028 end a line too
    try:
        with time_limit(LIMIT_S):
            return load_policy_text(text, SOURCE)
    except PolicyError as error:
        assert error.problems, "a PolicyError without problems"
        for problem in error.problems:
            assert problem.file == SOURCE and problem.message, problem
            assert problem.line is not None and 1 <= problem.line <= lines, problem
            assert isinstance(problem.path, str), problem
            str(problem).encode("utf-8")   # printable: no lone surrogates
            assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", str(problem)), f"control character in {problem}"
        assert "Traceback" not in str(error)
        return error


# --------------------------------------------------------------------------------------------
# values

ODD_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30) | st.sampled_from([
    "\u202e", "\ud800", "\x00", "\x1b[31m", "\ufeff", "日本語", "🚀" * 20, "a" * 5000, "", " ", "~", "null", "yes",
    "&a", "*a", "<<", "- x", "key: value", "{", "'", '"', "\\", "%YAML", "---", "...", "!!python/object:os.system"])
HUGE_INT_MARK = "__huge_int_{}__"   # replaced by that many digits after dumping (safe_dump cannot write them)
SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | ODD_TEXT \
    | st.integers(min_value=5, max_value=20_000).map(HUGE_INT_MARK.format) | st.sampled_from([10**300, -(2**63)])
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=12) | st.integers(), inner, max_size=4), max_leaves=12)


def paths_of(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            out += paths_of(value, prefix + (key,))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += paths_of(value, prefix + (i,))
    return out


def nested(value: Any, depth: int, kind: str) -> Any:
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


@st.composite
def mutated_policy(draw) -> str:
    """An example policy with one to three places changed, dumped as YAML text."""
    import copy

    data = copy.deepcopy(draw(st.sampled_from(EXAMPLE_DATA)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(paths_of(data)))
        parent, key = (None, None) if not path else (get(data, path[:-1]), path[-1])
        mutation = draw(st.sampled_from(["replace", "delete", "unknown key", "nest", "duplicate item"]))
        if mutation == "replace" or parent is None:
            value = draw(JUNK)
            if parent is None:
                data = value
                continue
            parent[key] = value
        elif mutation == "delete":
            del parent[key]
        elif mutation == "unknown key":
            target = get(data, path)
            if isinstance(target, dict):
                target[draw(st.text(min_size=1, max_size=20))] = draw(JUNK)
        elif mutation == "nest":
            parent[key] = nested(parent[key], draw(st.integers(1, 300)), draw(st.sampled_from(["list", "dict"])))
        elif mutation == "duplicate item" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
    try:
        text = yaml.safe_dump(data, allow_unicode=draw(st.booleans()), sort_keys=False, width=10**6)
    except RecursionError:   # PyYAML's writer recurses too: stacked nestings it cannot write are not tried
        reject()
    return re.sub(r"'?__huge_int_(\d+)__'?", lambda m: "9" * int(m.group(1)), text)


def get(data: Any, path: tuple) -> Any:
    for element in path:
        data = data[element]
    return data


@st.composite
def edited_text(draw) -> str:
    """An example policy file edited as text: lines duplicated (duplicate keys), removed, moved,
    re-indented, or junk inserted."""
    lines = draw(st.sampled_from(EXAMPLE_TEXTS)).split("\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        edit = draw(st.sampled_from(["duplicate", "delete", "indent", "dedent", "insert", "anchor", "tab"]))
        if edit == "duplicate":
            lines.insert(i, lines[i])
        elif edit == "delete" and len(lines) > 1:
            del lines[i]
        elif edit == "indent":
            lines[i] = " " * draw(st.integers(1, 7)) + lines[i]
        elif edit == "dedent":
            lines[i] = lines[i].lstrip()
        elif edit == "insert":
            lines.insert(i, draw(ODD_TEXT | st.text(alphabet="[]{}:,-&*!|>'\"#%@` \tab<", max_size=30)))
        elif edit == "anchor":
            lines[i] = lines[i].replace(": ", ": &x ", 1) if i % 2 else lines[i].replace(": ", ": *x ", 1)
        elif edit == "tab":
            lines[i] = "\t" + lines[i]
    return "\n".join(lines)


def billion_laughs(fan_out: int, levels: int, flow: bool) -> str:
    lines = ["a0: &a0 " + ("[" + ", ".join(["lol"] * fan_out) + "]" if flow else "lol")]
    for level in range(1, levels + 1):
        refs = [f"*a{level - 1}"] * fan_out
        lines.append(f"a{level}: &a{level} [" + ", ".join(refs) + "]")
    return "\n".join(lines) + "\nmodels: *a" + str(levels) + "\n"


# --------------------------------------------------------------------------------------------
# properties


def test_the_examples_themselves_load():
    assert all(isinstance(load(text), Policy) for text in EXAMPLE_TEXTS)


@SETTINGS
@given(mutated_policy())
def test_mutated_policies_load_or_fail_with_located_problems(text):
    load(text)


@SETTINGS
@given(edited_text())
def test_policies_edited_as_text_load_or_fail_with_located_problems(text):
    load(text)


@SETTINGS
@given(st.text(alphabet=st.sampled_from(list("[]{}:,-&*!|>?'\"#%@`~ \t\nab01.<=")) | st.characters(), max_size=200))
def test_arbitrary_text_fails_with_located_problems(text):
    assert isinstance(load(text), PolicyError)


@settings(max_examples=25, deadline=None, database=None)
@given(st.integers(2, 10), st.integers(2, 12), st.booleans())
def test_alias_bombs_are_refused_without_expanding_them(fan_out, levels, flow):
    result = load(billion_laughs(fan_out, levels, flow))
    assert isinstance(result, PolicyError)


@pytest.mark.parametrize("text", [
    "models: " + "[" * 100_000 + "]" * 100_000,
    "models: " + "{a: " * 100_000 + "1" + "}" * 100_000,
    "".join("  " * i + f"k{i}:\n" for i in range(3000)),
    "".join("  " * i + "-\n" for i in range(3000)),
], ids=["flow lists 100,000 deep", "flow mappings 100,000 deep", "block mappings 3,000 deep",
        "block lists 3,000 deep"])
def test_deep_nesting_is_refused_with_its_line(text):
    error = load(text)
    assert isinstance(error, PolicyError) and "levels deep" in str(error)


@pytest.mark.parametrize("text, words", [
    ("version: " + "9" * 5000, "cannot read the value"),              # beyond Python's int-from-text limit
    ("version: 2024-02-30", "day is out of range"),                     # a date YAML resolves but cannot build
    ("version: 1\n" + "9" * 5000 + "1: x", ""),
    ("models: {}\nversion: \"\\ud800\"", "\\ud800"),                    # a lone surrogate: printed escaped
    ("models: {}\nversion: \"\\x1b[2J\"", "\\x1b"),                     # a terminal escape: printed escaped
    ("version: 1\nmodels:\x00", "U+0000"),                              # a character YAML refuses: with its line
    ("version: 1\nversion: 1", "duplicate key"),
    ("a: &a [*a]", "recursive"),
], ids=["an integer of 5,000 digits", "an impossible date", "a key of 5,000 digits", "a lone surrogate",
        "a terminal escape", "a NUL character", "a duplicate key", "a recursive alias"])
def test_values_python_cannot_build_are_problems_too(text, words):
    error = load(text)
    assert isinstance(error, PolicyError) and words in str(error)


def test_feature_group_options_that_are_not_a_mapping_are_a_problem():
    """Found by test_mutated_policies_…: `{embedding: "x"}` raised a TypeError inside a pydantic
    validator (which only turns ValueErrors into validation errors): a traceback, not a problem."""
    import copy

    data = copy.deepcopy(next(d for d in EXAMPLE_DATA if "linucb" in str(d)))
    decision = next(d for d in data["decisions"] if "linucb" in str(d.get("algorithm")))
    decision["algorithm"]["linucb"]["features"] = ["bias", {"embedding": "x"}]
    error = load(yaml.safe_dump(data, sort_keys=False))
    assert isinstance(error, PolicyError)
    assert any(p.path.endswith("linucb.features[1]") and "must be a mapping" in p.message for p in error.problems)
