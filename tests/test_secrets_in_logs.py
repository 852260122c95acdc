"""Credentials, prompts and personal data stay out of what sigroute prints and logs.

A real `sigroute serve` process runs with the access log on and its output captured; requests carry
an API key in the header and one in the query string, a prompt with personal data, and fail
upstream. Nothing secret may appear in what the process wrote. The command line must not print a
Redis password either.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import yaml

from tests.conftest import GatewayProcess, base_policy

HEADER_KEY = "sk-header-secret-4411"
QUERY_KEY = "sk-query-secret-9172"
PROMPT = "Please remind Jane Smith at jane.smith@example.org, card 4111 1111 1111 1111, about the meeting"
SECRETS = (HEADER_KEY, QUERY_KEY, "jane.smith@example.org", "4111 1111 1111 1111", "remind Jane")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sigroute.gateway.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_a_serving_gateway_logs_no_key_prompt_or_personal_data(sim, tmp_path):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"]}])
    gateway = GatewayProcess(policy, tmp_path, args=("--access-log", "--log-level", "info"))
    url = gateway.url
    try:
        body = {"model": "auto", "messages": [{"role": "user", "content": PROMPT}]}
        headers = {"authorization": f"Bearer {HEADER_KEY}"}
        assert httpx.post(f"{url}/v1/chat/completions?api_key={QUERY_KEY}", json=body, headers=headers,
                          timeout=30).status_code == 200
        sim.faults("alpha", error_rate=1.0)   # a failure upstream is logged too
        sim.faults("beta", error_rate=1.0)
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30).status_code == 502
        assert httpx.post(f"{url}/v1/route/explain?api_key={QUERY_KEY}", json=body, timeout=30).status_code == 200
    finally:
        output = gateway.stop()
    assert "POST /v1/chat/completions?…" in output   # the access log is on, and shows the path
    leaked = [secret for secret in SECRETS if secret in output]
    assert not leaked, f"{leaked} in the gateway's output:\n{output[-3000:]}"


def test_the_command_line_never_prints_a_redis_password():
    password = "s3cret-redis-pw"
    bad_port = run_cli("serve", "--redis", f"redis://:{password}@127.0.0.1:notaport/0")
    assert bad_port.returncode == 2 and "--redis" in bad_port.stderr
    unreachable = run_cli("bandit", "export", "--redis", f"redis://default:{password}@127.0.0.1:1/0")
    assert unreachable.returncode != 0 and "127.0.0.1:1" in unreachable.stderr
    not_a_url = run_cli("bandit", "export", "--redis", f"{password}")
    assert not_a_url.returncode != 0
    for done in (bad_port, unreachable, not_a_url):
        assert password not in done.stdout + done.stderr, done.stderr
