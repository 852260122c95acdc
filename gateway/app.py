"""The HTTP surface: an OpenAI-compatible API in front of the routing pipeline.

Endpoints (who may call each: `gateway.auth`; the roles are the policy's `auth` section):
  POST /v1/chat/completions   OpenAI chat completions, streamed or not; `model` is an entrypoint
                              (e.g. "auto") or, if the policy allows, a concrete model     any key
  POST /v1/messages           Anthropic Messages, streamed or not (gateway.anthropic_wire); errors in
                              Anthropic's shape                                            any key
  POST /v1/messages/count_tokens   a Messages body's input tokens, as the gateway counts them   any key
  POST /v1/responses          OpenAI Responses API (stateful: previous_response_id), streamed or not;
  GET|DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items
                              a stored response of the caller's tenant                      any key
  POST /v1/route/explain      same body (or, with ?api=NAME, a body of another surface); shows every
                              signal, every decision's verdict and the choice, without calling a
                              model                                                    explain role
  POST /v1/feedback           {request_id, score | thumbs | label}: quality of an answer   any key
  GET  /v1/models             entrypoints and models                                       any key
  GET  /health                the process is alive                                         public
  GET  /ready                 a policy is loaded and some model is in service   public by default
  GET  /metrics               Prometheus                                                metrics role
  POST /v1/admin/reload       reload the policy file                                     admin role
  DELETE /v1/admin/cache      remove cached answers: all, or ?decision=NAME and/or ?tenant=NAME
                                                                                         admin role
  DELETE /v1/admin/cache/entries/{key}   remove one cached answer by its key             admin role
  GET  /v1/admin/dashboard    the operator's dashboard data (`gateway.dashboard`)       admin role
  GET  /ui                    the dashboard page; it asks for an admin key and polls the data
With no `auth` section every caller is anonymous: the role-only surfaces are refused unless the
policy lists them in `server.open_without_auth` (metrics stays open).

Every error is OpenAI-shaped: {"error": {"message", "type", "param", "code"}}, except on the
Messages routes: {"type": "error", "error": {"type", "message"}}.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import signal
import time
import weakref
from pathlib import Path
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from sigroute._redis import REQUEST_PATH_TIMEOUT_S
from sigroute.gateway import anthropic_wire
from sigroute.gateway.anthropic_wire import MESSAGES
from sigroute.gateway.dashboard import UI_ASSETS, dashboard_document, ui_asset
from sigroute.gateway.errors import APIError, PayloadTooLarge, Unavailable
from sigroute.gateway.metrics import Metrics
from sigroute.gateway.openai_wire import OPENAPI_SCHEMAS, model_list
from sigroute.gateway.answering import Answer
from sigroute.gateway.pipeline import Pipeline
from sigroute.gateway.surface import CHAT, Surface
from sigroute.gateway.responses_wire import OPENAPI_SCHEMAS as RESPONSES_SCHEMAS, ResponsesSurface
from sigroute.policies.schema import Policy

log = logging.getLogger("sigroute.app")

CACHE_SYNC_S = 0.25   # how often a shared cache's index follows the store's events
CACHE_SWEEP_S = 30.0  # how often expired entries leave the index and the size gauge is refreshed


class JSONBytes(Response):
    media_type = "application/json"


def error_response(error: APIError) -> Response:
    return JSONBytes(error.json(), status_code=error.status, headers=error.headers)


class SSEResponse(Response):
    """Streams server-sent events and stops (cancelling the producer) when the client goes away."""

    media_type = "text/event-stream"

    def __init__(self, events, headers: dict[str, str], on_close=()):
        # no super().__init__: Response would add "content-length: 0" for an empty body
        self.status_code = 200
        self.background = None
        self.body = b""
        all_headers = {**headers, "content-type": "text/event-stream; charset=utf-8",
                       "cache-control": "no-cache", "x-accel-buffering": "no"}
        self.raw_headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in all_headers.items()]
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def produce() -> None:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        producer = asyncio.ensure_future(produce())
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({producer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (producer, watcher):
                if not task.done():
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await producer
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            with contextlib.suppress(Exception):
                await self.events.aclose()
            for finish in self.on_close:
                try:
                    await finish()
                except Exception:  # noqa: BLE001 - cleanup must not mask the stream's own outcome
                    log.exception("closing a stream failed")
        if producer.done() and not producer.cancelled() and producer.exception() is not None:
            exc = producer.exception()
            if not isinstance(exc, OSError):
                raise exc


class Runtime:
    """The live pipeline. A reload builds the new one off the event loop (loading a policy's encoder
    and heads takes seconds of CPU), warms it, and swaps it in atomically on the loop; requests
    already running finish on the pipeline they started with. A retired pipeline is closed once it
    has been retired `retire_after_s` and none of its upstream calls or streams is running."""

    RETIRE_AFTER_S = 30.0     # a request reaches its upstream call well within this after it started

    def __init__(self, policy: Policy, policy_path: str | None, metrics: Metrics, *,
                 retire_after_s: float = RETIRE_AFTER_S, **pipeline_options):
        self.policy_path = policy_path
        self.metrics = metrics
        self.pipeline_options = pipeline_options
        self.pipeline = Pipeline(policy, metrics, **pipeline_options)
        self.loaded_at = time.time()
        self.retire_after_s = retire_after_s
        self._retired: set[Pipeline] = set()
        self._closers: set[asyncio.Task] = set()
        self._reloading = asyncio.Lock()

    async def reload(self) -> Policy:
        """Load the policy file again; on any error the running policy stays and the error is raised.
        Reloads are serialized; the event loop keeps serving while the new pipeline is built."""
        from sigroute.policies.loader import load_policy

        if not self.policy_path:
            raise APIError("this gateway runs an embedded policy; there is no file to reload", status=409,
                           type="invalid_request_error", code="no_policy_file")
        async with self._reloading:
            current = self.pipeline

            def build() -> Pipeline:   # in a worker thread
                policy = load_policy(self.policy_path)
                new = Pipeline(policy, self.metrics, previous=current, **self.pipeline_options)
                new.warm()
                return new

            try:
                new = await asyncio.to_thread(build)
            except Exception:
                self.metrics.policy_reloads.labels("failed").inc()
                raise
            new.take_over(current)              # on the loop: nothing learned meanwhile is missed
            self.pipeline = new
            self.loaded_at = time.time()
            self.metrics.policy_reloads.labels("ok").inc()
            self._retire(current)
        await new.load_learning()   # decisions whose features changed find their stored state
        return new.policy

    def _retire(self, pipeline: Pipeline) -> None:
        self._retired.add(pipeline)

        async def close_when_idle() -> None:
            await asyncio.sleep(self.retire_after_s)
            while not pipeline.idle():
                await asyncio.sleep(1.0)
            self._retired.discard(pipeline)
            await pipeline.aclose()

        task = asyncio.ensure_future(close_when_idle())
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def aclose(self) -> None:
        for task in list(self._closers):
            task.cancel()
        for pipeline in [self.pipeline, *self._retired]:
            with contextlib.suppress(Exception):
                await pipeline.aclose()


# --------------------------------------------------------------------------------------------
# the OpenAPI description of each route (the bodies are read raw, so FastAPI cannot infer them)

ERROR_MEANINGS = {
    400: "the request is invalid (the error's `param` names the field)", 401: "missing or invalid API key",
    403: "the key's roles do not allow this", 404: "unknown model, request id or cache key",
    405: "method not allowed", 408: "the request did not arrive in time", 409: "conflicts with what is recorded",
    413: "the request body is too large", 422: "the request (or the policy file) was rejected",
    429: "rate limit exceeded (see Retry-After)", 502: "every candidate model failed upstream",
    503: "no model in service, or a store is unreachable", 504: "every candidate model timed out"}


def _ref(name: str) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/components/schemas/{name}"}}


def described(ok: dict[str, Any], *errors: int, body: str | None = None,
              headers: dict[str, Any] | None = None, error: str = "Error") -> dict[str, Any]:
    """Route options that describe the answers: `ok` (media type -> schema name) for 200, the
    error (schema `error`: OpenAI-shaped unless the route's surface has its own) for each status in
    `errors`, `body` (a schema name) as the JSON request body, and request `headers` (name -> JSON schema)."""
    responses: dict[int | str, Any] = {200: {"description": "OK", "content": {m: _ref(n) for m, n in ok.items()}}}
    for status in sorted(set(errors) | {405}):
        responses[status] = {"description": ERROR_MEANINGS[status], "content": {"application/json": _ref(error)}}
    extra: dict[str, Any] = {}
    if body is not None:
        extra["requestBody"] = {"required": True, "content": {"application/json": _ref(body)}}
    if headers:
        extra["parameters"] = [{"name": name, "in": "header", "required": False, "schema": schema}
                               for name, schema in headers.items()]
    return {"responses": responses, "openapi_extra": extra or None}


ADMITTED = (401, 429)   # every endpoint that needs a key (or is rate limited)
BODY_READ = (400, 408, 413)


class ClientGone(Exception):
    """The caller went away before its request was read: there is nobody to answer."""


async def read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The request body: at most `limit` bytes (else 413), all of it within `timeout_s` (else 408:
    a client that declares more than it sends must not hold a request open); `ClientGone` if the
    caller disconnects meanwhile."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}",
                              code="request_too_large")
    chunks = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes", code="request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise APIError(f"the request body did not arrive within {timeout_s:g}s ({size} bytes received"
                       + (f" of {declared} declared" if declared is not None else "") + ")",
                       status=408, type="invalid_request_error", code="request_timeout",
                       headers={"connection": "close"}) from None
    except ClientDisconnect:
        raise ClientGone() from None
    return b"".join(chunks)


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def create_app(policy: Policy, *, policy_path: str | None = None, metrics: Metrics | None = None,
               redis_url: str | None = None, redis_timeout_s: float = REQUEST_PATH_TIMEOUT_S,
               cache_shards: int = 1, reload_on_sighup: bool = False,
               retire_after_s: float = Runtime.RETIRE_AFTER_S, **pipeline_options: Any) -> FastAPI:
    """The gateway app. `redis_url` shares learning state, pending feedback, cached answers and
    rate-limit buckets between replicas (and keeps them across restarts); without it they live in this process's memory.
    `redis_timeout_s` bounds each connect and each command of the stores a request waits on (cache,
    rate limits, served answers, stored responses): past it the request goes on without that store
    (fail-open), and the store fails fast for a moment. Learned state and pending feedback, synced in
    the background, keep their own longer timeouts. `cache_shards` spreads the shared cache over
    that many Redis hash tags (on a cluster, that many slots: its load spreads over the primaries);
    every replica of one cache must use the same number.
    `reload_on_sighup` (for `sigroute serve`, which runs the app in the main thread) reloads the
    policy file when the process gets SIGHUP, as a task on the event loop."""
    from sigroute.bandits.store import open_pending_store, open_state_store
    from sigroute.cache.qdrant_index import open_vector_index
    from sigroute.cache.semantic import SemanticCache, SingleFlight
    from sigroute.cache.store import open_document_store
    from sigroute.gateway.activity import Activity
    from sigroute.gateway.implicit import open_served_answers
    from sigroute.gateway.ratelimit import RateLimiter, open_rate_limit_store

    from sigroute.gateway.response_store import open_response_store

    if not redis_timeout_s > 0:
        raise ValueError(f"redis_timeout_s must be a positive number of seconds, not {redis_timeout_s!r}")
    # options for the stores on the request path; none for the in-memory ones
    fast = dict(socket_timeout=redis_timeout_s, connect_timeout=redis_timeout_s) if redis_url else {}
    metrics = metrics or Metrics()
    pipeline_options.setdefault("state_store", open_state_store(redis_url))
    pipeline_options.setdefault("pending_store", open_pending_store(redis_url))
    cache_layout = {"shards": cache_shards} if redis_url else {}
    own_index = None   # an index this app opened (a Qdrant client is closed at shutdown)
    if "semantic_cache" not in pipeline_options:   # the index: in process (faiss) or shared (server.cache_index)
        where = policy.server.cache_index
        index = open_vector_index(where.engine, url=where.url, path=where.path, collection=where.collection,
                                  api_key=os.environ.get(where.api_key_env) if where.api_key_env else None,
                                  timeout_s=where.timeout_s)
        pipeline_options["semantic_cache"] = SemanticCache(open_document_store(redis_url, **fast, **cache_layout),
                                                           index)
        own_index = index
    pipeline_options.setdefault("flights", SingleFlight())
    pipeline_options.setdefault("rate_limiter", RateLimiter(open_rate_limit_store(redis_url, **fast)))
    pipeline_options.setdefault("activity", Activity())
    pipeline_options.setdefault("served_answers", open_served_answers(redis_url, **fast))   # for implicit feedback
    runtime = Runtime(policy, policy_path, metrics, retire_after_s=retire_after_s, **pipeline_options)
    responses = ResponsesSurface(open_response_store(redis_url, **fast))   # stored Responses: memory, or Redis if given
    semantic_cache: SemanticCache = pipeline_options["semantic_cache"]

    async def learning_loop() -> None:
        """Load stored learning at start, then exchange statistics with the store periodically."""
        await runtime.pipeline.load_learning()
        while True:
            await asyncio.sleep(runtime.pipeline.sync_interval() or 5.0)
            await runtime.pipeline.sync_learning()

    async def cache_loop() -> None:
        """Keep the cache's index in step with a shared store (rebuild at start, then follow its
        events), drop expired entries from the index and refresh the per-category size gauge."""
        shown: set[str] = set()
        last_sweep = 0.0
        while True:
            try:
                if runtime.pipeline.caching.enabled:
                    await semantic_cache.sync()   # the first call (re)builds the index from the store
                    if time.monotonic() - last_sweep >= CACHE_SWEEP_S:
                        last_sweep = time.monotonic()
                        await semantic_cache.sweep()
                        counts = await semantic_cache.store.category_counts()
                        for category in shown - set(counts):
                            metrics.cache_entries.labels(category).set(0)
                        for category, n in counts.items():
                            metrics.cache_entries.labels(category).set(n)
                        shown |= set(counts)
                    metrics.cache_store_up.set(1)
            except Exception as exc:  # a store outage: requests go on without the cache meanwhile
                metrics.cache_store_up.set(0)
                log.warning("cache maintenance failed: %s", exc)
            await asyncio.sleep(CACHE_SYNC_S if semantic_cache.store.shared else 1.0)

    async def reload_from_signal() -> None:
        try:
            await runtime.reload()
            log.warning("policy reloaded from %s (SIGHUP)", policy_path)
        except Exception as exc:  # the running policy stays
            log.error("policy reload on SIGHUP failed, keeping the running policy: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        learner = asyncio.ensure_future(learning_loop())
        cache_keeper = asyncio.ensure_future(cache_loop())
        if reload_on_sighup and policy_path:
            asyncio.get_running_loop().add_signal_handler(
                signal.SIGHUP, lambda: asyncio.ensure_future(reload_from_signal()))
        try:
            yield
        finally:
            if reload_on_sighup and policy_path:
                asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
            for task in (learner, cache_keeper):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            with contextlib.suppress(Exception):
                await runtime.pipeline.sync_learning()  # what was learned since the last exchange
            await runtime.aclose()
            for store in (pipeline_options["state_store"], pipeline_options["pending_store"], semantic_cache,
                          pipeline_options["rate_limiter"].store, responses.store, pipeline_options["served_answers"]):
                with contextlib.suppress(Exception):
                    await store.aclose()
            if pipeline_options.get("decision_log") is not None:
                pipeline_options["decision_log"].close()
            if hasattr(own_index, "close"):
                with contextlib.suppress(Exception):
                    own_index.close()

    app = FastAPI(title="sigroute", version="0.1.0", lifespan=lifespan,
                  description="Semantic model-router gateway with an OpenAI-compatible API")
    app.state.runtime = runtime
    app.state.responses = responses
    # the API surfaces by their `api` name (explain reads a body of any of them: ?api=NAME)
    surfaces: dict[str, Surface] = {CHAT.api: CHAT, responses.api: responses}

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        runtime.metrics.errors.labels(str(exc.status), exc.code or exc.type).inc()
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kinds = {404: ("not_found_error", "unknown_route", f"no route {request.method} {request.url.path}; "
                       "the API lives under /v1 (e.g. POST /v1/chat/completions)"),
                 405: ("invalid_request_error", "method_not_allowed",
                       f"method {request.method} is not allowed on {request.url.path}")}
        type_, code, message = kinds.get(exc.status_code, ("api_error", "http_error", str(exc.detail)))
        # (a 405 keeps Starlette's Allow header: the methods the path does take)
        error = APIError(message, status=exc.status_code, type=type_, code=code, headers=dict(exc.headers or {}))
        if request.url.path.startswith("/v1/messages"):   # the Messages routes answer in Anthropic's shape
            return surface_error(MESSAGES, error)
        return error_response(error)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, exc: ClientGone):
        runtime.metrics.client_disconnects.inc()   # not an error of ours: nobody is there to answer
        return Response(status_code=499)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(APIError(str(exc), status=400, type="invalid_request_error", code="invalid_value"))

    def internal_error(request: Request, exc: Exception) -> APIError:
        """A bug or an unexpected failure: the details go to the log, the caller gets a 500 that
        names only the error's type (its message may quote the request)."""
        log.error("unexpected error on %s", request.url.path, exc_info=exc)
        return APIError(f"internal error ({type(exc).__name__}); see the gateway log", status=500,
                        code="internal_error")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        # last resort: Starlette re-raises after this answer, so the connection is closed; the
        # pipeline's endpoints turn unexpected errors into an APIError themselves (`internal_error`)
        error = internal_error(request, exc)
        runtime.metrics.errors.labels("500", "internal_error").inc()
        return error_response(error)

    def surface_error(surface: Surface, exc: APIError) -> Response:
        """An error in the shape of the surface the request came in by (the chat surface's is the
        app-wide OpenAI shape)."""
        runtime.metrics.errors.labels(str(exc.status), exc.code or exc.type).inc()
        return JSONBytes(surface.error(exc), status_code=exc.status, headers=exc.headers)

    async def serve(request: Request, surface: Surface) -> Response:
        """A request to one of the API surfaces, through the pipeline; errors in that surface's shape."""
        started = time.perf_counter()
        pipeline = runtime.pipeline
        try:
            raw = await read_body(request, pipeline.max_request_bytes, pipeline.policy.server.body_timeout_s)
        except APIError as exc:
            if surface is CHAT:
                raise
            return surface_error(surface, exc)
        # The pipeline runs in this request's own task (a separate task would wait a loop cycle to
        # start, which under load is most of sigroute's latency); a watcher cancels it if the
        # caller goes away.
        task = asyncio.current_task()
        gone = False

        async def watch() -> None:
            nonlocal gone
            await _until_disconnect(request.receive)
            gone = True
            task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            answer: Answer = await pipeline.handle(raw, request.headers, started, surface)
        except asyncio.CancelledError:
            if not gone:
                raise
            task.uncancel()  # the caller went away: we stopped working for it
            pipeline.metrics.client_disconnects.inc()
            return Response(status_code=499)
        except APIError as exc:
            if surface is CHAT:
                raise
            return surface_error(surface, exc)
        except Exception as exc:  # answered as a 500 on a connection that stays usable
            error = internal_error(request, exc)
            if surface is CHAT:
                raise error from None
            return surface_error(surface, error)
        finally:
            watcher.cancel()
        if answer.stream is not None:
            return SSEResponse(answer.stream, answer.headers, answer.on_close)
        return JSONBytes(answer.body, status_code=answer.status, headers=answer.headers)

    @app.post("/v1/chat/completions", summary="Create a chat completion (OpenAI-compatible)",
              **described({"application/json": "ChatCompletion", "text/event-stream": "ChatCompletionStreamEvent"},
                          *ADMITTED, *BODY_READ, 403, 404, 422, 502, 503, 504, body="ChatCompletionRequest",
                          headers={"x-sigroute-debug": {"enum": ["0", "1", "true", "false"]}}))
    async def chat_completions(request: Request) -> Response:
        return await serve(request, CHAT)

    # Anthropic Messages (gateway.anthropic_wire): the same pipeline, errors in Anthropic's shape
    surfaces[MESSAGES.api] = MESSAGES

    @app.post("/v1/messages", summary="Create a message (Anthropic Messages API)",
              **described({"application/json": "Message", "text/event-stream": "MessageStreamEvent"},
                          *ADMITTED, *BODY_READ, 403, 404, 422, 502, 503, 504, body="MessagesRequest",
                          error="AnthropicError", headers={"anthropic-version": {"type": "string"}}))
    async def messages(request: Request) -> Response:
        return await serve(request, MESSAGES)

    @app.post("/v1/messages/count_tokens", summary="Count a Messages request's input tokens (the gateway's count)",
              **described({"application/json": "MessageTokensCount"}, *ADMITTED, *BODY_READ, body="CountTokensRequest",
                          error="AnthropicError", headers={"anthropic-version": {"type": "string"}}))
    async def count_message_tokens(request: Request) -> Response:
        pipeline = runtime.pipeline
        try:
            await pipeline.admit(request.headers)
            raw = await read_body(request, pipeline.max_request_bytes, pipeline.policy.server.body_timeout_s)
            return JSONBytes(orjson.dumps(anthropic_wire.count_tokens(raw, pipeline.policy.server)))
        except APIError as exc:
            return surface_error(MESSAGES, exc)

    # OpenAI Responses (gateway.responses_wire): created through the pipeline; stored per tenant
    @app.post("/v1/responses", summary="Create a model response (OpenAI Responses API)",
              **described({"application/json": "ResponsesResponse", "text/event-stream": "ResponsesStreamEvent"},
                          *ADMITTED, *BODY_READ, 403, 404, 422, 502, 503, 504, body="ResponsesRequest",
                          headers={"x-sigroute-debug": {"enum": ["0", "1", "true", "false"]}}))
    async def create_response(request: Request) -> Response:
        return await serve(request, responses)

    @app.get("/v1/responses/{response_id}", summary="Retrieve a stored response",
             **described({"application/json": "ResponsesResponse"}, *ADMITTED, 404, 503))
    async def retrieve_response(request: Request, response_id: str) -> Response:
        principal = await runtime.pipeline.admit(request.headers)
        return JSONBytes(await responses.retrieve(principal.tenant, response_id))

    @app.delete("/v1/responses/{response_id}", summary="Delete a stored response",
                **described({"application/json": "ResponsesDeleted"}, *ADMITTED, 404, 503))
    async def delete_response(request: Request, response_id: str) -> Response:
        principal = await runtime.pipeline.admit(request.headers)
        return JSONBytes(await responses.delete(principal.tenant, response_id))

    @app.get("/v1/responses/{response_id}/input_items", summary="List the input items of a stored response",
             **described({"application/json": "ResponsesInputItemList"}, *ADMITTED, 400, 404, 503))
    async def response_input_items(request: Request, response_id: str, limit: int = Query(20, ge=1, le=100),
                                   order: Literal["asc", "desc"] = "desc", after: str | None = None) -> Response:
        principal = await runtime.pipeline.admit(request.headers)
        return JSONBytes(await responses.input_items(principal.tenant, response_id, limit, order, after))

    @app.post("/v1/route/explain", summary="Show how a request would be routed, without calling a model",
              **described({"application/json": "RouteExplanation"}, *ADMITTED, *BODY_READ, 403, 404, 503,
                          body="ChatCompletionRequest"))
    async def explain(request: Request, api: str = CHAT.api) -> Response:
        pipeline = runtime.pipeline
        await operator(request, "explain", "explaining a route")
        surface = surfaces.get(api)
        if surface is None:
            raise APIError(f"unknown api '{api}'; the body is read as one of: {', '.join(surfaces)}", status=400,
                           type="invalid_request_error", param="api", code="invalid_value")
        raw = await read_body(request, pipeline.max_request_bytes, pipeline.policy.server.body_timeout_s)
        return JSONBytes(orjson.dumps(await pipeline.explain(raw, request.headers, surface)))

    @app.post("/v1/feedback", summary="Report the quality of an answer so learning decisions improve",
              **described({"application/json": "Feedback"}, *ADMITTED, *BODY_READ, 404, 409, 503,
                          body="FeedbackRequest",
                          headers={"idempotency-key": {"type": "string", "minLength": 1, "maxLength": 255}}))
    async def feedback(request: Request) -> Response:
        pipeline = runtime.pipeline
        raw = await read_body(request, 64 * 1024, pipeline.policy.server.body_timeout_s)
        return JSONBytes(orjson.dumps(await pipeline.feedback(raw, request.headers)))

    @app.get("/v1/models", summary="List entrypoints and models", **described({"application/json": "ModelList"},
                                                                            *ADMITTED))
    async def models(request: Request) -> Response:
        pipeline = runtime.pipeline
        await pipeline.admit(request.headers)
        policy = pipeline.policy
        direct = list(policy.models) if policy.routing.allow_direct_models else []
        return JSONBytes(orjson.dumps(model_list(dict(policy.entrypoints), direct)))

    @app.get("/health", summary="Liveness", **described({"application/json": "Health"}))
    async def health() -> Response:
        return JSONBytes(b'{"status":"ok"}')

    @app.get("/ready", summary="Readiness: a policy is loaded and some model is in service",
             **described({"application/json": "Readiness"}, *ADMITTED, 503))
    async def ready(request: Request) -> Response:
        pipeline = runtime.pipeline
        if "ready" not in pipeline.auth.public_endpoints:
            await pipeline.admit(request.headers)
        states = pipeline.upstreams.breaker_states()
        in_service = [m for m, s in states.items() if s != "open"]
        body = {"status": "ready" if in_service else "unavailable", "models": states,
                "policy_loaded_at": runtime.loaded_at}
        if pipeline.embedder is not None:  # which encoder the neural signals run on, and where
            encoder = pipeline.embedder.encoder
            body["encoder"] = {"model": encoder.model_name, "device": encoder.device, "backend": encoder.backend}
        return JSONBytes(orjson.dumps(body), status_code=200 if in_service else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse,
             **described({"text/plain": "PrometheusText"}, *ADMITTED, 403))
    async def metrics_endpoint(request: Request) -> Response:
        pipeline = runtime.pipeline
        if "metrics" not in pipeline.auth.public_endpoints:
            await operator(request, "metrics", "reading /metrics")
        encoder_stats = pipeline.embedder.encoder.stats if pipeline.embedder is not None else None
        return Response(pipeline.metrics.render(pipeline.upstreams.breaker_states(), encoder_stats),
                        media_type=pipeline.metrics.content_type)

    @app.post("/v1/admin/reload", summary="Reload the policy file",
              **described({"application/json": "Reloaded"}, *ADMITTED, 403, 409, 422))
    async def reload(request: Request) -> Response:
        await operator(request, "admin", "reloading the policy")
        try:
            policy = await runtime.reload()
        except APIError:
            raise
        except Exception as exc:
            raise APIError(f"reload failed, the previous policy keeps running: {exc}", status=422,
                           type="invalid_request_error", code="invalid_policy") from None
        return JSONBytes(orjson.dumps({"status": "reloaded", "decisions": [d.name for d in policy.decisions],
                                       "models": list(policy.models)}))

    async def operator(request: Request, surface: str, what: str):
        """The caller, if it may use an operator surface (admin, explain, metrics); else 401/403."""
        pipeline = runtime.pipeline
        principal = await pipeline.admit(request.headers)
        if not pipeline.auth.may(principal, surface):
            raise pipeline.auth.refusal(surface, what)
        return principal

    def cache_unavailable(exc: Exception) -> APIError:
        return Unavailable(f"the cache store is unreachable, nothing was removed; retry later ({exc})",
                           code="cache_store_unavailable")

    @app.delete("/v1/admin/cache", summary="Remove cached answers: all, or those of a decision and/or tenant",
                **described({"application/json": "CacheDeleted"}, *ADMITTED, 400, 403, 503))
    async def clear_cache(request: Request, decision: str | None = None, tenant: str | None = None) -> Response:
        await operator(request, "admin", "clearing the cache")
        try:
            removed = await semantic_cache.delete_where(decision=decision, tenant=tenant)
        except Exception as exc:
            raise cache_unavailable(exc) from None
        return JSONBytes(orjson.dumps({"object": "cache.deleted", "decision": decision, "tenant": tenant,
                                       "deleted": "all" if removed is None else removed}))

    @app.delete("/v1/admin/cache/entries/{key}", summary="Remove one cached answer by its key",
                **described({"application/json": "CacheDeleted"}, *ADMITTED, 403, 404, 503))
    async def delete_cache_entry(request: Request, key: str) -> Response:
        await operator(request, "admin", "removing a cache entry")
        try:
            removed = await semantic_cache.delete(key)
        except Exception as exc:
            raise cache_unavailable(exc) from None
        if not removed:
            raise APIError(f"no cached answer has the key '{key}'", status=404, type="not_found_error",
                           param="key", code="cache_entry_not_found")
        return JSONBytes(orjson.dumps({"object": "cache.deleted", "key": key, "deleted": 1}))

    @app.get("/v1/admin/dashboard", summary="What the operator's dashboard shows, as one JSON document",
             **described({"application/json": "Dashboard"}, *ADMITTED, 403))
    async def dashboard_data(request: Request) -> Response:
        await operator(request, "admin", "reading the dashboard")
        return JSONBytes(orjson.dumps(dashboard_document(runtime.pipeline, runtime.loaded_at, runtime.policy_path)))

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/{asset}", include_in_schema=False)
    async def dashboard_page(request: Request, asset: str = "index.html") -> Response:
        """The dashboard's page (no data in it: it polls /v1/admin/dashboard with an admin key).
        With auth off it is refused unless the admin surface is opened, like the data."""
        pipeline = runtime.pipeline
        if asset not in UI_ASSETS:
            raise APIError(f"no dashboard file '{asset}'", status=404, type="not_found_error", code="unknown_route")
        if not pipeline.auth.enabled and not pipeline.auth.may(None, "admin"):
            raise pipeline.auth.refusal("admin", "the dashboard")
        return Response(ui_asset(asset), media_type=UI_ASSETS[asset], headers={"cache-control": "no-cache"})

    described_for: dict[str, Any] = {"pipeline": lambda: None}   # (a weak reference to) the pipeline

    def openapi_description() -> dict[str, Any]:
        """/openapi.json: the routes with their bodies (`described`), the schemas they name, and
        how callers authenticate under the running policy (public endpoints need no key); built
        once per policy (a reload builds it again)."""
        pipeline = runtime.pipeline
        if described_for["pipeline"]() is not pipeline:   # a retired pipeline is not kept alive for this
            described_for.update(pipeline=weakref.ref(pipeline), description=build_description(pipeline))
        return described_for["description"]

    def build_description(pipeline: Pipeline) -> dict[str, Any]:
        from fastapi.openapi.utils import get_openapi

        auth, policy = pipeline.auth, pipeline.policy
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {})
        # a malformed query or path parameter is answered 400 with the OpenAI-shaped error
        # (`_validation_error`), not FastAPI's 422 HTTPValidationError
        for operations in schema["paths"].values():
            for operation in operations.values():
                if "HTTPValidationError" in str(operation["responses"].pop("422", {})):
                    operation["responses"].setdefault("400", {"description": ERROR_MEANINGS[400], "content": {
                        "application/json": _ref("Error")}})
        for name in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(name, None)
        components.setdefault("schemas", {}).update(copy.deepcopy(OPENAPI_SCHEMAS))
        components["schemas"].update(copy.deepcopy(anthropic_wire.OPENAPI_SCHEMAS))
        components["schemas"].update(copy.deepcopy(RESPONSES_SCHEMAS))
        offered = list(policy.entrypoints) + (list(policy.models) if policy.routing.allow_direct_models else [])
        for request_schema in ("ChatCompletionRequest", "MessagesRequest", "CountTokensRequest", "ResponsesRequest"):
            components["schemas"][request_schema]["properties"]["model"]["enum"] = offered
        if auth.enabled:
            components["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer KEY"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            public = {"/health"} | {f"/{name}" for name in auth.public_endpoints}
            for path in public & set(schema["paths"]):
                for operation in schema["paths"][path].values():
                    operation["security"] = []
        return schema

    app.openapi = openapi_description

    return app


def app_from_file(path: str | Path | None = None, **options: Any) -> FastAPI:
    from sigroute.policies.loader import load_default_policy, load_policy

    if path is None:
        return create_app(load_default_policy(), **options)
    return create_app(load_policy(path), policy_path=str(path), **options)
