"""Abuse limits against a real server (creation rate, sessions per key, slow clients), and the
watch that cuts bodies arriving too slowly."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import requests

from decoder_api.http.limits import DeadlineInput, DeadlineWatch, RequestTimeout
from devtools.processes import DecoderServer, start_decoder


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DecoderServer]:
    server = start_decoder(
        tmp_path_factory.mktemp("guarded"),
        engine="vosk",
        model="ko",
        pool_warm="0",
        api_keys="alpha,beta,gamma",
        session_rate_per_min="4",
        max_sessions_per_key="2",
        request_timeout_s="2",
        threads="4",
    )
    yield server
    server.stop()


def open_session(server: DecoderServer, key: str) -> requests.Response:
    return requests.post(f"{server.url}/v1/sessions", json={}, headers={"Authorization": f"Bearer {key}"})


def end_session(server: DecoderServer, key: str, response: requests.Response) -> None:
    body = response.json()
    headers = {"Authorization": f"Bearer {key}", "X-Session-Token": body["token"]}
    requests.delete(f"{server.url}/v1/sessions/{body['session_id']}", headers=headers, timeout=30)


def test_open_sessions_per_api_key_are_capped(guarded: DecoderServer) -> None:
    first, second = open_session(guarded, "alpha"), open_session(guarded, "alpha")
    assert (first.status_code, second.status_code) == (201, 201)
    third = open_session(guarded, "alpha")
    assert third.status_code == 429
    assert third.json()["error"] == "too_many_sessions"
    other = open_session(guarded, "beta")
    assert other.status_code == 201
    for key, response in (("alpha", first), ("alpha", second), ("beta", other)):
        end_session(guarded, key, response)
    again = open_session(guarded, "alpha")
    assert again.status_code == 201
    end_session(guarded, "alpha", again)


def test_session_creation_rate_is_limited_per_key(guarded: DecoderServer) -> None:
    statuses = []
    for _ in range(6):
        response = open_session(guarded, "gamma")
        statuses.append(response.status_code)
        if response.status_code == 201:
            end_session(guarded, "gamma", response)
        else:
            assert response.json()["error"] == "rate_limited"
            assert int(response.headers["Retry-After"]) >= 1
    assert statuses[:4] == [201] * 4
    assert statuses[4:] == [429, 429]


def trickle(server: DecoderServer) -> socket.socket:
    """A client that promises a body and sends it one byte at a time."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    head = (
        "POST /decode HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer beta\r\n"
        "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode())
    return sock


def test_slow_clients_cannot_hold_the_threads(guarded: DecoderServer) -> None:
    """Twice as many tricklers as threads: the ones that reach a thread are cut at the request
    deadline (408 or closed), the rest wait in gunicorn's poller, and other clients are served."""
    slow = [trickle(guarded) for _ in range(8)]
    cut: set[int] = set()
    served = 0
    until = time.monotonic() + 8  # four request deadlines of trickling
    while time.monotonic() < until:
        for index, sock in enumerate(slow):
            if index not in cut and not still_trickling(sock):
                cut.add(index)
        served += requests.get(f"{guarded.url}/healthz", timeout=10).status_code == 200
        time.sleep(0.3)
    for sock in slow:
        sock.close()
    assert len(cut) >= 4
    assert served >= 10


def still_trickling(sock: socket.socket) -> bool:
    """Send one more byte; False once the server answered 408 or closed the connection."""
    try:
        sock.sendall(b"R")
        sock.settimeout(0.01)
        reply = sock.recv(4096)
    except TimeoutError:
        return True
    except OSError:
        return False
    if reply:
        assert b" 408 " in reply.split(b"\r\n")[0]
    return False


def test_deadlines_expire_in_order_on_one_thread() -> None:
    """Many request deadlines share one thread; each runs once it is due, an earlier one added
    after a later one is not held up by it, and a cancelled one never runs."""
    watch = DeadlineWatch()
    before = threading.active_count()
    late, early, cancelled = threading.Event(), threading.Event(), threading.Event()
    watch.add(30.0, late.set)
    keys = [watch.add(0.5, cancelled.set) for _ in range(50)]
    for key in keys:
        watch.cancel(key)
    watch.add(0.6, early.set)
    assert threading.active_count() <= before + 1
    assert early.wait(5)
    assert not late.is_set() and not cancelled.is_set()


def test_a_body_trickling_past_its_deadline_times_out() -> None:
    server, client = socket.socketpair()
    with server, client:
        client.sendall(b"abc")  # of the 100 bytes promised
        body = DeadlineInput(server.makefile("rb"), server, 100, 0.2, DeadlineWatch())
        assert body.read(3) == b"abc"
        with pytest.raises(RequestTimeout):
            body.read(97)


def test_a_body_read_in_time_is_not_cut() -> None:
    server, client = socket.socketpair()
    watch, later = DeadlineWatch(), threading.Event()
    with server, client:
        client.sendall(b"abcd")
        body = DeadlineInput(server.makefile("rb"), server, 4, 0.2, watch)
        assert body.read(4) == b"abcd"
        watch.add(0.4, later.set)
        assert later.wait(5)  # past the body's deadline
        client.sendall(b"next request")  # on the kept-alive connection
        assert server.recv(64) == b"next request"
