"""Simulated callers: each streams random recordings in real time, with random pauses between calls.

``--callers N`` threads run side by side, caller ``n`` as user ``<user_id>-<n>``. Each picks a
random recording from the data directory (``call*.wav`` when there are any, else every
``*.wav``), streams it as one session at real-time pace (a stereo recording as a two-channel
session, one speaker per channel, unless ``--mono``), waits a random pause (``--pause-s``,
5 to 10 s by default) and starts again, until stopped (SIGINT/SIGTERM), ``--duration`` runs
out or ``--calls`` calls in all were started. A stop ends the open sessions (their finals are
kept) before the simulator exits.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from recorder.call import run_call
from recorder.client import SessionRequest, Transport
from recorder.config import SimulatorSettings, StreamSettings
from recorder.errors import RecorderError, SourceError
from recorder.events import (
    CallEnded,
    CallEvent,
    CallInfo,
    CallStarted,
    CallSummary,
    ChunkDecoded,
    FinalReceived,
    Observer,
    SimulatorStats,
)
from recorder.sources import FileSource, bounded, paced

logger = logging.getLogger(__name__)


def find_recordings(data_dir: Path) -> list[Path]:
    """``call*.wav`` in ``data_dir`` when there are any, else every ``*.wav``; sorted."""
    if not data_dir.is_dir():
        raise SourceError(f"{data_dir}: no such directory (give recordings with --data DIR)")
    calls = sorted(data_dir.glob("call*.wav")) or sorted(data_dir.glob("*.wav"))
    if not calls:
        raise SourceError(f"{data_dir}: no .wav recordings to simulate calls with")
    return calls


class StatsCollector:
    """Counts what the callers do (an ``Observer``); ``snapshot`` is safe from any thread.

    Only counters are kept, so a simulation that runs for days does not grow.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._started_at = clock()
        self._active = self._max_active = self._started = self._completed = 0
        self._failed = self._finals = 0
        self._latency_sum_ms = 0.0
        self._latency_count = 0
        self.last_error: str | None = None

    def __call__(self, event: CallEvent) -> None:
        with self._lock:
            if isinstance(event, CallStarted):
                self._started += 1
                self._active += 1
                self._max_active = max(self._max_active, self._active)
            elif isinstance(event, ChunkDecoded):
                self._latency_sum_ms += event.latency_ms
                self._latency_count += 1
            elif isinstance(event, FinalReceived):
                self._finals += 1
            elif isinstance(event, CallEnded):
                self._ended(event.summary)

    def snapshot(self) -> SimulatorStats:
        with self._lock:
            latency = self._latency_sum_ms / self._latency_count if self._latency_count else None
            return SimulatorStats(
                elapsed_s=self._clock() - self._started_at,
                active=self._active,
                max_active=self._max_active,
                started=self._started,
                completed=self._completed,
                failed=self._failed,
                finals=self._finals,
                mean_latency_ms=latency,
            )

    def _ended(self, summary: CallSummary) -> None:
        if summary.session_id is not None:
            self._active -= 1
        else:
            self._started += 1
        if summary.error:
            self._failed += 1
            self.last_error = summary.error
        else:
            self._completed += 1


class Simulator:
    """Runs the callers; ``run`` returns when they all stopped."""

    def __init__(
        self,
        settings: SimulatorSettings,
        stream: StreamSettings,
        transport_factory: Callable[[], Transport],
        notify: Observer,
        stop: threading.Event,
        seed: int | None = None,
    ) -> None:
        self._settings = settings
        self._stream = stream
        self._transport_factory = transport_factory
        self._notify = notify
        self._stop = stop
        self._recordings = find_recordings(settings.data_dir)
        self._seed = seed
        self._lock = threading.Lock()
        self._calls_claimed = 0

    @property
    def recordings(self) -> list[Path]:
        return list(self._recordings)

    def run(self, on_tick: Callable[[], None], tick_s: float) -> None:
        """Start the callers and call ``on_tick`` every ``tick_s`` seconds until they have all ended."""
        callers = [
            threading.Thread(target=self._caller, args=(n,), name=f"caller-{n}", daemon=True)
            for n in range(1, self._settings.callers + 1)
        ]
        for thread in callers:
            thread.start()
        while any(t.is_alive() for t in callers):
            deadline = time.monotonic() + tick_s
            for thread in callers:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in callers):
                on_tick()

    def _caller(self, number: int) -> None:
        rng = random.Random(None if self._seed is None else self._seed + number)
        user_id = f"{self._stream.user_id}-{number}"
        while not self._stop.is_set():
            call_id = self._claim_call()
            if call_id is None:
                return
            self._call(call_id, number, user_id, rng.choice(self._recordings))
            if self._stop.wait(rng.uniform(*self._settings.pause_s)):
                return

    def _claim_call(self) -> int | None:
        with self._lock:
            limit = self._settings.calls
            if limit is not None and self._calls_claimed >= limit:
                return None
            self._calls_claimed += 1
            return self._calls_claimed

    def _call(self, call_id: int, caller: int, user_id: str, path: Path) -> None:
        stream = self._stream
        try:
            source = FileSource(path, stream.sample_rate_hz, stream.chunk_bytes, stream.mixdown)
        except RecorderError as exc:
            call = CallInfo(call_id, path.name, user_id, caller)
            self._notify(CallEnded(CallSummary(call, None, "", 0, 0, 0.0, error=exc.message)))
            return
        call = CallInfo(call_id, path.name, user_id, caller, source.total_ms)
        request = SessionRequest(
            stream.sample_rate_hz,
            user_id,
            stream.words,
            {"source": "recorder-simulator", "file": path.name, "caller": caller},
            channels=source.channels,
            speakers=stream.speakers if source.channels > 1 else None,
        )
        rate, frame_bytes = stream.sample_rate_hz, request.frame_bytes
        chunks = paced(
            bounded(source.chunks(), rate, self._stop, None, frame_bytes), rate, self._stop, frame_bytes
        )
        try:
            run_call(call, request, chunks, self._transport_factory(), self._notify, self._stop)
        except Exception as exc:
            logger.exception("caller_failed caller=%d call=%d", caller, call_id)
            error = f"internal error: {type(exc).__name__}: {exc}"
            self._notify(CallEnded(CallSummary(call, None, "", 0, 0, 0.0, error=error)))
        finally:
            source.close()
