"""`sigroute` command line: serve, validate, schema, explain, sim, demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from sigroute._redis import REQUEST_PATH_TIMEOUT_S


def _load_or_report(path: str | None):
    """The policy at `path` (or the embedded default); on errors, print them and return None."""
    from sigroute.policies.loader import PolicyError, load_default_policy, load_policy

    try:
        return load_default_policy() if path is None else load_policy(path)
    except PolicyError as exc:
        print(str(exc), file=sys.stderr)
        return None


def _startup_problem(exc: Exception, path: str | None) -> str | None:
    """A policy that validates can still fail to start: its encoder or a trained head is missing
    or was trained on another encoder. Those errors get one clear line instead of a traceback."""
    from sigroute.signals.encoder import EncoderUnavailable
    from sigroute.signals.heads import HeadMismatch

    if isinstance(exc, (EncoderUnavailable, HeadMismatch, FileNotFoundError)):
        return f"{path or 'embedded default policy'}: cannot start: {exc}"
    return None


def cmd_validate(args) -> int:
    from sigroute.policies.loader import PolicyError, load_policy, policy_warnings

    status = 0
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            print(str(exc), file=sys.stderr)
            status = 1
            continue
        except OSError as exc:
            print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            status = 1
            continue
        for warning in policy_warnings(policy):
            print(f"{path}: warning: {warning}", file=sys.stderr)
        print(f"{path}: ok ({len(policy.models)} models, {len(policy.decisions)} decisions, "
              f"{len(policy.signals.declared())} signals)")
    return status


def cmd_schema(args) -> int:
    from sigroute.policies.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


def cmd_explain(args) -> int:
    from sigroute.gateway.metrics import Metrics
    from sigroute.gateway.pipeline import Pipeline

    policy = _load_or_report(args.policy)
    if policy is None:
        return 1
    messages = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    messages.append({"role": "user", "content": args.prompt})
    body = {"model": args.model, "messages": messages}
    if args.max_tokens:
        body["max_tokens"] = args.max_tokens
    headers = {k.lower(): v for k, v in (h.split(":", 1) for h in args.header)}
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    if args.api_key:
        headers["authorization"] = f"Bearer {args.api_key}"

    async def run():
        pipeline = Pipeline(policy, Metrics())
        try:
            return await pipeline.explain(json.dumps(body).encode(), headers)
        finally:
            await pipeline.aclose()

    from sigroute.gateway.errors import APIError

    try:
        report = asyncio.run(run())
    except APIError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    except Exception as exc:
        problem = _startup_problem(exc, args.policy)
        if problem is None:
            raise
        print(problem, file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print_explain(report)
    return 0


def print_explain(report: dict) -> None:
    if report.get("direct"):
        print(f"model '{report['model']}' is called directly (no routing)")
        return
    print(f"entrypoint: {report['entrypoint']}   strategy: {report['strategy']}   "
          f"prompt tokens: {report['prompt_tokens']}")
    print("\nsignals:")
    for key, r in report["signals"].items():
        mark = "✔" if r["matched"] else "·"
        used = "" if r["used_by_rules"] else "  (not used by any rule)"
        value = "" if r["value"] is None else f"  value={r['value']}"
        print(f"  {mark} {key:<32} confidence={r['confidence']:.3f}{value}{used}")
    print("\ndecisions:")
    for v in report["decisions"]:
        mark = "✔" if v["matched"] else "·"
        tag = " (default)" if v["default"] else ""
        print(f"  {mark} {v['decision']:<28} priority={v['priority']:<5} confidence={v['confidence']:.3f}{tag}")
    w = report["winner"]
    print(f"\nwinner: {w['decision']} (confidence {w['confidence']:.3f}) → algorithm {w['algorithm']} "
          f"over {', '.join(w['models'])}")
    if w["selection"]:
        s = w["selection"]
        print(f"choice: {s['model']} (propensity {s['propensity']:.3f}); fallback order: {' → '.join(s['ranking'])}")
    if w["selection_error"]:
        print(f"selection error: {w['selection_error']}")


def cmd_serve(args) -> int:
    import uvicorn

    from sigroute.gateway.app import create_app
    from sigroute.gateway.http_server import server_options
    from sigroute.gateway.serving import best_loop, redact_access_log

    policy = _load_or_report(args.policy)
    if policy is None:
        return 1
    try:
        options = {}
        if args.redis:
            from sigroute.bandits.store import open_state_store

            try:
                open_state_store(args.redis)  # checks the URL's form; connecting happens per request
            except ValueError as exc:
                print(f"sigroute serve: --redis: {exc}", file=sys.stderr)
                return 2
        if args.decision_log:
            from sigroute.bandits.replay import DecisionLog

            options["decision_log"] = DecisionLog(args.decision_log)
        app = create_app(policy, policy_path=args.policy, redis_url=args.redis, redis_timeout_s=args.redis_timeout,
                         cache_shards=args.cache_shards, reload_on_sighup=True, **options)
    except Exception as exc:
        problem = _startup_problem(exc, args.policy)
        if problem is None:
            raise
        print(problem, file=sys.stderr)
        return 1
    redact_access_log()
    uvicorn.run(app, host=args.host, port=args.port, loop=best_loop(), log_level=args.log_level,
                access_log=args.access_log, workers=None, **server_options(policy))
    return 0


def cmd_prepare(args) -> int:
    """Do once what a replica would do at start for this policy — load the encoder (exporting its
    ONNX graph into the cache dir, $SIGROUTE_CACHE_DIR), the trained heads and the PII recognizers
    — and exit. A container image runs it at build time so that replicas start warm."""
    from sigroute.gateway.metrics import Metrics
    from sigroute.gateway.pipeline import Pipeline

    policy = _load_or_report(args.policy)
    if policy is None:
        return 1
    started = time.perf_counter()
    try:
        pipeline = Pipeline(policy, Metrics())
        pipeline.warm()
    except Exception as exc:
        problem = _startup_problem(exc, args.policy)
        if problem is None:
            raise
        print(problem, file=sys.stderr)
        return 1
    encoder = pipeline.embedder.encoder if pipeline.embedder is not None else None
    what = (f"encoder {encoder.model_name} on {encoder.device} ({encoder.backend})" if encoder is not None
            else "no encoder (heuristic signals only)")
    print(f"prepared {args.policy or 'the embedded default policy'}: {what}, "
          f"{len(policy.decisions)} decisions, in {time.perf_counter() - started:.1f}s")
    return 0


def cmd_sim(args) -> int:
    from sigroute.gateway.sim import OutcomesError, SimConfigError, run_sim

    if args.time_scale is not None and args.outcomes is None:
        print("sigroute sim: --time-scale only applies to replay mode (--outcomes DIR)", file=sys.stderr)
        return 2
    try:
        run_sim(args.config, host=args.host, port=args.port, outcomes=args.outcomes,
                time_scale=1.0 if args.time_scale is None else args.time_scale)
    except (OutcomesError, SimConfigError) as exc:
        print(f"sigroute sim: {exc}", file=sys.stderr)
        return 1
    return 0


def _time_scale(value: str) -> float:
    try:
        scale = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not (scale >= 0 and scale != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {value!r}")
    return scale


def cmd_demo(args) -> int:
    if args.tour:
        from sigroute.gateway.tour import run_tour

        return run_tour(routing_data=args.routing_data, questions=args.tour_questions, seed=args.seed,
                        stay=args.stay)
    from sigroute.gateway.demo import run_demo

    return run_demo(requests=args.requests, concurrency=args.concurrency, policy_path=args.policy,
                    sim_config=args.sim_config, seed=args.seed)


def _state_selector(args) -> tuple[str, Any]:
    """(store key prefix, filter) for --tenant/--decision: keys look like t=T/d=D/a=ALGO/s=SCHEMA."""
    prefix = f"t={args.tenant}/" if getattr(args, "tenant", None) else ""
    decision = getattr(args, "decision", None)
    if prefix and decision:
        prefix += f"d={decision}/"
    if decision and not getattr(args, "tenant", None):
        return prefix, lambda key: f"/d={decision}/" in f"/{key}/"
    return prefix, lambda key: True


async def _bandit_gc(store: Any, args) -> int:
    """`sigroute bandit gc`: report every stored state key by schema (decision, algorithm, feature
    schema) and tenant with its idle time (since its last write: a flush of learned statistics, a
    re-seed or an import) and its size in Redis; remove those idle at least --idle days (unless
    --dry-run). Removal is checked and done in one script per key, so a key written meanwhile is
    kept, and it leaves the marker `reset` leaves, so running replicas do not restore it."""
    if not args.idle > 0:
        print(f"sigroute bandit gc: --idle must be a positive number of days, got {args.idle:g}", file=sys.stderr)
        return 2
    now = await store.server_time()
    cutoff = now - args.idle * 86400
    rows = []
    for key in await store.keys(""):
        state = await store.read(key)
        if not state.arms:
            continue
        parts = dict(p.split("=", 1) for p in key.split("/") if "=" in p)
        schema = "/".join(f"{k}={parts[k]}" for k in ("d", "a", "s") if k in parts) or key
        rows.append((schema, parts.get("t", "?"), key, state.written_at, len(state.arms),
                     await store.memory_usage(key)))
    stale = [r for r in rows if r[3] is not None and r[3] < cutoff]
    unrecorded = [r for r in rows if r[3] is None]
    by_schema: dict[str, list] = {}
    for row in rows:
        by_schema.setdefault(row[0], []).append(row)
    for schema, members in sorted(by_schema.items()):
        gone = sum(1 for r in members if r in stale)
        print(f"schema {schema}: {len({r[1] for r in members})} tenant(s), {len(members)} key(s), "
              f"{gone} idle {args.idle:g}+ days" + ("  (whole schema stale)" if gone == len(members) else ""))
        for _, tenant, key, written, arms, size in sorted(members, key=lambda r: (r[1], r[2])):
            idle = "no write time recorded (kept; `sigroute bandit reset` removes it)" if written is None \
                else f"idle {(now - written) / 86400:.1f} days"
            mark = "STALE " if written is not None and written < cutoff else ""
            print(f"  {mark}tenant {tenant}: {key}  {idle}, {arms} arm(s)"
                  + (f", {size} bytes" if size is not None else ""))
    freed = sum(r[5] or 0 for r in stale)
    if args.dry_run:
        print(f"dry run: {len(stale)} of {len(rows)} state key(s) idle {args.idle:g}+ days "
              f"({len({r[1] for r in stale})} tenant(s), {freed} bytes) would be removed from {store.description}",
              file=sys.stderr)
        return 0
    removed = 0
    for row in stale:
        removed += 1 if await store.delete_idle(row[2], cutoff) else 0
    print(f"removed {removed} of {len(rows)} state key(s) idle {args.idle:g}+ days "
          f"({len({r[1] for r in stale})} tenant(s), about {freed} bytes) from {store.description}"
          + (f"; {len(unrecorded)} without a recorded write time kept" if unrecorded else ""), file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    from sigroute.bandits.registry import build_selector
    from sigroute.bandits.replay import evaluate, read_decision_log
    from sigroute.gateway.pipeline import needs_encoder

    policy = _load_or_report(args.policy)
    if policy is None:
        return 1
    try:
        decision = policy.decision(args.decision)
    except KeyError:
        print(f"{args.policy or 'default policy'}: no decision '{args.decision}'; decisions: "
              f"{', '.join(d.name for d in policy.decisions)}", file=sys.stderr)
        return 1
    resources = None
    if needs_encoder(policy):
        from sigroute.signals.encoder import shared_encoder
        from sigroute.signals.learned import SignalResources

        spec = policy.encoder
        resources = SignalResources(shared_encoder(spec.model, device=spec.device, max_tokens=spec.max_tokens,
                                                   backend=spec.backend), policy.domains)
    selector = build_selector(decision.algorithm, {m: policy.models[m] for m in decision.models},
                              resources=resources, decision=decision.name)
    if not selector.learns_from_feedback:  # replay and warm start need context vectors
        print(f"decision '{decision.name}' uses '{decision.algorithm.name}', which does not learn from context; "
              "replay evaluates linucb, hybrid_linucb, thompson and epsilon_greedy decisions", file=sys.stderr)
        return 1
    selector._seed = args.seed
    try:
        events = read_decision_log(args.log, decision.name)
        result = evaluate(events, selector)
    except (OSError, ValueError) as exc:
        print(f"sigroute replay: {exc}", file=sys.stderr)
        return 1
    result = {"decision": decision.name, "algorithm": decision.algorithm.name, **result}
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


def _warm_start_snapshot(args) -> dict:
    """Full-information statistics of a decision on recorded outcomes (see bandits.warmstart)."""
    import numpy as np

    from sigroute.bandits.contextual import reward_value
    from sigroute.bandits.registry import build_selector
    from sigroute.bandits.warmstart import full_information_sums
    from sigroute.gateway.pipeline import needs_encoder
    from sigroute.gateway.sim.replay import format_replay_question, load_outcomes
    from sigroute.signals.context import RequestContext
    from sigroute.signals.training import in_test_split

    policy = _load_or_report(args.policy)
    if policy is None:
        raise SystemExit(1)
    try:
        decision = policy.decision(args.decision)
    except KeyError:
        raise ValueError(f"no decision '{args.decision}' in the policy") from None
    resources = encoder = None
    if needs_encoder(policy):
        from sigroute.signals.encoder import shared_encoder
        from sigroute.signals.learned import SignalResources

        spec = policy.encoder
        encoder = shared_encoder(spec.model, device=spec.device, max_tokens=spec.max_tokens,
                                 backend=spec.backend)
        resources = SignalResources(encoder, policy.domains)
    selector = build_selector(decision.algorithm, {m: policy.models[m] for m in decision.models},
                              resources=resources, decision=decision.name)
    if not selector.learns_from_feedback:  # replay and warm start need context vectors
        raise ValueError(f"decision '{decision.name}' uses '{decision.algorithm.name}', which does not learn")
    outcomes = load_outcomes(args.outcomes)
    columns = {}
    for m in decision.models:
        found = outcomes.resolve_model(m) or outcomes.resolve_model(policy.models[m].provider)
        if found is None:
            raise ValueError(f"model '{m}' of decision '{decision.name}' has no outcomes in {args.outcomes} "
                             f"(name it like a models.csv row, e.g. {outcomes.model_names[0]})")
        columns[m] = found
    questions = [q for q in outcomes.questions if args.split == "all" or not in_test_split(q.question_id)]
    texts = [format_replay_question(q) for q in questions]
    print(f"warm start of '{decision.name}' on {len(questions)} recorded questions ({args.split} split) "
          f"× {len(columns)} models", file=sys.stderr)
    embeddings = None
    if encoder is not None and selector.features.needs_embedding:
        from sigroute.signals.training import embed

        embeddings = embed(encoder, texts, Path(args.cache).expanduser() if args.cache else None)
    contexts, rewards = [], {m: [] for m in decision.models}
    tokens = {m: [] for m in decision.models}     # answer profile (learn: quality)
    latencies = {m: [] for m in decision.models}
    reward_spec = selector.options.reward
    quality_only = getattr(selector, "learns_quality", False)
    for i, (q, text) in enumerate(zip(questions, texts)):
        ctx = RequestContext.from_body(f"warm_{i}", {"model": "auto", "messages": [{"role": "user", "content": text}]})
        contexts.append(selector.features.vector_for_text(
            text, None if embeddings is None else embeddings[i], tokens=ctx.prompt_tokens))
        costs = {}
        for m, col in columns.items():
            price = policy.models[m].price
            costs[m] = ctx.prompt_tokens * price.input + outcomes.completion_tokens(q, col) * price.output
        worst = max(costs.values()) or 1.0
        for m, col in columns.items():
            outcome = outcomes.outcome(q, col)
            if outcome is None:
                rewards[m].append(float("nan"))
                tokens[m].append(float("nan"))
                latencies[m].append(float("nan"))
                continue
            latency_ms = 1000.0 * outcomes.models[col].latency_s(outcomes.completion_tokens(q, col))
            tokens[m].append(float(outcomes.completion_tokens(q, col)))
            latencies[m].append(latency_ms)
            if quality_only:  # the estimator learns quality; cost and latency come from the profile
                rewards[m].append(float(outcome))
            else:
                rewards[m].append(reward_value(reward_spec, quality=float(outcome), cost_share=costs[m] / worst,
                                               latency_ms=latency_ms))
    estimator = selector.learner(args.tenant).estimator
    profile = ({"completion_tokens": {m: np.array(v) for m, v in tokens.items()},
                "latency_ms": {m: np.array(v) for m, v in latencies.items()}} if quality_only else {})
    sums = full_information_sums(estimator, np.array(contexts), {m: np.array(v) for m, v in rewards.items()},
                                 **profile)
    learner = selector.learner(args.tenant)
    weight = selector._weight(learner, time.time())  # discounting: as if observed now
    key = selector.state_key(args.tenant, learner.epoch)
    return {"format": "sigroute-bandit-state", "version": 1,
            "keys": {key: {arm: (vec * weight).tolist() for arm, vec in sums.items()}}}


def cmd_bandit(args) -> int:
    import asyncio
    import json

    from sigroute.bandits.store import StoreUnavailable, export_state, import_state, open_state_store

    if args.bandit_command == "warm-start":
        try:
            snapshot = _warm_start_snapshot(args)
        except (OSError, ValueError) as exc:
            print(f"sigroute bandit warm-start: {exc}", file=sys.stderr)
            return 1
        if args.out:
            Path(args.out).write_text(json.dumps(snapshot))
            print(f"wrote {args.out}; load it with `sigroute bandit import {args.out} --merge --redis URL`",
                  file=sys.stderr)
            return 0
        if not args.redis:
            print("sigroute bandit warm-start: give --out FILE or --redis URL", file=sys.stderr)
            return 2

        async def store_it() -> int:
            store = open_state_store(args.redis)
            try:
                await import_state(store, snapshot, replace=args.replace)
            except StoreUnavailable as exc:
                print(f"sigroute bandit warm-start: {exc}", file=sys.stderr)
                return 1
            finally:
                await store.aclose()
            print(f"{'replaced' if args.replace else 'added to'} {', '.join(snapshot['keys'])} in {store.description}",
                  file=sys.stderr)
            return 0
        return asyncio.run(store_it())

    if not args.redis:
        print("sigroute bandit: give --redis URL (or set SIGROUTE_REDIS_URL): a gateway without Redis keeps its "
              "learned state in its own memory, which another process cannot reach", file=sys.stderr)
        return 2

    async def run() -> int:
        store = open_state_store(args.redis)
        try:
            if args.bandit_command == "import":
                text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
                try:
                    snapshot = json.loads(text)
                    n = await import_state(store, snapshot, replace=not args.merge)
                except (ValueError, json.JSONDecodeError) as exc:
                    print(f"{args.file}: not a sigroute bandit snapshot: {exc}", file=sys.stderr)
                    return 1
                print(f"{'merged' if args.merge else 'imported'} {n} state key(s) into {store.description}",
                      file=sys.stderr)
                return 0
            if args.bandit_command == "gc":
                return await _bandit_gc(store, args)
            prefix, keep = _state_selector(args)
            if args.bandit_command == "list":
                for key in await store.keys(prefix):
                    if keep(key):
                        arms = await store.load(key)
                        counts = ", ".join(f"{arm}: {vec[0]:g}" for arm, vec in sorted(arms.items()))
                        print(f"{key}  ({counts})")
                return 0
            if args.bandit_command == "export":
                snapshot = await export_state(store, prefix)
                snapshot["keys"] = {k: v for k, v in snapshot["keys"].items() if keep(k)}
                text = json.dumps(snapshot)
                if args.out:
                    Path(args.out).write_text(text)
                    print(f"exported {len(snapshot['keys'])} state key(s) to {args.out}", file=sys.stderr)
                else:
                    print(text)
                return 0
            # reset
            removed = 0
            for key in await store.keys(prefix):
                if keep(key):
                    removed += await store.delete(key)
            print(f"reset {removed} state key(s) in {store.description}; running gateways pick this up at their "
                  "next exchange with the store (about a second)", file=sys.stderr)
            return 0
        except StoreUnavailable as exc:
            print(f"sigroute bandit: {exc}", file=sys.stderr)
            return 1
        finally:
            await store.aclose()

    return asyncio.run(run())


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive, finite number of seconds")
    return value


def _cache_shards(text: str) -> int:
    from sigroute.cache.store import MAX_SHARDS

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"{text!r} must be from 1 to {MAX_SHARDS}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sigroute", description="Semantic model-router gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--policy", help="policy YAML (default: the embedded default policy)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--log-level", default="info")
    p.add_argument("--access-log", action="store_true", help="log every request line (off by default)")
    p.add_argument("--redis", default=os.environ.get("SIGROUTE_REDIS_URL"), metavar="URL",
                   help="share learning state, pending feedback, cached answers and rate limits through Redis "
                        "(redis://host:port/db, or a cluster: redis+cluster://host:port,host:port); "
                        "default: $SIGROUTE_REDIS_URL, else in memory")
    p.add_argument("--redis-timeout", type=_positive_seconds, metavar="SECONDS",
                   default=os.environ.get("SIGROUTE_REDIS_TIMEOUT", str(REQUEST_PATH_TIMEOUT_S)),
                   help="connect and command timeout of the Redis stores a request waits on (cache, rate limits, "
                        "served answers, stored responses); past it the request goes on without that store. "
                        f"Default: $SIGROUTE_REDIS_TIMEOUT, else {REQUEST_PATH_TIMEOUT_S:g}")
    p.add_argument("--cache-shards", type=_cache_shards, metavar="N",
                   default=os.environ.get("SIGROUTE_CACHE_SHARDS", "1"),
                   help="spread the shared cache over N Redis hash tags: on a Redis Cluster, N slots, so the cache's "
                        "load spreads over the primaries (e.g. 16); every replica must use the same N, and changing "
                        "it starts an empty cache. Default: $SIGROUTE_CACHE_SHARDS, else 1 (one slot)")
    p.add_argument("--decision-log", metavar="PATH",
                   help="append every learning decision (features, pick, propensity, reward; no text) and "
                        "every feedback to this JSON-lines file, for `sigroute replay`")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("prepare", help="load what serving a policy needs (encoder, ONNX graph, heads) once and "
                       "exit: run at image build time so replicas start warm")
    p.add_argument("--policy", help="policy YAML (default: the embedded default policy)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("replay", help="estimate offline how a learning decision's algorithm would have done on "
                                      "a decision log (replay method / inverse propensity scoring)")
    p.add_argument("--log", required=True, help="decision log written by `sigroute serve --decision-log`")
    p.add_argument("--policy", help="policy YAML whose decision to evaluate (default: the embedded default)")
    p.add_argument("--decision", required=True, help="the decision to evaluate")
    p.add_argument("--seed", type=int, default=0, help="random seed of stochastic algorithms")
    p.add_argument("--json", dest="json_out", help="also write the result here")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("bandit", help="list, export, import, reset or garbage-collect the learned state "
                                      "of learning decisions")
    bsub = p.add_subparsers(dest="bandit_command", required=True)
    for name, help_text in (("export", "write a JSON snapshot of the learned state"),
                            ("import", "load a JSON snapshot (replacing the keys it holds, or --merge)"),
                            ("reset", "forget learned state (all of it, or one tenant / decision)"),
                            ("list", "list the stored state keys"),
                            ("gc", "report state keys by schema and tenant, and remove those idle --idle days")):
        q = bsub.add_parser(name, help=help_text)
        q.add_argument("--redis", default=os.environ.get("SIGROUTE_REDIS_URL"), metavar="URL",
                       help="the Redis the gateways use (default: $SIGROUTE_REDIS_URL)")
        if name == "import":
            q.add_argument("file", help="snapshot written by `sigroute bandit export` ('-' = stdin)")
            q.add_argument("--merge", action="store_true", help="add to the stored sums instead of replacing them")
        elif name == "gc":
            q.add_argument("--idle", type=float, default=30.0, metavar="DAYS",
                           help="remove state not written for this many days (default: %(default)s)")
            q.add_argument("--dry-run", action="store_true", help="report what would be removed, remove nothing")
        else:
            q.add_argument("--tenant", help="only this tenant's state")
            q.add_argument("--decision", help="only this decision's state (with --tenant, or for every tenant)")
        if name == "export":
            q.add_argument("--out", help="file to write (default: stdout)")
        q.set_defaults(func=cmd_bandit)
    q = bsub.add_parser("warm-start", help="learn a decision's state from recorded outcomes of every model "
                                           "(a directory laid out like the routing data) before serving")
    q.add_argument("--outcomes", required=True, metavar="DIR", help="models.csv + mmlu_pro/ outcome tables")
    q.add_argument("--policy", help="policy YAML (default: the embedded default)")
    q.add_argument("--decision", required=True)
    q.add_argument("--tenant", default="default", help="whose state to warm (default: default)")
    q.add_argument("--split", choices=("train", "all"), default="train",
                   help="train (default): leave out the held-out test questions of the shipped heads' split")
    q.add_argument("--redis", default=os.environ.get("SIGROUTE_REDIS_URL"), metavar="URL",
                   help="add the statistics to this Redis (default: $SIGROUTE_REDIS_URL)")
    q.add_argument("--replace", action="store_true", help="replace the stored state instead of adding to it")
    q.add_argument("--out", help="write a snapshot for `sigroute bandit import` instead")
    q.add_argument("--cache", default="~/.cache/sigroute/embeddings", metavar="DIR",
                   help="reuse question embeddings across runs (default: %(default)s; '' = none)")
    q.set_defaults(func=cmd_bandit)

    p = sub.add_parser("validate", help="check policy files; exits non-zero on errors")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the policy JSON Schema")
    p.set_defaults(func=cmd_schema)

    p = sub.add_parser("explain", help="show how a prompt would be routed, without calling a model")
    p.add_argument("policy", nargs="?", default=None, help="policy YAML (default: embedded default)")
    p.add_argument("prompt")
    p.add_argument("--model", default="auto", help="entrypoint or model name (default: auto)")
    p.add_argument("--system", help="a system prompt to include")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE")
    p.add_argument("--api-key", help="API key, when the policy has an auth section")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("sim", help="run the simulated OpenAI-compatible upstream")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--config", help="sim YAML (default: the demo's models)")
    source.add_argument("--outcomes", metavar="DIR",
                        help="replay mode: serve the recorded per-question outcomes in DIR "
                             "(models.csv + mmlu_pro/, like the shared routing/ data)")
    p.add_argument("--time-scale", type=_time_scale, default=None, metavar="F",
                   help="replay mode: multiply every simulated latency by F (default 1; 0 = no waiting)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099)
    p.set_defaults(func=cmd_sim)

    sub.add_parser("train", help="rebuild a shipped head from the shared data: train {domain|jailbreak|complexity} "
                   "--data DIR [--out DIR] (see `sigroute train --help`)", add_help=False)

    from sigroute.cache.calibrate import add_cache_parser

    add_cache_parser(sub)  # sigroute cache calibrate --pairs FILE.csv --target-precision P

    p = sub.add_parser("demo", help="run the simulated upstream and the gateway, send requests, print a report")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--policy", help="policy YAML (default: the embedded default)")
    p.add_argument("--sim-config", help="sim YAML (default: the demo's models)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--tour", action="store_true",
                   help="a guided tour instead: a learning decision on replayed model outcomes, a semantic cache "
                        "hit, a blocked jailbreak, PII masked and restored, with the dashboard's address")
    p.add_argument("--routing-data", metavar="DIR",
                   help="--tour: the recorded routing outcomes to replay (default: $SIGROUTE_ROUTING_DATA or "
                        "../shared/data/routing); when missing, a synthetic table generated in code is used")
    p.add_argument("--tour-questions", type=int, default=320, metavar="N",
                   help="--tour: questions in the learning stream (default 320)")
    p.add_argument("--stay", action="store_true", help="--tour: keep the gateway serving afterwards (Ctrl-C stops)")
    p.set_defaults(func=cmd_demo)
    return parser


SERVER_MODULES = ("fastapi", "uvicorn", "pydantic", "yaml", "numpy", "orjson")  # what every command needs


def missing_server_dependencies() -> list[str]:
    """The server extra's modules this environment lacks (`pip install sigroute` is the SDK alone)."""
    import importlib.util

    return [name for name in SERVER_MODULES if importlib.util.find_spec(name) is None]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    missing = missing_server_dependencies()
    if missing:
        print("sigroute: this installation has the Python SDK only (no " + ", ".join(missing) + "); the gateway "
              "and its commands need the server extra: pip install torch==2.13.0 && pip install 'sigroute[server]'",
              file=sys.stderr)
        return 2
    if argv[:1] == ["train"]:  # the trainer owns its options (signals.training)
        from sigroute.signals.training import main as train_main

        return train_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=os.environ.get("SIGROUTE_LOG_LEVEL", "WARNING"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
