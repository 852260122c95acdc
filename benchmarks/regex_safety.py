"""Can a policy regex stall the gateway? Python's `re` against what sigroute runs now (RE2 over a
bounded scan), on pathological patterns and adversarial text, and on ordinary keyword regexes.

Policy regexes (keyword terms with `regex: true`, header/metadata `pattern`) used to run with
Python's backtracking `re`, on the event loop, against bodies of up to 4 MiB. They now run on RE2
(`policies/regex.py` translates Python's syntax, `signals/patterns.py` searches) and read at most
`scan_chars` characters of a text (default 32,768: its first and last 16,384).

**Pathological patterns.** Each pattern meets the text that makes backtracking explode, at rising
sizes (default 1 KiB, 16 KiB, 256 KiB, 4 MiB of ASCII characters):

* `python_re_s` — one `re.search` (with `re.IGNORECASE`, as a keyword term used it), run in a child
  process killed after `--re-timeout` seconds: a number, or `{"killed_after_s": N}` (reported as
  "≥ N s (killed)"); once killed at a size, larger sizes are not run and are reported killed too;
* `re2_full_ms` — RE2 searching the whole text (no bound): the engine's own linear cost;
* `sigroute_ms` — `PolicyRegex(pattern).search(text)`: what one regex signal costs a request now
  (UTF-8 encoding of the scanned windows included).

Times are medians over repeats (at least 3, or 1 for a single run over 1 s). The rows include
RE2's own worst case, a wide counted repeat (`a.{0,50}c`, `[ab]*a[ab]{20}c`) on random `ab` text:
its automaton is rebuilt almost every byte and RE2 drops to ~2 MB/s, slower than `re` on
the same text; the bounded scan is what keeps that case cheap.

**Ordinary keyword regexes.** Five typical keyword regexes (word lists with `\\b`, an error code, a
ticket id, an invoice number, a greeting) on typical prompts (150-2,000 characters): per call,
Python `re` (compiled with `re.IGNORECASE`, as before) against `PolicyRegex.search`, interleaved in
the same run; the ratio is sigroute / re. The same five as the terms of one keyword signal
(`Keyword.found`, which encodes the text once for all its terms) against that signal's old code
path (each term `re.search`ed). Also each of them on a 4 MiB body of ordinary prose: the
per-regex-signal cost of the largest request the gateway accepts.

Targets: no policy regex takes more than a few ms on a 4 MiB body (`max_sigroute_ms_largest`, over
every pattern but RE2's own worst case, which is reported apart); ordinary prompts no slower than
before by more than ~10 % (`keyword_signal_ratio` ≤ 1.10: the keyword signal is what a request
pays; `ordinary_ratio_vs_re` is the same per single regex, where RE2's fixed ~0.7 us per call
loses to `re`'s sub-microsecond literal-prefix and anchored fast paths on short prompts).

    python -m benchmarks.regex_safety [--sizes 1024,16384,262144,4194304] [--re-timeout 5] [--json PATH]

The last line printed is the summary.
"""

from __future__ import annotations

import argparse
import inspect
import random
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

from benchmarks.loadgen import machine_info
from benchmarks.report import emit
from sigroute.policies.regex import DEFAULT_SCAN_CHARS, compile_regex
from sigroute.signals.patterns import PolicyRegex

# name: (pattern, text kind, what it shows)
PATHOLOGICAL: dict[str, tuple[str, str, str]] = {
    "nested_plus": (r"(a+)+$", "a_then_bang", "nested quantifier"),
    "nested_plus_pair": (r"(x+x+)+y", "x_only", "nested quantifier, two overlapping parts"),
    "alternation_overlap": (r"(a|aa)+$", "a_then_bang", "alternation blow-up"),
    "alternation_optional": (r"(a|a?)+b", "a_then_bang", "alternation with an empty branch"),
    "star_group_count": (r"(.*a){20}", "b_with_19_a", "counted group of .*"),
    "words_to_end": (r"(\w+\s?)+$", "a_then_bang", "word list to the end (a realistic one)"),
    "owasp_name": (r"^(([a-z])+.)+[A-Z]([a-z])+$", "a_then_bang", "OWASP's ReDoS example"),
    "email_validation": (r"^([a-zA-Z0-9])(([\-.]|[_]+)?([a-zA-Z0-9]+))*(@){1}[a-z0-9]+[.]{1}(([a-z]{2,3})|"
                         r"([a-z]{2,3}[.]{1}[a-z]{2,3}))$", "a_then_bang", "e-mail validation regex"),
}
# RE2's own worst case: not exponential for `re`, but the DFA thrashes (see the docstring).
RE2_WORST: dict[str, tuple[str, str, str]] = {
    "wide_counted_window": (r"a.{0,50}c", "random_ab", "RE2's worst: a wide counted repeat"),
    "wide_counted_class": (r"[ab]*a[ab]{20}c", "random_ab", "RE2's worst: 20 positions after an a"),
}

