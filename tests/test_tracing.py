"""OpenTelemetry traces (gateway/tracing.py) through a real gateway and the simulated upstream.

Spans are captured with the SDK's in-memory exporter (a tracer provider handed to the gateway),
or exported over OTLP/HTTP to a real receiver on loopback that decodes the protobuf. Each test
names one behaviour: the span tree of a request, a fallback's two attempts, a stream's span
ending with the stream (and when the caller leaves), a cache hit without an upstream span, the
caller's traceparent continued to the upstream, the policy and environment settings, and tracing
off costing no spans and no OpenTelemetry SDK import.
"""

from __future__ import annotations

import gzip
import http.server
import json
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider   # the `otel` extra, part of the `test` extra
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sigroute.gateway.tracing import settings_from
from sigroute.policies.schema import Tracing
from tests.conftest import base_policy

STEPS = ["sigroute.signals", "sigroute.decide", "sigroute.plugins", "sigroute.cache", "sigroute.select"]
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def spans():
    """An in-memory exporter behind a tracer provider to hand to the gateway."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    exporter.provider = provider
    yield exporter
    provider.shutdown()


def traced_policy(sim, **overrides):
    policy = base_policy(sim, **overrides)
    policy.setdefault("server", {})["tracing"] = {"enabled": True}
    return policy


def request_spans(exporter, request_id: str, timeout_s: float = 10.0):
    """The finished spans of one request's trace: (request span, {span id: span} of its trace).
    Waits (up to `timeout_s`) for the request span: for a stream it ends with the stream."""
    deadline = time.monotonic() + timeout_s
    while True:
        finished = exporter.get_finished_spans()
        roots = [s for s in finished if s.kind == SpanKind.SERVER
                 and s.attributes.get("sigroute.request_id") == request_id]
        if roots or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(roots) == 1, f"expected one request span for {request_id}, got {len(roots)}"
    root = roots[0]
    trace = [s for s in finished if s.context.trace_id == root.context.trace_id]
    return root, trace


def children(root, trace):
    return [s for s in trace if s.parent is not None and s.parent.span_id == root.context.span_id]


def test_a_request_is_one_span_with_a_child_per_step(sim, gateway_factory, spans):
    gw = gateway_factory(traced_policy(sim), tracer_provider=spans.provider)
    r = gw.chat("what is two plus two?", max_tokens=50, temperature=0.2)
    assert r.status_code == 200
    root, trace = request_spans(spans, r.headers["x-sigroute-request-id"])

    assert root.name == "chat auto" and root.kind == SpanKind.SERVER
    names = [s.name for s in sorted(children(root, trace), key=lambda s: s.start_time)]
    assert names == [*STEPS, "chat alpha", "sigroute.answer"]
    a = root.attributes
    assert a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == "auto"
    assert a["gen_ai.response.model"] == "alpha" and a["sigroute.model"] == "alpha"
    assert a["gen_ai.request.max_tokens"] == 50 and a["gen_ai.request.temperature"] == pytest.approx(0.2)
    assert a["gen_ai.usage.input_tokens"] == r.json()["usage"]["prompt_tokens"]
    assert a["gen_ai.usage.output_tokens"] == r.json()["usage"]["completion_tokens"]
    assert a["sigroute.decision"] == "default" and a["sigroute.confidence"] == pytest.approx(
        float(r.headers["x-sigroute-confidence"]))
    assert a["sigroute.api"] == "chat.completions" and a["sigroute.cache"] == "off"
    assert a["sigroute.attempts"] == 1 and a["sigroute.status"] == "200"

    attempt = next(s for s in trace if s.name == "chat alpha")
    assert attempt.kind == SpanKind.CLIENT
    assert attempt.attributes["gen_ai.provider.name"] == "openai"
    assert attempt.attributes["gen_ai.request.model"] == "alpha"
    assert attempt.attributes["gen_ai.response.model"] == "alpha"
    assert attempt.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert attempt.attributes["server.address"] == "127.0.0.1"
    # every span ends within the request span, and no text of the conversation is on any of them
    for span in trace:
        assert root.start_time <= span.start_time and span.end_time <= root.end_time
        assert "two plus two" not in json.dumps(dict(span.attributes)) + span.name
    answer = r.json()["choices"][0]["message"]["content"]
    assert all(answer not in json.dumps(dict(s.attributes)) for s in trace)


def test_a_fallback_is_two_attempt_spans_the_first_marked_error(sim, gateway_factory, spans):
    sim.faults("alpha", error_rate=1.0)
    policy = traced_policy(sim, decisions=[{"name": "default", "models": ["alpha", "beta"], "algorithm": "static"}])
    gw = gateway_factory(policy, tracer_provider=spans.provider)
    r = gw.chat("hello")
    assert r.status_code == 200 and r.headers["x-sigroute-model"] == "beta"
    root, trace = request_spans(spans, r.headers["x-sigroute-request-id"])

    attempts = sorted((s for s in children(root, trace) if s.kind == SpanKind.CLIENT), key=lambda s: s.start_time)
    assert [s.name for s in attempts] == ["chat alpha", "chat beta"]
    failed, answered = attempts
    assert failed.status.status_code == StatusCode.ERROR
    assert failed.attributes["error.type"] == "server" and failed.attributes["http.response.status_code"] == 500
    assert answered.status.status_code == StatusCode.UNSET and "error.type" not in answered.attributes
    assert root.attributes["sigroute.attempts"] == 2 and root.attributes["sigroute.model"] == "beta"
    assert root.status.status_code == StatusCode.UNSET


def test_an_upstream_failure_marks_the_request_span_error(sim, gateway_factory, spans):
    sim.faults("alpha", error_rate=1.0)
    gw = gateway_factory(traced_policy(sim), tracer_provider=spans.provider)
    r = gw.chat("hello")
    assert r.status_code == 502
    root, trace = request_spans(spans, _the_only_request(spans))
    assert root.status.status_code == StatusCode.ERROR
    assert root.attributes["error.type"] == "upstream_failed" and root.attributes["http.response.status_code"] == 502


def test_a_callers_mistake_is_recorded_but_not_a_span_error(sim, gateway_factory, spans):
    gw = gateway_factory(traced_policy(sim), tracer_provider=spans.provider)
    r = gw.chat("hello", model="x" * 5000)
    assert r.status_code == 404
    root, trace = request_spans(spans, _the_only_request(spans))
    assert root.status.status_code == StatusCode.UNSET and root.name == "chat"   # no caller's text in the name
    assert root.attributes["error.type"] == "model_not_found" and root.attributes["http.response.status_code"] == 404
    assert len(root.attributes["gen_ai.request.model"]) == 256


def _the_only_request(exporter) -> str:
    ids = {s.attributes.get("sigroute.request_id") for s in exporter.get_finished_spans()
           if s.kind == SpanKind.SERVER}
    assert len(ids) == 1
    return ids.pop()


def test_a_streamed_request_span_ends_when_the_stream_ends(sim, gateway_factory, spans):
    gw = gateway_factory(traced_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]),
                         tracer_provider=spans.provider)
    body = {"model": "auto", "messages": [{"role": "user", "content": "tell me a story"}], "stream": True,
            "stream_options": {"include_usage": True}}
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        request_id = r.headers["x-sigroute-request-id"]
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        # mid-stream: the attempt is over (the stream is committed) but the request is not
        assert [s.name for s in spans.get_finished_spans()
                if s.attributes.get("sigroute.request_id") == request_id] == ["chat slow"]
        assert not any(s.name in ("chat auto", "sigroute.answer") for s in spans.get_finished_spans())
        rest = list(lines)
    assert "data: [DONE]" in rest
    root, trace = request_spans(spans, request_id)
    answer = next(s for s in children(root, trace) if s.name == "sigroute.answer")
    attempt = next(s for s in children(root, trace) if s.name == "chat slow")
    assert attempt.end_time <= answer.start_time <= answer.end_time <= root.end_time
    assert answer.attributes["sigroute.status"] == "200" and root.attributes["sigroute.status"] == "200"
    assert attempt.attributes["gen_ai.response.time_to_first_chunk"] > 0
    assert root.attributes["gen_ai.request.stream"] is True
    assert root.attributes["gen_ai.usage.output_tokens"] == 40


def test_a_stream_the_caller_leaves_ends_its_span(sim, gateway_factory, spans):
    gw = gateway_factory(traced_policy(sim, decisions=[{"name": "default", "models": ["slow"]}]),
                         tracer_provider=spans.provider)
    body = {"model": "auto", "messages": [{"role": "user", "content": "tell me a story"}], "stream": True}
    with httpx.Client(base_url=gw.url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            request_id = r.headers["x-sigroute-request-id"]
            assert next(line for line in r.iter_lines() if line.startswith("data: "))
    # the connection is closed mid-stream: the gateway notices and ends the trace
    root, trace = request_spans(spans, request_id, timeout_s=30)
    answer = next(s for s in children(root, trace) if s.name == "sigroute.answer")
    assert root.attributes["sigroute.status"] == answer.attributes["sigroute.status"] == "client_disconnected"
    assert root.status.status_code == StatusCode.UNSET


def test_a_cache_hit_has_no_upstream_span(sim, gateway_factory, spans):
    policy = traced_policy(sim, decisions=[{"name": "default", "models": ["alpha"], "cache": {"mode": "exact"}}])
    gw = gateway_factory(policy, tracer_provider=spans.provider)
    first = gw.chat("the same question")
    second = gw.chat("the same question")
    assert second.headers["x-sigroute-cache"] == "hit-exact"
    root, trace = request_spans(spans, first.headers["x-sigroute-request-id"])
    assert root.attributes["sigroute.cache"] == "miss"
    assert any(s.kind == SpanKind.CLIENT for s in trace)
    root, trace = request_spans(spans, second.headers["x-sigroute-request-id"])
    assert root.attributes["sigroute.cache"] == "hit-exact"
    assert [s.name for s in sorted(children(root, trace), key=lambda s: s.start_time)] == [
        "sigroute.signals", "sigroute.decide", "sigroute.plugins", "sigroute.cache", "sigroute.answer"]
    assert not any(s.kind == SpanKind.CLIENT for s in trace)


def test_the_callers_traceparent_is_continued_and_passed_upstream(sim, gateway_factory, spans):
    gw = gateway_factory(traced_policy(sim), tracer_provider=spans.provider)
    r = gw.chat("hello", headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01",
                                  "tracestate": "vendor=abc"})
    assert r.status_code == 200
    root, trace = request_spans(spans, r.headers["x-sigroute-request-id"])
    assert format(root.context.trace_id, "032x") == CALLER_TRACE_ID
    assert format(root.parent.span_id, "016x") == CALLER_SPAN_ID and root.parent.is_remote

    sent = sim.http.get("/sim/last_headers/alpha").json()
    version, trace_id, parent_id, flags = sent["traceparent"].split("-")
    attempt = next(s for s in trace if s.kind == SpanKind.CLIENT)
    assert trace_id == CALLER_TRACE_ID
    assert parent_id == format(attempt.context.span_id, "016x")   # the upstream's parent is the attempt
    assert sent["tracestate"] == "vendor=abc"


@pytest.mark.parametrize("transport", ["aiohttp", "litellm", "anthropic"])
@pytest.mark.parametrize("stream", [False, True])
def test_every_transport_passes_the_trace_on(sim, gateway_factory, spans, transport, stream):
    """The direct transport is covered above; the others add the per-call headers their own way
    (the native Anthropic one to the simulated upstream's POST /v1/messages)."""
    policy = traced_policy(sim)
    options = {"tracer_provider": spans.provider}
    if transport == "litellm":
        policy["models"]["alpha"]["transport"] = "litellm"
    elif transport == "anthropic":   # a native Messages upstream: the simulated one's POST /v1/messages
        policy["models"]["alpha"].update(provider="anthropic/alpha", api_base=sim.url)
    else:
        from sigroute.gateway.upstream.aiohttp_transport import AiohttpTransport

        options["transports"] = {"openai": AiohttpTransport()}
    gw = gateway_factory(policy, **options)
    r = gw.chat("hello", stream=stream, headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"})
    assert r.status_code == 200
    root, trace = request_spans(spans, r.headers["x-sigroute-request-id"])
    attempt = next(s for s in trace if s.kind == SpanKind.CLIENT)
    sent = sim.http.get("/sim/last_headers/alpha").json()["traceparent"]
    assert sent.split("-")[1:3] == [CALLER_TRACE_ID, format(attempt.context.span_id, "016x")]


def test_without_a_caller_traceparent_the_upstream_gets_the_gateways(sim, gateway_factory, spans):
    gw = gateway_factory(traced_policy(sim), tracer_provider=spans.provider)
    r = gw.chat("hello", stream=True)
    assert r.status_code == 200
    root, trace = request_spans(spans, r.headers["x-sigroute-request-id"])
    assert root.parent is None
    sent = sim.http.get("/sim/last_headers/alpha").json()
    assert sent["traceparent"].split("-")[1] == format(root.context.trace_id, "032x")


def test_a_caller_that_does_not_sample_gets_no_spans_but_its_context_goes_upstream(sim, gateway_factory, spans):
    gw = gateway_factory(traced_policy(sim), tracer_provider=spans.provider)
    r = gw.chat("hello", headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-00"})
    assert r.status_code == 200
    assert spans.get_finished_spans() == ()
    version, trace_id, parent_id, flags = sim.http.get("/sim/last_headers/alpha").json()["traceparent"].split("-")
    assert (trace_id, flags) == (CALLER_TRACE_ID, "00")


def test_tracing_off_records_no_spans(sim, gateway_factory, spans):
    gw = gateway_factory(base_policy(sim), tracer_provider=spans.provider)   # no server.tracing: off
    r = gw.chat("hello", headers={"traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01"})
    assert r.status_code == 200
    assert spans.get_finished_spans() == ()
    assert "traceparent" not in sim.http.get("/sim/last_headers/alpha").json()


OFF_PROBE = textwrap.dedent("""
    import sys
    import httpx
    from sigroute.gateway.app import create_app
    from sigroute.gateway.serving import ServerThread
    from sigroute.policies.schema import Policy
    from sigroute.gateway import tracing

    policy = Policy.model_validate({"version": 1, "decisions": [{"name": "default", "models": ["m"]}],
        "models": {"m": {"provider": "openai/alpha", "api_base": sys.argv[1]}}})
    with ServerThread(create_app(policy)) as server:
        for stream in (False, True):
            r = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={"model": "auto",
                "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text
    print(sorted({m.split(".")[1] for m in sys.modules if m.startswith("opentelemetry.")}))
    print(tracing._otel is None)
""")


def test_tracing_off_imports_no_opentelemetry_sdk(sim, tmp_path):
    """FastAPI itself imports the OpenTelemetry API when it is installed; the request path with
    tracing off imports nothing more: not the SDK, not the exporter, not our own tracing names."""
    probe = tmp_path / "probe.py"
    probe.write_text(OFF_PROBE)
    done = subprocess.run([sys.executable, str(probe), sim.api_base], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    packages, untouched = done.stdout.strip().splitlines()[-2:]
    assert "sdk" not in packages and "exporter" not in packages, packages
    assert untouched == "True"


# --------------------------------------------------------------------------------------------
# OTLP/HTTP export to a real receiver


class _Receiver(http.server.ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), _ReceiverHandler)
        self.requests: list[tuple[dict, bytes]] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.headers.get("content-encoding") == "gzip":
            body = gzip.decompress(body)
        self.server.requests.append(({k.lower(): v for k, v in self.headers.items()} | {"path": self.path}, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = _Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_spans_are_exported_over_otlp_http(sim, gateway_factory, receiver):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    policy = base_policy(sim)
    policy["server"]["tracing"] = {"enabled": True, "otlp_endpoint": receiver.url, "service_name": "sigroute-test",
                                   "headers": {"x-backend-key": "k1"}}
    gw = gateway_factory(policy)
    r = gw.chat("hello")
    assert r.status_code == 200
    assert gw.app.state.runtime.pipeline.tracing.provider.force_flush(10_000)

    exported, services = [], set()
    for headers, body in receiver.requests:
        assert headers["path"] == "/v1/traces" and headers["content-type"] == "application/x-protobuf"
        assert headers["x-backend-key"] == "k1"
        export = ExportTraceServiceRequest.FromString(body)
        for resource_spans in export.resource_spans:
            services |= {a.value.string_value for a in resource_spans.resource.attributes if a.key == "service.name"}
            for scope in resource_spans.scope_spans:
                exported.extend(scope.spans)
    root = next(s for s in exported if any(a.key == "sigroute.request_id" and a.value.string_value
                                           == r.headers["x-sigroute-request-id"] for a in s.attributes)
                and s.kind == s.SPAN_KIND_SERVER)
    names = [s.name for s in exported if s.trace_id == root.trace_id]
    assert services == {"sigroute-test"}
    assert sorted(names) == sorted(["chat auto", *STEPS, "chat alpha", "sigroute.answer"])


# --------------------------------------------------------------------------------------------
# settings


def test_policy_keys_win_over_the_environment_and_the_environment_over_defaults():
    env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "from-env",
           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_SAMPLER_ARG": "0.25",
           "OTEL_EXPORTER_OTLP_HEADERS": "api-key=se%20cret,x-team=ops"}
    assert settings_from(Tracing(), {}) is None                                   # off by default
    s = settings_from(Tracing(), env)                                             # on, all from the environment
    assert (s.service_name, s.endpoint, s.sample_ratio) == ("from-env", "http://collector:4318/v1/traces", 0.25)
    assert s.headers == (("api-key", "se cret"), ("x-team", "ops"))
    s = settings_from(Tracing(service_name="gw", otlp_endpoint="https://otel.example/v1/traces", sample_ratio=1,
                              headers={"Auth": "x"}), env)
    assert (s.service_name, s.endpoint, s.sample_ratio, s.headers) == (
        "gw", "https://otel.example/v1/traces", 1.0, (("auth", "x"),))
    assert settings_from(Tracing(enabled=False), env) is None                     # the policy says no
    assert settings_from(Tracing(enabled=True), {"OTEL_SDK_DISABLED": "true"}) is None
    s = settings_from(Tracing(enabled=True), {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/custom"})
    assert (s.service_name, s.endpoint, s.sample_ratio) == ("sigroute", "http://c:4318/custom", 1.0)
    with pytest.raises(ValueError, match="OTEL_TRACES_SAMPLER_ARG"):
        settings_from(Tracing(enabled=True), {"OTEL_TRACES_SAMPLER_ARG": "lots"})


@pytest.mark.parametrize("tracing, key", [
    ({"sample_ratio": 2}, "server.tracing.sample_ratio"),
    ({"otlp_endpoint": "collector:4318"}, "server.tracing.otlp_endpoint"),
    ({"headers": {"bad name": "x"}}, "server.tracing.headers"),
    ({"enabled": True, "exporter": "zipkin"}, "server.tracing.exporter"),
])
def test_bad_tracing_settings_name_their_key(tmp_path, tracing, key):
    import yaml

    from sigroute.policies.loader import PolicyError, load_policy

    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "models": {"m": {"provider": "openai/m", "api_base": "http://x/v1"}},
                                    "decisions": [{"name": "default", "models": ["m"]}],
                                    "server": {"tracing": tracing}}))
    with pytest.raises(PolicyError) as caught:
        load_policy(str(path))
    assert key in str(caught.value)


def test_sample_ratio_zero_exports_nothing_but_passes_the_context_on(sim, gateway_factory, receiver):
    policy = base_policy(sim)
    policy["server"]["tracing"] = {"enabled": True, "otlp_endpoint": receiver.url, "sample_ratio": 0}
    gw = gateway_factory(policy)
    assert gw.chat("hello").status_code == 200
    assert gw.app.state.runtime.pipeline.tracing.provider.force_flush(10_000)
    assert receiver.requests == []
    flags = sim.http.get("/sim/last_headers/alpha").json()["traceparent"].split("-")[3]
    assert int(flags, 16) & 1 == 0   # W3C trace flags: not sampled


def test_a_reload_with_the_same_tracing_keeps_the_exporter(sim, gateway_factory, receiver, tmp_path):
    import yaml

    from sigroute.policies.schema import Policy

    policy = base_policy(sim)
    policy["server"]["tracing"] = {"enabled": True, "otlp_endpoint": receiver.url}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    gw = gateway_factory(Policy.model_validate(policy), policy_path=str(path), retire_after_s=0.0)
    before = gw.app.state.runtime.pipeline
    assert gw.http.post("/v1/admin/reload").status_code == 200
    after = gw.app.state.runtime.pipeline
    assert after is not before and after.tracing is before.tracing
    deadline = time.monotonic() + 10
    while before in gw.app.state.runtime._retired and time.monotonic() < deadline:
        time.sleep(0.05)   # the old pipeline is closed once idle: the provider it shares must stay up
    assert before not in gw.app.state.runtime._retired
    r = gw.chat("hello")
    assert r.status_code == 200
    assert after.tracing.provider.force_flush(10_000)
    assert any(r.headers["x-sigroute-request-id"].encode() in body for _, body in receiver.requests)


def test_the_tracing_benchmark_runs(tmp_path):
    from benchmarks.tracing import main

    out = tmp_path / "tracing.json"
    main(["--rounds", "1", "--requests", "20", "--json", str(out)])
    summary = json.loads(out.read_text())["summary"]
    assert {"off_us_per_request", "on_us_per_request", "on_otlp_us_per_request", "on_minus_off_us"} <= set(summary)


def test_a_stream_broken_upstream_marks_the_answer_and_request_spans_error(fault_upstream, gateway_factory, spans):
    from benchmarks.chaos_upstream import Fault
    from tests.conftest import fault_policy

    fault_upstream.server.faults["primary"] = Fault("cut", after_chunks=2, chunk_gap_s=0.01)
    policy = fault_policy(fault_upstream, ["primary"])
    policy["server"] = {"tracing": {"enabled": True}}
    gw = gateway_factory(policy, tracer_provider=spans.provider)
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi chaos-id:t1"}]}
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as r:
        request_id = r.headers["x-sigroute-request-id"]
        text = "".join(r.iter_lines())
    assert "stream_broken" in text
    root, trace = request_spans(spans, request_id)
    answer = next(s for s in children(root, trace) if s.name == "sigroute.answer")
    for span in (root, answer):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == span.attributes["sigroute.status"] == "stream_broken"
    attempt = next(s for s in trace if s.kind == SpanKind.CLIENT)
    assert attempt.status.status_code == StatusCode.UNSET   # its first chunk came: the attempt answered
