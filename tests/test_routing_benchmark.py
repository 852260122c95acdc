"""The routing benchmark's core on a tiny invented outcomes table (no encoder, no shared data)."""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json

import numpy as np
import pytest

from benchmarks import routing as rb

MODELS_CSV = """model,family,params_b,active_params_b,hosting,price_in_per_mtok,price_out_per_mtok,ttft_ms,tokens_per_s
small,x,1,1,self,0.10,0.20,100,100
mid,x,10,10,self,1.00,2.00,200,50
big,x,100,100,hosted,10.00,20.00,300,20
unused,x,1,1,self,0.10,0.10,100,100
"""
POOL = ("small", "mid", "big")
TOPICS = ("arithmetic", "geography", "cooking")


def _write_gz(path, text: str) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)


def make_dir(tmp_path, n: int = 240, seed: int = 0, prefix: str = "q", name: str = "routing",
             topics: tuple[str, str, str] = TOPICS):
    """An invented routing/ directory: `big` is right on every topic, `small` only on the third
    (cooking), `mid` on the second and third; a few cells are empty and lengths partly unrecorded."""
    rng = np.random.default_rng(seed)
    root = tmp_path / name
    (root / "mmlu_pro").mkdir(parents=True)
    (root / "models.csv").write_text(MODELS_CSV)
    questions, corr, chars = [], [], []
    for i in range(n):
        topic = topics[i % 3]
        qid = f"{prefix}{i}"
        questions.append({"question_id": qid, "category": topic, "src": "invented",
                          "question": f"Invented {topic} question number {i}?", "options": ["yes", "no", "maybe"],
                          "answer": "A"})
        p = {"small": 0.9 if topic == topics[2] else 0.1, "mid": 0.1 if topic == topics[0] else 0.9, "big": 0.95}
        cells = {m: str(int(rng.random() < p[m])) for m in POOL}
        if i == 5:
            cells["mid"] = ""  # no result: the question drops out
        corr.append([qid, topic, "invented"] + [cells[m] for m in POOL] + ["1"])
        chars.append([qid, str(400 if i % 2 else 0), str(800), "0", str(200)])  # big never recorded
    _write_gz(root / "mmlu_pro" / "questions.jsonl.gz", "".join(json.dumps(q) + "\n" for q in questions))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["question_id", "category", "src", *POOL, "unused"])
    w.writerows(corr)
    _write_gz(root / "mmlu_pro" / "correctness.csv.gz", buf.getvalue())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["question_id", *POOL, "unused"])
    w.writerows(chars)
    _write_gz(root / "mmlu_pro" / "output_chars.csv.gz", buf.getvalue())
    return root


def four_tokens(text: str) -> int:
    return 40


@pytest.fixture()
def tables(tmp_path):
    train = rb.load_table(make_dir(tmp_path, 300, seed=1, prefix="t", name="train"), POOL, count_tokens=four_tokens)
    data = rb.load_table(make_dir(tmp_path, 150, seed=2, prefix="s", name="data"), POOL, count_tokens=four_tokens)
    return train, data


def topic_features(table: rb.Table) -> np.ndarray:
    """One-hot topic plus a bias, unit norm (what a domain feature would give)."""
    X = np.array([[1.0] + [float(c == t) for t in TOPICS] for c in table.categories])
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def test_load_table_imputation_missing_and_costs(tables):
    train, data = tables
    assert train.n == 299 and train.dropped_missing["questions"] == 1
    assert train.dropped_missing["empty_cells_per_model"]["mid"] == 1
    # small recorded 400 on odd rows; even rows impute the median of (800 mid, 200 unused) = 500
    odd = train.question_ids.index("t1")
    even = train.question_ids.index("t2")
    assert train.completion_tokens[odd, 0] == 100.0 and train.completion_tokens[even, 0] == 125.0
    # big never recorded: the median of the others that did (400, 800, 200 -> 400)
    assert train.completion_tokens[odd, 2] == 100.0 and not train.chars_recorded[odd, 2]
    cost = train.cost[odd]
    assert cost[1] == pytest.approx((40 * 1.0 + 200 * 2.0) / 1e6)
    share = train.cost_share()[odd]
    assert share[2] == pytest.approx(1.0)
    assert share[0] == pytest.approx((40 * 0.1 + 100 * 0.2) / (40 * 10 + 100 * 20))


