"""The hallucination benchmark builds its cases from data laid out like ../shared/data and scores
them; here with a tiny invented data directory."""

from __future__ import annotations

import gzip
import json

from benchmarks import hallucination


def tiny_data(root):
    (root / "routing" / "mmlu_pro").mkdir(parents=True)
    questions = [
        {"question_id": 1, "question": "Which metal melts at the lowest temperature?",
         "options": ["Mercury", "Iron", "Copper", "Gold"], "answer": "A"},
        {"question_id": 2, "question": "How many sides does a hexagon have?",
         "options": ["Five", "Six", "Seven", "Eight"], "answer": "B"},
    ]
    with gzip.open(root / "routing" / "mmlu_pro" / "questions.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("".join(json.dumps(q) + "\n" for q in questions))
    (root / "pii").mkdir()
    text1 = "Maria Lopez is the head of the archive office in Toledo since last spring."
    text2 = "Kenji Watanabe has managed the harbor depot for eleven years now without a break."
    records = [
        {"full_text": text1, "spans": [{"entity_type": "PERSON", "entity_value": "Maria Lopez",
                                        "start_position": 0, "end_position": 11}]},
        {"full_text": text2, "spans": [{"entity_type": "PERSON", "entity_value": "Kenji Watanabe",
                                        "start_position": 0, "end_position": 14}]},
    ]
    (root / "pii" / "presidio_synth_dev.json").write_text(json.dumps(records))


def test_build_and_score(tmp_path, capsys):
    tiny_data(tmp_path)
    cases = hallucination.build_cases(tmp_path, seed=1)
    kinds = sorted(c["kind"] for c in cases)
    assert kinds.count("exam_correct") == 2 and kinds.count("exam_wrong_option") == 2
    assert kinds.count("record_restated") == 2 and kinds.count("record_swapped_PERSON") == 2
    assert kinds.count("record_negated") == 2
    assert all(c["split"] in ("dev", "test") for c in cases)
    swapped = [c for c in cases if c["kind"] == "record_swapped_PERSON"]
    assert all(("Maria" in c["answer"]) != ("Maria" in c["context"]) for c in swapped)
    data = tmp_path / "cases.jsonl"
    for c in cases:   # score every case in this smoke test
        c["split"] = "test"
    data.write_text("".join(json.dumps(c) + "\n" for c in cases))
    assert hallucination.main(["--data", str(data)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["n"] == len(cases) and 0 <= summary["recall"] <= 1
    assert summary["flag_rate_by_kind"]["record_swapped_PERSON"] == 1.0   # names absent from the context
    assert summary["flag_rate_by_kind"]["exam_correct"] == 0.0
