"""A minimal pass-through proxy: the floor for the added latency of any Python proxy.

FastAPI + one pooled `httpx.AsyncClient`, no logic: ``POST /v1/chat/completions`` forwards the
request body as it is to ``UPSTREAM/chat/completions`` and sends back the upstream's status,
content type and body bytes; server-sent-event answers are streamed through chunk by chunk as
they arrive. ``GET /health`` answers ``{"status":"ok"}``. `benchmarks.overhead` compares
sigroute's added latency with this proxy's.

    python -m benchmarks.passthrough --upstream http://127.0.0.1:8100/v1 --port 8200
"""

from __future__ import annotations

import argparse
import contextlib

import httpx
from fastapi import FastAPI, Request
from starlette.background import BackgroundTask
from starlette.responses import Response, StreamingResponse

# hop-by-hop or recomputed headers that must not be copied from the upstream's answer
_SKIP = {"content-length", "transfer-encoding", "connection", "keep-alive", "date", "server"}


def create_passthrough_app(upstream: str, max_connections: int = 1000) -> FastAPI:
    """The proxy for the OpenAI-compatible server whose base URL (…/v1) is `upstream`."""
    target = upstream.rstrip("/") + "/chat/completions"
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections,
                              keepalive_expiry=30)
        async with httpx.AsyncClient(limits=limits, timeout=None) as client:
            state["client"] = client
            yield

    app = FastAPI(title="sigroute-passthrough", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        client = state["client"]
        body = await request.body()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        if "authorization" in request.headers:
            headers["authorization"] = request.headers["authorization"]
        upstream_request = client.build_request("POST", target, content=body, headers=headers)
        response = await client.send(upstream_request, stream=True)
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _SKIP}
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            return StreamingResponse(response.aiter_raw(), status_code=response.status_code,
                                     headers=out_headers, background=BackgroundTask(response.aclose))
        try:
            content = await response.aread()
        finally:
            await response.aclose()
        return Response(content, status_code=response.status_code, headers=out_headers)

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.passthrough", description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="base URL of the OpenAI-compatible server (…/v1)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)

    import uvicorn

    from sigroute.gateway.serving import best_http, best_loop

    uvicorn.run(create_passthrough_app(args.upstream), host=args.host, port=args.port, loop=best_loop(),
                http=best_http(), log_level=args.log_level, access_log=False, timeout_graceful_shutdown=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
