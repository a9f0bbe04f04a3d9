"""Abuse limits at the HTTP edge: session-creation rate per client, and request read deadlines."""

from __future__ import annotations

import contextlib
import itertools
import math
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from decoder_api.errors import DecoderError

MAX_TRACKED_CLIENTS = 10_000


class RateLimited(DecoderError):
    code = "rate_limited"


class RequestTimeout(DecoderError):
    code = "request_timeout"


class RateLimiter:
    """A token bucket per client (API key hash or address): ``per_minute`` with bursts of that size."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate_per_s = per_minute / 60
        self._burst = float(per_minute)
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, client: str) -> None:
        """Spend one token for ``client``; 429 with Retry-After when none is left."""
        if self._rate_per_s <= 0:
            return
        with self._lock:
            now = self._clock()
            tokens, updated = self._buckets.pop(client, (self._burst, now))
            tokens = min(self._burst, tokens + (now - updated) * self._rate_per_s)
            allowed = tokens >= 1
            self._buckets[client] = (tokens - 1 if allowed else tokens, now)
            while len(self._buckets) > MAX_TRACKED_CLIENTS:
                self._buckets.popitem(last=False)
        if not allowed:
            wait_s = max(1, round((1 - tokens) / self._rate_per_s))
            raise RateLimited("too many sessions opened; slow down", retry_after=wait_s)


class DeadlineWatch:
    """One thread that runs each registered ``expire`` once its deadline has passed, unless it was
    cancelled first; a request's deadline costs a dict entry, not a timer thread of its own (whose
    start alone is two thread switches on the request's path). Started with the first deadline."""

    def __init__(self) -> None:
        self._pending: dict[int, tuple[float, Callable[[], None]]] = {}
        self._keys = itertools.count()
        self._wake_at = math.inf  # when the thread wakes next (monotonic seconds)
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def add(self, seconds: float, expire: Callable[[], None]) -> int:
        """Call ``expire`` in ``seconds`` (on the watch's thread); the key cancels it."""
        due = time.monotonic() + seconds
        with self._changed:
            key = next(self._keys)
            self._pending[key] = (due, expire)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="read-deadlines", daemon=True)
                self._thread.start()
            if due < self._wake_at:
                self._changed.notify()
        return key

    def cancel(self, key: int) -> None:
        """After this returns, ``expire`` of ``key`` has run already or never will."""
        with self._changed:
            self._pending.pop(key, None)

    def _run(self) -> None:
        with self._changed:
            while True:
                now = time.monotonic()
                due = [key for key, (at, _) in self._pending.items() if at <= now]
                for key in due:
                    self._pending.pop(key)[1]()  # under the lock, so cancel() never races it
                self._wake_at = min((at for at, _ in self._pending.values()), default=math.inf)
                self._changed.wait(None if self._wake_at == math.inf else self._wake_at - now)


class DeadlineInput:
    """``wsgi.input`` whose reading must finish before a deadline.

    A client trickling its body would otherwise hold a server thread for as long as it likes
    (a read of N bytes waits for all of them, however slowly they come). At the deadline the
    ``watch`` shuts the socket for reading, which ends any read in progress; the read then
    fails with ``408 request_timeout``. The deadline is cancelled once the whole body has arrived.
    """

    def __init__(
        self, stream: Any, sock: socket.socket, length: int, seconds: float, watch: DeadlineWatch
    ) -> None:
        self._stream = stream
        self._sock = sock
        self._left = length
        self._expired = threading.Event()
        self._watch = watch
        self._key: int | None = watch.add(seconds, self._cut)

    def read(self, size: int = -1) -> bytes:
        return self._counted(lambda: self._stream.read(size))

    def readline(self, size: int = -1) -> bytes:
        return self._counted(lambda: self._stream.readline(size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(iter(self.readline, b""))

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def cancel(self) -> None:
        if self._key is not None:
            self._watch.cancel(self._key)
            self._key = None

    def _counted(self, call: Callable[[], Any]) -> bytes:
        if self._expired.is_set():
            raise RequestTimeout("the request body arrived too slowly")
        try:
            data = bytes(call())
        except Exception:
            if self._expired.is_set():
                raise RequestTimeout("the request body arrived too slowly") from None
            raise
        self._left -= len(data)
        if self._left <= 0 or not data:
            self.cancel()
        if self._expired.is_set():
            raise RequestTimeout("the request body arrived too slowly")
        return data

    def _cut(self) -> None:
        self._expired.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)


class ReadDeadline:
    """WSGI middleware: every request body must arrive within ``seconds``."""

    def __init__(self, app: Callable[..., Any], seconds: float) -> None:
        self._app = app
        self._seconds = seconds
        self._watch = DeadlineWatch()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        sock = environ.get("gunicorn.socket")
        length = _content_length(environ)
        if self._seconds <= 0 or sock is None or length <= 0 or _is_websocket(environ):
            return self._app(environ, start_response)
        guarded = DeadlineInput(environ["wsgi.input"], sock, length, self._seconds, self._watch)
        environ["wsgi.input"] = guarded
        try:
            return self._app(environ, start_response)
        finally:
            guarded.cancel()


def _content_length(environ: dict[str, Any]) -> int:
    try:
        return int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        return 0


def _is_websocket(environ: dict[str, Any]) -> bool:
    return str(environ.get("HTTP_UPGRADE", "")).lower() == "websocket"
