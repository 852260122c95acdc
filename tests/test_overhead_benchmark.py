"""`benchmarks.overhead`'s arithmetic, on records whose answer is known (no servers, no timing)."""

from __future__ import annotations

import pytest

from benchmarks import overhead


def _records(totals: dict[str, float], rounds: int = 3, scenario: str = "c1") -> list[dict]:
    """Every target answers every request of a round in exactly `totals[target]` ms (+ the round
    number, a drift shared by all targets), using 1 ms of its own time."""
    out = []
    for r in range(rounds):
        for target, ms in totals.items():
            rec = {"round": r, "scenario": scenario, "target": target, "total_ms": [ms + r] * 5,
                   "ttfb_ms": [ms + r] * 5, "throughput_rps": 100.0, "sent": 5,
                   "cpu_ms_per_request": {"sim": 0.5, **({} if target == "direct" else {target: ms / 10})}}
            if target in overhead.GATEWAYS:
                rec["self_ms"] = [0.4 if target == "sigroute" else 0.5] * 5
            out.append(rec)
    return out


def test_added_latency_and_ratio_are_per_round_differences_against_the_direct_call():
    summary, _ = overhead.analyse(_records({"direct": 10.0, "passthrough": 12.0, "sigroute": 11.0}), ["c1"])
    entry = summary["c1"]
    assert entry["sigroute_added_ms_p50"] == pytest.approx(1.0)
    assert entry["passthrough_added_ms_p50"] == pytest.approx(2.0)
    assert entry["ratio_p50"] == pytest.approx(0.5)
    assert entry["self_ms_p50"] == pytest.approx(0.4)
    assert "compare" not in entry and "sigroute_vs_compare" not in entry


def test_a_compare_build_is_reported_beside_sigroute_from_the_same_rounds():
    records = _records({"direct": 10.0, "passthrough": 12.0, "sigroute": 11.0, "compare": 11.5})
    summary, details = overhead.analyse(records, ["c1"])
    entry = summary["c1"]
    assert entry["compare"]["added_ms_p50"] == pytest.approx(1.5)
    assert entry["compare"]["ratio_p50"] == pytest.approx(0.75)
    assert entry["compare"]["self_ms_p50"] == pytest.approx(0.5)
    assert entry["compare"]["cpu_ms_per_request"] == pytest.approx(1.15)
    assert entry["sigroute_vs_compare"]["added_ms_p50"] == pytest.approx(1.0 / 1.5, abs=1e-3)
    assert entry["sigroute_vs_compare"]["ratio_p50"] == pytest.approx(0.5 / 0.75, abs=1e-3)
    assert entry["sigroute_vs_compare"]["self_ms_p50"] == pytest.approx(0.8)
    assert details["c1"]["rounds"][0]["compare_added_ms_p50"] == pytest.approx(1.5)
