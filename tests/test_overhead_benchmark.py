"""`benchmarks.overhead`'s arithmetic, on records whose answer is known (no servers, no timing), and one small
real run of `--compare-clients`."""

from __future__ import annotations

import json

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
            if target in overhead.GATEWAYS or target in overhead.API_TARGETS:
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


def test_the_other_api_surfaces_are_compared_with_the_chat_path_of_the_same_rounds():
    records = _records({"direct": 10.0, "passthrough": 12.0, "sigroute": 11.0, "messages": 11.1,
                        "responses": 11.5}, scenario="c1_stream")
    summary, details = overhead.analyse(records, ["c1_stream"])
    apis = summary["c1_stream"]["apis"]
    assert apis["messages"]["added_ms_p50"] == pytest.approx(1.1)
    assert apis["messages"]["vs_chat"] == pytest.approx(1.1) and apis["messages"]["within_target"]
    assert apis["responses"]["vs_chat"] == pytest.approx(1.5) and not apis["responses"]["within_target"]
    assert apis["responses"]["ttft_vs_chat"] == pytest.approx(1.5)
    assert apis["responses"]["self_ms_p50_vs_chat"] == pytest.approx(0.5 / 0.4)
    assert summary["c1_stream"]["sigroute_added_ms_p50"] == pytest.approx(1.0)   # the chat path is unchanged


def test_a_quick_real_run_measures_every_surface(tmp_path):
    """The simulated upstream, the pass-through and one sigroute process answering chat completions,
    Messages and Responses requests in the same rounds."""
    out = tmp_path / "overhead.json"
    assert overhead.main(["--rounds", "1", "--requests", "5", "--requests-c16", "16", "--warmup", "1",
                          "--scenarios", "c1,c1_stream", "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    for scenario in ("c1", "c1_stream"):
        apis = result["summary"][scenario]["apis"]
        assert set(apis) == {"messages", "responses"}
        for api in apis.values():
            assert api["self_ms_p50"] > 0 and isinstance(api["vs_chat"], float)
        rounds = result["details"][scenario]["rounds"]
        assert rounds[0]["messages"]["total_ms"]["n"] == 5 and rounds[0]["responses"]["total_ms"]["n"] == 5
    assert '"system"' in result["config"]["request_bodies"]["messages"]
    assert '"instructions"' in result["config"]["request_bodies"]["responses"]


# ------------------------------------------------------------------------------------------------
# --compare-clients: the gateway with aiohttp's upstream client (target "compare") against the
# hand-written one (target "sigroute"), issue 15's HTTP client decision


def test_client_comparison_gives_aiohttp_over_http1_and_replaces_within_20_percent():
    records = _records({"direct": 10.0, "sigroute": 11.0, "compare": 11.1})  # (no pass-through in this mode)
    _, details = overhead.analyse(records, ["c1"])
    result = overhead.client_comparison(details, ["c1"])
    c1 = result["c1"]
    assert c1["http1"]["added_ms_p50"] == pytest.approx(1.0)
    assert c1["aiohttp"]["added_ms_p50"] == pytest.approx(1.1)
    assert c1["aiohttp_vs_http1"]["added_ms_p50"] == pytest.approx(1.1)
    assert c1["aiohttp_vs_http1"]["added_ms_p99"] == pytest.approx(1.1)
    assert c1["http1"]["cpu_s_per_1k_requests"] == pytest.approx(1.1)  # CPU ms per request = s per 1k
    assert c1["aiohttp_vs_http1"]["cpu_s_per_1k_requests"] == pytest.approx(1.11 / 1.1, abs=1e-3)
    assert result["decision"]["decision"] == "replace" and result["decision"]["within_tolerance"]


def test_client_comparison_keeps_the_hand_written_client_beyond_20_percent():
    records = _records({"direct": 10.0, "passthrough": 12.0, "sigroute": 11.0, "compare": 11.3})
    _, details = overhead.analyse(records, ["c1"])
    result = overhead.client_comparison(details, ["c1"])
    assert result["c1"]["aiohttp_vs_http1"]["added_ms_p50"] == pytest.approx(1.3)
    assert result["decision"]["decision"] == "keep"
    assert result["decision"]["worst"]["aiohttp_vs_http1"] == pytest.approx(1.3)


def test_client_comparison_keeps_the_hand_written_client_when_only_the_tail_is_beyond_20_percent():
    records = _records({"direct": 10.0, "passthrough": 12.0, "sigroute": 11.0, "compare": 11.1})
    for rec in records:  # aiohttp's median is within 20 %, its tail is not
        if rec["target"] == "compare":
            rec["total_ms"][-1] += 10.0
    _, details = overhead.analyse(records, ["c1"])
    result = overhead.client_comparison(details, ["c1"])
    assert result["c1"]["aiohttp_vs_http1"]["added_ms_p50"] == pytest.approx(1.1)
    assert result["c1"]["aiohttp_vs_http1"]["added_ms_p99"] > 1.2
    decision = result["decision"]
    assert decision["decision"] == "keep" and not decision["within_tolerance"]
    assert decision["worst"]["scenario"] == "c1" and decision["worst"]["metric"] == "added_ms_p99"


def test_compare_clients_measures_both_gateways_in_the_same_rounds(tmp_path):
    """A small real run: simulated upstream, pass-through, the gateway with each client."""
    out = tmp_path / "clients.json"
    assert overhead.main(["--compare-clients", "--rounds", "1", "--requests", "5", "--requests-c16", "16",
                          "--requests-c64", "64", "--warmup", "1", "--scenarios", "c1,c64_stream",
                          "--json", str(out), "--quiet"]) == 0
    result = json.loads(out.read_text())
    assert "--upstream-client aiohttp" in result["config"]["compare_command"]
    assert "--upstream-client http1" in result["config"]["sigroute_command"]
    assert result["upstream_clients"] == {"sigroute": overhead.CLIENT_CLASSES["http1"],
                                          "compare": overhead.CLIENT_CLASSES["aiohttp"]}
    comparison = result["summary"]["client_comparison"]
    for scenario, clients in (("c1", 1), ("c64_stream", 64)):
        rounds = result["details"][scenario]["rounds"]
        assert len(rounds) == 1 and rounds[0]["compare"]["total_ms"]["n"] == (5 if clients == 1 else 64)
        assert "passthrough" not in rounds[0]
        for client in ("http1", "aiohttp"):
            # (/proc counts CPU in clock ticks: a batch this small may show none)
            assert comparison[scenario][client]["cpu_s_per_1k_requests"] >= 0
            assert isinstance(comparison[scenario][client]["added_ms_p99"], float)
    decision = comparison["decision"]
    worst = decision["worst"]["aiohttp_vs_http1"]
    assert decision["decision"] == ("replace" if worst is not None and worst <= 1.2 else "keep")
