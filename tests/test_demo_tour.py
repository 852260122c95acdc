"""`sigroute demo --tour`, run as a user runs it: a subprocess that starts the simulators and the
gateway on loopback. Its output is parsed section by section: the learning decision's numbers, the
semantic cache hit, the blocked jailbreak, what the upstream saw of personal data against what the
caller got, and the dashboard's address.

The main test needs nothing from ../shared/data: it points --routing-data at a missing folder, so
the tour must say so and replay its synthetic table. A second test replays the recorded routing
data when it is there (skipped in a fresh clone).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sigroute.gateway.sim.replay import OutcomesError, load_outcomes
from sigroute.gateway.sim.synthetic import SYNTHETIC_MODELS, synthetic_outcomes
from sigroute.gateway.tour import PII_EMAIL, PII_PHONE, load_replay_data
from test_cli import sigroute

ROUTING_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "routing"

RESULT = re.compile(r"learning result: router accuracy (?P<acc>[\d.]+), cost \$(?P<cost>[\d.]+) \| "
                    r"best single model (?P<best>\S+): accuracy (?P<best_acc>[\d.]+), cost \$(?P<best_cost>[\d.]+)")
FIRST_LAST = re.compile(r"first 40 requests: accuracy (?P<first>[\d.]+) at .*; last 40: accuracy (?P<last>[\d.]+) at")
WINDOW_ROW = re.compile(r"^\s+(\d+)-(\d+)\s+[█▏▎▍▌▋▊▉ ]*\s(\d\.\d\d)\s+(\d\.\d\d)\s", re.MULTILINE)


def sections(output: str) -> dict[str, str]:
    """The tour's output split at its "[n/4] title" headers: {"head": ..., "1": ..., ..., "4": ...}."""
    parts = re.split(r"^\[(\d)/4\] .*$", output, flags=re.MULTILINE)
    found = {"head": parts[0]}
    found.update({parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)})
    return found


def check_common_sections(out: dict[str, str]) -> None:
    # the dashboard's address is printed before the first section, and it answered
    dashboard = r"dashboard: http://127\.0\.0\.1:\d+/ui  \(page HTTP 200, data HTTP 200;"
    assert re.search(dashboard, out["head"]), out["head"]
    # 2: the paraphrase is a semantic cache hit, the first question a miss
    cache = out["2"]
    assert "x-sigroute-cache: miss" in cache
    assert re.search(r"paraphrase .*\n.*x-sigroute-cache: hit-semantic \(similarity 0\.\d+\)", cache), cache
    # 3: the attack is refused with a 4xx by the jailbreak plugin, and the model never saw it
    jailbreak = out["3"]
    assert re.search(r"→ HTTP 4\d\d, decision block-attacks, blocked by: jailbreak", jailbreak), jailbreak
    assert "calls the model received for it: 0" in jailbreak
    # 4: the upstream saw placeholders, the caller got the original values back
    pii = out["4"]
    seen = re.search(r"upstream saw: (.*)", pii).group(1)
    got = re.search(r"caller got: +(.*)", pii).group(1)
    assert PII_EMAIL not in seen and PII_PHONE not in seen and "<EMAIL_ADDRESS_1>" in seen, seen
    assert PII_EMAIL in got and PII_PHONE in got, got


def learning_numbers(section: str) -> tuple[dict[str, float | str], list[float]]:
    match, first_last = RESULT.search(section), FIRST_LAST.search(section)
    assert match and first_last, section
    numbers = {k: (v if k == "best" else float(v)) for k, v in (match.groupdict() | first_last.groupdict()).items()}
    windows = [float(m.group(3)) for m in WINDOW_ROW.finditer(section)]
    return numbers, windows


def test_tour_without_the_routing_data_replays_the_synthetic_table(tmp_path):
    result = sigroute("demo", "--tour", "--routing-data", str(tmp_path / "missing"), timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = sections(result.stdout)
    assert set(out) == {"head", "1", "2", "3", "4"}, result.stdout
    learning = out["1"]
    # it says clearly that the data is missing and that what it replays is synthetic
    assert "SYNTHETIC outcome table" in learning and f"{tmp_path / 'missing'} does not exist" in learning
    numbers, windows = learning_numbers(learning)
    assert numbers["best"] == "synthetic-large"
    assert len(windows) == 6   # 320 questions in rows 1-10, 11-20, 21-40, ..., 161-320, each printed as it completes
    # sane totals: the router spent less than the best single model would have
    assert 0.3 <= numbers["acc"] <= 1.0 and 0.3 <= numbers["best_acc"] <= 1.0
    assert 0 < numbers["cost"] < numbers["best_cost"]
    # it starts knowing nothing, so its prior has it try every model in the first ten requests ...
    first_window = next(line for line in learning.splitlines() if re.match(r"\s+1-10\s", line))
    assert all(f"{size}×" in first_window for size in ("small", "medium", "large")), first_window
    # ... and it learned: its last 40 answers come near the best single model (the cheapest model,
    # which an unlearned router with the cost term would keep, is far below that)
    assert numbers["last"] >= numbers["best_acc"] - 0.15, numbers
    assert numbers["last"] > numbers["first"] - 0.1, numbers
    assert "every section showed what it should" in result.stdout
    check_common_sections(out)


@pytest.mark.skipif(not (ROUTING_DATA / "models.csv").is_file(), reason="no recorded routing data next to the repo")
def test_tour_replays_the_recorded_routing_data():
    result = sigroute("demo", "--tour", "--routing-data", str(ROUTING_DATA), "--tour-questions", "120", timeout=170)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = sections(result.stdout)
    assert "recorded outcomes from" in out["1"] and "SYNTHETIC" not in out["1"]
    numbers, windows = learning_numbers(out["1"])
    assert numbers["best"] in ("gemini-1.5-pro-002", "gemini-1.5-flash-002")
    assert len(windows) == 5
    assert 0.3 <= numbers["acc"] <= 1.0 and 0.3 <= numbers["best_acc"] <= 1.0
    assert 0 < numbers["cost"] < numbers["best_cost"]
    check_common_sections(out)


def test_a_folder_that_is_not_routing_data_falls_back_to_the_synthetic_table(tmp_path):
    (tmp_path / "models.csv").write_text("not,a,models,table\n")
    replay = load_replay_data(str(tmp_path), ["Meta-Llama-3_1-8B-Instruct"])
    assert replay.synthetic and replay.pool == list(SYNTHETIC_MODELS)
    assert "SYNTHETIC" in replay.source and str(tmp_path) in replay.source
    with pytest.raises(OutcomesError):
        load_outcomes(tmp_path)


def test_the_synthetic_table_is_fixed_and_the_simulator_finds_every_question():
    table = synthetic_outcomes()
    again = synthetic_outcomes()
    assert (table.correct == again.correct).all() and [q.prompt for q in table.questions] == \
        [q.prompt for q in again.questions]
    for q in table.questions:
        assert table.find(q.prompt) is q
    # the shape of the table the tour's learning section relies on: small is good at words only,
    # medium at arithmetic only, large (the dearest) at both
    by_kind = {kind: [q.row for q in table.questions if q.category == kind] for kind in ("math", "words")}
    small, large = table.column("synthetic-small"), table.column("synthetic-large")
    medium = table.column("synthetic-medium")
    assert table.correct[by_kind["words"], small].mean() > 0.7 > table.correct[by_kind["math"], small].mean()
    assert table.correct[by_kind["math"], medium].mean() > 0.7 > table.correct[by_kind["words"], medium].mean()
    assert table.correct[:, large].mean() > max(table.correct[:, small].mean(), table.correct[:, medium].mean())
