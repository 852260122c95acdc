"""benchmarks.chaos: the grader catches broken answers, and the quick run passes end to end.

The grader is tested on fabricated client observations against fabricated fault-server records
(every way a gateway could mislead its client must grade `fail`); the benchmark itself runs in its
quick mode against a real `sigroute serve` process and the raw-socket fault server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from benchmarks.chaos import FAULTS, Observation, catalogue, grade
from benchmarks.chaos_upstream import Record, answer_text, model_usage

ROOT = Path(__file__).resolve().parents[1]
TEXT = answer_text("m-a", "n1")
USAGE = model_usage("m-a", len(TEXT.split()))
DEADLINE = 30.0


def sent(model: str = "m-a", text: str = TEXT, finish: str | None = "stop", usage=USAGE, whole: bool = True,
         stream: bool = True) -> Record:
    return Record(model, "n1", stream, "ok", 0.0, outcome="answered" if whole else "cut", content=text,
                  finish_reason=finish if whole else None, usage=usage if whole else None, done=whole, whole=whole)


def chunk(model: str, content: str | None = None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return orjson.dumps({"id": "x", "object": "chat.completion.chunk", "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}).decode()


def usage_chunk(model: str, usage: dict) -> str:
    return orjson.dumps({"id": "x", "object": "chat.completion.chunk", "model": model, "choices": [],
                         "usage": usage}).decode()


def error_event() -> str:
    return orjson.dumps({"error": {"message": "the upstream failed mid-stream", "type": "upstream_error",
                                   "param": None, "code": "stream_broken"}}).decode()


def streamed(events: list[str], model: str = "m-a", clean_end: bool = True, **kw) -> Observation:
    return Observation(stream=True, status=200, headers={"x-sigroute-model": model}, events=events,
                       clean_end=clean_end, elapsed_s=0.1, **kw)


def whole(body: dict | bytes, status: int = 200, model: str | None = "m-a", **kw) -> Observation:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"x-sigroute-model": model} if model else {}
    return Observation(stream=False, status=status, headers=headers, body=raw, clean_end=True,
                       elapsed_s=kw.pop("elapsed_s", 0.1), **kw)


def completion(model: str = "m-a", text: str = TEXT, finish: str = "stop", usage=USAGE) -> dict:
    return {"id": "x", "object": "chat.completion", "model": model, "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}]}


def full_stream(model: str = "m-a", text: str = TEXT, usage=USAGE) -> list[str]:
    half = len(text) // 2
    return [chunk(model, text[:half]), chunk(model, text[half:]), chunk(model, None, "stop"),
            usage_chunk(model, usage), "[DONE]"]


# the grader -------------------------------------------------------------------------------------

def test_a_faithful_stream_passes():
    assert grade(streamed(full_stream()), [sent()], deadline_s=DEADLINE)[0] == "pass"


def test_a_truncated_stream_without_an_error_event_fails():
    events = full_stream()[:1]  # the first half, then the connection closed without a word
    got, why = grade(streamed(events, clean_end=False, transport_error="IncompleteReadError"),
                     [sent(whole=False, text=TEXT[: len(TEXT) // 2])], deadline_s=DEADLINE)
    assert got == "fail" and "silent truncation" in why


def test_a_truncated_stream_presented_as_complete_fails():
    half = TEXT[: len(TEXT) // 2]
    events = [chunk("m-a", half), chunk("m-a", None, "stop"), usage_chunk("m-a", USAGE), "[DONE]"]
    got, why = grade(streamed(events), [sent(whole=False, text=half)], deadline_s=DEADLINE)
    assert got == "fail" and "truncated or altered" in why


def test_a_broken_stream_ending_with_an_error_event_is_safe():
    half = TEXT[: len(TEXT) // 2]
    got, why = grade(streamed([chunk("m-a", half), error_event()]), [sent(whole=False, text=half)],
                     deadline_s=DEADLINE)
    assert got == "safe", why


def test_a_switch_of_model_after_bytes_were_sent_fails():
    half = TEXT[: len(TEXT) // 2]
    other = answer_text("m-b", "n1")
    events = [chunk("m-a", half), chunk("m-b", other), chunk("m-b", None, "stop"),
              usage_chunk("m-b", model_usage("m-b", 3)), "[DONE]"]
    records = [sent(whole=False, text=half), sent("m-b", other, usage=model_usage("m-b", 3))]
    got, why = grade(streamed(events, model="m-b"), records, deadline_s=DEADLINE)
    assert got == "fail" and "several models" in why


def test_text_before_an_error_event_that_the_reported_model_did_not_send_fails():
    other = answer_text("m-b", "n1")
    records = [sent(whole=False, text=TEXT[:20]), sent("m-b", other[:20], whole=False)]
    got, _ = grade(streamed([chunk("m-a", other[:20]), error_event()]), records, deadline_s=DEADLINE)
    assert got == "fail"


@pytest.mark.parametrize("stream", [False, True])
def test_a_wrong_model_reported_fails(stream):
    # m-b really answered; the gateway says m-a
    text_b, usage_b = answer_text("m-b", "n1"), model_usage("m-b", 5)
    records = [sent("m-b", text_b, usage=usage_b, stream=stream)]
    obs = (streamed(full_stream("m-a", text_b, usage_b), model="m-a") if stream
           else whole(completion("m-a", text_b, usage=usage_b)))
    got, why = grade(obs, records, deadline_s=DEADLINE)
    assert got == "fail" and "reported as" in why


def test_a_wrong_model_only_in_the_header_fails():
    got, why = grade(whole(completion(), model="m-b"), [sent(stream=False)], deadline_s=DEADLINE)
    assert got == "fail" and "reported as 'm-b'" in why


@pytest.mark.parametrize("stream", [False, True])
def test_wrong_usage_fails(stream):
    wrong = model_usage("m-b", 7)
    obs = streamed(full_stream(usage=wrong)) if stream else whole(completion(usage=wrong))
    got, why = grade(obs, [sent(stream=stream)], deadline_s=DEADLINE)
    assert got == "fail" and "usage" in why


def test_an_altered_whole_answer_fails_and_the_faithful_one_passes():
    assert grade(whole(completion()), [sent(stream=False)], deadline_s=DEADLINE)[0] == "pass"
    got, _ = grade(whole(completion(text=TEXT + " extra")), [sent(stream=False)], deadline_s=DEADLINE)
    assert got == "fail"
    got, _ = grade(whole(completion(finish="stop")), [sent(stream=False, finish="content_filter")],
                   deadline_s=DEADLINE)
    assert got == "fail"  # a filtered answer presented as a normal end


def test_an_answer_no_upstream_sent_whole_fails():
    got, _ = grade(whole(completion()), [sent(stream=False, whole=False)], deadline_s=DEADLINE)
    assert got == "fail"


def test_errors_clear_and_upstream_shaped_are_safe_internal_or_shapeless_ones_fail():
    def error(status: int, code: str) -> Observation:
        return whole({"error": {"message": "every candidate model failed", "type": "upstream_error",
                                "param": None, "code": code}}, status=status, model=None)

    assert grade(error(502, "upstream_failed"), [], deadline_s=DEADLINE)[0] == "safe"
    assert grade(error(504, "upstream_timeout"), [], deadline_s=DEADLINE)[0] == "safe"
    assert grade(error(400, "context_length_exceeded"), [], deadline_s=DEADLINE,
                 error_code="context_length_exceeded")[0] == "safe"
    assert grade(error(500, "internal_error"), [], deadline_s=DEADLINE)[0] == "fail"
    assert grade(error(400, "upstream_rejected"), [], deadline_s=DEADLINE,
                 error_code="context_length_exceeded")[0] == "fail"
    assert grade(whole(b"Internal Server Error", status=502, model=None), [], deadline_s=DEADLINE)[0] == "fail"


def test_a_hang_or_an_answer_past_the_deadline_fails():
    assert grade(Observation(stream=True, hung=True, elapsed_s=40), [], deadline_s=DEADLINE)[0] == "fail"
    late = whole(completion(), elapsed_s=DEADLINE + 1)
    assert grade(late, [sent(stream=False)], deadline_s=DEADLINE)[0] == "fail"


def test_the_catalogue_covers_the_issue_and_expects_pass_wherever_a_candidate_can_answer():
    names = {s.name.split("/")[0] for s in catalogue()}
    for fault in ("429-retry-after", "429-no-retry-after", "500", "503", "tcp-reset", "never-answers",
                  "slow-first-token", "cut-mid-answer", "stalled-mid-answer", "malformed-mid-answer",
                  "missing-done", "context-length", "content-filter", "flapping-primary", "fallback-rejects",
                  "healthy-attribution"):
        assert fault in names
    for s in catalogue():
        fault, _, after_bytes = FAULTS.get(s.name.split("/")[0], (None, None, False))
        if after_bytes and s.stream:
            assert s.expected == "safe", s.name  # bytes were sent: no switch of model
        elif "healthy" in s.roles:
            assert s.expected == "pass", s.name


# the benchmark, end to end ------------------------------------------------------------------------

def test_quick_run_has_no_fail_and_serves_whenever_a_healthy_candidate_exists(tmp_path):
    out = tmp_path / "chaos.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.chaos", "--quick", "--skip-ops", "--load-seconds", "2",
                           "--clients", "8", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    for key in ("scenarios", "pass", "safe", "fail", "success_rate_with_healthy_candidate", "redis_outage_5xx",
                "reload_failed_requests", "feedback_lost_unreported"):
        assert key in summary
    result = json.loads(out.read_text())
    failed = [(s["name"], s["why"]) for s in result["scenarios"] if s["got"] == "fail"]
    assert summary["fail"] == 0, failed
    assert summary["scenarios"] == len(catalogue()) == summary["pass"] + summary["safe"]
    missed = [(s["name"], s["got"], s["why"]) for s in result["scenarios"] if not s["met"]]
    assert not missed
    assert result["gateway_internal_errors"] == 0
    for phase in result["load"]:
        assert phase["requests"] > 0 and phase["over_deadline"] == 0, phase
        assert phase["grades"].get("fail", 0) == 0, phase["failures"]
    # a killed upstream opens its circuit (an episode seen in /metrics), and it closes once it is back
    killed = next(p for p in result["load"] if p["phase"] == "killed")
    assert killed["breaker_episodes_opened"] >= 1 and not killed["breaker_open_at_end"]
    rate_limited = next(p for p in result["load"] if p["phase"] == "rate-limited")
    assert rate_limited["breaker_episodes_opened"] == 0  # a 429 is back pressure, not a fault
