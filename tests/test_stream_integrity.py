"""What an upstream sends that a client cannot read is never relayed, and no stream ends silently.

An answer (whole, or one streamed event) that is not valid UTF-8, or is JSON of the wrong shape (an
array instead of an object, ``choices`` not a list of objects, a choice without a message, usage a
string; a whole answer without any choice), is an upstream protocol error: before the first chunk
the gateway retries and falls back, after it the stream ends with an error event. A failure inside the gateway while relaying a stream
(here: a stream filter that raises) also ends the stream with an error event and a properly ended
HTTP body, never a connection cut mid-body.

The upstream is `benchmarks.chaos_upstream.FaultServer`, a raw-socket HTTP server on loopback.
"""

from __future__ import annotations

import httpx
import orjson
import pytest

from benchmarks.chaos_upstream import Fault, FaultServerThread, answer_text
from conftest import fault_policy

BROKEN = ["bad_utf8", "not_object", "bad_shape"]


@pytest.fixture
def upstream(fault_upstream: FaultServerThread) -> FaultServerThread:
    return fault_upstream


policy = fault_policy


def read_stream(gw, nonce: str) -> tuple[list, bool]:
    """(the SSE data payloads, whether the HTTP body ended properly) of a streamed request."""
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": f"hi chaos-id:{nonce}"}]}
    events, ended = [], False
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        try:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        data = line[6:]
                        events.append(data if data == "[DONE]" else orjson.loads(data))
            ended = True
        except httpx.RemoteProtocolError:   # the body was cut off
            pass
    return events, ended


def content(events: list) -> str:
    return "".join((c.get("delta") or {}).get("content") or "" for e in events if isinstance(e, dict)
                   for c in e.get("choices") or ())


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_first_event_falls_back_before_anything_is_sent(upstream, gateway_factory, kind):
    upstream.server.faults["primary"] = Fault(kind, after_chunks=0)
    gw = gateway_factory(policy(upstream, ["primary", "spare"]))
    events, ended = read_stream(gw, "s1")
    assert ended and events[-1] == "[DONE]"
    assert content(events) == answer_text("spare", "s1")
    assert {e["model"] for e in events if isinstance(e, dict)} == {"spare"}
    assert upstream.calls("primary") == 1


@pytest.mark.parametrize("kind", BROKEN)
def test_a_broken_event_mid_stream_ends_it_with_an_error_event(upstream, gateway_factory, kind):
    upstream.server.faults["primary"] = Fault(kind, after_chunks=2, chunk_gap_s=0.05)
    gw = gateway_factory(policy(upstream, ["primary", "spare"]))
    events, ended = read_stream(gw, "s2")
    assert ended, "the HTTP body was cut off instead of ending with an error event"
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "stream_broken"
    # what was relayed is what the model really sent before the broken event, unaltered
    assert answer_text("primary", "s2").startswith(content(events)) and content(events)
    assert "\ufffd" not in content(events)
    assert upstream.calls("spare") == 0  # no switch of model after bytes were sent


@pytest.mark.parametrize("kind", BROKEN + ["no_choices"])
def test_a_broken_whole_answer_is_not_relayed(upstream, gateway_factory, kind):
    upstream.server.faults["primary"] = Fault(kind)
    gw = gateway_factory(policy(upstream, ["primary", "spare"]))
    r = gw.chat("hi chaos-id:s3")
    assert r.status_code == 200 and r.headers["x-sigroute-model"] == "spare"
    assert r.json()["choices"][0]["message"]["content"] == answer_text("spare", "s3")
    alone = gateway_factory(policy(upstream, ["primary"]))
    r = alone.chat("hi chaos-id:s4")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_failed"


class ExplodingFilter:
    """A stream filter (the plugins' content filter protocol) that fails on its second piece."""

    def __init__(self):
        self.seen = 0

    def feed(self, index: int, text: str) -> str:
        self.seen += 1
        if self.seen == 2:
            raise RuntimeError("injected stream filter failure")
        return text

    def flush(self, index: int) -> str:
        return ""

    def pending_indices(self) -> list[int]:
        return []


def test_a_failure_inside_the_gateway_mid_stream_ends_with_an_error_event(upstream, gateway_factory, monkeypatch):
    gw = gateway_factory(policy(upstream, ["primary"]))
    monkeypatch.setattr(gw.app.state.runtime.pipeline.plugins, "filters", lambda decision, state: [ExplodingFilter()])
    events, ended = read_stream(gw, "s5")
    assert ended, "the HTTP body was cut off instead of ending with an error event"
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "internal_error"
    assert "incomplete" in events[-1]["error"]["message"]
    metrics = gw.http.get("/metrics").text
    assert 'sigroute_errors_total{code="internal_error",status="500"} 1.0' in metrics