def test_reward_matches_the_gateway(tables):
    from sigroute.bandits.contextual import reward_value
    from sigroute.policies.schema import RewardSpec

    _, data = tables
    rm = rb.RewardModel(data.models, data.prices, 0.3)
    out = rb.TableStep(data)(3, "mid")
    expected = reward_value(RewardSpec(quality=1, cost=0.3), quality=out.correct,
                            cost_share=rm.share("mid", out), latency_ms=None)
    assert rm("mid", out) == pytest.approx(expected)
    R = rm.matrix(data.correct, data.cost_share())
    assert R[3, 1] == pytest.approx(expected)


def test_hull_and_aiq_math():
    pts = [(1.0, 0.5), (2.0, 0.55), (3.0, 0.8), (4.0, 0.7), (5.0, 0.8)]
    hull = rb.nondecreasing_hull(pts)
    # (2, .55) lies under the chord (1,.5)-(3,.8); nothing after the first best point
    assert hull.tolist() == [[1.0, 0.5], [3.0, 0.8]]
    assert rb.hull_value(hull, 2.0) == pytest.approx(0.65)
    assert rb.hull_value(hull, 10.0) == pytest.approx(0.8)
    # area over [1, 5]: trapezoid 1→3 (0.5..0.8) = 1.3, flat 3→5 = 1.6 -> 2.9 / 4
    assert rb.aiq(pts, 1.0, 5.0) == pytest.approx(2.9 / 4)
    # an anchor at the cheap end lifts the part the router does not reach; without it that part counts 0
    assert rb.aiq([(3.0, 0.8)], 1.0, 5.0) == pytest.approx(0.8 * 2 / 4)
    assert rb.aiq([(3.0, 0.8)], 1.0, 5.0, anchor=(1.0, 0.4)) == pytest.approx((1.2 + 1.6) / 4)
    # a single constant router: AIQ is its accuracy
    assert rb.aiq([(1.0, 0.6)], 1.0, 5.0) == pytest.approx(0.6)


def test_operating_point_selection_under_a_cost_threshold():
    pts = [(0.05, 0.60), (0.09, 0.66), (0.11, 0.70), (0.3, 0.71), (0.5, 0.74), (1.0, 0.72)]
    assert rb.accuracy_at_budget(pts, 0.10) == 0.66
    assert rb.accuracy_at_budget(pts, 0.30) == 0.71
    assert rb.accuracy_at_budget(pts, 0.50) == 0.74
    assert rb.accuracy_at_budget(pts, 0.01) is None


def test_oracle_and_regret_bookkeeping(tables):
    _, data = tables
    rm = rb.RewardModel(data.models, data.prices, 0.0)
    R = rm.matrix(data.correct, data.cost_share())
    o = rb.oracle_choice(data.correct, R, data.cost)
    rows = np.arange(data.n)
    # at w = 0 the oracle is right whenever any model is, and takes the cheapest right model
    assert np.array_equal(data.correct[rows, o], data.correct.max(axis=1))
    first_right = np.argmax(data.correct > 0, axis=1)  # pool is ordered cheapest first
    assert np.array_equal(o[data.correct.max(axis=1) > 0], first_right[data.correct.max(axis=1) > 0])
    order = np.random.default_rng(0).permutation(data.n)
    run = rb.static_run(np.full(data.n, 2), order, data.correct, data.cost, R)
    curve = rb.regret_curve(run, R.max(axis=1))
    assert curve[-1] == pytest.approx(float((R.max(axis=1) - R[:, 2]).sum()))
    assert np.all(np.diff(curve) >= -1e-12)  # regret against the per-question oracle never falls
    # a policy streamed through the table sees exactly the recorded outcomes
    learner = rb.Learner(rb.PolicySpec("random", "random"), 4, data.models, data.prices, seed=0)
    got = rb.run_policy(learner, topic_features(data), order, rb.TableStep(data), rm)
    assert np.array_equal(got.correct, data.correct[order, got.chosen])
    assert np.allclose(got.cost, data.cost[order, got.chosen])
    assert np.allclose(got.reward, R[order, got.chosen])


