"""The dial and energy frontiers (`benchmarks.frontiers`) on an invented routing directory: one
`learn: quality` learner serves every dial; the energy weight trades accuracy for joules."""

from __future__ import annotations

import pytest

from benchmarks import frontiers as fr
from benchmarks import routing as rb
from test_routing_benchmark import POOL, four_tokens, make_dir, topic_features


@pytest.fixture()
def split(tmp_path):
    train = rb.load_table(make_dir(tmp_path, 300, seed=1, prefix="t", name="train"), POOL, count_tokens=four_tokens)
    data = rb.load_table(make_dir(tmp_path, 150, seed=2, prefix="s", name="data"), POOL, count_tokens=four_tokens)
    return rb.make_split(data, train)


def test_assumed_energy_follows_active_parameters(split):
    energy = fr.assumed_energy(split.stream.models_table, ["small", "big"])
    assert energy["small"]["prompt_j_per_token"] == pytest.approx(2 * 1e9 / fr.FLOP_PER_J_PROMPT)
    assert energy["big"]["completion_j_per_token"] == pytest.approx(100 * 5 * energy["small"]["prompt_j_per_token"])
    assert fr.assumed_energy([{"model": "hosted", "active_params_b": ""}], ["hosted"]) == {"hosted": None}


def test_one_learner_serves_every_dial(split):
    X_tr, X_st = topic_features(split.train), topic_features(split.stream)
    out = fr.dial_frontier(split, X_tr, X_st, seeds=2, alpha=0.1, ridge=1.0, log=lambda m: None)
    by_dial = {p["dial"]: p for p in out["points"]}
    quality, cheap = by_dial[0.0]["one_learner"], by_dial[1.0]["one_learner"]
    assert quality["accuracy"]["mean"] > cheap["accuracy"]["mean"] + 0.1
    assert cheap["cost_per_question_usd"]["mean"] < 0.2 * quality["cost_per_question_usd"]["mean"]
    # the shared learner is about as good at each dial as a learner dedicated to it
    for d in (0.0, 1.0):
        assert by_dial[d]["one_learner"]["accuracy"]["mean"] == pytest.approx(
            by_dial[d]["dedicated_learner"]["accuracy"]["mean"], abs=0.1)


def test_energy_weight_trades_accuracy_for_joules(split):
    X_tr, X_st = topic_features(split.train), topic_features(split.stream)
    energy = fr.assumed_energy(split.stream.models_table, POOL)
    out = fr.energy_frontier(split, X_tr, X_st, seeds=1, alpha=0.1, ridge=1.0, energy=energy, log=lambda m: None)
    first, last = out["points"][0], out["points"][-1]
    assert first["w"] == 0.0 and last["joules"]["mean"] < 0.3 * first["joules"]["mean"]
    assert first["accuracy"]["mean"] > last["accuracy"]["mean"]
    assert {r["model"] for r in out["single_models"]} == set(POOL)


def test_declared_energy_comes_from_a_models_csv_style_file(tmp_path):
    good = tmp_path / "energy.csv"
    good.write_text("model,prompt_j_per_token,completion_j_per_token,per_request_j\n"
                    "small,0.01,0.05,\nbig,0.5,2.5,100\n")
    figures = fr.read_energy_csv(good)
    assert figures["small"] == {"prompt_j_per_token": 0.01, "completion_j_per_token": 0.05, "per_request_j": 0.0}
    assert figures["big"]["per_request_j"] == 100.0
    for text, message in (
        ("model,watts\nsmall,3\n", r":1: the header must name 'model'"),
        ("model,prompt_j_per_token,watts\nsmall,1,3\n", r":1: unknown column\(s\) watts"),
        ("model,prompt_j_per_token\nsmall,lots\n", r":2: column 'prompt_j_per_token' of 'small' is not a number"),
        ("model,prompt_j_per_token\nsmall,1\nbig,-2\n", r":3: model 'big': .*greater than or equal to 0"),
        ("model,prompt_j_per_token\nsmall,0\n", r":2: model 'small': .*declare at least one"),
        ("model,prompt_j_per_token\nsmall,1\nsmall,2\n", r":3: model 'small' is declared twice"),
    ):
        bad = tmp_path / "bad.csv"
        bad.write_text(text)
        with pytest.raises(ValueError, match=message):
            fr.read_energy_csv(bad)


def test_per_request_energy_counts_once_per_answer(split):
    figures = {m: {"prompt_j_per_token": 0.0, "completion_j_per_token": 0.0, "per_request_j": j}
               for m, j in zip(POOL, (1.0, 10.0, 100.0))}
    joules = fr.energy_matrix(split.stream, figures)
    assert joules.shape == (split.stream.n, len(POOL))
    assert (joules == [[1.0, 10.0, 100.0]]).all()
