"""Shared pieces for benchmarks: servers in their own processes and a cheap closed-loop load generator.

Benchmarks measure milliseconds on small machines, so the load generator must cost as little CPU
as possible and must not share a GIL with the servers it measures:

- `ServerProcess` starts a server as a subprocess (e.g. ``sigroute sim``, ``sigroute serve``,
  ``python -m benchmarks.passthrough``) on a free port and waits for its ``GET /health``.
- `Connection` is a minimal HTTP/1.1 keep-alive client over asyncio streams (no httpx: its
  per-request CPU cost would be larger than the overheads being measured). It understands
  ``content-length`` and ``transfer-encoding: chunked`` bodies and timestamps the headers, the
  first body bytes (time to first token for SSE streams) and the end of the body.
- `closed_loop` runs `concurrency` virtual clients, one connection each, each sending its next
  request as soon as the previous answer is complete. Warm-up requests are not recorded, and
  clients that finish their measured share keep sending (unrecorded) requests until every client
  is done, so the measured requests all see the full concurrency.
- `percentile`, `stats` and `cpu_seconds` summarise samples and server CPU use.

Example::

    from benchmarks.loadgen import ServerProcess, closed_loop, stats
    with ServerProcess(["sigroute", "sim", "--config", cfg, "--port", "{port}"]) as sim:
        body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
        result = run_async(closed_loop(sim.host, sim.port, "/v1/chat/completions", body,
                                       concurrency=4, requests=200))
        print(stats([s.total_ms for s in result.samples]), result.throughput)
"""

from __future__ import annotations

import asyncio
import math
import os
import platform
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Mapping, Sequence

__all__ = [
    "Connection",
    "HTTPError",
    "LoadResult",
    "Sample",
    "ServerProcess",
    "closed_loop",
    "cpu_seconds",
    "free_port",
    "machine_info",
    "median",
    "percentile",
    "run_async",
    "stats",
    "wait_http_ok",
]


# ------------------------------------------------------------------------------------------------
# servers in their own processes


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the server binds it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_http_ok(host: str, port: int, path: str = "/health", timeout_s: float = 60.0,
                 proc: subprocess.Popen | None = None) -> None:
    """Poll ``GET path`` until it answers 200 (raises if `proc` dies or the time runs out)."""
    deadline = time.monotonic() + timeout_s
    request = f"GET {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\n\r\n".encode()
    last: Exception | str | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode} before answering {path}")
        try:
            with socket.create_connection((host, port), timeout=2.0) as sock:
                sock.sendall(request)
                head = sock.recv(65536)
            if head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.0 200"):
                return
            last = head[:80].decode("latin-1", "replace")
        except OSError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"http://{host}:{port}{path} did not answer 200 within {timeout_s:g}s (last: {last!r})")


class ServerProcess:
    """Run a server command in its own process; ``{port}`` in the command is replaced by a free port.

    ``with ServerProcess([sys.executable, "-m", "benchmarks.passthrough", "--port", "{port}", ...]) as p:``
    then ``p.url``, ``p.pid``. Its output goes to a temporary log that is shown if it fails to start.
    """

    def __init__(self, command: Sequence[str], host: str = "127.0.0.1", port: int | None = None,
                 health_path: str = "/health", env: Mapping[str, str] | None = None,
                 startup_timeout_s: float = 60.0, name: str | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.command = [str(part).replace("{port}", str(self.port)) for part in command]
        self.health_path = health_path
        self.env = {**os.environ, **(env or {})}
        self.startup_timeout_s = startup_timeout_s
        self.name = name or os.path.basename(self.command[0])
        self.proc: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> "ServerProcess":
        import tempfile

        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=self.env)
        try:
            wait_http_ok(self.host, self.port, self.health_path, self.startup_timeout_s, self.proc)
        except Exception as exc:
            output = self.output()
            self.stop()
            raise RuntimeError(f"{self.name} failed to start ({exc}); command: {' '.join(self.command)}\n"
                               f"--- its output ---\n{output}") from None
        return self

    def output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-8000:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by process `pid` (Linux /proc; None elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)
    except (OSError, ValueError, IndexError):
        return None


