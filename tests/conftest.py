"""Shared fixtures: a real simulated upstream and real gateways, served by uvicorn on loopback."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import time
from typing import Any, Callable, Iterator

import httpx
import openai
import pytest

from sigroute.gateway.serving import ServerThread

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


# --------------------------------------------------------------------------------------------
# No network at run time: every test runs with connections to non-loopback addresses refused, so
# a component that tries to download something (weights, a price map, a suffix list) fails loudly.

class NetworkBlocked(OSError):
    pass


def _is_loopback(address: Any) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) and address else ""
    return host in ("localhost", "::1") or str(host).startswith("127.") or host == "0.0.0.0"


_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise NetworkBlocked(f"tests may not reach the network (tried to connect to {address!r})")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise NetworkBlocked(f"tests may not reach the network (tried to connect to {address!r})")
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


def _guard_uvloop() -> None:
    """uvloop connects through libuv, not `socket.socket.connect`: guard its connection methods too
    (`uvloop.Loop` is a Python subclass of the compiled loop, so its attributes can be replaced)."""
    try:
        import uvloop
    except ImportError:
        return
    real_create_connection = uvloop.Loop.create_connection
    real_sock_connect = uvloop.Loop.sock_connect

    async def create_connection(self, protocol_factory, host=None, port=None, *args, **kwargs):
        if host is not None and not _is_loopback((host, port)):
            raise NetworkBlocked(f"tests may not reach the network (tried to connect to {(host, port)!r})")
        return await real_create_connection(self, protocol_factory, host, port, *args, **kwargs)

    async def sock_connect(self, sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
            raise NetworkBlocked(f"tests may not reach the network (tried to connect to {address!r})")
        return await real_sock_connect(self, sock, address)

    uvloop.Loop.create_connection = create_connection
    uvloop.Loop.sock_connect = sock_connect


_guard_uvloop()

SIM_MODELS = {
    "alpha": {"ttft_ms": 1, "tokens_per_s": 0, "completion_tokens": 8, "price": {"input": 0.1, "output": 0.2},
              "accuracy": {"default": 1.0}},
    "beta": {"ttft_ms": 1, "tokens_per_s": 0, "completion_tokens": 8, "price": {"input": 1.0, "output": 2.0},
             "accuracy": {"default": 1.0}},
    "gamma": {"ttft_ms": 1, "tokens_per_s": 0, "completion_tokens": 8, "price": {"input": 5.0, "output": 10.0},
              "accuracy": {"default": 1.0}},
    # a slow streamer: 40 chunks spread over ~2 s, for disconnect tests
    "slow": {"ttft_ms": 5, "tokens_per_s": 20, "completion_tokens": 40, "accuracy": {"default": 1.0}},
}


@pytest.fixture(scope="session")
def sim_server() -> Iterator[ServerThread]:
    from sigroute.gateway.sim import create_sim_app

    with ServerThread(create_sim_app({"seed": 1, "models": SIM_MODELS})) as server:
        yield server


class Sim:
    """Test-side handle on the simulated upstream."""

    def __init__(self, server: ServerThread):
        self.url = server.url
        self.api_base = server.url + "/v1"
        self.http = httpx.Client(base_url=server.url, timeout=10)

    def reset(self) -> None:
        """Zero the stats and restore every model's configured settings (a test that changed a
        model's timing or answer length must not leak it into the next test)."""
        self.http.post("/sim/reset", params={"config": "true"}).raise_for_status()
        for name in SIM_MODELS:
            self.faults(name)

    def faults(self, model: str, **faults: float) -> None:
        self.http.put(f"/sim/models/{model}/faults", json=faults).raise_for_status()

    def stats(self) -> dict[str, Any]:
        return self.http.get("/sim/stats").json()

    def calls(self, model: str) -> int:
        return self.stats()[model]["calls"]

    def last_body(self, model: str) -> dict[str, Any]:
        return self.http.get(f"/sim/last/{model}").json()


