"""The gunicorn worker (``decoder_api.http.worker``): gthread that serves a busy keep-alive
connection's next request on the thread that served the last one.

A real gunicorn serves a small WSGI app with the worker; the helpers are checked on real sockets.
"""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gunicorn import glogging
from gunicorn.config import Config
from gunicorn.workers.gthread import TConn

from decoder_api.http import worker as worker_module
from decoder_api.http.worker import LINGER_S, StreamingThreadWorker, linger_s, next_request_within
from devtools.processes import ServiceProcess, free_port, http_ready

ROOT = Path(__file__).resolve().parents[2]
APP = """
def app(environ, start_response):
    reply = str(len(environ["wsgi.input"].read())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(reply)))])
    return [reply]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    app_dir, port = tmp_path_factory.mktemp("worker-app"), free_port()
    (app_dir / "echo_app.py").write_text(APP)
    argv = ["-m", "gunicorn", "--worker-class", "decoder_api.http.worker.StreamingThreadWorker"]
    argv += ["--threads", "4", "--keep-alive", "5", "--bind", f"127.0.0.1:{port}"]
    argv += ["--chdir", str(app_dir), "--pythonpath", str(ROOT), "echo_app:app"]
    ready = http_ready(f"http://127.0.0.1:{port}/")
    gunicorn = ServiceProcess("gunicorn", argv, {}, app_dir / "gunicorn.log", ready).start()
    yield "127.0.0.1", port
    gunicorn.stop()


def post(conn: http.client.HTTPConnection, body: bytes) -> int:
    """POST ``body``; the body length the app read."""
    conn.request("POST", "/", body, {"Content-Type": "application/octet-stream"})
    response = conn.getresponse()
    assert response.status == 200
    return int(response.read())


def test_back_to_back_requests_are_served_in_order(server: tuple[str, int]) -> None:
    conn = http.client.HTTPConnection(*server, timeout=10)
    served = [post(conn, bytes(n * 100)) for n in range(40)]
    conn.close()
    assert served == [n * 100 for n in range(40)]


def test_a_request_after_a_pause_longer_than_the_linger_is_served(server: tuple[str, int]) -> None:
    conn = http.client.HTTPConnection(*server, timeout=10)
    for _ in range(4):
        post(conn, b"x" * 10)
        post(conn, b"y" * 20)
        time.sleep(LINGER_S * 5)  # back to the poller, then woken by this request
    assert post(conn, b"z" * 30) == 30
    conn.close()


def test_pipelined_requests_are_all_answered(server: tuple[str, int]) -> None:
    requests = b"".join(
        f"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\n".encode() + b"a" * n for n in (3, 5, 7)
    )
    with socket.create_connection(server, timeout=10) as sock:
        sock.sendall(requests)
        received = b""
        while received.count(b"HTTP/1.1 200") < 3 or not received.endswith(b"\r\n\r\n7"):
            chunk = sock.recv(65536)
            assert chunk, received
            received += chunk
    bodies = [part.rsplit(b"\r\n\r\n", 1)[-1].split()[-1] for part in received.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"3", b"5", b"7"]


def test_a_client_leaving_while_its_thread_waits_costs_nothing(server: tuple[str, int]) -> None:
    for _ in range(8):
        conn = http.client.HTTPConnection(*server, timeout=10)
        post(conn, b"1")
        post(conn, b"2")
        conn.close()  # while its thread watches for a third request
    conn = http.client.HTTPConnection(*server, timeout=10)
    assert post(conn, b"still here") == len(b"still here")
    conn.close()


def served_by_one_handle(gap_s: float | None, requests: int) -> tuple[bool, int]:
    """One call of the worker's ``handle`` on a connection whose client sends ``requests``
    requests back to back (then waits): what it returned and how many requests it served."""
    cfg = Config()
    worker = StreamingThreadWorker(0, os.getpid(), [], None, 30, cfg, glogging.Logger(cfg))
    served: list[int] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        served.append(len(environ["wsgi.input"].read()))
        start_response("200 OK", [("Content-Length", "2")])
        return [b"ok"]

    worker.wsgi = app
    ours, theirs = socket.socketpair()
    conn = TConn(cfg, ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
    conn.decoder_gap_s = gap_s
    client = http.client.HTTPConnection("decoder", timeout=10)
    client.sock = theirs

    def call() -> None:
        try:
            for n in range(requests):
                client.request("POST", "/", b"a" * n)
                assert client.getresponse().read() == b"ok"
            client.close()
        except (OSError, http.client.HTTPException):
            pass  # handle returned and the connection was closed (it would have gone to the poller)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        result = worker.handle(conn)
        ours.close()
        caller.join(10)
        return result, len(served)
    finally:
        ours.close()
        theirs.close()
        worker.tmp.close()


def test_a_busy_connection_is_served_by_one_handle_until_it_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    linger = 5.0  # long, so a loaded machine delaying the client does not decide the outcome
    monkeypatch.setattr(worker_module, "LINGER_S", linger)
    # served until the client left (which ends the connection: nothing to keep alive)
    assert served_by_one_handle(linger / 100, requests=5) == (False, 5)
    assert served_by_one_handle(None, requests=5) == (True, 1)  # unknown yet: back to the poller
    assert served_by_one_handle(linger * 2, requests=5) == (True, 1)  # a real-time caller


@pytest.fixture
def pair() -> Iterator[tuple[TConn, socket.socket]]:
    ours, theirs = socket.socketpair()
    conn = TConn(Config(), ours, ("127.0.0.1", 1), ("127.0.0.1", 2))
    conn.init()
    yield conn, theirs
    ours.close()
    theirs.close()


def test_next_request_within_sees_bytes_here_arriving_or_read_ahead(
    pair: tuple[TConn, socket.socket],
) -> None:
    conn, peer = pair
    assert not next_request_within(conn, 0.0)
    started = time.monotonic()
    assert not next_request_within(conn, 0.05)
    assert time.monotonic() - started >= 0.04
    threading.Timer(0.05, peer.sendall, [b"GET / HTTP/1.1\r\n"]).start()
    assert next_request_within(conn, 5.0)
    conn.sock.recv(100)
    assert not next_request_within(conn, 0.0)
    conn.parser.unreader.unread(b"GET / HTTP/1.1\r\n")  # bytes the last body's read took ahead
    assert next_request_within(conn, 0.0)


def test_only_a_client_that_came_back_within_the_linger_is_waited_for(
    pair: tuple[TConn, socket.socket],
) -> None:
    conn, _ = pair
    assert linger_s(conn) == 0.0  # a new connection: nothing known
    conn.decoder_gap_s = LINGER_S / 10
    assert linger_s(conn) == LINGER_S
    conn.decoder_gap_s = 0.2  # a real-time caller's next chunk
    assert linger_s(conn) == 0.0