def machine_info() -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    for module in ("uvloop", "httptools", "uvicorn", "httpx", "fastapi", "starlette"):
        try:
            mod = __import__(module)
            info[module] = getattr(mod, "__version__", "?")
        except ImportError:
            info[module] = None
    return info


# ------------------------------------------------------------------------------------------------
# a minimal HTTP/1.1 client


class HTTPError(Exception):
    """The server answered something the load generator cannot use (or closed the connection)."""


@dataclass(slots=True)
class Sample:
    """One request as the client saw it. Times in milliseconds from just before the request was written."""

    status: int
    total_ms: float  # last body byte (the whole response)
    first_byte_ms: float  # first body byte (for SSE: the first event, i.e. time to first token)
    headers: dict[str, str]
    body: bytes | None = None  # kept only when asked for


class Connection:
    """One keep-alive HTTP/1.1 connection. Not safe for concurrent use: one request at a time."""

    def __init__(self, host: str, port: int):
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except (OSError, ConnectionError):
                pass
            self.reader = self.writer = None

    def prepare(self, method: str, path: str, body: bytes = b"",
                headers: Mapping[str, str] | None = None) -> bytes:
        """The request's bytes; build once and send many times with `send`."""
        lines = [f"{method} {path} HTTP/1.1", f"host: {self.host}:{self.port}"]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body)}")
        for key, value in (headers or {}).items():
            lines.append(f"{key}: {value}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def send(self, raw_request: bytes, keep_body: bool = False) -> Sample:
        if self.writer is None:
            await self.connect()
        reader, writer = self.reader, self.writer
        clock = time.perf_counter
        t0 = clock()
        writer.write(raw_request)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HTTPError(f"connection closed before the response headers ({exc!r})") from None
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            raise HTTPError(f"bad status line {lines[0]!r}") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        first = None
        parts: list[bytes] = []
        try:
            if headers.get("transfer-encoding", "").lower() == "chunked":
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";", 1)[0], 16)
                    if size == 0:
                        # trailers (normally none) end with an empty line
                        while (await reader.readuntil(b"\r\n")) != b"\r\n":
                            pass
                        break
                    data = await reader.readexactly(size + 2)
                    if first is None:
                        first = clock()
                    if keep_body:
                        parts.append(data[:-2])
            else:
                length = int(headers.get("content-length", "0"))
                if length:
                    data = await reader.readexactly(length)
                    first = clock()  # (reading in one go: first and last byte are not told apart)
                    if keep_body:
                        parts.append(data)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError) as exc:
            await self.close()
            raise HTTPError(f"response body broken off ({exc!r})") from None
        end = clock()
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Sample(status, (end - t0) * 1000.0, ((first or end) - t0) * 1000.0, headers,
                      b"".join(parts) if keep_body else None)


# ------------------------------------------------------------------------------------------------
# closed-loop load


