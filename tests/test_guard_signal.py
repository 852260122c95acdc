"""The `guard` signal: a guard model's verdict decides, against the simulated upstream playing
Llama Guard (its model `llama-guard` answers "safe" unless a prompt carries
``[[sim:reply:unsafe\\nS1]]`` or another verdict), through a real gateway on loopback and the
official openai client."""

from __future__ import annotations

import copy
import textwrap
from typing import Any, Iterator

import httpx
import pytest

from sigroute.gateway.serving import ServerThread
from sigroute.policies.loader import PolicyError, load_policy_text
from sigroute.signals.guard import MalformedVerdict, VerdictCache, Verdict, read_llama_guard, read_prompt_guard, read_score

GUARD_SIM = {
    "seed": 3,
    "models": {
        "chat": {"ttft_ms": 1, "completion_tokens": 6},
        "safe-chat": {"ttft_ms": 1, "completion_tokens": 6},
        "llama-guard": {"ttft_ms": 1, "reply": "safe"},
    },
}
REFUSAL = "Blocked by the guard."
UNSAFE = "how do I hurt someone [[sim:reply:unsafe\\nS1]]"


@pytest.fixture(scope="module")
def guard_sim_server() -> Iterator[ServerThread]:
    from sigroute.gateway.sim import create_sim_app

    with ServerThread(create_sim_app(GUARD_SIM)) as server:
        yield server


class GuardSim:
    def __init__(self, server: ServerThread):
        self.api_base = server.url + "/v1"
        self.http = httpx.Client(base_url=server.url, timeout=10)

    def guard_calls(self) -> int:
        return self.http.get("/sim/stats").json()["llama-guard"]["calls"]

    def set_guard(self, **settings: Any) -> None:
        self.http.put("/sim/models/llama-guard", json=settings).raise_for_status()

    def guard_faults(self, **faults: float) -> None:
        self.http.put("/sim/models/llama-guard/faults", json=faults).raise_for_status()


@pytest.fixture
def guard_sim(guard_sim_server) -> Iterator[GuardSim]:
    sim = GuardSim(guard_sim_server)
    sim.http.post("/sim/reset", params={"config": "true"}).raise_for_status()
    sim.guard_faults()
    yield sim
    sim.http.post("/sim/reset", params={"config": "true"}).raise_for_status()
    sim.guard_faults()
    sim.http.close()


def guard_policy(sim: GuardSim, action: str = "block", **guard: Any) -> dict[str, Any]:
    """chat answers by default; an unsafe verdict blocks with a refusal (`action: block`) or goes to
    safe-chat (`action: route`)."""
    options = {"model": "llama-guard", "format": "llama_guard", "timeout": "2s", "on_error": "open"}
    options.update(guard)
    unsafe = {"name": "unsafe", "priority": 100, "rules": "guard:llamaguard", "models": ["safe-chat"]}
    if action == "block":
        unsafe["plugins"] = [{"fast_response": {"message": REFUSAL}}]
    return {
        "version": 1,
        "models": {name: {"provider": f"openai/{name}", "api_base": sim.api_base} for name in GUARD_SIM["models"]},
        "signals": {"guard": {"llamaguard": options}},
        "decisions": [unsafe, {"name": "default", "models": ["chat"]}],
        "upstream": {"retries": 0, "backoff_s": 0.0, "breaker": {"failure_threshold": 100, "cooldown_s": 1}},
        "server": {"open_without_auth": ["admin", "explain"]},
    }


def ask(gateway, text: str):
    response = gateway.client().chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}])
    return response.headers, response.parse()


def guard_metric(gateway, outcome: str) -> float:
    for line in gateway.http.get("/metrics").text.splitlines():
        if line.startswith("sigroute_guard_requests_total{") and f'outcome="{outcome}"' in line \
                and 'signal="guard:llamaguard"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# --------------------------------------------------------------------------------------------
# through the gateway


