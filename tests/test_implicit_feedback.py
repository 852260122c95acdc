"""Implicit feedback end to end: a follow-up turn (re-ask, dissatisfaction cue, moving on) credits
the earlier answer's decision through the delayed-reward path — real gateways on loopback, the
official openai client, the simulated upstream, a real Redis for the shared served-answer index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import base_policy

LEARN = {"linucb": {"alpha": 0.2, "features": ["bias", "length", "shape"],
                    "reward": {"quality": 1.0, "feedback_ttl_s": 600}}}
DEFAULT_QUALITY = 0.5
IMPLICIT = {"implicit": {"enabled": True, "window": "10m"}}
CUES_SET = Path(__file__).parent / "data" / "dissatisfaction_cues.jsonl"


def implicit_policy(sim, *, feedback=IMPLICIT, **overrides):
    overrides.setdefault("decisions", [{"name": "learn", "models": ["alpha", "beta"], "algorithm": LEARN}])
    return base_policy(sim, feedback=feedback, **overrides)


def make_gateway(gateway_factory, policy, tmp_path, **options):
    from sigroute.bandits.replay import DecisionLog

    log_path = tmp_path / f"decisions-{len(list(tmp_path.iterdir()))}.jsonl"
    gw = gateway_factory(policy, decision_log=DecisionLog(log_path), **options)
    gw.log_path = log_path
    return gw


def ask(gw, messages, user="u1", api_key="unused"):
    """One chat turn through the official client: (answer text, request id, response headers)."""
    raw = gw.client(api_key).chat.completions.with_raw_response.create(model="auto", messages=messages, user=user)
    completion = raw.parse()
    return completion.choices[0].message.content, raw.headers["x-sigroute-request-id"], raw.headers


def conversation(gw, first, follow, user="u1", follow_user=None, api_key="unused", follow_key=None):
    """Turn one, then the follow-up turn carrying turn one's answer: (first request id, follow-up headers)."""
    answer, rid, _ = ask(gw, [{"role": "user", "content": first}], user=user, api_key=api_key)
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": answer},
               {"role": "user", "content": follow}]
    _, _, headers = ask(gw, history, user=follow_user or user, api_key=follow_key or api_key)
    return rid, headers


def feedback_events(gw):
    lines = gw.log_path.read_text().splitlines() if gw.log_path.exists() else []
    return [e for e in map(json.loads, lines) if e["type"] == "feedback"]


def metric(gw, name, **labels):
    for line in gw.http.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------------------------
# the three verdicts


def test_a_reask_credits_the_earlier_answer_low(sim, gateway_factory, tmp_path):
    gw = make_gateway(gateway_factory, implicit_policy(sim), tmp_path)
    rid, headers = conversation(gw, "What is the boiling point of water at sea level?",
                                "what is the boiling point of water at sea level")   # the same, asked again
    assert headers["x-sigroute-implicit-feedback"] == f"reask; request={rid}; status=credited"
    [event] = feedback_events(gw)
    assert event["request_id"] == rid and event["source"] == "implicit" and event["event"] == "reask"
    # learned quality = default + 0.8 * (0 - default): credited low
    assert event["quality"] == pytest.approx(DEFAULT_QUALITY * (1 - 0.8))
    assert event["credit"] == pytest.approx(-0.8 * DEFAULT_QUALITY)
    assert event["details"] == {"by": "text"}   # this policy loads no encoder: the same normalized text
    assert metric(gw, "sigroute_feedback_credits_total", source="implicit", event="reask", status="applied") == 1
    assert metric(gw, "sigroute_implicit_feedback_total", outcome="credited") == 1


def test_a_german_dissatisfaction_cue_is_credited(sim, gateway_factory, tmp_path):
    gw = make_gateway(gateway_factory, implicit_policy(sim), tmp_path)
    rid, headers = conversation(gw, "Wie hoch ist die Zugspitze?", "Das ist falsch, versuch es nochmal.")
    assert headers["x-sigroute-implicit-feedback"] == f"dissatisfied; request={rid}; status=credited"
    [event] = feedback_events(gw)
    assert event["event"] == "dissatisfied" and event["quality"] == 0.0
    assert event["credit"] == pytest.approx(-DEFAULT_QUALITY)
    assert event["details"] == {"language": "de"}   # which language's cue, never the user's words
    assert "falsch" not in gw.log_path.read_text()