PROMPTS = [
    "How do I change the shipping address of an order that has not shipped yet?",
    "Our nightly export failed again with error code 503 after the upgrade to v2.10; the job log says the "
    "upstream closed the connection. Is this the same as JIRA-4411 or something new? Please advise asap.",
    "hello!",
    ("Hi team, could you please review the attached quarterly report and let me know whether the numbers for "
     "the EMEA region look right? The deadline is Friday but nothing is on fire. Invoice #20931 is attached "
     "for reference. Thanks, Ana. ") * 8,
]
ORDINARY = {
    "urgent_words": r"\b(urgent|asap|immediately)\b",
    "error_code": r"error\s+code\s+\d{3}",
    "ticket_id": r"\bJIRA-\d+\b",
    "invoice_number": r"invoice\s*#?\d+",
    "greeting_only": r"^\s*(hi|hello|hey|thanks|thank you)\W*$",
}
PROSE = ("The quarterly report covers revenue, churn and the support backlog; the EMEA numbers were revised "
         "after the audit. Café owners in Zürich and 東京 asked for the export again. ")


def build_text(kind: str, n: int) -> str:
    """The adversarial (or ordinary) text of `kind`, exactly `n` characters long."""
    if kind == "a_then_bang":
        return "a" * (n - 1) + "!"
    if kind == "x_only":
        return "x" * n
    if kind == "b_with_19_a":
        return "a" * 19 + "b" * (n - 19)
    if kind == "random_ab":
        rng = random.Random(n)
        return "".join(rng.choice("ab") for _ in range(n))
    if kind == "prose":
        return (PROSE * (n // len(PROSE) + 1))[:n]
    raise ValueError(kind)


_RE_CHILD = """
import random, re, time
PROSE = {prose!r}
{builder}
text = build_text({kind!r}, {n})
rx = re.compile({pattern!r}, re.IGNORECASE)
print("ready", flush=True)
t = time.perf_counter()
rx.search(text)
print(time.perf_counter() - t, flush=True)
"""


def python_re_seconds(pattern: str, kind: str, n: int, timeout: float) -> float | None:
    """One `re.search` in a child process; None if it was killed after `timeout` seconds."""
    # the child is plain Python: nothing of sigroute is imported, so it starts in milliseconds
    code = _RE_CHILD.format(prose=PROSE, builder=inspect.getsource(build_text), kind=kind, n=n, pattern=pattern)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if child.stdout.readline().strip() != "ready":  # the text is built: the search starts now
            raise RuntimeError(child.stderr.read())
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        if child.returncode != 0:
            raise RuntimeError(child.stderr.read())
        seconds = float(child.stdout.read().strip())
        return None if seconds > timeout else seconds
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
        child.stderr.close()


def median_seconds(fn: Callable[[], Any], budget_s: float = 0.3, min_runs: int = 3, max_runs: int = 200) -> float:
    """Median wall time of `fn` over repeated calls (one call if a single call exceeds 1 s)."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_runs:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if times[0] > 1.0 or (len(times) >= min_runs and time.perf_counter() - start > budget_s):
            break
    return statistics.median(times)


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t) / calls * 1e6


def pathological_rows(sizes: list[int], re_timeout: float, log: Callable[[str], Any]) -> list[dict[str, Any]]:
    rows = []
    for group, table in (("backtracking", PATHOLOGICAL), ("re2_worst", RE2_WORST)):
        for name, (pattern, kind, what) in table.items():
            program = compile_regex(pattern, case_sensitive=False)
            regex = PolicyRegex(pattern, case_sensitive=False)
            killed_at = None
            for n in sizes:
                text = build_text(kind, n)
                data = text.encode()
                if killed_at is None:
                    seconds = python_re_seconds(pattern, kind, n, re_timeout)
                    if seconds is None:
                        killed_at = n
                python_re: Any = {"killed_after_s": re_timeout} if killed_at is not None else round(seconds, 6)
                re2_full = median_seconds(lambda: program.search(data)) * 1e3
                ours = median_seconds(lambda: regex.search(text)) * 1e3
                row = {"group": group, "name": name, "pattern": pattern, "what": what, "text": kind, "chars": n,
                       "python_re_s": python_re, "re2_full_ms": round(re2_full, 4), "sigroute_ms": round(ours, 4)}
                rows.append(row)
                shown = f"≥ {re_timeout:g} s (killed)" if killed_at is not None else f"{seconds:.4f} s"
                log(f"{name:22} {n:>8} chars  re {shown:>18}  re2 full {re2_full:9.3f} ms  sigroute {ours:7.3f} ms")
    return rows


def ordinary_rows(calls: int, rounds: int, log: Callable[[str], Any]) -> tuple[list[dict[str, Any]], list[float]]:
    """Per-call time of each ordinary regex on each prompt, re vs sigroute, interleaved rounds."""
    rows, ratios = [], []
    for name, pattern in ORDINARY.items():
        python = re.compile(pattern, re.IGNORECASE)
        ours = PolicyRegex(pattern, case_sensitive=False)
        for i, prompt in enumerate(PROMPTS):
            assert (python.search(prompt) is not None) == ours.search(prompt), (pattern, prompt)
            re_us, our_us = [], []
            for _ in range(rounds):  # interleaved, so drift hits both alike
                re_us.append(per_call_us(lambda: python.search(prompt), calls))
                our_us.append(per_call_us(lambda: ours.search(prompt), calls))
            a, b = statistics.median(re_us), statistics.median(our_us)
            ratios.append(b / a)
            rows.append({"name": name, "pattern": pattern, "prompt": i, "chars": len(prompt),
                         "matched": python.search(prompt) is not None,
                         "python_re_us": round(a, 3), "sigroute_us": round(b, 3), "ratio": round(b / a, 3)})
        mine = [r for r in rows if r["name"] == name]
        log(f"{name:16} re {statistics.median(r['python_re_us'] for r in mine):7.2f} us  "
            f"sigroute {statistics.median(r['sigroute_us'] for r in mine):7.2f} us  "
            f"ratio {statistics.median(r['ratio'] for r in mine):.2f}")
    return rows, ratios


def signal_rows(calls: int, rounds: int, log: Callable[[str], Any]) -> list[dict[str, Any]]:
    """One keyword signal with all five ordinary regexes as its terms, per prompt: the signal's
    `found` now against what it did before (each term `re.search`ed, compiled with IGNORECASE)."""
    from sigroute.policies.schema import KeywordSignal
    from sigroute.signals.heuristics import Keyword

    terms = tuple(ORDINARY.values())
    signal = Keyword("ordinary", KeywordSignal(any=terms, regex=True))
    before = [(t, re.compile(t, re.IGNORECASE)) for t in terms]

    def old_found(text: str) -> list[str]:
        return [t for t, rx in before if rx.search(text) is not None]

    rows = []
    for i, prompt in enumerate(PROMPTS):
        assert old_found(prompt) == signal.found(prompt)
        old_us, new_us = [], []
        for _ in range(rounds):
            old_us.append(per_call_us(lambda: old_found(prompt), calls))
            new_us.append(per_call_us(lambda: signal.found(prompt), calls))
        a, b = statistics.median(old_us), statistics.median(new_us)
        rows.append({"prompt": i, "chars": len(prompt), "terms": len(terms), "before_us": round(a, 3),
                     "now_us": round(b, 3), "ratio": round(b / a, 3)})
        log(f"keyword signal, {len(terms)} regex terms, prompt {i} ({len(prompt)} chars): before {a:6.2f} us  "
            f"now {b:6.2f} us  ratio {b / a:.2f}")
    return rows


def big_body_rows(chars: int, log: Callable[[str], Any]) -> list[dict[str, Any]]:
    """Each ordinary regex on the largest body: what one regex signal costs that request."""
    text = build_text("prose", chars)
    data = text.encode()
    rows = []
    for name, pattern in ORDINARY.items():
        program = compile_regex(pattern, case_sensitive=False)
        ours = PolicyRegex(pattern, case_sensitive=False)
        full = median_seconds(lambda: program.search(data)) * 1e3
        bounded = median_seconds(lambda: ours.search(text)) * 1e3
        rows.append({"name": name, "chars": chars, "re2_full_ms": round(full, 4), "sigroute_ms": round(bounded, 4)})
        log(f"{name:16} on {chars} chars of prose: re2 full {full:7.3f} ms  sigroute {bounded:6.3f} ms")
    return rows


def run(args: argparse.Namespace, log: Callable[[str], Any]) -> dict[str, Any]:
    sizes = [int(s) for s in args.sizes.split(",")]
    largest = max(sizes)
    patho = pathological_rows(sizes, args.re_timeout, log)
    ordinary, ratios = ordinary_rows(args.calls, args.rounds, log)
    signal = signal_rows(args.calls, args.rounds, log)
    big = big_body_rows(largest, log)

    at_largest = [r for r in patho if r["chars"] == largest]
    backtracking = [r for r in at_largest if r["group"] == "backtracking"]
    worst = [r for r in at_largest if r["group"] == "re2_worst"]
    killed = [r for r in patho if isinstance(r["python_re_s"], dict)]
    max_ms = max([r["sigroute_ms"] for r in backtracking] + [r["sigroute_ms"] for r in big])
    ratio = statistics.median(ratios)
    summary = {
        "scan_chars": DEFAULT_SCAN_CHARS,
        "largest_chars": largest,
        "python_re_killed": f"{len(killed)}/{len(patho)}",
        "python_re_timeout_s": args.re_timeout,
        "max_sigroute_ms_largest": round(max_ms, 3),
        "max_re2_full_ms_largest": round(max(r["re2_full_ms"] for r in backtracking + big), 3),
        "re2_worst_case_ms_largest": {"re2_full": round(max(r["re2_full_ms"] for r in worst), 2),
                                      "sigroute": round(max(r["sigroute_ms"] for r in worst), 3)},
        "ordinary_us_p50": {"python_re": round(statistics.median(r["python_re_us"] for r in ordinary), 3),
                            "sigroute": round(statistics.median(r["sigroute_us"] for r in ordinary), 3)},
        "ordinary_ratio_vs_re": round(ratio, 3),
        "ordinary_ratio_vs_re_max": round(max(ratios), 3),
        "keyword_signal_5_terms_us_p50": {
            "before": round(statistics.median(r["before_us"] for r in signal), 3),
            "now": round(statistics.median(r["now_us"] for r in signal), 3)},
        "keyword_signal_ratio": round(statistics.median(r["ratio"] for r in signal), 3),
        "targets_met": {"few_ms_per_regex_on_largest_body": max_ms < 5.0,
                        "keyword_signal_within_10pct": statistics.median(r["ratio"] for r in signal) <= 1.10},
    }
    return {"summary": summary, "pathological": patho, "ordinary": ordinary, "keyword_signal": signal,
            "largest_body": big,
            "config": vars(args), "machine": machine_info()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.regex_safety", description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1024,16384,262144,4194304", help="text sizes in characters")
    parser.add_argument("--re-timeout", type=float, default=5.0, help="kill Python's re.search after this long")
    parser.add_argument("--calls", type=int, default=2000, help="calls per timing of an ordinary regex")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per ordinary regex and prompt")
    parser.add_argument("--json", help="write the full result here")
    args = parser.parse_args(argv)
    result = run(args, log=lambda m: print(m, file=sys.stderr))
    emit(result, args.json, log=lambda m: print(m, file=sys.stderr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
