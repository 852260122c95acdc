"""The `sigroute` command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLES = sorted((Path(__file__).parent.parent / "policies" / "examples").glob("*.yaml"))


def sigroute(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_validate_accepts_every_example():
    assert len(EXAMPLES) >= 4
    result = sigroute("validate", *map(str, EXAMPLES))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok (") == len(EXAMPLES)


def test_validate_rejects_bad_policy_with_file_line_and_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodels:\n  m: {provider: openai/x, api_base: 'http://127.0.0.1:1/v1'}\n"
                   "decisions:\n  - name: default\n    models: [m]\n    prioriti: 3\n")
    result = sigroute("validate", str(bad))
    assert result.returncode == 1
    assert f"{bad}:7:" in result.stderr
    assert "prioriti" in result.stderr and "priority" in result.stderr  # names the key and suggests the fix


def test_validate_missing_file_fails():
    result = sigroute("validate", "/nonexistent/policy.yaml")
    assert result.returncode == 1
    assert "policy.yaml" in result.stderr


def test_schema_prints_json_schema():
    result = sigroute("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert {"models", "signals", "decisions", "entrypoints", "auth"} <= set(schema["properties"])


def test_explain_shows_signals_decisions_and_winner():
    result = sigroute("explain", "Please debug this Python function for me")
    assert result.returncode == 0, result.stderr
    assert "keyword:code" in result.stdout
    assert "winner: code-and-math" in result.stdout
    as_json = json.loads(sigroute("explain", "hello there", "--json").stdout)
    assert as_json["winner"]["decision"] == "default"
    assert all("matched" in s for s in as_json["signals"].values())


def test_demo_runs_end_to_end():
    result = sigroute("demo", "--requests", "40", "--concurrency", "8", timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "40 requests in" in result.stdout and "0 errors" in result.stdout
    assert "default" in result.stdout


def test_serve_refuses_a_bad_policy_with_a_clear_message(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nmodels: {}\ndecisions: []\n")
    result = sigroute("serve", "--policy", str(bad), "--port", "0", timeout=60)
    assert result.returncode == 1
    assert f"{bad}:2:" in result.stderr and "models" in result.stderr
    missing = sigroute("serve", "--policy", str(tmp_path / "missing.yaml"), timeout=60)
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_serve_and_explain_report_a_missing_encoder_without_a_traceback(tmp_path):
    policy = tmp_path / "enc.yaml"
    policy.write_text(
        "models:\n  m: {provider: openai/m, api_base: 'http://127.0.0.1:9/v1'}\n"
        "signals:\n  complexity: {hard: {level: hard}}\n"
        f"encoder: {{model: {tmp_path / 'no-model'}}}\n"
        "decisions:\n  - {name: hard, rules: 'complexity:hard', models: [m]}\n  - {name: default, models: [m]}\n")
    for command in (("serve", "--policy", str(policy), "--port", "0"),
                    ("explain", str(policy), "hello")):
        result = sigroute(*command, timeout=120)
        assert result.returncode == 1, command
        assert "cannot start" in result.stderr and "never downloads" in result.stderr
        assert "Traceback" not in result.stderr


def test_serve_refuses_a_malformed_redis_url_in_one_line():
    result = sigroute("serve", "--redis", "http://not-redis:1", "--port", "1")
    assert result.returncode == 2
    assert "--redis" in result.stderr and "redis://" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_redis_timeout_that_is_not_a_positive_number():
    for bad in ("0", "-1", "soon", "inf"):
        result = sigroute("serve", "--redis-timeout", bad, "--port", "1")
        assert result.returncode == 2, bad
        assert "--redis-timeout" in result.stderr and "Traceback" not in result.stderr


def test_serve_refuses_a_cache_shard_count_out_of_range():
    for bad in ("0", "1025", "two"):
        result = sigroute("serve", "--cache-shards", bad, "--port", "1")
        assert result.returncode == 2, bad
        assert "--cache-shards" in result.stderr and "Traceback" not in result.stderr