def test_warm_start_equals_learning_update_by_update(tables):
    train, data = tables
    X = topic_features(train)[:40]
    rm = rb.RewardModel(train.models, train.prices, 0.2)
    R = rm.matrix(train.correct[:40], train.cost_share()[:40])
    for kind in ("linucb", "hybrid_linucb"):
        warm = rb.Learner(rb.PolicySpec(kind, kind), 4, train.models, train.prices, seed=0)
        warm.warm_start(X, R)
        slow = rb.Learner(rb.PolicySpec(kind, kind), 4, train.models, train.prices, seed=0)
        for x, r in zip(X, R):
            for j, m in enumerate(train.models):
                slow.learn(m, x, r[j])
        for m in train.models:
            assert np.allclose(warm.estimator.sums()[m], slow.estimator.sums()[m])
        x = topic_features(data)[0]
        assert warm.choose(x) == slow.choose(x)


def test_split_with_a_training_directory(tables, tmp_path):
    train, data = tables
    split = rb.make_split(data, train)
    assert split.train.n == train.n and split.stream.n == data.n  # no shared ids
    overlap = rb.make_split(train, train)
    assert overlap.stream.n == 0


def test_run_benchmark_learns_topics_and_reports_the_summary(tables):
    train, data = tables
    split = rb.make_split(data, train)
    X_tr, X_st = topic_features(split.train), topic_features(split.stream)
    rng = np.random.default_rng(0)
    E_tr = X_tr + 0.05 * rng.standard_normal(X_tr.shape)
    E_st = X_st + 0.05 * rng.standard_normal(X_st.shape)
    out = rb.run_benchmark(split, X_tr, X_st, E_tr, E_st, seeds=2, warm=True, alpha=None, ridge=1.0,
                           regret_w=0.1, w_grid=(0.0, 0.05, 0.2, 1.0, 10.0), tune_grid=((0.0, 0.5), (1.0,)),
                           policies="epsilon_greedy,random")
    s = out["summary"]
    for key in ("best_single_model", "best_single_accuracy", "best_single_cost", "router_accuracy_at_30pct_cost",
                "router_accuracy_at_10pct_cost", "router_accuracy_at_50pct_cost", "aiq_router",
                "aiq_per_category_baseline", "aiq_supervised_baseline", "regret_at_1000", "seeds", "n_questions"):
        assert key in s, key
    assert s["best_single_model"] == "big" and s["n_questions"] == data.n and s["seeds"] == 2
    assert set(s["regret_at_1000"]) >= {"linucb", "epsilon_greedy", "random", "single:big", "cheapest",
                                        "per_category", "supervised"}
    # with topic features the warm-started router knows which model covers which topic: big only for
    # arithmetic (a third of big's cost), mid for geography, small for cooking -> ≈ 0.92 accuracy
    cheap_best = max(out["single_models"][m]["accuracy"] for m in ("small", "mid"))
    assert s["router_accuracy_at_50pct_cost"] > max(0.85, cheap_best + 0.2)
    assert s["router_accuracy_at_10pct_cost"] >= cheap_best - 0.05
    assert s["aiq_router"] > s["aiq_per_category_baseline"] - 0.05
    assert s["regret_at_1000"]["linucb"] < s["regret_at_1000"]["random"]
    assert s["regret_at_1000"]["linucb"] < min(s["regret_at_1000"][f"single:{m}"] for m in POOL)
    assert out["config"]["hyperparameters"]["linucb_alpha"] in (0.0, 0.5)
    assert out["honest_operating_points"] is not None
    json.dumps(rb._jsonable(out))  # the whole result is JSON


def test_train_mode_on_two_directories_cross_fits_only_what_the_heads_saw(tmp_path, monkeypatch):
    """`--data DIR --train DIR2` where DIR2 is the data the shipped heads were trained on: the
    heads' training part of DIR2 gets out-of-fold head features, the rest (the heads' own test
    part) the shipped heads' outputs. This crashed with a KeyError when the training split held
    questions outside the heads' training part."""
    from sigroute.signals.training import in_test_split

    topics = ("math", "history", "law")  # real MMLU-Pro categories: the domain head's labels
    train_dir = make_dir(tmp_path, 150, seed=1, prefix="t", name="train", topics=topics)
    data_dir = make_dir(tmp_path, 60, seed=2, prefix="s", name="data", topics=topics)
    sha = rb._sha256(train_dir / "mmlu_pro" / "questions.jsonl.gz")
    monkeypatch.setattr(rb, "head_training_sha256s", lambda: {sha})
    ids = [f"t{i}" for i in range(150) if i != 5]
    assert any(in_test_split(q) for q in ids) and not all(in_test_split(q) for q in ids)
    out_path = tmp_path / "out.json"
    rc = rb.main(["--data", str(data_dir), "--train", str(train_dir), "--pool", ",".join(POOL), "--seeds", "1",
                  "--alpha", "0.1", "--ridge", "1.0", "--policies", "random", "--features", "bias,domain,difficulty",
                  "--cache", str(tmp_path / "cache"), "--json", str(out_path), "--quiet"])
    assert rc == 0
    out = json.loads(out_path.read_text())
    assert out["config"]["cross_fitted_training_features"]
    assert out["config"]["n_training_split"] == 149 and out["summary"]["n_questions"] == 59
    assert out["summary"]["aiq_router"] is not None