@pytest.fixture
def sim(sim_server) -> Iterator[Sim]:
    handle = Sim(sim_server)
    handle.reset()
    yield handle
    handle.reset()
    handle.http.close()


OPERATOR_SURFACES_FOR_TESTS = ["admin", "explain"]


def base_policy(sim: Sim, **overrides: Any) -> dict[str, Any]:
    """A small valid policy routing to the sim's models; `overrides` replace top-level keys.

    Without an `auth` section the operator surfaces (admin endpoints, explain, debug signals) are
    refused by default; these functional tests use them, so the policy opens them through
    `server.open_without_auth` (tests/test_access.py checks the closed default)."""
    policy: dict[str, Any] = {
        "version": 1,
        "models": {name: {"provider": f"openai/{name}", "api_base": sim.api_base,
                          "price": SIM_MODELS[name].get("price", {"input": 0, "output": 0})}
                   for name in SIM_MODELS},
        "decisions": [{"name": "default", "models": ["alpha"]}],
        "upstream": {"retries": 0, "backoff_s": 0.0, "breaker": {"failure_threshold": 100, "cooldown_s": 1}},
    }
    policy.update(copy.deepcopy(overrides))
    if "auth" not in policy:
        policy.setdefault("server", {}).setdefault("open_without_auth", list(OPERATOR_SURFACES_FOR_TESTS))
    return policy


class Gateway:
    def __init__(self, server: ServerThread, app):
        self.server = server
        self.app = app
        self.url = server.url
        self.http = httpx.Client(base_url=server.url, timeout=30)

    def breakers_on(self, clock: "ManualClock") -> "ManualClock":
        """Run this gateway's circuit breakers on `clock`: cooldowns pass when the test advances it,
        not after a sleep, so nothing depends on how busy the machine is."""
        for breaker in self.app.state.runtime.pipeline.upstreams.breakers.values():
            breaker.clock = clock
        return clock

    def client(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key, max_retries=0, **kwargs)

    def chat(self, content: str | list | None = None, *, model: str = "auto", headers: dict | None = None,
             api_key: str | None = None, **body: Any) -> httpx.Response:
        payload = {"model": model, "messages": body.pop("messages", None) or [{"role": "user", "content": content}]}
        payload.update(body)
        h = dict(headers or {})
        if api_key:
            h["authorization"] = f"Bearer {api_key}"
        return self.http.post("/v1/chat/completions", json=payload, headers=h)


@pytest.fixture
def gateway_factory() -> Iterator[Callable[..., Gateway]]:
    from sigroute.gateway.app import create_app
    from sigroute.gateway.http_server import server_options
    from sigroute.policies.schema import Policy

    started: list[Gateway] = []

    def make(policy: dict | Policy, **options: Any) -> Gateway:
        if isinstance(policy, dict):
            policy = Policy.model_validate(policy)
        app = create_app(policy, **options)
        server = ServerThread(app, **server_options(policy)).start()   # as `sigroute serve` runs it
        gw = Gateway(server, app)
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.http.close()
        gw.server.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# A real redis-server for store tests: one per test session, on a free loopback port, with no
# persistence. Installed with apt-get when missing and we are root (the README's single test
# command must work on a fresh machine).