def test_moving_on_is_weakly_positive(sim, gateway_factory, tmp_path):
    gw = make_gateway(gateway_factory, implicit_policy(sim), tmp_path)
    rid, headers = conversation(gw, "Name a prime number above 50.", "Thanks! Now write a limerick about cats.")
    assert headers["x-sigroute-implicit-feedback"] == f"moved_on; request={rid}; status=credited"
    [event] = feedback_events(gw)
    assert event["quality"] == pytest.approx(DEFAULT_QUALITY + 0.3 * (1 - DEFAULT_QUALITY))
    assert 0 < event["credit"] == pytest.approx(0.3 * (1 - DEFAULT_QUALITY))


def test_policy_weights_are_used(sim, gateway_factory, tmp_path):
    feedback = {"weights": {"moved_on": 0.0}, **IMPLICIT}
    gw = make_gateway(gateway_factory, implicit_policy(sim, feedback=feedback), tmp_path)
    conversation(gw, "Name a prime number above 50.", "Thanks! Now write a limerick about cats.")
    [event] = feedback_events(gw)
    assert event["credit"] == 0.0
    # feedback.weights.explicit weighs POST /v1/feedback alike
    gw = make_gateway(gateway_factory, implicit_policy(sim, feedback={"weights": {"explicit": 0.5}}), tmp_path)
    _, rid, _ = ask(gw, [{"role": "user", "content": "Name a prime number above 60."}])
    assert gw.http.post("/v1/feedback", json={"request_id": rid, "thumbs": "down"}).status_code == 200
    [event] = feedback_events(gw)
    assert event["source"] == "explicit" and event["credit"] == pytest.approx(0.5 * (0 - DEFAULT_QUALITY))


# --------------------------------------------------------------------------------------------
# precedence and once-only


def test_explicit_feedback_wins_over_implicit(sim, gateway_factory, tmp_path):
    gw = make_gateway(gateway_factory, implicit_policy(sim), tmp_path)
    # explicit first: the follow-up's implicit verdict changes nothing
    answer, rid, _ = ask(gw, [{"role": "user", "content": "Spell 'necessary'."}])
    assert gw.http.post("/v1/feedback", json={"request_id": rid, "thumbs": "up"}).status_code == 200
    history = [{"role": "user", "content": "Spell 'necessary'."}, {"role": "assistant", "content": answer},
               {"role": "user", "content": "That's wrong."}]
    _, _, headers = ask(gw, history)
    assert headers["x-sigroute-implicit-feedback"] == f"dissatisfied; request={rid}; status=explicit_first"
    assert [e["source"] for e in feedback_events(gw) if e["request_id"] == rid] == ["explicit"]

    # implicit first, explicit later: the explicit credit replaces it (credits add to explicit alone)
    rid2, headers = conversation(gw, "Spell 'rhythm'.", "Try again.")
    assert headers["x-sigroute-implicit-feedback"].startswith("dissatisfied;")
    explicit = gw.http.post("/v1/feedback", json={"request_id": rid2, "thumbs": "up"})
    assert explicit.status_code == 200 and explicit.json()["replaced"] == {"source": "implicit", "event": "dissatisfied"}
    events = [e for e in feedback_events(gw) if e["request_id"] == rid2]
    assert [e["source"] for e in events] == ["implicit", "explicit"]
    assert sum(e["credit"] for e in events) == pytest.approx(1.0 - DEFAULT_QUALITY)
    assert metric(gw, "sigroute_feedback_credits_total", source="explicit", status="replaced_implicit") == 1


