"""A synthetic outcomes table, generated in code, for replay runs when no recorded data is at hand.

`synthetic_outcomes()` builds an `Outcomes` (the type `load_outcomes` returns, so the replay
simulator serves it as it serves real data) of invented multiple-choice questions and invented
per-model results. Nothing in it was measured: `sigroute demo --tour` uses it, and says so on
screen, when the recorded routing data (``../shared/data/routing``) is not there — a fresh clone
has none.

The questions come in two kinds, told apart by their shape (digits and a multiplication sign, or
only words), so that a contextual learner with the `shape` feature group can learn which model
suits which kind:

- arithmetic: "What is 47 × 23?" with ten numeric options;
- words: "Which word does not belong with the others: ...?" with four words, three from one group.

The three models (prices in USD per million tokens, like ``models.csv``) are

| model | input / output price | arithmetic | words |
|---|---|---|---|
| `synthetic-small` | 0.05 / 0.08 | 15 % | 80 % |
| `synthetic-medium` | 0.30 / 0.60 | 80 % | 50 % |
| `synthetic-large` | 1.25 / 5.00 | 85 % | 85 % |

so the best single model is `synthetic-large`, and a router that sends word questions to
`synthetic-small` and arithmetic to `synthetic-medium` is nearly as accurate for a small part of
its cost. Each
(question, model) result is drawn once from those rates with a fixed seed: the same call always
returns the same table.
"""

from __future__ import annotations

import random
from pathlib import Path

from sigroute.gateway.sim.replay import LETTERS, Outcomes, ReplayModel, ReplayQuestion

__all__ = ["SYNTHETIC_MODELS", "SYNTHETIC_ROOT", "synthetic_outcomes"]

SYNTHETIC_ROOT = Path("<synthetic>")  # `Outcomes.root` of the table: it lives in memory only

# name: (price in, price out, ttft ms, tokens/s, answer chars, accuracy on arithmetic, accuracy on words)
SYNTHETIC_MODELS: dict[str, tuple[float, float, float, float, int, float, float]] = {
    "synthetic-small": (0.05, 0.08, 120, 130, 700, 0.15, 0.80),
    "synthetic-medium": (0.30, 0.60, 250, 80, 500, 0.80, 0.50),
    "synthetic-large": (1.25, 5.00, 700, 60, 400, 0.85, 0.85),
}

_GROUPS = {
    "fruit": ("apple", "pear", "plum", "cherry", "mango", "peach", "apricot", "banana"),
    "tool": ("hammer", "chisel", "wrench", "pliers", "saw", "screwdriver", "drill", "file"),
    "colour": ("crimson", "violet", "amber", "teal", "indigo", "scarlet", "ochre", "magenta"),
    "animal": ("otter", "badger", "heron", "lynx", "falcon", "walrus", "beaver", "gecko"),
    "instrument": ("violin", "oboe", "trumpet", "cello", "harp", "flute", "clarinet", "banjo"),
}


def _arithmetic(rng: random.Random) -> tuple[str, tuple[str, ...], str]:
    a, b = rng.randint(12, 98), rng.randint(12, 98)
    right = a * b
    wrong: set[int] = set()
    while len(wrong) < 9:
        candidate = right + rng.choice((-1, 1)) * rng.randint(1, 60) * rng.choice((1, 10))
        if candidate > 0 and candidate != right:
            wrong.add(candidate)
    options = [right, *sorted(wrong)]
    rng.shuffle(options)
    return f"What is {a} × {b}?", tuple(str(o) for o in options), LETTERS[options.index(right)]


def _odd_one_out(rng: random.Random) -> tuple[str, tuple[str, ...], str]:
    group, other = rng.sample(sorted(_GROUPS), 2)
    words = rng.sample(_GROUPS[group], 3)
    odd = rng.choice(_GROUPS[other])
    options = [*words, odd]
    rng.shuffle(options)
    return ("Which word does not belong with the others?", tuple(options), LETTERS[options.index(odd)])


def synthetic_outcomes(n_questions: int = 1200, seed: int = 2026) -> Outcomes:
    """Invented questions (half arithmetic, half words) and invented results of `SYNTHETIC_MODELS`."""
    import numpy as np

    rng = random.Random(seed)
    questions: list[ReplayQuestion] = []
    seen: set[tuple[str, frozenset[str]]] = set()
    while len(questions) < n_questions:
        kind = "math" if len(questions) % 2 == 0 else "words"
        text, options, answer = (_arithmetic if kind == "math" else _odd_one_out)(rng)
        key = (text, frozenset(options) if kind == "words" else frozenset())
        if key in seen:  # the simulator could not tell such questions apart (same stem, same options)
            continue
        seen.add(key)
        questions.append(ReplayQuestion(len(questions), f"synthetic-{len(questions)}", kind, "synthetic",
                                        text, options, answer))
    names = list(SYNTHETIC_MODELS)
    correct = np.zeros((n_questions, len(names)), dtype=np.int8)
    chars = np.zeros((n_questions, len(names)), dtype=np.int32)
    for j, name in enumerate(names):
        *_, typical_chars, on_math, on_words = SYNTHETIC_MODELS[name]
        for i, q in enumerate(questions):
            correct[i, j] = int(rng.random() < (on_math if q.category == "math" else on_words))
            chars[i, j] = int(typical_chars * rng.uniform(0.7, 1.3))
    models = {name: ReplayModel(name=name, family="synthetic", params_b=None, active_params_b=None,
                                hosting="synthetic", price_in=spec[0], price_out=spec[1], ttft_ms=spec[2],
                                tokens_per_s=spec[3])
              for name, spec in SYNTHETIC_MODELS.items()}
    return Outcomes(root=SYNTHETIC_ROOT, models=models, questions=tuple(questions), correct=correct,
                    output_chars=chars, chars_recorded=np.ones_like(correct, dtype=bool))