def apt_install(package: str, find: Callable[[], str | None], how: str) -> str:
    """The path `find()` gives, installing Debian's `package` with apt-get first when it is missing
    (as root; otherwise the test fails saying `how` to install it)."""
    import subprocess

    found = find()
    if found:
        return found
    if os.geteuid() != 0:
        pytest.fail(f"{package} is not installed and the tests are not running as root; {how}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.fail(f"could not install {package} ({' '.join(cmd)} exited {done.returncode}: "
                        f"{done.stderr.strip()[-500:]}); {how}")
    found = find()
    if found is None:
        pytest.fail(f"{package} still missing after apt-get install; {how}")
    return found


def _redis_server_binary() -> str:
    from sigroute.gateway.serving import find_redis_server

    return apt_install("redis-server", find_redis_server, "install it with `apt-get install -y redis-server` "
                       "(Debian/Ubuntu) or `brew install redis` (macOS)")


@contextlib.contextmanager
def private_redis_server(workdir, binary: str) -> Iterator[str]:
    """`redis://127.0.0.1:PORT/0` of a server `binary` (redis-server or valkey-server) started in
    `workdir` with no persistence, stopped on leaving; the test fails when it does not start."""
    from sigroute.gateway.serving import RedisServer, RedisServerError

    try:
        server = RedisServer(str(workdir), binary).__enter__()
    except RedisServerError as exc:
        pytest.fail(str(exc))
    try:
        yield server.url
    finally:
        server.__exit__()


@contextlib.contextmanager
def flushed_redis(url: str) -> Iterator[str]:
    """`url` with its database flushed on entering (and on leaving, to keep memory low)."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    client.flushdb()
    try:
        yield url
    finally:
        client.flushdb()
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """`redis://127.0.0.1:PORT/0` of a private redis-server started for this test session."""
    with private_redis_server(tmp_path_factory.mktemp("redis"), _redis_server_binary()) as url:
        yield url


@pytest.fixture
def clean_redis_url(redis_url: str) -> Iterator[str]:
    """`redis_url` with its database flushed before the test (and after, to keep memory low)."""
    with flushed_redis(redis_url) as url:
        yield url


# --------------------------------------------------------------------------------------------
# `sigroute serve` as a separate OS process (replicas sharing Redis)


class GatewayProcess:
    """`sigroute serve` in its own OS process, started with `policy` written to `policy_path` and
    ready (its /health answered) when the constructor returns. What the process prints (stdout and
    stderr together) goes to a file, so a chatty process never blocks on a full pipe: `output()`
    reads it. Use it as a context manager, or call `stop()`."""

    def __init__(self, policy: dict, tmp_path, redis_url: str | None = None, *, args: tuple[str, ...] = (),
                 policy_name: str = "replica.yaml", start_timeout_s: float = 60.0):
        import yaml

        self.policy_path = tmp_path / policy_name
        self.policy_path.write_text(yaml.safe_dump(policy))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output_path = tmp_path / f"{self.policy_path.stem}-{self.port}.log"
        command = [sys.executable, "-m", "sigroute.gateway.cli", "serve", "--policy", str(self.policy_path),
                   "--port", str(self.port), *(("--redis", redis_url) if redis_url else ()), *args]
        with open(self.output_path, "wb") as sink:
            self.proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        deadline = time.monotonic() + start_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway process exited {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"gateway process did not start within {start_timeout_s:g}s: {self.output()[-3000:]}")

    def output(self) -> str:
        """Everything the process has printed so far."""
        return self.output_path.read_text(errors="replace")

    def stop(self) -> str:
        """Terminate the process (SIGTERM, then SIGKILL after 30 s); returns its output."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        return self.output()

    def __enter__(self) -> "GatewayProcess":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# A hand-turned clock for components that take a `clock` callable (breakers, rate limiters, …):
# time moves only when the test moves it, so cooldowns and windows are crossed without sleeping
# and nothing depends on a quiet machine.


class ManualClock:
    """`clock()` is `clock.now`; the test sets `now` or calls `advance(seconds)`."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def fault_upstream():
    """The chaos benchmark's recording fault server (`benchmarks.chaos_upstream`) on loopback."""
    from benchmarks.chaos_upstream import FaultServerThread

    with FaultServerThread() as server:
        yield server


def fault_policy(upstream, models: list[str]) -> dict:
    """A static decision over `models` served by the fault server: no retries, a breaker that stays
    closed, so each test sees exactly the upstream's fault."""
    return {"version": 1,
            "models": {m: {"provider": f"openai/{m}", "api_base": upstream.server.api_base} for m in models},
            "decisions": [{"name": "default", "models": models, "algorithm": "static"}],
            "upstream": {"retries": 0, "backoff_s": 0.0, "breaker": {"failure_threshold": 100, "cooldown_s": 1}}}
