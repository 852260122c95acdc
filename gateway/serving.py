"""Run an ASGI app under uvicorn on loopback in a background thread.

Used by the demo (simulated upstream and gateway in one process), by tests (real HTTP servers on
free ports) and by benchmarks. `ServerThread` binds the socket itself, so port 0 picks a free
port with no race between choosing and binding it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

import uvicorn


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


class RedactQueryStrings(logging.Filter):
    """Drops the query string from uvicorn's access-log lines: callers put credentials there
    (`?api_key=…`) and the path alone says which endpoint was called."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].split("?", 1)[0] + "?…", *args[3:])
        return True


def redact_access_log() -> None:
    """Install `RedactQueryStrings` on uvicorn's access logger (idempotent)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactQueryStrings) for f in access.filters):
        access.addFilter(RedactQueryStrings())


def best_loop() -> str:
    return "uvloop" if _has("uvloop") else "asyncio"


def best_http() -> str:
    return "httptools" if _has("httptools") else "h11"


class ServerThread:
    """`with ServerThread(app) as server: httpx.get(server.url + "/health")`."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning",
                 startup_timeout_s: float = 30.0, **uvicorn_options):
        self.app = app
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        options = {"loop": best_loop(), "http": best_http(), "log_level": log_level,
                   "access_log": False, "timeout_graceful_shutdown": 1}
        options.update(uvicorn_options)
        self.config = uvicorn.Config(app, **options)
        self.server = uvicorn.Server(self.config)
        self.thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)
        self.startup_timeout_s = startup_timeout_s
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            if self.config.loop == "uvloop":
                import uvloop

                uvloop.run(self.server.serve(sockets=[self.sock]))
            else:
                asyncio.run(self.server.serve(sockets=[self.sock]))
        except BaseException as exc:  # surfaced by start()
            self.error = exc

    def start(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self.server.started:
            if self.error is not None or not self.thread.is_alive():
                raise RuntimeError(f"server on port {self.port} failed to start: {self.error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"server on port {self.port} did not start in {self.startup_timeout_s}s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# a private redis-server (tests and benchmarks start their own)

REDIS_SERVER_PATHS = ("/usr/bin/redis-server", "/usr/sbin/redis-server", "/usr/local/bin/redis-server")


class RedisServerError(RuntimeError):
    """redis-server is missing, or did not start; the message says why (with its log)."""


def find_redis_server() -> str | None:
    import os
    import shutil

    return shutil.which("redis-server") or next((p for p in REDIS_SERVER_PATHS if os.access(p, os.X_OK)), None)


class RedisServer:
    """A redis-server on a free loopback port without persistence, for as long as the `with` block.

    `url` is `redis://127.0.0.1:PORT/0`. Start-up waits until PING answers; failures raise
    `RedisServerError` with the server's log.
    """

    def __init__(self, workdir: str, binary: str | None = None):
        self.workdir = workdir
        self.binary = binary or find_redis_server()
        self.proc = None
        self.url = ""

    def __enter__(self) -> "RedisServer":
        import subprocess
        from pathlib import Path

        if self.binary is None:
            raise RedisServerError("redis-server is not installed (apt-get install -y redis-server, "
                                   "or brew install redis)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        log = Path(self.workdir) / "redis.log"
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(log), "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                self.__exit__()
                raise RedisServerError(f"redis-server did not answer PING on port {port} "
                                       f"(exit code {self.proc.poll()}); its log:\n{text}")
            time.sleep(0.02)
        self.url = f"redis://127.0.0.1:{port}/0"
        return self

    def __exit__(self, *exc) -> None:
        import subprocess

        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
