"""The background partial worker: a stream waits once, in its place, longest waiting first, and its
job (the stream's newest audio) is taken when a worker starts on it.

The decode function here is a stand-in that records what it was given and can be held at a gate:
that is the boundary where the order and the replacement of jobs are observable. The Whisper tests
run the same worker on the real model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from decoder_api.engines.partials import BackgroundPartials, PartialJob, TakeJob

TIMEOUT_S = 10.0


class GatedDecode:
    """Returns the audio's length as text; the first call waits for ``release``."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()
        self.seen: list[int] = []
        self.fail_on = fail_on

    def __call__(self, audio: np.ndarray, hotwords: str | None) -> str:
        self.started.set()
        assert self.gate.wait(TIMEOUT_S)
        self.seen.append(len(audio))
        if len(audio) == self.fail_on:
            raise RuntimeError("decode failed")
        return f"{len(audio)}:{hotwords}"


@pytest.fixture
def decode() -> GatedDecode:
    return GatedDecode()


@pytest.fixture
def worker(decode: GatedDecode) -> Iterator[BackgroundPartials]:
    background = BackgroundPartials(decode)
    yield background
    decode.gate.set()
    background.close()


def job(samples: int, into: list[str], hotwords: str | None = None) -> TakeJob:
    return lambda: PartialJob(np.zeros(samples, dtype=np.float32), hotwords, into.append)


def test_a_newer_job_replaces_the_waiting_one_in_its_place(
    worker: BackgroundPartials, decode: GatedDecode
) -> None:
    a: list[str] = []
    b: list[str] = []
    worker.submit("a", job(1, a))
    assert decode.started.wait(TIMEOUT_S)  # "a" 1 is being decoded, held at the gate
    worker.submit("a", job(2, a))
    worker.submit("b", job(10, b, "hello"))
    worker.submit("a", job(3, a))
    assert worker.backlog() == 2
    decode.gate.set()
    assert worker.wait_idle(TIMEOUT_S)
    assert decode.seen == [1, 3, 10]
    assert (a, b) == (["1:None", "3:None"], ["10:hello"])
    assert worker.backlog() == 0


def test_a_cancelled_stream_is_not_decoded(worker: BackgroundPartials, decode: GatedDecode) -> None:
    out: list[str] = []
    worker.submit("a", job(1, out))
    assert decode.started.wait(TIMEOUT_S)
    worker.submit("b", job(2, out))
    worker.cancel("b")
    decode.gate.set()
    assert worker.wait_idle(TIMEOUT_S)
    assert decode.seen == [1]


def no_audio() -> PartialJob:
    raise RuntimeError("no audio")


@pytest.mark.parametrize("fails", ["decode", "taking the job"])
def test_a_failure_does_not_stop_the_worker(fails: str, caplog: pytest.LogCaptureFixture) -> None:
    """A decode that raises, or a job whose audio cannot be taken, is logged; the next job runs."""
    decode = GatedDecode(fail_on=1 if fails == "decode" else None)
    decode.gate.set()
    worker = BackgroundPartials(decode)
    try:
        out: list[str] = []
        worker.submit("a", job(1, out) if fails == "decode" else no_audio)
        assert worker.wait_idle(TIMEOUT_S)
        worker.submit("a", job(2, out))
        assert worker.wait_idle(TIMEOUT_S)
    finally:
        worker.close()
    assert out == ["2:None"]
    assert "partial_decode_failed" in caplog.text


def partial_threads() -> int:
    return sum(t.name.startswith("partials-") for t in threading.enumerate())


def test_close_stops_the_workers_and_ignores_later_jobs(decode: GatedDecode) -> None:
    decode.gate.set()
    before = partial_threads()
    worker = BackgroundPartials(decode, threads=2)
    assert partial_threads() == before + 2
    worker.close()
    assert partial_threads() == before
    out: list[str] = []
    worker.submit("a", job(1, out))
    assert worker.backlog() == 0
    assert decode.seen == [] and out == []


def test_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="threads"):
        BackgroundPartials(GatedDecode(), threads=0)


def test_the_audio_is_taken_when_a_worker_starts_on_the_stream(
    worker: BackgroundPartials, decode: GatedDecode
) -> None:
    out: list[str] = []
    heard = [5]  # samples the stream has heard so far
    worker.submit("a", job(1, out))
    assert decode.started.wait(TIMEOUT_S)
    worker.submit("b", lambda: PartialJob(np.zeros(heard[0], dtype=np.float32), None, out.append))
    heard[0] = 9  # more audio arrives while "b" waits
    decode.gate.set()
    assert worker.wait_idle(TIMEOUT_S)
    assert decode.seen == [1, 9]
    assert out == ["1:None", "9:None"]


def test_a_stream_with_nothing_to_decode_any_more_is_skipped(
    worker: BackgroundPartials, decode: GatedDecode
) -> None:
    out: list[str] = []
    worker.submit("a", job(1, out))
    assert decode.started.wait(TIMEOUT_S)
    worker.submit("b", lambda: None)  # its utterance ended before a worker was free
    worker.submit("c", job(3, out))
    decode.gate.set()
    assert worker.wait_idle(TIMEOUT_S)
    assert decode.seen == [1, 3]
    assert out == ["1:None", "3:None"]
