"""The sigroute-vs-LiteLLM benchmark: its analysis on invented numbers, and its mechanics end to end
with a stand-in for the LiteLLM proxy (a pass-through behind LiteLLM's command line and health
route; the real proxy is not installed here), its refusal to run without the proxy, and one short
run of the neural gateway. Mechanics only: nothing here judges this machine's speed."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks import vs_litellm
from benchmarks.loadgen import percentile

REPO = Path(__file__).resolve().parents[1]
TINY = ["--rounds", "1", "--requests-c1", "8", "--requests-c16", "32", "--requests-c64", "64", "--warmup", "1"]


def bench_env(**extra: str) -> dict[str, str]:
    """The environment for a benchmark subprocess: the repo importable, no LITELLM_BIN."""
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_BIN"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def run_bench(args: list[str], cwd: Path = REPO, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.vs_litellm", *args], cwd=cwd, env=bench_env(**env),
                          capture_output=True, text=True, timeout=timeout)


def last_json_line(out: subprocess.CompletedProcess) -> dict:
    assert out.returncode == 0, f"exit {out.returncode}\n--- stderr ---\n{out.stderr[-6000:]}"
    lines = out.stdout.strip().splitlines()
    assert lines, f"no output; stderr:\n{out.stderr[-3000:]}"
    return json.loads(lines[-1])


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# ------------------------------------------------------------------------------------------------
# analyse / meets_targets on synthetic records


def record(target, scenario, rnd, total, *, ttfb=None, rps=100.0, cpu=1.0, sim_cpu=0.5, self_ms=None):
    rec = {"target": target, "scenario": scenario, "round": rnd, "total_ms": list(total),
           "ttfb_ms": list(ttfb if ttfb is not None else [t / 2 for t in total]),
           "throughput_rps": rps, "sent": len(total) + 2, "cpu_s_per_1k": cpu, "sim_cpu_s_per_1k": sim_cpu}
    if target.startswith("sigroute"):
        rec["self_ms"] = list(self_ms if self_ms is not None else [0.5] * len(total))
    return rec


TARGETS = ["direct", "passthrough", "sigroute", "litellm"]

# scenario -> target -> per round (total_ms samples, requests/s, cpu s per 1k)
GOOD = {  # sigroute well under half of LiteLLM's added latency, more than twice its requests/s
    "direct": [([10, 10, 10, 10], 100, 0.4), ([20, 20, 20, 20], 80, 0.6)],
    "passthrough": [([12, 12, 12, 12], 90, 1.0), ([24, 24, 24, 24], 70, 3.0)],           # added 2, 4 -> 3
    # added 1 in round 0, 2 in round 1 (p50 of [21, 21, 23, 23] = 22) -> median 1.5; the pooled
    # p50 difference would be 16 - 15 = 1, so this tells the two apart
    "sigroute": [([11, 11, 11, 11], 900, 2.0), ([21, 21, 23, 23], 1100, 4.0)],
    "litellm": [([20, 20, 20, 20], 300, 10.0), ([34, 34, 34, 34], 500, 20.0)],           # added 10, 14 -> 12
}
BAD = {  # sigroute slower than half of LiteLLM
    "direct": [([10, 10, 10, 10], 100, 0.4), ([10, 10, 10, 10], 100, 0.4)],
    "passthrough": [([11, 11, 11, 11], 90, 1.0), ([11, 11, 11, 11], 90, 1.0)],             # added 1
    "sigroute": [([16, 16, 16, 16], 400, 2.0), ([16, 16, 16, 16], 400, 2.0)],             # added 6
    "litellm": [([20, 20, 20, 20], 300, 10.0), ([20, 20, 20, 20], 300, 10.0)],            # added 10
}


def records_for(scenario: str, table: dict) -> list[dict]:
    out = []
    for target, rounds in table.items():
        for rnd, (total, rps, cpu) in enumerate(rounds):
            out.append(record(target, scenario, rnd, total, rps=rps, cpu=cpu))
    return out


def pooled(table: dict, target: str) -> list[float]:
    return [x for total, _, _ in table[target] for x in total]


def test_analyse_added_latency_ratios_and_targets():
    records = records_for("c1", GOOD) + records_for("c16", BAD)
    summary, details = vs_litellm.analyse(records, ["c1", "c16"], TARGETS)
    assert set(summary) == {"c1", "c16"} and set(details) == {"c1", "c16"}

    c1 = summary["c1"]
    # added p50 = median over rounds of the per-round p50 differences (not the pooled difference)
    assert c1["sigroute_added_ms_p50"] == pytest.approx(1.5)
    assert c1["passthrough_added_ms_p50"] == pytest.approx(3.0)
    assert c1["litellm_added_ms_p50"] == pytest.approx(12.0)
    pooled_diff = percentile(pooled(GOOD, "sigroute"), 50) - percentile(pooled(GOOD, "direct"), 50)
    assert pooled_diff == pytest.approx(1.0) != c1["sigroute_added_ms_p50"]
    assert details["c1"]["added_ms"]["sigroute"]["p50_rounds_min"] == pytest.approx(1.0)
    assert details["c1"]["added_ms"]["sigroute"]["p50_rounds_max"] == pytest.approx(2.0)
    assert details["c1"]["targets"]["sigroute"]["p50_by_round"] == [11, 22]
    # p95 / p99 pooled over rounds
    for q in (95, 99):
        expected = percentile(pooled(GOOD, "sigroute"), q) - percentile(pooled(GOOD, "direct"), q)
        assert c1[f"sigroute_added_ms_p{q}"] == pytest.approx(expected, abs=1e-3)
    expected_ll_p99 = percentile(pooled(GOOD, "litellm"), 99) - percentile(pooled(GOOD, "direct"), 99)
    assert c1["litellm_added_ms_p99"] == pytest.approx(expected_ll_p99, abs=1e-3)
    # ratios
    assert c1["ratio_p50"] == pytest.approx(1.5 / 12, abs=1e-3)
    assert c1["ratio_p99"] == pytest.approx(c1["sigroute_added_ms_p99"] / c1["litellm_added_ms_p99"], abs=1e-3)
    assert c1["ratio_vs_passthrough_p50"] == pytest.approx(0.5, abs=1e-3)
    assert c1["rps"] == {"direct": 90.0, "passthrough": 80.0, "sigroute": 1000.0, "litellm": 400.0}
    assert c1["rps_ratio"] == pytest.approx(2.5)
    assert c1["cpu_s_per_1k"] == {"direct": 0.5, "passthrough": 2.0, "sigroute": 3.0, "litellm": 15.0}
    assert c1["direct_ms_p50"] == pytest.approx(15.0)
    assert c1["self_ms_p50"] == pytest.approx(0.5)
    assert c1["neural_added_ms_p50"] is None            # not among the targets
    assert "sigroute_added_ttft_ms_p50" not in c1        # not a streamed scenario

    c16 = summary["c16"]
    assert c16["sigroute_added_ms_p50"] == pytest.approx(6.0)
    assert c16["litellm_added_ms_p50"] == pytest.approx(10.0)
    assert c16["ratio_p50"] == pytest.approx(0.6)

    verdict = vs_litellm.meets_targets(summary)
    assert set(verdict) == {"c1", "c16"}
    assert verdict["c1"] == {"p50_vs_litellm": True, "p99_vs_litellm": True, "rps_vs_litellm": True,
                             "p50_vs_passthrough": True}
    # 6 ms added against LiteLLM's 10: slower than 0.5x LiteLLM, and 6 > 1.5 x the pass-through's 1
    assert verdict["c16"]["p50_vs_litellm"] is False
    assert verdict["c16"]["p99_vs_litellm"] is False
    assert verdict["c16"]["p50_vs_passthrough"] is False
    assert verdict["c16"]["rps_vs_litellm"] is False      # 400 / 300 < 2


def test_analyse_stream_time_to_first_byte():
    table = {"direct": [([10, 10], 100, 1.0)], "passthrough": [([12, 12], 100, 1.0)],
             "sigroute": [([13, 13], 100, 1.0)], "litellm": [([20, 20], 100, 1.0)]}
    ttfb = {"direct": [4, 4], "passthrough": [5, 5], "sigroute": [4.5, 4.5], "litellm": [9, 9]}
    records = [record(t, "c1_stream", 0, rounds[0][0], ttfb=ttfb[t]) for t, rounds in table.items()]
    summary, details = vs_litellm.analyse(records, ["c1_stream"], TARGETS)
    e = summary["c1_stream"]
    assert e["sigroute_added_ttft_ms_p50"] == pytest.approx(0.5)
    assert e["litellm_added_ttft_ms_p50"] == pytest.approx(5.0)
    assert e["passthrough_added_ttft_ms_p50"] == pytest.approx(1.0)
    assert details["c1_stream"]["added_ms"]["sigroute"]["ttfb_p99"] == pytest.approx(0.5)
    assert e["sigroute_added_ms_p50"] == pytest.approx(3.0)


@pytest.mark.parametrize("litellm_added", [0.01, 0.0, -2.0])
def test_ratio_over_litellm_within_noise_of_zero_is_none(litellm_added):
    table = {"direct": [([10.0] * 4, 100, 1.0), ([10.0] * 4, 100, 1.0)],
             "passthrough": [([10.0 + litellm_added] * 4, 100, 1.0)] * 2,
             "sigroute": [([11.0] * 4, 100, 1.0)] * 2,
             "litellm": [([10.0 + litellm_added] * 4, 100, 1.0)] * 2}
    summary, _ = vs_litellm.analyse(records_for("c1", table), ["c1"], TARGETS)
    e = summary["c1"]
    assert e["litellm_added_ms_p50"] == pytest.approx(litellm_added, abs=1e-3)
    assert e["sigroute_added_ms_p50"] == pytest.approx(1.0)
    # 1 ms / 0.01 ms would be a ratio of 100: meaningless, so none is given
    assert e["ratio_p50"] is None and e["ratio_p99"] is None
    assert e["ratio_vs_passthrough_p50"] is None
    assert e["rps_ratio"] == pytest.approx(1.0)


def test_cpu_unknown_in_one_round_gives_none():
    records = records_for("c1", GOOD)
    next(r for r in records if r["target"] == "litellm" and r["round"] == 1)["cpu_s_per_1k"] = None
    summary, _ = vs_litellm.analyse(records, ["c1"], TARGETS)
    assert summary["c1"]["cpu_s_per_1k"]["litellm"] is None
    assert summary["c1"]["cpu_s_per_1k"]["sigroute"] == pytest.approx(3.0)


def test_meets_targets_without_litellm_checks_only_the_pass_through():
    table = {k: v for k, v in GOOD.items() if k != "litellm"}
    summary, _ = vs_litellm.analyse(records_for("c1", table), ["c1"], ["direct", "passthrough", "sigroute"])
    assert summary["c1"]["litellm_added_ms_p50"] is None and summary["c1"]["ratio_p50"] is None
    assert summary["c1"]["rps_ratio"] is None
    assert vs_litellm.meets_targets(summary) == {"c1": {"p50_vs_passthrough": True}}


def test_litellm_config_uses_simple_shuffle_and_the_given_upstream():
    config = vs_litellm.litellm_config("http://127.0.0.1:9/v1")
    assert config["model_list"][0]["model_name"] == "bench"
    assert config["model_list"][0]["litellm_params"]["api_base"] == "http://127.0.0.1:9/v1"
    assert config["router_settings"]["routing_strategy"] == "simple-shuffle"
    # every request distinct (the seed differs), the same bodies for every target
    bodies = vs_litellm.request_bodies("bench", stream=True, count=4)
    assert len(set(bodies)) == 4 and all(b'"stream":true' in b for b in bodies)


# ------------------------------------------------------------------------------------------------
# end to end with a stand-in for the LiteLLM proxy

FAKE_LITELLM = '''#!{python}
"""Stands in for the LiteLLM proxy: its command line and health route, the pass-through behind them."""
import argparse
import json
import sys

sys.path.insert(0, {repo!r})

import uvicorn
import yaml
from starlette.responses import Response

from benchmarks.passthrough import create_passthrough_app

parser = argparse.ArgumentParser()
parser.add_argument("--config", required=True)
parser.add_argument("--host", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--num_workers", type=int, required=True)
args = parser.parse_args()
with open(args.config) as f:
    config = yaml.safe_load(f)
api_base = config["model_list"][0]["litellm_params"]["api_base"]
if config["router_settings"]["routing_strategy"] != "simple-shuffle":
    sys.exit("expected simple-shuffle routing, got " + repr(config["router_settings"]))
with open({seen!r}, "w") as f:
    json.dump({{"argv": sys.argv[1:], "config": config}}, f)

app = create_passthrough_app(api_base)


@app.get("/health/liveliness")
async def liveliness():
    return Response(b'"I\\'m alive!"', media_type="application/json")


uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
'''


def write_fake_litellm(tmp_path: Path) -> tuple[Path, Path]:
    script, seen = tmp_path / "bin" / "litellm", tmp_path / "fake_litellm_seen.json"
    script.parent.mkdir()
    script.write_text(FAKE_LITELLM.format(python=sys.executable, repo=str(REPO), seen=str(seen)))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script, seen


def test_fake_litellm_script_answers_liveliness(tmp_path):
    """The stand-in itself (so a failure of the end-to-end run below points at the benchmark)."""
    import yaml

    from benchmarks.loadgen import ServerProcess

    script, seen = write_fake_litellm(tmp_path)
    config = tmp_path / "litellm.yaml"
    config.write_text(yaml.safe_dump(vs_litellm.litellm_config("http://127.0.0.1:9/v1")))
    with ServerProcess([str(script), "--config", str(config), "--host", "127.0.0.1", "--port", "{port}",
                        "--num_workers", "1"], health_path="/health/liveliness", env=bench_env()):
        data = json.loads(seen.read_text())
    assert data["config"]["router_settings"]["routing_strategy"] == "simple-shuffle"


def test_vs_litellm_end_to_end_with_a_stand_in_proxy(tmp_path):
    script, seen = write_fake_litellm(tmp_path)
    out_json = tmp_path / "out.json"
    t0 = time.monotonic()
    out = run_bench(["--litellm-bin", str(script), "--targets", "passthrough,sigroute,litellm",
                     "--scenarios", "c1,c16_stream", *TINY, "--json", str(out_json), "--quiet"])
    summary = last_json_line(out)
    elapsed = time.monotonic() - t0

    # the benchmark started the stand-in the way it starts LiteLLM, with the config it wrote
    started = json.loads(seen.read_text())
    argv = started["argv"]
    assert argv[argv.index("--num_workers") + 1] == "1" and argv[argv.index("--host") + 1] == "127.0.0.1"
    assert started["config"]["router_settings"] == {"routing_strategy": "simple-shuffle"}
    assert started["config"]["model_list"][0]["litellm_params"]["api_base"].startswith("http://127.0.0.1:")

    targets = {"direct", "passthrough", "sigroute", "litellm"}
    for scenario in ("c1", "c16_stream"):
        e = summary[scenario]
        for key in ("sigroute_added_ms_p50", "sigroute_added_ms_p99", "litellm_added_ms_p50",
                    "litellm_added_ms_p99", "passthrough_added_ms_p50", "direct_ms_p50"):
            assert is_number(e[key]), (scenario, key, e[key])
        assert e["neural_added_ms_p50"] is None
        assert set(e["rps"]) == targets and all(e["rps"][t] > 0 for t in targets), e["rps"]
        assert is_number(e["rps_ratio"]) and e["rps_ratio"] > 0
        assert set(e["cpu_s_per_1k"]) == targets
        assert all(is_number(v) and v >= 0 for v in e["cpu_s_per_1k"].values()), e["cpu_s_per_1k"]
        assert is_number(e["self_ms_p50"]) and e["self_ms_p50"] >= 0
    assert is_number(summary["c16_stream"]["sigroute_added_ttft_ms_p50"])
    assert is_number(summary["c16_stream"]["litellm_added_ttft_ms_p50"])
    assert "c16" not in summary and "c1_stream" not in summary
    assert summary["rss_mb"]["sigroute"] > 0 and summary["rss_mb"]["litellm"] > 0
    assert set(summary["meets_targets"]) == {"c1", "c16_stream"}
    assert "neural_added_ms_p50_c1" not in summary   # no neural target ran
    assert 0 < summary["duration_s"] <= elapsed + 1

    full = json.loads(out_json.read_text())
    assert full["benchmark"] == "vs_litellm" and full["summary"] == summary
    config = full["config"]
    assert config["litellm_config"]["router_settings"]["routing_strategy"] == "simple-shuffle"
    assert config["litellm_bin"] == str(script.resolve())
    assert config["targets"] == ["direct", "passthrough", "sigroute", "litellm"]
    assert config["rounds"] == 1 and config["requests"] == {"c1": 8, "c16": 32, "c64": 64}
    assert config["embedding"] is None
    for scenario in ("c1", "c16_stream"):
        detail = full["details"][scenario]
        assert set(detail["added_ms"]) == targets - {"direct"}
        assert set(detail["targets"]) == targets
        assert all(len(t["p50_by_round"]) == 1 for t in detail["targets"].values())
    assert "ttfb_p50" in full["details"]["c16_stream"]["added_ms"]["litellm"]
    seen_headers = full["sigroute_headers_seen"]
    assert set(seen_headers) == {"sigroute stream=False", "sigroute stream=True"}
    assert all(h["x-sigroute-decision"] == "default" for h in seen_headers.values())


def test_vs_litellm_without_the_proxy_explains_how_to_install_it(tmp_path):
    assert not (tmp_path / ".venv-litellm").exists()
    out_json = tmp_path / "out.json"
    t0 = time.monotonic()
    out = run_bench(["--litellm-bin", "/nonexistent", "--targets", "sigroute,litellm", "--scenarios", "c1",
                     *TINY, "--json", str(out_json)], cwd=tmp_path, timeout=60)
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "litellm[proxy]" in out.stderr and "python -m venv .venv-litellm" in out.stderr
    assert "--litellm-bin" in out.stderr and "--no-litellm" in out.stderr
    assert "servers up" not in out.stderr            # it gave up before starting anything
    assert out.stdout == "" and not out_json.exists()
    assert time.monotonic() - t0 < 30


def test_slow_vs_litellm_neural_gateway(tmp_path, monkeypatch, capsys):
    """The slow one: the only test here that loads the sentence encoder (in the gateway and in the
    forward-pass measurement). No marker deselects it: it runs in CI like the rest.

    In this process (the servers and the forward-pass measurement are subprocesses all the same),
    so that the cache can be filled with 2 questions instead of 64: filling it with all 512 answers
    costs over a minute on 2 cores."""
    import torch

    full_fill = vs_litellm.fill_questions()
    monkeypatch.setattr(vs_litellm, "fill_questions", lambda: full_fill[:2])
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("PYTHONPATH", bench_env()["PYTHONPATH"])  # for the benchmark's own subprocesses
    monkeypatch.delenv("LITELLM_BIN", raising=False)
    out_json = tmp_path / "neural.json"
    assert vs_litellm.main(["--no-litellm", "--targets", "sigroute_neural", "--scenarios", "c1", "--rounds", "1",
                            "--requests-c1", "8", "--warmup", "1", "--embedding-samples", "5", "--fill-seeds", "1",
                            "--json", str(out_json), "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert is_number(summary["neural_added_ms_p50_c1"])
    assert summary["neural_added_ms_p50_c1"] == summary["c1"]["neural_added_ms_p50"]
    assert is_number(summary["embedding_forward_ms_p50"]) and summary["embedding_forward_ms_p50"] > 0
    assert is_number(summary["gateway_embedding_forward_ms_mean_c1"])
    assert summary["gateway_embedding_forward_ms_mean_c1"] > 0
    assert isinstance(summary["neural_within_forward_plus_2ms"], bool)
    if torch.cuda.is_available():
        assert summary["encoder_device"] == "cpu" or summary["encoder_device"].startswith("cuda")
    else:
        assert summary["encoder_device"] == "cpu"
    assert set(summary["c1"]["rps"]) == {"direct", "sigroute_neural"}
    assert summary["c1"]["sigroute_added_ms_p50"] is None and summary["c1"]["litellm_added_ms_p50"] is None
    assert summary["rss_mb"]["sigroute_neural"] > 0
    # the gateway and the forward-pass measurement ran the same encoder backend (onnx on a CPU here)
    assert summary["encoder_backend"] in ("onnx", "torch")
    if summary["encoder_device"] == "cpu":
        assert summary["encoder_backend"] == "onnx"
    full = json.loads(out_json.read_text())
    assert full["config"]["targets"] == ["direct", "sigroute_neural"]
    assert full["config"]["embedding"]["samples"] == 5
    assert full["config"]["embedding"]["backend"] == summary["encoder_backend"]
    assert set(full["config"]["policies"]) == {"sigroute_neural"}
    assert full["config"]["litellm_bin"] is None
    seen = full["sigroute_headers_seen"]
    assert set(seen) == {"sigroute_neural stream=False", "sigroute_neural stream=True"}
    for headers in seen.values():
        assert headers["x-sigroute-cache"] == "miss"
        assert headers["x-sigroute-decision"] != "block-attacks"


def test_an_explicit_litellm_bin_is_never_swapped_for_another(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LITELLM_BIN", sys.executable)  # some executable that exists
    assert vs_litellm.find_litellm("/nonexistent/litellm") is None  # a typo is an error, not a fallback
    assert vs_litellm.find_litellm(None) == str(Path(sys.executable).resolve())
    not_executable = tmp_path / "litellm"
    not_executable.write_text("#!/bin/sh\n")
    assert vs_litellm.find_litellm(str(not_executable)) is None