def test_merge_cross_fit_keeps_shipped_rows_outside_the_heads_training_part():
    folded = {"domain": np.array([[1.0, 0.0], [0.0, 1.0]])}
    shipped = {"domain": np.full((4, 2), 0.5)}
    merged = rb._merge_cross_fit(folded, np.array([True, False, True, False]), shipped)
    assert merged["domain"].tolist() == [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [0.5, 0.5]]
    assert shipped["domain"].tolist() == [[0.5, 0.5]] * 4  # the caller's block is not modified
    with pytest.raises(ValueError):
        rb._merge_cross_fit(folded, np.array([True, True, True, False]), shipped)


def test_quality_learner_matches_the_gateway_selector_and_its_warm_start(tables):
    """`learn: quality` in the benchmark is the gateway's: the same sums (quality and answer profile)
    and the same scores, so through-gateway runs can match the offline picks."""
    from sigroute.bandits.contextual import LinUCBSelector
    from sigroute.policies.schema import Algorithm, ModelSpec

    train, data = tables
    X = topic_features(train)[:40]
    sub = train.subset(np.arange(40))
    rm = rb.RewardModel(train.models, train.prices, 0.3)
    spec = rb.PolicySpec("linucb", "linucb", {"alpha": 0.1, "learn": "quality"})
    warm = rb.Learner(spec, 4, train.models, train.prices, seed=0, reward=rm)
    warm.warm_start(X, None, sub)
    slow = rb.Learner(spec, 4, train.models, train.prices, seed=0, reward=rm)
    for i, x in enumerate(X):
        for j, m in enumerate(train.models):
            slow.learn(m, x, 0.0, rb.Outcome(float(sub.correct[i, j]), 40.0, float(sub.completion_tokens[i, j]), 0.0))
    for m in train.models:
        assert np.allclose(warm.estimator.sums()[m], slow.estimator.sums()[m])
    options = Algorithm.model_validate({"linucb": {"alpha": 0.1, "ridge": 1.0, "learn": "quality",
                                                   "features": ["bias"], "reward": {"quality": 1, "cost": 0.3}}}).options
    specs = {m: ModelSpec.model_validate({"provider": f"openai/{m}", "price": {"input": float(p[0]), "output": float(p[1])}})
             for m, p in zip(train.models, train.prices)}
    class TopicFeatures:  # the selector's context here is the tables' topic one-hot (4 numbers)
        dim, schema_id, needs_embedding = 4, "topics", False

    selector = LinUCBSelector(options, specs, decision="d", features=TopicFeatures())
    selector.learner("default").estimator.load_sums(warm.estimator.sums())
    for x in topic_features(data)[:12]:
        choice = selector.select_vector(list(train.models), x, prompt_tokens=40)
        assert choice.model == warm.choose(x, 40.0)
        known = warm.known(40.0)
        for m in train.models:
            mean, var = warm.estimator.predict(m, x)
            assert choice.scores[m] == pytest.approx(known.apply(m, mean + 0.1 * var ** 0.5))


def test_run_benchmark_with_a_quality_router(tables):
    train, data = tables
    split = rb.make_split(data, train)
    X_tr, X_st = topic_features(split.train), topic_features(split.stream)
    out = rb.run_benchmark(split, X_tr, X_st, None, None, seeds=1, warm=True, alpha=0.1, ridge=1.0, regret_w=0.1,
                           w_grid=(0.0, 0.05, 0.2, 1.0, 10.0), policies="random", learn="quality")
    s = out["summary"]
    assert out["config"]["hyperparameters"]["learn"] == "quality"
    cheap_best = max(out["single_models"][m]["accuracy"] for m in ("small", "mid"))
    assert s["router_accuracy_at_50pct_cost"] > max(0.85, cheap_best + 0.2)
    assert s["regret_at_1000"]["linucb"] < s["regret_at_1000"]["random"]