def test_an_answer_is_credited_implicitly_once(sim, gateway_factory, tmp_path):
    gw = make_gateway(gateway_factory, implicit_policy(sim), tmp_path)
    answer, rid, _ = ask(gw, [{"role": "user", "content": "Capital of Peru?"}])
    history = [{"role": "user", "content": "Capital of Peru?"}, {"role": "assistant", "content": answer},
               {"role": "user", "content": "Try again."}]
    ask(gw, history)
    _, _, headers = ask(gw, history)   # a client retry of the same follow-up
    assert headers["x-sigroute-implicit-feedback"].endswith("status=duplicate")
    assert len(feedback_events(gw)) == 1


# --------------------------------------------------------------------------------------------
# isolation


def test_another_users_or_tenants_history_is_not_matched(sim, gateway_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("KEY_A", "sk-tenant-a")
    monkeypatch.setenv("KEY_B", "sk-tenant-b")
    auth = {"keys": [{"key_env": "KEY_A", "tenant": "a"}, {"key_env": "KEY_B", "tenant": "b"}]}
    gw = make_gateway(gateway_factory, implicit_policy(sim, auth=auth), tmp_path)
    question = "How many legs does a spider have?"
    # another user of the same tenant sends a history with the very same answer text
    _, headers = conversation(gw, question, "That's wrong.", user="alice", follow_user="bob", api_key="sk-tenant-a")
    assert "x-sigroute-implicit-feedback" not in headers
    # another tenant, same user name, same answer text
    _, headers = conversation(gw, question, "That's wrong.", user="carol", api_key="sk-tenant-a",
                              follow_key="sk-tenant-b")
    assert "x-sigroute-implicit-feedback" not in headers
    assert feedback_events(gw) == []
    counted = gw.app.state.runtime.pipeline.metrics.implicit_feedback   # (/metrics needs a role under auth)
    assert counted.labels("not_served")._value.get() == 2
    # the same user and tenant: matched
    _, headers = conversation(gw, question, "That's wrong.", user="alice", api_key="sk-tenant-a")
    assert headers["x-sigroute-implicit-feedback"].startswith("dissatisfied;")


def test_off_by_default(sim, gateway_factory, tmp_path):
    gw = make_gateway(gateway_factory, implicit_policy(sim, feedback={}), tmp_path)
    _, headers = conversation(gw, "Capital of Chile?", "That's wrong.")
    assert "x-sigroute-implicit-feedback" not in headers and feedback_events(gw) == []


def test_a_streamed_answer_can_be_followed_up(sim, gateway_factory, tmp_path):
    gw = make_gateway(gateway_factory, implicit_policy(sim), tmp_path)
    client = gw.client()
    stream = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Capital of Norway?"}], user="u1", stream=True)
    rid = stream.headers["x-sigroute-request-id"]
    answer = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
    history = [{"role": "user", "content": "Capital of Norway?"}, {"role": "assistant", "content": answer},
               {"role": "user", "content": "No es correcto."}]
    _, _, headers = ask(gw, history)
    assert headers["x-sigroute-implicit-feedback"] == f"dissatisfied; request={rid}; status=credited"


def test_served_answers_are_shared_through_redis(sim, gateway_factory, tmp_path, clean_redis_url):
    """Two gateways on one Redis: the follow-up reaches the other replica and is still credited;
    the index's keys are hash-tagged per user (one cluster slot per script) and expire."""
    import redis

    policy = implicit_policy(sim)
    first = make_gateway(gateway_factory, policy, tmp_path, redis_url=clean_redis_url)
    second = make_gateway(gateway_factory, policy, tmp_path, redis_url=clean_redis_url)
    answer, rid, _ = ask(first, [{"role": "user", "content": "Largest planet?"}])
    history = [{"role": "user", "content": "Largest planet?"}, {"role": "assistant", "content": answer},
               {"role": "user", "content": "C'est faux."}]
    _, _, headers = ask(second, history)
    assert headers["x-sigroute-implicit-feedback"] == f"dissatisfied; request={rid}; status=credited"
    client = redis.Redis.from_url(clean_redis_url)
    try:
        keys = sorted(k.decode() for k in client.keys("sigroute:served:*"))
        assert len(keys) == 2 and keys[0].endswith("}:h") and keys[1].endswith("}:z")
        assert keys[0].split("}")[0] == keys[1].split("}")[0]   # one hash tag: one slot
        assert "u1" not in keys[0]                               # no user name in Redis
        assert 0 < client.pttl(keys[0]) <= 600_000               # TTL = the window
        assert answer not in str(client.hgetall(keys[0]))        # the hash, never the text
    finally:
        client.close()


def test_an_unreachable_redis_never_fails_a_follow_up(sim, gateway_factory, tmp_path):
    from conftest import free_port

    gw = make_gateway(gateway_factory, implicit_policy(sim), tmp_path,
                      redis_url=f"redis://127.0.0.1:{free_port()}/0")
    rid, headers = conversation(gw, "Capital of Mongolia?", "That's wrong.")   # both turns answered
    assert "x-sigroute-implicit-feedback" not in headers and feedback_events(gw) == []
    assert metric(gw, "sigroute_implicit_feedback_total", outcome="store_error") >= 1


# --------------------------------------------------------------------------------------------
# signals for rules, with the encoder


def test_a_rule_on_reask_routes_to_the_stronger_model(sim, gateway_factory, tmp_path):
    policy = implicit_policy(
        sim,
        signals={"reask": {"again": {}}, "dissatisfied": {"unhappy": {}}},
        decisions=[{"name": "escalate", "priority": 10, "rules": {"any": ["reask:again", "dissatisfied:unhappy"]},
                    "models": ["gamma"]},
                   {"name": "learn", "models": ["alpha", "beta"], "algorithm": LEARN}])
    gw = make_gateway(gateway_factory, policy, tmp_path)
    first = "How do I reverse a list in Python?"
    answer, rid, headers = ask(gw, [{"role": "user", "content": first}])
    assert headers["x-sigroute-decision"] == "learn"
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": answer},
               {"role": "user", "content": "How can I reverse a Python list?"}]   # a paraphrase
    _, _, headers = ask(gw, history)
    assert headers["x-sigroute-decision"] == "escalate" and headers["x-sigroute-model"] == "gamma"
    assert headers["x-sigroute-implicit-feedback"] == f"reask; request={rid}; status=credited"
    [event] = feedback_events(gw)
    assert event["details"]["by"] == "embedding" and event["details"]["similarity"] >= 0.85
    # a new topic is neither: the learning decision answers, and the earlier answer is credited weakly
    answer, rid, _ = ask(gw, [{"role": "user", "content": first}], user="u2")
    history[1]["content"] = answer
    history[2]["content"] = "What is the tallest mountain in Africa?"
    _, _, headers = ask(gw, history, user="u2")
    assert headers["x-sigroute-decision"] == "learn"
    assert headers["x-sigroute-implicit-feedback"].startswith("moved_on;")
    explained = gw.http.post("/v1/route/explain", json={"model": "auto", "user": "u2", "messages": [
        *history[:2], {"role": "user", "content": "Das stimmt nicht."}]}).json()
    assert explained["signals"]["dissatisfied:unhappy"]["matched"] is True
    assert explained["winner"]["decision"] == "escalate"
    # explain shows what would be credited (the answer followed, the verdict), and credits nothing
    assert explained["implicit_feedback"] == {"follows": rid, "decision": "learn", "event": "dissatisfied",
                                              "details": {"language": "de", "cue": "das stimmt nicht"}}
    assert len(feedback_events(gw)) == 2


