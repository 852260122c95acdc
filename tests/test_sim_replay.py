"""Replay mode of the simulated upstream (`sigroute sim --outcomes DIR`), over real HTTP on loopback.

Every question here is invented for the test; the real data set is only read in place (and its
text never printed) by the last test, which is skipped where the shared data is absent.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import json
import math
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from sigroute.gateway.cli import build_parser, cmd_sim
from sigroute.gateway.serving import ServerThread
from sigroute.gateway.sim import (
    Outcomes,
    OutcomesError,
    create_replay_app,
    extract_answer_letter,
    format_replay_question,
    load_outcomes,
    replay_config,
)

MODELS = [  # name, family, params_b, active, hosting, price in, price out, ttft_ms, tokens_per_s
    ("tiny-7b", "tiny", "7", "7", "self", "0.1", "0.2", "100", "50"),
    ("big-70b", "big", "70", "70", "self", "1.0", "2.0", "400", "20"),
    ("cloud-pro", "cloud", "", "", "hosted", "2.0", "8.0", "50", "100"),
]
NAMES = [m[0] for m in MODELS]
HOLMIUM = ("In the invented kingdom of Varnesh, the royal mint stamps every coin with a heron. "
           "Which metal did the mint use for its first heron coins?")
QUESTIONS = [
    {"question_id": 101, "category": "physics", "src": "invented-physics",
     "question": "A stone is dropped from rest from a cliff 45 metres high. Ignoring air "
                 "resistance and taking g = 10 m/s^2, how many seconds does it take to land?",
     "options": ["1", "2", "3", "4.5", "9", "10"], "answer": "C"},
    {"question_id": 102, "category": "math",
     "src": "invented-math", "question": "What is the sum of the interior angles of a convex "
                                         "hexagon, measured in degrees?",
     "options": ["360", "540", "720", "900"], "answer": "C"},
    {"question_id": 103, "category": "history", "src": "invented-history",
     "question": "Who founded Varnesh?",  # a short stem: it needs its options to be recognised
     "options": ["Queen Ysolde the Fair", "King Brannoch the Tall", "The Heron Guild",
                 "Nobody knows for certain"], "answer": "A"},
    {"question_id": 104, "category": "other", "src": "invented-other", "question": HOLMIUM,
     "options": ["Copper", "Silver", "Gold", "Tin", "Bronze"], "answer": "B"},
    {"question_id": 105, "category": "other", "src": "invented-other", "question": HOLMIUM,
     "options": ["Iron", "Nickel", "Zinc", "Silver", "Lead"], "answer": "D"},  # same stem as 104
]
# question_id -> per model (tiny, big, cloud): recorded correctness ("" = no result) and length
CORRECT = {101: ("0", "1", "1"), 102: ("1", "0", "1"), 103: ("0", "1", ""),
           104: ("1", "1", "0"), 105: ("0", "1", "1")}
CHARS = {101: ("120", "400", "0"), 102: ("80", "0", ""), 103: ("0", "0", "0"),
         104: ("300", "500", "10"), 105: ("65", "250", "1000")}
# imputed: 101 cloud = median(120, 400); 102 big/cloud = 80 (its only length);
# 103 has none: tiny = median of tiny's lengths (65, 80, 120, 300) = 100, big = median(400, 500, 250),
# cloud = median(10, 1000)
EXPECTED_CHARS = {101: (120, 400, 260), 102: (80, 80, 80), 103: (100, 400, 505),
                  104: (300, 500, 10), 105: (65, 250, 1000)}
FINAL_LEN = len("The answer is (X).")


def write_outcomes(root: Path) -> Path:
    """A small outcomes directory laid out like the shared routing/ data; returns `root`."""
    (root / "mmlu_pro").mkdir(parents=True)
    with open(root / "models.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["model", "family", "params_b", "active_params_b", "hosting", "price_in_per_mtok",
                    "price_out_per_mtok", "ttft_ms", "tokens_per_s"])
        w.writerows(MODELS)
    with gzip.open(root / "mmlu_pro" / "questions.jsonl.gz", "wt", encoding="utf-8") as f:
        for q in QUESTIONS:
            f.write(json.dumps(q) + "\n")
    with gzip.open(root / "mmlu_pro" / "correctness.csv.gz", "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question_id", "category", "src", "big-70b", "ghost-1b", "tiny-7b", "cloud-pro"])
        for q in QUESTIONS:
            tiny, big, cloud = CORRECT[q["question_id"]]
            w.writerow([q["question_id"], q["category"], q["src"], big, "1", tiny, cloud])
    with gzip.open(root / "mmlu_pro" / "output_chars.csv.gz", "wt", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["question_id", "tiny-7b", "big-70b", "cloud-pro", "ghost-1b"])
        for q in QUESTIONS:
            w.writerow([q["question_id"], *CHARS[q["question_id"]], "9999"])
    return root


@pytest.fixture(scope="module")
def outcomes_dir(tmp_path_factory) -> Path:
    return write_outcomes(tmp_path_factory.mktemp("outcomes"))


@pytest.fixture(scope="module")
def outcomes(outcomes_dir) -> Outcomes:
    return load_outcomes(outcomes_dir)


@pytest.fixture(scope="module")
def server(outcomes):
    with ServerThread(create_replay_app(outcomes, time_scale=0.0)) as s:
        yield s


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


@pytest.fixture(autouse=True)
def fresh(http):
    http.post("/sim/reset", params={"config": "true"}).raise_for_status()


def ask(client, model, content, **kwargs):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": content}], **kwargs)
    return raw.headers, raw.parse()


def by_id(qid):
    return next(q for q in QUESTIONS if q["question_id"] == qid)


def prompt(qid, style="dot"):
    q = by_id(qid)
    layouts = {"dot": "{L}. {x}", "paren": "({L}) {x}", "half": "{L}) {x}"}
    options = "\n".join(layouts[style].format(L=L, x=x) for L, x in zip("ABCDEFGHIJ", q["options"]))
    return f"{q['question']}\n\n{options}"


# --- loading ----------------------------------------------------------------------------------


def test_load_outcomes(outcomes, outcomes_dir):
    assert len(outcomes) == 5 and outcomes.model_names == tuple(NAMES)
    assert outcomes.root == outcomes_dir / "mmlu_pro"
    q = outcomes.question(104)
    assert (q.question_id, q.category, q.src) == (104, "other", "invented-other")
    assert (q.answer, q.letters) == ("B", "ABCDE")
    assert outcomes.question("104") is q and q.row == 3
    assert q.prompt == format_replay_question(q) == prompt(104)
    big = outcomes.models["big-70b"]
    assert (big.price_in, big.price_out, big.ttft_ms, big.tokens_per_s) == (1.0, 2.0, 400, 20)
    assert big.params_b == 70 and big.hosting == "self"
    assert outcomes.models["cloud-pro"].params_b is None
    assert big.latency_s(100) == pytest.approx(0.4 + 5.0)
    assert big.latency_s(100, time_scale=0.1) == pytest.approx(0.54)
    assert big.cost_usd(1000, 500) == pytest.approx((1000 * 1.0 + 500 * 2.0) / 1e6)
    for qid, values in CORRECT.items():
        for name, value in zip(NAMES, values):
            assert outcomes.outcome(qid, name) == (int(value) if value else None)
            assert outcomes.chars(qid, name) == EXPECTED_CHARS[qid][NAMES.index(name)]
            assert bool(outcomes.chars_recorded[outcomes.question(qid).row, NAMES.index(name)]) == (
                CHARS[qid][NAMES.index(name)] not in ("", "0"))
    assert outcomes.correct.shape == outcomes.output_chars.shape == (5, 3)
    assert outcomes.accuracy("big-70b") == pytest.approx(4 / 5)
    assert outcomes.accuracy("hosted_vllm/cloud-pro") == pytest.approx(3 / 5)  # no record = wrong
    assert any("ghost-1b" in w for w in outcomes.warnings)  # a column not in models.csv: ignored
    assert outcomes.resolve_model("a/b/tiny-7b") == "tiny-7b" and outcomes.resolve_model("nope") is None


def test_layout_variants_and_missing_files(outcomes_dir, tmp_path):
    direct = load_outcomes(outcomes_dir / "mmlu_pro")  # the .gz folder, models.csv one level up
    assert len(direct) == 5 and direct.model_names == tuple(NAMES)

    with pytest.raises(OutcomesError, match="does not exist"):
        load_outcomes(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OutcomesError, match="models.csv"):
        load_outcomes(tmp_path / "empty")
    for missing in ("models.csv", "mmlu_pro/correctness.csv.gz", "mmlu_pro/output_chars.csv.gz",
                    "mmlu_pro/questions.jsonl.gz"):
        copy = tmp_path / missing.replace("/", "_")
        shutil.copytree(outcomes_dir, copy)
        (copy / missing).unlink()
        with pytest.raises(OutcomesError) as info:
            load_outcomes(copy)
        assert str(copy / missing) in str(info.value) and "missing" in str(info.value)
        if missing != "models.csv":  # the same from the .gz folder itself
            with pytest.raises(OutcomesError, match=Path(missing).name):
                load_outcomes(copy / "mmlu_pro")

    bad = tmp_path / "bad"
    shutil.copytree(outcomes_dir, bad)
    with gzip.open(bad / "mmlu_pro" / "correctness.csv.gz", "wt") as f:
        f.write("question_id,category,src,tiny-7b\n101,physics,x,2\n")
    with pytest.raises(OutcomesError, match=r"correctness.csv.gz:2: .*'2'.*tiny-7b"):
        load_outcomes(bad)


def test_find_matches_formats_and_rejects_lookalikes(outcomes):
    def found(text):
        q = outcomes.find(text)
        return None if q is None else q.question_id

    for qid in CORRECT:
        for style in ("dot", "paren", "half"):
            assert found(prompt(qid, style)) == qid
        wrapped = ("Answer the following multiple choice question. Think step by step.\n\nQuestion: "
                   + prompt(qid, "paren") + '\n\nFinish with "The answer is (X)".')
        assert found(wrapped) == qid
        assert found(prompt(qid).upper().replace("\n", "   ")) == qid  # case and spacing ignored
    assert found(by_id(101)["question"]) == 101  # a long stem alone is enough
    assert found(HOLMIUM) == 104  # ...and an ambiguous one resolves to the first in the file
    assert found("Who founded Varnesh?") is None  # a short stem needs its options
    assert found("Who founded Varnesh? A. Rome B. Carthage C. Athens D. Sparta") is None
    # few-shot: examples with their answers, then the question actually asked
    few_shot = "\n\n".join([prompt(104) + "\nThe answer is (B).", prompt(102) + "\nThe answer is (C).",
                            prompt(105)])
    assert found(few_shot) == 105
    assert found("What is the capital of France?") is None and found("") is None


# --- answers over HTTP ------------------------------------------------------------------------


def test_answers_follow_recorded_outcomes(client):
    for qid, values in CORRECT.items():
        q = by_id(qid)
        for name, value in zip(NAMES, values):
            content = prompt(qid)
            headers, r = ask(client, name, content)
            text = r.choices[0].message.content
            letter = extract_answer_letter(text)
            assert text.endswith(f"The answer is ({letter}).")
            assert headers["x-sim-question-id"] == str(qid) and headers["x-sim-model"] == name
            assert headers["x-sim-correct"] == ("1" if value == "1" else "0")
            assert headers["x-sim-outcome"] == ("recorded" if value else "no-record")
            if value == "1":
                assert letter == q["answer"]
            else:
                assert letter != q["answer"] and letter in "ABCDEFGHIJ"[: len(q["options"])]
            chars = EXPECTED_CHARS[qid][NAMES.index(name)]
            assert len(text) == max(chars, FINAL_LEN)
            assert r.usage.completion_tokens == math.ceil(len(text) / 4)
            assert r.usage.prompt_tokens == (len(content) + 3) // 4
            assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
            price_in, price_out = (float(x) for x in MODELS[NAMES.index(name)][5:7])
            cost = (r.usage.prompt_tokens * price_in + r.usage.completion_tokens * price_out) / 1e6
            assert float(headers["x-sim-cost-usd"]) == pytest.approx(cost)
            again = ask(client, name, "Please answer.\n" + prompt(qid, "paren"))[1]
            assert again.choices[0].message.content == text  # deterministic, whatever the layout


def test_wrong_letters_are_never_right_and_vary(outcomes):
    names = [f"m{i}" for i in range(8)]
    models = {name: dataclasses.replace(outcomes.models["tiny-7b"], name=name) for name in names}
    shape = (len(outcomes), len(names))
    always_wrong = Outcomes(outcomes.root, models, outcomes.questions, np.zeros(shape, np.int8),
                            np.full(shape, 100, np.int32), np.ones(shape, bool))
    letters = set()
    for q in always_wrong.questions:
        for name in names:
            answer = always_wrong.answer(q, name)
            assert not answer.correct and answer.outcome == "recorded"
            assert answer.letter != q.answer and answer.letter in q.letters
            assert answer == always_wrong.answer(q, name) and len(answer.text) == 100
            letters.add((q.question_id, answer.letter))
    assert len(letters) > 2 * len(QUESTIONS)  # different models pick different wrong letters


def test_model_prefix_unknown_model_and_unknown_question(client, http):
    headers, r = ask(client, "hosted_vllm/big-70b", prompt(101))
    assert headers["x-sim-model"] == "big-70b" and r.model == "big-70b"
    assert headers["x-sim-correct"] == "1"
    assert ask(client, "openai/org/tiny-7b", prompt(102))[0]["x-sim-model"] == "tiny-7b"
    assert http.get("/v1/models/hosted_vllm/cloud-pro").json()["id"] == "cloud-pro"
    assert [m.id for m in client.models.list()] == NAMES

    with pytest.raises(openai.NotFoundError) as info:
        ask(client, "hosted_vllm/gpt-9", prompt(101))
    assert "gpt-9" in info.value.message and "tiny-7b" in info.value.message

    headers, r = ask(client, "cloud-pro", "Tell me a joke about routers.")
    assert headers["x-sim-outcome"] == "unknown-question"
    assert "x-sim-question-id" not in headers and "x-sim-correct" not in headers
    text = r.choices[0].message.content
    assert 0 < len(text) < 200 and extract_answer_letter(text) is None
    assert r.usage.completion_tokens == math.ceil(len(text) / 4)
    assert float(headers["x-sim-cost-usd"]) == pytest.approx(
        (r.usage.prompt_tokens * 2.0 + r.usage.completion_tokens * 8.0) / 1e6)


def test_streaming_matches_plain(client, http):
    plain = ask(client, "big-70b", prompt(104))[1].choices[0].message.content
    chunks = list(client.chat.completions.create(
        model="big-70b", messages=[{"role": "user", "content": prompt(104)}], stream=True,
        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    assert chunks[-1].usage.completion_tokens == math.ceil(len(plain) / 4) == 125
    body = {"model": "hosted_vllm/tiny-7b", "stream": True,
            "messages": [{"role": "user", "content": prompt(103)}]}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["x-sim-question-id"] == "103"
        assert response.headers["x-sim-correct"] == "0"
        assert response.read().decode().rstrip().endswith("data: [DONE]")


def test_truncation_n_and_stats(client, http):
    headers, r = ask(client, "big-70b", prompt(101), max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    assert headers["x-sim-correct"] == "0"  # the answer was cut off before its letter
    headers, r = ask(client, "big-70b", prompt(101), n=2)
    assert len(r.choices) == 2 and r.choices[0].message.content == r.choices[1].message.content
    assert r.usage.completion_tokens == 2 * 100 and headers["x-sim-correct"] == "1"
    ask(client, "cloud-pro", prompt(103))  # no record
    ask(client, "cloud-pro", "hello")
    stats = http.get("/sim/stats").json()
    assert stats["total_calls"] == 4
    assert stats["big-70b"]["calls"] == 2 and stats["big-70b"]["completed"] == 2
    replay = stats["big-70b"]["replay"]
    assert replay.pop("cost_usd") > 0
    assert replay == {"questions": 2, "correct": 1, "no_record": 0, "unknown_question": 0}
    assert stats["cloud-pro"]["replay"]["no_record"] == 1
    assert stats["cloud-pro"]["replay"]["unknown_question"] == 1
    assert stats["tiny-7b"]["replay"]["questions"] == 0
    http.post("/sim/reset").raise_for_status()
    stats = http.get("/sim/stats").json()
    assert stats["total_calls"] == 0 and stats["big-70b"]["replay"]["questions"] == 0


def test_faults_and_runtime_settings_still_work(client, http):
    assert http.put("/sim/models/tiny-7b/faults", json={"error_rate": 1.0}).status_code == 200
    with pytest.raises(openai.InternalServerError):
        ask(client, "hosted_vllm/tiny-7b", prompt(101))
    assert http.get("/sim/stats").json()["tiny-7b"]["errors"] == 1
    http.put("/sim/models/tiny-7b/faults", json={})
    assert ask(client, "tiny-7b", prompt(101))[0]["x-sim-question-id"] == "101"
    # a runtime price change shows in the cost header
    http.put("/sim/models/tiny-7b", json={"price": {"input": 0.0, "output": 0.0}}).raise_for_status()
    assert float(ask(client, "tiny-7b", prompt(101))[0]["x-sim-cost-usd"]) == 0.0
    assert http.get("/sim/last/tiny-7b").json()["model"] == "tiny-7b"


# --- latency ----------------------------------------------------------------------------------


def test_time_scale_config(outcomes):
    config = replay_config(outcomes, time_scale=0.5)
    assert config.models["big-70b"].ttft_ms == 200 and config.models["big-70b"].tokens_per_s == 40
    assert config.models["big-70b"].price.output == 2.0
    instant = replay_config(outcomes, time_scale=0.0).models["big-70b"]
    assert instant.ttft_ms == 0 and instant.tokens_per_s == 0
    with pytest.raises(ValueError, match="time_scale"):
        replay_config(outcomes, time_scale=-1)


def test_latency_follows_ttft_and_decode_speed(outcomes, monkeypatch):
    """The sim's pauses are recorded as it plans them (what it asks the event loop to wait), so the
    pacing is checked exactly however busy the machine; the wall clock only gives lower bounds
    (a pause is never shorter than asked) and a hang detector."""
    import asyncio

    from sigroute.gateway.sim import server as sim_server

    # tiny-7b on question 102: 80 chars = 20 tokens; (0.1 s + 20 / 50 s) x 0.5 = 0.25 s, ttft 0.05 s
    scale, expected, ttft = 0.5, 0.25, 0.05
    due: list[float] = []          # loop time each pause of the sim runs until
    asked: list[float] = []        # and how long each was asked to last
    real_pause = sim_server._pause

    async def recorded_pause(watcher, delay):
        due.append(asyncio.get_running_loop().time() + delay)
        asked.append(delay)
        return await real_pause(watcher, delay)

    monkeypatch.setattr(sim_server, "_pause", recorded_pause)
    with ServerThread(create_replay_app(outcomes, time_scale=scale)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        ask(client, "tiny-7b", "warm up")  # first connection
        due.clear()
        asked.clear()
        start = time.perf_counter()
        r = ask(client, "tiny-7b", prompt(102))[1]
        elapsed = time.perf_counter() - start
        assert r.usage.completion_tokens == 20
        assert expected <= elapsed < expected + 30          # (the upper bound only detects a hang)
        assert len(asked) == 1 and asked[0] <= expected + 1e-6   # one pause, never longer than the latency

        due.clear()
        asked.clear()
        start = time.perf_counter()
        stream = client.chat.completions.create(
            model="tiny-7b", messages=[{"role": "user", "content": prompt(102)}], stream=True)
        arrivals = [(time.perf_counter() - start, c) for c in stream]
        first_content = next(t for t, c in arrivals if c.choices and c.choices[0].delta.content)
        assert ttft <= first_content <= arrivals[-1][0]
        assert expected <= arrivals[-1][0] < expected + 30
    content_chunks = sum(1 for _, c in arrivals if c.choices and c.choices[0].delta.content)
    assert len(due) == content_chunks + 2                   # ttft, one per content chunk, the end
    assert due[-1] - due[0] == pytest.approx(expected - ttft, abs=1e-6)   # ttft to the end: decoding
    gaps = [b - a for a, b in zip(due[1:], due[2:])]
    assert all(gap >= -1e-9 for gap in gaps)               # paced in order, never all at once at the end
    assert due[1] - due[0] < expected - ttft                # content starts before the decoding time is over
    assert asked[0] <= ttft + 1e-6                          # the first pause ends at ttft from the start


# --- command line -----------------------------------------------------------------------------


def test_cli_parsing(outcomes_dir, capsys):
    parser = build_parser()
    args = parser.parse_args(["sim", "--outcomes", str(outcomes_dir), "--time-scale", "0.25"])
    assert args.outcomes == str(outcomes_dir) and args.time_scale == 0.25 and args.config is None
    args = parser.parse_args(["sim"])
    assert args.outcomes is None and args.time_scale is None
    for bad in (["sim", "--time-scale", "-1"], ["sim", "--time-scale", "fast"],
                ["sim", "--outcomes", "d", "--config", "c.yaml"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    capsys.readouterr()

    args = parser.parse_args(["sim", "--outcomes", str(outcomes_dir / "nope")])
    assert cmd_sim(args) == 1
    assert "nope" in capsys.readouterr().err
    args = parser.parse_args(["sim", "--time-scale", "2"])
    assert cmd_sim(args) == 2
    assert "--outcomes" in capsys.readouterr().err


# --- the shared data, read in place -----------------------------------------------------------

SHARED = Path("/work/shared/data/routing")


@pytest.mark.skipif(not (SHARED / "mmlu_pro" / "questions.jsonl.gz").is_file(), reason="shared data absent")
def test_shared_routing_data_loads_fast():
    outcomes = load_outcomes(SHARED)
    assert len(outcomes) == 9626 and len(outcomes.models) == 29
    assert outcomes.correct.shape == (9626, 29) and (outcomes.output_chars > 0).all()
    assert outcomes.load_s < 5.0, f"load took {outcomes.load_s:.2f} s"  # ~1 s on a busy 2-core box
    sample = outcomes.questions[::97]
    for q in sample:  # each benchmark prompt finds its question (or an exact duplicate of it)
        found = outcomes.find(q.prompt)
        assert found is not None and (found.question, found.options) == (q.question, q.options), q.question_id
