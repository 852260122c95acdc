"""Clients that send too little, too slowly or too much cannot hold the gateway.

Raw sockets against a real gateway (uvicorn with `gateway.http_server.GuardedHttpProtocol`, as
`sigroute serve` runs it): a body shorter than its declared length, a client that leaves halfway
through its body, slowloris connections trickling headers while other clients are served,
connections that never speak, oversized heads and too many header fields.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import socket
import time

import pytest

from tests.conftest import base_policy

BODY = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "hello"}]}).encode()


@pytest.fixture
def gw(sim, gateway_factory):
    policy = base_policy(sim)
    policy["server"].update(header_timeout_s=1.0, body_timeout_s=1.0, max_header_bytes=16 * 1024, max_headers=50)
    return gateway_factory(policy)


def connect(gw) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.server.port), timeout=30)
    return sock


def read_response(sock: socket.socket, limit_s: float = 30.0) -> bytes:
    """Everything the server sends until it closes the connection (or `limit_s` passes)."""
    sock.settimeout(limit_s)
    data = b""
    try:
        while True:
            piece = sock.recv(65536)
            if not piece:
                return data
            data += piece
    except socket.timeout:
        return data + b"<still open>"
    except ConnectionResetError:
        return data + b"<reset>"


def head(extra: str = "", length: int | None = None) -> bytes:
    text = f"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\n{extra}"
    if length is not None:
        text += f"content-length: {length}\r\n"
    return (text + "\r\n").encode()


def status_and_error(response: bytes) -> tuple[int, dict]:
    """The status and OpenAI-shaped error of a response read by `read_response` (the connection
    may have been reset after the answer: the answer is what counts)."""
    status = int(response.split(b" ", 2)[1])
    head, body = response.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return status, json.loads(body[:length])["error"]


def test_a_body_shorter_than_declared_gets_408_within_the_body_timeout(gw):
    sock = connect(gw)
    sock.sendall(head(length=1000) + BODY[:19])
    status, error = status_and_error(read_response(sock))
    assert status == 408 and error["code"] == "request_timeout" and "1000" in error["message"]
    sock.close()
    assert gw.chat("still serving").status_code == 200


def test_a_client_leaving_halfway_through_its_body_is_not_an_error(gw, caplog):
    before = _metric(gw, "sigroute_client_disconnects_total")
    with caplog.at_level(logging.WARNING):
        sock = connect(gw)
        sock.sendall(head(length=1000) + BODY[:19])
        time.sleep(0.2)
        sock.close()
        deadline = time.monotonic() + 10
        while _metric(gw, "sigroute_client_disconnects_total") == before and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _metric(gw, "sigroute_client_disconnects_total") == before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]


def test_slowloris_connections_are_closed_and_others_keep_being_served(gw):
    sockets = [connect(gw) for _ in range(200)]
    for sock in sockets:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: test\r\n")
    served = []
    for _ in range(6):   # trickle one more header line each 0.3 s, and keep normal traffic going
        for sock in sockets:
            try:
                sock.sendall(b"x-slow: 1\r\n")
            except OSError:
                pass      # already closed by the gateway
        served.append(gw.chat("a normal caller").status_code)
        time.sleep(0.3)
    assert served == [200] * 6
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        endings = list(pool.map(lambda s: read_response(s, 15.0), sockets))
    assert all(not e.endswith(b"<still open>") for e in endings), "a trickling client was never disconnected"
    timed_out = [e for e in endings if e.startswith(b"HTTP/1.1 408")]
    assert len(timed_out) >= 190   # (a few may see the close before the answer is readable)
    for sock in sockets:
        sock.close()


def test_a_connection_that_never_sends_a_request_is_closed(gw):
    sock = connect(gw)
    response = read_response(sock, 15.0)
    assert response.startswith(b"HTTP/1.1 408") or response in (b"", b"<reset>")
    sock.close()


@pytest.mark.parametrize("extra, why", [
    ("x-big: " + "a" * (1024 * 1024) + "\r\n", "exceed"),                  # a 1 MB header
    ("".join(f"x-h{i}: v\r\n" for i in range(20_000)), "exceed"),         # 20,000 headers (~200 KB)
    ("".join(f"x-h{i}: v\r\n" for i in range(80)), "header fields"),      # few bytes, too many fields
], ids=["one 1 MB header", "20,000 headers", "80 small headers"])
def test_oversized_heads_get_431_and_the_gateway_serves_on(gw, extra, why):
    sock = connect(gw)
    try:
        sock.sendall(head(extra, length=len(BODY)) + BODY)
    except OSError:
        pass     # the gateway may close while a 1 MB head is still being sent
    response = read_response(sock)
    sock.close()
    status, error = status_and_error(response)
    assert status == 431 and error["code"] == "request_header_fields_too_large" and why in error["message"]
    assert gw.chat("still serving").status_code == 200


def test_a_large_body_is_not_mistaken_for_a_large_head(gw):
    big = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 3_000_000}]}).encode()
    sock = connect(gw)
    sock.sendall(head(length=len(big)) + big)
    response = read_response(sock, 30.0)
    sock.close()
    assert response.startswith(b"HTTP/1.1 200"), response[:300]   # (the connection then idles: keep-alive)


def _metric(gw, name: str) -> float:
    for line in gw.http.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0