# --------------------------------------------------------------------------------------------
# the cue classifier, measured; the policy section, validated


def _cue_rows() -> list[dict]:
    return [json.loads(line) for line in CUES_SET.read_text(encoding="utf-8").splitlines()]


def test_dissatisfaction_cues_precision_and_recall_on_the_labelled_set():
    """The labelled set (tests/data, written for this project: cues and near-misses such as "what's
    wrong with my code?" in every language with cues) measures the shipped cue phrases. The phrases
    were written after the turns but by the same hand, so these are optimistic figures; the floors
    catch a phrase list (or a change to folding or matching) that breaks."""
    from sigroute.signals.followup import CUES, dissatisfaction_cue

    rows = _cue_rows()
    assert {r["language"] for r in rows} == set(CUES)   # every cue language is measured
    tp = sum(1 for r in rows if r["dissatisfied"] and dissatisfaction_cue(r["text"]))
    fp = sum(1 for r in rows if not r["dissatisfied"] and dissatisfaction_cue(r["text"]))
    fn = sum(1 for r in rows if r["dissatisfied"] and not dissatisfaction_cue(r["text"]))
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert precision >= 0.95 and recall >= 0.9, (precision, recall)


@pytest.mark.parametrize("language", sorted({json.loads(line)["language"]
                                             for line in CUES_SET.read_text(encoding="utf-8").splitlines()}))
