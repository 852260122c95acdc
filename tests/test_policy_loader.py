"""Policy loading: every kind of mistake is reported with its key path and the right line."""

from __future__ import annotations

import hashlib
import json
import re
import textwrap
from pathlib import Path

import pydantic
import pytest

from sigroute.policies.loader import (
    PolicyError,
    Problem,
    load_default_policy,
    load_policy,
    load_policy_text,
    parse_yaml,
    policy_warnings,
)
from sigroute.policies.schema import Policy, json_schema

EXAMPLES = Path(__file__).resolve().parent.parent / "policies" / "examples"

MODELS = """\
models:
  small:
    provider: openai/sim-small
    api_base: http://127.0.0.1:8099/v1
  large:
    provider: openai/sim-large
    api_base: http://127.0.0.1:8099/v1
"""

SIGNALS = """\
signals:
  keyword:
    urgent:
      any: [urgent, asap]
"""

DEFAULT_DECISION = """\
  - name: default
    models: [small]
"""


def block(text: str) -> str:
    return textwrap.dedent(text)


def policy(*parts: str) -> str:
    return "".join(parts)


def line_of(text: str, needle: str, occurrence: int = 1) -> int:
    """1-based line of the n-th line containing `needle`."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(hits) >= occurrence, f"{needle!r} not found {occurrence} time(s)"
    return hits[occurrence - 1]


def problems(text: str) -> list[Problem]:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "policy.yaml")
    err = info.value
    assert isinstance(err, ValueError)
    assert err.problems
    # str() is one problem per line, FILE:LINE: path: message
    assert str(err).splitlines() == [str(p) for p in err.problems]
    return err.problems


def only(text: str) -> Problem:
    found = problems(text)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def expect(text: str, path: str, line: int, *fragments: str) -> Problem:
    p = only(text)
    assert p.file == "policy.yaml"
    assert p.path == path, str(p)
    assert p.line == line, str(p)
    for fragment in fragments:
        assert fragment in p.message, str(p)
    assert str(p) == f"policy.yaml:{line}: {path}: {p.message}"
    return p


# --------------------------------------------------------------------------------------------
# unknown keys


def test_unknown_top_level_key_suggests_the_right_one():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION, "entrypoint:\n  auto: {}\n")
    expect(text, "entrypoint", line_of(text, "entrypoint:"), "unknown key 'entrypoint'", "did you mean 'entrypoints'?")


def test_unknown_key_in_a_model_spec():
    text = policy(
        block("""\
        models:
          small:
            provider: openai/sim-small
            api_bse: http://127.0.0.1:8099/v1
        decisions:
        """),
        DEFAULT_DECISION,
    )
    expect(text, "models.small.api_bse", line_of(text, "api_bse"), "unknown key 'api_bse'", "did you mean 'api_base'?")


def test_unknown_key_without_close_match_lists_allowed_keys():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION, "    colour: blue\n")
    p = expect(text, "decisions[0].colour", line_of(text, "colour"), "unknown key 'colour'")
    assert "allowed keys here:" in p.message and "priority" in p.message


def test_typo_in_signal_type():
    text = policy(MODELS, "signals:\n  keywords:\n    urgent: {any: [asap]}\ndecisions:\n", DEFAULT_DECISION)
    expect(text, "signals.keywords", line_of(text, "keywords:"), "unknown signal type 'keywords'",
           "did you mean 'keyword'?")


# --------------------------------------------------------------------------------------------
# references


def test_decision_referencing_an_undefined_signal_points_at_the_leaf():
    text = policy(
        MODELS, SIGNALS,
        block("""\
        decisions:
          - name: rush
            models: [large]
            rules:
              any:
                - header:vip
                - keyword:urgnt
        """),
        DEFAULT_DECISION,
    )
    found = problems(text)
    assert [p.path for p in found] == ["decisions[0].rules.any[0]", "decisions[0].rules.any[1]"]
    vip, urgnt = found
    assert vip.line == line_of(text, "header:vip")
    assert "signal 'header:vip' is not defined" in vip.message
    assert urgnt.line == line_of(text, "keyword:urgnt")
    assert "'keyword:urgnt' is not defined under 'signals.keyword'" in urgnt.message
    assert "did you mean 'keyword:urgent'?" in urgnt.message


def test_rule_leaf_with_unknown_signal_type():
    text = policy(MODELS, SIGNALS, "decisions:\n  - name: x\n    models: [large]\n    rules: keywrd:urgent\n",
                  DEFAULT_DECISION)
    expect(text, "decisions[0].rules", line_of(text, "keywrd:urgent"), "unknown signal type 'keywrd'",
           "did you mean 'keyword'?")


def test_decision_referencing_an_undefined_model():
    text = policy(MODELS, "decisions:\n  - name: default\n    models:\n      - small\n      - lrage\n")
    expect(text, "decisions[0].models[1]", line_of(text, "- lrage"), "model 'lrage' is not defined",
           "did you mean 'large'?")


def test_entrypoint_naming_an_undefined_decision():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION, "entrypoints:\n  auto:\n    decisions: [default, defualt]\n")
    expect(text, "entrypoints.auto.decisions[1]", line_of(text, "defualt"), "decision 'defualt' is not defined",
           "did you mean 'default'?")


def test_entrypoint_named_like_a_model():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION, "entrypoints:\n  auto: {}\n  small: {}\n")
    expect(text, "entrypoints.small", line_of(text, "  small: {}"), "same name as a model")


# --------------------------------------------------------------------------------------------
# rule syntax


def test_rules_with_a_bad_leaf_string():
    text = policy(
        MODELS, SIGNALS,
        block("""\
        decisions:
          - name: rush
            models: [large]
            rules:
              any:
                - keyword:urgent
                - all: [keyword:urgent, urgent]
        """),
        DEFAULT_DECISION,
    )
    expect(text, "decisions[0].rules.any[1].all[1]", line_of(text, "- all: [keyword:urgent, urgent]"),
           "'urgent' is not a signal reference", "type:name")


def test_rules_mapping_with_two_keys():
    text = policy(
        MODELS, SIGNALS,
        block("""\
        decisions:
          - name: rush
            models: [large]
            rules:
              all: [keyword:urgent]
              any: [keyword:urgent]
        """),
        DEFAULT_DECISION,
    )
    expect(text, "decisions[0].rules", line_of(text, "rules:"), "got keys: all, any")


def test_rules_all_is_not_a_list():
    text = policy(MODELS, SIGNALS, "decisions:\n  - name: rush\n    models: [large]\n    rules:\n      all: keyword:urgent\n",
                  DEFAULT_DECISION)
    expect(text, "decisions[0].rules.all", line_of(text, "all: keyword:urgent"), "'all' takes a list of rules")


def test_empty_all_gives_one_message_not_one_per_union_branch():
    text = policy(MODELS, SIGNALS,
                  "decisions:\n  - name: rush\n    models: [large]\n    rules:\n      not:\n        all: []\n",
                  DEFAULT_DECISION)
    expect(text, "decisions[0].rules.not.all", line_of(text, "all: []"), "needs at least 1 item")


# --------------------------------------------------------------------------------------------
# decisions


def test_two_default_decisions():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION, "  - name: fallback\n    models: [large]\n")
    expect(text, "decisions[1]", line_of(text, "name: fallback"), "only one decision may omit 'rules'",
           "default, fallback")


def test_no_default_decision():
    text = policy(MODELS, SIGNALS, "decisions:\n  - name: rush\n    models: [large]\n    rules: keyword:urgent\n")
    expect(text, "decisions", line_of(text, "decisions:"), "no default decision")


def test_duplicate_decision_names():
    text = policy(MODELS, SIGNALS, "decisions:\n", DEFAULT_DECISION,
                  "  - name: default\n    models: [large]\n    rules: keyword:urgent\n")
    p = expect(text, "decisions[1].name", line_of(text, "name: default", 2), "decision 'default' is defined twice")
    assert f"first at line {line_of(text, 'name: default')}" in p.message


def test_wrong_type_for_priority():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION, "    priority: high\n")
    expect(text, "decisions[0].priority", line_of(text, "priority: high"), "expected a whole number, got 'high'")


def test_models_given_as_a_string_instead_of_a_list():
    text = policy(MODELS, "decisions:\n  - name: default\n    models: small\n")
    expect(text, "decisions[0].models", line_of(text, "models: small"), "expected a list, got 'small'", "[small]")


def test_missing_required_key():
    text = policy(MODELS, "decisions:\n  - name: default\n    priority: 3\n")
    expect(text, "decisions[0]", line_of(text, "name: default"), "missing required key 'models'")


# --------------------------------------------------------------------------------------------
# values


def test_negative_price():
    text = policy(
        block("""\
        models:
          small:
            provider: openai/sim-small
            price:
              input: 0.1
              output: -2
        decisions:
        """),
        DEFAULT_DECISION,
    )
    expect(text, "models.small.price.output", line_of(text, "output: -2"), "must not be negative, got -2")


def test_invalid_regex_in_keyword_signal():
    text = policy(
        MODELS,
        block("""\
        signals:
          keyword:
            ids:
              regex: true
              any:
                - '\\d{3}'
                - '(unclosed'
        decisions:
        """),
        DEFAULT_DECISION,
    )
    expect(text, "signals.keyword.ids.any[1]", line_of(text, "(unclosed"), "invalid regular expression '(unclosed'")


def test_regex_that_needs_backtracking_is_refused_with_file_line_key_and_what_to_write():
    # Policy regexes run on RE2 (linear time): constructs only a backtracking engine can run are
    # refused at load, at the exact term, with what to write instead.
    text = policy(
        MODELS,
        block("""\
        signals:
          keyword:
            repeats:
              regex: true
              any:
                - '\\bJIRA-\\d+\\b'
                - '(\\w+) \\1'
        decisions:
        """),
        DEFAULT_DECISION,
    )
    expect(text, "signals.keyword.repeats.any[1]", line_of(text, "(\\w+)"),
           "unsupported regular expression '(\\\\w+) \\\\1'", "backreference", "RE2", "Write the repeated text out")


@pytest.mark.parametrize("pattern, what, fix", [
    ("(?<!un)safe", "lookbehind (?<!...)", "its own keyword signal"),
    ("foo(?=bar)", "lookahead (?=...)", "Match the surrounding text itself"),
    ("a++b", "possessive repeat", "without"),
    ("(?>ab)c", "atomic group", "without"),
    ("(a)?(?(1)b|c)", "conditional group", "alternatives with |"),
    ("x{2000}", "above RE2's limit of 1000", "at most 1000"),
    ("a$b", "'$' before the end of the pattern", "\\Z"),
    ("\\w{100}", "RE2 instructions", "narrower class"),
])
def test_unsupported_regex_constructs_name_what_to_change(pattern, what, fix):
    text = policy(
        MODELS,
        "signals:\n  header:\n    agent:\n      name: user-agent\n"
        f"      pattern: '{pattern}'\n"
        "decisions:\n",
        DEFAULT_DECISION,
    )
    p = expect(text, "signals.header.agent.pattern", line_of(text, "pattern:"), "unsupported regular expression",
               what, fix)
    assert repr(pattern) in p.message


def test_scan_chars_is_for_regex_terms_only():
    text = policy(MODELS, "signals:\n  keyword:\n    k:\n      any: [a]\n      scan_chars: 4096\ndecisions:\n",
                  DEFAULT_DECISION)
    expect(text, "signals.keyword.k", line_of(text, "k:"), "'scan_chars' bounds regex terms only")
    text = policy(MODELS, "signals:\n  keyword:\n    k:\n      any: [a]\n      regex: true\n"
                          "      scan_chars: 100\ndecisions:\n", DEFAULT_DECISION)
    expect(text, "signals.keyword.k.scan_chars", line_of(text, "scan_chars"), "must be at least 1024")


def test_keyword_signal_with_both_any_and_all():
    text = policy(MODELS, "signals:\n  keyword:\n    both:\n      any: [a]\n      all: [b]\ndecisions:\n", DEFAULT_DECISION)
    expect(text, "signals.keyword.both", line_of(text, "both:"), "give exactly one of 'any', 'all' or 'none'",
           "found any and all")


def test_unquoted_no_is_a_boolean_and_the_message_says_so():
    text = policy(MODELS, "signals:\n  language:\n    nordic: {languages: [sv, no]}\ndecisions:\n", DEFAULT_DECISION)
    expect(text, "signals.language.nordic.languages[1]", line_of(text, "nordic"), "expected text, got false",
           "quotes")


# --------------------------------------------------------------------------------------------
# algorithms


def test_unknown_algorithm_name():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION, "    algorithm: cheapset\n")
    expect(text, "decisions[0].algorithm", line_of(text, "cheapset"), "unknown algorithm 'cheapset'",
           "did you mean 'cheapest'?")


def test_bad_algorithm_option():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION,
                  "    algorithm:\n      fastest:\n        half_life: 60\n")
    expect(text, "decisions[0].algorithm.fastest.half_life", line_of(text, "half_life"), "unknown key 'half_life'",
           "did you mean 'half_life_s'?")


def test_bad_algorithm_option_value():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION,
                  "    algorithm:\n      cheapest:\n        expected_output_tokens: lots\n")
    expect(text, "decisions[0].algorithm.cheapest.expected_output_tokens", line_of(text, "lots"),
           "expected a whole number, got 'lots'")


def test_weighted_weights_naming_a_model_not_in_the_decision():
    text = policy(
        MODELS,
        block("""\
        decisions:
          - name: default
            models: [small]
            algorithm:
              weighted:
                weights:
                  small: 3
                  large: 1
        """),
    )
    expect(text, "decisions[0].algorithm.weighted.weights.large", line_of(text, "large: 1"),
           "weight given for 'large'", "not among this decision's models")


# --------------------------------------------------------------------------------------------
# secrets and auth


def test_api_key_env_that_looks_like_a_literal_key():
    text = policy(
        block("""\
        models:
          small:
            provider: openai/gpt-4o-mini
            api_key_env: sk-proj-abc123
        decisions:
        """),
        DEFAULT_DECISION,
    )
    expect(text, "models.small.api_key_env", line_of(text, "api_key_env"), "looks like an API key",
           "environment variable")


def test_auth_key_with_neither_hash_nor_env():
    text = policy(
        MODELS, "decisions:\n", DEFAULT_DECISION,
        block("""\
        auth:
          keys:
            - key_env: TENANT_A_KEY
              tenant: a
            - tenant: b
              roles: [reader]
        """),
    )
    expect(text, "auth.keys[1]", line_of(text, "tenant: b"), "give exactly one of key_sha256 or key_env",
           "none is given")


# --------------------------------------------------------------------------------------------
# YAML itself


def test_duplicate_yaml_keys_name_both_lines():
    text = policy(MODELS, "decisions:\n", DEFAULT_DECISION, "    priority: 1\n    priority: 2\n")
    p = expect(text, "decisions[0].priority", line_of(text, "priority: 2"), "duplicate key 'priority'")
    assert f"lines {line_of(text, 'priority: 1')} and {line_of(text, 'priority: 2')}" in p.message


def test_duplicate_model_names():
    text = policy(MODELS, "  small:\n    provider: openai/other\ndecisions:\n", DEFAULT_DECISION)
    expect(text, "models.small", line_of(text, "small:", 2), "duplicate key 'small'")


def test_yaml_syntax_error_names_line_and_column():
    text = policy(MODELS, "decisions:\n  - name: default\n    models: [small\n  - name: other\n")
    p = only(text)
    assert p.path == ""
    assert p.line is not None and line_of(text, "models: [small") <= p.line <= line_of(text, "name: other")
    assert p.column is not None
    assert "YAML syntax error" in p.message and "flow sequence" in p.message
    assert str(p).startswith(f"policy.yaml:{p.line}: YAML syntax error")


def test_tab_indentation_is_explained():
    text = policy(MODELS, "decisions:\n\t- name: default\n")
    p = only(text)
    assert p.line == line_of(text, "\t- name")
    assert "tabs" in p.message


def test_empty_file():
    for text in ("", "# only a comment\n", "---\n"):
        p = only(text)
        assert "empty" in p.message and "'models'" in p.message


def test_top_level_list():
    p = only("- models\n- decisions\n")
    assert p.line == 1
    assert "top level must be a mapping" in p.message and "got a list" in p.message


def test_several_problems_are_reported_together_in_file_order():
    text = policy(
        block("""\
        modles: {}
        models:
          small: {provider: openai/sim-small, timeout_s: -1}
        decisions:
          - name: default
            models: [small]
            priority: high
        """)
    )
    found = problems(text)
    assert [p.path for p in found] == ["modles", "models.small.timeout_s", "decisions[0].priority"]
    assert [p.line for p in found] == [1, 3, 7]


def test_load_policy_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(policy(MODELS, "decisions:\n", DEFAULT_DECISION, "    priority: high\n"))
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert str(info.value).startswith(f"{path}:{line_of(path.read_text(), 'priority: high')}: decisions[0].priority:")


def test_missing_file_is_a_policy_error(tmp_path):
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "nope.yaml")
    assert "cannot read" in str(info.value)


def test_positions_cover_keys_and_items():
    data, positions = parse_yaml("a:\n  b:\n    - x\n    - y: 1\n")
    assert data == {"a": {"b": ["x", {"y": 1}]}}
    assert positions[("a",)] == (1, 1)
    assert positions[("a", "b")] == (2, 3)
    assert positions[("a", "b", 0)] == (3, 7)
    assert positions[("a", "b", 1)] == (4, 7)
    assert positions[("a", "b", 1, "y")] == (4, 7)


def test_yaml_merge_keys_work():
    text = policy(
        block("""\
        models:
          small: &sim {provider: openai/sim-small, api_base: "http://127.0.0.1:8099/v1", timeout_s: 5}
          large:
            <<: *sim
            provider: openai/sim-large
        decisions:
          - {name: default, models: [small, large]}
        """)
    )
    loaded = load_policy_text(text)
    assert loaded.models["large"].provider == "openai/sim-large"
    assert loaded.models["large"].timeout_s == 5


# --------------------------------------------------------------------------------------------
# examples, immutability, warnings, JSON schema


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_loads(path):
    loaded = load_policy(path)
    assert isinstance(loaded, Policy)
    assert loaded.default_decision is not None
    assert "auto" in loaded.entrypoints


def test_the_expected_examples_exist():
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"default.yaml", "cost-optimized.yaml", "privacy-regulated.yaml", "latency-sensitive.yaml",
            "learning.yaml", "support-cache.yaml"} <= names


def test_default_policy_routes_to_the_simulator_without_keys():
    loaded = load_default_policy()
    assert set(loaded.models) >= {"sim-small", "sim-medium", "sim-large", "sim-coder"}
    for spec in loaded.models.values():
        assert spec.api_base == "http://127.0.0.1:8099/v1"
        assert spec.api_key_env is None
    assert loaded.default_decision.algorithm.name == "cheapest"
    algorithms = {d.algorithm.name for d in loaded.decisions}
    assert {"static", "weighted", "round_robin", "cheapest", "fastest"} <= algorithms
    assert policy_warnings(loaded, environ={}) == []


def test_privacy_example_hashes_match_the_keys_in_its_comments():
    text = (EXAMPLES / "privacy-regulated.yaml").read_text()
    pairs = re.findall(r"key_sha256: ([0-9a-f]{64})\s+# (sk-\S+)", text)
    assert len(pairs) >= 2
    for digest, key in pairs:
        assert hashlib.sha256(key.encode()).hexdigest() == digest, key
    loaded = load_policy(EXAMPLES / "privacy-regulated.yaml")
    assert loaded.routing.allow_direct_models is False


def test_loaded_policy_is_immutable():
    loaded = load_default_policy()
    with pytest.raises(pydantic.ValidationError):
        loaded.routing = loaded.routing  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        loaded.decisions[0].priority = 7  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        loaded.models["sim-small"].price = None  # type: ignore[misc]
    with pytest.raises(TypeError):
        loaded.decisions[0].models[0] = "x"  # type: ignore[index]


def test_algorithm_options_survive_model_dump():
    dumped = load_default_policy().model_dump()
    weighted = next(d for d in dumped["decisions"] if d["algorithm"]["name"] == "weighted")
    assert weighted["algorithm"]["options"]["weights"] == {"sim-coder": 3.0, "sim-large": 1.0}


def test_policy_warnings():
    text = policy(
        block("""\
        models:
          small: {provider: openai/gpt-4o-mini, api_key_env: SIGROUTE_TEST_UNSET_KEY}
          large: {provider: openai/gpt-4o, api_key_env: SIGROUTE_TEST_SET_KEY}
        signals:
          keyword:
            urgent: {any: [urgent]}
            unused: {any: [never]}
        decisions:
          - {name: first, priority: 10, rules: keyword:urgent, models: [large]}
          - {name: second, priority: 5, rules: keyword:urgent, models: [small]}
          - {name: default, models: [small]}
        """)
    )
    warnings = policy_warnings(load_policy_text(text), environ={"SIGROUTE_TEST_SET_KEY": "x"})
    joined = "\n".join(warnings)
    assert "SIGROUTE_TEST_UNSET_KEY is not set" in joined and "'small'" in joined
    assert "SIGROUTE_TEST_SET_KEY" not in joined
    assert "decision 'second' can never win" in joined and "'first'" in joined
    assert "signal 'keyword:unused' is declared but" in joined
    assert len(warnings) == 3


def test_json_schema_export():
    schema = json.loads(json.dumps(json_schema()))
    assert schema["title"] == "sigroute policy"
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert {"version", "models", "signals", "decisions", "entrypoints", "routing", "auth", "server",
            "upstream"} <= set(schema["properties"])
    assert set(schema["required"]) == {"models", "decisions"}


def test_unknown_plugin_is_rejected_not_ignored():
    text = (
        "models: {m: {provider: openai/x, api_base: 'http://127.0.0.1:1/v1'}}\n"
        "decisions:\n"
        "  - name: default\n"
        "    models: [m]\n"
        "    plugins: [{guardrails: {action: block}}]\n"
    )
    with pytest.raises(PolicyError) as err:
        load_policy_text(text, source="p.yaml")
    message = str(err.value)
    assert "p.yaml:5:" in message and "decisions[0].plugins" in message and "unknown plugin 'guardrails'" in message
    assert "jailbreak" in message   # the message lists the plugins this version has
