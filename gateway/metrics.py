"""Prometheus metrics of one gateway process (`GET /metrics`).

Labels carry policy names (decisions, models, entrypoints), tenants and error kinds — never
prompt text, answers or anything a PII plugin redacted.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

# the states of a model's circuit breaker (`gateway.upstream.breaker.CircuitBreaker.state`), one
# series each in `sigroute_breaker_state`
BREAKER_STATES = ("closed", "open", "half_open", "rate_limited")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("sigroute_requests_total", "Requests answered, by API surface "
                                "(chat.completions, messages, responses)",
                                ["api", "entrypoint", "decision", "model", "status"], registry=r)
        self.latency = Histogram("sigroute_request_seconds", "Time to the full answer (streams: to the last byte)",
                                 ["decision"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("sigroute_time_to_first_token_seconds", "Time to the first streamed byte",
                              ["decision"], buckets=LATENCY_BUCKETS, registry=r)
        self.overhead = Histogram("sigroute_overhead_seconds", "Time spent in sigroute itself, upstream excluded",
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.decisions = Counter("sigroute_decisions_total", "Requests per winning decision",
                                 ["entrypoint", "decision"], registry=r)
        self.selected = Counter("sigroute_selected_model_total", "Models picked by selection",
                                ["decision", "model"], registry=r)
        self.energy_joules = Counter("sigroute_energy_joules_total",
                                     "Declared energy of the answers served (models' `energy:` × usage), joules",
                                     ["model"], registry=r)
        self.upstream_errors = Counter("sigroute_upstream_errors_total", "Failed upstream attempts",
                                       ["model", "kind"], registry=r)
        self.fallbacks = Counter("sigroute_fallbacks_total", "Moves to the next candidate after a failure",
                                 ["from_model", "to_model"], registry=r)
        self.breakers_opened = Counter("sigroute_breaker_opened_total", "Circuit-open episodes (a failed trial within one is not counted again)", ["model"], registry=r)
        self.breaker_open = Gauge("sigroute_breaker_open", "1 while a model's circuit is open (0 again once the "
                                  "cooldown is over: half-open, not yet closed)", ["model"], registry=r)
        self.breakers_closed = Counter("sigroute_breaker_closed_total",
                                       "Circuit-open episodes that ended: a half-open trial succeeded", ["model"],
                                       registry=r)
        self.breaker_state = Gauge("sigroute_breaker_state",
                                   "A model's circuit as of this scrape: 1 for its state, 0 for the others. closed; "
                                   "open (cooldown running); half_open (cooldown over, the next call is the trial); "
                                   "rate_limited (held back by its upstream's 429, circuit not open)",
                                   ["model", "state"], registry=r)
        self._breaker_models: set[str] = set()  # models whose breaker series are shown
        self.rate_limited = Counter("sigroute_rate_limited_total", "Requests refused by rate limits",
                                    ["tenant"], registry=r)
        self.rate_limit_store_errors = Counter(
            "sigroute_rate_limit_store_errors_total", "Rate-limit checks the shared store (Redis) could not answer, "
            "by what server.rate_limit_store_failure made of them: allowed (open) or refused (closed); unsettled: "
            "a token reservation that could not be settled with the answer's real usage",
            ["outcome"], registry=r)
        self.errors = Counter("sigroute_errors_total", "Requests answered with an error", ["status", "code"],
                              registry=r)
        self.stream_breaks = Counter("sigroute_stream_breaks_total", "Streams that broke after bytes were sent",
                                     ["model"], registry=r)
        self.client_disconnects = Counter("sigroute_client_disconnects_total",
                                          "Requests whose caller went away before the answer", registry=r)
        self.encoder_calls = Gauge("sigroute_encoder_calls", "Batched encoder calls (forward passes) so far", registry=r)
        self.encoder_texts = Gauge("sigroute_encoder_texts", "Texts embedded so far", registry=r)
        self.encoder_seconds = Gauge("sigroute_encoder_seconds", "Time spent in encoder forward passes so far",
                                     registry=r)
        self.signal_errors = Counter("sigroute_signal_errors_total", "Signals that failed and counted as unmatched",
                                     ["signal"], registry=r)
        self.guard_requests = Counter("sigroute_guard_requests_total",
                                      "Guard signal evaluations by outcome: safe, unsafe, cached, timeout, error, "
                                      "malformed (the last three follow the signal's on_error)",
                                      ["signal", "outcome"], registry=r)
        self.guard_seconds = Histogram("sigroute_guard_seconds", "Duration of guard model calls (cache hits excluded)",
                                       ["signal"], buckets=LATENCY_BUCKETS, registry=r)
        self.feedback = Counter("sigroute_feedback_total", "Quality feedback received, by outcome",
                                ["status"], registry=r)
        self.feedback_credits = Counter(
            "sigroute_feedback_credits_total", "Quality credits given to learners, by source (explicit, implicit, "
            "judge, shadow), implicit event (reask, dissatisfied, moved_on) and status (applied, replaced_implicit: "
            "explicit feedback replaced an earlier implicit credit)", ["source", "event", "status"], registry=r)
        self.implicit_feedback = Counter(
            "sigroute_implicit_feedback_total", "Follow-up turns read as implicit feedback, by outcome: credited, "
            "duplicate (already credited), explicit_first (explicit feedback wins), not_served (the answer it follows "
            "was not served to this user in the window), record_gone (its feedback window passed), not_learned, "
            "store_error", ["outcome"], registry=r)
        self.judge_requests = Counter(
            "sigroute_judge_requests_total", "Answers sampled for the judge model (feedback.judge), by outcome: "
            "credited, replaced_implicit (the verdict replaced an implicit credit), duplicate (a verdict was already "
            "recorded), explicit_first, record_gone, not_learned, "
            "shadow (a shadow answer judged), "
            "unparsed (no verdict in the judge's answer), error, timeout (the judge call failed), budget (the hourly "
            "budget was spent), rate (max_per_minute calls already started this minute), busy (max_concurrency calls already running), private (PII or a plugin: never sent)",
            ["outcome"], registry=r)
        self.shadow_requests = Counter(
            "sigroute_shadow_requests_total", "Requests sampled for shadow traffic (feedback.shadow), by outcome: "
            "credited (the unchosen model's answer was judged and credited), not_learned, judge_failed, error, "
            "timeout, budget, rate, busy, private, too_large, no_candidate", ["outcome"], registry=r)
        self.background_spend = Counter(
            "sigroute_feedback_spend_usd_total", "USD spent on background feedback calls, by kind (judge, shadow), "
            "from the models' declared prices and the tokens used", ["kind"], registry=r)
        self.background_spend_hour = Gauge(
            "sigroute_feedback_spend_last_hour_usd", "USD spent on background feedback calls in the last hour, by kind "
            "(compared with budget_usd_per_hour)", ["kind"], registry=r)
        self.bandit_store_errors = Counter("sigroute_bandit_store_errors_total",
                                           "Failed exchanges with the learning-state or pending-feedback store",
                                           ["operation"], registry=r)
        self.feedback_lost = Counter(
            "sigroute_feedback_lost_total",
            "Feedback that could not be recorded, by reason: store_unavailable (a feedback refused with 503 while "
            "the feedback store was unreachable; lost unless the caller retries), record_expired (an answer's "
            "pending record waited for the unreachable store past its feedback window: feedback for it gets 404), "
            "record_overflow (more records waited for the store than a gateway keeps), record_error (a pending "
            "record could not be stored at all)", ["reason"], registry=r)
        self.bandit_store_recoveries = Counter(
            "sigroute_bandit_store_recoveries_total",
            "Learning state the store no longer held as this replica saw it (Redis restarted empty, flushed, "
            "rolled back, or reset by an operator), by what this replica did: reseeded (restored it), joined "
            "(added its own flushes to another replica's restore), already, superseded (an operator's reset or "
            "import stands), empty, intact", ["outcome"], registry=r)
        self.bandit_store_up = Gauge("sigroute_bandit_store_up",
                                     "1 when the last exchange with the learning-state store succeeded", registry=r)
        self.bandit_store_up.set(1)
        self.plugin_actions = Counter("sigroute_plugin_actions_total",
                                      "What plugins did (block, reroute, warn, masked, redacted, changed, ...)",
                                      ["decision", "plugin", "action"], registry=r)
        self.cache_lookups = Counter(
            "sigroute_cache_lookups_total", "Cache lookups by result: hit_exact, hit_semantic, coalesced (waited for "
            "an identical request in flight), miss, rejected (similar entries the verifier refused), and why the "
            "cache was not used: bypass, stream, temperature, no_user, category_disabled",
            ["decision", "category", "result"], registry=r)
        self.cache_stores = Counter("sigroute_cache_stores_total",
                                    "Answers offered to the cache: stored, incomplete (error, truncated, broken "
                                    "stream: never stored), no_store (the caller said so), failed (store down)",
                                    ["category", "result"], registry=r)
        self.cache_evictions = Counter("sigroute_cache_evictions_total", "Entries evicted by a category's quota",
                                       ["category"], registry=r)
        self.cache_false_hits = Counter("sigroute_cache_false_hits_total",
                                        "Cached answers reported wrong through feedback (the entry is removed)",
                                        ["category"], registry=r)
        self.cache_relaxed = Counter("sigroute_cache_relaxed_total",
                                     "Lookups made with relaxed thresholds because the decision's models were saturated",
                                     ["decision"], registry=r)
        self.cache_entries = Gauge("sigroute_cache_entries", "Cached entries per category (refreshed periodically)",
                                   ["category"], registry=r)
        self.cache_store_up = Gauge("sigroute_cache_store_up",
                                    "1 when the cache's document store answered its last maintenance call", registry=r)
        self.cache_store_up.set(1)
        self.policy_reloads = Counter("sigroute_policy_reloads_total", "Policy reloads", ["result"], registry=r)

    # upstream observer protocol (gateway.upstream.resilience.Observer)
    def upstream_error(self, model: str, kind: str) -> None:
        self.upstream_errors.labels(model, kind).inc()

    def fallback(self, from_model: str, to_model: str) -> None:
        self.fallbacks.labels(from_model, to_model).inc()

    def breaker_opened(self, model: str) -> None:
        self.breakers_opened.labels(model).inc()
        self.breakers_closed.labels(model)  # the closings of a model that opened are shown, from 0

    def breaker_closed(self, model: str) -> None:
        self.breakers_closed.labels(model).inc()

    def render(self, breaker_states: dict[str, str] | None = None, encoder_stats=None) -> bytes:
        if breaker_states is not None:
            for model in self._breaker_models - set(breaker_states):  # a reload removed the model
                self.breaker_open.remove(model)
                for state in BREAKER_STATES:
                    self.breaker_state.remove(model, state)
            self._breaker_models = set(breaker_states)
        for model, state in (breaker_states or {}).items():
            self.breaker_open.labels(model).set(1 if state == "open" else 0)
            for one in BREAKER_STATES:
                self.breaker_state.labels(model, one).set(1 if state == one else 0)
        if encoder_stats is not None:  # signals.encoder.EncoderStats (shared by the process's pipelines)
            self.encoder_calls.set(encoder_stats.forward_passes)
            self.encoder_texts.set(encoder_stats.texts)
            self.encoder_seconds.set(encoder_stats.seconds)
        return generate_latest(self.registry)
