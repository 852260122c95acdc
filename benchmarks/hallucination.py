"""How well does the hallucination plugin tell supported from unsupported answers?

There is no public grounded-QA set in ../shared/data, so the benchmark builds its labelled cases
itself (``--build FILE``, written outside the repository; nothing of it is committed):

* **exam** cases, from the MMLU-Pro questions (``routing/mmlu_pro/questions.jsonl.gz``): the context
  is the question followed by "The correct answer is: <correct option>."; the *supported* answer is
  "The correct answer is <correct option>."; the *unsupported* one names another option of the same
  question instead (kind ``exam_wrong_option``). Options are often close paraphrases, numbers or
  names, so this is hard.
* **record** cases, from the synthetic PII sentences (``pii/presidio_synth_dev.json``): the context
  is the sentence; the *supported* answer restates it ("According to the record, <sentence>"); the
  *unsupported* ones replace one labelled value (a person, place, organization, date, age, title,
  address) with the value of the same type from another sentence (``record_swapped_<TYPE>``), or
  negate the sentence's first auxiliary verb (``record_negated``: the same words, the opposite
  meaning; embedding similarity is expected to miss most of these).

Every case has a ``split``: ``dev`` (40 %, by a hash of its source id) or ``test``. ``--tune``
chooses the similarity threshold (best F1) on dev only and reports test at the plugin's default
threshold and at the dev-tuned one. The plugin's default (0.6) was set before this set existed,
for answers that paraphrase their sources; it was not tuned here. The answers built here restate
their context almost verbatim, which favours a much higher threshold than real, paraphrasing
answers would tolerate: read the dev-tuned figure as an upper bound for verbatim answers.

A case counts as *flagged* when the checker finds at least one unsupported claim in its answer; the
positive class is "unsupported". Reported: precision, recall, false-positive rate, per-kind flag
rates, checker time per case.

    python -m benchmarks.hallucination --build ~/.cache/sigroute/hallucination.jsonl
    python -m benchmarks.hallucination --data ~/.cache/sigroute/hallucination.jsonl [--tune] [--json PATH]

Last line printed = summary: ``precision``, ``recall``, ``n`` (test split, default threshold),
plus ``false_positive_rate``, ``by_kind`` and the dev-tuned figures.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.loadgen import machine_info
from benchmarks.report import emit

DATA = Path("../shared/data")
SWAP_TYPES = ("PERSON", "GPE", "ORGANIZATION", "DATE_TIME", "AGE", "TITLE", "STREET_ADDRESS", "NRP")
_AUX = re.compile(r"\b(is|are|was|were|has|have|had|will|can|does|did)\b")


def _split(source_id: str) -> str:
    return "dev" if int(hashlib.sha256(source_id.encode()).hexdigest(), 16) % 100 < 40 else "test"


def build_cases(data_dir: Path, seed: int = 0, exam_questions: int = 600) -> list[dict]:
    rng = random.Random(seed)
    cases: list[dict] = []
    with gzip.open(data_dir / "routing" / "mmlu_pro" / "questions.jsonl.gz", "rt", encoding="utf-8") as f:
        questions = [json.loads(line) for line in f]
    rng.shuffle(questions)
    taken = 0
    for q in questions:
        options = q.get("options") or []
        letter = q.get("answer")
        if not options or not isinstance(letter, str) or len(options) < 2:
            continue
        index = ord(letter) - ord("A")
        if not 0 <= index < len(options):
            continue
        correct = str(options[index]).strip()
        wrong = [str(o).strip() for i, o in enumerate(options) if i != index and str(o).strip() != correct]
        if not correct or not wrong:
            continue
        source = f"exam:{q['question_id']}"
        context = f"{q['question'].strip()}\nThe correct answer is: {correct}."
        split = _split(source)
        cases.append({"id": f"{source}:supported", "source": source, "split": split, "kind": "exam_correct",
                      "context": context, "answer": f"The correct answer is {correct}.", "supported": True})
        cases.append({"id": f"{source}:wrong", "source": source, "split": split, "kind": "exam_wrong_option",
                      "context": context, "answer": f"The correct answer is {rng.choice(wrong)}.", "supported": False})
        taken += 1
        if taken >= exam_questions:
            break

    records = json.loads((data_dir / "pii" / "presidio_synth_dev.json").read_text(encoding="utf-8"))
    values: dict[str, list[str]] = {}
    for r in records:
        for span in r.get("spans") or []:
            values.setdefault(span["entity_type"], []).append(span["entity_value"])
    for n, r in enumerate(records):
        text = r["full_text"].strip()
        if len(text.split()) < 8:
            continue
        source = f"record:{n}"
        split = _split(source)
        cases.append({"id": f"{source}:restated", "source": source, "split": split, "kind": "record_restated",
                      "context": text, "answer": f"According to the record, {text}", "supported": True})
        spans = [s for s in r.get("spans") or [] if s["entity_type"] in SWAP_TYPES]
        if spans:
            span = rng.choice(spans)
            others = [v for v in values.get(span["entity_type"], []) if v.casefold() != span["entity_value"].casefold()
                      and v.casefold() not in text.casefold()]
            if others:
                swapped = text[:span["start_position"]] + rng.choice(others) + text[span["end_position"]:]
                cases.append({"id": f"{source}:swapped", "source": source, "split": split,
                              "kind": f"record_swapped_{span['entity_type']}", "context": text,
                              "answer": f"According to the record, {swapped}", "supported": False})
        m = _AUX.search(text)
        if m:
            negated = text[:m.end()] + " not" + text[m.end():]
            cases.append({"id": f"{source}:negated", "source": source, "split": split, "kind": "record_negated",
                          "context": text, "answer": f"According to the record, {negated}", "supported": False})
    return cases


async def score_cases(cases: list[dict], thresholds: list[float]) -> dict[float, list[bool]]:
    """For each threshold, whether each case is flagged (the embeddings are computed once)."""
    from sigroute.plugins.hallucination import GroundingChecker
    from sigroute.policies.schema import EncoderSpec, HallucinationPlugin
    from sigroute.signals.encoder import RequestEmbedder, shared_encoder

    spec = EncoderSpec()
    encoder = shared_encoder(spec.model, device=spec.device, max_tokens=spec.max_tokens,
                             backend=spec.backend, max_batch=spec.max_batch, max_wait_ms=spec.max_wait_ms)
    embedder = RequestEmbedder(encoder, spec.input, spec.long_input)
    defaults = HallucinationPlugin()
    memo: dict[str, np.ndarray] = {}

    async def embed(texts):
        missing = [t for t in dict.fromkeys(texts) if t not in memo]
        if missing:
            for t, v in zip(missing, await embedder.embed(missing)):
                memo[t] = v
        return np.stack([memo[t] for t in texts])

    flagged: dict[float, list[bool]] = {t: [] for t in thresholds}
    for case in cases:
        for t in thresholds:
            checker = GroundingChecker(t, defaults.entity_margin, defaults.min_claim_words)
            claims = await checker.check(case["answer"], case["context"], embed)
            flagged[t].append(any(not c.supported for c in claims))
    return flagged


def metrics(cases: list[dict], flags: list[bool]) -> dict:
    tp = sum(1 for c, f in zip(cases, flags) if f and not c["supported"])
    fp = sum(1 for c, f in zip(cases, flags) if f and c["supported"])
    pos = sum(1 for c in cases if not c["supported"])
    neg = len(cases) - pos
    by_kind: dict[str, list[int]] = {}
    for c, f in zip(cases, flags):
        by_kind.setdefault(c["kind"], [0, 0])
        by_kind[c["kind"]][0] += int(f)
        by_kind[c["kind"]][1] += 1
    return {"precision": round(tp / (tp + fp), 4) if tp + fp else None, "recall": round(tp / pos, 4) if pos else None,
            "false_positive_rate": round(fp / neg, 4) if neg else None, "n": len(cases), "unsupported": pos,
            "flag_rate_by_kind": {k: round(a / b, 4) for k, (a, b) in sorted(by_kind.items())}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hallucination", description=__doc__.split("\n")[0])
    parser.add_argument("--build", metavar="FILE", help="build the labelled cases from --data-dir into FILE and exit")
    parser.add_argument("--data-dir", default=str(DATA), help="the shared data directory (for --build)")
    parser.add_argument("--data", metavar="FILE", help="the labelled cases (JSON lines) to evaluate")
    parser.add_argument("--exam-questions", type=int, default=600)
    parser.add_argument("--tune", action="store_true", help="also choose the threshold on the dev split")
    parser.add_argument("--limit", type=int, help="evaluate only this many test cases (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the full result here")
    args = parser.parse_args(argv)

    if args.build:
        cases = build_cases(Path(args.data_dir), args.seed, args.exam_questions)
        out = Path(args.build).expanduser()
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")
        kinds = {}
        for c in cases:
            kinds[c["kind"]] = kinds.get(c["kind"], 0) + 1
        print(f"wrote {len(cases)} cases to {out}: {kinds}", file=sys.stderr)
        return 0
    if not args.data:
        parser.error("give --data FILE (build it first with --build FILE)")
    cases = [json.loads(line) for line in Path(args.data).expanduser().read_text(encoding="utf-8").splitlines() if line]
    from sigroute.policies.schema import HallucinationPlugin

    default = HallucinationPlugin().threshold
    test = [c for c in cases if c["split"] == "test"][:args.limit]
    dev = [c for c in cases if c["split"] == "dev"][:args.limit]
    result: dict = {"config": vars(args), "machine": machine_info()}
    tuned = None
    if args.tune:
        grid = [round(x, 2) for x in np.arange(0.3, 0.91, 0.05)]
        dev_flags = asyncio.run(score_cases(dev, grid))
        dev_metrics = {t: metrics(dev, f) for t, f in dev_flags.items()}
        # the threshold with the best F1 on dev
        def f1(m):
            p, r = m["precision"] or 0.0, m["recall"] or 0.0
            return 2 * p * r / (p + r) if p + r else 0.0
        tuned = max(grid, key=lambda t: f1(dev_metrics[t]))
        result["dev"] = {str(t): m for t, m in dev_metrics.items()}
    thresholds = sorted({default} | ({tuned} if tuned is not None else set()))
    started = time.perf_counter()
    test_flags = asyncio.run(score_cases(test, thresholds))
    per_case_ms = (time.perf_counter() - started) * 1000 / max(1, len(test) * len(thresholds))
    at_default = metrics(test, test_flags[default])
    summary = {"precision": at_default["precision"], "recall": at_default["recall"], "n": at_default["n"],
               "threshold": default, "false_positive_rate": at_default["false_positive_rate"],
               "flag_rate_by_kind": at_default["flag_rate_by_kind"], "checker_ms_per_case": round(per_case_ms, 2)}
    if tuned is not None:
        m = metrics(test, test_flags[tuned])
        summary["dev_tuned"] = {"threshold": tuned, "precision": m["precision"], "recall": m["recall"],
                                "false_positive_rate": m["false_positive_rate"]}
    result["summary"] = summary
    emit(result, args.json, log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
