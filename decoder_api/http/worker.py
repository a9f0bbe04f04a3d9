"""The gunicorn worker: gthread, with the next request of a busy keep-alive connection served on
the thread that served the last one.

gthread hands every keep-alive connection back to its main thread after each response: the main
thread puts it in its poller, wakes when the next request arrives and queues it for a pool
thread, which wakes in turn. A WebSocket stream costs one wake-up per chunk; a chunk over HTTP v1
costs three, and on a pod whose cores are busy decoding each wake-up can wait for a time slice,
which is what made HTTP v1 slower than the WebSocket with as many callers as cores.

A connection whose client sent its next request within ``LINGER_S`` of the last response (a
client streaming a file faster than real time) is watched by its thread for that long after the
response; a request arriving meanwhile is served there. Any other connection goes back to the
poller at once, as in gthread: a real-time caller's next chunk comes a chunk later, and holding a
thread for it would cost more than the hand-off saves.
"""

from __future__ import annotations

import select
import time
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

LINGER_S = 0.02
"""How long a thread waits on a busy connection for its next request; a client counts as busy
when its last request came within this long of the response before it."""


class StreamingThreadWorker(ThreadWorker):
    """``gthread`` that keeps serving a keep-alive connection while its requests come back to back."""

    def handle(self, conn: TConn) -> Any:
        result = super().handle(conn)
        while result is True and self.alive and next_request_within(conn, linger_s(conn)):
            result = super().handle(conn)
        conn.decoder_done_at = time.monotonic()
        return result

    def enqueue_req(self, conn: TConn) -> None:
        done_at = getattr(conn, "decoder_done_at", None)
        conn.decoder_gap_s = None if done_at is None else time.monotonic() - done_at
        super().enqueue_req(conn)


def linger_s(conn: TConn) -> float:
    """``LINGER_S`` for a connection whose last request came back to back, else 0."""
    gap = getattr(conn, "decoder_gap_s", None)
    return LINGER_S if gap is not None and gap < LINGER_S else 0.0


def next_request_within(conn: TConn, timeout_s: float) -> bool:
    """Whether bytes of the next request are here, or arrive within ``timeout_s``."""
    pending = getattr(conn.sock, "pending", None)  # TLS: decrypted bytes the socket no longer shows
    if conn.parser.unreader.buf.getvalue() or (pending is not None and pending()):
        return True
    if timeout_s <= 0:
        return False
    poller = select.poll()
    poller.register(conn.sock, select.POLLIN)
    return bool(poller.poll(timeout_s * 1000))