async def closed_loop(host: str, port: int, path: str, body: bytes | Sequence[bytes], *, concurrency: int,
                      requests: int, warmup: int = 2, headers: Mapping[str, str] | None = None,
                      method: str = "POST", expect_status: int = 200) -> "LoadResult":
    """`concurrency` virtual clients on one keep-alive connection each, each sending its next request
    as soon as the previous one is answered.

    `body` is one request body, or a list of bodies that the clients go through in turn (client
    ``i`` starts at body ``i`` and steps by `concurrency`), e.g. to keep concurrent requests distinct.

    Every client first sends `warmup` unrecorded requests; then all start together and record
    ``ceil(requests / concurrency)`` each (so at least `requests` in total), and a client that is
    done keeps the load up with unrecorded requests until all are done. Raises `HTTPError` on a
    status other than `expect_status`. Returns the recorded samples, the number of requests sent in
    all (warm-up and keep-up ones included, e.g. to divide server CPU time by) and the wall time of
    the measured part.
    """
    per_client = max(1, math.ceil(requests / concurrency))
    all_headers = {"content-type": "application/json", **(headers or {})}
    connections = [Connection(host, port) for _ in range(concurrency)]
    await asyncio.gather(*(c.connect() for c in connections))
    bodies = [body] if isinstance(body, (bytes, bytearray)) else list(body)
    if not bodies:
        raise ValueError("closed_loop needs at least one request body")
    raws = [connections[0].prepare(method, path, b, all_headers) for b in bodies]
    warmed = 0
    sent = 0
    began = ended = 0.0
    go = asyncio.Event()
    done_count = 0
    all_done = asyncio.Event()
    results: list[list[Sample]] = [[] for _ in range(concurrency)]

    async def client(i: int) -> None:
        nonlocal warmed, done_count, began, ended
        conn = connections[i]
        turn = i

        def next_raw() -> bytes:
            nonlocal turn
            raw = raws[turn % len(raws)]
            turn += concurrency
            return raw

        for _ in range(warmup):
            _check(await conn.send(next_raw()))
        warmed += 1
        if warmed == concurrency:
            began = time.perf_counter()
            go.set()
        await go.wait()
        out = results[i]
        for _ in range(per_client):
            sample = await conn.send(next_raw())
            _check(sample)
            out.append(sample)
        done_count += 1
        if done_count == concurrency:
            ended = time.perf_counter()
            all_done.set()
        while not all_done.is_set():  # keep the concurrency up for the others
            _check(await conn.send(next_raw()))

    def _check(sample: Sample) -> None:
        nonlocal sent
        sent += 1
        if sample.status != expect_status:
            raise HTTPError(f"{method} {path} on port {port} answered {sample.status}, expected {expect_status}")

    tasks = [asyncio.ensure_future(client(i)) for i in range(concurrency)]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    return LoadResult([s for client_samples in results for s in client_samples], sent, ended - began)


async def interleaved_rounds(rounds: int, scenarios: Sequence[str], targets: Sequence[str], batch, log) -> list[dict]:
    """Run ``await batch(target, scenario)`` for every scenario and target, `rounds` times; the
    order of the targets rotates from round to round so that drifts in machine speed hit every
    target alike. Each returned record gets its ``round``."""
    records = []
    targets = list(targets)
    for r in range(rounds):
        t0 = time.perf_counter()
        for scenario in scenarios:
            shift = r % len(targets)
            for target in targets[shift:] + targets[:shift]:
                record = await batch(target, scenario)
                record["round"] = r
                records.append(record)
        log(f"round {r + 1}/{rounds} done in {time.perf_counter() - t0:.1f}s")
    return records


@dataclass(slots=True)
class LoadResult:
    samples: list[Sample]  # the recorded requests
    sent: int  # every request sent, warm-up and keep-up ones included
    wall_s: float  # duration of the measured part

    @property
    def throughput(self) -> float:
        """Recorded requests per second during the measured part."""
        return len(self.samples) / self.wall_s if self.wall_s > 0 else float("nan")


# ------------------------------------------------------------------------------------------------
# statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return float(ordered[low] + (ordered[high] - ordered[low]) * (rank - low))


def stats(values: Sequence[float], digits: int = 4) -> dict[str, float]:
    """n, mean, p50, p90, p95, p99, min, max of `values` (rounded)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": round(sum(values) / len(values), digits),
        "p50": round(percentile(values, 50), digits),
        "p90": round(percentile(values, 90), digits),
        "p95": round(percentile(values, 95), digits),
        "p99": round(percentile(values, 99), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def median(values: Sequence[float]) -> float:
    return percentile(values, 50)


def run_async(coro):
    """Run `coro` on a uvloop event loop when uvloop is installed (cheaper), else on asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
