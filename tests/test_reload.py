"""Policy reloads: built off the event loop, swapped atomically, the retired pipeline closed once
idle, and SIGHUP handled on the loop (never inside a signal handler)."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import httpx
import yaml

from sigroute.gateway import app as app_module
from sigroute.gateway.app import create_app
from sigroute.gateway.http_server import server_options
from sigroute.gateway.serving import ServerThread
from sigroute.policies.loader import load_policy
from tests.conftest import GatewayProcess, base_policy

BODY = {"model": "auto", "messages": [{"role": "user", "content": "which model?"}]}


def serve_file(policy: dict, path, **options):
    path.write_text(yaml.safe_dump(policy))
    loaded = load_policy(path)
    app = create_app(loaded, policy_path=str(path), **options)
    return app, ServerThread(app, **server_options(loaded))


def test_a_slow_reload_does_not_stop_the_gateway_from_serving(sim, tmp_path, monkeypatch):
    """Building a pipeline can take seconds of CPU (loading an encoder and its heads); here the
    build blocks its thread for 1.5 s. Requests keep being answered meanwhile."""
    policy = base_policy(sim)
    app, server = serve_file(policy, tmp_path / "policy.yaml")
    real_pipeline = app_module.Pipeline

    class SlowToBuild(real_pipeline):
        def __init__(self, *args, **kwargs):
            time.sleep(1.5)   # blocking, like model loading
            super().__init__(*args, **kwargs)

    with server:
        monkeypatch.setattr(app_module, "Pipeline", SlowToBuild)
        policy["decisions"][0]["models"] = ["beta"]
        (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
        finished = {}

        def reload():
            r = httpx.post(server.url + "/v1/admin/reload", timeout=60)
            finished["reload"] = time.monotonic()
            return r.status_code

        def serve_meanwhile():
            time.sleep(0.3)   # the reload has started building
            r = httpx.post(server.url + "/v1/chat/completions", json=BODY, timeout=60)
            finished["chat"] = time.monotonic()
            return r.headers["x-sigroute-model"]

        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            reloaded, answered_by = pool.submit(reload), pool.submit(serve_meanwhile)
            assert reloaded.result() == 200 and answered_by.result() == "alpha"
        assert finished["chat"] < finished["reload"]   # answered while the new pipeline was being built
        assert httpx.post(server.url + "/v1/chat/completions", json=BODY).headers["x-sigroute-model"] == "beta"


def test_a_retired_pipeline_finishes_its_streams_and_is_then_closed(sim, tmp_path):
    policy = base_policy(sim, decisions=[{"name": "default", "models": ["slow"]}])
    app, server = serve_file(policy, tmp_path / "policy.yaml", retire_after_s=0.2)
    with server:
        old = app.state.runtime.pipeline
        with httpx.Client(base_url=server.url, timeout=60) as http:
            with http.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as stream:
                lines = stream.iter_lines()
                first = next(lines)                          # the stream is running on the old pipeline
                assert first.startswith("data:")
                policy["decisions"][0]["models"] = ["alpha"]
                (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
                assert http.post("/v1/admin/reload").status_code == 200
                assert app.state.runtime.pipeline is not old
                assert not old.upstreams.transports["openai"].client.closed   # still streaming
                rest = [line for line in lines if line]
            assert rest[-1] == "data: [DONE]"                   # the stream ran to its end
            assert http.post("/v1/chat/completions", json=BODY).headers["x-sigroute-model"] == "alpha"
        deadline = time.monotonic() + 20
        while not old.upstreams.transports["openai"].client.closed:
            assert time.monotonic() < deadline, "the retired pipeline was never closed"
            time.sleep(0.05)
        assert old not in app.state.runtime._retired


def test_sighup_reloads_the_policy_file(sim, tmp_path):
    policy = base_policy(sim)
    gateway = GatewayProcess(policy, tmp_path, policy_name="policy.yaml")
    url, path = gateway.url, gateway.policy_path
    try:
        assert httpx.post(url + "/v1/chat/completions", json=BODY).headers["x-sigroute-model"] == "alpha"
        policy["decisions"][0]["models"] = ["beta"]
        path.write_text(yaml.safe_dump(policy))
        os.kill(gateway.pid, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while httpx.post(url + "/v1/chat/completions", json=BODY).headers["x-sigroute-model"] != "beta":
            assert time.monotonic() < deadline, "SIGHUP did not reload the policy"
            time.sleep(0.1)
        path.write_text("decisions: [not: valid")          # a broken file: the running policy stays
        os.kill(gateway.pid, signal.SIGHUP)
        failed = 'sigroute_policy_reloads_total{result="failed"} 1.0'
        while failed not in httpx.get(url + "/metrics").text:
            assert gateway.proc.poll() is None and time.monotonic() < deadline + 30, \
                "the broken reload was not attempted"
            time.sleep(0.1)
        assert httpx.post(url + "/v1/chat/completions", json=BODY).headers["x-sigroute-model"] == "beta"
    finally:
        output = gateway.stop()
    assert "policy reloaded from" in output and "reload on SIGHUP failed" in output
