"""The trade-off dial's frontier and the accuracy–energy frontier, on the real recorded outcomes.

    python -m benchmarks.frontiers --json results/frontiers.json

Both use the routing benchmark's data, split, features, warm start and stream (`benchmarks.routing`:
the held-out TEST part of MMLU-Pro streamed in one random order per seed, bandit feedback from the
recorded correctness) with the gateway's `learn: quality` LinUCB (`bandits.contextual.known_terms`
scores the known terms at selection). Hyper-parameters are fixed (``--alpha 0.1 --ridge 30``,
`policies/examples/learning.yaml`'s, which `benchmarks.routing` chose by cross-validation inside the
training split), not tuned here; `benchmarks.routing --frontiers` passes its own.

**Dial frontier (one learner).** Every stream question carries a cost/quality dial d from
`DIAL_GRID` (question t of the stream gets ``DIAL_GRID[t % len]``), mapped to the cost weight as the
gateway does (`bandits.tradeoff.cost_weight`, quality weight 1). ONE learner per seed serves all
of them: it learns correctness only, whatever the dial, and the dial changes only the cost weight
of that question's known cost term. Reported per dial: accuracy and mean cost per question of the
questions that carried it (and, as a check, the same for a dedicated learner per dial that sees
every question at that dial).

**Energy frontier.** The models' energy is ASSUMED, not measured: ``models.csv`` has no energy
column, so it is derived from each model's active parameters N (``active_params_b``) by the
rule of thumb that a transformer's forward pass costs ≈ 2·N FLOPs per token (Kaplan et al. 2020,
"Scaling Laws for Neural Language Models", §2.1), at an ASSUMED effective 4·10¹¹ FLOP per joule
for prompt tokens (≈ 30 % of an H100 SXM's 989 dense BF16 TFLOPS at its 700 W board power, NVIDIA's
datasheet) and 5× more joules per completion token (ASSUMED: decoding is memory-bound). So
``prompt_j_per_token = 2·N·10⁹ / 4·10¹¹ = 0.005·N_b`` and ``completion_j_per_token = 0.025·N_b``
(N_b in billions). Only the ratios between models move the router (shares are relative to the
hungriest model); the constants scale the joules reported. Models without a parameter count
(the hosted gemini models) cannot be given a figure and are left out of the energy pool. The reward
is ``{quality: 1, energy: w}`` for w in `ENERGY_W_GRID`; reported per w: accuracy and joules, with
every single model's point and the accuracy reached at 10/30/50 % of the most accurate single
model's energy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from benchmarks import routing
from benchmarks.report import emit

DIAL_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
ENERGY_W_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0)
FLOP_PER_J_PROMPT = 4e11        # ASSUMED (see the module docstring)
COMPLETION_ENERGY_FACTOR = 5.0  # ASSUMED: a completion token costs this many prompt tokens' joules
ENERGY_BUDGETS = (0.10, 0.30, 0.50)


# ------------------------------------------------------------------------------------------------
# energy figures


def assumed_energy(models_table: Sequence[dict], pool: Sequence[str]) -> dict[str, dict | None]:
    """Each pool model's ASSUMED `energy:` declaration from its active parameters (None: unknown)."""
    rows = {r["model"]: r for r in models_table}
    out: dict[str, dict | None] = {}
    for m in pool:
        n_b = (rows.get(m) or {}).get("active_params_b") or ""
        if not str(n_b).strip():
            out[m] = None
            continue
        prompt = 2.0 * float(n_b) * 1e9 / FLOP_PER_J_PROMPT
        out[m] = {"prompt_j_per_token": prompt, "completion_j_per_token": prompt * COMPLETION_ENERGY_FACTOR}
    return out


ENERGY_CSV_COLUMNS = ("model", "prompt_j_per_token", "completion_j_per_token", "per_request_j")


