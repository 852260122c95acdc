"""benchmarks.cache_workload: the request stream, the wrong-hit classification, one real end-to-end run.

Every question here is invented for these tests (no dataset text)."""

from __future__ import annotations

import csv
import itertools
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.cache_workload import (
    CORRECT,
    DEFAULT_MIX,
    KINDS,
    UNRESOLVED,
    WRONG,
    PairLabels,
    build_stream,
    cache_status,
    classify_hit,
    prompt_for,
    run_benchmark,
    summarize_run,
    rows_in_test_split,
)
from sigroute.cache.training import load_pairs, normalize_question

VERBS = ("repair", "paint", "clean", "insure", "store", "sell", "ship", "photograph", "measure", "recycle")
OBJECTS = ("a bicycle chain", "an oak table", "a ceramic vase", "a wool rug", "a canoe", "a piano", "a kite",
           "a leather saddle", "a brass lamp", "a garden shed", "a fish tank", "a sailboat", "a typewriter",
           "a cuckoo clock", "a skateboard", "a violin", "a telescope", "a bookshelf", "a hammock", "a sewing machine")
CONTEXTS = ("in winter", "on a budget", "at home", "for beginners", "without tools", "in a small flat")


def write_pairs(path: Path, n_pairs: int) -> Path:
    """A pairs CSV of invented questions: each pair is its own component; even pairs are
    duplicates (paraphrases), odd pairs hard negatives (same topic, different question)."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["question1", "question2", "is_duplicate"])
        for i, (verb, obj, ctx) in enumerate(itertools.islice(itertools.product(VERBS, OBJECTS, CONTEXTS), n_pairs)):
            q1 = f"How do I {verb} {obj} {ctx}?"
            if i % 2 == 0:
                w.writerow([q1, f"What is the best way to {verb} {obj} {ctx}?", 1])
            else:
                w.writerow([q1, f"How much does it cost to {verb} {obj} {ctx}?", 0])
    return path


@pytest.fixture(scope="module")
def pairs_csv(tmp_path_factory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.csv", 1200)


@pytest.fixture(scope="module")
def rows(pairs_csv) -> list[dict]:
    return rows_in_test_split(load_pairs(pairs_csv))


# --------------------------------------------------------------------------------------------
# The stream

def test_only_the_test_split_is_used(pairs_csv, rows):
    everything = load_pairs(pairs_csv)
    assert 150 < len(rows) < len(everything)  # ~20 % of the pairs land in the test part
    test_texts = {normalize_question(q) for r in rows for q in (r["question1"], r["question2"])}
    other_texts = {normalize_question(q) for r in everything if r["split"] != "test"
                   for q in (r["question1"], r["question2"])}
    stream = build_stream(rows, 300, seed=1)
    asked = {normalize_question(r.text) for r in stream}
    assert asked <= test_texts and not asked & other_texts
    with pytest.raises(ValueError, match="test split"):
        build_stream(everything, 10, seed=1)


def test_stream_is_deterministic_in_the_seed(rows):
    assert build_stream(rows, 200, seed=3) == build_stream(rows, 200, seed=3)
    assert build_stream(rows, 200, seed=3) != build_stream(rows, 200, seed=4)


def test_realized_mix_follows_the_proportions(rows):
    stream = build_stream(rows, 400, seed=0)
    assert len(stream) == 400
    counts = Counter(r.kind for r in stream)
    for kind in KINDS:
        assert abs(counts[kind] / len(stream) - DEFAULT_MIX[kind]) < 0.06, (kind, counts)


def test_each_kind_means_what_it_says(rows):
    dup = {frozenset((normalize_question(r["question1"]), normalize_question(r["question2"]))): r["is_duplicate"]
           for r in rows}
    stream = build_stream(rows, 400, seed=2)
    seen: dict[str, int] = {}  # normalized question -> index of its first request
    for req in stream:
        norm = normalize_question(req.text)
        if req.kind == "repeat":
            assert norm in seen and req.partner is None
        else:
            assert norm not in seen, req  # first-time, paraphrase and hard negative are all new questions
        if req.kind in ("paraphrase", "hard_negative"):
            partner = normalize_question(req.partner)
            assert partner in seen and seen[partner] < req.index  # the partner was asked earlier
            assert dup[frozenset((norm, partner))] == (1 if req.kind == "paraphrase" else 0)
        seen.setdefault(norm, req.index)


def test_stream_ends_early_when_the_pairs_run_out(rows):
    stream = build_stream(rows[:10], 1000, seed=0)
    assert 10 <= len(stream) < 1000
    assert sum(r.kind == "first" for r in stream) == 10


# --------------------------------------------------------------------------------------------
# Wrong-hit classification

LABELLED = [
    {"question1": "Is tea good for you?", "question2": "Is drinking tea healthy?", "is_duplicate": 1, "split": "test"},
    {"question1": "Is drinking tea healthy?", "question2": "Does tea help your health?", "is_duplicate": 1,
     "split": "test"},
    {"question1": "Is tea good for you?", "question2": "Is coffee good for you?", "is_duplicate": 0, "split": "test"},
    {"question1": "Does tea help your health?", "question2": "Is green tea good for you?", "is_duplicate": 0,
     "split": "test"},
]


def test_verdicts_between_questions():
    labels = PairLabels(LABELLED)
    assert labels.verdict("Is tea good for you?", "is TEA good  for you?") == "correct_same"
    assert labels.verdict("Is tea good for you?", "Is drinking tea healthy?") == "correct_duplicate"
    assert labels.verdict("Is tea good for you?", "Does tea help your health?") == "correct_cluster"
    assert labels.verdict("Is coffee good for you?", "Is tea good for you?") == "wrong_non_duplicate"
    assert labels.verdict("Is coffee good for you?", "Is drinking tea healthy?") == "wrong_unlabelled"
    # a direct non-duplicate label wins over the cluster
    labels2 = PairLabels(LABELLED + [{"question1": "Is tea good for you?", "question2": "Does tea help your health?",
                                      "is_duplicate": 0, "split": "test"}])
    assert labels2.verdict("Does tea help your health?", "Is tea good for you?") == "wrong_non_duplicate"


def test_classify_hit_attributes_the_answer_to_its_origin():
    labels = PairLabels(LABELLED)
    origins = {"ans-tea": {"Is tea good for you?"}, "ans-coffee": {"Is coffee good for you?"},
               "ans-shared": {"Is tea good for you?", "Is coffee good for you?"},
               "ans-both-ok": {"Is tea good for you?", "Is drinking tea healthy?"}}
    assert classify_hit("Is drinking tea healthy?", "ans-tea", origins, labels) == "correct_duplicate"
    assert classify_hit("Is tea good for you?", "ans-coffee", origins, labels) == "wrong_non_duplicate"
    assert classify_hit("Is tea good for you?", "never produced", origins, labels) == UNRESOLVED
    assert classify_hit("Is tea good for you?", None, origins, labels) == UNRESOLVED
    assert classify_hit("Is drinking tea healthy?", "ans-shared", origins, labels) == UNRESOLVED  # disagreeing origins
    assert classify_hit("Is tea good for you?", "ans-both-ok", origins, labels) == "correct_same"


def test_cache_headers_and_their_absence():
    assert cache_status({}) == ("off", None, None)
    assert cache_status({"x-sigroute-cache": "hit-semantic", "x-sigroute-cache-category": "default",
                         "x-sigroute-cache-similarity": "0.934"}) == ("hit-semantic", "default", 0.934)
    assert cache_status({"x-sigroute-cache": "miss", "x-sigroute-cache-similarity": "n/a"}) == ("miss", None, None)


def test_summary_counts_hits_wrong_hits_and_savings():
    labels = PairLabels(LABELLED)

    def rec(kind, text, cache, answer, ms):
        return {"kind": kind, "text": text, "cache": cache, "category": "default", "similarity": None,
                "answer": answer, "latency_ms": ms}

    records = [
        rec("first", "Is tea good for you?", "miss", "A1", 50.0),
        rec("repeat", "Is tea good for you?", "hit-exact", "A1", 2.0),
        rec("paraphrase", "Is drinking tea healthy?", "hit-semantic", "A1", 5.0),
        rec("hard_negative", "Is coffee good for you?", "hit-semantic", "A1", 5.0),  # wrong
        rec("first", "Is green tea good for you?", "miss", "A2", 60.0),
        rec("first", "Why is the sky blue?", "error", None, 1.0),
    ]
    s = summarize_run(records, upstream_calls=2, labels=labels)
    assert s["requests"] == 6 and s["errors"] == 1 and s["hits"] == 3
    assert s["hit_rate"] == 0.5 and s["wrong_hits"] == 1 and s["wrong_hit_rate"] == pytest.approx(1 / 3, abs=1e-4)
    assert s["upstream_calls_saved"] == 4 and s["upstream_calls_saved_fraction"] == pytest.approx(4 / 6, abs=1e-4)
    assert s["by_kind"]["repeat"]["hit_rate"] == 1.0 and s["by_kind"]["first"]["hit_rate"] == 0.0
    assert s["by_kind"]["hard_negative"]["wrong_hits"] == 1
    assert s["verdicts"] == {"correct_same": 1, "correct_duplicate": 1, "wrong_non_duplicate": 1}
    assert s["latency_ms"]["hit"]["n"] == 3 and s["latency_ms"]["miss"]["p50"] == 55.0
    assert s["by_category"]["default"]["requests"] == 5
    assert set(CORRECT).isdisjoint(WRONG)


def test_echo_prompt_carries_the_sim_marker():
    from sigroute.gateway.sim import ECHO_MARKER

    assert prompt_for("Why?", "echo").endswith(ECHO_MARKER)
    assert prompt_for("Why?", "filler") == "Why?"


# --------------------------------------------------------------------------------------------
# End to end: a real gateway and the simulated upstream on loopback, the official openai client

def test_end_to_end_small_run(tmp_path):
    path = write_pairs(tmp_path / "pairs.csv", 300)
    result = run_benchmark(str(path), n_requests=30, seed=0, concurrency=1, upstream_ms=1.0)
    summary = result["summary"]
    for key in ("hit_rate", "wrong_hit_rate", "upstream_calls_saved", "upstream_calls_saved_fraction",
                "hit_p50_ms", "miss_p50_ms", "nocache_p50_ms", "requests"):
        assert key in summary, key
    assert summary["requests"] == 30 and summary["errors"] == 0
    cached = result["runs"]["cache"]
    repeats = cached["by_kind"]["repeat"]
    assert repeats["requests"] > 0
    # one at a time, every repeat is a hit: exact, or semantic when the question's first ask was
    # itself served from another question's entry (then its own answer was never stored)
    assert repeats["hit_rate"] == 1.0
    assert set(repeats["by_cache"]) <= {"hit-exact", "hit-semantic"} and repeats["by_cache"].get("hit-exact", 0) > 0
    assert cached["upstream_calls"] == 30 - cached["hits"]
    nocache = result["runs"]["nocache"]
    assert nocache["hits"] == 0 and nocache["upstream_calls"] == 30