def test_dissatisfaction_cues_per_language(language):
    """Each language on its own: at least 5 cues and 3 near-misses, recall >= 0.8, and at most one
    near-miss taken for a cue (the aggregate holds precision to 0.95; one language must not spend it)."""
    from sigroute.signals.followup import dissatisfaction_cue

    rows = [r for r in _cue_rows() if r["language"] == language]
    positives = [r["text"] for r in rows if r["dissatisfied"]]
    negatives = [r["text"] for r in rows if not r["dissatisfied"]]
    assert len(positives) >= 5 and len(negatives) >= 2 + (language != "en"), (len(positives), len(negatives))
    missed = [t for t in positives if dissatisfaction_cue(t) is None]
    false_alarms = [t for t in negatives if dissatisfaction_cue(t) is not None]
    assert len(missed) <= 0.2 * len(positives), missed
    assert len(false_alarms) <= 1, false_alarms


@pytest.mark.parametrize("text, expected", [
    ("这个答案不对，首都是堪培拉", ("zh", "不对")),            # no spaces: found as a substring
    ("对不对？不对，是堪培拉。", ("zh", "不对")),               # the A-not-A question is stepped over, the cue after it found
    ("水在100度沸腾，对不对？", None),
    ("明天我再试一次这个菜谱。", None),                          # the user's own "I'll try again"
    ("回答錯了，請再試一次", ("zh", "回答錯了")),                  # traditional characters
    ("それは違いますよ、キャンベラです", ("ja", "違います")),
    ("AとBは違いますか？", None),                                # "are they different?"
    ("私のコードのどこが間違っていますか", None),
    ("もう一度やり直してください", ("ja", "やり直して")),
    ("답이 틀렸습니다", ("ko", "틀렸")),                         # Korean: a word start, endings attached
    ("답이 안틀렸어요", None),                                   # ... not inside a word
    ("제 코드에서 뭐가 틀렸나요?", None),
])
def test_cues_without_word_boundaries(text, expected):
    from sigroute.signals.followup import dissatisfaction_cue

    assert dissatisfaction_cue(text) == expected


def test_word_boundary_languages_still_need_whole_words():
    from sigroute.signals.followup import dissatisfaction_cue

    assert dissatisfaction_cue("Riprova, per favore.") == ("it", "riprova")
    assert dissatisfaction_cue("Come posso riprovare la connessione?") is None
    assert dissatisfaction_cue("Das stimmt nicht.") == ("de", "das stimmt nicht")
    assert dissatisfaction_cue("Was stimmt nicht mit meinem Code?") is None
    assert dissatisfaction_cue("No está mal, gracias.") is None     # "not bad"
    assert dissatisfaction_cue("I'll try again tomorrow.") is None
    assert dissatisfaction_cue("Try again, tomorrow is wrong.") == ("en", "try again")


@pytest.mark.parametrize("text", [
    "Это не то же самое, что список?",            # "isn't that the same as a list?"
    "Верно или неверно: Земля плоская?",          # "true or false"
    "Det virker ikke som om den er færdig.",      # Danish "virker": also "seems"
    "这个博物馆周一不对外开放吗？",                   # 不对外: "not open to the public"
    "そうじゃないですか？",                         # a tag question: "isn't it?"
    "Đúng hay không đúng?",
])
def test_look_alikes_are_not_cues(text):
    from sigroute.signals.followup import dissatisfaction_cue

    assert dissatisfaction_cue(text) is None


