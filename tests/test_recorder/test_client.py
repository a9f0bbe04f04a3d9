"""Retries, resumption and the duplicate-chunk policy of the HTTP client, against a scripted decoder."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from recorder.call import run_call
from recorder.client import HttpTransport, SessionRequest
from recorder.config import ServerSettings
from recorder.events import CallEvent, CallInfo, CallSummary, FinalReceived
from recorder.retry import RetryPolicy, parse_retry_after
from tests.test_recorder.stub_decoder import Drop, Status, StubDecoder, StubState

CHUNK = b"\1\0" * 3200
CHUNKS = 9


@pytest.fixture
def stub() -> Iterator[StubDecoder]:
    server = StubDecoder()
    yield server
    server.stop()


def call(
    stub: StubDecoder, retry_s: float = 10, chunks: Iterator[bytes] | None = None
) -> tuple[CallSummary, list]:
    events: list[CallEvent] = []
    server = ServerSettings(url=stub.url, retry_s=retry_s, read_timeout_s=5)
    transport = HttpTransport(
        server, threading.Event(), RetryPolicy(retry_s, first_delay_s=0.05, max_delay_s=0.2)
    )
    summary = run_call(
        CallInfo(1, "test", "tester"),
        SessionRequest(16000, "tester"),
        chunks if chunks is not None else iter([CHUNK] * CHUNKS),
        transport,
        events.append,
        threading.Event(),
    )
    return summary, events


def finals(events: list[CallEvent]) -> list[str]:
    return [e.final.text for e in events if isinstance(e, FinalReceived)]


def test_a_clean_call(stub: StubDecoder) -> None:
    summary, events = call(stub)
    assert summary.error is None
    assert finals(events) == ["u0", "u1", "u2", "last"]
    assert summary.transcript == "u0 u1 u2 last"
    assert stub.state.decoded == list(range(CHUNKS))
    assert (stub.state.opened, stub.state.ended, stub.state.deleted) == (1, 1, 1)


def test_the_sticky_route_cookie_is_sent_back(stub: StubDecoder) -> None:
    call(stub)
    assert stub.state.cookies[0] == ""
    assert all(c == "route=backend-1" for c in stub.state.cookies[1:])


def test_capacity_503_waits_for_retry_after(stub: StubDecoder) -> None:
    stub.state.faults[("open", 0)] = [Status(503, "capacity", {"Retry-After": "1"})]
    started = time.monotonic()
    summary, _ = call(stub)
    assert summary.error is None
    assert time.monotonic() - started >= 1
    assert stub.state.opened == 1


def test_busy_and_wrong_instance_are_retried_without_decoding_twice(stub: StubDecoder) -> None:
    stub.state.faults[("audio", 2)] = [Status(409, "session_busy"), Status(409, "wrong_instance")]
    stub.state.faults[("audio", 5)] = [Status(503, "not_ready")]
    summary, events = call(stub)
    assert summary.error is None
    assert stub.state.received.count(2) == 3
    assert stub.state.decoded == list(range(CHUNKS))
    assert finals(events) == ["u0", "u1", "u2", "last"]


def test_a_chunk_without_answer_ends_the_call_when_the_server_cannot_drop_duplicates(
    stub: StubDecoder,
) -> None:
    stub.state.faults[("audio", 4)] = [Drop(after=True)]
    summary, events = call(stub)
    assert summary.error is not None
    assert "chunk 4 of session s1 got no answer" in summary.error
    assert "twice" in summary.error
    assert stub.state.received == [0, 1, 2, 3, 4]  # never resent, nothing after it
    assert stub.state.ended == 1  # the finals decoded so far are kept
    assert finals(events) == ["u0", "last"]


def test_a_chunk_without_answer_is_resent_when_the_server_drops_duplicates(stub: StubDecoder) -> None:
    stub.state.echo_seq = True
    stub.state.faults[("audio", 5)] = [Drop(after=True)]
    summary, events = call(stub)
    assert summary.error is None
    assert stub.state.received.count(5) == 2
    assert stub.state.decoded == list(range(CHUNKS))
    # chunk 5 completed u1; its answer was lost, the repeated answer brings it.
    assert finals(events) == ["u0", "u1", "u2", "last"]


def test_a_repeated_answer_without_finals_is_completed_from_the_session(stub: StubDecoder) -> None:
    """After a takeover the repeated answer has no finals: they are read back from the session."""
    stub.state.echo_seq = True
    stub.state.replay_without_finals = True
    stub.state.faults[("audio", 5)] = [Drop(after=True)]
    summary, events = call(stub)
    assert summary.error is None
    assert stub.state.decoded == list(range(CHUNKS))
    assert finals(events) == ["u0", "u1", "u2", "last"]


def test_a_proxy_502_on_a_chunk_is_ambiguous(stub: StubDecoder) -> None:
    stub.state.faults[("audio", 1)] = [Status(502, "bad_gateway")]
    summary, _ = call(stub)
    assert summary.error is not None
    assert "HTTP 502" in summary.error
    assert stub.state.received == [0, 1]


def test_a_refused_connection_is_retried_in_the_same_session(stub: StubDecoder) -> None:
    """A decoder restart that keeps the session: the call carries on where it was."""

    def chunks() -> Iterator[bytes]:
        for seq in range(CHUNKS):
            if seq == 4:
                stub.restart(down_s=0.8)
            yield CHUNK

    started = time.monotonic()
    summary, events = call(stub, chunks=chunks())
    assert summary.error is None
    assert time.monotonic() - started >= 0.8
    assert stub.state.opened == 1
    assert stub.state.decoded == list(range(CHUNKS))
    assert finals(events) == ["u0", "u1", "u2", "last"]


def test_a_lost_session_is_reported(stub: StubDecoder) -> None:
    stub.state.faults[("audio", 3)] = [Status(404, "session_not_found")]
    summary, events = call(stub)
    assert summary.error is not None
    assert "lost session s1 (session_not_found" in summary.error
    assert (stub.state.ended, stub.state.deleted) == (0, 0)
    assert finals(events) == ["u0"]


def test_retries_stop_when_the_budget_is_spent(stub: StubDecoder) -> None:
    stub.state.faults[("audio", 1)] = [Status(503, "capacity")] * 100
    started = time.monotonic()
    summary, _ = call(stub, retry_s=1)
    assert summary.error is not None
    assert "503 capacity" in summary.error
    assert time.monotonic() - started < 6


def test_a_lost_end_answer_keeps_the_last_finals(stub: StubDecoder) -> None:
    stub.state.faults[("end", 0)] = [Drop(after=True)]
    summary, events = call(stub)
    assert summary.error is None
    assert stub.state.ended == 2
    assert finals(events) == ["u0", "u1", "u2", "last"]


def test_a_server_that_never_answers_is_unreachable() -> None:
    state = StubState()
    server = StubDecoder(state)
    server.stop()
    summary, _ = call(server, retry_s=0.3)
    assert summary.error is not None
    assert summary.error.startswith(f"cannot reach the decoder at {server.url}: connection refused")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, None), ("", None), ("3", 3.0), ("soon", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)],
)
def test_retry_after_header(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == seconds


def test_backoff_grows_and_is_capped() -> None:
    policy = RetryPolicy(budget_s=10, first_delay_s=0.1, max_delay_s=1)
    assert 0.05 <= policy.delay_s(0) <= 0.1
    assert 0.5 <= policy.delay_s(10) <= 1
    assert policy.delay_s(3, retry_after_s=4) == 4