def read_energy_csv(path: str | Path) -> dict[str, dict]:
    """Declared energy per model from a models.csv-style file: a header naming `model` and any of
    prompt_j_per_token, completion_j_per_token, per_request_j (joules; empty = 0), one row per
    model. Each row is validated as a model's `energy:` declaration; a bad row raises ValueError
    naming the file, line and column."""
    import csv

    from pydantic import ValidationError

    from sigroute.policies.schema import Energy

    path = Path(path)
    out: dict[str, dict] = {}
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        if "model" not in header or not set(header) & set(ENERGY_CSV_COLUMNS[1:]):
            raise ValueError(f"{path}:1: the header must name 'model' and at least one of "
                             f"{', '.join(ENERGY_CSV_COLUMNS[1:])}")
        unknown = [c for c in header if c not in ENERGY_CSV_COLUMNS]
        if unknown:
            raise ValueError(f"{path}:1: unknown column(s) {', '.join(unknown)}; "
                             f"expected {', '.join(ENERGY_CSV_COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            model = (row.get("model") or "").strip()
            if not model:
                raise ValueError(f"{path}:{line}: the row names no model")
            if model in out:
                raise ValueError(f"{path}:{line}: model '{model}' is declared twice")
            values = {}
            for column in ENERGY_CSV_COLUMNS[1:]:
                text = (row.get(column) or "").strip()
                try:
                    values[column] = float(text) if text else 0.0
                except ValueError:
                    raise ValueError(f"{path}:{line}: column '{column}' of '{model}' is not a number: "
                                     f"{text!r}") from None
            try:
                out[model] = Energy(**values).model_dump()
            except ValidationError as exc:
                problem = "; ".join(e["msg"] for e in exc.errors())
                raise ValueError(f"{path}:{line}: model '{model}': {problem}") from None
    return out


def energy_matrix(table: routing.Table, energy: dict[str, dict]) -> np.ndarray:
    """(n, m) joules per question and model."""
    pin = np.array([energy[m]["prompt_j_per_token"] for m in table.models])
    pout = np.array([energy[m]["completion_j_per_token"] for m in table.models])
    per_request = np.array([energy[m].get("per_request_j", 0.0) for m in table.models])
    return (table.prompt_tokens[:, None] * pin[None, :] + table.completion_tokens * pout[None, :]
            + per_request[None, :])


# ------------------------------------------------------------------------------------------------
# learners


class WeightedQualityLearner(routing.Learner):
    """`routing.Learner` with ``learn: quality`` whose known terms use a reward spec chosen per
    question (the dial's cost weight) and the models' energy declarations."""

    def __init__(self, *args, energies: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        from sigroute.policies.schema import Energy

        self.energies = {m: (Energy(**e) if e else None) for m, e in (energies or {}).items()}
        self.spec_now = self.reward.spec

    def known(self, prompt_tokens: float | None):
        from sigroute.bandits.contextual import known_terms

        profiles = {m: self.estimator.profile(m)[1:] for m in self.models}
        return known_terms(self.spec_now, self.models, self.prices, prompt_tokens, profiles, self.energies)


def stream_with_specs(learner: WeightedQualityLearner, X: np.ndarray, order: np.ndarray, step,
                      prompt_tokens: np.ndarray, specs: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stream `order` through `learner`, question t scored under `specs[t]`; it learns correctness.
    Returns (chosen model index, correct, cost) per step."""
    col = {m: j for j, m in enumerate(learner.models)}
    chosen, correct, cost = (np.empty(len(order), dtype=np.int64), np.empty(len(order)), np.empty(len(order)))
    for t, i in enumerate(order):
        learner.spec_now = specs[t]
        model = learner.choose(X[i], float(prompt_tokens[i]))
        outcome = step(int(i), model)
        learner.learn(model, X[i], outcome.correct, outcome)
        chosen[t], correct[t], cost[t] = col[model], outcome.correct, outcome.cost
    return chosen, correct, cost


def warm_learner(split: routing.Split, X_train, dim: int, spec, seed: int, alpha: float, ridge: float,
                 energies: dict | None = None) -> WeightedQualityLearner:
    """A `learn: quality` LinUCB learner scored under `spec`, warm-started on the training split."""
    table = split.stream
    rm = routing.RewardModel(table.models, table.prices, 0.0)
    rm.spec = spec
    policy = routing.PolicySpec("linucb", "linucb", {"alpha": alpha, "learn": "quality"})
    learner = WeightedQualityLearner(policy, dim, table.models, table.prices, seed=seed,
                                     ridge=ridge, reward=rm, energies=energies)
    learner.warm_start(X_train, None, split.train)
    return learner


def dial_frontier(split: routing.Split, X_train, X_stream, seeds: int, alpha: float, ridge: float,
                  log) -> dict:
    """Accuracy and cost per dial value: one learner for every dial, and a dedicated one per dial."""
    from sigroute.bandits.tradeoff import cost_weight
    from sigroute.policies.schema import RewardSpec

    stream = split.stream
    step = routing.TableStep(stream)
    specs = {d: RewardSpec(quality=1.0, cost=cost_weight(1.0, d)) for d in DIAL_GRID}
    shared: dict[float, dict[str, list]] = {d: {"acc": [], "cost": []} for d in DIAL_GRID}
    dedicated: dict[float, dict[str, list]] = {d: {"acc": [], "cost": []} for d in DIAL_GRID}
    for s in range(seeds):
        order = np.random.default_rng(s).permutation(stream.n)
        dials = [DIAL_GRID[t % len(DIAL_GRID)] for t in range(len(order))]
        learner = warm_learner(split, X_train, X_stream.shape[1], specs[0.0], s, alpha, ridge)
        chosen, correct, cost = stream_with_specs(learner, X_stream, order, step, stream.prompt_tokens,
                                                  [specs[d] for d in dials])
        dial_of = np.array(dials)
        for d in DIAL_GRID:
            rows = dial_of == d
            shared[d]["acc"].append(float(correct[rows].mean()))
            shared[d]["cost"].append(float(cost[rows].mean()))
        for d in DIAL_GRID:
            own = warm_learner(split, X_train, X_stream.shape[1], specs[d], s, alpha, ridge)
            _, c_correct, c_cost = stream_with_specs(own, X_stream, order, step, stream.prompt_tokens,
                                                     [specs[d]] * len(order))
            dedicated[d]["acc"].append(float(c_correct.mean()))
            dedicated[d]["cost"].append(float(c_cost.mean()))
        log(f"  dial frontier seed {s} done")
    points = []
    for d in DIAL_GRID:
        points.append({"dial": d, "cost_weight": round(specs[d].cost, 6),
                       "one_learner": {"accuracy": routing._stats(shared[d]["acc"]),
                                       "cost_per_question_usd": routing._stats(shared[d]["cost"])},
                       "dedicated_learner": {"accuracy": routing._stats(dedicated[d]["acc"]),
                                             "cost_per_question_usd": routing._stats(dedicated[d]["cost"])}})
    best = int(np.argmax(stream.correct.mean(axis=0)))
    return {"points": points,
            "best_single": {"model": stream.models[best], "accuracy": round(float(stream.correct[:, best].mean()), 6),
                            "cost_per_question_usd": round(float(stream.cost[:, best].mean()), 8)}}


def energy_frontier(split: routing.Split, X_train, X_stream, seeds: int, alpha: float, ridge: float,
                    energy: dict[str, dict], log) -> dict:
    """Accuracy and joules per energy weight w of reward {quality: 1, energy: w}."""
    from sigroute.policies.schema import RewardSpec

    stream = split.stream
    step = routing.TableStep(stream)
    E = energy_matrix(stream, energy)
    singles = [{"model": m, "accuracy": round(float(stream.correct[:, j].mean()), 6),
                "joules": round(float(E[:, j].sum()), 1), "cost_usd": round(float(stream.cost[:, j].sum()), 6)}
               for j, m in enumerate(stream.models)]
    points = []
    for w in ENERGY_W_GRID:
        spec = RewardSpec(quality=1.0, energy=w)
        accs, joules, costs = [], [], []
        for s in range(seeds):
            order = np.random.default_rng(s).permutation(stream.n)
            learner = warm_learner(split, X_train, X_stream.shape[1], spec, s, alpha, ridge, energy)
            chosen, correct, cost = stream_with_specs(learner, X_stream, order, step, stream.prompt_tokens,
                                                      [spec] * len(order))
            accs.append(float(correct.mean()))
            joules.append(float(E[order, chosen].sum()))
            costs.append(float(cost.sum()))
        points.append({"w": w, "accuracy": routing._stats(accs), "joules": routing._stats(joules),
                       "cost_usd": routing._stats(costs)})
        log(f"  energy w={w}: accuracy {points[-1]['accuracy']['mean']:.4f}, "
            f"{points[-1]['joules']['mean'] / 1000:.1f} kJ")
    best = max(singles, key=lambda r: r["accuracy"])
    operating = {}
    for b in ENERGY_BUDGETS:
        ok = [p for p in points if p["joules"]["mean"] <= b * best["joules"] + 1e-9]
        operating[f"{int(round(b * 100))}pct"] = (round(max(p["accuracy"]["mean"] for p in ok) / best["accuracy"], 4)
                                                  if ok else None)
    return {"points": points, "single_models": singles, "best_single": best,
            "accuracy_vs_best_at_energy_budget": operating}


# ------------------------------------------------------------------------------------------------
# the command


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.frontiers", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=routing.DEFAULT_DATA)
    p.add_argument("--pool", default=",".join(routing.DEFAULT_POOL), help="the dial frontier's pool")
    p.add_argument("--energy-pool", default=None,
                   help="the energy frontier's pool (default: the pool's models with a parameter count in models.csv)")
    p.add_argument("--features", default=routing.DEFAULT_FEATURES)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--alpha", type=float, default=0.1, help="LinUCB alpha (default: learning.yaml's, chosen by "
                                                               "benchmarks.routing's cross-validation)")
    p.add_argument("--ridge", type=float, default=30.0, help="ridge λ (default: learning.yaml's)")
    p.add_argument("--only", choices=("dial", "energy"), default=None)
    p.add_argument("--energy-csv", default=None,
                   help="declared energy per model (columns: model, prompt_j_per_token, completion_j_per_token, "
                        "per_request_j) instead of the figures ASSUMED from parameter counts")
    p.add_argument("--cache", default=routing.DEFAULT_CACHE)
    p.add_argument("--json", default=None)
    p.add_argument("--quiet", action="store_true")
    return p.parse_args(argv)


def prepare(data_dir: str, pool: Sequence[str], features: str, cache: str | None, log):
    """The routing benchmark's split and context matrices (training part cross-fitted as there)."""
    from sigroute.signals.encoder import shared_encoder
    from sigroute.signals.learned import SignalResources
    from sigroute.signals.training import embed

    counter, tokenizer = routing.prompt_token_counter()
    data = routing.load_table(data_dir, pool, count_tokens=counter, tokenizer_name=tokenizer)
    split = routing.make_split(data, None)
    encoder = shared_encoder()
    cache = str(Path(cache).expanduser()) if cache else None
    E_train, E_stream = embed(encoder, split.train.texts, cache), embed(encoder, split.stream.texts, cache)
    bank = routing.FeatureBank(SignalResources(encoder=encoder))
    groups = routing.parse_features(features)
    if split.train.files.get("mmlu_pro/questions.jsonl.gz") in routing.head_training_sha256s():
        _, mmlu = routing._resolve_dir(data_dir)
        shipped = {name: bank.block(name, split.train.texts, E_train, split.train.prompt_tokens, "train")
                   for name in ("domain", "difficulty")}
        for name, block in routing.cross_fitted_head_blocks(split.train, mmlu / "questions.jsonl.gz",
                                                            mmlu / "correctness.csv.gz", encoder, cache,
                                                            shipped, log).items():
            bank.override("train", name, block)
    X_train = bank.matrix(groups, split.train.texts, E_train, split.train.prompt_tokens, "train")
    X_stream = bank.matrix(groups, split.stream.texts, E_stream, split.stream.prompt_tokens, "stream")
    return data, split, X_train, X_stream


def frontiers(data_dir: str, pool: Sequence[str], features: str, seeds: int, alpha: float, ridge: float,
              cache: str | None, log, *, energy_pool: Sequence[str] | None = None, only: str | None = None,
              energy_csv: str | None = None) -> dict:
    """Both frontiers (or `only` one): the result object of this command, without its elapsed time.
    The energy figures are the declared ones of `energy_csv` (`read_energy_csv`) when given, else
    ASSUMED from parameter counts. Raises ValueError when an energy-pool model has no figure."""
    out: dict[str, Any] = {"config": {"features": features, "alpha": alpha, "ridge": ridge, "seeds": seeds,
                                      "dial_grid": DIAL_GRID, "energy_w_grid": ENERGY_W_GRID},
                           "summary": {}}
    if only in (None, "dial"):
        data, split, X_train, X_stream = prepare(data_dir, pool, features, cache, log)
        log(f"dial frontier: stream {split.stream.n}, pool {list(pool)}")
        out["dial_frontier"] = dial_frontier(split, X_train, X_stream, seeds, alpha, ridge, log)
        out["summary"]["dial"] = {
            str(p["dial"]): [p["one_learner"]["accuracy"]["mean"], p["one_learner"]["cost_per_question_usd"]["mean"]]
            for p in out["dial_frontier"]["points"]}
    if only in (None, "energy"):
        if energy_csv:
            figures = read_energy_csv(energy_csv)
            where = f"in {energy_csv}"
            note = f"DECLARED figures from {energy_csv}, not measured by this benchmark"
        else:
            models_table = routing.read_models(routing._resolve_dir(data_dir)[0] / "models.csv")
            figures = assumed_energy(models_table, pool if not energy_pool else energy_pool)
            where = "in models.csv (no parameter count)"
            note = "ASSUMED figures from active parameters (module docstring), not measured"
        energy_pool = list(energy_pool) if energy_pool else [m for m in pool if figures.get(m)]
        missing = [m for m in energy_pool if not figures.get(m)]
        if missing:
            raise ValueError(f"no energy figure {where} for {', '.join(missing)}")
        if len(energy_pool) < 2:
            raise ValueError(f"the energy frontier needs two models with an energy figure {where}, "
                             f"found {energy_pool or 'none'}")
        energy = {m: figures[m] for m in energy_pool}
        data, split, X_train, X_stream = prepare(data_dir, energy_pool, features, cache, log)
        log(f"energy frontier: stream {split.stream.n}, pool {energy_pool}")
        result = energy_frontier(split, X_train, X_stream, seeds, alpha, ridge, energy, log)
        out["energy_frontier"] = {"energy_j": energy, "pool": energy_pool, "note": note, **result}
        out["summary"]["energy"] = {"accuracy_vs_best_at_energy_budget": result["accuracy_vs_best_at_energy_budget"],
                                    "best_single": result["best_single"]["model"]}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    log = (lambda msg: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.perf_counter()
    pool = [m.strip() for m in args.pool.split(",") if m.strip()]
    energy_pool = [m.strip() for m in args.energy_pool.split(",") if m.strip()] if args.energy_pool else None
    try:
        out = frontiers(args.data, pool, args.features, args.seeds, args.alpha, args.ridge, args.cache, log,
                        energy_pool=energy_pool, only=args.only, energy_csv=args.energy_csv)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out["elapsed_s"] = round(time.perf_counter() - started, 1)
    emit(routing._jsonable(out), args.json, log)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