@pytest.mark.parametrize("typed, expected", [
    ("ग़लत है", ("hi", "गलत है")), ("गलत है", ("hi", "गलत है")),                   # with and without the nukta
    ("أنتَ مخطئٌ", ("ar", "انت مخطي")), ("انت مخطئ", ("ar", "انت مخطي")),         # harakat and hamza folded
    ("ПОПРОБУЙ ЕЩЁ РАЗ", ("ru", "попробуи еще раз")), ("попробуй еще раз", ("ru", "попробуи еще раз")),
    ("BU YANLIŞ", ("tr", "bu yanlis")), ("bu yanlis", ("tr", "bu yanlis")),           # dotless ı and İ
    ("NIE DZIAŁA", ("pl", "nie dziala")), ("nie dziala", ("pl", "nie dziala")),       # ł
    ("SAI RỒI", ("vi", "sai roi")), ("Khong dung", ("vi", "khong dung")),             # Vietnamese without diacritics
    ("不對，再試一次", ("zh", "不對")),                                                # full-width comma
])
def test_folding_is_the_same_for_phrases_and_turns(typed, expected):
    from sigroute.signals.followup import dissatisfaction_cue

    assert dissatisfaction_cue(typed) == expected


def test_folding_keeps_kana_voicing_marks_and_hangul_syllables():
    """Dakuten are combining marks but letters: ため ("for") and だめ ("no good") stay apart, and
    decomposed Hangul is recomposed (a stem matches whole syllables, not jamo)."""
    import unicodedata

    from sigroute.signals.followup import _fold, dissatisfaction_cue

    assert _fold("だめ") == "だめ" != _fold("ため")
    assert _fold("ﾀﾞﾒ") == "ダメ"                          # half-width kana widened, the mark recomposed
    assert _fold("ください") == "ください"
    assert _fold(unicodedata.normalize("NFD", "틀렸어요")) == "틀렸어요"
    # the stem 그게 아니 ("that's not it") is a prefix of 그게 아닌가요 ("isn't it that?") only in jamo
    assert unicodedata.normalize("NFD", "그게 아닌가요").startswith(unicodedata.normalize("NFD", "그게 아니"))
    assert dissatisfaction_cue("그게 아닌가요?") is None
    assert dissatisfaction_cue("그게 아니라요") == ("ko", "그게 아니")
    assert dissatisfaction_cue("말이 안 돼요") == ("ko", "말이 안 돼")
    assert dissatisfaction_cue("Mais é sbagliato") == ("it", "e sbagliato")   # Latin accents still folded


def test_the_fold_table_remembers_a_bounded_number_of_characters(monkeypatch):
    from sigroute.signals import followup

    monkeypatch.setattr(followup, "_FOLD_TABLE_SIZE", len(followup._FOLD_TABLE) + 5)
    text = "".join(chr(cp) for cp in range(0xAC00, 0xAC00 + 200)) + "Café"   # 200 Hangul syllables
    assert followup._fold(text) == text[:200] + "cafe"
    assert len(followup._FOLD_TABLE) <= followup._FOLD_TABLE_SIZE


def test_every_not_cue_overlaps_a_cue_and_none_is_both():
    """A not-cue exists to hide a cue: it contains one or starts before one and overlaps it."""
    from sigroute.signals.followup import CUES, NOT_CUES, _fold

    cues = {_fold(p) for phrases in CUES.values() for p in phrases}
    not_cues = {_fold(p) for phrases in NOT_CUES.values() for p in phrases}
    assert not cues & not_cues
    for phrase in not_cues:
        assert any(c in phrase or c.startswith(phrase[i:]) for c in cues for i in range(len(phrase) - 1)), phrase