def test_unsafe_verdict_blocks_with_the_refusal(guard_sim, gateway_factory):
    gateway = gateway_factory(guard_policy(guard_sim))
    headers, answer = ask(gateway, UNSAFE)
    assert headers["x-sigroute-decision"] == "unsafe"
    assert answer.choices[0].message.content == REFUSAL
    assert guard_sim.guard_calls() == 1
    assert guard_metric(gateway, "unsafe") == 1


def test_guard_sees_the_user_text_as_a_chat_conversation(guard_sim, gateway_factory):
    gateway = gateway_factory(guard_policy(guard_sim, input="conversation"))
    ask_body = {"model": "auto", "messages": [
        {"role": "system", "content": "be nice"}, {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"}, {"role": "user", "content": "second question"}]}
    assert gateway.http.post("/v1/chat/completions", json=ask_body).status_code == 200
    sent = guard_sim.http.get("/sim/last/llama-guard").json()
    assert sent["messages"] == [{"role": "user", "content": "first question"},
                                {"role": "assistant", "content": "first answer"},
                                {"role": "user", "content": "second question"}]


def test_unsafe_verdict_routes_to_the_safe_model_and_shows_categories(guard_sim, gateway_factory):
    gateway = gateway_factory(guard_policy(guard_sim, action="route"))
    headers, answer = ask(gateway, UNSAFE)
    assert headers["x-sigroute-decision"] == "unsafe"
    assert headers["x-sigroute-model"] == "safe-chat"
    explained = gateway.http.post("/v1/route/explain", json={
        "model": "auto", "messages": [{"role": "user", "content": "other words [[sim:reply:unsafe\\nS1,S10]]"}]}).json()
    text = str(explained)
    assert "'categories': ['S1', 'S10']" in text, text


def test_safe_verdict_routes_normally(guard_sim, gateway_factory):
    gateway = gateway_factory(guard_policy(guard_sim))
    headers, answer = ask(gateway, "what is the boiling point of water?")
    assert headers["x-sigroute-decision"] == "default"
    assert headers["x-sigroute-model"] == "chat"
    assert answer.choices[0].message.content != REFUSAL
    assert guard_sim.guard_calls() == 1
    assert guard_metric(gateway, "safe") == 1


@pytest.mark.parametrize("on_error, decision", [("closed", "unsafe"), ("open", "default")])
def test_a_guard_that_times_out_follows_on_error(guard_sim, gateway_factory, on_error, decision):
    guard_sim.set_guard(ttft_ms=5000)          # far beyond the signal's timeout
    gateway = gateway_factory(guard_policy(guard_sim, timeout="200ms", on_error=on_error))
    headers, _ = ask(gateway, "a question while the guard hangs")
    assert headers["x-sigroute-decision"] == decision
    assert guard_metric(gateway, "timeout") == 1


@pytest.mark.parametrize("on_error, decision", [("closed", "unsafe"), ("open", "default")])
def test_a_guard_answering_500_follows_on_error(guard_sim, gateway_factory, on_error, decision):
    guard_sim.guard_faults(error_rate=1.0)
    gateway = gateway_factory(guard_policy(guard_sim, on_error=on_error))
    headers, _ = ask(gateway, "a question while the guard fails")
    assert headers["x-sigroute-decision"] == decision
    assert guard_metric(gateway, "error") == 1


def test_a_malformed_verdict_follows_on_error_and_is_counted(guard_sim, gateway_factory):
    gateway = gateway_factory(guard_policy(guard_sim, on_error="closed"))
    headers, answer = ask(gateway, "hello [[sim:reply:I would rather not say]]")
    assert headers["x-sigroute-decision"] == "unsafe"
    assert answer.choices[0].message.content == REFUSAL
    assert guard_metric(gateway, "malformed") == 1
    assert guard_metric(gateway, "unsafe") == 0


def test_the_same_prompt_twice_calls_the_guard_once(guard_sim, gateway_factory):
    gateway = gateway_factory(guard_policy(guard_sim))
    for _ in range(2):
        headers, _ = ask(gateway, UNSAFE)
        assert headers["x-sigroute-decision"] == "unsafe"
    assert guard_sim.guard_calls() == 1
    assert guard_metric(gateway, "cached") == 1
    ask(gateway, "a different prompt")
    assert guard_sim.guard_calls() == 2


def test_failures_are_not_cached(guard_sim, gateway_factory):
    guard_sim.guard_faults(error_rate=1.0)
    gateway = gateway_factory(guard_policy(guard_sim, on_error="open"))
    ask(gateway, UNSAFE)
    guard_sim.guard_faults()
    headers, _ = ask(gateway, UNSAFE)
    assert headers["x-sigroute-decision"] == "unsafe"
    assert guard_sim.guard_calls() == 2


def test_a_cache_of_size_zero_calls_every_time(guard_sim, gateway_factory):
    gateway = gateway_factory(guard_policy(guard_sim, cache={"size": 0}))
    ask(gateway, UNSAFE)
    ask(gateway, UNSAFE)
    assert guard_sim.guard_calls() == 2


# --------------------------------------------------------------------------------------------
# reading verdicts, the cache


def test_llama_guard_verdicts_are_read_robustly():
    assert read_llama_guard("safe") == Verdict(False, 0.0)
    assert read_llama_guard("\n\n Safe.\n") == Verdict(False, 0.0)
    assert read_llama_guard("unsafe\nS1,S10") == Verdict(True, 1.0, ("S1", "S10"))
    assert read_llama_guard("UNSAFE\ns2, S2 s14") == Verdict(True, 1.0, ("S2", "S14"))
    for junk in ("", "   ", "I think it is fine", "maybe unsafe"):
        with pytest.raises(MalformedVerdict):
            read_llama_guard(junk)


def test_prompt_guard_and_score_verdicts():
    assert read_prompt_guard("JAILBREAK 0.97", 0.5) == Verdict(True, 0.97, (), "JAILBREAK")
    assert read_prompt_guard('{"label": "INJECTION", "score": 0.4}', 0.5) == Verdict(False, 0.4, (), "INJECTION")
    assert read_prompt_guard("BENIGN", 0.5).unsafe is False
    assert read_score("0.81", 0.8).unsafe and not read_score("score: 0.79", 0.8).unsafe
    for reader, junk in ((read_prompt_guard, "hello"), (read_prompt_guard, "{not json"), (read_score, "high"),
                         (read_score, "7.5")):
        with pytest.raises(MalformedVerdict):
            reader(junk, 0.5)


def test_verdict_cache_is_lru_with_ttl():
    now = [0.0]
    cache = VerdictCache(2, 10.0, clock=lambda: now[0])
    cache.put("a", Verdict(True, 1.0))
    cache.put("b", Verdict(False, 0.0))
    assert cache.get("a") is not None      # a is now the most recent
    cache.put("c", Verdict(False, 0.0))    # evicts b
    assert cache.get("b") is None and cache.get("a") is not None
    now[0] = 10.0
    assert cache.get("a") is None and len(cache) == 1


# --------------------------------------------------------------------------------------------
# policy errors


POLICY = textwrap.dedent("""\
    version: 1
    models:
      chat: {provider: openai/chat, api_base: http://127.0.0.1:9/v1}
    signals:
      guard:
        lg:
          model: GUARD
          format: FORMAT
    decisions:
      - name: unsafe
        rules: guard:lg
        models: [chat]
      - name: default
        models: [chat]
    """)


def test_unknown_guard_model_names_file_line_and_key():
    text = POLICY.replace("GUARD", "llama-guard").replace("FORMAT", "llama_guard")
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "policy.yaml")
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == ("policy.yaml", 7, "signals.guard.lg.model"), str(problem)
    assert "llama-guard" in problem.message and "not defined under 'models'" in problem.message


def test_bad_guard_format_names_file_line_and_key():
    text = POLICY.replace("GUARD", "chat").replace("FORMAT", "llamaguard")
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "policy.yaml")
    (problem,) = info.value.problems
    assert (problem.file, problem.line, problem.path) == ("policy.yaml", 8, "signals.guard.lg.format"), str(problem)
    assert "llama_guard" in problem.message


def test_a_valid_guard_policy_loads():
    policy = load_policy_text(POLICY.replace("GUARD", "chat").replace("FORMAT", "prompt_guard"), "policy.yaml")
    assert policy.signals.guard["lg"].format == "prompt_guard"
    assert copy.deepcopy(policy.signals.guard["lg"].timeout) == 2.0


# --------------------------------------------------------------------------------------------
# the engine runs the guard call concurrently with the embedding


def test_the_guard_call_overlaps_the_embedding():
    """The embedding step here can finish only once the guard call has begun: an engine that
    calls the guard after the embedding (serially) fails the embedding and this test."""
    import asyncio

    import numpy as np

    from sigroute.policies.schema import Policy
    from sigroute.signals.base import Signal, SignalResult
    from sigroute.signals.context import RequestContext
    from sigroute.signals.engine import SignalEngine
    from sigroute.signals.guard import Guard

    class NeedsEmbedding(Signal):
        type = "embedding"
        needs_embedding = True

        def evaluate(self, ctx):
            return SignalResult(True, 1.0, {"dims": int(ctx.embedding_vector.shape[0])})

    async def scenario():
        guard_began = asyncio.Event()

        class Backend:
            async def complete(self, model, messages, max_tokens, request_id, trace=None):
                guard_began.set()
                return "unsafe\nS2"

            def observe(self, signal, outcome, seconds):
                pass

        class Embedder:
            input = "last_user"

            async def embed(self, texts):
                await asyncio.wait_for(guard_began.wait(), 5.0)
                return [np.ones(4)] * len(texts)

        policy = Policy.model_validate({
            "models": {"chat": {"provider": "openai/chat", "api_base": "http://127.0.0.1:9/v1"}},
            "signals": {"guard": {"g": {"model": "chat"}}, "embedding": {"e": {"references": ["x"]}}},
            "decisions": [{"name": "both", "rules": {"all": ["guard:g", "embedding:e"]}, "models": ["chat"]},
                          {"name": "default", "models": ["chat"]}]})
        engine = SignalEngine(policy, types={"guard": Guard, "embedding": NeedsEmbedding}, guard_backend=Backend())
        ctx = RequestContext.from_body("r1", {"messages": [{"role": "user", "content": "hi"}]}, embedder=Embedder())
        return await engine.evaluate(ctx)

    results = asyncio.run(scenario())
    assert results["embedding:e"].value == {"dims": 4}
    assert results["guard:g"].matched and results["guard:g"].value["categories"] == ["S2"]


def test_with_tracing_the_guard_call_is_a_client_span_of_the_request(guard_sim, gateway_factory):
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        policy = guard_policy(guard_sim)
        policy["server"]["tracing"] = {"enabled": True}
        gateway = gateway_factory(policy, tracer_provider=provider)
        headers, _ = ask(gateway, "a traced question")
        request_id = headers["x-sigroute-request-id"]
        root = next(s for s in exporter.get_finished_spans()
                    if s.kind == SpanKind.SERVER and s.attributes.get("sigroute.request_id") == request_id)
        clients = [s for s in exporter.get_finished_spans()
                   if s.context.trace_id == root.context.trace_id and s.kind == SpanKind.CLIENT]
        assert sorted(s.name for s in clients) == ["chat chat", "chat llama-guard"]
        # the guard model received the request's trace context
        sent = guard_sim.http.get("/sim/last_headers/llama-guard").json()
        assert format(root.context.trace_id, "032x") in sent["traceparent"]
    finally:
        provider.shutdown()
