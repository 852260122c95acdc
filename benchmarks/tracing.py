"""What do OpenTelemetry traces cost per request, off and on?

In one process, the pipeline of `benchmarks.overhead`'s heuristic-only policy (every signal
evaluated, the default decision, one model) handles the same non-streamed request over and over
(`Pipeline.handle`, from the request's bytes to its encoded answer). The upstream is an
in-process transport that returns a canned chat completion at once, so what is timed is
sigroute's own work, not the network. Three variants:

  off        the policy's default (no `server.tracing`): requests get `NO_TRACE`
  on         tracing on, every request sampled: SDK spans ended into a batch span processor whose
             exporter drops them (span creation, attributes, traceparent injection, batching; no
             protobuf encoding or network)
  on_otlp    as `on`, exporting to an OTLP/HTTP receiver on loopback (the batch exporter's thread
             encodes protobuf and posts it: the whole cost, spent off the event loop)

Rounds interleave the variants (each round runs a batch of each, the order rotating), so drift in
machine speed hits all alike. Per variant: the median over rounds of the batch's mean
microseconds per request; ``on_minus_off_us`` is the median of the per-round differences.
Without `opentelemetry-sdk` installed only `off` runs.

    python -m benchmarks.tracing                  # ~30 s
    python -m benchmarks.tracing --quick          # ~10 s

The last line printed is the summary as one JSON line; ``--json`` writes it with every round.
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

ANSWER = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "bench",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "Windy, bright harbour."},
                       "finish_reason": "stop"}],
          "usage": {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}}


class CannedTransport:
    """Answers every call at once with the same chat completion."""

    async def complete(self, target, payload, headers=None):
        return dict(ANSWER)

    def stream(self, target, payload, headers=None):
        raise NotImplementedError("the benchmark sends whole requests only")

    async def aclose(self):
        pass


class _Sink(http.server.ThreadingHTTPServer):
    """An OTLP/HTTP receiver that accepts and drops what it is sent."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


def _dropping_provider():
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    return provider


def build_pipelines(sink_url: str | None) -> dict[str, Any]:
    from benchmarks.overhead import bench_policy
    from sigroute.gateway.metrics import Metrics
    from sigroute.gateway.pipeline import Pipeline
    from sigroute.policies.schema import Policy

    base = bench_policy("http://127.0.0.1:9/v1")
    base.setdefault("server", {})
    pipelines = {"off": Pipeline(Policy.model_validate(base), Metrics(), transports={"openai": CannedTransport()},
                                 environ={})}
    if sink_url is not None:
        on = dict(base, server={"tracing": {"enabled": True}})
        pipelines["on"] = Pipeline(Policy.model_validate(on), Metrics(), transports={"openai": CannedTransport()},
                                   environ={}, tracer_provider=_dropping_provider())
        otlp = dict(base, server={"tracing": {"enabled": True, "otlp_endpoint": sink_url}})
        pipelines["on_otlp"] = Pipeline(Policy.model_validate(otlp), Metrics(),
                                        transports={"openai": CannedTransport()}, environ={})
    return pipelines


async def batch(pipeline, raw: bytes, headers: dict[str, str], n: int) -> float:
    """Mean microseconds per request over `n` requests."""
    started = time.perf_counter()
    for _ in range(n):
        answer = await pipeline.handle(raw, headers, time.perf_counter())
        assert answer.status == 200
    return (time.perf_counter() - started) / n * 1e6


async def run(rounds: int, requests: int) -> dict[str, Any]:
    from benchmarks.overhead import request_body

    try:
        import opentelemetry.sdk  # noqa: F401
        have_sdk = True
    except ImportError:
        have_sdk = False
    sink = _Sink() if have_sdk else None
    if sink is not None:
        threading.Thread(target=sink.serve_forever, daemon=True).start()
    pipelines = build_pipelines(sink.url if sink is not None else None)
    raw = request_body("auto", stream=False)
    headers = {"content-type": "application/json"}
    names = list(pipelines)
    for name in names:   # warm-up
        await batch(pipelines[name], raw, headers, max(50, requests // 10))
    per_round: list[dict[str, float]] = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        per_round.append({name: await batch(pipelines[name], raw, headers, requests) for name in order})
    for pipeline in pipelines.values():
        await pipeline.aclose()
    if sink is not None:
        sink.shutdown()
    summary: dict[str, Any] = {f"{name}_us_per_request": round(statistics.median(r[name] for r in per_round), 2)
                               for name in names}
    for name in names[1:]:
        summary[f"{name}_minus_off_us"] = round(statistics.median(r[name] - r["off"] for r in per_round), 2)
    summary.update(rounds=rounds, requests_per_batch=requests)
    return {"summary": summary, "rounds": per_round}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10; quick: 4)")
    parser.add_argument("--requests", type=int, default=None, help="requests per batch (default 1000; quick: 300)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default="results/tracing.json", help="where to write the full result")
    args = parser.parse_args(argv)
    rounds = args.rounds or (4 if args.quick else 10)
    requests = args.requests or (300 if args.quick else 1000)
    result = asyncio.run(run(rounds, requests))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(json.dumps(result["summary"]), file=sys.stdout)


if __name__ == "__main__":
    main()