def test_only_the_start_of_a_long_turn_is_read():
    from sigroute.signals.followup import CUE_SCAN_CHARS, dissatisfaction_cue

    for filler in ("Here is my log line. ", "Вот строка из журнала. ", "这是日志中的一行。"):
        padding = (filler * CUE_SCAN_CHARS)[:CUE_SCAN_CHARS - 20]
        assert dissatisfaction_cue(padding + " that's wrong") == ("en", "that's wrong")
        assert dissatisfaction_cue(padding + " " * 20 + "that's wrong") is None
        assert dissatisfaction_cue(padding + "。" * 20 + "不对") is None


def test_a_policy_cue_is_matched_first_on_word_boundaries():
    from sigroute.signals.followup import cue_pattern, dissatisfaction_cue

    extra = cue_pattern(["So Bad", "  "])
    assert dissatisfaction_cue("That is so bad, and wrong answer", extra) == ("policy", "so bad")
    assert dissatisfaction_cue("I did it so badly", extra) is None
    assert cue_pattern(["", " "]) is None
    extra = cue_pattern(["不靠谱", "ダメだ"])                 # Chinese and Japanese: anywhere
    assert dissatisfaction_cue("这个回答不靠谱啊", extra) == ("policy", "不靠谱")
    assert dissatisfaction_cue("これはダメだね", extra) == ("policy", "ダメだ")
    assert dissatisfaction_cue("そのためだね", extra) is None


def test_reask_threshold_on_the_labelled_follow_ups():
    """tests/data/reask_followups.jsonl: re-asks in other words and next questions (often on the same
    topic). At the default threshold the shared embedding separates them with no false re-ask."""
    import numpy as np

    from sigroute.signals.encoder import shared_encoder
    from sigroute.signals.followup import DEFAULT_REASK_THRESHOLD

    rows = [json.loads(line) for line in (CUES_SET.parent / "reask_followups.jsonl").read_text().splitlines()]
    encoder = shared_encoder()
    similarity = np.sum(encoder.encode([r["previous"] for r in rows]) * encoder.encode([r["turn"] for r in rows]), 1)
    predicted = similarity >= DEFAULT_REASK_THRESHOLD
    labels = np.array([r["reask"] for r in rows])
    precision = (predicted & labels).sum() / predicted.sum()
    recall = (predicted & labels).sum() / labels.sum()
    assert precision >= 0.95 and recall >= 0.8, (precision, recall)


def test_a_bad_implicit_setting_names_file_line_and_key():
    from sigroute.policies.loader import PolicyError, load_policy_text

    text = """version: 1
models:
  a: {provider: openai/a}
decisions:
  - {name: d, models: [a]}
feedback:
  implicit:
    enabled: true
    reask_threshold: 1.5
"""
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text, "policy.yaml")
    message = str(caught.value)
    assert "policy.yaml:9" in message and "feedback.implicit.reask_threshold" in message
    with pytest.raises(PolicyError) as caught:
        load_policy_text(text.replace("reask_threshold: 1.5", "windw: 5m"), "policy.yaml")
    assert "policy.yaml:9" in str(caught.value) and "window" in str(caught.value)


def test_an_anthropic_messages_conversation_is_followed_up(sim, gateway_factory, tmp_path):
    """The follow-up is read from the request as translated once from its surface: the same for the
    Messages API (user from metadata.user_id) as for chat completions."""
    import anthropic

    gw = make_gateway(gateway_factory, implicit_policy(sim), tmp_path)
    client = anthropic.Anthropic(base_url=gw.url, api_key="unused", max_retries=0)
    first = [{"role": "user", "content": "Capital of Kenya?"}]
    raw = client.messages.with_raw_response.create(model="auto", max_tokens=64, messages=first,
                                                   metadata={"user_id": "m1"})
    rid, message = raw.headers["x-sigroute-request-id"], raw.parse()
    answer = "".join(block.text for block in message.content if block.type == "text")
    follow = client.messages.with_raw_response.create(
        model="auto", max_tokens=64, metadata={"user_id": "m1"},
        messages=[*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "Inténtalo de nuevo."}])
    assert follow.headers["x-sigroute-implicit-feedback"] == f"dissatisfied; request={rid}; status=credited"