def test_cross_fit_cache_serves_every_pool_of_the_same_data(tmp_path, monkeypatch):
    """The out-of-fold head outputs depend on the data and the heads, not on the pool: one cache
    file, computed once, serves a later training split of any subset of its questions."""
    import sklearn.linear_model

    topics = ("math", "history", "law")
    root = make_dir(tmp_path, 120, seed=3, prefix="c", name="data", topics=topics)
    mmlu = root / "mmlu_pro"

    class FakeEncoder:  # stands in for the shared encoder: fixed vectors per text
        fingerprint = "test:fake"

        def encode(self, texts):
            return np.stack([np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(8) for t in texts])

    full = rb.load_table(root, POOL, count_tokens=four_tokens)
    subset = full.subset(np.arange(0, full.n, 2))
    for table in (full, subset):
        shipped = {"domain": np.zeros((table.n, 14)), "difficulty": np.zeros((table.n, 3))}
        first = rb.cross_fitted_head_blocks(table, mmlu / "questions.jsonl.gz", mmlu / "correctness.csv.gz",
                                            FakeEncoder(), tmp_path / "cache", shipped)
        if table is full:
            reference = first
    assert len(list((tmp_path / "cache").glob("crossfit-*.npz"))) == 1

    def no_fitting(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", no_fitting)
    shipped = {"domain": np.zeros((subset.n, 14)), "difficulty": np.zeros((subset.n, 3))}
    again = rb.cross_fitted_head_blocks(subset, mmlu / "questions.jsonl.gz", mmlu / "correctness.csv.gz",
                                        FakeEncoder(), tmp_path / "cache", shipped)
    rows = {q: i for i, q in enumerate(full.question_ids)}
    pick = [rows[q] for q in subset.question_ids]
    for name in ("domain", "difficulty"):
        assert np.allclose(again[name], reference[name][pick])
        assert np.allclose(again[name], first[name])


# --------------------------------------------------------------------------------------------
# learning from other feedback than the recorded correctness (--feedback)

def test_feedback_model_draws_the_simulated_user_and_judge():
    from sigroute.bandits.feedback import FeedbackWeights

    params = rb.FeedbackParams(p_wrong=0.6, p_right=0.05, q=0.3, judge_agree=0.8, judge_share=0.1)
    weights = FeedbackWeights()
    implicit = rb.FeedbackModel("implicit", params, seed=3)
    wrong = np.array([implicit.quality(0.0) for _ in range(20000)])
    right = np.array([implicit.quality(1.0) for _ in range(20000)])
    moved_on = 0.5 + weights.moved_on * 0.5
    reask = 0.5 - weights.reask * 0.5
    dissatisfied = 0.5 - weights.dissatisfied * 0.5
    assert set(np.round(np.unique(wrong), 6)) == {round(v, 6) for v in (moved_on, reask, dissatisfied)}
    # P(re-ask | wrong) = 0.6, of which 30 % cued; P(re-ask | right) = 0.05
    assert np.mean(wrong == moved_on) == pytest.approx(0.4, abs=0.015)
    assert np.mean(wrong == dissatisfied) == pytest.approx(0.6 * 0.3, abs=0.015)
    assert np.mean(right == moved_on) == pytest.approx(0.95, abs=0.01)
    # what an implicit learner sees is informative: higher for right answers on average
    assert right.mean() - wrong.mean() > 0.25
    explicit = rb.FeedbackModel("explicit", params, seed=3)
    assert [explicit.quality(c) for c in (0.0, 1.0)] == [0.0, 1.0]   # exactly the recorded correctness
    judge = rb.FeedbackModel("judge", params, seed=4)
    judged = np.array([judge.quality(1.0) for _ in range(20000)])
    assert np.mean(judged == 0.5) == pytest.approx(0.9, abs=0.01)    # 90 % not judged: the default stays
    verdicts = judged[judged != 0.5]
    assert np.mean(verdicts > 0.5) == pytest.approx(0.8, abs=0.03)   # the judge agrees 80 % of the time
    both = rb.FeedbackModel("implicit+judge", params, seed=5)
    assert len({round(both.quality(1.0), 6) for _ in range(2000)}) >= 3
    with pytest.raises(ValueError):
        rb.FeedbackModel("telepathy", params, seed=0)


def test_shadow_copies_teach_an_arm_the_router_did_not_choose(tables):
    """With shadow traffic, a learner that only ever picks one model still learns the others."""
    train, data = tables
    split = rb.make_split(data, train)
    X = topic_features(split.stream)
    rm = rb.RewardModel(split.stream.models, split.stream.prices, 0.1)
    params = rb.FeedbackParams(shadow_share=0.5, judge_agree=1.0)

    def counts(mode):
        learner = rb.Learner(rb.PolicySpec("linucb", "linucb", {"alpha": 0.0}), X.shape[1], split.stream.models,
                             split.stream.prices, seed=0, reward=rm)
        order = np.arange(split.stream.n)
        run = rb.run_policy(learner, X, order, rb.TableStep(split.stream), rm, split.stream.prompt_tokens,
                            rb.FeedbackModel(mode, params, seed=0))
        return {m: learner.estimator.count(m) for m in split.stream.models}, run

    plain, plain_run = counts("explicit")
    shadowed, shadow_run = counts("shadow")
    assert plain_run.shadow_cost == 0 and shadow_run.shadow_cost > 0
    assert sum(shadowed.values()) == pytest.approx(split.stream.n * 1.5, rel=0.15)   # half the requests copied
    assert sum(shadowed.values()) > sum(plain.values())
    rows = np.arange(split.stream.n)   # the caller pays its own answers only; the copies are counted apart
    assert shadow_run.cost.tolist() == split.stream.cost[rows, shadow_run.chosen].tolist()


def test_run_benchmark_reports_each_feedback_mode(tables):
    train, data = tables
    split = rb.make_split(data, train)
    X_tr, X_st = topic_features(split.train), topic_features(split.stream)
    out = rb.run_benchmark(split, X_tr, X_st, None, None, seeds=2, warm=True, alpha=0.1, ridge=1.0, regret_w=0.1,
                           w_grid=(0.0, 0.05, 0.2, 1.0, 10.0), policies="random",
                           feedback_modes=["explicit", "implicit", "implicit+judge", "shadow"])
    fb = out["summary"]["feedback"]
    assert set(fb) == {"explicit", "implicit", "implicit+judge", "shadow"}
    assert fb["explicit"]["aiq_ratio_vs_explicit"] == 1.0 and fb["explicit"]["aiq"] == out["summary"]["aiq_router"]
    for mode in ("implicit", "implicit+judge", "shadow"):
        assert fb[mode]["aiq"] == pytest.approx(fb[mode]["aiq_ratio_vs_explicit"] * out["aiq"]["router"]["mean"],
                                                abs=1e-3)
        assert fb[mode]["regret_at_1000"] >= 0
    # warm-started on the topics, every feedback source keeps the router far above random
    assert min(v["aiq"] for v in fb.values()) > out["aiq"]["single_models"] - 0.05
    assert out["feedback"]["shadow"]["shadow_cost_usd"] > 0 and out["feedback"]["implicit"]["shadow_cost_usd"] == 0
    assert out["config"]["feedback"]["p_wrong"] == 0.6
    json.dumps(rb._jsonable(out))


def test_cross_validation_inside_the_training_split_prefers_the_context_that_knows_the_topics(tables):
    """benchmarks.routing_cv: every training question is validated once, and a context that knows
    each question's topic beats a bias-only one on every fold."""
    from benchmarks.routing_cv import cross_validate, cv_fold

    train, _ = tables
    contexts = {"bias": np.ones((train.n, 1)), "topics": topic_features(train)}
    out = cross_validate(train, contexts, [(0.1, 1.0)], folds=3)
    bias, topics = out["results"]["bias | alpha 0.1 ridge 1"], out["results"]["topics | alpha 0.1 ridge 1"]
    assert len(bias["aiq_per_fold"]) == len(topics["aiq_per_fold"]) == 3
    assert bias["diff_vs_first"] == 0.0
    assert topics["folds_better_than_first"] == 3 and topics["diff_vs_first"] > 0.01
    assert sorted({cv_fold(q, 3) for q in train.question_ids}) == [0, 1, 2]


def test_hyper_parameters_are_chosen_by_cross_validation_inside_the_training_split(tables):
    train, data = tables
    split = rb.make_split(data, train)
    ctx = rb.Context(split, topic_features(split.train), topic_features(split.stream), warm=True, seeds=1,
                     ridge=1.0, w_grid=(0.0, 0.2, 10.0))
    parts = rb.fold_contexts(ctx, 3)
    streamed = [q for part in parts for q in part.split.stream.question_ids]
    assert sorted(streamed) == sorted(split.train.question_ids)   # every training question validated once
    for part in parts:
        assert not set(part.split.stream.question_ids) & set(part.split.train.question_ids)
    assert not set(streamed) & set(split.stream.question_ids)      # the reported stream takes no part
    assert all(part.warm for part in parts)
    # a cold-start run chooses its hyper-parameters on cold streams of the folds
    assert not any(part.warm for part in rb.fold_contexts(dataclasses.replace(ctx, warm=False), 3))
    assert not rb.inner_context(dataclasses.replace(ctx, warm=False)).warm
    tuned = rb.tune(ctx, lambda message: None, alphas=(0.0, 0.5), ridges=(0.1, 100.0), folds=3)
    assert len(tuned["grid"]) == 4 and tuned["folds"] == 3
    for row in tuned["grid"]:
        assert len(row["cv_aiq_per_fold"]) == 3
        assert row["cv_aiq"] == pytest.approx(float(np.mean(row["cv_aiq_per_fold"])), abs=1e-6)
    best = max(tuned["grid"], key=lambda row: row["cv_aiq"])
    assert (tuned["alpha"], tuned["ridge"]) == (best["alpha"], best["ridge"]) and tuned["cv_aiq"] == best["cv_aiq"]
    assert tuned["inner_points"]   # the inner cut at the chosen setting, for the honest operating points
    single = rb.tune(ctx, lambda message: None, alphas=(0.5,), ridges=(1.0,), folds=1)
    assert "inner_aiq" in single["grid"][0] and "cv_aiq" not in single


def test_the_routing_run_reports_the_dial_and_energy_frontiers_beside_the_cost_one(tmp_path):
    """`--frontiers`: the same run's JSON carries the cost/quality dial's frontier and the
    accuracy-energy frontier (ASSUMED energy from the invented models' parameter counts), with the
    run's own alpha and ridge, and the summary names both."""
    data_dir = make_dir(tmp_path, 300, seed=3, prefix="f", name="data")
    out_path = tmp_path / "out.json"
    from benchmarks import frontiers as fr

    rc = rb.main(["--data", str(data_dir), "--pool", ",".join(POOL), "--seeds", "1", "--alpha", "0.1",
                  "--ridge", "1.0", "--policies", "random", "--features", "bias,shape", "--learn", "quality",
                  "--frontiers", "--cache", str(tmp_path / "cache"), "--json", str(out_path), "--quiet"])
    assert rc == 0
    out = json.loads(out_path.read_text())
    frontiers = out["frontiers"]
    assert frontiers["config"]["alpha"] == 0.1 and frontiers["config"]["ridge"] == 1.0
    dial = out["summary"]["dial_frontier"]
    assert set(dial) == {str(d) for d in fr.DIAL_GRID}
    # the quality end of the dial spends more per question than the cost end
    assert dial["0.0"][1] > dial["1.0"][1]
    energy = frontiers["energy_frontier"]
    assert energy["pool"] == list(POOL) and "ASSUMED" in energy["note"]
    assert {p["w"] for p in energy["points"]} and out["summary"]["energy_frontier"]["best_single"] in POOL
    joules = [p["joules"]["mean"] for p in energy["points"]]
    assert joules[-1] < joules[0]   # a heavy energy weight uses less energy than none
    # declared figures (a models.csv-style file) replace the assumed ones; the pool follows the file
    declared = tmp_path / "energy.csv"
    declared.write_text("model,prompt_j_per_token,completion_j_per_token\nsmall,0.001,0.004\nbig,0.9,3.0\n")
    own = fr.frontiers(str(data_dir), POOL, "bias,shape", 1, 0.1, 1.0, str(tmp_path / "cache"), lambda m: None,
                       only="energy", energy_csv=str(declared))["energy_frontier"]
    assert own["pool"] == ["small", "big"] and own["note"].startswith("DECLARED")
    assert own["energy_j"]["big"]["completion_j_per_token"] == 3.0
    with pytest.raises(ValueError, match="no energy figure in .* for mid"):
        fr.frontiers(str(data_dir), POOL, "bias,shape", 1, 0.1, 1.0, str(tmp_path / "cache"), lambda m: None,
                     only="energy", energy_csv=str(declared), energy_pool=["small", "mid"])
