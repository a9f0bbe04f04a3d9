"""One call: open a session, send the chunks in order, end it, and tell observers what happened."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from recorder.client import SessionRequest, Transport
from recorder.errors import RecorderError, SessionLost
from recorder.events import (
    CallEnded,
    CallInfo,
    CallStarted,
    CallSummary,
    ChunkDecoded,
    ChunkReply,
    Final,
    FinalReceived,
    Observer,
    SessionInfo,
)

logger = logging.getLogger(__name__)


def run_call(
    call: CallInfo,
    request: SessionRequest,
    chunks: Iterable[bytes],
    transport: Transport,
    notify: Observer,
    stop: threading.Event,
) -> CallSummary:
    """Stream ``chunks`` as one session; errors end the call and are reported in its summary.

    ``stop`` ends the call early and cleanly (the session is ended, so its finals are kept).
    Sending stops at the first error; the session is still ended when the server has it, so the
    finals decoded so far are not lost.
    """
    started = time.monotonic()
    recorder = _CallRecord(call, notify)
    error: RecorderError | None = None
    try:
        recorder.session = transport.open(request)
        notify(CallStarted(call, recorder.session))
        for seq, chunk in enumerate(chunks):
            sent = time.perf_counter()
            reply = transport.send(chunk, seq)
            latency_ms = (time.perf_counter() - sent) * 1000
            recorder.chunk(reply, latency_ms)
            recorder.finals(reply.finals, latency_ms)
            if stop.is_set():
                break
        recorder.finals(transport.end().finals)
    except RecorderError as exc:
        error = exc
        logger.info("call_failed call=%d reason=%s", call.call_id, exc.message)
        if recorder.session is not None and not isinstance(exc, SessionLost):
            recorder.flush(transport)
    finally:
        transport.close()
    summary = recorder.summary(time.monotonic() - started, error)
    notify(CallEnded(summary))
    return summary


class _CallRecord:
    """What one call gathered so far, and the events it sends."""

    def __init__(self, call: CallInfo, notify: Observer) -> None:
        self.call = call
        self.session: SessionInfo | None = None
        self._notify = notify
        self._texts: list[str] = []
        self._chunks = 0
        self._latency_sum_ms = 0.0
        self._audio_ms = 0

    def chunk(self, reply: ChunkReply, latency_ms: float) -> None:
        self._audio_ms = reply.audio_ms
        self._chunks += 1
        self._latency_sum_ms += latency_ms
        self._notify(ChunkDecoded(self.call, reply.partial, reply.audio_ms, latency_ms, reply.partials))

    def finals(self, finals: Iterable[Final], latency_ms: float | None = None) -> None:
        assert self.session is not None
        for final in finals:
            self._texts.append(final.text)
            self._notify(FinalReceived(self.call, self.session, final, latency_ms))

    def flush(self, transport: Transport) -> None:
        """End the session after a failure, keeping whatever finals it still gives."""
        try:
            self.finals(transport.end().finals)
        except RecorderError as exc:
            logger.info("call_end_failed call=%d reason=%s", self.call.call_id, exc.message)

    def summary(self, wall_s: float, error: RecorderError | None) -> CallSummary:
        return CallSummary(
            call=self.call,
            session_id=self.session.session_id if self.session else None,
            transcript=" ".join(t for t in self._texts if t),
            utterances=len(self._texts),
            audio_ms=self._audio_ms,
            wall_s=wall_s,
            chunks=self._chunks,
            latency_sum_ms=self._latency_sum_ms,
            error=error.message if error else None,
        )
