"""Partial hypotheses decoded off the request path.

An engine whose partials cost a whole re-decode (Whisper) would otherwise answer every chunk only
after that decode, so each caller's reply latency grows with every caller added. Here the request
thread only asks a worker for a partial of its stream and answers with the newest partial it
already has. A stream waits in the queue at most once, and its audio is taken when a worker starts
on it, not when it was asked for: however long it waited, a partial covers the stream's newest
audio, so its lag (how much audio arrived while it was decoded) is one decode, not a queue. Under
load partials arrive less often and cover more audio each, while the replies stay fast and the
backlog never exceeds one entry per stream.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PartialJob:
    """Audio to decode and where the text goes; ``deliver`` decides whether it is still wanted."""

    audio: np.ndarray
    hotwords: str | None
    deliver: Callable[[str], None]


Decode = Callable[[np.ndarray, "str | None"], str]
# Called by a worker as it starts on a stream: the job for the stream's newest audio, or None when
# there is nothing to decode any more (the utterance ended meanwhile).
TakeJob = Callable[[], "PartialJob | None"]


class BackgroundPartials:
    """Worker threads decoding each waiting stream's newest audio, the stream waiting longest first."""

    def __init__(self, decode: Decode, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self._decode = decode
        self._pending: dict[Hashable, TakeJob] = {}  # insertion order = waiting order
        self._decoding = 0
        self._ready = threading.Condition()
        self._closed = False
        self._threads = [
            threading.Thread(target=self._run, name=f"partials-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, stream: Hashable, take: TakeJob) -> None:
        """Ask for a partial of ``stream``: a worker calls ``take`` when it starts on it. A stream
        already waiting keeps its place in the queue (``take`` replaces the one it had)."""
        with self._ready:
            if self._closed:
                return
            waiting = stream in self._pending
            self._pending[stream] = take
            if not waiting:  # a stream asking again while it waits (every chunk) changes nothing else
                self._ready.notify_all()  # wait_idle waits on this condition too

    def cancel(self, stream: Hashable) -> None:
        """Forget the stream's waiting request; a job already decoding is refused by its ``deliver``."""
        with self._ready:
            self._pending.pop(stream, None)

    def backlog(self) -> int:
        """Streams waiting for a worker."""
        with self._ready:
            return len(self._pending)

    def wait_idle(self, timeout_s: float) -> bool:
        """Block until no job waits and none is decoding (False if ``timeout_s`` passed first)."""
        with self._ready:
            return self._ready.wait_for(lambda: not self._pending and not self._decoding, timeout_s)

    def close(self) -> None:
        """Drop waiting jobs and stop the workers (a decode under way finishes first)."""
        with self._ready:
            self._closed = True
            self._pending.clear()
            self._ready.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT_S)

    def _next(self) -> TakeJob | None:
        with self._ready:
            while not self._pending and not self._closed:
                self._ready.wait()
            if self._closed:
                return None
            stream = next(iter(self._pending))
            self._decoding += 1
            return self._pending.pop(stream)

    def _run(self) -> None:
        while (take := self._next()) is not None:
            try:
                if (job := take()) is not None:
                    job.deliver(self._decode(job.audio, job.hotwords))
            except Exception:  # a failed partial must not stop the others; the final is decoded anyway
                logger.exception("partial_decode_failed")
            finally:
                with self._ready:
                    self._decoding -= 1
                    self._ready.notify_all()
