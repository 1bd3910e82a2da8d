"""The server under a bounded slow-body client and an over-limit chunked body answers 408/413
within a stated deadline and keeps serving others (loopback only, bounded loops).

A real uvicorn server on 127.0.0.1 (``ThreadServer``), 1 MiB bodies, a 2 s body deadline; the
clients are raw sockets so they can misbehave the way the issue describes: a Content-Length
that promises more than is sent, a body trickled a byte at a time, 20 MiB chunked."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import time

import httpx
import pytest

from tests.serve.conftest import ThreadServer, chat_body, data_uri

LIMIT = 1 << 20
BODY_TIMEOUT = 2.0
DEADLINE_408 = BODY_TIMEOUT + 3.0  # the stated deadline for a slow body's answer
DEADLINE_413 = 5.0  # ... and for an over-limit one, from the first byte sent


@pytest.fixture(scope="module")
def srv(export_feather, sample_image, tmp_path_factory):
    from feather.runtime import Pipeline
    from feather.serve.app import create_app
    from feather.serve.protocol import Limits

    pipe = Pipeline.load(export_feather)
    app = create_app(pipe, "feather", Limits(max_body_bytes=LIMIT, body_timeout_s=BODY_TIMEOUT), max_concurrency=1,
                     max_queue=8)
    with ThreadServer(app) as server:
        server.port = int(server.url.rsplit(":", 1)[1])
        yield server


@pytest.fixture(scope="module")
def image_uri(sample_image, tmp_path_factory):
    path = tmp_path_factory.mktemp("bodies") / "sample.png"
    sample_image.save(path)
    return data_uri(path)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(True)
    return sock


def _head(length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n").encode()


def _read_response(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection (or the deadline passes)."""
    data = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            return data + b"<closed>"
        data += chunk
    return data


def _status_and_error(raw: bytes) -> tuple[int, dict]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    assert b"connection: close" in head.lower(), head
    return status, json.loads(body.removesuffix(b"<closed>"))["error"]


@pytest.mark.parametrize(("declared", "sent"), [(100_000, 7), (1000, 0), (50, 49), (LIMIT, LIMIT // 2)])
def test_a_body_shorter_than_its_content_length_gets_408(srv, declared, sent):
    with contextlib.closing(_connect(srv.port)) as sock:
        t0 = time.monotonic()
        sock.sendall(_head(declared) + b"{" * sent)
        raw = _read_response(sock, t0 + DEADLINE_408)
        took = time.monotonic() - t0
    assert raw.endswith(b"<closed>"), raw[:200]  # answered, then the connection closed
    status, err = _status_and_error(raw)
    assert status == 408 and err["code"] == "body_timeout" and f"within {BODY_TIMEOUT:g} s" in err["message"]
    assert BODY_TIMEOUT - 0.1 <= took < DEADLINE_408, took


@pytest.mark.parametrize("interval", [0.05, 0.3])
def test_a_trickled_body_gets_408_at_the_deadline(srv, interval):
    """The deadline is for the whole body, not per byte: a client that keeps sending one byte
    every ``interval`` s is still cut off."""
    with contextlib.closing(_connect(srv.port)) as sock:
        t0 = time.monotonic()
        sock.sendall(_head(10_000))
        raw = b""
        for _ in range(int(DEADLINE_408 / interval)):  # bounded: stops at the deadline at the latest
            try:
                sock.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                break
            raw += _read_response(sock, time.monotonic() + interval)
            if raw.endswith(b"<closed>"):
                break
        took = time.monotonic() - t0
    status, _ = _status_and_error(raw)
    assert status == 408 and took < DEADLINE_408, (status, took)


@pytest.mark.parametrize("total", [2 * LIMIT, 20 * LIMIT])
def test_an_over_limit_chunked_body_gets_413_while_it_streams(srv, total):
    chunk = b" " * 65536
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    with contextlib.closing(_connect(srv.port)) as sock:
        t0 = time.monotonic()
        sock.sendall(_head(None))
        raw, sent = b"", 0
        while sent < total and time.monotonic() - t0 < DEADLINE_413:  # bounded by size and time
            raw += _read_response(sock, time.monotonic())  # whatever has arrived, without waiting
            if raw:
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        raw += _read_response(sock, t0 + DEADLINE_413)
        took = time.monotonic() - t0
    status, err = _status_and_error(raw)
    assert status == 413 and err["code"] == "body_too_large" and str(LIMIT) in err["message"]
    # refused soon after the limit, not at the end (what was sent past it sat in the sockets' buffers)
    assert took < DEADLINE_413 and sent <= 8 * LIMIT, (took, sent)


@pytest.mark.parametrize("declared", [LIMIT + 1, 20 * LIMIT, 10**12])
def test_an_over_limit_content_length_gets_413_before_the_body(srv, declared):
    with contextlib.closing(_connect(srv.port)) as sock:
        t0 = time.monotonic()
        sock.sendall(_head(declared))
        raw = _read_response(sock, t0 + DEADLINE_413)
        took = time.monotonic() - t0
    status, err = _status_and_error(raw)
    assert status == 413 and f"{declared} bytes exceed" in err["message"] and took < 1.0, (status, took)


def test_others_are_served_while_slow_clients_hang(srv, image_uri):
    """Five slow-body clients hold connections; a normal request is answered meanwhile, and the
    slow ones are all cut off with 408 by the deadline."""
    slow = [_connect(srv.port) for _ in range(5)]
    try:
        t0 = time.monotonic()
        for sock in slow:
            sock.sendall(_head(100_000) + b'{"messages"')
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=chat_body(image_uri, max_tokens=2), timeout=30)
        assert r.status_code == 200 and len(r.json()["feather"]["tokens"]) == 2
        assert time.monotonic() - t0 < BODY_TIMEOUT, "the normal request waited for the slow ones"
        assert httpx.get(f"{srv.url}/health", timeout=5).status_code == 200
        statuses = [_status_and_error(_read_response(s, t0 + DEADLINE_408))[0] for s in slow]
        assert statuses == [408] * 5
        assert time.monotonic() - t0 < DEADLINE_408 + 1
    finally:
        for sock in slow:
            sock.close()


def test_a_chunked_body_within_the_limit_is_answered(srv, image_uri):
    body = json.dumps(chat_body(image_uri, max_tokens=2)).encode()
    parts = (body[i:i + 4096] for i in range(0, len(body), 4096))
    r = httpx.post(f"{srv.url}/v1/chat/completions", content=parts, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize("depth", [65, 1000, 100_000])
def test_deeply_nested_body_is_400_not_500(srv, depth):
    body = b"[" * depth + b"]" * depth
    r = httpx.post(f"{srv.url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"},
                   timeout=30)
    assert r.status_code == 400 and "\n" not in r.text, r.text
    assert r.json()["error"]["message"] == (f"request body: JSON nested too deeply ({depth} levels, expected at most "
                                            "64)")
